"""MACs and parameters of configs' models, as in the supplement's Table 7.

    python tools/analysis/complexity.py CONFIG [CONFIG ...] [--shape 224] \
        [--out table.md]

One row per config: its name, GMACs of one forward pass of one image of
``--shape`` (one fused multiply-add is one MAC) and parameters in millions,
both counted with ``mmmod.utils`` on the config's whole model.
"""
import argparse
import os.path as osp

import torch.nn as nn

from mmmod.apis import load_config

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


def complexity(config, shape=(224, 224), cfg_options=()):
    """``(name, GMACs, params in M)`` of the model of ``config`` on one
    image of ``shape`` (H, W)."""
    from mmengine.registry import MODELS, init_default_scope

    from mmmod.utils import count_macs, count_params
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    if cfg.default_scope == 'mmdet':
        model = _WithImageMeta(model, shape)
    name = osp.splitext(osp.basename(config))[0]
    return (name, count_macs(model, (3, *shape)) / 1e9,
            count_params(model) / 1e6)


class _WithImageMeta(nn.Module):
    """A detector's tensor-mode forward, given the image meta that its heads
    read (a classifier or segmentor needs none)."""

    def __init__(self, detector, shape):
        super().__init__()
        self.detector = detector
        self.meta = dict(
            img_shape=shape,
            ori_shape=shape,
            pad_shape=shape,
            batch_input_shape=shape,
            scale_factor=(1.0, 1.0))

    def forward(self, x):
        from mmengine.structures import BaseDataElement
        samples = [BaseDataElement(metainfo=self.meta)]
        return self.detector(x, samples, mode='tensor')


def format_table(rows, markdown=False):
    cells = [HEADER] + [(n, f'{g:.2f}', f'{p:.2f}') for n, g, p in rows]
    if markdown:
        lines = ['| ' + ' | '.join(r) + ' |' for r in cells]
        lines.insert(1, '|' + '|'.join(['---', '---:', '---:']) + '|')
        return '\n'.join(lines) + '\n'
    widths = [max(len(r[i]) for r in cells) for i in range(3)]
    return '\n'.join(
        f'{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}'
        for r in cells) + '\n'


def main(argv=None):
    args = parse_args(argv)
    rows = [complexity(c, args.shape, args.cfg_options)
            for c in args.configs]
    print('Input shape: 3x{}x{}'.format(*args.shape))
    print(format_table(rows), end='')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(format_table(rows, markdown=True))
    return rows


if __name__ == '__main__':
    main()
