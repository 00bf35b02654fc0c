"""Building the stock runner for a config (also on machines without CUDA),
loading checkpoints, and building a config's model."""
import datetime
import os
import os.path as osp
import warnings

from .config import check_data_roots, load_config


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
