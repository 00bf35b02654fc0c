"""mmmod: CNN Mixture-of-Depths backbones for mmpretrain, mmseg and mmdet.

``custom_imports = dict(imports=['mmmod'])`` in any OpenMMLab config registers
``ResNetMoD``, ``ResNetV1cMoD``, ``ResNetV1dMoD``, ``ResNeXtMoD`` in each
toolbox's own registry (each the toolbox's own ResNet class with MoD blocks),
and mmpretrain's ``ResNetMoD_CIFAR``, ``MobileNetV2MoD`` and ``VGGMoD``.
"""
from .datasets import *  # noqa: F401,F403
from .layers import ChannelSelector, MoDBlock
from .models import *  # noqa: F401,F403
from .version import __version__

__all__ = ['ChannelSelector', 'MoDBlock', '__version__']
