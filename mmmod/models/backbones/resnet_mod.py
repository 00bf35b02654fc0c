"""ResNet-MoD: the stock mmpretrain ResNet with every odd block of a stage a
MoD block (supplement Table 5)."""
from functools import partial

from mmengine.registry import MODELS
from mmpretrain.models.backbones.resnet import (BasicBlock, Bottleneck,
                                                ResLayer, ResNet, ResNetV1c,
                                                ResNetV1d)
from mmpretrain.models.backbones.resnet_cifar import ResNet_CIFAR

from mmmod.layers import MoDBlock, check_input_channels, is_mod_position


def _mod_conv_block(k, block, expansion, **kwargs):
    """The stage's block type, rebuilt for k -> k channels at stride 1."""
    if block is BasicBlock:
        return block(k, k, expansion=1, **kwargs)
    # A Bottleneck's inner width scales with k: max(1, k // expansion).
    mid = max(1, k // expansion)
    if k % mid:
        raise ValueError(
            f'a MoD Bottleneck on k={k} channels needs an inner width that '
            f'divides k (got {mid}); choose c so that k = channels // c is a '
            'power of two')
    return block(k, k, expansion=k // mid, **kwargs)


# Registered in mmengine's root registry, so that mmpretrain, mmseg and mmdet
# all find it from their own configs.
@MODELS.register_module()
class ResNetMoD(ResNet):
    """ResNet with Mixture-of-Depths blocks.

    Takes every argument of mmpretrain's ``ResNet``, plus:

    Args:
        depth (int): one of 18, 26, 34, 42, 50, 75, 86, 101, 152.
        c (int): MoD capacity divisor; a MoD block on C channels processes
            k = C // c of them. Default 64 (the widest that keeps k >= 1 in
            the first stage).
        fusion (str): ``'first-k'`` (default), ``'last-k'`` or
            ``'original'``; see :class:`mmmod.layers.MoDBlock`.
        contract_dilation (bool): as in mmseg/mmdet: the first block of a
            dilated stage uses half the dilation. Default False.
        pretrained (str, optional): as in mmseg/mmdet (whose segmentors
            pass the model-level ``pretrained`` on to the backbone): a
            checkpoint to load, same as ``init_cfg=dict(type='Pretrained',
            checkpoint=...)``.
    """

    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        26: (BasicBlock, (2, 2, 3, 4)),
        34: (BasicBlock, (3, 4, 6, 3)),
        42: (BasicBlock, (3, 3, 6, 6)),
        50: (Bottleneck, (3, 4, 6, 3)),
        75: (Bottleneck, (3, 4, 14, 3)),
        86: (Bottleneck, (3, 4, 18, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self,
                 depth,
                 c=64,
                 fusion='first-k',
                 contract_dilation=False,
                 in_channels=3,
                 pretrained=None,
                 **kwargs):
        if depth not in self.arch_settings:
            raise KeyError(f'{type(self).__name__}: depth={depth!r} is not '
                           f'one of {sorted(self.arch_settings)}')
        if pretrained is not None:
            if kwargs.get('init_cfg') is not None:
                raise ValueError('give either pretrained or init_cfg, not '
                                 'both')
            kwargs['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
        # Read by make_res_layer, which ResNet.__init__ calls.
        self.c = c
        self.fusion = fusion
        self.contract_dilation = contract_dilation
        self.in_channels = in_channels
        super().__init__(depth=depth, in_channels=in_channels, **kwargs)

    def make_res_layer(self, block, num_blocks, in_channels, out_channels,
                       expansion, stride, dilation, drop_path_rate, avg_down,
                       **kwargs):
        first_dilation = dilation
        if self.contract_dilation and dilation > 1:
            first_dilation = dilation // 2
        # Block 0 carries the stride and the channel change (and downsample).
        layer = ResLayer(
            block=block,
            num_blocks=1,
            in_channels=in_channels,
            out_channels=out_channels,
            expansion=expansion,
            stride=stride,
            dilation=first_dilation,
            avg_down=avg_down,
            drop_path_rate=drop_path_rate[:1],
            **kwargs)
        conv_kwargs = dict(dilation=dilation, **kwargs)
        for i in range(1, num_blocks):
            if is_mod_position(i):
                conv_block = partial(
                    _mod_conv_block,
                    block=block,
                    expansion=expansion,
                    **conv_kwargs)
                layer.append(
                    MoDBlock(
                        out_channels,
                        conv_block,
                        c=self.c,
                        fusion=self.fusion))
            else:
                layer.append(
                    block(
                        out_channels,
                        out_channels,
                        expansion=expansion,
                        drop_path_rate=drop_path_rate[i],
                        **conv_kwargs))
        return layer

    def forward(self, x):
        check_input_channels(x, self.in_channels, type(self).__name__)
        return super().forward(x)


@MODELS.register_module()
class ResNetV1cMoD(ResNetMoD, ResNetV1c):
    """ResNetMoD with the V1c deep stem (three 3x3 convs), as mmseg's FCN."""


@MODELS.register_module()
class ResNetV1dMoD(ResNetMoD, ResNetV1d):
    """ResNetMoD with the V1d deep stem and average-pool down-sampling."""


@MODELS.register_module()
class ResNetMoD_CIFAR(ResNetMoD, ResNet_CIFAR):
    """ResNetMoD with the CIFAR stem: 3x3 conv, stride 1, no max-pool."""
