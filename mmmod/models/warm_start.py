"""Warm start: a stock ResNet checkpoint into ResNet-MoD of the same depth.

ResNet-MoD keeps the stock ResNet's module names (mmpretrain's, which are
torchvision's too): block ``layerS.I`` is a standard block wherever ``I`` is
even, and takes the stock ``layerS.I`` weights, as do the stem and the head.
The odd blocks are MoD blocks: their stock weights have no place (skipped) and
the MoD selector and inner block start fresh (new).

From a config, point the backbone straight at a stock checkpoint::

    backbone=dict(type='ResNetMoD', depth=50, init_cfg=dict(
        type='WarmStartFromResNet', checkpoint='torchvision://resnet50'))

or convert a file once with ``tools/model_converters/resnet_to_mod.py`` and
set ``load_from`` to the result.
"""
import copy
import inspect
import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from mmengine.logging import print_log
from mmengine.model import constant_init, initialize, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor

from mmmod.layers import MoDBlock
from .backbones import ResNetMoD

_BLOCK = re.compile(r'layer(\d+)\.(\d+)\.')


@dataclass
class WarmStartReport:
    """Key names, relative to the backbone, of what a warm start did."""
    mapped: List[str] = field(default_factory=list)   # stock -> same name
    skipped: List[str] = field(default_factory=list)  # stock, no place
    new: List[str] = field(default_factory=list)      # MoD, start fresh

    def summary(self) -> str:
        return (f'warm start: {len(self.mapped)} keys mapped from the stock '
                f'ResNet, {len(self.skipped)} stock keys skipped (the blocks '
                f'that MoD blocks replace), {len(self.new)} new MoD keys '
                'start fresh')

    def to_dict(self) -> dict:
        return dict(mapped=self.mapped, skipped=self.skipped, new=self.new)


def split_stock_checkpoint(checkpoint: dict) -> Tuple[dict, dict, list]:
    """Backbone and head weights of a stock ResNet checkpoint.

    Takes an OpenMMLab checkpoint (``backbone.*`` / ``head.*`` keys, with or
    without a ``state_dict`` wrapper) or a torchvision / backbone-only one
    (bare ``conv1.*``, ``layer1.0.*``, ``fc.*``). Returns
    ``(backbone, head, other_keys)``: backbone and head keys as mmpretrain
    names them inside those modules (``conv1.weight``, ``fc.weight``).
    """
    state = checkpoint.get('state_dict', checkpoint)
    if any(k.startswith('backbone.') for k in state):
        backbone = _strip(state, 'backbone.')
        head = _strip(state, 'head.')
    else:
        head = {k: v for k, v in state.items() if k.startswith('fc.')}
        backbone = {k: v for k, v in state.items() if k not in head}
    other = [k for k in state
             if k not in backbone and k not in head
             and not k.startswith(('backbone.', 'head.'))]
    return backbone, head, other


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix)}


def resnet_arch(backbone_state: dict, where: str = 'checkpoint') -> tuple:
    """``(block name, blocks per stage)`` of the ResNet whose weights these
    are, read from the ``layerS.I.*`` keys."""
    blocks = {}
    for key in backbone_state:
        m = _BLOCK.match(key)
        if m:
            stage, i = int(m[1]), int(m[2])
            blocks[stage] = max(blocks.get(stage, 0), i + 1)
    if not blocks:
        raise ValueError(f'{where} holds no ResNet blocks (no layerS.I.* '
                         'keys): is it a ResNet checkpoint?')
    bottleneck = any(
        re.match(r'layer\d+\.\d+\.conv3\.', k) for k in backbone_state)
    return ('Bottleneck' if bottleneck else 'BasicBlock',
            tuple(blocks[s] for s in sorted(blocks)))


def _arch_name(arch) -> str:
    for depth, (block, stages) in ResNet.arch_settings.items():
        if (block.__name__, stages) == arch:
            return f'ResNet{depth}'
    return f'a ResNet with {arch[0]}s {list(arch[1])} (no stock depth)'


def map_resnet_to_mod(model: ResNetMoD, backbone_state: Dict[str, Tensor],
                      where: str = 'checkpoint'):
    """Match a stock ResNet's backbone weights to ``model``'s keys.

    Returns ``(state, report)``: ``state`` holds the mapped weights under the
    model's names. Raises ValueError when the checkpoint's depth or a shape
    differs, KeyError when a standard part of ``model`` finds no weights.
    """
    if not isinstance(model, ResNetMoD):
        raise TypeError('a ResNet warm start needs a ResNetMoD backbone, got '
                        f'{type(model).__name__}')
    name = f'{type(model).__name__}(depth={model.depth})'
    block, stages = model.arch_settings[model.depth]
    src = resnet_arch(backbone_state, where)
    if src != (block.__name__, stages):
        stock = (f'a stock ResNet{model.depth} ({block.__name__}s '
                 f'{list(stages)})')
        if model.depth not in ResNet.arch_settings:
            stock += f', and no stock ResNet{model.depth} exists'
        raise ValueError(f'{where} holds {_arch_name(src)} weights, which '
                         f'cannot warm-start {name}: that needs {stock}')

    mod_blocks = tuple(n + '.' for n, m in model.named_modules()
                       if isinstance(m, MoDBlock))
    report = WarmStartReport()
    state, missing = {}, []
    for key, value in model.state_dict().items():
        if key.startswith(mod_blocks):
            report.new.append(key)
        elif key in backbone_state:
            if backbone_state[key].shape != value.shape:
                raise ValueError(
                    f'{where}: {key} has shape '
                    f'{tuple(backbone_state[key].shape)}, {name} expects '
                    f'{tuple(value.shape)} (a different stem or width?)')
            state[key] = backbone_state[key]
            report.mapped.append(key)
        elif not key.endswith('num_batches_tracked'):  # absent in old files
            missing.append(key)
    if missing:
        raise KeyError(f'{where} has no weights for {len(missing)} keys of '
                       f'the standard blocks of {name}, e.g. {missing[:3]} '
                       '(a different stem, e.g. V1c deep stem vs plain?)')
    report.skipped = [k for k in backbone_state if k not in state]
    return state, report


def warm_start_resnet_mod(model: ResNetMoD, checkpoint: dict,
                          where: str = 'checkpoint') -> WarmStartReport:
    """Load a stock ResNet checkpoint's backbone weights into ``model``."""
    backbone, _, _ = split_stock_checkpoint(checkpoint)
    state, report = map_resnet_to_mod(model, backbone, where)
    model.load_state_dict(state, strict=False)
    return report


@WEIGHT_INITIALIZERS.register_module()
class WarmStartFromResNet:
    """``init_cfg`` type: warm-start a ResNetMoD from a stock ResNet.

    Everything starts as in a scratch ResNetMoD (the stock ResNet's default
    init, ``zero_init_residual`` on the MoD blocks' inner blocks), then the
    standard blocks, the stem and the norms load the stock weights.

    Args:
        checkpoint (str): a path or any scheme mmengine loads
            (``torchvision://resnet50``, ``open-mmlab://...``, http),
            in OpenMMLab or torchvision format.
        map_location (str): where tensors are loaded. Default 'cpu'.
    """

    # mmpretrain ResNet's own default init_cfg (Kaiming convs, unit norms)
    stock_init = inspect.signature(ResNet).parameters['init_cfg'].default

    def __init__(self, checkpoint: str, map_location: str = 'cpu'):
        self.checkpoint = checkpoint
        self.map_location = map_location

    def __call__(self, module):
        from mmengine.runner import CheckpointLoader

        if not isinstance(module, ResNetMoD):
            raise TypeError('WarmStartFromResNet goes in the init_cfg of a '
                            f'ResNetMoD backbone, not {type(module).__name__}')
        initialize(module, copy.deepcopy(self.stock_init))
        ckpt = CheckpointLoader.load_checkpoint(self.checkpoint,
                                                self.map_location)
        report = warm_start_resnet_mod(module, ckpt, self.checkpoint)
        if module.zero_init_residual:
            for m in module.modules():
                if isinstance(m, MoDBlock):
                    _zero_init_residual(m)
            # ResNet.init_weights zero-inits every block after this call,
            # which would wipe the loaded last norms of the standard blocks.
            module.zero_init_residual = False
        print_log(f'{report.summary()} ({self.checkpoint})', logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self):
        return f'{type(self).__name__}: load from {self.checkpoint}'


def _zero_init_residual(module):
    for m in module.modules():
        if isinstance(m, Bottleneck):
            constant_init(m.norm3, 0)
        elif isinstance(m, BasicBlock):
            constant_init(m.norm2, 0)
