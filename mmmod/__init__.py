"""mmmod: CNN Mixture-of-Depths backbones for mmpretrain, mmseg and mmdet.

``custom_imports = dict(imports=['mmmod'])`` in any OpenMMLab config registers
``ResNetMoD``, ``ResNetV1cMoD``, ``ResNetV1dMoD``, ``ResNetMoD_CIFAR``,
``MobileNetV2MoD`` and ``VGGMoD``.
"""
from .datasets import *  # noqa: F401,F403
from .layers import ChannelSelector, MoDBlock
from .models import *  # noqa: F401,F403
from .version import __version__

__all__ = ['ChannelSelector', 'MoDBlock', '__version__']
