"""MACs and parameters of configs' models, as in the supplement's Table 7.

    python tools/analysis/complexity.py CONFIG [CONFIG ...] [--shape 224] \
        [--out table.md]

One row per config: its name, GMACs of one forward pass of one image of
``--shape`` (one fused multiply-add is one MAC) and parameters in millions,
both counted with ``mmmod.utils`` on the config's whole model.
"""
import argparse

from mmmod.analysis import complexity
from mmmod.utils import format_table

HEADER = ('Model', 'GMACs', 'Params (M)')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('configs', nargs='+', help='config file paths')
    p.add_argument('--shape', type=int, nargs='+', default=[224],
                   help='input size: S (square) or H W')
    p.add_argument('--out', help='also write the table here, as Markdown')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V')
    args = p.parse_args(argv)
    if len(args.shape) not in (1, 2):
        p.error(f'--shape takes S or H W, got {args.shape}')
    args.shape = tuple(args.shape * (3 - len(args.shape)))  # (H, W)
    return args


def main(argv=None):
    args = parse_args(argv)
    rows = [complexity(c, args.shape, args.cfg_options)
            for c in args.configs]
    names = [r[0] for r in rows]
    if len(set(names)) < len(names):
        raise ValueError(f'two configs have the same model name: {names}')
    print('Input shape: 3x{}x{}'.format(*args.shape))
    cells = [(n, f'{g:.2f}', f'{p:.2f}') for n, g, p in rows]
    print(format_table(HEADER, cells), end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(format_table(HEADER, cells, markdown=True))
    return rows


if __name__ == '__main__':
    main()
