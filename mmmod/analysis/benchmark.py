"""Speed of a baseline and MoD models side by side, in every mode users run
them (tools/analysis/benchmark.py).

For each mode and batch size, every model is timed interleaved in this one
process, so that the machine's load drifts over all of them alike: the
baseline (a stock network), and for each MoD model

* the model in its inference form (:func:`mmmod.layers.switch_to_deploy`),
  under its own name: what a deployment runs;
* the same model in its training form (``TRAIN_FORM``);
* its floor (``FLOOR``): every MoD block only reads the map once and adds
  onto k channels, the physical limit of any MoD implementation;
* its floor plus selection (``SELECTION``): every MoD block the floor plus
  its selector, top-k and gather: all of the block but its Conv-Block;
* its skip bound (``SKIP``): every MoD block an identity.

The tables give medians and quartiles, the speed-ups over the baseline, each
MoD model's share of its floor, of its floor plus selection and of its skip
bound (the reference's time over the model's), and the paper's speed-ups;
each ratio is the median over the rounds of the ratio within a round, with
its 95 % interval.
With a profile, each MoD model's time per op beside its floor's says where
the MoD blocks' time goes.
"""
import copy
import json
import os.path as osp
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch.torch_version import TorchVersion

from mmmod.apis import model_name
from mmmod.paper import SPEEDUPS
from mmmod.utils import count_macs, count_params
from mmmod.layers import mod_blocks, switch_to_deploy
from mmmod.utils.timing import (describe_machine, floor_mod_blocks,
                                   measure_train_throughput,
                                   selection_floor_mod_blocks,
                                   paired_ratio, skip_mod_blocks,
                                   spread_warning, time_interleaved)

TRAIN_FORM = ' (training form)'
FLOOR = ' (floor)'
SELECTION = ' (floor + selection)'
SKIP = ' (skip bound)'


def _eager(model):
    return model


def _compiled(**options):
    # dynamic=False: one graph per batch size, each specialised to it, as a
    # deployment compiles for its fixed input shape.
    return lambda model: torch.compile(model, dynamic=False, **options)


class CUDAGraphRunner:
    """``model``'s forward captured as a CUDA graph
    (``torch.cuda.CUDAGraph``) on a static copy of its first input of each
    shape, then replayed: what a deployment that captures its eager model
    runs, without compiling."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.graphs = {}

    def __call__(self, x: torch.Tensor):
        key = (tuple(x.shape), x.stride(), x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_x, out = self.graphs[key]
        static_x.copy_(x)
        graph.replay()
        return out

    def _capture(self, x):
        static_x = x.clone()
        # warm-up on a side stream, as torch.cuda.graphs asks: cuDNN and
        # cuBLAS pick their algorithms and workspaces outside the capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.model(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(static_x)
        return graph, static_x, out


@dataclass(frozen=True)
class Mode:
    """How a mode runs a model: on which device, made into what by
    ``make`` (called once per model; None: exported to ONNX per batch
    size), whether its training step is timed too, and the inductor
    settings that hold while it runs (traces and compiles included)."""
    device: str
    make: Optional[Callable[[nn.Module], Callable]]
    trains: bool = False
    help: str = ''
    inductor: Optional[dict] = None
    torch_min: str = ''  # the oldest torch it runs on
    default: bool = True  # among the modes run when none are named


MODES = {
    'eager':
    Mode('cpu', _eager, True, 'PyTorch eager'),
    'compile':
    Mode('cpu', _compiled(), True, 'torch.compile (inductor defaults)'),
    'compile-freeze':
    # freezing set for the whole mode: dynamo reads it when it traces
    # (is_parameter_freezing); with torch.compile's option alone it lifts
    # the weights as graph inputs, leaving inductor nothing to freeze. The
    # option too: a backend unlike the compile mode's, whose graphs of the
    # same models dynamo would otherwise reuse
    Mode('cpu', _compiled(options={'freezing': True}), False,
         'torch.compile, inductor freezing (weights constant: conv-BN '
         'folding, weight prepacking; inference only)',
         inductor={'freezing': True}),
    'compile-freeze-cpp':
    # inductor's C++ wrapper: the graph's kernels and the MoD ops called
    # from generated C++ (the custom ops through aoti_torch_call_dispatcher),
    # with none of the Python wrapper's per-call cost
    Mode('cpu', _compiled(options={'freezing': True, 'cpp_wrapper': True}),
         False, 'torch.compile, inductor freezing and its C++ wrapper (the '
         "graph's kernels and ops called from generated C++, not Python; "
         'inference only)', inductor={'freezing': True, 'cpp_wrapper': True},
         torch_min='2.14', default=False),
    'onnxruntime':
    Mode('cpu', None, False, 'ONNX Runtime CPU session, same thread count '
         '(mmmod.deployment.export, one static graph per batch size)'),
    'cuda-eager':
    Mode('cuda', _eager, True, 'PyTorch eager on the GPU'),
    'cuda-compile':
    Mode('cuda', _compiled(), True, 'torch.compile on the GPU'),
    'cuda-graphs':
    Mode('cuda', CUDAGraphRunner, False,
         'the eager model captured as a CUDA graph and replayed '
         '(torch.cuda.CUDAGraph)'),
    'cuda-compile-graphs':
    Mode('cuda', _compiled(mode='reduce-overhead'), False,
         'torch.compile mode="reduce-overhead" (inductor with CUDA graphs)'),
}
CPU_MODES = tuple(m for m, mode in MODES.items() if mode.device == 'cpu')
CUDA_MODES = tuple(m for m, mode in MODES.items() if mode.device == 'cuda')
TORCH_VERSION = TorchVersion(torch.__version__)


def runs_on_this_torch(mode: str) -> bool:
    need = MODES[mode].torch_min
    return not need or TORCH_VERSION >= need


def default_cpu_modes() -> tuple:
    """The CPU modes run when none are named: those this torch runs, but
    ``compile-freeze-cpp`` (asked for by name: its C++ wrapper adds tens of
    seconds of compiling a model and batch size)."""
    return tuple(m for m in CPU_MODES
                 if MODES[m].default and runs_on_this_torch(m))


def default_modes() -> tuple:
    """:func:`default_cpu_modes`, and the CUDA ones when there is a GPU."""
    return default_cpu_modes() + (CUDA_MODES
                                  if torch.cuda.is_available() else ())


class PlanError(ValueError):
    """A bad value of a :class:`Plan` field, named by ``field``."""

    def __init__(self, field: str, message: str):
        super().__init__(f'{field}: {message}')
        self.field, self.message = field, message


def check_modes(modes: Sequence[str]) -> list:
    """``modes`` if every one is known and can run here, else
    :class:`PlanError` naming the choices."""
    modes = list(modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise PlanError('modes', f'unknown mode(s) {unknown or modes}; '
                        f'choose among {", ".join(MODES)}')
    if len(set(modes)) < len(modes):
        raise PlanError('modes', f'each mode once, got {modes}')
    old = [m for m in modes if not runs_on_this_torch(m)]
    if old:
        raise PlanError('modes', f'{old[0]} needs torch >= '
                        f'{MODES[old[0]].torch_min}, this is '
                        f'{torch.__version__}')
    cuda = [m for m in modes if MODES[m].device == 'cuda']
    if cuda and not torch.cuda.is_available():
        raise PlanError('modes', f'{" ".join(cuda)} need a CUDA device and '
                        f'there is none here; CPU modes: '
                        f'{", ".join(CPU_MODES)}')
    if 'onnxruntime' in modes:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise PlanError('modes', 'onnxruntime needs the onnxruntime '
                            'package (pip install onnxruntime), or leave the '
                            'mode out') from None
    return modes


def check_batch_sizes(batch_sizes: Sequence[int],
                      field: str = 'batch_sizes') -> list:
    """``batch_sizes`` if they are distinct positive integers, else
    :class:`PlanError` naming ``field``."""
    batch_sizes = list(batch_sizes)
    if not all(isinstance(b, int) and b >= 1 for b in batch_sizes):
        raise PlanError(field, f'must be positive integers, got '
                        f'{batch_sizes}')
    if len(set(batch_sizes)) < len(batch_sizes):
        raise PlanError(field, f'each batch size once, got {batch_sizes}')
    return batch_sizes


@dataclass
class Plan:
    """What to time: modes, batch sizes, input and rounds. Checked when
    made: a bad value is a :class:`PlanError` naming the field.

    Warm-up rounds are at least 1: the first call of a model compiles it
    (compile modes), captures its CUDA graph or creates its optimizer state,
    and must not be timed."""
    modes: Sequence[str] = field(default_factory=default_cpu_modes)
    batch_sizes: Sequence[int] = (1, 8)
    input_shape: Sequence[int] = (3, 224, 224)
    warmup: int = 10
    repeats: int = 50
    train_batch_sizes: Optional[Sequence[int]] = None  # the largest batch
    train_warmup: int = 2
    train_repeats: int = 10
    channels_last: bool = False
    opset: int = 18
    profile: int = 0  # forwards profiled per model; 0: none

    def __post_init__(self):
        self.modes = check_modes(self.modes)
        self.batch_sizes = check_batch_sizes(self.batch_sizes)
        if self.train_batch_sizes is None:
            self.train_batch_sizes = [max(self.batch_sizes)]
        self.train_batch_sizes = check_batch_sizes(self.train_batch_sizes,
                                                   'train_batch_sizes')
        if not set(self.train_batch_sizes) <= set(self.batch_sizes):
            raise PlanError('train_batch_sizes',
                            f'{self.train_batch_sizes} must be among the '
                            f'batch sizes {self.batch_sizes}')
        self.input_shape = list(self.input_shape)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise PlanError('input_shape', 'must be (channels, height, '
                            f'width), positive, got {self.input_shape}')
        least = dict(warmup=1, repeats=1, train_warmup=1, train_repeats=0,
                     profile=0)
        for key, low in least.items():
            if getattr(self, key) < low:
                raise PlanError(key, f'must be >= {low}, got '
                                f'{getattr(self, key)}')

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

    Each MoD model is timed in its inference form under its name, and
    joined by its training form, floor, floor plus selection and skip bound
    (``name + TRAIN_FORM, FLOOR, SELECTION, SKIP``). Inference is timed at
    every batch size; the training step (forward, backward, SGD) in the
    modes that train, at ``plan.train_batch_sizes``, on copies of the models
    (but the inference forms, which cannot train). Returns ``dict(meta=,
    models={name: dict(params=, gmacs=, floor=, selection=, bound=,
    trains=)}, timings={mode: {batch: {name: dict(latency=, train=,
    profile=)}}}, warnings=[...])``, times in ms, profiles as ``[[op, us
    per forward, calls per forward], ...]``.
    """
    plan = plan or Plan()
    if not models:
        raise ValueError('no models to time')
    models = with_references(models)
    # a model in its inference form is counted in its training form: the
    # same arithmetic, in ops the counter knows (BN folding aside)
    counted = {name: models.get(name + TRAIN_FORM, m)
               for name, m in models.items()}
    info = {
        name: dict(
            params=count_params(m) / 1e6,
            gmacs=count_macs(m, plan.input_shape) / 1e9,
            floor=name + FLOOR if name + FLOOR in models else None,
            selection=(name + SELECTION
                       if name + SELECTION in models else None),
            bound=name + SKIP if name + SKIP in models else None,
            trains=not _is_deployed(models[name]))
        for name, m in counted.items()
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
    config = torch._dynamo.config
    limit = ('recompile_limit' if hasattr(config, 'recompile_limit') else
             'cache_size_limit')  # (torch < 2.6)
    options = {limit: 8 * graphs}
    if hasattr(config, 'fail_on_recompile_limit_hit'):
        options['fail_on_recompile_limit_hit'] = True
    import torch._inductor.config as inductor_config
    with config.patch(**options), \
            inductor_config.patch(MODES[mode_name].inductor or {}):
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
                steps = {name: (lambda r=r: r(x))
                         for name, r in runners.items()}
            else:
                steps = _onnxruntime_steps(on_device, x, plan)
            stats = time_interleaved(steps, plan.warmup, plan.repeats,
                                     mode.device)
            _warn(warnings, f'{mode_name}, batch {batch}, inference', stats,
                  log)
            out[batch] = {name: dict(latency=s) for name, s in stats.items()}
            if plan.profile:
                log(f'{mode_name}, batch {batch}: profiling the MoD models '
                    'and their floors')
                for name in steps:
                    if name + FLOOR in steps or name.endswith(FLOOR):
                        out[batch][name]['profile'] = _profile(
                            steps[name], plan.profile, mode.device)
        if plan.trains(mode_name, batch):
            log(f'{mode_name}, batch {batch}: timing training steps')
            # copies: the SGD steps must not move the weights timed above
            stats = measure_train_throughput(
                {name: mode.make(copy.deepcopy(m))
                 for name, m in on_device.items() if not _is_deployed(m)},
                plan.input_shape, batch, plan.train_warmup,
                plan.train_repeats, plan.channels_last, mode.device)
            _warn(warnings, f'{mode_name}, batch {batch}, training', stats,
                  log)
            for name, s in stats.items():
                out[batch][name]['train'] = s
    return out


def with_references(models: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """``models`` with each MoD model in its inference form, followed by its
    training form, its floor, its floor plus selection and its skip
    bound."""
    out = {}
    for name, model in models.items():
        if not mod_blocks(model):
            out[name] = model
            continue
        deployed = copy.deepcopy(model)
        deployed.eval()  # (stock backbones' train() returns None)
        out[name] = switch_to_deploy(deployed)
        out[name + TRAIN_FORM] = model
        out[name + FLOOR] = floor_mod_blocks(model)
        out[name + SELECTION] = selection_floor_mod_blocks(model)
        out[name + SKIP] = skip_mod_blocks(model)
    return out


def _is_deployed(model: nn.Module) -> bool:
    return any(m.deploy for m in mod_blocks(model))


def _to(model, device, plan):
    if device != 'cpu':  # the CPU modes keep using the CPU copy
        model = copy.deepcopy(model)
    return model.to(device=device, memory_format=plan.memory_format).eval()


def _profile(step: Callable, forwards: int, device: str = 'cpu') -> list:
    """``[[op, us per forward, calls per forward], ...]`` of ``forwards``
    calls of ``step``, largest first: by ``torch.profiler``, self CPU time
    on CPU, and on CUDA the GPU time of the kernels (the device's events
    alone: an op's self device time is its kernels', which would count
    twice); for an ONNX Runtime step, ONNX Runtime's own profile of its
    nodes by op type."""
    if isinstance(step, SessionStep):
        return step.profile(forwards)
    from torch.profiler import ProfilerActivity, profile
    cuda = device.startswith('cuda')
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(forwards):
            step()
        if cuda:
            torch.cuda.synchronize()
    return _profile_rows(prof.key_averages(), forwards, cuda)


def _profile_rows(events, forwards: int, cuda: bool) -> list:
    """:func:`_profile`'s rows from ``torch.profiler``'s averaged events."""
    from torch.autograd import DeviceType
    total, calls = {}, {}
    for e in events:
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if cuda and (e.device_type != DeviceType.CUDA or not us):
            continue
        op = e.key[:72]  # (kernels' names run to hundreds of characters)
        total[op] = total.get(op, 0) + us / forwards
        calls[op] = calls.get(op, 0) + e.count / forwards
    return sorted(([op, us, calls[op]] for op, us in total.items()),
                  key=lambda r: -r[1])


def _onnxruntime_steps(models, x, plan):
    """Each model exported for input ``x`` and run in an ONNX Runtime
    session with PyTorch's thread count, its threads not spinning between
    runs (the idle sessions' would take the cores from the timed one)."""
    from mmmod.deployment import export, session

    steps = {}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(models.items()):
            path = osp.join(tmp, f'{i}.onnx')
            export(model, x, path, plan.opset)
            with open(path, 'rb') as f:
                graph = f.read() if plan.profile else None
            steps[name] = SessionStep(
                session(path, threads, spinning=False), x, graph, threads)
    return steps  # (sessions hold their graphs: the files may go)


class SessionStep:
    """A call of ONNX Runtime session ``sess`` on ``x``, for
    :func:`~mmmod.utils.timing.time_interleaved`; given the model's
    bytes, :meth:`profile` runs it again with ONNX Runtime's profiler."""

    def __init__(self, sess, x: torch.Tensor, graph: Optional[bytes] = None,
                 threads: Optional[int] = None):
        self.sess, self.graph, self.threads = sess, graph, threads
        self.feed = {sess.get_inputs()[0].name: x.cpu().contiguous().numpy()}

    def __call__(self):
        return self.sess.run(None, self.feed)

    def profile(self, forwards: int) -> list:
        """Kernel time per op type, as :func:`_profile` gives it, from a new
        session on the same graph with profiling on."""
        from mmmod.deployment import session
        with tempfile.TemporaryDirectory() as tmp:
            sess = session(self.graph, self.threads, spinning=False,
                           profile=osp.join(tmp, 'ort'))
            for _ in range(forwards + 1):  # the first is warm-up
                sess.run(None, self.feed)
            with open(sess.end_profiling()) as f:
                events = json.load(f)
        runs = sorted(e['ts'] for e in events if e.get('name') == 'model_run')
        begin = runs[1] if len(runs) > 1 else 0
        total, calls = {}, {}
        for e in events:
            if (e.get('cat') == 'Node' and e['ts'] >= begin
                    and e['name'].endswith('_kernel_time')):
                op = e.get('args', {}).get('op_name', '?')
                total[op] = total.get(op, 0) + e['dur']
                calls[op] = calls.get(op, 0) + 1
        rows = [[op, t / forwards, calls[op] / forwards]
                for op, t in total.items()]
        return sorted(rows, key=lambda r: -r[1])


def _warn(warnings, where, stats, log):
    text = spread_warning(stats)
    if text:
        warnings.append(f'{where}: {text}')
        log(warnings[-1])


# --- tables -----------------------------------------------------------------

HEADER = ('model', 'params (M)', 'GMACs', 'ms: median [q1, q3]', 'speed-up',
          'share of floor', 'share of floor + selection',
          'share of skip bound', 'paper CPU', 'paper GPU',
          'train img/s', 'train speed-up', 'train share of floor',
          'train share of floor + selection')


def paper_speedups(name: str, baseline: str) -> tuple:
    """The paper's ``(CPU, GPU)`` speed-up of model ``name`` over
    ``baseline``, or ``(None, None)`` when the paper has none for that
    pair."""
    paper = SPEEDUPS.get(name)
    if paper and paper[0] == baseline:
        return paper[1:]
    return None, None


def _ratio(reference, t, key='latency', scale=1.0, unit='x', digits=2):
    """The reference's time over ``t``'s round by round (their median,
    :func:`~mmmod.utils.timing.paired_ratio`), times ``scale``, with its
    95 % interval in brackets; '' when either was not timed."""
    if not reference or key not in reference or key not in t:
        return ''
    r = paired_ratio(reference[key]['times'], t[key]['times'])
    cell = f"{scale * r['median']:.{digits}f}{unit}"
    if reference is t or r['low'] is None:
        return cell
    return (f"{cell} [{scale * r['low']:.{digits}f}, "
            f"{scale * r['high']:.{digits}f}]")


def _share(reference, t, key='latency'):
    return _ratio(reference, t, key, scale=100, unit=' %', digits=0)


def table(result: dict, mode: str, batch: int) -> list:
    """The rows (lists of strings, see HEADER) of one mode and batch
    size."""
    base_name = result['meta']['baseline']
    row_of = result['timings'][mode][batch]
    base = row_of[base_name]
    rows = []
    for name, t in row_of.items():
        info = result['models'][name]
        floor = row_of.get(info.get('floor'))
        selection = row_of.get(info.get('selection'))
        # a MoD model's training step is its training form's
        train_of = row_of.get(name + TRAIN_FORM, t)
        train = train_of.get('train')
        rows.append([
            name, f"{info['params']:.2f}", f"{info['gmacs']:.2f}",
            _ms(t['latency']), _ratio(base, t),
            _share(floor, t), _share(selection, t),
            _share(row_of.get(info['bound']), t),
            *(f'{p:.2f}x' if p else ''
              for p in paper_speedups(name, base_name)),
            f"{train['images_per_s']:.1f}" if train else '',
            _ratio(base, train_of, 'train') if train else '',
            _share(floor, train_of, 'train') if floor else '',
            _share(selection, train_of, 'train') if selection else '',
        ])
    return rows


def profile_rows(result: dict, mode: str, batch: int, top: int = 12) -> list:
    """``[(model, rows)]``: for each profiled MoD model, its time per op
    beside its floor's (us per forward), the ``top`` ops by the difference,
    and the totals: where the MoD blocks' time goes beyond the floor."""
    out = []
    row_of = result['timings'][mode][batch]
    for name, t in row_of.items():
        floor = row_of.get(result['models'][name].get('floor') or '')
        if 'profile' not in t or not floor or 'profile' not in floor:
            continue
        mine = {op: (us, calls) for op, us, calls in t['profile']}
        ref = {op: (us, calls) for op, us, calls in floor['profile']}
        ops = sorted(set(mine) | set(ref), key=lambda op: -abs(
            mine.get(op, (0, 0))[0] - ref.get(op, (0, 0))[0]))
        rows = []
        for op in ops[:top]:
            (us, calls), (f_us, f_calls) = mine.get(op, (0, 0)), ref.get(
                op, (0, 0))
            rows.append([op, f'{us:.0f}', f'{calls:g}', f'{f_us:.0f}',
                         f'{f_calls:g}', f'{us - f_us:+.0f}'])
        total, f_total = (sum(v[0] for v in d.values()) for d in (mine, ref))
        rows.append(['all ops', f'{total:.0f}', '', f'{f_total:.0f}', '',
                     f'{total - f_total:+.0f}'])
        out.append((name, rows))
    return out


PROFILE_HEADER = ('op', 'us', 'calls', 'floor us', 'floor calls',
                  'difference us')


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
            f"warm-up; {train}; speed-ups and shares: the median over the "
            "rounds of the ratio within a round [its 95 % interval]")


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
            for name, rows in profile_rows(result, mode, batch):
                what = ('GPU time per forward by kernel'
                        if MODES[mode].device == 'cuda' else
                        'self time per forward by op')
                parts.append(f'{name}: {what}, beside its floor ({mode}, '
                             f'batch {batch})\n')
                parts.append(format_table(PROFILE_HEADER, rows, markdown))
    header, rows = fastest_rows(result)
    parts.append(f'{head}median ms in every mode\n')
    parts.append(format_table(header, rows, markdown, left=2))
    parts += [w + '\n' for w in result['warnings']]
    return '\n'.join(parts)


def load_result(path: str) -> dict:
    """A result that :func:`benchmark` returned and the tool saved as JSON,
    as :func:`benchmark` returns it (JSON's keys are strings: the batch
    sizes' become ints again), for :func:`report`. A file that is not such
    a run (whose tables do not print) raises ValueError; it is only ever
    parsed as JSON."""
    with open(path) as f:
        text = f.read()
    try:
        result = json.loads(text)
        result['timings'] = {
            mode: {int(batch): t for batch, t in by_batch.items()}
            for mode, by_batch in result['timings'].items()}
        report(result)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f'{path} is not a run saved by the benchmark tool '
                         f'({type(e).__name__}: {e})') from None
    return result


def model_names(configs: Sequence[str]) -> list:
    """The models' names in the tables (:func:`mmmod.apis.model_name`),
    checked to be distinct."""
    names = [model_name(c) for c in configs]
    for name in names:
        if names.count(name) > 1:
            same = [c for c in configs if model_name(c) == name]
            raise ValueError(f'two configs name the model {name!r}: {same}')
    return names
