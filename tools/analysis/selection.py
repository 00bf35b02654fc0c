"""See what the MoD blocks of a model select, over a set of images.

    python tools/analysis/selection.py CONFIG [CHECKPOINT] \
        (--images DIR | --split {val,test}) [--num-images 256] \
        [--out-dir work_dirs/selection] [--show 0] [--cfg-options K=V ...]

Runs the config's model (random init, with a warning, without CHECKPOINT) on
the images of DIR (through the config's test pipeline) or on the first
``--num-images`` of its val/test set, and records, per MoD block, the
channels it chose for each image. Writes to ``--out-dir``:

- ``frequency.png``: block x channel map of how often each channel is chosen;
- ``scores.png``: selector scores of chosen vs not chosen channels;
- ``features.png``: image ``--show`` beside the selected channels of a few
  blocks (their input feature maps, best first);
- ``summary.json`` (also printed): how input-dependent each block's choice
  is; ``selections.pth``: every block's indices (N, k) and scores (N, C).
"""
import json
import os
import os.path as osp
import warnings

from mmmod.apis import (add_cfg_options, add_trust_flag, build_model,
                        parse_tool_args, tool_parser)

def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', nargs='?',
                   help='checkpoint (default: random init, with a warning)')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--images', help='folder of images (searched '
                     'recursively)')
    src.add_argument('--split', choices=['val', 'test'],
                     help="the config's val or test set")
    p.add_argument('--num-images', type=int, default=256,
                   help='at most this many images (default 256)')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--out-dir', default='work_dirs/selection')
    p.add_argument('--show', type=int, default=0,
                   help='which image features.png shows (default 0)')
    p.add_argument('--device', default='cpu')
    add_cfg_options(p)
    add_trust_flag(p)
    args = parse_tool_args(p, argv)
    if args.num_images < 1:
        p.error(f'--num-images must be >= 1, got {args.num_images}')
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    from mmmod.analysis import (display_image, format_summary, load_samples,
                                pick_blocks, plot_features, plot_frequency,
                                plot_scores, record, summarise)

    if not args.checkpoint:
        warnings.warn('no checkpoint given: the model is randomly '
                      'initialised, so its selections say nothing about a '
                      'trained one')
    model, cfg = build_model(args.config, args.checkpoint, args.cfg_options,
                             init_weights=True)
    model = model.to(args.device).eval()
    try:
        samples, names, bgr = load_samples(cfg, args.images, args.split,
                                           args.num_images)
    except FileNotFoundError as e:
        where = '--images' if args.images else f'--split {args.split}'
        raise FileNotFoundError(f'{where}: {e}') from None
    if not 0 <= args.show < len(samples):
        raise ValueError(f'--show {args.show}: there are {len(samples)} '
                         'images')
    rec, image = record(model, samples, args.batch_size, args.show)
    selections = rec.selections()
    summary = {name: summarise(sel) for name, sel in selections.items()}

    os.makedirs(args.out_dir, exist_ok=True)
    out = lambda name: osp.join(args.out_dir, name)  # noqa: E731
    plot_frequency(selections, out('frequency.png'))
    plot_scores(selections, out('scores.png'))
    plot_features(
        display_image(image, model.data_preprocessor, bgr), rec.inputs,
        selections, args.show, pick_blocks(list(selections)),
        out('features.png'))
    with open(out('summary.json'), 'w') as f:
        json.dump(dict(config=args.config, checkpoint=args.checkpoint,
                       images=len(samples), blocks=summary), f, indent=1)
    torch.save(dict(images=names, blocks={
        n: dict(indices=s.indices, scores=s.scores)
        for n, s in selections.items()}), out('selections.pth'))
    print(format_summary(summary))
    print(f'figures, summary.json and selections.pth in {args.out_dir}')
    return summary


if __name__ == '__main__':
    main()
