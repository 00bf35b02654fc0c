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
"""
from typing import Callable, Tuple

import torch
import torch.nn as nn
from torch import Tensor

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
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3))))))


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
        self.selector = ChannelSelector(channels, reduction)
        self.block = block(self.k)

    def select(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Scores (N, k) and indices (N, k) of the chosen channels, best
        first."""
        return self.selector(x).topk(self.k, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        check_input_channels(x, self.channels, 'MoDBlock')
        scores, idx = self.select(x)
        idx = idx[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        y = self.block(x.gather(1, idx)) * scores[:, :, None, None]
        k = self.k
        if self.fusion == 'first-k':
            return torch.cat([x[:, :k] + y, x[:, k:]], dim=1)
        if self.fusion == 'last-k':
            return torch.cat([x[:, :-k], x[:, -k:] + y], dim=1)
        return x.scatter_add(1, idx, y)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, c={self.c}, k={self.k}, '
                f'fusion={self.fusion!r}')
