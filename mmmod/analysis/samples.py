"""The images an analysis runs a model on: a folder through the config's
test pipeline, or the config's val/test set
(``tools/analysis/selection.py``)."""
import os
import os.path as osp

from mmmod.apis import check_data_roots

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.tif', '.tiff',
              '.webp')
LOADERS = ('LoadImageFromFile', 'LoadAnnotations')


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
        raise FileNotFoundError(f'no image folder {folder}')
    files = sorted(
        osp.join(root, f) for root, _, names in os.walk(folder)
        for f in names if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTS)}'
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

    from .selection import SelectionRecorder

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
