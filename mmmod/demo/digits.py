"""scikit-learn's bundled 8x8 digits as an ImageNet-style image folder.

The stock mmpretrain ``CustomDataset`` reads the result, no download needed::

    data/digits/{train,val,test}/<class>/<index>.png   # 32x32 RGB
    data/digits/meta.json                               # seed and split sizes
"""
import json
import os
import os.path as osp
import shutil

import numpy as np

SPLITS = ('train', 'val', 'test')
META = 'meta.json'


def split_sizes(n=1797, val=0.1, test=0.2):
    """``{split: count}`` for ``n`` images: 70/10/20 % train/val/test."""
    n_test, n_val = round(n * test), round(n * val)
    return dict(train=n - n_val - n_test, val=n_val, test=n_test)


def export_digits(root, size=32, seed=0):
    """Write the digits under ``root`` once; later calls reuse them.

    The split is stratified by class and fixed by ``seed``. Returns
    ``(meta, reused)``; ``meta`` holds the seed, size and split sizes.
    """
    meta = _read_meta(root)
    if (meta is not None and (meta['seed'], meta['size']) == (seed, size)
            and _count_images(root) == meta['splits']):
        return meta, True
    if osp.exists(root) and meta is None and os.listdir(root):
        raise FileExistsError(
            f'data root {root!r} exists but holds no {META} from a '
            'finished export: remove it or choose another --data-root')

    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # bundled with scikit-learn: 1797 8x8 images
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    labels = digits.target
    idx = np.arange(len(labels))
    sizes = split_sizes(len(labels))
    rest, test = train_test_split(
        idx, test_size=sizes['test'], stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=sizes['val'], stratify=labels[rest],
        random_state=seed)

    # Write next to root and rename at the end: an interrupted export
    # leaves no half-filled root behind.
    tmp = osp.normpath(root) + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    if osp.exists(root):
        shutil.rmtree(root)  # ours, with another seed or size, or damaged
    for split, ids in zip(SPLITS, (train, val, test)):
        for i in ids:
            folder = osp.join(tmp, split, str(labels[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(images[i]).resize(
                (size, size), Image.BILINEAR).convert('RGB').save(
                    osp.join(folder, f'{i:04d}.png'))
    meta = dict(
        source='sklearn.datasets.load_digits',
        seed=seed,
        size=size,
        classes=[str(c) for c in digits.target_names],
        splits=sizes)
    with open(osp.join(tmp, META), 'w') as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, root)
    return meta, False


def _count_images(root):
    return {
        split: sum(
            len(files) for _, _, files in os.walk(osp.join(root, split)))
        for split in SPLITS
    }


def _read_meta(root):
    path = osp.join(root, META)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
