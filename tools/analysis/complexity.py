"""MACs and parameters of configs' models, as in the supplement's Table 7.

    python tools/analysis/complexity.py CONFIG [CONFIG ...] \
        [--input-size 224] [--out table.md]

One row per config: its name, GMACs of one forward pass of one image of
``--input-size`` (one fused multiply-add is one MAC) and parameters in
millions, both counted with ``mmmod.utils`` on the config's whole model.
"""
from mmmod.analysis import complexity
from mmmod.apis import (add_cfg_options, add_input_size, parse_tool_args,
                        tool_parser)
from mmmod.utils import format_table

HEADER = ('Model', 'GMACs', 'Params (M)')


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('configs', nargs='+', help='config file paths')
    add_input_size(p)
    p.add_argument('--out', help='also write the table here, as Markdown')
    add_cfg_options(p)
    return parse_tool_args(p, argv)


def main(argv=None):
    args = parse_args(argv)
    rows = [complexity(c, args.input_size, args.cfg_options)
            for c in args.configs]
    names = [r[0] for r in rows]
    if len(set(names)) < len(names):
        raise ValueError(f'two configs have the same model name: {names}')
    print('Input shape: 3x{}x{}'.format(*args.input_size))
    cells = [(n, f'{g:.2f}', f'{p:.2f}') for n, g, p in rows]
    print(format_table(HEADER, cells), end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(format_table(HEADER, cells, markdown=True))
    return rows


if __name__ == '__main__':
    main()
