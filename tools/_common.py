"""What the tools share: loading a config, checking that its data is there,
and building the stock runner (also on machines without CUDA)."""
import datetime
import os
import os.path as osp
import warnings

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


def trust_checkpoints():
    """Let torch >= 2.6 load mmengine's checkpoints again.

    torch >= 2.6 loads with ``weights_only=True``, which refuses the
    checkpoints mmengine 0.10 writes (they hold the message hub and numpy
    state, not only tensors), so ``--resume``, ``load_from`` and
    ``init_cfg=dict(type='Pretrained')`` would all fail. The tools load the
    user's own checkpoints (or OpenMMLab's), so load them as torch < 2.6 did.
    Set ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=0`` to keep torch's default.
    """
    import torch
    from mmengine.utils import digit_version
    if digit_version(torch.__version__) >= digit_version('2.6.0'):
        os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
        warnings.filterwarnings(
            'ignore', message='Environment variable '
            'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected')


def setup_distributed_without_cuda(cfg):
    """Run a distributed config on CPU processes with the gloo backend.

    mmengine's launcher pins a CUDA device before it starts the process
    group (with the config's backend, nccl in stock configs) and wraps the
    model with ``device_ids=[LOCAL_RANK]``; neither works without CUDA. So
    start a gloo group here (mmengine then keeps it), wrap without device
    ids, and use BN for SyncBN, which has no CPU kernel.
    """
    import torch
    import torch.distributed as dist
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise RuntimeError(
            f'--launcher {cfg.launcher} needs CUDA; without it, run CPU '
            'processes with tools/dist_train.sh (--launcher pytorch)')
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    _replace_type(cfg.model, 'SyncBN', 'BN')

    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cls = MODEL_WRAPPERS.get(wrapper['type'])
    if wrapper_cls and issubclass(wrapper_cls, DistributedDataParallel):
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper

    if not dist.is_initialized():
        timeout = dist_cfg.get('timeout')
        dist.init_process_group(
            'gloo',
            timeout=datetime.timedelta(seconds=timeout) if timeout else None)


def _replace_type(node, old, new):
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
        for value in node.values():
            _replace_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_type(value, old, new)


def build_runner(cfg, loaders):
    """The stock runner for ``cfg``, after checking the data roots of
    ``loaders`` (the dataloaders this run uses)."""
    check_data_roots(cfg, loaders)
    trust_checkpoints()
    setup_distributed_without_cuda(cfg)

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def close_distributed(finished=True):
    """Tear down the process group at exit.

    After a finished run, first wait (barrier) until every rank's queued
    collectives are done: a gloo worker thread that releases one while the
    interpreter shuts down aborts the process ("terminate called without an
    active exception", about 1 run in 3 of tools/dist_train.sh on CPU).
    After a failure the other ranks may never arrive, so do not wait.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def build_model(path, checkpoint=None, cfg_options=()):
    """The model of config ``path``, built in the config's scope, with the
    weights of ``checkpoint`` if given. Returns ``(model, cfg)``."""
    from mmengine.registry import MODELS, init_default_scope

    cfg = load_config(path, cfg_options)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    if checkpoint:
        from mmengine.runner import load_checkpoint
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
        trust_checkpoints()
        load_checkpoint(model, checkpoint, map_location='cpu')
    return model, cfg
