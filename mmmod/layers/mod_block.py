"""The CNN Mixture-of-Depths block (Cakaj et al., ACCV 2024, Fig. 2), in one place.

::

    X (N, C, H, W) ──► ChannelSelector ──► scores s ∈ (0, 1)^C
          │                                   │ top-k (k = C // c)
          │           gather the k channels ◄─┘
          │                   │
          │            Conv-Block on k channels  (stride 1, k -> k)
          │                   │
          │            × s[top-k]              (gives the selector its gradient)
          │                   │
          └──────────► + onto a fixed set of k channels ──► Y (N, C, H, W)

All shapes depend on ``C`` and ``c`` only, never on the input: the graph is
static, so it traces, exports and compiles like any other CNN block.

:meth:`MoDBlock.forward` is that figure, in every mode (training, eval,
``torch.compile``, ``torch.export``, ONNX). Its two steps around the
Conv-Block are ops registered with PyTorch (:mod:`mmmod.layers.ops`:
``mmmod::select_channels`` and ``mmmod::fuse_channels``), each with a C++ CPU
kernel, a pure-PyTorch implementation, autograd and an ONNX translation.
Folding the Conv-Block's BN layers into its convs is an explicit one-way
conversion for deployment: :meth:`MoDBlock.switch_to_deploy`.
"""
import inspect
from collections import Counter
from typing import Callable, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .ops import fuse_channels, select_channels, selector_logits

FUSIONS = ('first-k', 'last-k', 'original')


def is_mod_position(index: int) -> bool:
    """Whether block ``index`` of a stage is a MoD block.

    Block 0 of every stage is standard (it carries the stride and the channel
    change); after it, blocks alternate standard / MoD: S M S M ...
    """
    return index % 2 == 1


def mod_channels(channels: int, c: int) -> int:
    """``k = channels // c``: how many channels a MoD block processes."""
    _check_positive_int(c, 'c', 'the MoD capacity divisor')
    if c > channels:  # k = 0: nothing to process, not a MoD block
        raise ValueError(
            f'c={c} is out of range for a MoD block on {channels} channels: '
            f'c must be in [1, {channels}] so that k = channels // c >= 1')
    return channels // c


def _check_positive_int(value, name: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}={value!r}: {name} ({what}) must be an '
                         'integer >= 1')


def check_input_channels(x: Tensor, channels: int, where: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f'{where} expects input of shape (N, {channels}, H, '
                         f'W), got {tuple(x.shape)}')


def selector_width(channels: int, reduction: int) -> int:
    """``max(1, channels // reduction)``: the selector's hidden units. At
    least one, as squeeze-and-excitation layers clamp their width (timm's
    does): the default r = 16 on a narrow stage (the stock configs' and
    tests' small ``base_channels``) still gives a selector."""
    _check_positive_int(reduction, 'reduction',
                        "the selector's squeeze ratio")
    return max(1, channels // reduction)


class ChannelSelector(nn.Module):
    """Scores every channel of a feature map (squeeze-and-excitation style).

    Global average pool -> Linear(C, C // r) -> ReLU -> Linear(C // r, C)
    -> Sigmoid: one score in (0, 1) per channel and sample.

    The linear layers have no bias by default, as in the common SE
    implementation: the paper's parameter counts pin this. With biases every
    count grows by C + C // r per MoD block, and ResNet75-MoD would have
    23.11M parameters instead of the paper's 23.10M, CIFAR ResNet50-MoD
    16.08M instead of 16.07M, VGG16-BN-MoD 9.84M instead of 9.83M.
    """

    def __init__(self, channels: int, reduction: int = 16, bias: bool = False):
        super().__init__()
        hidden = selector_width(channels, reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def logits(self, x: Tensor) -> Tensor:
        """The scores before the sigmoid, (N, C)."""
        fc1, fc2 = self.fc1, self.fc2
        return selector_logits(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))


class MoDBlock(nn.Module):
    """Runs ``block`` on the top-k channels of ``x`` and adds the result back.

    The output is a new tensor: ``x`` is never written.

    Args:
        channels: C, the channels of the input and the output.
        block: builds the Conv-Block for ``k`` channels: ``block(k)`` must
            return a module mapping (N, k, H, W) to (N, k, H, W).
        c: capacity divisor; ``k = channels // c`` channels are processed.
        fusion: where the processed channels are added: ``'first-k'``
            (channels 0..k-1, the paper's best), ``'last-k'`` (C-k..C-1) or
            ``'original'`` (the channels they were gathered from).
        reduction: the selector's squeeze ratio r (max(1, C // r) hidden
            units, see :func:`selector_width`).
    """

    def __init__(self,
                 channels: int,
                 block: Callable[[int], nn.Module],
                 c: int = 64,
                 fusion: str = 'first-k',
                 reduction: int = 16):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(
                f'fusion={fusion!r} is not one of {", ".join(FUSIONS)}')
        self.channels = channels
        # stock backbones read a block's in/out_channels (e.g. feat_dim)
        self.in_channels = self.out_channels = channels
        self.c = c
        self.k = mod_channels(channels, c)
        self.fusion = fusion
        # mmmod::fuse_channels' target: the first channel written to, or -1
        # for each back where it came from ('original')
        self._fusion_offset = {
            'first-k': 0,
            'last-k': channels - self.k
        }.get(fusion, -1)
        self.selector = ChannelSelector(channels, reduction)
        self.block = block(self.k)
        self.deploy = False

    def select(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Scores (N, k) and indices (N, k) of the chosen channels, best
        first."""
        _, scores, idx = self._select_channels(x)
        return scores, idx

    def _select_channels(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        # The logits are ranked, not the sigmoid scores: a trained selector
        # saturates its sigmoid (many channels at exactly 1.0 in float32),
        # and top-k's tie-breaking would then choose.
        fc1, fc2 = self.selector.fc1, self.selector.fc2
        return select_channels(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                               self.k)

    def forward(self, x: Tensor) -> Tensor:
        check_input_channels(x, self.channels, 'MoDBlock')
        x_k, scores, idx = self._select_channels(x)
        # scaling by the scores gives the selector its gradient
        return fuse_channels(x, self.block(x_k), scores, idx,
                             self._fusion_offset)

    def switch_to_deploy(self) -> 'MoDBlock':
        """Folds each BatchNorm of the Conv-Block into the conv before it,
        for inference (one-way, as RepVGG's ``switch_to_deploy``); returns
        the block.

        The block must be in eval mode; afterwards it stays there:
        ``train()`` raises. Calls again are no-ops.
        """
        if self.training:
            raise RuntimeError('MoDBlock.switch_to_deploy: call eval() '
                               'first (BN folding uses the running '
                               'statistics)')
        if not self.deploy:
            self.block = fold_conv_bn(self.block)
            self.deploy = True
        return self

    def train(self, mode: bool = True) -> 'MoDBlock':
        if mode and getattr(self, 'deploy', False):
            raise RuntimeError(
                'MoDBlock: this block was converted for deployment '
                '(switch_to_deploy folded its BN layers) and cannot train')
        return super().train(mode)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, c={self.c}, k={self.k}, '
                f'fusion={self.fusion!r}, deploy={self.deploy}')


def fold_conv_bn(module: nn.Module) -> nn.Module:
    """Folds every ``BatchNorm2d`` that takes the output of a ``Conv2d`` (and
    nothing else does) into that conv, in place, and puts ``nn.Identity`` in
    the BN's place; returns ``module``, in eval mode.

    The pairs are read from ``module``'s dataflow (a ``torch.fx`` trace of
    its forward, optional arguments at their defaults); a conv or BN module
    called at more than one place is left alone. A module whose forward
    does not trace (control flow on tensor values, e.g. ``with_cp``'s
    ``x.requires_grad``) is a ValueError: nothing would be folded.
    """
    module.eval()
    params = list(inspect.signature(module.forward).parameters.values())
    defaults = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty}
    try:
        graph = fx.Tracer().trace(module, concrete_args=defaults)
    except fx.proxy.TraceError as err:
        raise ValueError(
            f'cannot fold the BN layers of {type(module).__name__}: its '
            f'forward does not trace with torch.fx ({err}); with_cp=True '
            'blocks, for example, branch on x.requires_grad: build the '
            'model for deployment without with_cp') from err
    calls = Counter(n.target for n in graph.nodes if n.op == 'call_module')
    for node in graph.nodes:
        conv_node = node.args[0] if node.args else None
        if not (node.op == 'call_module'
                and isinstance(conv_node, fx.Node)
                and conv_node.op == 'call_module'
                and len(conv_node.users) == 1
                and calls[node.target] == calls[conv_node.target] == 1):
            continue
        bn = module.get_submodule(node.target)
        conv = module.get_submodule(conv_node.target)
        if (type(bn) is nn.BatchNorm2d and bn.track_running_stats
                and type(conv) is nn.Conv2d):
            _set_submodule(module, conv_node.target,
                           fuse_conv_bn_eval(conv, bn))
            _set_submodule(module, node.target, nn.Identity())
    return module


def _set_submodule(root: nn.Module, target: str, value: nn.Module) -> None:
    parent, _, name = target.rpartition('.')
    setattr(root.get_submodule(parent) if parent else root, name, value)


def switch_to_deploy(model: nn.Module) -> nn.Module:
    """Calls :meth:`MoDBlock.switch_to_deploy` on every MoD block of
    ``model`` (which must be in eval mode); returns ``model``."""
    for m in model.modules():
        if isinstance(m, MoDBlock):
            m.switch_to_deploy()
    return model
