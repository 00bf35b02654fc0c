"""Speed of configs' models side by side, in every mode users run them.

    python tools/analysis/benchmark.py \
        configs/resnet_mod/baselines/resnet50_8xb32_in1k.py \
        configs/resnet_mod/resnet75-mod_8xb32_in1k.py \
        configs/resnet_mod/resnet86-mod_8xb32_in1k.py \
        --threads 2 --out work_dirs/benchmark/r50.md

The first config is the baseline; every other is paired with it. Each MoD
model is timed in its inference form (``switch_to_deploy``) and joined by its
training form, its floor (every MoD block only reads the map and adds onto k
channels), its floor plus selection (the floor plus each block's selector,
top-k and gather: all but the Conv-Block) and its skip bound (every MoD
block an identity). For each mode (``--modes``; default every CPU mode, and
the CUDA ones when there is a GPU) and batch size, all models are timed
interleaved in this process; a table per mode and batch size gives medians
and quartiles, speed-ups over the baseline, each MoD model's share of its
floor, floor plus selection and skip bound (each ratio the median over the
rounds of the ratio within a round, with its 95 % interval) and the paper's
speed-ups; ``--profile N`` adds each MoD model's time per op beside its
floor's; a last table, each model's fastest mode. ``--report RUN.json``
prints a saved run's tables again. The measuring lives in
:mod:`mmmod.analysis.benchmark`.
"""
import json
import os
import os.path as osp

import torch

from mmmod.analysis import benchmark as bench
from mmmod.apis import (add_cfg_options, add_input_size, add_threads,
                        parse_tool_args, tool_parser)


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('configs', nargs='*', help='config file paths; the first '
                   'is the baseline')
    p.add_argument('--report', metavar='RUN.json',
                   help="a run's tables again, from the .json it saved "
                   "beside its --out, in this version's arithmetic (no "
                   'configs: nothing is timed, and of the other options '
                   'only --out counts)')
    p.add_argument('--modes', nargs='+', default=bench.default_modes(),
                   metavar='MODE', help=f'among {", ".join(bench.MODES)} '
                   '(default: the CPU modes this torch runs but '
                   'compile-freeze-cpp, and the CUDA ones with a GPU)')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8],
                   metavar='N', help='inference batch sizes (default 1 8)')
    p.add_argument('--train-batch-sizes', type=int, nargs='*', metavar='N',
                   help='batch sizes, among --batch-sizes, of the training '
                   'steps of the modes that train (eager and compile, on CPU '
                   'and GPU); none: no training (default: the largest '
                   '--batch-sizes)')
    add_input_size(p)
    add_threads(p)
    p.add_argument('--channels-last', action='store_true',
                   help='models and inputs in channels-last memory format')
    p.add_argument('--fuse-conv-bn', action='store_true',
                   help='fold every BN into the conv before it, in every '
                   'model, the baseline too (mmmod.layers.fold_conv_bn)')
    p.add_argument('--backbone', action='store_true',
                   help="time the configs' backbones alone (needed for "
                   'mmseg and mmdet configs)')
    p.add_argument('--warmup', type=int, default=10,
                   help='untimed inference rounds first, >= 1: the first '
                   'compiles (default 10)')
    p.add_argument('--repeats', type=int, default=50,
                   help='timed inference rounds (default 50)')
    p.add_argument('--train-warmup', type=int, default=2,
                   help='untimed training steps first, >= 1 (default 2)')
    p.add_argument('--train-repeats', type=int, default=10,
                   help='timed training steps; 0: no training (default 10)')
    p.add_argument('--profile', type=int, default=0, metavar='N',
                   help='profile N forwards of each MoD model and its floor '
                   'per mode and batch size (torch.profiler; ONNX Runtime\'s '
                   'profiler in the onnxruntime mode) and print their time '
                   'per op side by side (default 0: no profile)')
    p.add_argument('--opset', type=int, default=18,
                   help='ONNX opset of the onnxruntime mode (default 18)')
    p.add_argument('--out', help='write the tables here as Markdown, and the '
                   'raw timings next to it as .json')
    add_cfg_options(p, help='overrides for every config')
    args = parse_tool_args(p, argv)
    if bool(args.report) == bool(args.configs):
        p.error('give either configs to time or --report RUN.json')
    if args.out and osp.splitext(args.out)[1] == '.json':
        p.error('--out: the path of the Markdown tables (the raw timings '
                f'go beside it, as .json), got {args.out}')
    if args.report:
        try:
            args.result = bench.load_result(args.report)
        except (OSError, ValueError) as e:
            p.error(f'--report: {e}')
        return args
    try:
        args.plan = bench.Plan(
            modes=args.modes,
            batch_sizes=args.batch_sizes,
            input_shape=(3, *args.input_size),
            warmup=args.warmup,
            repeats=args.repeats,
            train_batch_sizes=args.train_batch_sizes,
            train_warmup=args.train_warmup,
            train_repeats=args.train_repeats,
            channels_last=args.channels_last,
            opset=args.opset,
            profile=args.profile)
        bench.model_names(args.configs)
    except bench.PlanError as e:  # the field is the option of that name
        p.error(f'--{e.field.replace("_", "-")}: {e.message}')
    except ValueError as e:
        p.error(str(e))
    return args


def build_models(args):
    """``{name: model}`` of the configs, tensor in, tensors out."""
    from mmmod.deployment import build_tensor_model
    from mmmod.layers import fold_conv_bn

    models = {}
    for name, config in zip(bench.model_names(args.configs), args.configs):
        model = build_tensor_model(
            config, cfg_options=args.cfg_options, backbone=args.backbone)
        if args.fuse_conv_bn:
            fold_conv_bn(model, strict=False)
            left = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                       for m in model.modules())
            if left:  # e.g. with_cp blocks, which do not trace
                print(f'--fuse-conv-bn: {name}: {left} BN layers stay '
                      'unfolded (their modules do not trace with torch.fx)',
                      flush=True)
        models[name] = model
    return models


def main(argv=None):
    args = parse_args(argv)
    if args.out:  # fail before measuring if the results cannot be written
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        result = args.result
    else:
        torch.manual_seed(0)
        result = bench.benchmark(
            build_models(args), args.plan, log=lambda s: print(s, flush=True))
        result['meta'].update(
            configs=args.configs,
            flags=[f for f in ('fuse_conv_bn', 'backbone')
                   if getattr(args, f)])
        print()
    if args.out:
        # the raw timings first: they are what a long run must not lose
        raw = osp.splitext(args.out)[0] + '.json'
        # (--report of a run to its own .md: its .json is already there)
        if not (args.report and osp.exists(raw)
                and osp.samefile(raw, args.report)):
            with open(raw, 'w') as f:
                json.dump(result, f, indent=1)
        with open(args.out, 'w') as f:
            f.write(bench.report(result, markdown=True))
    print(bench.report(result))
    return result


if __name__ == '__main__':
    main()
