"""Warm start: a stock ResNet checkpoint into a ResNet-MoD backbone.

A ResNet-MoD backbone keeps the stock ResNet's module names: block
``layerS.I`` is a standard block wherever ``I`` is even and takes the stock
``layerS.I`` weights, as do the stem and the downsample shortcuts. The odd
blocks are MoD blocks: the stock weights of those blocks have no place
(skipped) and the MoD selector and inner block start fresh (new), unless
the checkpoint is a ResNet-MoD's own and has them.

Everything is matched against the model's own keys, so one warm start serves
the MoD backbone of every toolbox. The stock checkpoints name the plain stem
and the blocks alike (torchvision, mmpretrain, mmseg and mmdet: ``conv1``,
``bn1``, ``layerS.I.convJ`` / ``bnJ`` / ``downsample.N``); the V1c/V1d deep
stem has two layouts, renamed into the model's:

- mmseg / mmdet (``open-mmlab://resnet50_v1c``): one ``nn.Sequential`` of
  conv, norm, ReLU three times: ``stem.0.weight``, ``stem.1.*``,
  ``stem.3.weight``, ...
- mmpretrain: three ConvModules: ``stem.0.conv.weight``, ``stem.0.bn.*``, ...

and the V1d shortcut of ``layer1`` two, matched by what each index holds
(the conv, the norm): mmpretrain's ``downsample.0`` / ``.1`` (conv, norm),
mmseg's and mmdet's ``downsample.1`` / ``.2`` after an identity
``AvgPool2d(1)``.

From a config, point the backbone straight at a stock checkpoint::

    backbone=dict(type='ResNetMoD', depth=50, init_cfg=dict(
        type='WarmStartFromResNet', checkpoint='torchvision://resnet50'))

or convert a file once with ``tools/model_converters/resnet_to_mod.py`` and
set ``load_from`` to the result.
"""
import copy
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from mmengine.logging import print_log
from mmengine.model import (constant_init, initialize, is_model_wrapper,
                            update_init_info)
from mmengine.registry import WEIGHT_INITIALIZERS
from mmpretrain.models.backbones.resnet import ResNet
from torch import Tensor, nn

from mmmod.layers import MoDBlock, mod_blocks

_BLOCK = re.compile(r'layer(\d+)\.(\d+)\.')
# The parameters and statistics a stock ResNet has under these names (the
# stem, the blocks' convJ / normJ, the shortcut); any other key of a model
# (DCN offsets, plugins) is an addition that starts fresh, as in mmdet.
_STOCK_KEY = re.compile(
    r'(([a-z]+1|stem\.\d+(\.\w+)?)|'  # conv1, bn1 / gn1, or deep
    r'layer\d+\.\d+\.([a-z]+\d|downsample\.\d+))'
    r'\.(weight|bias|running_mean|running_var|num_batches_tracked)')
# Deep-stem layouts (see the module docstring), to one name per parameter.
_STEM_SEQUENTIAL = re.compile(r'stem\.(\d+)\.(\w+)')
_STEM_CONVMODULE = re.compile(r'stem\.(\d+)\.(\w+)\.(\w+)')
# A standard block's shortcut: [conv, norm], or [AvgPool2d, conv, norm] (V1d;
# mmpretrain leaves the pool out where the stride is 1, mmseg and mmdet keep
# an identity AvgPool2d(1) there), to one name per parameter.
_SHORTCUT = re.compile(r'(layer\d+\.\d+\.downsample)\.(\d+)\.(\w+)')


@dataclass
class WarmStartReport:
    """Key names, relative to the backbone, of what a warm start did."""
    mapped: List[str] = field(default_factory=list)   # checkpoint -> model
    skipped: List[str] = field(default_factory=list)  # checkpoint, no place
    new: List[str] = field(default_factory=list)      # model, start fresh

    def summary(self) -> str:
        return (f'warm start: {len(self.mapped)} keys mapped from the '
                f'checkpoint, {len(self.skipped)} of its keys skipped (the '
                'stock blocks that MoD blocks replace, the classifier), '
                f'{len(self.new)} new keys start fresh (the MoD blocks)')

    def details(self) -> str:
        """The summary, then the modules of each list, one line each."""
        lines = [self.summary()]
        for name, keys in self.to_dict().items():
            modules = dict.fromkeys(_module_of(k) for k in keys)
            lines.append(f'  {name}: {", ".join(modules) or "-"}')
        return '\n'.join(lines)

    def to_dict(self) -> dict:
        return dict(mapped=self.mapped, skipped=self.skipped, new=self.new)


def _module_of(key: str) -> str:
    """``layer1.1.selector.fc1.weight`` -> ``layer1.1``; ``bn1.bias`` ->
    ``bn1``: what the report lists per line."""
    m = _BLOCK.match(key)
    return m[0][:-1] if m else key.split('.')[0]


def split_stock_checkpoint(checkpoint: dict) -> Tuple[dict, dict, list]:
    """Backbone and head weights of a stock ResNet checkpoint.

    Takes an OpenMMLab checkpoint (``backbone.*`` / ``head.*`` keys, with or
    without a ``state_dict`` wrapper) or a torchvision / backbone-only one
    (bare ``conv1.*`` or ``stem.*``, ``layer1.0.*``, ``fc.*``). Returns
    ``(backbone, head, other_keys)``: backbone and head keys as named inside
    those modules (``conv1.weight``, ``fc.weight``).
    """
    state = checkpoint.get('state_dict', checkpoint)
    if is_openmmlab(checkpoint):
        backbone = _strip(state, 'backbone.')
        head = _strip(state, 'head.')
    else:
        head = {k: v for k, v in state.items() if k.startswith('fc.')}
        backbone = {k: v for k, v in state.items() if k not in head}
    other = [k for k in state
             if k not in backbone and k not in head
             and not k.startswith(('backbone.', 'head.'))]
    return backbone, head, other


def is_openmmlab(checkpoint: dict) -> bool:
    """A whole OpenMMLab model (``backbone.*`` keys), not a bare backbone."""
    state = checkpoint.get('state_dict', checkpoint)
    return any(k.startswith('backbone.') for k in state)


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix)}


def resnet_arch(backbone_keys, where: str = 'checkpoint') -> tuple:
    """``(block name, blocks per stage)`` of the ResNet with these backbone
    keys, read from the ``layerS.I.*`` keys."""
    blocks = {}
    for key in backbone_keys:
        m = _BLOCK.match(key)
        if m:
            stage, i = int(m[1]), int(m[2])
            blocks[stage] = max(blocks.get(stage, 0), i + 1)
    if not blocks:
        raise ValueError(f'{where} holds no ResNet blocks (no layerS.I.* '
                         'keys): is it a ResNet checkpoint?')
    bottleneck = any(re.match(r'layer\d+\.\d+\.conv3\.', k)
                     for k in backbone_keys)
    return ('Bottleneck' if bottleneck else 'BasicBlock',
            tuple(blocks[s] for s in sorted(blocks)))


def _arch_name(arch) -> str:
    for depth, (block, stages) in ResNet.arch_settings.items():
        if (block.__name__, stages) == arch:
            return f'ResNet{depth}'
    return f'a ResNet with {arch[0]}s {list(arch[1])} (no stock depth)'


def stem_of(keys) -> str:
    """``'plain'`` (the 7x7 ``conv1``), ``'deep'`` (V1c/V1d ``stem.*``) or
    ``'none'``."""
    if any(k.startswith('conv1.') for k in keys):
        return 'plain'
    if any(k.startswith('stem.') for k in keys):
        return 'deep'
    return 'none'


def canonical_name(key: str) -> str:
    """One name per parameter whatever the deep-stem layout:
    ``stem.<conv>.conv.<p>`` / ``stem.<conv>.norm.<p>``, <conv> = 0, 1, 2.
    Any other key is its own canonical name."""
    m = _STEM_SEQUENTIAL.fullmatch(key)
    if m:  # conv, norm, ReLU per conv
        index, param = int(m[1]), m[2]
        kind = ('conv', 'norm', 'act')[index % 3]
        return f'stem.{index // 3}.{kind}.{param}'
    m = _STEM_CONVMODULE.fullmatch(key)
    if m:
        kind = 'conv' if m[2] == 'conv' else 'norm'  # bn, gn, ...
        return f'stem.{m[1]}.{kind}.{m[3]}'
    return key


def _shortcut_layouts(
        state) -> Dict[str, Tuple[Optional[int], Optional[int]]]:
    """``{'layerS.I.downsample': (conv index, norm index)}`` of the
    shortcuts in ``state`` (a state dict): the conv is the module with a 4-d
    weight, the norm the other one with parameters (a V1d shortcut's
    AvgPool2d has none); None where the state lacks it."""
    indices = {}
    for key, value in state.items():
        m = _SHORTCUT.fullmatch(key)
        if m:
            layout = indices.setdefault(m[1], {})
            is_conv = m[3] == 'weight' and value.dim() == 4
            layout[int(m[2])] = layout.get(int(m[2]), False) or is_conv
    layouts = {}
    for prefix, layout in indices.items():
        convs = [i for i, is_conv in layout.items() if is_conv]
        norms = [i for i, is_conv in layout.items() if not is_conv]
        if len(convs) <= 1 and len(norms) <= 1:
            layouts[prefix] = (convs[0] if convs else None,
                               norms[0] if norms else None)
    return layouts


def canonical_names(state) -> Dict[str, str]:
    """:func:`canonical_name` of each key of ``state`` (a state dict), the
    shortcuts' included: ``layerS.I.downsample.<conv>.<p>`` ->
    ``layerS.I.downsample.conv.<p>``, ``<norm>`` -> ``norm``, whether an
    AvgPool2d comes first or not (see :func:`_check_shortcuts` for when the
    two differ)."""
    layouts = _shortcut_layouts(state)
    names = {}
    for key in state:
        m = _SHORTCUT.fullmatch(key)
        if m and m[1] in layouts:
            conv, norm = layouts[m[1]]
            kind = {conv: 'conv', norm: 'norm'}.get(int(m[2]))
            if kind:
                names[key] = f'{m[1]}.{kind}.{m[3]}'
                continue
        names[key] = canonical_name(key)
    return names


def _check_shortcuts(model, backbone_state, name, where):
    """A strided shortcut of ``model`` and the checkpoint's must both pool
    first (V1d: AvgPool2d, then a 1x1 conv) or both not (a strided 1x1 conv);
    where the stride is 1 the pool is the identity and either loads."""
    ckpt = _shortcut_layouts(backbone_state)
    for prefix, module in model.named_modules():
        if prefix not in ckpt:
            continue
        pools = [m for m in module.children() if isinstance(m, nn.AvgPool2d)]
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            continue
        stride = pools[0].stride if pools else convs[0].stride
        if stride in (1, (1, 1)):
            continue
        if ckpt[prefix][0] is None:
            continue  # no conv weights: named as missing later
        ckpt_pools = ckpt[prefix][0] > 0  # a module without weights first
        if ckpt_pools != bool(pools):
            v1d = 'the V1d shortcut (AvgPool2d, then a 1x1 conv)'
            strided = 'the strided 1x1 conv shortcut (ResNet, V1c)'
            mine, theirs = (v1d, strided) if pools else (strided, v1d)
            raise ValueError(
                f'{where}: {prefix} is {theirs}, {name} has {mine}: '
                'warm-start ResNetV1dMoD from a V1d checkpoint, ResNetMoD / '
                'ResNetV1cMoD from a ResNet / V1c one')


def is_resnet_mod(model: nn.Module) -> bool:
    """A ResNet (``layerS.I`` blocks) with MoD blocks, of any toolbox."""
    return bool(mod_blocks(model)) and any(
        _BLOCK.match(k) for k in model.state_dict())


def _model_name(model) -> str:
    depth = getattr(model, 'depth', None)
    return type(model).__name__ + (f'(depth={depth})' if depth else '')


def _check_stem(model_stem, ckpt_stem, name, where):
    if ckpt_stem == model_stem:
        return
    if ckpt_stem == 'none':
        raise ValueError(f'{where} has no stem weights (neither conv1.* nor '
                         f'stem.*): {name} would keep a random stem')
    if ckpt_stem == 'deep':
        raise ValueError(
            f'{where} has the deep V1c/V1d stem (stem.*), {name} the plain '
            '7x7 one (conv1.*, bn1.*): warm-start ResNetV1cMoD / '
            'ResNetV1dMoD from it, or this backbone from a plain-stem '
            "checkpoint (e.g. 'torchvision://resnet50')")
    raise ValueError(
        f'{where} has the plain 7x7 stem (conv1.*, bn1.*), {name} the deep '
        'V1c/V1d one (stem.*): warm-start ResNetMoD from it, or this '
        "backbone from a deep-stem checkpoint (e.g. "
        "'open-mmlab://resnet50_v1c')")


def _check_arch(model, model_keys, backbone_state, where):
    name = _model_name(model)
    arch = resnet_arch(model_keys, name)
    src = resnet_arch(backbone_state, where)
    # a model may use fewer stages (num_stages): the rest are skipped
    if (src[0], src[1][:len(arch[1])]) == arch:
        return
    depth = getattr(model, 'depth', '')
    stock = f'a stock ResNet{depth} ({arch[0]}s {list(arch[1])})'
    if _arch_name(arch) != f'ResNet{depth}':
        stock += f', and no stock ResNet{depth} exists'
    raise ValueError(f'{where} holds {_arch_name(src)} weights, which '
                     f'cannot warm-start {name}: that needs {stock}')


def map_resnet_to_mod(model: nn.Module, backbone_state: Dict[str, Tensor],
                      where: str = 'checkpoint'):
    """Match a stock ResNet's backbone weights to ``model``'s keys.

    Returns ``(state, report)``: ``state`` holds the mapped weights under the
    model's names. Raises TypeError when ``model`` is no ResNet with MoD
    blocks, ValueError when the checkpoint's stem, depth, a shape differs or
    a stock part of ``model`` finds no weights.
    """
    if not is_resnet_mod(model):
        raise TypeError('a ResNet warm start needs a ResNet-MoD backbone '
                        '(ResNetMoD, ResNetV1cMoD, ResNetV1dMoD, ...), got '
                        f'{type(model).__name__}; a stock ResNet loads its '
                        "checkpoint with init_cfg=dict(type='Pretrained')")
    name = _model_name(model)
    model_state = model.state_dict()
    _check_stem(stem_of(model_state), stem_of(backbone_state), name, where)
    _check_arch(model, model_state, backbone_state, where)
    _check_shortcuts(model, backbone_state, name, where)

    stock = {v: k for k, v in canonical_names(backbone_state).items()}
    model_names = canonical_names(model_state)
    mod_prefixes = tuple(n + '.' for n, m in model.named_modules()
                         if isinstance(m, MoDBlock))
    report = WarmStartReport()
    state, missing, used = {}, [], set()
    for key, value in model_state.items():
        src = stock.get(model_names[key])
        if src is not None:  # MoD blocks too, from a ResNet-MoD checkpoint
            if backbone_state[src].shape != value.shape:
                raise ValueError(
                    f'{where}: {src} has shape '
                    f'{tuple(backbone_state[src].shape)}, {name} expects '
                    f'{tuple(value.shape)} for {key} (another width '
                    'or another c?)')
            state[key] = backbone_state[src]
            used.add(src)
            report.mapped.append(key)
        elif key.startswith(mod_prefixes) or not _STOCK_KEY.fullmatch(key):
            report.new.append(key)
        elif not key.endswith('num_batches_tracked'):  # absent in old files
            missing.append(key)
    if missing:
        raise ValueError(f'{where} has no weights for {len(missing)} keys '
                         f'that a stock ResNet has and {name} takes from '
                         f'it, e.g. {missing[:3]}')
    report.skipped = [k for k in backbone_state if k not in used]
    return state, report


def warm_start_resnet_mod(model: nn.Module, checkpoint: dict,
                          where: str = 'checkpoint') -> WarmStartReport:
    """Load a stock ResNet checkpoint's backbone weights into ``model``."""
    backbone, head, other = split_stock_checkpoint(checkpoint)
    state, report = map_resnet_to_mod(model, backbone, where)
    model.load_state_dict(state, strict=False)
    # the classifier (torchvision's fc.*, mmpretrain's head.*) has no place
    head_prefix = 'head.' if is_openmmlab(checkpoint) else ''
    report.skipped += [head_prefix + k for k in head] + other
    return report


@WEIGHT_INITIALIZERS.register_module()
class WarmStartFromResNet:
    """``init_cfg`` type: warm-start a ResNet-MoD from a stock ResNet.

    Everything starts as in a scratch ResNet-MoD (the stock ResNet's default
    init, the modules' own ``init_weights()``, ``zero_init_residual`` on the
    MoD blocks' inner blocks), then, last as with ``type='Pretrained'``, the
    stem, the standard blocks and the shortcuts load the stock weights (and
    the MoD blocks theirs, from a ResNet-MoD checkpoint). The report
    (mapped / skipped / new keys) is logged and kept as the backbone's
    ``warm_start_report``. A checkpoint whose stem or stages do
    not match the backbone's is refused, naming both.

    Args:
        checkpoint (str): a path or any scheme mmengine loads
            (``torchvision://resnet50``, ``open-mmlab://resnet50_v1c``,
            http), in OpenMMLab (mmpretrain, mmseg, mmdet) or torchvision
            format.
        map_location (str): where tensors are loaded. Default 'cpu'.
    """

    # The default init of the stock ResNet of all three toolboxes (Kaiming
    # convs, unit norms), which this init_cfg replaces.
    stock_init = [
        dict(type='Kaiming', layer=['Conv2d']),
        dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])
    ]

    def __init__(self, checkpoint: str, map_location: str = 'cpu'):
        if not isinstance(checkpoint, str) or not checkpoint:
            raise TypeError('WarmStartFromResNet: checkpoint must be a path '
                            f'or URL string, got {checkpoint!r}')
        self.checkpoint = checkpoint
        self.map_location = map_location

    def __call__(self, module):
        from mmengine.runner import CheckpointLoader

        if not is_resnet_mod(module):
            raise TypeError('WarmStartFromResNet goes in the init_cfg of a '
                            'ResNet-MoD backbone (ResNetMoD, ResNetV1cMoD, '
                            f'...), not {type(module).__name__}')
        initialize(module, copy.deepcopy(self.stock_init))
        # The children's own init (DCNv2's ModulatedDeformConv2dPack,
        # NonLocal2d, GeneralizedAttention re-initialise their weights) runs
        # now, not after this init_cfg as mmengine would run it: the loaded
        # weights come last, as with type='Pretrained'.
        _init_children(module)
        if getattr(module, 'zero_init_residual', False):
            for m in mod_blocks(module):
                _zero_init_residual(m)
            # mmpretrain's ResNet.init_weights zero-inits every block after
            # this call, which would wipe the loaded last norms of the
            # standard blocks (mmseg's and mmdet's do it in their default
            # init_cfg, which this one replaces).
            module.zero_init_residual = False
        ckpt = CheckpointLoader.load_checkpoint(self.checkpoint,
                                                self.map_location)
        report = warm_start_resnet_mod(module, ckpt, self.checkpoint)
        module.warm_start_report = report
        print_log(f'{report.details()}\n  from {self.checkpoint}',
                  logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self):
        return f'{type(self).__name__}: load from {self.checkpoint}'


def _init_children(module: nn.Module):
    """What ``BaseModule.init_weights`` does after the ``init_cfg`` but
    before ``type='Pretrained'``: each child's ``init_weights()``. Each child
    is then marked initialised, so that mmengine does not run it again over
    the loaded weights."""
    for m in module.children():
        if is_model_wrapper(m) and not hasattr(m, 'init_weights'):
            m = m.module
        if hasattr(m, 'init_weights') and not getattr(m, 'is_init', False):
            m.init_weights()
            m.is_init = True
            if hasattr(m, '_params_init_info'):
                update_init_info(
                    m, init_info='Initialized by user-defined `init_weights`'
                    f' in {type(m).__name__} ')


def _zero_init_residual(mod_block: MoDBlock):
    """Zero the last norm of the MoD block's inner Bottleneck (``norm3``) or
    BasicBlock (``norm2``): every toolbox's blocks name them so."""
    for m in mod_block.modules():
        last = getattr(m, 'norm3', None) or getattr(m, 'norm2', None)
        if last is not None:
            constant_init(last, 0)
