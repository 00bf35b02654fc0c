"""MobileNetV2-MoD: the stock mmpretrain MobileNetV2 with every odd repeat of
a stage a MoD block; ``arch='L'`` is the wider MobileNetV2-MoD-L (supplement
Table 6)."""
import torch.fx
import torch.nn as nn
from mmengine.registry import MODELS
from mmpretrain.models.backbones.mobilenet_v2 import (InvertedResidual,
                                                      MobileNetV2)
from mmpretrain.models.utils import make_divisible

from mmmod.layers import (MoDBlock, RefusesTrainingWhenDeployed,
                          check_input_channels, is_mod_position)

# an input check is a call in torch.fx graphs (fold_conv_bn traces them)
torch.fx.wrap('check_input_channels')


@MODELS.register_module()
class MobileNetV2MoD(RefusesTrainingWhenDeployed, MobileNetV2):
    """MobileNetV2 with Mixture-of-Depths blocks.

    Takes every argument of mmpretrain's ``MobileNetV2``, plus:

    Args:
        arch (str): ``'default'`` (stock stage widths) or ``'L'`` (stages 2-5
            widened to 32, 64, 96, 128 channels).
        c (int, optional): MoD capacity divisor. The paper gives none for
            MobileNetV2; by the rule behind ResNet's c = 64 (c equals the
            narrowest MoD stage, so k >= 1 everywhere) it defaults to that
            stage's width after ``widen_factor``: 24 for ``'default'`` and
            32 for ``'L'`` at ``widen_factor=1.0``.
        fusion (str): ``'first-k'`` (default), ``'last-k'`` or
            ``'original'``.
        deploy (bool): MoD blocks in their inference form
            (:meth:`mmmod.layers.MoDBlock.switch_to_deploy`).
    """

    # [expand_ratio t, channels c, repeats n, stride s] per stage
    arch_zoo = {
        'default': [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2],
                    [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                    [6, 320, 1, 1]],
        'L': [[1, 16, 1, 1], [6, 32, 2, 2], [6, 64, 3, 2], [6, 96, 4, 2],
              [6, 128, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]],
    }
    def __init__(self, arch='default', c=None, fusion='first-k',
                 deploy=False, **kwargs):
        if arch not in self.arch_zoo:
            raise KeyError(f'MobileNetV2MoD: arch={arch!r} is not one of '
                           f'{sorted(self.arch_zoo)}')
        # Read by MobileNetV2.__init__ and make_layer.
        self.arch_settings = self.arch_zoo[arch]
        widen = kwargs.get('widen_factor', 1.0)
        # the narrowest stage with MoD blocks (two repeats or more), widened
        # as MobileNetV2 widens it
        self.c = min(make_divisible(width * widen, 8)
                     for _, width, repeats, _ in self.arch_settings
                     if repeats > 1) if c is None else c
        self.fusion = fusion
        self.deploy = deploy
        super().__init__(**kwargs)

    def make_layer(self, out_channels, num_blocks, stride, expand_ratio):
        block_kwargs = dict(
            expand_ratio=expand_ratio,
            conv_cfg=self.conv_cfg,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg,
            with_cp=self.with_cp)
        layers = [
            InvertedResidual(self.in_channels, out_channels, stride,
                             **block_kwargs)
        ]
        self.in_channels = out_channels
        for i in range(1, num_blocks):
            if is_mod_position(i):
                layers.append(
                    MoDBlock(
                        out_channels,
                        lambda k: InvertedResidual(k, k, 1, **block_kwargs),
                        c=self.c,
                        fusion=self.fusion,
                        deploy=self.deploy))
            else:
                layers.append(
                    InvertedResidual(out_channels, out_channels, 1,
                                     **block_kwargs))
        return nn.Sequential(*layers)

    def forward(self, x):
        check_input_channels(x, 3, 'MobileNetV2MoD')
        return super().forward(x)
