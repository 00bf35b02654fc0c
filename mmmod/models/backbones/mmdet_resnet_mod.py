"""ResNet-MoD in mmdet: mmdet's own ResNet classes (dcn, plugins, its stem
layout and defaults) with MoD blocks, registered in mmdet's registry. The
mechanism is :mod:`.mod_stages`."""
from mmdet.models.backbones import ResNet, ResNetV1d, ResNeXt
from mmdet.registry import MODELS

from .mod_stages import PlanesBlockArgs, mod_resnets


class _ResNetV1c(ResNet):
    """mmdet has no ResNetV1c; as mmseg's (and as mmdet's ResNetV1d, less
    its average-pool down-sampling): mmdet's ResNet with the deep stem. So
    ``ResNetV1cMoD`` from an mmdet config is mmdet's ResNet too (4 outputs,
    mmdet's defaults and stem layout), not another toolbox's class."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


ResNetMoD, ResNetV1cMoD, ResNetV1dMoD, ResNeXtMoD = mod_resnets(
    MODELS, __name__, PlanesBlockArgs(), ResNetMoD=ResNet,
    ResNetV1cMoD=_ResNetV1c, ResNetV1dMoD=ResNetV1d, ResNeXtMoD=ResNeXt)
