"""Mean and standard deviation over seeds of the test accuracy, as in the
supplement's Table 11 (one row per model and dataset).

    python tools/analysis/gather_seeds.py WORK_ROOT [WORK_ROOT ...] \
        [--out table.md | table.json] [--metric accuracy/top1] \
        [--input-size 32]

A WORK_ROOT holds one model's runs, as tools/cifar_seeds.sh writes them:
``WORK_ROOT/seed<s>/`` (training work dir, with the config the runner dumped)
and ``WORK_ROOT/seed<s>/test/<timestamp>/<timestamp>.json`` (the metrics of
tools/test.py on the best-on-val checkpoint; the newest one counts). MMAC and
parameters are counted with ``mmmod.utils`` on that config's model at
``--input-size`` (32x32 for CIFAR).
"""
import json

from mmmod.analysis import gather_seeds
from mmmod.apis import add_input_size, parse_tool_args, tool_parser
from mmmod.utils import format_table

HEADER = ('Model', 'Set', 'Test Acc. (%)', 'FLOPS (MMAC)', 'Params (M)',
          'Seeds')


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument(
        'roots',
        nargs='+',
        metavar='WORK_ROOT',
        help='one model\'s runs: WORK_ROOT/seed*/')
    p.add_argument(
        '--metric', default='accuracy/top1', help='test metric to gather')
    add_input_size(p, default=32)
    p.add_argument(
        '--out',
        help='also write the table: .json (with the '
        'per-seed values) or Markdown')
    return parse_tool_args(p, argv)


def _accuracy(row):
    if row['std'] is None:
        return f"{row['mean']:.2f}"
    return f"{row['mean']:.2f} ± {row['std']:.2f}"


def main(argv=None):
    args = parse_args(argv)
    rows = [gather_seeds(r, args.metric, args.input_size)
            for r in args.roots]
    cells = [(r['model'], r['set'], _accuracy(r), f"{r['mmac']:.0f}",
              f"{r['params']:.2f}", str(len(r['values']))) for r in rows]
    print(f'{args.metric}: mean ± sample std over seeds; MMAC at '
          '{}x{}'.format(*args.input_size))
    print(format_table(HEADER, cells, left=2), end='')
    if args.out:
        with open(args.out, 'w') as f:
            if args.out.endswith('.json'):
                json.dump(rows, f, indent=2)
            else:
                f.write(format_table(HEADER, cells, markdown=True, left=2))
    return rows


if __name__ == '__main__':
    main()
