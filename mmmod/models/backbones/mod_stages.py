"""How a stock ResNet stage becomes a MoD stage, for every toolbox.

The toolbox's own ``make_res_layer`` builds each stage, with every argument
the toolbox gives it (dcn, plugins, multi-grid dilations, style, with_cp,
conv_cfg, norm_cfg, drop path, ...); :class:`MoDStagesMixin` keeps those
arguments and, once the stock ``__init__`` is done, puts at each MoD position
of each stage (:func:`~mmmod.layers.is_mod_position`) a MoD block
(:class:`StageMoDBlock`) whose Conv-Block is the same block class, called
with the arguments the stock stage gave that block (dilation, drop-path rate
and ``init_cfg`` of that position included), on ``k -> k`` channels.

The toolboxes differ only in how their stages pass arguments to their
blocks and how the blocks name the channels (:class:`BlockArgs`); the depth
table (:data:`DEPTHS`) is shared data.

Rules inside a MoD Conv-Block, where ``k = C // c`` may be as small as 1:

* Bottleneck inner width ``max(1, k // expansion)`` (the paper's parameter
  counts depend on it).
* ResNeXt: the same inner width, in ``gcd(groups, width)`` groups (32 groups
  of 4 cannot fit a width of 1).
* GroupNorm on ``n`` channels uses ``gcd(num_groups, n)`` groups
  (:class:`FittedGroupNorm`): the stock count wherever it fits.
* Anything else that cannot be built on ``k`` channels (e.g. a plugin whose
  reduced width rounds to 0) is a ``ValueError`` at construction naming the
  stage, the block, ``k`` and the block's norm and plugins.
"""
import math
from functools import partial
from typing import Dict, Optional, Tuple

import torch.fx
import torch.nn as nn

from mmmod.layers import (MoDBlock, RefusesTrainingWhenDeployed,
                          check_input_channels, is_mod_position)

# an input check is a call in torch.fx graphs (fold_conv_bn traces them)
torch.fx.wrap('check_input_channels')

#: depth -> (block kind, blocks per stage): the stock depths and the paper's
#: 26, 42, 75 and 86 (supplement Table 5).
DEPTHS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ('basic', (2, 2, 2, 2)),
    26: ('basic', (2, 2, 3, 4)),
    34: ('basic', (3, 4, 6, 3)),
    42: ('basic', (3, 3, 6, 6)),
    50: ('bottleneck', (3, 4, 6, 3)),
    75: ('bottleneck', (3, 4, 14, 3)),
    86: ('bottleneck', (3, 4, 18, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


def mod_arch_settings(stock: type) -> dict:
    """``stock.arch_settings`` over :data:`DEPTHS`, with the stock class's
    own block classes (a ResNeXt, which has no basic-block depths, gets the
    bottleneck depths only)."""
    blocks = {kind: stock.arch_settings[depth][0]
              for depth, kind in ((18, 'basic'), (50, 'bottleneck'))
              if depth in stock.arch_settings}
    return {
        depth: (blocks[kind], stages)
        for depth, (kind, stages) in DEPTHS.items() if kind in blocks
    }


class FittedGroupNorm(nn.GroupNorm):
    """GroupNorm with ``gcd(num_groups, num_channels)`` groups: the stock
    count wherever it divides the channels, fewer where it does not (a MoD
    Conv-Block on k = 1 channel gets 1 group). ``build_norm_layer`` names it
    ``gn``, so checkpoints keep the stock keys."""

    _abbr_ = 'gn'

    def __init__(self, num_channels: int, num_groups: int, **kwargs):
        super().__init__(math.gcd(num_groups, num_channels), num_channels,
                         **kwargs)


def _fit_norm_cfg(norm_cfg: Optional[dict]) -> Optional[dict]:
    if norm_cfg is not None and norm_cfg.get('type') in ('GN', nn.GroupNorm):
        return dict(norm_cfg, type=FittedGroupNorm)
    return norm_cfg


class BlockArgs:
    """How a toolbox's ResNet stages call their blocks, and how the blocks
    take their channels. mmpretrain: ``in_channels``, ``out_channels`` and
    ``expansion`` (the inner width is ``out_channels // expansion``);
    ResNeXt adds ``groups``, ``width_per_group`` and ``base_channels``."""

    def args_of(self, stage: dict, index: int) -> dict:
        """The arguments mmpretrain's ``ResLayer`` gives block ``index`` >= 1
        of a stage made by ``make_res_layer(**stage)``."""
        args = {k: v for k, v in stage.items() if k not in (
            'block', 'num_blocks', 'in_channels', 'stride', 'avg_down',
            'drop_path_rate')}
        rate = stage.get('drop_path_rate', 0.0)
        args.update(in_channels=stage['out_channels'], stride=1,
                    drop_path_rate=rate[index] if isinstance(
                        rate, (list, tuple)) else rate)
        return args

    def out_channels(self, block: type, args: dict) -> int:
        return args['out_channels']

    def expansion(self, block: type, args: dict) -> int:
        return args['expansion']

    def set_channels(self, block: type, args: dict, k: int, inner: int):
        args.update(in_channels=k, out_channels=k, expansion=k // inner)
        groups = args.get('groups', 1)
        if groups != 1:  # inner width groups * width_per_group * inner // base
            g = math.gcd(groups, inner)
            args.update(groups=g, width_per_group=inner // g,
                        base_channels=inner)


class PlanesBlockArgs(BlockArgs):
    """mmdet and mmseg: ``inplanes`` and ``planes`` (the inner width); the
    output is ``planes * block.expansion``, a class attribute. ResNeXt adds
    ``groups``, ``base_width`` and ``base_channels``."""

    def args_of(self, stage: dict, index: int) -> dict:
        """The arguments mmdet's / mmseg's ``ResLayer`` gives block
        ``index`` >= 1 (mmseg's: ``multi_grid[index]`` as its dilation)."""
        args = {k: v for k, v in stage.items() if k not in (
            'block', 'num_blocks', 'inplanes', 'stride', 'avg_down',
            'multi_grid', 'contract_dilation', 'downsample_first')}
        args.update(inplanes=stage['planes'] * stage['block'].expansion,
                    stride=1)
        if stage.get('multi_grid'):
            args['dilation'] = stage['multi_grid'][index]
        return args

    def out_channels(self, block: type, args: dict) -> int:
        return args['planes'] * block.expansion

    def expansion(self, block: type, args: dict) -> int:
        return block.expansion

    def set_channels(self, block: type, args: dict, k: int, inner: int):
        if inner * block.expansion != k:
            raise ValueError(
                f'a MoD {block.__name__} on k={k} channels needs k to be a '
                f'multiple of its expansion {block.expansion} (the output '
                f'is planes * {block.expansion}); choose c so that k = '
                'channels // c is')
        args.update(inplanes=k, planes=inner)
        groups = args.get('groups', 1)
        if groups != 1:  # width floor(planes * base_width / base) * groups
            g = math.gcd(groups, inner)
            args.update(groups=g, base_width=inner // g, base_channels=inner)


class StageMoDBlock(MoDBlock):
    """A MoD block in a stock stage: ``init_weights`` reaches its Conv-Block,
    as it reaches the stage's other blocks (mmdet's and mmseg's stages pass
    each block an ``init_cfg``: the zero-initialised last norm of
    ``zero_init_residual``)."""

    def init_weights(self):
        if hasattr(self.block, 'init_weights'):
            self.block.init_weights()


class MoDStagesMixin(RefusesTrainingWhenDeployed):
    """Makes a stock ResNet class a ResNet-MoD: put it first in the bases,
    ``class ResNetMoD(MoDStagesMixin, ResNet)``, and set :attr:`block_args`
    and ``arch_settings = mod_arch_settings(ResNet)`` (one such class per
    toolbox: :mod:`.resnet_mod`, :mod:`.mmdet_resnet_mod`,
    :mod:`.mmseg_resnet_mod`).

    Takes every argument of the stock class, plus:

    Args:
        c (int): MoD capacity divisor; a MoD block on C channels processes
            k = C // c of them. Default 64 (the widest that keeps k >= 1 in
            the first stage of every depth).
        fusion (str): ``'first-k'`` (default), ``'last-k'`` or
            ``'original'``; see :class:`mmmod.layers.MoDBlock`.
        deploy (bool): build the MoD blocks in their inference form
            (:meth:`mmmod.layers.MoDBlock.switch_to_deploy`), to load a
            checkpoint converted by ``tools/deployment/switch_to_deploy.py``.
    """

    block_args: BlockArgs = BlockArgs()
    #: attributes that the stock class's own ``make_res_layer`` adds to
    #: every stage's arguments (a ResNeXt's groups and widths)
    stage_extras: Tuple[str, ...] = ()

    def __init__(self, depth: int, c: int = 64, fusion: str = 'first-k',
                 deploy: bool = False, **kwargs):
        if depth not in self.arch_settings:
            raise KeyError(f'{type(self).__name__}: depth={depth!r} is not '
                           f'one of {sorted(self.arch_settings)}')
        super().__init__(depth=depth, **kwargs)  # the stock network
        self.c, self.fusion, self.deploy = c, fusion, deploy
        self.in_channels = kwargs.get('in_channels', 3)
        for stage, (name, args) in enumerate(
                zip(self.res_layers, self.__dict__.pop('_stage_args')), 1):
            layer = getattr(self, name)
            for index in range(1, len(layer)):  # the first is standard
                if is_mod_position(index):
                    layer[index] = self.make_mod_block(args, stage, index)
        self._freeze_stages()  # (frozen_stages reach the new blocks too)

    def make_res_layer(self, **kwargs) -> nn.Module:
        """The stock stage; its arguments are kept for :meth:`__init__`,
        which builds the stage's MoD blocks from them."""
        self.__dict__.setdefault('_stage_args', []).append(kwargs)
        return super().make_res_layer(**kwargs)

    def make_mod_block(self, stage: dict, stage_index: int,
                       index: int) -> StageMoDBlock:
        """The MoD block at position ``index`` of the stage made by
        ``make_res_layer(**stage)``: its Conv-Block is the stock block
        there, rebuilt on k channels (:meth:`make_conv_block`)."""
        block = stage['block']
        args = self.block_args.args_of(stage, index)
        args.update({name: getattr(self, name) for name in self.stage_extras})
        return StageMoDBlock(
            self.block_args.out_channels(block, args),
            partial(self.make_conv_block, block, args,
                    f'layer{stage_index}[{index}]'),
            c=self.c, fusion=self.fusion, deploy=self.deploy)

    def make_conv_block(self, block: type, args: dict, where: str,
                        k: int) -> nn.Module:
        """``block(**args)`` on ``k -> k`` channels, stride 1."""
        expansion = self.block_args.expansion(block, args)
        inner = max(1, k // expansion)
        where = (f'the MoD Conv-Block of {where} ({block.__name__}, k={k} '
                 f'channels, norm_cfg={args.get("norm_cfg")}, plugins='
                 f'{args.get("plugins")})')
        if k % inner:
            raise ValueError(
                f'{where}: the inner width {inner} must divide k; choose c so '
                'that k = channels // c is a power of two')
        args = dict(args, stride=1, downsample=None,
                    norm_cfg=_fit_norm_cfg(args.get('norm_cfg')))
        try:
            self.block_args.set_channels(block, args, k, inner)
            conv_block = block(**args)
        except (AssertionError, ValueError, RuntimeError,
                ZeroDivisionError) as err:
            raise ValueError(f'{where} cannot be built: '
                             f'{type(err).__name__}: {err}') from err
        for name, p in conv_block.named_parameters():
            if p.numel() == 0:
                raise ValueError(
                    f'{where}: {name} has no channels on k={k} (e.g. a '
                    'plugin whose reduced width rounds to 0); choose a '
                    'smaller c or leave this stage without the plugin')
        return conv_block

    def forward(self, x):
        check_input_channels(x, self.in_channels, type(self).__name__)
        return super().forward(x)
