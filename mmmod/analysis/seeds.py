"""Test accuracy over seeds, as the supplement's Table 11 gives it (mean and
standard deviation per model and dataset), from the work dirs that
``tools/cifar_seeds.sh`` writes."""
import glob
import json
import os.path as osp
import warnings

import numpy as np

from mmmod.apis import build_model, load_config, model_name
from mmmod.utils import count_macs, count_params

SETS = (('CIFAR100', 'C100'), ('CIFAR10', 'C10'))  # CIFAR100 is a CIFAR10


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


def gather_seeds(root, metric='accuracy/top1', input_size=(32, 32)):
    """One table row (a dict) for the runs under ``root``."""
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

    model, cfg = build_model(next(iter(runs.values()))[0])
    accs = np.array([v for _, _, v in runs.values()], dtype=float)
    return dict(
        model=model_name(names.pop()),
        set=_set_name(cfg),
        mean=float(accs.mean()),
        # sample standard deviation (n - 1); undefined (None) for one run
        std=float(accs.std(ddof=1)) if len(accs) > 1 else None,
        mmac=count_macs(model, (3, *input_size)) / 1e6,
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
