"""What the MoD blocks of a model select, over a set of images.

:class:`SelectionRecorder` hooks every :class:`~mmmod.layers.MoDBlock` and
asks the block itself, on its own input, which channels it takes (the public
``MoDBlock.select``: top-k scores and indices, best first) and how its
selector scores all channels. :func:`summarise` tells how input-dependent
each block's choice is; the ``plot_*`` functions draw it (matplotlib's
object API with the Agg canvas: no display, no global backend switch).
"""
import math
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from mmmod.layers import MoDBlock


@dataclass
class Selection:
    """One block's record over N images."""
    channels: int
    k: int
    indices: Tensor  # (N, k) chosen channels, best first
    scores: Tensor   # (N, C) the selector's score of every channel

    def chosen_mask(self) -> Tensor:
        mask = torch.zeros_like(self.scores, dtype=torch.bool)
        return mask.scatter_(1, self.indices, True)


class SelectionRecorder:
    """Records what every MoD block of ``model`` selects, per image.

    Use as a context manager around forward passes::

        with SelectionRecorder(model, keep_input_of=0) as rec:
            model.extract_feat(batch)
        rec.selections()   # {block name: Selection}
        rec.inputs         # {block name: (C, H, W) input of image 0}

    Args:
        model: any module holding MoD blocks.
        keep_input_of: keep every block's input (C, H, W) for the image with
            this index among all images seen, to draw its feature maps.
    """

    def __init__(self, model: nn.Module, keep_input_of: Optional[int] = None):
        self.blocks = {n: m for n, m in model.named_modules()
                       if isinstance(m, MoDBlock)}
        if not self.blocks:
            raise ValueError(f'{type(model).__name__} has no MoD blocks')
        self.keep_input_of = keep_input_of
        self.inputs: Dict[str, Tensor] = {}
        self._indices = {n: [] for n in self.blocks}
        self._scores = {n: [] for n in self.blocks}
        self._seen = dict.fromkeys(self.blocks, 0)
        self._handles = []

    def __enter__(self):
        self._handles = [
            block.register_forward_pre_hook(self._hook(name))
            for name, block in self.blocks.items()
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name):

        def hook(block, args):
            x = args[0]
            with torch.no_grad():
                _, idx = block.select(x)
                scores = block.selector(x)
            self._indices[name].append(idx.cpu())
            self._scores[name].append(scores.float().cpu())
            first, n = self._seen[name], x.shape[0]
            if self.keep_input_of is not None and \
                    first <= self.keep_input_of < first + n:
                # a copy: a float32 CPU map would otherwise be kept as a
                # view, and anything that later writes into the block's
                # input would change what we show
                self.inputs[name] = x[self.keep_input_of - first].detach().to(
                    'cpu', torch.float32, copy=True)
            self._seen[name] = first + n

        return hook

    def selections(self) -> Dict[str, Selection]:
        out = {}
        for name, block in self.blocks.items():
            if not self._indices[name]:
                raise RuntimeError(f'{name} saw no input: run the model '
                                   'inside the recorder')
            out[name] = Selection(block.channels, block.k,
                                  torch.cat(self._indices[name]),
                                  torch.cat(self._scores[name]))
        return out


def summarise(sel: Selection) -> dict:
    """How input-dependent one block's selection is.

    - ``distinct_sets``: how many different top-k sets the images chose;
    - ``share_differs``: share of images whose set differs from the most
      common one (0: a fixed channel subset, i.e. static pruning);
    - ``entropy_bits`` of how often each channel is chosen, and
      ``entropy_norm``, the same scaled to [0, 1] between log2(k) (the same
      k channels always) and log2(C) (every channel equally often);
    - ``share_tied``: share of images where a channel left out scores
      exactly as the worst chosen one (saturated sigmoids); MoDBlock ranks
      the logits, which still tell such channels apart.
    """
    n, k = sel.indices.shape
    sets = Counter(tuple(sorted(row)) for row in sel.indices.tolist())
    mode, mode_count = sets.most_common(1)[0]
    counts = torch.bincount(sel.indices.flatten(), minlength=sel.channels)
    p = counts[counts > 0].double() / counts.sum()
    entropy = max(0.0, float(-(p * p.log2()).sum()))  # no -0.0
    lo, hi = math.log2(k), math.log2(sel.channels)
    chosen = sel.chosen_mask()
    worst = sel.scores.gather(1, sel.indices).min(1, keepdim=True).values
    tied = ((sel.scores == worst) & ~chosen).sum(1)
    top = counts.argsort(descending=True, stable=True)[:8]
    top = top[counts[top] > 0]
    return dict(
        channels=sel.channels,
        k=k,
        images=n,
        distinct_sets=len(sets),
        share_differs=1 - mode_count / n,
        most_common_set=list(mode),
        entropy_bits=entropy,
        entropy_norm=(entropy - lo) / (hi - lo) if hi > lo else 0.0,
        channels_ever_chosen=int((counts > 0).sum()),
        share_tied=float((tied > 0).double().mean()),
        mean_tied_left_out=float(tied.double().mean()),
        top_channels={int(c): float(counts[c]) / n for c in top},
        mean_score_chosen=float(sel.scores[chosen].mean()),
        mean_score_not_chosen=float(sel.scores[~chosen].mean())
        if k < sel.channels else float('nan'))


LEGEND = """\
sets: distinct top-k sets; differ: share of images whose set is not the most
common one; H: entropy of how often each channel is chosen (norm: 0 = always
the same k channels, 1 = all channels equally often); used: channels ever
chosen; tied: share of images where a left-out channel's sigmoid score equals
the worst chosen one's in float32 (a saturated selector; MoDBlock ranks the
logits, which still tell them apart)."""


def format_summary(summary: Dict[str, dict]) -> str:
    head = (f'{"block":<24}{"C":>6}{"k":>4}{"images":>8}{"sets":>6}'
            f'{"differ":>8}{"H/bits":>8}{"H norm":>8}{"used":>6}'
            f'{"tied":>6}')
    rows = [head, '-' * len(head)]
    for name, s in summary.items():
        rows.append(
            f'{name:<24}{s["channels"]:>6}{s["k"]:>4}{s["images"]:>8}'
            f'{s["distinct_sets"]:>6}{s["share_differs"]:>8.2f}'
            f'{s["entropy_bits"]:>8.2f}{s["entropy_norm"]:>8.2f}'
            f'{s["channels_ever_chosen"]:>6}{s["share_tied"]:>6.2f}')
    rows.append(LEGEND)
    return '\n'.join(rows)


def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout='constrained')


def plot_frequency(selections: Dict[str, Selection], path: str):
    """Block x channel map: share of images that chose each channel. Rows
    are padded (grey) to the widest block, so channel c stays at x = c."""
    names = list(selections)
    width = max(s.channels for s in selections.values())
    freq = np.full((len(names), width), np.nan)
    for row, sel in enumerate(selections.values()):
        counts = torch.bincount(sel.indices.flatten(), minlength=sel.channels)
        freq[row, :sel.channels] = counts.numpy() / len(sel.indices)
    fig = _figure(11, 1.2 + 0.35 * len(names))
    ax = fig.add_subplot()
    import matplotlib
    cmap = matplotlib.colormaps['viridis'].with_extremes(bad='0.85')
    im = ax.imshow(np.ma.masked_invalid(freq), aspect='auto', cmap=cmap,
                   vmin=0, vmax=1, interpolation='nearest')
    ax.set_yticks(range(len(names)), [
        f'{n} (C={s.channels}, k={s.k})' for n, s in selections.items()
    ], fontsize=7)
    ax.set_xlabel('channel index (grey: past the block\'s width)')
    ax.set_title('How often each channel is selected (share of images)')
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.savefig(path, dpi=120)


def plot_scores(selections: Dict[str, Selection], path: str):
    """Per block, the selector's scores of chosen vs not chosen channels."""
    cols = min(4, len(selections))
    rows = math.ceil(len(selections) / cols)
    fig = _figure(3.2 * cols, 2.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    bins = np.linspace(0, 1, 41)
    for ax, (name, sel) in zip(axes, selections.items()):
        chosen = sel.chosen_mask()
        ax.hist(sel.scores[~chosen].numpy(), bins, density=True, alpha=0.6,
                label='not chosen', color='tab:gray')
        ax.hist(sel.scores[chosen].numpy(), bins, density=True, alpha=0.7,
                label='chosen', color='tab:orange')
        ax.set_title(f'{name} (k={sel.k}/{sel.channels})', fontsize=8)
        ax.set_xlabel('selector score', fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].legend(fontsize=7)
    for ax in axes[len(selections):]:
        ax.set_visible(False)
    fig.suptitle('Selector scores, chosen vs not chosen')
    fig.savefig(path, dpi=110)


def plot_features(image: np.ndarray, inputs: Dict[str, Tensor],
                  selections: Dict[str, Selection], index: int,
                  blocks: Sequence[str], path: str, max_channels: int = 6):
    """``image`` (H, W, 3 RGB in [0, 1]) beside, for each of ``blocks``, its
    input's channels that the block chose for image ``index``, best first."""
    cols = min(max_channels, max(selections[b].k for b in blocks))
    fig = _figure(2.2 + 1.6 * cols, 1.7 * len(blocks) + 0.4)
    grid = fig.add_gridspec(len(blocks), cols + 1, width_ratios=[1.6] +
                            [1] * cols)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image, interpolation='nearest')
    ax.set_title(f'input (image {index})', fontsize=8)
    ax.axis('off')
    for row, name in enumerate(blocks):
        sel = selections[name]
        chosen = sel.indices[index]
        for col in range(cols):
            ax = fig.add_subplot(grid[row, col + 1])
            ax.axis('off')
            if col >= len(chosen):
                continue
            c = int(chosen[col])
            ax.imshow(inputs[name][c].numpy(), cmap='magma',
                      interpolation='nearest')
            ax.set_title(f'ch {c}  s={float(sel.scores[index, c]):.2f}',
                         fontsize=7)
            if col == 0:
                ax.text(-0.08, 0.5, name, transform=ax.transAxes,
                        rotation=90, va='center', ha='right', fontsize=7)
    fig.suptitle('Channels each block selected (its input, best first)',
                 fontsize=9)
    fig.savefig(path, dpi=110)


def pick_blocks(names: List[str], n: int = 4) -> List[str]:
    """``n`` block names spread evenly from first to last."""
    at = np.linspace(0, len(names) - 1, min(n, len(names))).round()
    return [names[int(i)] for i in dict.fromkeys(at)]
