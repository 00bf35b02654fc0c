"""Parameters and multiply-accumulates, counted the way the paper's tables
do."""
import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape=(3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of a batch of one image,
    with mmengine's jit-traced analysis (one fused multiply-add = one MAC).

    ``model`` is a backbone, or an mmpretrain classifier (counted through
    its ``extract_feat`` + head, as at inference).
    """
    from mmengine.analysis import FlopAnalyzer

    if hasattr(model, 'extract_feat') and hasattr(model, 'head'):
        model = _ClassifierForward(model)
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape)
        analyzer = FlopAnalyzer(model, (x, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())
    finally:
        model.train(was_training)


class _ClassifierForward(nn.Module):
    """Traces an mmpretrain classifier as tensor in -> logits out."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        feats = self.classifier.extract_feat(x)
        return self.classifier.head(feats)
