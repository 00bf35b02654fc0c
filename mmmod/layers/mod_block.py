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

Two implementations compute the same function. :meth:`MoDBlock.forward_plain`
is the definition, op for op (gather, block, scale, concatenate): training,
tracing, ``torch.export``, ONNX export and ``torch.compile`` run it.
:meth:`MoDBlock.forward_inference` is the eager CPU inference path (no
autograd, eval mode): compiled kernels for the selector, top-k and gather,
a BN-folded copy of the Conv-Block, and the scaled fusion
(:mod:`mmmod.layers.inference`), adding into a copy of ``x`` or, with
``inplace=True``, into ``x`` itself.
"""
from typing import Callable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .inference import fold_for_inference, kernels

FUSIONS = ('first-k', 'last-k', 'original')


def is_mod_position(index: int) -> bool:
    """Whether block ``index`` of a stage is a MoD block.

    Block 0 of every stage is standard (it carries the stride and the channel
    change); after it, blocks alternate standard / MoD: S M S M ...
    """
    return index % 2 == 1


def mod_channels(channels: int, c: int) -> int:
    """``k = channels // c``: how many channels a MoD block processes."""
    if isinstance(c, bool) or not isinstance(c, int):
        raise ValueError(f'c (the MoD capacity divisor) must be an integer, '
                         f'got {c!r}')
    if not 1 <= c <= channels:
        raise ValueError(
            f'c={c} is out of range for a MoD block on {channels} channels: '
            f'c must be in [1, {channels}] so that k = channels // c >= 1')
    return channels // c


def check_input_channels(x: Tensor, channels: int, where: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f'{where} expects input of shape (N, {channels}, H, '
                         f'W), got {tuple(x.shape)}')


def _expand_index(idx: Tensor, x: Tensor) -> Tensor:
    """(N, k) channel indices -> (N, k, H, W), for ``gather``/``scatter``."""
    return idx[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])


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
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def logits(self, x: Tensor) -> Tensor:
        """The scores before the sigmoid, (N, C)."""
        # functional calls: at batch 1 the calls of three submodules cost
        # about as much as the selector's arithmetic
        fc1, fc2 = self.fc1, self.fc2
        h = F.linear(x.mean((2, 3)), fc1.weight, fc1.bias).relu_()
        return F.linear(h, fc2.weight, fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))


class MoDBlock(nn.Module):
    """Runs ``block`` on the top-k channels of ``x`` and adds the result back.

    Args:
        channels: C, the channels of the input and the output.
        block: builds the Conv-Block for ``k`` channels: ``block(k)`` must
            return a module mapping (N, k, H, W) to (N, k, H, W).
        c: capacity divisor; ``k = channels // c`` channels are processed.
        fusion: where the processed channels are added: ``'first-k'``
            (channels 0..k-1, the paper's best), ``'last-k'`` (C-k..C-1) or
            ``'original'`` (the channels they were gathered from).
        reduction: the selector's squeeze ratio r.
        inplace: on the inference path, add the result into ``x`` itself
            rather than into a copy, as ``nn.ReLU(inplace=True)`` does: one
            copy of the feature map less, but the caller's ``x`` then holds
            the output. For callers that drop ``x``, as the stages of the
            mmmod backbones do (they set it); :func:`set_inplace` switches a
            whole model. Default False.
    """

    def __init__(self,
                 channels: int,
                 block: Callable[[int], nn.Module],
                 c: int = 64,
                 fusion: str = 'first-k',
                 reduction: int = 16,
                 inplace: bool = False):
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
        # for the fusion kernel: the first channel written to, or -1 for
        # each back where it came from ('original')
        self._fusion_offset = {
            'first-k': 0,
            'last-k': channels - self.k
        }.get(fusion, -1)
        self.inplace = inplace
        self.selector = ChannelSelector(channels, reduction)
        self.block = block(self.k)
        self._folded = None  # see _folded_block

    def select(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Scores (N, k) and indices (N, k) of the chosen channels, best
        first."""
        # Rank the logits: the same order as the sigmoid scores, but a
        # trained selector saturates its sigmoid (many channels at exactly
        # 1.0 in float32), and top-k's tie-breaking would then choose.
        logits, idx = self.selector.logits(x).topk(self.k, dim=1)
        return logits.sigmoid(), idx

    def forward(self, x: Tensor) -> Tensor:
        check_input_channels(x, self.channels, 'MoDBlock')
        # Exporters and compilers get the reference graph (standard ops, no
        # in-place writes: inductor fuses it by itself). Conditions ordered
        # cheapest first: at batch 1 they are a visible share of the block.
        if (not torch.is_grad_enabled() and not self.training
                and kernels is not None and x.is_cpu
                and x.dtype == torch.float32
                and (x.is_contiguous()
                     or x.is_contiguous(memory_format=torch.channels_last))
                and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling()):
            return self.forward_inference(x)
        return self.forward_plain(x)

    def forward_plain(self, x: Tensor) -> Tensor:
        """The reference implementation: the definition, op for op."""
        scores, idx = self.select(x)
        idx = _expand_index(idx, x)
        y = self.block(x.gather(1, idx)) * scores[:, :, None, None]
        k = self.k
        if self.fusion == 'first-k':
            return torch.cat([x[:, :k] + y, x[:, k:]], dim=1)
        if self.fusion == 'last-k':
            return torch.cat([x[:, :-k], x[:, -k:] + y], dim=1)
        return x.scatter_add(1, idx, y)

    def forward_inference(self, x: Tensor) -> Tensor:
        """:meth:`forward_plain` for eval mode without autograd (nothing
        here records gradients), on a float32 CPU map, contiguous or
        channels-last: a compiled kernel for selector, top-k and gather,
        the BN-folded Conv-Block, and a kernel for the scaled fusion."""
        fc1, fc2 = self.selector.fc1, self.selector.fc2
        x_k, scores, idx = kernels.select_gather(x, fc1.weight, fc1.bias,
                                                 fc2.weight, fc2.bias, self.k)
        y = self._folded_block()(x_k)
        out = x if self.inplace else x.clone()
        return kernels.scale_add_(out, y, scores, idx, self._fusion_offset)

    def _folded_block(self) -> Callable[[Tensor], Tensor]:
        """The forward of the Conv-Block with BN folded
        (:func:`fold_for_inference`). Rebuilt when the block's tensors are
        changed in place (their version counters), and after ``train()`` /
        ``eval()``, ``load_state_dict`` and ``.to()``, which drop it: call
        ``eval()`` again after replacing modules or parameters by hand."""
        cached = self._folded
        if cached is None or cached[2] != kernels.version_sum(cached[1]):
            tensors = [*self.block.parameters(), *self.block.buffers()]
            # A plain tuple: not a registered submodule, not in state_dict.
            # The bound forward skips nn.Module.__call__ (no hooks here).
            cached = (fold_for_inference(self.block).forward, tensors,
                      kernels.version_sum(tensors))
            self._folded = cached
        return cached[0]

    def train(self, mode: bool = True) -> 'MoDBlock':
        self._folded = None
        return super().train(mode)

    def __getstate__(self):  # pickle and deepcopy: no cache
        return {**self.__dict__, '_folded': None}

    def _apply(self, *args, **kwargs):
        self._folded = None
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._folded = None
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, c={self.c}, k={self.k}, '
                f'fusion={self.fusion!r}, inplace={self.inplace}')


def set_inplace(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Sets ``inplace`` (see :class:`MoDBlock`) on every MoD block of
    ``model``; returns ``model``.

    Safe for the mmmod backbones, whose stages hand a block's output to the
    next block only; not if something else keeps the input of a MoD block
    (e.g. a forward hook on the block before it).
    """
    for m in model.modules():
        if isinstance(m, MoDBlock):
            m.inplace = inplace
    return model
