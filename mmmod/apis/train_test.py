"""Training and testing a config with the stock runner of its toolbox (what
``tools/train.py`` and ``tools/test.py`` run)."""
import os.path as osp

from .config import load_config
from .runner import build_runner, check_checkpoint_fits


def train(config,
          work_dir=None,
          resume=None,
          amp=False,
          auto_scale_lr=False,
          cfg_options=(),
          launcher='none',
          partial_load=False):
    """Train ``config``; returns the runner after training.

    Args:
        resume: a checkpoint path to resume from, ``'auto'`` for the latest
            checkpoint in the work dir, or None.
        partial_load: accept a ``--resume`` / ``load_from`` checkpoint whose
            weights do not all fit the model (refused by default, see
            :func:`~mmmod.apis.check_checkpoint_fits`).
    """
    cfg = load_config(config, cfg_options, launcher, work_dir)
    if amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp: optim_wrapper.type={wrapper!r} is not '
                             'OptimWrapper, set AmpOptimWrapper yourself')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise KeyError(f'--auto-scale-lr: {config} sets no '
                           'auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume: no checkpoint {resume}')
        cfg.resume, cfg.load_from = True, resume

    loaders = ['train_dataloader']
    if cfg.get('val_cfg') is not None:
        loaders.append('val_dataloader')
    runner = build_runner(cfg, loaders)
    checkpoint = cfg.get('load_from')
    if resume == 'auto':
        from mmengine.runner import find_latest_checkpoint
        checkpoint = find_latest_checkpoint(cfg.work_dir)
    if checkpoint and not partial_load:
        check_checkpoint_fits(runner.model, checkpoint, '--partial-load')
    runner.train()
    return runner


def test(config,
         checkpoint,
         work_dir=None,
         out=None,
         tta=False,
         cfg_options=(),
         launcher='none',
         partial_load=False):
    """Test ``checkpoint`` on ``config``'s test set; returns the metrics, e.g.
    ``{'accuracy/top1': 76.2, ...}``.

    A checkpoint whose weights do not fit the model (another depth, another
    model) is refused, naming the first keys that do not fit, unless
    ``partial_load``: otherwise a mostly random model would be tested.
    """
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    cfg = load_config(config, cfg_options, launcher, work_dir)
    cfg.load_from = checkpoint
    if tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise KeyError(f'{config} defines no tta_model / tta_pipeline '
                           'for --tta')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if out:
        cfg.test_evaluator = list(cfg.test_evaluator) if isinstance(
            cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
        cfg.test_evaluator.append(dict(type='DumpResults', out_file_path=out))

    runner = build_runner(cfg, ['test_dataloader'])
    if not partial_load:
        from mmengine.model import is_model_wrapper
        model = runner.model
        if is_model_wrapper(model):  # DDP, with --launcher
            model = model.module
        if tta:  # the TTA wrapper holds the model as ``module``
            model = model.module
        check_checkpoint_fits(model, checkpoint, '--partial-load')
    return runner.test()
