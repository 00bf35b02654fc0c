"""Side-by-side timing: models are timed interleaved in one process, so
that the machine's load drifts over all of them alike; and the check that
says when the load drifted too much for the numbers to mean anything."""
import copy
import datetime
import math
import platform
import statistics
import time
from fractions import Fraction
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from mmmod.layers import MoDBlock, select_channels
from mmmod.layers.ops import add_channels_, channel_means

# A timing is unreliable when its interquartile range exceeds this share of
# its median. On a quiet machine the quartiles of a forward pass lie within a
# few per cent of the median; a spread of a quarter means other work took
# the cores for much of the run (issue 12: the demo once printed quartiles
# [25, 98] ms around a 30 ms median).
SPREAD_LIMIT = 0.25


@torch.no_grad()
def measure_latency(models: Dict[str, nn.Module],
                    input_shape=(3, 224, 224),
                    batch_size: int = 1,
                    warmup: int = 5,
                    repeats: int = 30,
                    channels_last: bool = False,
                    device: str = 'cpu') -> Dict[str, dict]:
    """Median and spread of the forward latency of each model, in ms.

    Each round runs every model once, in turn (the order rotates from round
    to round); ``warmup`` rounds are thrown away. Returns
    ``{name: dict(median=, q1=, q3=, min=, times=[...])}``.
    """
    x = _prepare(models, input_shape, batch_size, channels_last, device)
    for model in models.values():
        model.eval()  # (stock backbones' train() returns None: no chaining)
    steps = {name: (lambda m=model: m(x)) for name, model in models.items()}
    return time_interleaved(steps, warmup, repeats, device)


def measure_train_throughput(models: Dict[str, nn.Module],
                             input_shape=(3, 224, 224),
                             batch_size: int = 8,
                             warmup: int = 2,
                             repeats: int = 10,
                             channels_last: bool = False,
                             device: str = 'cpu',
                             lr: float = 0.01) -> Dict[str, dict]:
    """Training steps (forward, backward, SGD step) of each model, timed
    as :func:`measure_latency` times inference. Returns its statistics of
    the step time in ms, plus ``images_per_s`` (batch size over the median
    step time). The models' weights change.
    """
    x = _prepare(models, input_shape, batch_size, channels_last, device)
    steps = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        steps[name] = _train_step(model, opt, x)
    out = time_interleaved(steps, warmup, repeats, device)
    for stats in out.values():
        stats['images_per_s'] = batch_size / stats['median'] * 1e3
    return out


def skip_mod_blocks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every MoD block an ``nn.Identity``: what the
    model would cost if its MoD blocks were free (the skip bound)."""
    return _replace_mod_blocks(model, lambda block: nn.Identity())


class FloorBlock(nn.Module):
    """What every MoD block must do, and nothing more: read the whole map
    once (the channel means the selector starts from) and add onto its
    ``k`` target channels. The means are the MoD block's own
    (:func:`~mmmod.layers.ops.channel_means`, which also exports to ONNX on
    every torch we support). In eval mode the add is written into ``x`` by the
    inference form's own :func:`~mmmod.layers.ops.add_channels_`
    (``index_add_``: ``k`` channels in eager, in inductor's loops and in
    ONNX Runtime's ScatterElements); in training mode it makes a new map,
    as autograd needs."""

    def __init__(self, k: int, offset: int):
        super().__init__()
        self.k, self.offset = k, max(offset, 0)

    def forward(self, x):
        return self._add(x, channel_means(x)[:, :self.k, None, None])

    def _add(self, x, y):
        """``y`` (N, k, H or 1, W or 1) added onto the ``k`` target
        channels."""
        if self.training:
            return x.slice_scatter(
                x.narrow(1, self.offset, self.k) + y, dim=1,
                start=self.offset, end=self.offset + self.k)
        return add_channels_(x, y.expand(-1, -1, *x.shape[2:]), None,
                             self.offset)


class SelectionFloorBlock(FloorBlock):
    """The floor plus a MoD block's selection: the channel means, the
    block's own selector, top-k and gather (``mmmod::select_channels``, the
    MoD model's kernel and weights), and the ``k`` chosen channels times
    their scores added where the MoD block adds its output: the whole MoD
    block but its Conv-Block. What it costs beyond the floor the MoD
    architecture needs in any implementation; at batch 1 that is mostly the
    selector's weights (C²/8 a block, which the floor has none of), read
    from memory on every forward."""

    def __init__(self, block: nn.Module):
        super().__init__(block.k, block._fusion_offset)
        self.selector = block.selector
        self.original = block._fusion_offset < 0  # fusion 'original'

    def forward(self, x):
        fc1, fc2 = self.selector.fc1, self.selector.fc2
        x_k, scores, idx = select_channels(x, fc1.weight, fc1.bias,
                                           fc2.weight, fc2.bias, self.k)
        y = x_k * scores[:, :, None, None].to(x_k.dtype)
        if self.original:  # back where they came from, as the MoD block
            return add_channels_(x.clone() if self.training else x, y, idx,
                                 -1)
        return self._add(x, y)


def floor_mod_blocks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every MoD block a :class:`FloorBlock`: the
    physical limit of any MoD implementation, between the MoD model and its
    skip bound."""
    return _replace_mod_blocks(
        model, lambda block: FloorBlock(block.k, block._fusion_offset))


def selection_floor_mod_blocks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every MoD block a
    :class:`SelectionFloorBlock`: the floor plus the selection, between the
    floor and the MoD model."""
    return _replace_mod_blocks(model, SelectionFloorBlock)


def _replace_mod_blocks(model, make):
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, MoDBlock):
                setattr(parent, name, make(child).train(child.training))
    return model


def _prepare(models, input_shape, batch_size, channels_last, device):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for model in models.values():
        model.to(device=device, memory_format=fmt)
    return torch.randn(
        batch_size, *input_shape, device=device).to(memory_format=fmt)


def _train_step(model, opt, x):

    def step():
        out = model(x)
        outs = out if isinstance(out, (tuple, list)) else [out]
        loss = sum(o.float().mean() for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_interleaved(steps: Dict[str, Callable],
                     warmup: int = 5,
                     repeats: int = 30,
                     device: str = 'cpu') -> Dict[str, dict]:
    """Times ``{name: step}`` (callables without arguments) side by side:
    each round calls every step once, in an order that rotates from round to
    round; ``warmup`` rounds are thrown away. Returns ``{name:
    dict(median=, q1=, q3=, min=, times=[...])}``, in ms."""
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    cuda = str(device).startswith('cuda')
    names = list(steps)
    times = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[name]()
            if cuda:
                torch.cuda.synchronize()
            if round_ >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: summarise(ts) for name, ts in times.items()}


def summarise(times) -> dict:
    """``dict(median=, q1=, q3=, min=, times=)`` of a list of timings."""
    times = list(times)
    q = (statistics.quantiles(times, n=4, method='inclusive')
         if len(times) > 1 else times * 3)
    return dict(median=statistics.median(times), q1=q[0], q3=q[2],
                min=min(times), times=times)


def paired_ratio(reference, times, confidence: float = 0.95) -> dict:
    """``reference[i] / times[i]`` of each round ``i`` (two timings of one
    :func:`time_interleaved` run: the same rounds, the two steps seconds
    apart): ``dict(median=, low=, high=)``, the median ratio and a
    distribution-free ``confidence`` interval for it (the order statistics
    ``j`` and ``n + 1 - j`` of the ``n`` ratios, ``j`` the largest with
    ``P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2``; None with too few
    rounds for one). A ratio of medians would mix moments minutes apart:
    on a machine whose speed drifts, the ratio within a round is the one
    that holds still."""
    if not 0 < confidence < 1:
        raise ValueError(f'confidence must be in (0, 1), got {confidence}')
    if not times:
        raise ValueError('no rounds to pair')
    if len(reference) != len(times):
        raise ValueError('paired timings must be the same rounds, got '
                         f'{len(reference)} and {len(times)}')
    ratios = sorted(r / t for r, t in zip(reference, times))
    n = len(ratios)
    # in exact arithmetic: 2**n overflows a float from 1024 rounds on
    tail = Fraction(1 - confidence) / 2 * 2**n
    j, below = 0, 0  # below: the number of outcomes of n coins with < j heads
    while below + math.comb(n, j) <= tail:
        below += math.comb(n, j)
        j += 1
    return dict(median=statistics.median(ratios),
                low=ratios[j - 1] if j else None,
                high=ratios[n - j] if j else None)


def relative_spread(stats: dict) -> float:
    """Interquartile range over median of a :func:`summarise` entry."""
    return (stats['q3'] - stats['q1']) / stats['median']


def spread_warning(stats: Dict[str, dict],
                   limit: float = SPREAD_LIMIT) -> Optional[str]:
    """A warning naming the timings of ``{name: summarise(...)}`` whose
    quartiles lie further apart than ``limit`` times their median, i.e. the
    machine was busy while they were taken; None when every timing is
    steady."""
    busy = {
        name: relative_spread(s)
        for name, s in stats.items() if relative_spread(s) > limit
    }
    if not busy:
        return None
    listed = ', '.join(f'{name} ({100 * r:.0f} %)' for name, r in busy.items())
    return (f'WARNING: unsteady timings: the interquartile range of {listed} '
            f'exceeds {100 * limit:.0f} % of the median. The machine was busy '
            'while they were measured, so their speed-ups are unreliable: '
            'rerun on a quiet machine (more rounds also help).')


def cpu_name() -> str:
    """The processor's model name, with its family and model numbers where
    a VM hides the rest of the name, and the vector instructions PyTorch's
    kernels use: e.g. 'AMD EPYC (family 25, model 1; AVX2)'. CPUs of one
    name differ: with AVX-512 or without, inductor's code and oneDNN's
    prepacked convolutions run other kernels."""
    info = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = (info.get('model name') or platform.processor()
            or platform.machine())
    details = [f'family {info["cpu family"]}, model {info["model"]}'
               ] if 'cpu family' in info and 'model' in info else []
    capability = getattr(getattr(torch.backends, 'cpu', None),
                         'get_cpu_capability', None)
    if capability is not None:
        details.append(capability())
    return f'{name} ({"; ".join(details)})' if details else name


def describe_machine() -> str:
    """One line: CPU, threads, GPU, torch version and today's date (UTC)."""
    gpu = (f'GPU {torch.cuda.get_device_name()}'
           if torch.cuda.is_available() else 'no GPU')
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return (f'{cpu_name()}, {torch.get_num_threads()} threads, {gpu}; torch '
            f'{torch.__version__}; {today}')
