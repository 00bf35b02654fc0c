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
import sys


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
    from mmmod.demo import DemoError, run_demo
    try:
        run_demo(args.work_dir, args.data_root, args.epochs, args.quick)
    except DemoError as e:
        flag = '--' + e.parameter.replace('_', '-')
        print(f'tools/demo.py: error: {flag}: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
