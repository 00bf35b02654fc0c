"""Building the stock runner for a config (also on machines without CUDA),
loading checkpoints, and building a config's model."""
import datetime
import os.path as osp

from .checkpoints import (allow_checkpoint_data, check_checkpoint_is_data,
                          check_checkpoints, checkpoints_as_data)
from .config import check_data_roots, load_config


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
        # (torch < 2.2 takes no timeout=None)
        dist.init_process_group('gloo', **(
            dict(timeout=datetime.timedelta(seconds=timeout))
            if timeout else {}))


def _replace_type(node, old, new):
    if isinstance(node, dict):
        if node.get('type') == old:
            node['type'] = new
        for value in node.values():
            _replace_type(value, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_type(value, old, new)


def check_run(cfg, loaders, checkpoints=()):
    """What a run of ``cfg`` needs before anything is built: the local
    checkpoints it starts from exist and are data (with ``checkpoints``,
    e.g. the one to resume or test), the data roots of ``loaders`` (the
    dataloaders it uses) exist. Raises with a message that says what to
    do."""
    from .checkpoints import config_checkpoints
    init_weights = 'train_dataloader' in loaders
    check_checkpoints(cfg, init_weights)
    for path in [p for _, p in config_checkpoints(cfg, init_weights)
                 ] + [p for p in checkpoints if p]:
        check_checkpoint_is_data(path)
    check_data_roots(cfg, loaders)


def build_runner(cfg, loaders, checkpoints=()):
    """The stock runner for ``cfg``, after :func:`check_run`."""
    check_run(cfg, loaders, checkpoints)
    allow_checkpoint_data()
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
    The finished runner is collected first: its DDP wrapper holds the
    process group, which would otherwise outlive ``destroy_process_group``
    until the runner's reference cycles are collected at interpreter
    shutdown, where its worker threads can abort the process alike.
    """
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def check_checkpoint_fits(model, checkpoint, flag=None, source=None):
    """Raise ValueError unless every weight of ``checkpoint`` (a path, read
    here as data, or a checkpoint already read) fits ``model`` and every
    weight of ``model`` is in it: no missing or unexpected keys, no shape
    mismatch.

    mmengine loads ``load_from`` / ``--resume`` with ``strict=False``: a
    checkpoint of another model only logs "size mismatch" lines and the run
    goes on with a mostly random model. The message names ``source`` (the
    file), the first keys that do not fit and ``flag``, the option (if any)
    that accepts a partial load.
    """
    from mmengine.model import is_model_wrapper
    from mmengine.runner.checkpoint import _load_checkpoint

    if is_model_wrapper(model):
        model = model.module
    if isinstance(checkpoint, str):
        source = source or checkpoint
        check_checkpoint_is_data(checkpoint)
        with checkpoints_as_data():
            checkpoint = _load_checkpoint(checkpoint, map_location='cpu')
    source = source or 'the checkpoint'
    state = (checkpoint.get('state_dict', checkpoint)
             if isinstance(checkpoint, dict) else None)
    if not isinstance(state, dict):
        raise ValueError(f'{source} holds no state dict')
    # as mmengine's loader: a DDP-wrapped model saved its keys as 'module.*'
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state.items()}
    own = model.state_dict()
    problems = [(f'{len(keys)} {what}', keys) for what, keys in (
        ('weights of the model missing from the checkpoint',
         [k for k in own if k not in state]),
        ('weights of the checkpoint that the model does not have',
         [k for k in state if k not in own]),
        ('shapes that differ', [
            f'{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})'
            for k, v in state.items()
            if k in own and hasattr(v, 'shape') and v.shape != own[k].shape
        ]),
    ) if keys]
    if problems:
        lines = '\n'.join(f'  {n}: {", ".join(keys[:3])}'
                          + (', ...' if len(keys) > 3 else '')
                          for n, keys in problems)
        raise ValueError(
            f'{source} does not fit the model of this config '
            f'({type(model).__name__}):\n{lines}\n'
            + _why_it_does_not_fit(model, checkpoint)
            + (f' To load the weights that fit and leave the rest as '
               f'initialised, pass {flag}.' if flag else ''))


def _why_it_does_not_fit(model, checkpoint):
    """The likely cause: the inference form on one side only (the
    converter marks its checkpoints ``meta['deploy']``), else another
    config."""
    from mmmod.layers import mod_blocks

    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    blocks = mod_blocks(model)  # none: a stock model, no form to name
    converted = isinstance(meta, dict) and meta.get('deploy') is True
    deployed = any(block.deploy for block in blocks)
    if converted and blocks and not deployed:
        return ('It is a checkpoint of the inference form (written by '
                'tools/deployment/switch_to_deploy.py): build the model '
                'with deploy=True (--cfg-options model.backbone.deploy=True).')
    if deployed and not converted:
        return ('The model is in its inference form (deploy=True) and the '
                'checkpoint is not: convert it with '
                'tools/deployment/switch_to_deploy.py, or build the model '
                'without deploy=True.')
    return 'Is it a checkpoint of another config (another depth or model)?'


def check_fit_when_loaded(runner, source, flag, unwrap=lambda m: m):
    """Have ``runner`` check that the checkpoint it loads (``load_from``,
    resume) fits ``unwrap(model)`` (:func:`check_checkpoint_fits`) when it
    has read it and before it loads it: the file is read once."""
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper

    class CheckpointFits(Hook):

        def after_load_checkpoint(self, runner, checkpoint):
            model = runner.model
            if is_model_wrapper(model):
                model = model.module
            check_checkpoint_fits(unwrap(model), checkpoint, flag, source)

    # before any other hook edits the checkpoint (EMA's swaps weights)
    runner.register_hook(CheckpointFits(), priority='VERY_HIGH')


def load_checkpoint_into(model, checkpoint):
    """Read ``checkpoint`` (a path or a URL) once, as data, check that it
    fits ``model`` exactly and load it; returns the checkpoint (its
    ``meta`` too)."""
    from mmengine.runner.checkpoint import (_load_checkpoint,
                                            _load_checkpoint_to_model)

    # the loader expands '~' (mmengine's load_from_local)
    if ('://' not in checkpoint
            and not osp.isfile(osp.expanduser(checkpoint))):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    check_checkpoint_is_data(checkpoint)
    with checkpoints_as_data():
        ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    check_checkpoint_fits(model, ckpt, source=checkpoint)
    _load_checkpoint_to_model(model, ckpt, strict=True)
    return ckpt


def build_model(config, checkpoint=None, cfg_options=(), init_weights=False):
    """The model of config file ``config``, built in the config's scope: the
    one model builder of every tool. Returns ``(model, cfg)``.

    Args:
        checkpoint: weights to load (a path or a URL), read as data, which
            must fit the model exactly (:func:`load_checkpoint_into`).
        init_weights: without a checkpoint, run ``model.init_weights()``
            (the config's ``init_cfg``: random init or the weights it
            names); otherwise the model stays as constructed.
    """
    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, init_default_scope

    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_checkpoint_into(model, checkpoint)
    elif init_weights:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel('WARNING')  # init_weights logs every parameter
        try:
            with checkpoints_as_data():
                model.init_weights()
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e} (the config's init_cfg; for a random init drop it, "
                'e.g. --cfg-options model.backbone.init_cfg=None)') from e
        finally:
            logger.setLevel(level)
    return model, cfg
