"""A fixed, seeded train/val split of a training set (supplement S4: train on
90 % of the CIFAR training set, validate on the held-out 10 %)."""
import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.registry import DATASETS

SUBSETS = ('train', 'val')


def train_val_indices(num_samples, val_ratio=0.1, seed=0):
    """Split ``range(num_samples)`` into sorted train and val indices.

    The permutation comes from its own generator, so the split depends on
    ``seed`` only, never on the run's global seed (``randomness.seed``):
    every model and every training seed sees the same split.
    """
    if not 0 < val_ratio < 1:
        raise ValueError(f'val_ratio must be in (0, 1), got {val_ratio!r}')
    num_val = round(num_samples * val_ratio)
    if not 0 < num_val < num_samples:
        raise ValueError(f'val_ratio={val_ratio} leaves an empty subset of '
                         f'{num_samples} samples')
    perm = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(perm[num_val:]).tolist(), np.sort(perm[:num_val]).tolist()


# Registered in mmengine's root registry, so that any
# OpenMMLab config finds it. A function, not a wrapper class: it returns the
# stock dataset itself, cut down with BaseDataset's own subset mechanism, so
# metainfo, pipeline and repr stay the stock ones.
@DATASETS.register_module(name='TrainValSplit')
def train_val_split(dataset, subset, val_ratio=0.1, seed=0):
    """One side of a fixed, seeded train/val split of ``dataset``.

    Args:
        dataset (dict | BaseDataset): the full training set, e.g.
            ``dict(type='CIFAR10', split='train', ...)``.
        subset (str): ``'train'`` (``1 - val_ratio`` of the samples) or
            ``'val'`` (the held-out ``val_ratio``).
        val_ratio (float): held-out fraction. Default 0.1.
        seed (int): seed of the split (not of training). Default 0.

    Returns:
        BaseDataset: ``dataset``, reduced to the chosen subset.
    """
    if subset not in SUBSETS:
        raise ValueError(f'subset must be one of {SUBSETS}, got {subset!r}')
    if isinstance(dataset, dict):
        dataset = DATASETS.build(dataset)
    if not isinstance(dataset, BaseDataset):
        raise TypeError('dataset must be a config dict or a BaseDataset, got '
                        f'{type(dataset).__name__}')
    train, val = train_val_indices(len(dataset), val_ratio, seed)
    dataset.get_subset_(train if subset == 'train' else val)
    return dataset
