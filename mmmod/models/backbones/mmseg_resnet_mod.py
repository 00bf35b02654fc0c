"""ResNet-MoD in mmseg: mmseg's own ResNet classes (multi_grid,
contract_dilation, dcn, plugins, its stem layout and defaults) with MoD
blocks, registered in mmseg's registry. The mechanism is
:mod:`.mod_stages`."""
from mmseg.models.backbones import ResNet, ResNetV1c, ResNetV1d, ResNeXt
from mmseg.registry import MODELS

from .mod_stages import PlanesBlockArgs, mod_resnets

ResNetMoD, ResNetV1cMoD, ResNetV1dMoD, ResNeXtMoD = mod_resnets(
    MODELS, __name__, PlanesBlockArgs(), ResNetMoD=ResNet,
    ResNetV1cMoD=ResNetV1c, ResNetV1dMoD=ResNetV1d, ResNeXtMoD=ResNeXt)
