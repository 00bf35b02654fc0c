"""ResNet-MoD in mmseg: mmseg's own ResNet classes (multi_grid,
contract_dilation, dcn, plugins, its stem layout and defaults) with MoD
blocks, registered in mmseg's registry. The mechanism is
:mod:`.mod_stages`."""
from mmseg.models.backbones import ResNet, ResNetV1c, ResNetV1d, ResNeXt
from mmseg.registry import MODELS

from .mod_stages import MoDStagesMixin, PlanesBlockArgs, mod_arch_settings


@MODELS.register_module()
class ResNetMoD(MoDStagesMixin, ResNet):
    """mmseg's ResNet with Mixture-of-Depths blocks: every argument and
    default of mmseg's ``ResNet``, plus ``c``, ``fusion`` and ``deploy``
    (:class:`~.mod_stages.MoDStagesMixin`)."""

    block_args = PlanesBlockArgs()
    arch_settings = mod_arch_settings(ResNet)


@MODELS.register_module()
class ResNetV1cMoD(ResNetMoD, ResNetV1c):
    """mmseg's ResNetV1c (deep stem) with MoD blocks."""


@MODELS.register_module()
class ResNetV1dMoD(ResNetMoD, ResNetV1d):
    """mmseg's ResNetV1d (deep stem, average-pool down-sampling) with MoD
    blocks."""


@MODELS.register_module()
class ResNeXtMoD(ResNetMoD, ResNeXt):
    """mmseg's ResNeXt with MoD blocks (``groups``, ``base_width`` as
    there). A MoD Conv-Block has ResNet-MoD's inner width, in
    ``gcd(groups, width)`` groups."""

    arch_settings = mod_arch_settings(ResNeXt)
    stage_extras = ('groups', 'base_width', 'base_channels')
