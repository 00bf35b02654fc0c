"""Side-by-side latency: models are timed interleaved in one process, so
that the machine's load drifts over all of them alike."""
import statistics
import time
from typing import Dict

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

    Each round runs every model once, in turn; ``warmup`` rounds are thrown
    away. Returns ``{name: dict(median=, q1=, q3=, times=[...])}``.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, *input_shape, device=device).to(
        memory_format=fmt)
    for model in models.values():
        model.eval()  # (stock backbones' train() returns None: no chaining)
        model.to(device=device, memory_format=fmt)
    times = {name: [] for name in models}
    for round_ in range(warmup + repeats):
        for name, model in models.items():
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            if round_ >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else ts * 3
        out[name] = dict(median=statistics.median(ts), q1=q[0], q3=q[2],
                         times=ts)
    return out
