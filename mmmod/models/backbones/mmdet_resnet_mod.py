"""ResNet-MoD in mmdet: mmdet's own ResNet classes (dcn, plugins, its stem
layout and defaults) with MoD blocks, registered in mmdet's registry. The
mechanism is :mod:`.mod_stages`."""
from mmdet.models.backbones.resnet import (BasicBlock, Bottleneck, ResNet,
                                           ResNetV1d)
from mmdet.models.backbones.resnext import Bottleneck as XBottleneck
from mmdet.models.backbones.resnext import ResNeXt
from mmdet.registry import MODELS

from .mod_stages import MoDStagesMixin, PlanesBlockArgs, mod_arch_settings


@MODELS.register_module()
class ResNetMoD(MoDStagesMixin, ResNet):
    """mmdet's ResNet with Mixture-of-Depths blocks: every argument and
    default of mmdet's ``ResNet``, plus ``c`` and ``fusion``
    (:class:`~.mod_stages.MoDStagesMixin`); depths as
    :data:`~.mod_stages.DEPTHS`."""

    block_args = PlanesBlockArgs()
    arch_settings = mod_arch_settings(BasicBlock, Bottleneck)


@MODELS.register_module()
class ResNetV1dMoD(ResNetMoD, ResNetV1d):
    """mmdet's ResNetV1d (deep stem, average-pool down-sampling) with MoD
    blocks."""


@MODELS.register_module()
class ResNeXtMoD(ResNetMoD, ResNeXt):
    """mmdet's ResNeXt with MoD blocks. A MoD Conv-Block has ResNet-MoD's
    inner width, in ``gcd(groups, width)`` groups."""

    arch_settings = mod_arch_settings(None, XBottleneck)
