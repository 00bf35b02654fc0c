"""Parameters and MACs of a config's whole model (classifier, segmentor or
detector), as the supplement's Table 7 counts them."""
import torch.nn as nn

from mmmod.apis import build_model, model_name
from mmmod.utils import count_macs, count_params


def complexity(config, shape=(224, 224), cfg_options=()):
    """``(name, GMACs, params in M)`` of the model of ``config`` on one
    image of ``shape`` (H, W)."""
    model, cfg = build_model(config, cfg_options=cfg_options)
    if cfg.default_scope == 'mmdet':
        model = _WithImageMeta(model, shape)
    return (model_name(config), count_macs(model, (3, *shape)) / 1e9,
            count_params(model) / 1e6)


class _WithImageMeta(nn.Module):
    """A detector's tensor-mode forward, given the image meta that its heads
    read (a classifier or segmentor needs none)."""

    def __init__(self, detector, shape):
        super().__init__()
        self.detector = detector
        self.meta = dict(
            img_shape=shape,
            ori_shape=shape,
            pad_shape=shape,
            batch_input_shape=shape,
            scale_factor=(1.0, 1.0))

    def forward(self, x):
        from mmengine.structures import BaseDataElement
        samples = [BaseDataElement(metainfo=self.meta)]
        return self.detector(x, samples, mode='tensor')
