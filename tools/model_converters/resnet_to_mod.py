"""Convert a stock ResNet checkpoint into a warm start for ResNet-MoD.

    python tools/model_converters/resnet_to_mod.py SRC DST --depth 50 \
        [--torchvision] [--type ResNetMoD] [--no-head] [--report R.json]

Standard blocks, stem and head keep the stock weights (same names; a V1c/V1d
deep stem in mmseg's / mmdet's layout is renamed into mmpretrain's); the
blocks that MoD blocks replace are dropped. DST is an mmpretrain checkpoint
(``backbone.*``, ``head.fc.*``) for ``load_from = DST``: the MoD blocks, not
in it, keep the config's own init. Prints which keys were mapped, skipped
and are new.
"""
import json
import os.path as osp

from mmmod.apis import (add_trust_flag, check_checkpoint_is_data,
                        checkpoints_as_data, parse_tool_args, tool_parser)


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('src', help='stock ResNet checkpoint (mmpretrain or, '
                   'with --torchvision, torchvision)')
    p.add_argument('dst', help='where to write the converted checkpoint')
    p.add_argument('--depth', type=int, required=True,
                   help='depth of the ResNet-MoD to warm-start; the stock '
                   'checkpoint must have the same depth')
    p.add_argument('--torchvision', action='store_true',
                   help='SRC has bare keys (conv1.* or stem.*, layer1.0.*, '
                   'fc.*), as torchvision and backbone-only OpenMMLab files '
                   '(open-mmlab://resnet50_v1c) do')
    p.add_argument('--type', default='ResNetMoD',
                   choices=['ResNetMoD', 'ResNetV1cMoD', 'ResNetV1dMoD',
                            'ResNetMoD_CIFAR'],
                   help='the target backbone (its stem must match SRC)')
    p.add_argument('--no-head', action='store_true',
                   help='leave the classifier out (e.g. other classes)')
    p.add_argument('--report', help='also write the key report as JSON')
    p.add_argument('--verbose', action='store_true', help='list every key')
    add_trust_flag(p)
    return parse_tool_args(p, argv)


def convert(args):
    import torch
    from mmengine.runner import CheckpointLoader
    from mmpretrain.registry import MODELS  # DST is an mmpretrain checkpoint

    import mmmod  # noqa: F401  registers the MoD backbones
    from mmmod.models.warm_start import (is_openmmlab, map_resnet_to_mod,
                                         split_stock_checkpoint)

    if not osp.isfile(args.src):
        raise FileNotFoundError(f'src: no such checkpoint: {args.src}')
    check_checkpoint_is_data(args.src)
    with checkpoints_as_data():
        ckpt = CheckpointLoader.load_checkpoint(args.src, 'cpu')
    backbone, head, other = split_stock_checkpoint(ckpt)
    bare = not is_openmmlab(ckpt)
    if bare and not args.torchvision:
        raise ValueError(f'{args.src} has bare (torchvision-style) keys, no '
                         'backbone.*: add --torchvision')
    if args.torchvision and not bare:
        raise ValueError(f'{args.src} has OpenMMLab keys (backbone.*), not '
                         "torchvision's: drop --torchvision")
    model = MODELS.build(dict(type=args.type, depth=args.depth))
    state, report = map_resnet_to_mod(model, backbone, args.src)

    # The report names keys as they are in DST (mapped, new) and in SRC
    # (skipped); torchvision's head is fc.*, mmpretrain's head.fc.*.
    src_backbone, src_head = ('', '') if bare else ('backbone.', 'head.')
    report.mapped = [f'backbone.{k}' for k in report.mapped]
    report.new = [f'backbone.{k}' for k in report.new]
    report.skipped = [src_backbone + k for k in report.skipped] + other
    out = {f'backbone.{k}': v for k, v in state.items()}
    if args.no_head:
        report.skipped += [src_head + k for k in head]
    else:
        out.update({f'head.{k}': v for k, v in head.items()})
        report.mapped += [f'head.{k}' for k in head]
    meta = dict(converted_from=osp.abspath(args.src),
                warm_start=f'{args.type}(depth={args.depth})')
    torch.save(dict(meta=meta, state_dict=out), args.dst)
    return report


def main(argv=None):
    args = parse_args(argv)
    report = convert(args)
    print(report.summary())
    for name, keys in report.to_dict().items():
        shown = keys if args.verbose else keys[:4] + (
            ['...'] if len(keys) > 4 else [])
        print(f'  {name} ({len(keys)}): {", ".join(shown)}')
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(report.to_dict(), f, indent=1)
    print(f'wrote {args.dst}')
    return report


if __name__ == '__main__':
    main()
