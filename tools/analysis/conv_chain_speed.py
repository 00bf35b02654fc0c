"""Does the fused Conv-Block kernel pay? Each MoD block's Conv-Block, timed.

    python tools/analysis/conv_chain_speed.py \
        configs/resnet_mod/resnet50-mod_8xb32_in1k.py --threads 2 \
        --batch-sizes 1 8 --out work_dirs/benchmark/conv_chain_r50.md

For every MoD block of the config's model, on the block's own input shape
(k channels, its map size): the Conv-Block with its BN folded as oneDNN runs
it (eager), as inductor compiles it (freezing), and as one
``mmmod::conv_chain`` call (the inference form's ``ConvChain``), timed side
by side. The ``chosen`` column says whether the inference form uses the
fused kernel for that block (``ConvChain.MAX_MACS_PER_PIXEL``).
"""
import copy
import os
import os.path as osp

import torch
import torch._inductor.config as inductor_config

from mmmod.analysis.benchmark import MODES, check_batch_sizes
from mmmod.apis import (add_input_size, add_threads, parse_tool_args,
                        tool_parser)
from mmmod.utils import format_table, time_interleaved
from mmmod.utils.timing import describe_machine


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('config', help='a MoD config')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    add_input_size(p)
    add_threads(p)
    p.add_argument('--warmup', type=int, default=20)
    p.add_argument('--repeats', type=int, default=200)
    p.add_argument('--out', help='also write the table as Markdown')
    args = parse_tool_args(p, argv)
    try:
        check_batch_sizes(args.batch_sizes)
    except ValueError as e:
        p.error(str(e))
    return args


def block_inputs(model, input_size):
    """``[(name, MoDBlock, its input shape)]`` from one forward."""
    from mmmod.layers import MoDBlock
    found = []
    hooks = [
        m.register_forward_pre_hook(
            lambda m, inp, name=name: found.append((name, m, inp[0].shape)))
        for name, m in model.named_modules() if isinstance(m, MoDBlock)
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, *input_size))
    for h in hooks:
        h.remove()
    return found


def rows(model, args):
    from mmmod.layers import ConvChain, fold_conv_bn
    out = []
    for name, block, shape in block_inputs(model, args.input_size):
        folded = fold_conv_bn(copy.deepcopy(block.block))
        chain = ConvChain.of(folded, max_macs_per_pixel=1 << 62)
        if chain is None:
            continue  # not a chain: the inference form keeps its modules
        chosen = ConvChain.of(folded) is not None
        # each block's graphs alone in dynamo's cache (the blocks share
        # Sequential.forward): no other block's guards checked before its
        # own, no recompile limit reached
        torch._dynamo.reset()
        # compiled as the benchmark's compile-freeze mode compiles
        frozen = MODES['compile-freeze']
        compiled = frozen.make(copy.deepcopy(folded))
        for batch in args.batch_sizes:
            x = torch.randn(batch, block.k, *shape[2:])
            with torch.no_grad(), inductor_config.patch(frozen.inductor):
                stats = time_interleaved(
                    {'oneDNN': lambda: folded(x), 'inductor':
                     lambda: compiled(x), 'conv_chain': lambda: chain(x)},
                    args.warmup, args.repeats)
            us = {k: v['median'] * 1e3 for k, v in stats.items()}
            out.append([
                name, str(block.k), f'{shape[2]}x{shape[3]}',
                str(chain.macs_per_pixel), str(batch),
                *(f'{us[k]:.1f}' for k in ('oneDNN', 'inductor',
                                           'conv_chain')),
                f"{min(us['oneDNN'], us['inductor']) / us['conv_chain']:.2f}x",
                'yes' if chosen else 'no'
            ])
    return out


HEADER = ('MoD block', 'k', 'map', 'MACs/pixel', 'batch', 'oneDNN us',
          'inductor us', 'conv_chain us', 'conv_chain speed-up', 'chosen')


def main(argv=None):
    from mmmod.deployment import build_tensor_model
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_tensor_model(args.config, backbone=True)
    table = rows(model, args)
    head = (f'{describe_machine()}; {args.config}; median of {args.repeats} '
            'interleaved calls; speed-up over the faster of oneDNN and '
            'inductor\n')
    print(head)
    print(format_table(HEADER, table))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(head + '\n' + format_table(HEADER, table, markdown=True))
    return table


if __name__ == '__main__':
    main()
