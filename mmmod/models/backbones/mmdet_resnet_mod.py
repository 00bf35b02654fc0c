"""ResNet-MoD in mmdet: mmdet's own ResNet classes (dcn, plugins, its stem
layout and defaults) with MoD blocks, registered in mmdet's registry. The
mechanism is :mod:`.mod_stages`."""
from mmdet.models.backbones import ResNet, ResNetV1d, ResNeXt
from mmdet.registry import MODELS

from .mod_stages import MoDStagesMixin, PlanesBlockArgs, mod_arch_settings


@MODELS.register_module()
class ResNetMoD(MoDStagesMixin, ResNet):
    """mmdet's ResNet with Mixture-of-Depths blocks: every argument and
    default of mmdet's ``ResNet``, plus ``c``, ``fusion`` and ``deploy``
    (:class:`~.mod_stages.MoDStagesMixin`)."""

    block_args = PlanesBlockArgs()
    arch_settings = mod_arch_settings(ResNet)


@MODELS.register_module()
class ResNetV1cMoD(ResNetMoD):
    """mmdet has no ResNetV1c; as mmseg's (and as mmdet's ResNetV1d, less
    its average-pool down-sampling): mmdet's ResNet with the deep stem. So
    ``ResNetV1cMoD`` from an mmdet config is mmdet's ResNet too (4 outputs,
    mmdet's defaults and stem layout), not another toolbox's class."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


@MODELS.register_module()
class ResNetV1dMoD(ResNetMoD, ResNetV1d):
    """mmdet's ResNetV1d (deep stem, average-pool down-sampling) with MoD
    blocks."""


@MODELS.register_module()
class ResNeXtMoD(ResNetMoD, ResNeXt):
    """mmdet's ResNeXt with MoD blocks (``groups``, ``base_width`` as
    there). A MoD Conv-Block has ResNet-MoD's inner width, in
    ``gcd(groups, width)`` groups."""

    arch_settings = mod_arch_settings(ResNeXt)
    stage_extras = ('groups', 'base_width', 'base_channels')
