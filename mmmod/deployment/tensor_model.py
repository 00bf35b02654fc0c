"""A config's model as exporters, compilers and the benchmark take it: one
image tensor in, tensors out."""
import torch.nn as nn

from mmmod.apis import build_model


class TensorModel(nn.Module):
    """Tensor in, tensors out: a classifier's scores (its ``extract_feat``
    and head, as at inference) or, with ``backbone=True``, a model's
    backbone feature maps (a tuple)."""

    def __init__(self, model: nn.Module, backbone: bool = False):
        super().__init__()
        self.model = model.backbone if backbone else model
        self.backbone = backbone

    def forward(self, x):
        if self.backbone:
            return tuple(self.model(x))
        return self.model.head(self.model.extract_feat(x))


def build_tensor_model(config, checkpoint=None, cfg_options=(),
                       backbone=False) -> TensorModel:
    """The :class:`TensorModel` of ``config``, in eval mode. Whole models
    are mmpretrain classifiers; for an mmseg or mmdet config, take the
    backbone (``backbone=True``)."""
    model, cfg = build_model(config, checkpoint, cfg_options)
    if not backbone and cfg.default_scope != 'mmpretrain':
        raise ValueError(
            f'{config}: only mmpretrain classifiers run whole here; for this '
            f'{cfg.default_scope} model, take its backbone (--backbone)')
    model = TensorModel(model, backbone)
    model.eval()
    return model
