"""ResNet-MoD in mmdet: mmdet's own ResNet classes (dcn, plugins, its stem
layout and defaults) with MoD blocks, registered in mmdet's registry. The
mechanism is :mod:`.mod_stages`."""
from mmdet.models.backbones import ResNet, ResNetV1d, ResNeXt
from mmdet.registry import MODELS

from .mod_stages import PlanesBlockArgs, mod_resnets

ResNetMoD, ResNetV1dMoD, ResNeXtMoD = mod_resnets(
    MODELS, __name__, PlanesBlockArgs(),
    ResNetMoD=ResNet, ResNetV1dMoD=ResNetV1d, ResNeXtMoD=ResNeXt)
