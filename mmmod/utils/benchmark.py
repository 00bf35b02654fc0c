"""Side-by-side timing: models are timed interleaved in one process, so
that the machine's load drifts over all of them alike."""
import copy
import statistics
import time
from typing import Callable, Dict

import torch
import torch.nn as nn


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


def use_plain_path(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose MoD blocks always run their reference
    implementation (:meth:`~mmmod.layers.MoDBlock.forward_plain`)."""
    from mmmod.layers import MoDBlock

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, MoDBlock):
            m.forward = m.forward_plain
    return model


def skip_mod_blocks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every MoD block an ``nn.Identity``: what the
    model would cost if its MoD blocks were free (the speed-up bound)."""
    from mmmod.layers import MoDBlock

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, MoDBlock):
                setattr(parent, name, nn.Identity())
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
    out = {}
    for name, ts in times.items():
        q = (statistics.quantiles(ts, n=4, method='inclusive')
             if len(ts) > 1 else ts * 3)
        out[name] = dict(median=statistics.median(ts), q1=q[0], q3=q[2],
                         min=min(ts), times=ts)
    return out
