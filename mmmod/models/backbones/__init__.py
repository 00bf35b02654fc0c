import importlib
import importlib.util

from .mobilenet_v2_mod import MobileNetV2MoD
from .mod_stages import (DEPTHS, FittedGroupNorm, MoDStagesMixin,
                         StageMoDBlock, mod_arch_settings)
from .resnet_mod import (ResNetMoD, ResNetMoD_CIFAR, ResNetV1cMoD,
                         ResNetV1dMoD, ResNeXtMoD)
from .vgg_mod import VGGMoD

# mmseg's and mmdet's ResNet-MoD classes register in their own toolbox's
# registry, under the same names, wherever that toolbox is installed.
for _toolbox in ('mmseg', 'mmdet'):
    if importlib.util.find_spec(_toolbox) is not None:
        importlib.import_module(f'.{_toolbox}_resnet_mod', __name__)

__all__ = [
    'DEPTHS', 'FittedGroupNorm', 'MoDStagesMixin', 'StageMoDBlock',
    'mod_arch_settings',
    'ResNetMoD', 'ResNetV1cMoD', 'ResNetV1dMoD', 'ResNeXtMoD',
    'ResNetMoD_CIFAR', 'MobileNetV2MoD', 'VGGMoD'
]
