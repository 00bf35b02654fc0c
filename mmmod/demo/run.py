"""The one-command demo (``python tools/demo.py``): train ResNet18-MoD and
its ResNet18 baseline on the digits, test both, time them side by side and
write the comparison."""
import os
import os.path as osp
import tempfile

from mmmod.apis import build_model, test, train
from mmmod.utils.timing import cpu_name

CONFIG_DIR = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs',
    'demo')


class DemoError(Exception):
    """A problem with the user's options (the tool prints it and exits 2);
    ``parameter`` names the argument of :func:`run_demo` at fault."""

    def __init__(self, parameter, message):
        super().__init__(message)
        self.parameter = parameter


LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
# name -> config; the first is the baseline that speed-ups are relative to
MODELS = {
    'ResNet18': 'resnet18_1xb16_digits.py',
    'ResNet18-MoD': 'resnet18-mod_1xb16_digits.py',
}
INPUT_SHAPE = (3, 32, 32)


def run_demo(work_dir='work_dirs/demo', data_root='data/digits',
             epochs=None, quick=False):
    """Everything ``tools/demo.py`` does: export the digits to
    ``data_root``, train and test both models for ``epochs`` (the configs'
    when None; ``quick``: one epoch on 64 images, fewer timing rounds), time
    them and write the comparison to ``work_dir``."""
    from .digits import export_digits
    print(f'== data: scikit-learn digits -> {data_root}', flush=True)
    try:
        meta, reused = export_digits(data_root)
    except OSError as e:
        raise DemoError('data_root', f'cannot export the digits to '
                        f'{data_root!r}: {e.strerror or e}')
    done = ('reusing the digits exported earlier in'
            if reused else 'exported the digits to')
    print(f"{done} {data_root} ({_sizes(meta)} images, "
          f"{meta['size']}x{meta['size']}, split seed {meta['seed']})",
          flush=True)
    # Fail before any training if the results cannot be written.
    try:
        _check_writable(work_dir)
    except OSError as e:
        raise DemoError('work_dir', f'cannot write the work dir {work_dir!r}: '
                        f'{e.strerror or e}')

    results, models = {}, {}
    for i, (name, config) in enumerate(MODELS.items(), 1):
        print(f'\n== [{i}/{len(MODELS)}] {name}: train and test '
              f'{osp.relpath(osp.join(CONFIG_DIR, config))}', flush=True)
        models[name], top1, cfg = train_and_test(config, work_dir, data_root,
                                                 epochs, quick)
        results[name] = dict(top1=top1, config=config)
    epochs = cfg.train_cfg.max_epochs

    from mmmod.utils import (count_macs, count_params, measure_latency,
                             spread_warning)
    print(f'\n== latency at batch 1 on the CPU ({_cpu()}), models run in '
          'turn, medians', flush=True)
    warmup, repeats = (2, 5) if quick else (10, 100)
    latency = measure_latency(
        models, INPUT_SHAPE, batch_size=1, warmup=warmup, repeats=repeats)
    for name, model in models.items():
        results[name].update(
            params=count_params(model),
            macs=count_macs(model, INPUT_SHAPE),
            latency=latency[name])

    write_report(results, work_dir, meta, epochs, repeats,
                 spread_warning(latency))


def train_and_test(config, work_dir, data_root, epochs=None, quick=False):
    """Train ``config`` with the stock runner, test its best-on-val
    checkpoint. Returns that model, its test top-1 and the config."""
    path = osp.join(CONFIG_DIR, config)
    work_dir = osp.join(work_dir, osp.splitext(config)[0])
    options = [f'{loader}.dataset.data_root={data_root}'
               for loader in LOADERS]
    if quick:
        options += ['train_cfg.max_epochs=1',
                    'train_dataloader.dataset.indices=64']
    if epochs:
        options.append(f'train_cfg.max_epochs={epochs}')
    runner = train(path, work_dir, cfg_options=options)
    best = runner.message_hub.get_info('best_ckpt')
    metrics = test(path, best, work_dir, cfg_options=options)
    model, cfg = build_model(path, best, options)
    return model, metrics['accuracy/top1'], cfg


def write_report(results, work_dir, meta, epochs, repeats, warning=None):
    """The table, setup and figure, to stdout and ``work_dir``;
    ``warning`` (unsteady timings, see :func:`spread_warning`) stands first
    in both."""
    from mmmod.utils import format_table

    from .report import COLUMNS, comparison_rows, plot_accuracy_latency

    baseline = next(iter(MODELS))
    table = format_table(
        COLUMNS, comparison_rows(results, baseline), markdown=True).rstrip()
    base, mod = results.values()
    setup = (
        f"{epochs} epoch(s) on scikit-learn's digits at {meta['size']}x"
        f"{meta['size']} ({_sizes(meta)}), the same schedule for both; "
        'top-1 of the best-on-val checkpoint on the test split. Latency: '
        f'median [quartiles] of {repeats} interleaved runs at batch 1 on '
        f'{_cpu()}. A MoD block convolves only the k = C / 64 channels that '
        'its selector ranks highest and passes the others through: the MAC '
        f"ratio, {base['macs'] / mod['macs']:.2f}x, is the ideal speed-up.")
    if warning:
        setup = f'**{warning}**\n\n{setup}'
    md = osp.join(work_dir, 'results.md')
    png = osp.join(work_dir, 'results.png')
    plot_accuracy_latency(results, png, f'ResNet18 vs ResNet18-MoD, digits '
                          f"{meta['size']}x{meta['size']}, CPU batch 1")
    with open(md, 'w') as f:
        f.write(f'# ResNet18-MoD vs ResNet18 (tools/demo.py)\n\n{table}\n\n'
                f'{setup}\n\nConfigs: '
                + ', '.join(f'configs/demo/{c}' for c in MODELS.values())
                + f'\n\n![accuracy vs latency]({osp.basename(png)})\n')
    print(f'\n== results\n\n{table}\n\n{setup}\n\nwritten to {md} and {png}')


def _sizes(meta):
    return ', '.join(f'{k} {v}' for k, v in meta['splits'].items())


def _check_writable(path):
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass


def _cpu():
    """E.g. 'AMD EPYC 7B13, 2 cores, 2 torch threads'."""
    import torch
    return (f'{cpu_name()}, {os.cpu_count()} cores, '
            f'{torch.get_num_threads()} torch threads')
