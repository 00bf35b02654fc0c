"""What MoD does, in one command, on a CPU: train ResNet18-MoD and its
ResNet18 baseline on real data, test both, and compare accuracy, size,
compute and measured latency.

    python tools/demo.py [--work-dir work_dirs/demo] [--data-root data/digits]
                         [--epochs N] [--quick]

The data is scikit-learn's bundled 8x8 handwritten digits (no download),
exported once as 32x32 PNGs to an image folder. Both models train with
tools/train.py (the stock mmpretrain runner) on the configs in configs/demo/,
their best-on-val checkpoints are tested on the test split with
tools/test.py (the stock Accuracy metric), then timed side by side. The
table goes to stdout and to WORK_DIR/results.md, the plot to
WORK_DIR/results.png.
"""
import argparse
import functools
import importlib.util
import os
import os.path as osp
import platform
import sys
import tempfile

TOOLS = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, TOOLS)
from _common import build_model  # noqa: E402

CONFIG_DIR = osp.join(osp.dirname(TOOLS), 'configs', 'demo')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
# name -> config; the first is the baseline that speed-ups are relative to
MODELS = {
    'ResNet18': 'resnet18_1xb16_digits.py',
    'ResNet18-MoD': 'resnet18-mod_1xb16_digits.py',
}
INPUT_SHAPE = (3, 32, 32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work-dir', default='work_dirs/demo',
                   help='logs, checkpoints and the results (default: '
                   '%(default)s)')
    p.add_argument('--data-root', default='data/digits',
                   help='where the digits are exported, or found from an '
                   'earlier run (default: %(default)s)')
    p.add_argument('--epochs', type=_positive_int,
                   help="training epochs (default: the configs' schedule)")
    p.add_argument('--quick', action='store_true',
                   help='a smoke run: 1 epoch on 64 training images, few '
                   'latency repeats (numbers mean nothing)')
    return p.parse_args(argv)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def main(argv=None):
    args = parse_args(argv)
    from mmmod.demo import export_digits
    print(f'== data: scikit-learn digits -> {args.data_root}', flush=True)
    try:
        meta, reused = export_digits(args.data_root)
    except OSError as e:
        _fail(f'cannot export the digits to --data-root {args.data_root!r}: '
              f'{e.strerror or e}')
    done = ('reusing the digits exported earlier in'
            if reused else 'exported the digits to')
    print(f"{done} {args.data_root} ({_sizes(meta)} images, "
          f"{meta['size']}x{meta['size']}, split seed {meta['seed']})",
          flush=True)
    # Fail before any training if the results cannot be written.
    try:
        _check_writable(args.work_dir)
    except OSError as e:
        _fail(f'cannot write the work dir --work-dir {args.work_dir!r}: '
              f'{e.strerror or e}')

    results, models = {}, {}
    for i, (name, config) in enumerate(MODELS.items(), 1):
        print(f'\n== [{i}/{len(MODELS)}] {name}: train and test '
              f'{osp.relpath(osp.join(CONFIG_DIR, config))}', flush=True)
        models[name], top1, cfg = train_and_test(config, args)
        results[name] = dict(top1=top1, config=config)
    epochs = cfg.train_cfg.max_epochs

    from mmmod.utils import count_macs, count_params, measure_latency
    print(f'\n== latency at batch 1 on the CPU ({_cpu()}), models run in '
          'turn, medians', flush=True)
    warmup, repeats = (2, 5) if args.quick else (10, 100)
    latency = measure_latency(
        models, INPUT_SHAPE, batch_size=1, warmup=warmup, repeats=repeats)
    for name, model in models.items():
        results[name].update(
            params=count_params(model),
            macs=count_macs(model, INPUT_SHAPE),
            latency=latency[name])

    write_report(results, args, meta, epochs, repeats)


def train_and_test(config, args):
    """Train ``config`` with tools/train.py, test its best-on-val checkpoint
    with tools/test.py. Returns that model, its test top-1 and the config."""
    path = osp.join(CONFIG_DIR, config)
    work_dir = osp.join(args.work_dir, osp.splitext(config)[0])
    options = [f'{loader}.dataset.data_root={args.data_root}'
               for loader in LOADERS]
    if args.quick:
        options += ['train_cfg.max_epochs=1',
                    'train_dataloader.dataset.indices=64']
    if args.epochs:
        options.append(f'train_cfg.max_epochs={args.epochs}')
    common = ['--work-dir', work_dir, '--cfg-options', *options]

    runner = _tool('train').main([path, *common])
    best = runner.message_hub.get_info('best_ckpt')
    metrics = _tool('test').main([path, best, *common])
    model, cfg = build_model(path, best, options)
    return model, metrics['accuracy/top1'], cfg


def write_report(results, args, meta, epochs, repeats):
    from mmmod.demo.report import (comparison_rows, markdown_table,
                                   plot_accuracy_latency)

    baseline = next(iter(MODELS))
    table = markdown_table(comparison_rows(results, baseline))
    base, mod = results.values()
    setup = (
        f"{epochs} epoch(s) on scikit-learn's digits at {meta['size']}x"
        f"{meta['size']} ({_sizes(meta)}), the same schedule for both; "
        'top-1 of the best-on-val checkpoint on the test split. Latency: '
        f'median [quartiles] of {repeats} interleaved runs at batch 1 on '
        f'{_cpu()}. A MoD block convolves only the k = C / 64 channels that '
        'its selector ranks highest and passes the others through: the MAC '
        f"ratio, {base['macs'] / mod['macs']:.2f}x, is the ideal speed-up.")
    md = osp.join(args.work_dir, 'results.md')
    png = osp.join(args.work_dir, 'results.png')
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
    """The processor's name and core count, e.g. 'AMD EPYC, 2 cores'."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            name = next(line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    import torch
    return (f'{name}, {os.cpu_count()} cores, '
            f'{torch.get_num_threads()} torch threads')


@functools.lru_cache()
def _tool(name):
    """tools/NAME.py as a module (``test`` would clash with the stdlib)."""
    spec = importlib.util.spec_from_file_location(
        f'mmmod_tools_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fail(message):
    print(f'tools/demo.py: error: {message}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
    main()
