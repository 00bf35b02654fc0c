"""Mean and standard deviation over seeds of the test accuracy, as in the
supplement's Table 11 (one row per model and dataset).

    python tools/analysis/gather_seeds.py WORK_ROOT [WORK_ROOT ...] \
        [--out table.md | table.json] [--metric accuracy/top1] [--shape 32]

A WORK_ROOT holds one model's runs, as tools/cifar_seeds.sh writes them:
``WORK_ROOT/seed<s>/`` (training work dir, with the config the runner dumped)
and ``WORK_ROOT/seed<s>/test/<timestamp>/<timestamp>.json`` (the metrics of
tools/test.py on the best-on-val checkpoint; the newest one counts). MMAC and
parameters are counted with ``mmmod.utils`` on that config's model at
``--shape`` (32x32 for CIFAR).
"""
import argparse
import glob
import json
import os.path as osp
import warnings

import numpy as np

from mmmod.apis import load_config

HEADER = ('Model', 'Set', 'Test Acc. (%)', 'FLOPS (MMAC)', 'Params (M)',
          'Seeds')
SETS = (('CIFAR100', 'C100'), ('CIFAR10', 'C10'))  # CIFAR100 is a CIFAR10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument(
        'roots',
        nargs='+',
        metavar='WORK_ROOT',
        help='one model\'s runs: WORK_ROOT/seed*/')
    p.add_argument(
        '--metric', default='accuracy/top1', help='test metric to gather')
    p.add_argument(
        '--shape', type=int, default=32, help='square input size for MMAC')
    p.add_argument(
        '--out',
        help='also write the table: .json (with the '
        'per-seed values) or Markdown')
    return p.parse_args(argv)


def read_run(run, metric):
    """``(config path, seed, test metric)`` of one run dir, or None if it
    has no test result yet."""
    configs = glob.glob(osp.join(run, '*.py'))
    if len(configs) != 1:
        raise FileNotFoundError(f'{run}: expected the one config the runner '
                                f'dumps there, found {len(configs)}')
    results = sorted(glob.glob(osp.join(run, 'test', '*', '*.json')))
    if not results:
        return None
    with open(results[-1]) as f:
        metrics = json.loads(f.read().splitlines()[-1])
    if metric not in metrics:
        raise KeyError(f'{results[-1]}: no {metric!r} in {sorted(metrics)}')
    cfg = load_config(configs[0])
    return configs[0], cfg.get('randomness', {}).get('seed'), metrics[metric]


def gather(root, metric='accuracy/top1', shape=32):
    """One table row (a dict) for the runs under ``root``."""
    from mmengine.registry import MODELS, init_default_scope

    from mmmod.utils import count_macs, count_params
    if not osp.isdir(root):
        raise FileNotFoundError(f'WORK_ROOT not found: {root}')
    runs = {}
    for run in sorted(glob.glob(osp.join(root, '*', ''))):
        result = read_run(run, metric)
        if result is None:
            warnings.warn(f'{run}: no test result yet, skipped')
        else:
            runs[run] = result
    if not runs:
        raise FileNotFoundError(f'{root}: no tested runs (seed*/test/)')
    names = {osp.basename(c) for c, _, _ in runs.values()}
    if len(names) > 1:
        raise ValueError(f'{root} mixes configs: {sorted(names)}')
    seeds = [s for _, s, _ in runs.values()]
    if len(set(seeds)) < len(seeds):
        warnings.warn(f'{root}: runs share a seed: {seeds}')

    cfg = load_config(next(iter(runs.values()))[0])
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    accs = np.array([v for _, _, v in runs.values()], dtype=float)
    return dict(
        model=names.pop().split('_')[0],
        set=_set_name(cfg),
        mean=float(accs.mean()),
        # sample standard deviation (n - 1); undefined (None) for one run
        std=float(accs.std(ddof=1)) if len(accs) > 1 else None,
        mmac=count_macs(model, (3, shape, shape)) / 1e6,
        params=count_params(model) / 1e6,
        seeds=seeds,
        values=accs.tolist(),
        runs=list(runs))


def _set_name(cfg):
    """'C10' / 'C100' for a CIFAR test set (or a subclass), else its type."""
    from mmengine.registry import DATASETS
    kind = cfg.test_dataloader.dataset.type
    with DATASETS.switch_scope_and_registry(cfg.default_scope) as registry:
        cls = registry.get(kind)
    bases = {c.__name__ for c in getattr(cls, '__mro__', ())}
    return next((short for base, short in SETS if base in bases), kind)


def _accuracy(row):
    if row['std'] is None:
        return f'{row["mean"]:.2f}'
    return f'{row["mean"]:.2f} ± {row["std"]:.2f}'


def format_table(rows, markdown=False):
    cells = [HEADER]
    for r in rows:
        cells.append((r['model'], r['set'], _accuracy(r), f'{r["mmac"]:.0f}',
                      f'{r["params"]:.2f}', str(len(r['values']))))
    if markdown:
        lines = ['| ' + ' | '.join(r) + ' |' for r in cells]
        lines.insert(1, '|---|---|---:|---:|---:|---:|')
        return '\n'.join(lines) + '\n'
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADER))]
    lines = []
    for r in cells:  # names left-aligned, numbers right-aligned
        lines.append('  '.join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))))
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    rows = [gather(r, args.metric, args.shape) for r in args.roots]
    print(f'{args.metric}: mean ± sample std over seeds; MMAC at '
          f'{args.shape}x{args.shape}')
    print(format_table(rows), end='')
    if args.out:
        with open(args.out, 'w') as f:
            if args.out.endswith('.json'):
                json.dump(rows, f, indent=2)
            else:
                f.write(format_table(rows, markdown=True))
    return rows


if __name__ == '__main__':
    main()
