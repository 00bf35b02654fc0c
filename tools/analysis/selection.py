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
import argparse
import json
import os
import os.path as osp
import warnings

from mmmod.apis import (check_data_roots, load_config,
                     trust_checkpoints)

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff',
              '.webp')
LOADERS = ('LoadImageFromFile', 'LoadAnnotations')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
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
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V')
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error(f'--num-images must be >= 1, got {args.num_images}')
    return args


def build_model(cfg, checkpoint, device):
    from mmengine.registry import MODELS
    from mmengine.runner import load_checkpoint

    model = MODELS.build(cfg.model)
    if checkpoint:
        if '://' not in checkpoint and not osp.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
        trust_checkpoints()
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    else:
        warnings.warn('no checkpoint given: the model is randomly '
                      'initialised, so its selections say nothing about a '
                      'trained one')
        from mmengine.logging import MMLogger
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel('WARNING')  # init_weights logs every parameter
        try:
            model.init_weights()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f'{e} (the config\'s init_cfg; for a random init drop it, '
                'e.g. --cfg-options model.backbone.init_cfg=None)') from e
        finally:
            logger.setLevel(level)
    return model.to(device).eval()


def load_samples(cfg, images=None, split=None, num_images=256):
    """``(samples, names, bgr)``: the test pipeline's packed samples of the
    first ``num_images`` images, their paths, and whether the pipeline reads
    images as BGR."""
    from mmengine.dataset import Compose
    from mmengine.registry import DATASETS, TRANSFORMS

    dataset_cfg = cfg[f'{split or "test"}_dataloader'].dataset
    while 'pipeline' not in dataset_cfg and 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg.dataset  # through dataset wrappers
    pipeline = dataset_cfg.get('pipeline', cfg.get('test_pipeline', []))
    # LoadImageFromFile reads BGR; datasets held in memory (CIFAR) give RGB.
    bgr = any(t['type'] == 'LoadImageFromFile' for t in pipeline)
    if images:
        files = _image_files(images)[:num_images]
        pipeline = Compose([
            TRANSFORMS.build(t) for t in pipeline if t['type'] not in LOADERS
        ])
        return [pipeline(_read(f, bgr)) for f in files], files, bgr
    check_data_roots(cfg, [f'{split}_dataloader'])
    dataset = DATASETS.build(dataset_cfg)
    n = min(num_images, len(dataset))
    return [dataset[i] for i in range(n)], [
        dataset.get_data_info(i).get('img_path', f'{split}[{i}]')
        for i in range(n)
    ], bgr


def _image_files(folder):
    if not osp.isdir(folder):
        raise FileNotFoundError(f'--images: no such folder: {folder}')
    files = sorted(
        osp.join(root, f) for root, _, names in os.walk(folder)
        for f in names if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise FileNotFoundError(f'--images: no images ({", ".join(IMAGE_EXTS)}'
                                f') under {folder}')
    return files


def _read(path, bgr):
    import mmcv
    img = mmcv.imread(path, channel_order='bgr' if bgr else 'rgb')
    if img is None:
        raise ValueError(f'cannot read image {path}')
    return dict(img=img, img_path=path, img_shape=img.shape[:2],
                ori_shape=img.shape[:2])


def display_image(inputs, preprocessor, bgr):
    """An (H, W, 3) RGB array in [0, 1] of one preprocessed input, as the
    model sees it, with the normalisation undone."""
    x = inputs.float().cpu()
    if getattr(preprocessor, 'mean', None) is not None and getattr(
            preprocessor, '_enable_normalize', True):
        x = x * preprocessor.std.cpu() + preprocessor.mean.cpu()
    # The model sees RGB unless the images were read BGR and kept so.
    swapped = getattr(preprocessor, 'to_rgb', None)
    if swapped is None:
        swapped = getattr(preprocessor, '_channel_conversion', False)
    if bgr and not swapped:
        x = x.flip(0)
    return (x.permute(1, 2, 0) / 255).clamp(0, 1).numpy()


def record(model, samples, batch_size=16, show=0):
    """Run ``model`` on ``samples``; returns the recorder, the display image
    of sample ``show`` and the preprocessor's output batch of it."""
    import torch
    from mmengine.dataset import pseudo_collate

    from mmmod.analysis import SelectionRecorder

    image = None
    with SelectionRecorder(model, keep_input_of=show) as rec, \
            torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = model.data_preprocessor(
                pseudo_collate(samples[start:start + batch_size]), False)
            model.extract_feat(batch['inputs'])
            if start <= show < start + batch_size:
                image = batch['inputs'][show - start]
    return rec, image


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.registry import init_default_scope

    from mmmod.analysis import (format_summary, pick_blocks, plot_features,
                                plot_frequency, plot_scores, summarise)

    cfg = load_config(args.config, args.cfg_options)
    init_default_scope(cfg.default_scope)
    model = build_model(cfg, args.checkpoint, args.device)
    samples, names, bgr = load_samples(cfg, args.images, args.split,
                                       args.num_images)
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
