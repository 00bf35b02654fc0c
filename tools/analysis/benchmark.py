"""Speed of configs' models side by side, as in the supplement's Table 7.

    python tools/analysis/benchmark.py \
        configs/resnet_mod/baselines/resnet50_8xb32_in1k.py \
        configs/resnet_mod/resnet50-mod_8xb32_in1k.py \
        --threads 2 --repeats 100 --out work_dirs/benchmark/r50.md

The first config is the baseline (or ``--baseline NAME``). All models live
in one process and are timed interleaved (one call of each per round,
warm-up rounds first), so that the machine's load drifts over all of them
alike; the table gives medians and the quartiles. Rows:

* each model: parameters, GMACs (one image), forward latency in ms on the
  CPU and, when there is one, on the GPU; the speed-up over the baseline;
  and the training-step throughput (forward + backward + SGD step, images/s);
* ``NAME (skip bound)`` for each MoD model: the same model with every MoD
  block an ``nn.Identity``, i.e. MoD with free machinery. ``% of skip
  bound`` is the MoD model's speed-up as a share of this bound's;
* ``NAME (plain)`` with ``--plain``: the MoD blocks' reference
  implementation instead of their inference path (compiled kernels around a
  BN-folded Conv-Block, see ``mmmod.layers.MoDBlock``).

``--fuse-conv-bn`` folds the BNs of every model, the baseline's too (the
deployment comparison); ``--compile`` / ``--freeze`` time every model
through ``torch.compile`` (with ``--freeze``, inductor's freezing: the
fastest CPU inference of both baseline and MoD in our measurements).
"""
import argparse
import json
import os
import os.path as osp
import platform

import torch

from mmmod.apis import build_model

SKIP, PLAIN = ' (skip bound)', ' (plain)'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('configs', nargs='+', help='config file paths; the first '
                   'is the baseline unless --baseline says otherwise')
    p.add_argument('--baseline', help='name of the baseline model (a '
                   "config's file name up to its first '_')")
    p.add_argument('--batch-size', type=int, default=1,
                   help='inference batch size (default 1)')
    p.add_argument('--input-size', type=int, nargs='+', default=[224],
                   help='S (square) or H W (default 224)')
    p.add_argument('--threads', type=int,
                   help='CPU threads (torch.set_num_threads)')
    p.add_argument('--channels-last', action='store_true',
                   help='models and inputs in channels-last memory format')
    p.add_argument('--compile', action='store_true',
                   help='time torch.compile-d models')
    p.add_argument('--freeze', action='store_true',
                   help='--compile with inductor freezing: weights become '
                   'constants at inference (conv-BN folding, prepacking)')
    p.add_argument('--warmup', type=int, default=10,
                   help='untimed rounds first (default 10)')
    p.add_argument('--repeats', type=int, default=50,
                   help='timed inference rounds (default 50)')
    p.add_argument('--train-batch-size', type=int, default=8,
                   help='batch size of the training steps (default 8)')
    p.add_argument('--train-repeats', type=int, default=5,
                   help='timed training steps per model, after 2 warm-up '
                   'steps; 0 skips training (default 5)')
    p.add_argument('--no-cuda', action='store_true',
                   help='CPU only, even when a GPU is there')
    p.add_argument('--plain', action='store_true',
                   help="also time the MoD blocks' reference implementation")
    p.add_argument('--fuse-conv-bn', action='store_true',
                   help='fold every BN into the conv before it, in every '
                   'model, the baseline too (mmcv.cnn.fuse_conv_bn)')
    p.add_argument('--out', help='write the table here as Markdown (and the '
                   'raw timings next to it, as .json)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V',
                   help='overrides for every config')
    args = p.parse_args(argv)
    if len(args.input_size) not in (1, 2):
        p.error(f'--input-size takes S or H W, got {args.input_size}')
    args.input_size = tuple(args.input_size * (3 - len(args.input_size)))
    for key in ('batch_size', 'train_batch_size', 'repeats'):
        if getattr(args, key) < 1:
            p.error(f'--{key.replace("_", "-")} must be >= 1')
    if args.threads is not None and args.threads < 1:
        p.error('--threads must be >= 1')
    args.compile = args.compile or args.freeze
    return args


def model_name(config):
    """``configs/.../resnet50-mod_8xb32_in1k.py`` -> ``resnet50-mod``."""
    return osp.basename(config).split('_')[0].rsplit('.py', 1)[0]


def build_models(args):
    """``{name: model}``: the configs' models, then their skip-bound (and
    with --plain, reference) variants."""
    from mmcv.cnn import fuse_conv_bn

    from mmmod.layers import MoDBlock
    from mmmod.utils.benchmark import skip_mod_blocks, use_plain_path

    models = {}
    for config in args.configs:
        name = model_name(config)
        if name in models:
            raise ValueError(f'two configs are named {name!r}: {config}')
        models[name], _ = build_model(config, cfg_options=args.cfg_options)
        if args.fuse_conv_bn:
            models[name] = fuse_conv_bn(models[name])
    for name, model in list(models.items()):
        if any(isinstance(m, MoDBlock) for m in model.modules()):
            models[name + SKIP] = skip_mod_blocks(model)
            if args.plain:
                models[name + PLAIN] = use_plain_path(model)
    return models


def benchmark(args):
    """Measure everything; returns ``(results, meta)``."""
    from mmmod.utils import count_macs, count_params
    from mmmod.utils.benchmark import (measure_latency,
                                       measure_train_throughput)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = build_models(args)
    baseline = args.baseline or model_name(args.configs[0])
    if baseline not in models:
        raise ValueError(f'--baseline {baseline!r} is none of the models: '
                         f'{", ".join(models)}')
    shape = (3, *args.input_size)
    results = {
        name: dict(params=count_params(m) / 1e6,
                   gmacs=count_macs(m, shape) / 1e9)
        for name, m in models.items()
    }
    if args.freeze:
        from torch._inductor import config as inductor_config
        inductor_config.freezing = True
    timed = {
        name: torch.compile(m) if args.compile else m
        for name, m in models.items()
    }
    devices = ['cpu']
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append('cuda')
    for device in devices:
        print(f'timing inference on {device}: {len(models)} models x '
              f'{args.repeats} rounds', flush=True)
        lat = measure_latency(
            timed, shape, args.batch_size, args.warmup, args.repeats,
            args.channels_last, device)
        for name, stats in lat.items():
            results[name][device] = stats
    if args.train_repeats:
        device = devices[-1]
        print(f'timing training steps on {device}', flush=True)
        train = measure_train_throughput(
            timed, shape, args.train_batch_size, 2, args.train_repeats,
            args.channels_last, device)
        for name, stats in train.items():
            results[name]['train'] = dict(stats, device=device)
    meta = dict(
        baseline=baseline,
        devices=devices,
        cpu=_cpu_name(),
        gpu=torch.cuda.get_device_name() if 'cuda' in devices else None,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        batch_size=args.batch_size,
        input_size=list(args.input_size),
        channels_last=args.channels_last,
        compile=args.compile,
        freeze=args.freeze,
        fuse_conv_bn=args.fuse_conv_bn,
        warmup=args.warmup,
        repeats=args.repeats,
        train_batch_size=args.train_batch_size,
        train_repeats=args.train_repeats)
    return results, meta


def _cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(results, meta):
    """Header and rows of the Table 7 layout."""
    base = results[meta['baseline']]
    header = ['Model', 'Params (M)', 'GMACs', 'CPU (ms)', 'GPU (ms)',
              'Speed-up CPU', 'Speed-up GPU', '% of skip bound']
    train = 'train' in base
    if train:
        header += ['Train (img/s)', 'Train speed-up']
    rows = []
    for name, r in results.items():
        row = [name, f"{r['params']:.2f}", f"{r['gmacs']:.2f}"]
        row += [_ms(r.get(d)) for d in ('cpu', 'cuda')]
        row += [_ratio(base.get(d), r.get(d)) for d in ('cpu', 'cuda')]
        bound = results.get(name + SKIP)
        row.append(' / '.join(
            f"{100 * bound[d]['median'] / r[d]['median']:.1f}"
            for d in meta['devices']) if bound else '')
        if train:
            row += [f"{r['train']['images_per_s']:.2f}",
                    _ratio(base['train'], r['train'])]
        rows.append(row)
    return header, rows


def _ms(stats):
    if not stats:
        return '-'
    return f"{stats['median']:.2f} ({stats['q1']:.2f}-{stats['q3']:.2f})"


def _ratio(base, stats):
    return f"{base['median'] / stats['median']:.2f}x" if stats else '-'


def format_table(header, rows, markdown=False):
    cells = [header] + rows
    if markdown:
        lines = ['| ' + ' | '.join(r) + ' |' for r in cells]
        lines.insert(1, '|' + '|'.join(['---'] + ['---:'] *
                                       (len(header) - 1)) + '|')
        return '\n'.join(lines) + '\n'
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return '\n'.join('  '.join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(r, widths))) for r in cells) + '\n'


def describe(meta):
    h, w = meta['input_size']
    text = (f"{meta['cpu']}, {meta['threads']} threads"
            + (f", GPU {meta['gpu']}" if meta['gpu'] else ', no GPU')
            + f"; torch {meta['torch']}; inference: batch "
            f"{meta['batch_size']}, 3x{h}x{w}, {meta['repeats']} rounds "
            f"(medians, quartiles in brackets)")
    if meta['train_repeats']:
        text += (f"; training: batch {meta['train_batch_size']}, "
                 f"{meta['train_repeats']} steps")
    flags = [
        f for f in ('channels_last', 'compile', 'freeze', 'fuse_conv_bn')
        if meta[f]
    ]
    if flags:
        text += '; ' + ', '.join(flags)
    return text


def main(argv=None):
    args = parse_args(argv)
    if args.out:  # fail before measuring if the results cannot be written
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    results, meta = benchmark(args)
    header, rows = table(results, meta)
    print(describe(meta))
    print(format_table(header, rows), end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(describe(meta) + '\n\n' +
                    format_table(header, rows, markdown=True))
        with open(osp.splitext(args.out)[0] + '.json', 'w') as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
    return results, meta


if __name__ == '__main__':
    main()
