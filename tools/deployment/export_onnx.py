"""Export a config's model to ONNX, check it with ONNX Runtime and time it.

    python tools/deployment/export_onnx.py \
        configs/resnet_mod/resnet50-mod_8xb32_in1k.py [--checkpoint CKPT] \
        --baseline configs/resnet_mod/baselines/resnet50_8xb32_in1k.py \
        --threads 2 --out-dir work_dirs/onnx

Exports a classifier (image tensor in, class scores out), or with
``--backbone`` the backbone alone (feature maps out; the way to export the
backbone of an mmseg or mmdet config). The graph is static: the MoD blocks'
top-k and gather are ordinary ONNX ops (TopK, Gather), their shapes
fixed by the config. ONNX Runtime's output on a new random input is checked
against PyTorch's (``--atol``, default 1e-4; the tool fails above it), then
the exported models are timed side by side in ONNX Runtime, with the
``--baseline`` config's model (exported the same way) for the speed-up.
"""
import os
import os.path as osp

import torch

from mmmod.analysis.benchmark import SessionStep, model_names
from mmmod.apis import (add_cfg_options, add_input_size, add_threads,
                        add_trust_flag, parse_tool_args, tool_parser)
from mmmod.deployment import (build_tensor_model, export, max_abs_diff,
                              session)
from mmmod.utils.timing import spread_warning, time_interleaved


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('config', help='config file path')
    p.add_argument('--checkpoint', help='weights to load (default: the '
                   "config's initialisation)")
    p.add_argument('--baseline', help='a second config, exported and timed '
                   'alongside for the speed-up (e.g. the stock ResNet)')
    p.add_argument('--backbone', action='store_true',
                   help='export the backbone only')
    add_input_size(p)
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--opset', type=int, default=18,
                   help='ONNX opset version (default 18)')
    p.add_argument('--atol', type=float, default=1e-4,
                   help='largest accepted |ONNX Runtime - PyTorch|')
    add_threads(p)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--repeats', type=int, default=50,
                   help='timed ONNX Runtime rounds; 0 skips timing')
    p.add_argument('--out-dir', default='work_dirs/onnx',
                   help='where the .onnx files go (default work_dirs/onnx)')
    add_cfg_options(p)
    add_trust_flag(p)
    args = parse_tool_args(p, argv)
    if args.batch_size < 1:
        p.error('--batch-size must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(0)
    shape = (args.batch_size, 3, *args.input_size)
    configs = [args.config] + ([args.baseline] if args.baseline else [])
    models = {
        name + ('_backbone' if args.backbone else ''): build_tensor_model(
            config, checkpoint, args.cfg_options, args.backbone)
        for name, config, checkpoint in zip(
            model_names(configs), configs, [args.checkpoint, None])
    }
    results, sessions = {}, {}
    for name, model in models.items():
        path = osp.join(args.out_dir, name + '.onnx')
        print(f'exporting {name} -> {path}', flush=True)
        export(model, torch.randn(shape), path, args.opset)
        # timed side by side: no idle session may spin on the cores
        sessions[name] = session(path, args.threads, spinning=False)
        # a new input: the graph must not depend on the example's selection
        diff = max_abs_diff(model, sessions[name], torch.randn(shape))
        results[name] = dict(onnx=path, max_abs_diff=diff)
        print(f'{name}: max |ONNX Runtime - PyTorch| = {diff:.2e}')
        if not diff <= args.atol:
            raise RuntimeError(f'{name}: ONNX Runtime differs from PyTorch by '
                               f'{diff:.2e} > --atol {args.atol:g}')
    if args.repeats:
        x = torch.randn(shape)
        steps = {name: SessionStep(s, x) for name, s in sessions.items()}
        timing = time_interleaved(steps, args.warmup, args.repeats)
        names = list(models)  # the config's model, then the baseline
        print(f'ONNX Runtime latency (CPU, {args.threads or "default"} '
              f'threads, batch {args.batch_size}, 3x{shape[2]}x{shape[3]}, '
              f'{args.repeats} rounds; median, quartiles):')
        for name, t in timing.items():
            results[name]['ort_ms'] = t
            line = f'  {name}: {t["median"]:.2f} ms ({t["q1"]:.2f}-' \
                f'{t["q3"]:.2f})'
            if args.baseline and name == names[0]:
                speedup = timing[names[1]]['median'] / t['median']
                results[name]['ort_speedup'] = speedup
                line += f', {speedup:.2f}x the baseline'
            print(line)
        warning = spread_warning(timing)
        if warning:
            print(warning)
    return results


if __name__ == '__main__':
    main()
