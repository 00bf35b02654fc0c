"""The CNN Mixture-of-Depths block (Cakaj et al., ACCV 2024, Fig. 2), in one
place.

::

    X (N, C, H, W) ──► ChannelSelector ──► scores s ∈ (0, 1)^C
          │                                   │ top-k (k = C // c)
          │           gather the k channels ◄─┘
          │                   │
          │            Conv-Block on k channels  (stride 1, k -> k)
          │                   │
          │            × s[top-k]       (gives the selector its gradient)
          │                   │
          └──────────► + onto a fixed set of k channels ──► Y (N, C, H, W)

All shapes depend on ``C`` and ``c`` only, never on the input: the graph is
static, so it traces, exports and compiles like any other CNN block.

:meth:`MoDBlock.forward` is that figure, in every mode (training, eval,
``torch.compile``, ``torch.export``, ONNX). Its two steps around the
Conv-Block are ops registered with PyTorch (:mod:`mmmod.layers.ops`:
``mmmod::select_channels`` and ``mmmod::fuse_channels``), each with a C++ CPU
kernel, a pure-PyTorch implementation, autograd and an ONNX translation.
The inference form is an explicit one-way conversion,
:meth:`MoDBlock.switch_to_deploy` (or ``deploy=True`` at construction, to
rebuild a converted model): the Conv-Block's BN folded into its convs, the
Conv-Block run as one ``mmmod::conv_chain`` call (which also multiplies by
the scores) where it is a plain chain of convs on few channels, the whole
block then one ``mmmod::mod_block_`` call, and the result added into ``x``
in place: like ``nn.ReLU(inplace=True)``, a deployed block writes its input
and returns it. It runs without autograd
only.
"""
import inspect
import operator
from collections import Counter
from typing import Callable, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .ops import (channel_means, fuse_channels, fuse_channels_,
                  select_channels, selector_logits)

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


# calls in torch.fx graphs, not traced through (fold_conv_bn traces blocks;
# the backbones wrap their own imports of the check alike)
fx.wrap('check_input_channels')
fx.wrap('channel_means')


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
        return selector_logits(channel_means(x), fc1.weight, fc1.bias,
                               fc2.weight, fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class FewChannelConv2d(nn.Conv2d):
    """A Conv-Block's ``nn.Conv2d`` on few channels: the same module (same
    parameters, state dict and hooks), whose training forward on CPU runs
    ATen's im2col + GEMM convolution (``thnn_conv2d``) instead of oneDNN.

    On a few channels oneDNN costs far more than the arithmetic, most of all
    in the backward: forward and backward of a 3x3 convolution on
    8 x 1 x 56 x 56 took 2.7 ms against 0.34 ms, a 1x1 from 1 to 4 channels
    at batch 32 10.5 ms against 0.2 ms (2-core AMD EPYC; docs/speed.md).
    Only in training mode, on contiguous float32 or float64 CPU tensors
    without autocast; everything else (channels-last maps, eval, export,
    ``torch.compile`` of an eval model, CUDA) is ``nn.Conv2d``'s own
    forward. :func:`few_channel_convs` chooses the convolutions.
    """

    #: im2col + GEMM is the faster up to this many multiply-adds a pixel
    MAX_MACS_PER_PIXEL = 256

    def _conv_forward(self, input: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        # in training mode, whatever the grad mode: activation checkpointing
        # recomputes under grad what it first ran without
        if (self.training and input.device.type == 'cpu'
                and input.dtype in (torch.float32, torch.float64)
                and weight.dtype == input.dtype and not _autocast_on_cpu()
                # (its channels-last backward fails: "grad_weight must be
                # contiguous")
                and input.is_contiguous() and weight.is_contiguous()):
            return torch._C._nn.thnn_conv2d(input, weight, self.kernel_size,
                                            bias, self.stride, self.padding)
        return super()._conv_forward(input, weight, bias)

    @classmethod
    def fits(cls, conv: nn.Module) -> bool:
        """Whether ``conv`` is a plain ``nn.Conv2d`` that im2col serves."""
        return (type(conv) is nn.Conv2d and conv.groups == 1
                and conv.dilation == (1, 1) and conv.padding_mode == 'zeros'
                and not isinstance(conv.padding, str)
                and conv.weight[0].numel() * conv.out_channels <=
                cls.MAX_MACS_PER_PIXEL)


def few_channel_convs(block: nn.Module) -> nn.Module:
    """Makes each plain ``nn.Conv2d`` of ``block`` that
    :meth:`FewChannelConv2d.fits` a :class:`FewChannelConv2d`, in place (its
    class: the parameters, buffers and hooks stay); returns ``block``."""
    for m in block.modules():
        if FewChannelConv2d.fits(m):
            m.__class__ = FewChannelConv2d
    return block


#: the convolutions BN folds into and a ConvChain takes
_PLAIN_CONVS = (nn.Conv2d, FewChannelConv2d)


def _check_writable(x: Tensor) -> None:
    """The inference form writes ``x``: an expanded map is refused here, in
    MoD's words, rather than by ATen deep inside the op. (Strides, not
    ATen's overlap check: Python ints for dynamo and the ONNX tracer alike.
    An inference tensor outside inference_mode is mod_block_'s check:
    dynamo breaks the graph on ``is_inference()``.)"""
    if x.numel() and any(st == 0 and n > 1
                         for st, n in zip(x.stride(), x.shape)):
        raise RuntimeError(
            'MoDBlock: this block is in its inference form, which adds into '
            'its input in place, and the input is expanded (several elements '
            f'share memory: shape {tuple(x.shape)}, strides {x.stride()}): '
            'pass x.contiguous()')


fx.wrap('_check_writable')
# a leaf in fx graphs: torch < 2.2's fx cannot pass its k (a Proxy) to arange
fx.wrap('fuse_channels_')


class MoDBlock(nn.Module):
    """Runs ``block`` on the top-k channels of ``x`` and adds the result back.

    The output is a new tensor: ``x`` is never written, except in the
    inference form (``deploy=True`` or :meth:`switch_to_deploy`), which adds
    into ``x`` and returns it, as ``nn.ReLU(inplace=True)`` does: a forward
    hook or a caller that keeps the input sees it changed, in the ``k``
    target channels only.

    Args:
        channels: C, the channels of the input and the output.
        block: builds the Conv-Block for ``k`` channels: ``block(k)`` must
            return a module mapping (N, k, H, W) to (N, k, H, W). Its plain
            convolutions on few channels become :class:`FewChannelConv2d`
            (training on CPU through im2col, not oneDNN).
        c: capacity divisor; ``k = channels // c`` channels are processed.
        fusion: where the processed channels are added: ``'first-k'``
            (channels 0..k-1, the paper's best), ``'last-k'`` (C-k..C-1) or
            ``'original'`` (the channels they were gathered from).
        reduction: the selector's squeeze ratio r (max(1, C // r) hidden
            units, see :func:`selector_width`).
        deploy: build the inference form (:meth:`switch_to_deploy`), with
            the parameters a converted checkpoint holds.
    """

    def __init__(self,
                 channels: int,
                 block: Callable[[int], nn.Module],
                 c: int = 64,
                 fusion: str = 'first-k',
                 reduction: int = 16,
                 deploy: bool = False):
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
        self.block = few_channel_convs(block(self.k))
        self.deploy = False
        if deploy:
            self.eval()._to_deploy()

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
        if self.deploy:
            return self._forward_deploy(x)
        x_k, scores, idx = self._select_channels(x)
        # scaling by the scores gives the selector its gradient
        return fuse_channels(x, self.block(x_k), scores, idx,
                             self._fusion_offset)

    def _forward_deploy(self, x: Tensor) -> Tensor:
        if self.training:  # (set directly: train() refuses)
            raise RuntimeError(
                'MoDBlock: this block is in its inference form (deploy=True '
                'or switch_to_deploy) and cannot run in training mode')
        chain = self.block
        # a chain's parameters are refused by conv_chain itself (no
        # autograd); any other Conv-Block would record, in place
        if torch.is_grad_enabled() and (x.requires_grad or (
                not isinstance(chain, ConvChain)
                and any(p.requires_grad for p in self.parameters()))):
            raise RuntimeError(
                'MoDBlock: this block is in its inference form (deploy=True '
                'or switch_to_deploy), which adds into its input in place and '
                'has no autograd; run it under torch.no_grad() or '
                'torch.inference_mode() with its parameters not requiring '
                'grad, or train the model built without deploy')
        _check_writable(x)
        if isinstance(chain, ConvChain):
            # the steps below in one call, the chain times the scores
            # (eager: no Python between them; traced graphs: the steps)
            fc1, fc2 = self.selector.fc1, self.selector.fc2
            return torch.ops.mmmod.mod_block_(
                x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, self.k,
                *chain.arguments(), self._fusion_offset)
        x_k, scores, idx = self._select_channels(x)
        return fuse_channels_(x, self.block(x_k), scores, idx,
                              self._fusion_offset)

    def switch_to_deploy(self) -> 'MoDBlock':
        """Turns the block into its inference form, for good (as RepVGG's
        ``switch_to_deploy``); returns the block.

        Each BatchNorm of the Conv-Block is folded into the conv before it;
        a Conv-Block that is then a plain chain of stride-1 convs and
        ReLU / ReLU6 (with at most a residual add of its input) on few
        channels becomes a :class:`ConvChain` (one ``mmmod::conv_chain``
        call, which multiplies by the scores too, and the whole block one
        ``mmmod::mod_block_`` call); and the forward adds into ``x`` in
        place (:func:`~mmmod.layers.ops.fuse_channels_`, or
        :func:`~mmmod.layers.ops.add_channels_` of the chain's scaled
        output) and returns ``x``. The parameters stop requiring
        gradients.

        The block must be in eval mode; afterwards it stays there:
        ``train()`` raises, and so does a forward with autograd recording.
        Calls again are no-ops.
        """
        if self.training:
            raise RuntimeError('MoDBlock.switch_to_deploy: call eval() '
                               'first (BN folding uses the running '
                               'statistics)')
        if not self.deploy:
            self._to_deploy()
        return self

    def _to_deploy(self) -> None:
        self.block = fold_conv_bn(self.block)
        self.block = (ConvChain.of(self.block) or self.block).eval()
        self.requires_grad_(False)
        self.deploy = True

    def train(self, mode: bool = True) -> 'MoDBlock':
        if mode and getattr(self, 'deploy', False):
            raise RuntimeError(
                'MoDBlock: this block was converted for deployment '
                '(switch_to_deploy folded its BN layers) and cannot train')
        return super().train(mode)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, c={self.c}, k={self.k}, '
                f'fusion={self.fusion!r}, deploy={self.deploy}')


def fold_conv_bn(module: nn.Module, strict: bool = True) -> nn.Module:
    """Folds every ``BatchNorm2d`` (or ``SyncBatchNorm``) that takes the
    output of a ``Conv2d`` (and nothing else does) into that conv, in
    place, and puts ``nn.Identity`` in the BN's place; returns ``module``,
    in eval mode.

    The pairs are read from ``module``'s dataflow (a ``torch.fx`` trace of
    its forward, optional arguments at their defaults); a conv or BN module
    called at more than one place is left alone. A module whose forward
    does not trace (control flow on tensor values, e.g. ``with_cp``'s
    ``x.requires_grad``) is a ValueError with ``strict`` (a Conv-Block:
    nothing would be folded); without it, its children are folded one by
    one (a whole model: backbone, neck and head, each folded whole where it
    traces). A pair whose conv and BN are two children of a module that does
    not trace stays: count the BNs left where that matters.
    """
    module.eval()
    try:
        if type(module).forward is nn.Module.forward:  # ModuleList, -Dict
            raise ValueError(f'{type(module).__name__} has no forward')
        graph = _trace(module, bn_free_leaves=True)
    except ValueError:
        if strict:
            raise
        for child in module.children():
            fold_conv_bn(child, strict=False)
        return module
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
        # SyncBN (mmseg's recipes; mmengine's subclass of it) is a BN in
        # eval: its running statistics
        if (isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm))
                and type(bn).forward in _BN_FORWARDS
                and bn.track_running_stats and type(conv) in _PLAIN_CONVS):
            _set_submodule(module, conv_node.target,
                           fuse_conv_bn_eval(conv, bn))
            _set_submodule(module, node.target, nn.Identity())
    return module


_BN_FORWARDS = (nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward)


class _Tracer(fx.Tracer):
    """Convs and BNs are leaves whatever their class (mmengine's SyncBN
    checks its input's dim in Python); with ``bn_free_leaves``, so is every
    module without a BN inside (nothing in it to fold: mmcv's deformable
    convs and attention plugins do not trace)."""

    def __init__(self, bn_free_leaves: bool = False):
        super().__init__()
        self.bn_free_leaves = bn_free_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (nn.modules.conv._ConvNd,
                               nn.modules.batchnorm._BatchNorm))
                or (self.bn_free_leaves and not any(
                    isinstance(s, nn.modules.batchnorm._BatchNorm)
                    for s in m.modules()))
                or super().is_leaf_module(m, qualname))


def _trace(module: nn.Module, bn_free_leaves: bool = False) -> fx.Graph:
    """``module``'s forward as a ``torch.fx`` graph, optional arguments at
    their defaults; a ValueError if it does not trace."""
    params = list(inspect.signature(module.forward).parameters.values())
    defaults = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty}
    try:
        return _Tracer(bn_free_leaves).trace(module, concrete_args=defaults)
    # a forward may raise anything on proxies (type checks of its input,
    # len() of a proxy...)
    except Exception as err:
        raise ValueError(
            f'cannot convert {type(module).__name__} for deployment: its '
            f'forward does not trace with torch.fx ({err}); with_cp=True '
            'blocks, for example, branch on x.requires_grad: build the '
            'model for deployment without with_cp') from err


#: Activations a :class:`ConvChain` runs, by its ``meta`` code.
_ACTS = {nn.ReLU: 1, nn.ReLU6: 2, torch.relu: 1, F.relu: 1, 'relu': 1,
         'relu_': 1, F.relu6: 2}
_ADDS = {operator.add, operator.iadd, torch.add, 'add', 'add_'}


class ConvChain(nn.Module):
    """A Conv-Block with its BN folded, run as one ``mmmod::conv_chain``
    call: stride-1 convs keeping the map's size, each with a bias and an
    optional ReLU / ReLU6, then an optional ``+ x`` and a final activation.
    Inference only (its op has no autograd).

    On a few channels a oneDNN convolution costs its call, ~20-30 us,
    whatever its size; the C++ kernel computes the whole block directly.
    :meth:`of` makes one from a folded Conv-Block where that pays: at most
    :attr:`MAX_MACS_PER_PIXEL` multiply-adds a pixel. ResNet-MoD's
    Conv-Blocks at c = 64 have 17-1152 (the kernel runs them 2.6-7x faster
    than oneDNN's three convs, batch 1 and 8, on a 2-core AMD EPYC); at
    4352 (k = 64) oneDNN wins at batch 8, and beyond it everywhere.
    """

    MAX_MACS_PER_PIXEL = 2048

    def __init__(self, convs, residual: bool = False, final_act: int = 0):
        super().__init__()
        self.weight = nn.ParameterList(
            [nn.Parameter(conv.weight.detach(), requires_grad=False)
             for conv, _ in convs])
        self.bias = nn.ParameterList([
            nn.Parameter(conv.bias.detach() if conv.bias is not None else
                         conv.weight.new_zeros(conv.out_channels),
                         requires_grad=False) for conv, _ in convs
        ])
        # a tuple: dynamo guards it as one constant, a list entry by entry
        # (20 guards a block instead of 3, checked on every compiled call)
        self.meta = tuple(
            v for conv, act in convs
            for v in (*conv.padding, *conv.dilation, conv.groups, act))
        self.residual = residual
        self.final_act = final_act

    def forward(self, x: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """The chain on ``x``, its output times ``scale`` (N, C_out) if
        given."""
        return torch.ops.mmmod.conv_chain(x, *self.arguments(), scale)

    def arguments(self) -> tuple:
        """``conv_chain``'s arguments after ``x``: weights, biases, meta,
        residual, final_act."""
        # a ParameterList's entries, in order, without its __iter__ (4 us
        # a list, per block and forward)
        return (list(self.weight._parameters.values()),
                list(self.bias._parameters.values()), self.meta,
                self.residual, self.final_act)

    @property
    def macs_per_pixel(self) -> int:
        return _macs_per_pixel(self.weight)

    def extra_repr(self) -> str:
        shapes = ', '.join('x'.join(map(str, w.shape)) for w in self.weight)
        return (f'weights=[{shapes}], residual={self.residual}, '
                f'final_act={self.final_act}')

    @classmethod
    def of(cls, block: nn.Module,
           max_macs_per_pixel: Optional[int] = None) -> Optional['ConvChain']:
        """The chain that computes folded ``block``, or None where
        ``block``'s dataflow is not such a chain (any other module or op, a
        strided or padded-otherwise conv, a module called with anything
        but the previous value) or is wider than ``max_macs_per_pixel``
        (default :attr:`MAX_MACS_PER_PIXEL`)."""
        if max_macs_per_pixel is None:
            max_macs_per_pixel = cls.MAX_MACS_PER_PIXEL
        try:
            graph = _trace(block)
        except ValueError:  # e.g. a deformable conv: no chain
            return None
        nodes = list(graph.nodes)
        if not nodes or nodes[0].op != 'placeholder':
            return None
        x = cur = nodes[0]
        convs, residual, final_act = [], False, 0
        # optional arguments traced at their defaults: placeholders and
        # their guards (eq, _assert), not the dataflow of x
        fixed = set()
        for node in nodes[1:]:
            if node.op == 'placeholder' or (
                    node.op == 'call_function' and node.all_input_nodes
                    and set(node.all_input_nodes) <= fixed):
                fixed.add(node)
                continue
            if node.op == 'output':
                fits = (node.args[0] is cur and convs
                        and len(x.users) == 1 + residual
                        and _chain_fits(convs, residual, max_macs_per_pixel))
                return cls(convs, residual, final_act) if fits else None
            if node.op not in ('call_module', 'call_function',
                               'call_method'):
                return None
            target = (type(block.get_submodule(node.target))
                      if node.op == 'call_module' else node.target)
            # F.relu(x, inplace=...) is a ReLU; any other keyword, no chain
            if node.kwargs and not (target in _ACTS
                                    and set(node.kwargs) <= {'inplace'}):
                return None
            if target in _ADDS:  # the residual: ... + x, once, at the end
                if residual or cur is x or len(node.args) != 2 or set(
                        node.args) != {cur, x}:
                    return None
                residual = True
            elif node.args != (cur, ):
                return None
            elif target in _PLAIN_CONVS:
                conv = block.get_submodule(node.target)
                if residual or not _same_size_conv(conv):
                    return None
                convs.append([conv, 0])
            elif target in _ACTS:
                if residual and final_act == 0:
                    final_act = _ACTS[target]
                elif convs and not residual and convs[-1][1] == 0:
                    convs[-1][1] = _ACTS[target]
                else:
                    return None
            elif target is not nn.Identity:
                return None
            if cur is not x and len(cur.users) != 1:
                return None  # a value read twice is no chain
            cur = node
        return None


def _same_size_conv(conv: nn.Conv2d) -> bool:
    kh, kw = conv.kernel_size
    return (conv.stride == (1, 1) and conv.padding_mode == 'zeros'
            and not isinstance(conv.padding, str)
            and 2 * conv.padding[0] == conv.dilation[0] * (kh - 1)
            and 2 * conv.padding[1] == conv.dilation[1] * (kw - 1))


def _macs_per_pixel(weights) -> int:
    """Multiply-adds a pixel of stride-1 convs of these weights."""
    return sum(w[0].numel() * w.shape[0] for w in weights)


def _chain_fits(convs, residual: bool, max_macs_per_pixel: int) -> bool:
    channels = convs[0][0].in_channels
    for conv, _ in convs:
        if conv.in_channels != channels:
            return False
        channels = conv.out_channels
    # a residual add that would broadcast (k -> 1 channels, + x) is no chain
    if residual and channels != convs[0][0].in_channels:
        return False
    return _macs_per_pixel(c.weight for c, _ in convs) <= max_macs_per_pixel


def _set_submodule(root: nn.Module, target: str, value: nn.Module) -> None:
    parent, _, name = target.rpartition('.')
    setattr(root.get_submodule(parent) if parent else root, name, value)


def mod_blocks(model: nn.Module) -> list:
    """The MoD blocks of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MoDBlock)]


class RefusesTrainingWhenDeployed:
    """A model class with MoD blocks puts this first in its bases: its
    ``train()`` refuses before it switches any module when one of its MoD
    blocks is deployed. (``nn.Module.train`` switches the modules one by one,
    so the first deployed block's refusal alone would leave the modules
    before it in training mode, their BN statistics then updated by the next
    forward.)"""

    def train(self, mode: bool = True):
        if mode:
            for block in mod_blocks(self):
                if block.deploy:
                    block.train(mode)  # raises, switching nothing
        return super().train(mode)


def switch_to_deploy(model: nn.Module) -> nn.Module:
    """Calls :meth:`MoDBlock.switch_to_deploy` on every MoD block of
    ``model`` (which must be in eval mode); returns ``model``. Each
    deployed block adds into its input in place (see :class:`MoDBlock`)."""
    for m in mod_blocks(model):
        m.switch_to_deploy()
    return model
