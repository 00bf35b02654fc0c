"""Speed of a baseline and MoD models side by side, in every mode users run
them (tools/analysis/benchmark.py).

For each mode and batch size, every model -- the baseline, each MoD model
and its skip bound (the same model with every MoD block an identity: MoD
with free machinery) -- is timed interleaved in this one process, so that
the machine's load drifts over all of them alike. The tables give medians
and quartiles, the speed-ups over the baseline, each MoD model's share of
its bound (its speed-up over the bound's) and the paper's speed-ups.
"""
import copy
import os.path as osp
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn

from mmmod.apis import model_name
from mmmod.paper import SPEEDUPS
from mmmod.utils import count_macs, count_params
from mmmod.utils.benchmark import (describe_machine, has_mod_blocks,
                                   measure_train_throughput, skip_mod_blocks,
                                   spread_warning, time_interleaved)

SKIP = ' (skip bound)'


def _eager(model):
    return model


def _compiled(**options):
    # dynamic=False: one graph per batch size, each specialised to it, as a
    # deployment compiles for its fixed input shape.
    return lambda model: torch.compile(model, dynamic=False, **options)


@dataclass(frozen=True)
class Mode:
    """How a mode runs a model: on which device, made into what by
    ``make`` (called once per model; None: exported to ONNX per batch
    size), and whether its training step is timed too."""
    device: str
    make: Optional[Callable[[nn.Module], Callable]]
    trains: bool = False
    help: str = ''


MODES = {
    'eager':
    Mode('cpu', _eager, True, 'PyTorch eager'),
    'compile':
    Mode('cpu', _compiled(), True, 'torch.compile (inductor defaults)'),
    'compile-freeze':
    Mode('cpu', _compiled(options={'freezing': True}), False,
         'torch.compile, inductor freezing (weights constant: conv-BN '
         'folding, weight prepacking; inference only)'),
    'onnxruntime':
    Mode('cpu', None, False, 'ONNX Runtime CPU session, same thread count '
         '(mmmod.deployment.export, one static graph per batch size)'),
    'cuda-eager':
    Mode('cuda', _eager, True, 'PyTorch eager on the GPU'),
    'cuda-compile':
    Mode('cuda', _compiled(), True, 'torch.compile on the GPU'),
    'cuda-graphs':
    Mode('cuda', _compiled(mode='reduce-overhead'), False,
         'torch.compile mode="reduce-overhead" (CUDA graphs)'),
}
CPU_MODES = tuple(m for m, mode in MODES.items() if mode.device == 'cpu')
CUDA_MODES = tuple(m for m, mode in MODES.items() if mode.device == 'cuda')


def default_modes() -> tuple:
    """Every CPU mode, and the CUDA ones when there is a GPU."""
    return CPU_MODES + (CUDA_MODES if torch.cuda.is_available() else ())


def check_modes(modes: Sequence[str]) -> list:
    """``modes`` if every one is known and can run here, else ValueError
    naming the argument and the choices."""
    modes = list(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f'--modes: unknown mode(s) {unknown or modes}; '
                         f'choose among {", ".join(MODES)}')
    if len(set(modes)) < len(modes):
        raise ValueError(f'--modes: each mode once, got {modes}')
    cuda = [m for m in modes if MODES[m].device == 'cuda']
    if cuda and not torch.cuda.is_available():
        raise ValueError(f'--modes {" ".join(cuda)} need a CUDA device and '
                         f'there is none here; CPU modes: '
                         f'{", ".join(CPU_MODES)}')
    if 'onnxruntime' in modes:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ValueError('--modes onnxruntime needs the onnxruntime '
                             'package (pip install onnxruntime), or leave '
                             'the mode out') from None
    return modes


def check_batch_sizes(batch_sizes: Sequence[int],
                      option: str = '--batch-sizes') -> list:
    """``batch_sizes`` if they are distinct positive integers, else
    ValueError naming ``option``."""
    batch_sizes = list(batch_sizes)
    if not all(isinstance(b, int) and b >= 1 for b in batch_sizes):
        raise ValueError(f'{option} must be positive integers, got '
                         f'{batch_sizes}')
    if len(set(batch_sizes)) < len(batch_sizes):
        raise ValueError(f'{option}: each batch size once, got {batch_sizes}')
    return batch_sizes


@dataclass
class Plan:
    """What to time: modes, batch sizes, input and rounds. Checked when
    made: a bad value is a ValueError naming the option.

    Warm-up rounds are at least 1: the first call of a model compiles it
    (compile modes), captures its CUDA graph or creates its optimizer state,
    and must not be timed."""
    modes: Sequence[str] = CPU_MODES
    batch_sizes: Sequence[int] = (1, 8)
    input_shape: Sequence[int] = (3, 224, 224)
    warmup: int = 10
    repeats: int = 50
    train_batch_sizes: Optional[Sequence[int]] = None  # the largest batch
    train_warmup: int = 2
    train_repeats: int = 10
    channels_last: bool = False
    opset: int = 18

    def __post_init__(self):
        self.modes = check_modes(self.modes)
        self.batch_sizes = check_batch_sizes(self.batch_sizes)
        if self.train_batch_sizes is None:
            self.train_batch_sizes = [max(self.batch_sizes)]
        self.train_batch_sizes = check_batch_sizes(self.train_batch_sizes,
                                                   '--train-batch-sizes')
        if not set(self.train_batch_sizes) <= set(self.batch_sizes):
            raise ValueError(f'--train-batch-sizes {self.train_batch_sizes} '
                             f'must be among --batch-sizes {self.batch_sizes}')
        self.input_shape = list(self.input_shape)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError('input_shape must be (channels, height, width), '
                             f'positive, got {self.input_shape}')
        least = dict(warmup=1, repeats=1, train_warmup=1, train_repeats=0)
        for key, low in least.items():
            if getattr(self, key) < low:
                raise ValueError(f'--{key.replace("_", "-")} must be >= '
                                 f'{low}, got {getattr(self, key)}')

    @property
    def memory_format(self):
        return (torch.channels_last
                if self.channels_last else torch.contiguous_format)

    def trains(self, mode: str, batch: int) -> bool:
        return bool(MODES[mode].trains and self.train_repeats
                    and batch in self.train_batch_sizes)


def benchmark(models: Dict[str, nn.Module],
              plan: Optional[Plan] = None,
              log: Callable[[str], None] = print) -> dict:
    """Time ``{name: model}`` (tensor-in modules, the first the baseline;
    they are set to eval mode and ``plan``'s memory format) in each mode of
    ``plan`` at each batch size.

    Each MoD model gets its skip bound, ``name + SKIP``. Inference is timed
    at every batch size; the training step (forward, backward, SGD) in the
    modes that train, at ``plan.train_batch_sizes``, on copies of the
    models. Returns ``dict(meta=, models={name: dict(params=, gmacs=,
    bound=)}, timings={mode: {batch: {name: dict(latency=, train=)}}},
    warnings=[...])``, times in ms.
    """
    plan = plan or Plan()
    if not models:
        raise ValueError('no models to time')
    models = with_skip_bounds(models)
    info = {
        name: dict(
            params=count_params(m) / 1e6,
            gmacs=count_macs(m, plan.input_shape) / 1e9,
            bound=name + SKIP if name + SKIP in models else None)
        for name, m in models.items()
    }
    warnings = []
    timings = {
        mode: _time_mode(mode, models, plan, warnings, log)
        for mode in plan.modes
    }
    meta = dict(
        machine=describe_machine(), baseline=next(iter(models)),
        **asdict(plan))
    return dict(meta=meta, models=info, timings=timings, warnings=warnings)


def _time_mode(mode_name, models, plan, warnings, log):
    """``{batch: {name: dict(latency=, train=)}}`` of one mode."""
    # All models share their forward methods' code, on which dynamo keeps
    # its compiled graphs: one per model, batch size and train/eval, beyond
    # its default limit of 8, past which it would silently run eager. So:
    # its default allowance for each graph needed, and an error, not eager,
    # if that is exceeded.
    graphs = len(models) * (len(plan.batch_sizes) +
                            len(plan.train_batch_sizes))
    with torch._dynamo.config.patch(
            recompile_limit=8 * graphs, fail_on_recompile_limit_hit=True):
        return _time_mode_in(mode_name, models, plan, warnings, log)


def _time_mode_in(mode_name, models, plan, warnings, log):
    mode = MODES[mode_name]
    on_device = {name: _to(m, mode.device, plan) for name, m in models.items()}
    # compiled once per model; inductor specialises a graph per batch size
    runners = {name: mode.make(m) for name, m in on_device.items()
               } if mode.make else None
    out = {}
    for batch in plan.batch_sizes:
        log(f'{mode_name}, batch {batch}: timing inference of '
            f'{len(models)} models, {plan.repeats} rounds')
        x = torch.randn(batch, *plan.input_shape, device=mode.device).to(
            memory_format=plan.memory_format)
        with torch.no_grad():
            if runners:
                steps = {name: (lambda r=r: r(x)) for name, r in runners.items()}
            else:
                steps = _onnxruntime_steps(on_device, x, plan.opset)
            stats = time_interleaved(steps, plan.warmup, plan.repeats,
                                     mode.device)
        _warn(warnings, f'{mode_name}, batch {batch}, inference', stats, log)
        out[batch] = {name: dict(latency=s) for name, s in stats.items()}
        if plan.trains(mode_name, batch):
            log(f'{mode_name}, batch {batch}: timing training steps')
            # copies: the SGD steps must not move the weights timed above
            stats = measure_train_throughput(
                {name: mode.make(copy.deepcopy(m))
                 for name, m in on_device.items()}, plan.input_shape, batch,
                plan.train_warmup, plan.train_repeats, plan.channels_last,
                mode.device)
            _warn(warnings, f'{mode_name}, batch {batch}, training', stats,
                  log)
            for name, s in stats.items():
                out[batch][name]['train'] = s
    return out


def with_skip_bounds(models: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """``models`` with each MoD model followed by its skip bound."""
    out = {}
    for name, model in models.items():
        out[name] = model
        if has_mod_blocks(model):
            out[name + SKIP] = skip_mod_blocks(model)
    return out


def _to(model, device, plan):
    if device != 'cpu':  # the CPU modes keep using the CPU copy
        model = copy.deepcopy(model)
    return model.to(device=device, memory_format=plan.memory_format).eval()


def _onnxruntime_steps(models, x, opset):
    """Each model exported for input ``x`` and run in an ONNX Runtime
    session with PyTorch's thread count, its threads not spinning between
    runs (the idle sessions' would take the cores from the timed one)."""
    from mmmod.deployment import export, session

    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(models.items()):
            path = osp.join(tmp, f'{i}.onnx')
            export(model, x, path, opset)
            steps[name] = session_step(
                session(path, torch.get_num_threads(), spinning=False), x)
    return steps  # (sessions hold their graphs: the files may go)


def session_step(sess, x: torch.Tensor) -> Callable[[], list]:
    """A call of ONNX Runtime session ``sess`` on ``x``, for
    :func:`~mmmod.utils.benchmark.time_interleaved`."""
    feed = {sess.get_inputs()[0].name: x.cpu().contiguous().numpy()}
    return lambda: sess.run(None, feed)


def _warn(warnings, where, stats, log):
    text = spread_warning(stats)
    if text:
        warnings.append(f'{where}: {text}')
        log(warnings[-1])


# --- tables -----------------------------------------------------------------

HEADER = ('model', 'params (M)', 'GMACs', 'ms: median [q1, q3]', 'speed-up',
          'share of bound', 'paper CPU', 'paper GPU', 'train img/s',
          'train speed-up')


def paper_speedups(name: str, baseline: str) -> tuple:
    """The paper's ``(CPU, GPU)`` speed-up of model ``name`` over
    ``baseline``, or ``(None, None)`` when the paper has none for that
    pair."""
    paper = SPEEDUPS.get(name)
    if paper and paper[0] == baseline:
        return paper[1:]
    return None, None


def table(result: dict, mode: str, batch: int) -> list:
    """The rows (lists of strings, see HEADER) of one mode and batch
    size."""
    base_name = result['meta']['baseline']
    row_of = result['timings'][mode][batch]
    base = row_of[base_name]
    rows = []
    for name, t in row_of.items():
        info = result['models'][name]
        speedup = base['latency']['median'] / t['latency']['median']
        bound = row_of.get(info['bound'])
        share = (bound['latency']['median'] / t['latency']['median']
                 if bound else None)
        paper = paper_speedups(name, base_name)
        train = t.get('train')
        rows.append([
            name, f"{info['params']:.2f}", f"{info['gmacs']:.2f}",
            _ms(t['latency']), f'{speedup:.2f}x',
            f'{100 * share:.0f} %' if share else '',
            *(f'{p:.2f}x' if p else '' for p in paper),
            f"{train['images_per_s']:.1f}" if train else '',
            (f"{train['images_per_s'] / base['train']['images_per_s']:.2f}x"
             if train else '')
        ])
    return rows


def fastest_rows(result: dict) -> tuple:
    """``(header, rows)``: each model's median ms in every mode, per batch
    size, and its fastest mode."""
    modes = result['meta']['modes']
    rows = []
    for batch in result['meta']['batch_sizes']:
        for name in result['models']:
            ms = {
                m: result['timings'][m][batch][name]['latency']['median']
                for m in modes
            }
            rows.append([name, str(batch)] + [f'{ms[m]:.2f}' for m in modes] +
                        [min(ms, key=ms.get)])
    return ['model', 'batch'] + list(modes) + ['fastest'], rows


def _ms(stats):
    return f"{stats['median']:.2f} [{stats['q1']:.2f}, {stats['q3']:.2f}]"


def describe(result: dict) -> str:
    """One line: the machine and the run's settings."""
    m = result['meta']
    training = [x for x in m['modes'] if MODES[x].trains]
    train = 'no training steps'
    if m['train_repeats'] and m['train_batch_sizes'] and training:
        batches = ', '.join(map(str, m['train_batch_sizes']))
        train = (f"training steps at batch {batches} ({m['train_repeats']} "
                 f"steps) in {', '.join(training)}")
    return (f"{m['machine']}; input 3x{m['input_shape'][1]}x"
            f"{m['input_shape'][2]}"
            + (', channels-last' if m['channels_last'] else '')
            + ''.join(f'; {flag}' for flag in m.get('flags', ()))
            + f"; {m['repeats']} interleaved rounds after {m['warmup']} "
            f"warm-up; {train}")


def report(result: dict, markdown: bool = False) -> str:
    """Every table of ``result``, as text or Markdown."""
    from mmmod.utils import format_table

    head = '## ' if markdown else '== '
    parts = [describe(result) + '\n']
    for mode, by_batch in result['timings'].items():
        for batch in by_batch:
            parts.append(f'{head}{mode}, batch {batch}: {MODES[mode].help}\n')
            parts.append(
                format_table(HEADER, table(result, mode, batch), markdown))
    header, rows = fastest_rows(result)
    parts.append(f'{head}median ms in every mode\n')
    parts.append(format_table(header, rows, markdown, left=2))
    parts += [w + '\n' for w in result['warnings']]
    return '\n'.join(parts)


def model_names(configs: Sequence[str]) -> list:
    """The models' names in the tables (:func:`mmmod.apis.model_name`),
    checked to be distinct."""
    names = [model_name(c) for c in configs]
    for name in names:
        if names.count(name) > 1:
            same = [c for c in configs if model_name(c) == name]
            raise ValueError(f'two configs name the model {name!r}: {same}')
    return names
