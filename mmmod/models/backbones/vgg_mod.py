"""VGG-MoD: the stock mmpretrain VGG with every odd conv layer of a stage a
MoD layer (selector, conv3x3-norm-act on k channels, scale, fusion)."""
import torch.fx
from mmcv.cnn import ConvModule
from mmengine.registry import MODELS
from mmpretrain.models.backbones.vgg import VGG

from mmmod.layers import (MoDBlock, RefusesTrainingWhenDeployed,
                          check_input_channels, is_mod_position)

# an input check is a call in torch.fx graphs (fold_conv_bn traces them)
torch.fx.wrap('check_input_channels')


@MODELS.register_module()
class VGGMoD(RefusesTrainingWhenDeployed, VGG):
    """VGG with Mixture-of-Depths conv layers.

    Takes every argument of mmpretrain's ``VGG``, plus:

    Args:
        c (int): MoD capacity divisor. Default 64.
        fusion (str): ``'first-k'`` (default), ``'last-k'`` or
            ``'original'``.
        deploy (bool): MoD layers in their inference form
            (:meth:`mmmod.layers.MoDBlock.switch_to_deploy`).
    """

    def __init__(self,
                 depth,
                 c=64,
                 fusion='first-k',
                 deploy=False,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 dilations=(1, 1, 1, 1, 1),
                 init_cfg=[
                     dict(type='Kaiming', layer=['Conv2d']),
                     dict(type='Constant', val=1., layer=['_BatchNorm'])
                 ],
                 **kwargs):
        # Stock VGG also inits every Linear with N(0, 0.01), meant for its
        # ImageNet classifier; that would give the selectors near-equal
        # scores. They keep PyTorch's default init, as in ResNetMoD.
        super().__init__(
            depth,
            conv_cfg=conv_cfg,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg,
            dilations=dilations,
            init_cfg=init_cfg,
            **kwargs)
        # VGG builds its stages in one go; swap the odd conv layers of each
        # stage (index 0 carries the channel change) for MoD layers.
        for stage, (start, _) in enumerate(self.range_sub_modules):
            for i in range(1, self.stage_blocks[stage]):
                if not is_mod_position(i):
                    continue
                conv = self.features[start + i]
                d = dilations[stage]
                self.features[start + i] = MoDBlock(
                    conv.conv.out_channels,
                    lambda k: ConvModule(
                        k, k, 3, padding=d, dilation=d, bias=True,
                        conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                        act_cfg=act_cfg),
                    c=c,
                    fusion=fusion,
                    deploy=deploy)

    def forward(self, x):
        check_input_channels(x, 3, 'VGGMoD')
        return super().forward(x)
