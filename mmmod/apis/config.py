"""Loading a config as the tools do, and checking that its data is there
before anything is built."""
import os.path as osp

SCOPES = ('mmpretrain', 'mmseg', 'mmdet')


def load_config(path, cfg_options=(), launcher='none', work_dir=None):
    """Load ``path``, apply ``key=value`` overrides and fill in the defaults
    that the stock tools fill in (work dir, launcher)."""
    from mmengine.config import Config

    import mmmod  # noqa: F401  registers the MoD backbones

    if not osp.isfile(path):
        raise FileNotFoundError(f'config not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(_parse_options(cfg_options))
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{path}: default_scope={scope!r}, expected one of '
                         f'{SCOPES} (inherit a stock config by scope, e.g. '
                         "_base_ = 'mmpretrain::resnet/...')")
    cfg.launcher = launcher
    if work_dir:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(
            osp.basename(path))[0])
    return cfg


def _parse_options(options):
    """``['a.b=1', 'c=[1,2]']`` -> dict, with mmengine's value parsing."""
    import argparse

    from mmengine.config import DictAction
    ns = argparse.Namespace()
    DictAction(option_strings=[], dest='opts')(None, ns, list(options))
    return ns.opts


# What each dataset type reads under its data_root ({root}).
LAYOUTS = {
    'ImageNet': """\
{root}/
  train/<wnid>/*.JPEG     one folder per class (n01440764, ...)
  val/*.JPEG              (or val/<wnid>/*.JPEG)
  meta/train.txt          '<wnid>/<image> <label>' per line
  meta/val.txt            '<image> <label>' per line
(mmpretrain's docs, "Prepare Dataset": ImageNet)""",
    'CustomDataset': """\
{root}/
  <class>/*.jpg           one folder per class
or the images listed with their labels in ann_file (relative to {root})""",
    'CIFAR10': """\
{root}/
  cifar-10-batches-py/    data_batch_1..5, test_batch, batches.meta
(the "python version" archive of https://www.cs.toronto.edu/~kriz/cifar.html,
extracted)""",
    'CIFAR100': """\
{root}/
  cifar-100-python/       train, test, meta
(the "python version" archive of https://www.cs.toronto.edu/~kriz/cifar.html,
extracted)""",
    'CityscapesDataset': """\
{root}/
  leftImg8bit/{{train,val}}/<city>/*_leftImg8bit.png
  gtFine/{{train,val}}/<city>/*_gtFine_labelTrainIds.png
(the *_labelTrainIds.png are made by mmseg's
tools/dataset_converters/cityscapes.py)""",
    'VOCDataset': """\
{root}/
  VOC2007/{{Annotations,ImageSets/Main,JPEGImages}}/
  VOC2012/{{Annotations,ImageSets/Main,JPEGImages}}/
(the VOCdevkit folder of the VOC2007 and VOC2012 tarballs)""",
}
# Dataset types that download missing data themselves when download=True
# (their default): a missing root is not an error for them.
DOWNLOADS = ('CIFAR10', 'CIFAR100')


def check_data_roots(cfg, loaders):
    """Raise FileNotFoundError, naming the path, the key that sets it and the
    expected layout, if a dataset of ``cfg[loader]`` for ``loader`` in
    ``loaders`` has a ``data_root`` (or ``ann_file``) that does not exist.

    Wrappers (RepeatDataset, ConcatDataset, ...) are walked through their
    ``dataset`` / ``datasets`` keys.
    """
    for loader in loaders:
        if cfg.get(loader):
            _check_dataset(cfg[loader].get('dataset'), f'{loader}.dataset')


def _check_dataset(dataset, key):
    if not isinstance(dataset, dict):
        return
    if 'dataset' in dataset:
        _check_dataset(dataset['dataset'], f'{key}.dataset')
    for i, child in enumerate(dataset.get('datasets') or ()):
        _check_dataset(child, f'{key}.datasets.{i}')
    kind = str(dataset.get('type', ''))
    if kind in DOWNLOADS and dataset.get('download', True):
        return
    root, ann_file = dataset.get('data_root'), dataset.get('ann_file')
    if root and not _exists(root):
        _missing(kind, root, root, f'{key}.data_root')
    if isinstance(ann_file, str) and ann_file:
        path = ann_file if osp.isabs(ann_file) or not root else osp.join(
            root, ann_file)
        if not _exists(path):
            _missing(kind, path, root or '.', f'{key}.ann_file')


def _exists(path):
    # Remote storage (s3://, http://, ...) is the file backend's business.
    return '://' in str(path) or osp.exists(path)


def _missing(kind, path, root, key):
    root = str(root).rstrip('/\\')
    layout = LAYOUTS.get(kind, f'{{root}}/ as the {kind or "dataset"} class '
                         'expects (see its docstring)').format(root=root)
    raise FileNotFoundError(
        f'{key}: {path} does not exist. The {kind} dataset expects:\n'
        f'{layout}\n'
        'Put the data there (a symlink will do) or point the config at it: '
        f'--cfg-options {key}=PATH (each dataloader has its own)')




def model_name(config):
    """The name of a config's model in every tool's output: the config's
    file name up to its first ``_`` (``configs/.../resnet50-mod_8xb32_in1k.py``
    -> ``resnet50-mod``)."""
    return osp.basename(str(config)).split('_')[0].rsplit('.py', 1)[0]
