"""ResNet-MoD in mmpretrain: mmpretrain's own ResNet classes with every odd
block of a stage a MoD block (supplement Table 5), registered in mmpretrain's
registry. mmseg's and mmdet's are in :mod:`.mmseg_resnet_mod` and
:mod:`.mmdet_resnet_mod`; the mechanism is :mod:`.mod_stages`."""
from mmpretrain.models.backbones import (ResNet, ResNet_CIFAR, ResNetV1c,
                                         ResNetV1d, ResNeXt)
from mmpretrain.registry import MODELS

from .mod_stages import MoDStagesMixin, mod_arch_settings


@MODELS.register_module()
class ResNetMoD(MoDStagesMixin, ResNet):
    """mmpretrain's ResNet with Mixture-of-Depths blocks.

    Takes every argument of mmpretrain's ``ResNet`` (``drop_path_rate``
    reaches the MoD Conv-Blocks too), the MoD arguments of
    :class:`~.mod_stages.MoDStagesMixin` (``c``, ``fusion``), and:

    Args:
        depth (int): one of 18, 26, 34, 42, 50, 75, 86, 101, 152.
        pretrained (str, optional): as in mmseg/mmdet: a checkpoint to load,
            same as ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
    """

    arch_settings = mod_arch_settings(ResNet)

    def __init__(self, depth, pretrained=None, **kwargs):
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise TypeError(f'pretrained must be a str or None, got '
                                f'{pretrained!r}')
            if kwargs.get('init_cfg') is not None:
                raise ValueError('give either pretrained or init_cfg, not '
                                 'both')
            kwargs['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(depth, **kwargs)


@MODELS.register_module()
class ResNetV1cMoD(ResNetMoD, ResNetV1c):
    """ResNetMoD with the V1c deep stem (three 3x3 convs)."""


@MODELS.register_module()
class ResNetV1dMoD(ResNetMoD, ResNetV1d):
    """ResNetMoD with the V1d deep stem and average-pool down-sampling."""


@MODELS.register_module()
class ResNetMoD_CIFAR(ResNetMoD, ResNet_CIFAR):
    """ResNetMoD with the CIFAR stem: 3x3 conv, stride 1, no max-pool."""


@MODELS.register_module()
class ResNeXtMoD(ResNetMoD, ResNeXt):
    """mmpretrain's ResNeXt with MoD blocks (``groups``, ``width_per_group``
    as there). A MoD Conv-Block has ResNet-MoD's inner width, in
    ``gcd(groups, width)`` groups."""

    arch_settings = mod_arch_settings(ResNeXt)
    stage_extras = ('groups', 'width_per_group', 'base_channels')
