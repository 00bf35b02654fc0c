"""Training and testing a config with the stock runner of its toolbox (what
``tools/train.py`` and ``tools/test.py`` run)."""
import os.path as osp

from .checkpoints import checkpoints_as_data
from .config import load_config
from .runner import build_runner, check_fit_when_loaded, check_run


def train(config,
          work_dir=None,
          resume=None,
          amp=False,
          auto_scale_lr=False,
          cfg_options=(),
          launcher='none',
          partial_load=False,
          preflight=False):
    """Train ``config``; returns the runner after training.

    Args:
        resume: a checkpoint path to resume from, ``'auto'`` for the latest
            checkpoint in the work dir, or None.
        partial_load: accept a ``--resume`` / ``load_from`` checkpoint whose
            weights do not all fit the model (refused by default, see
            :func:`~mmmod.apis.check_checkpoint_fits`, when the runner has read
            the file).
        preflight: only check what the run needs (:func:`check_run`) and
            return None: what ``tools/dist_train.sh`` does once before it
            starts its processes.
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
    checkpoint = cfg.get('load_from')
    if resume == 'auto':
        from mmengine.runner import find_latest_checkpoint
        checkpoint = find_latest_checkpoint(cfg.work_dir)
    if preflight:
        return check_run(cfg, loaders, [checkpoint])
    runner = build_runner(cfg, loaders, [checkpoint])
    if checkpoint and not partial_load:
        check_fit_when_loaded(runner, checkpoint, '--partial-load')
    with checkpoints_as_data():
        runner.train()
    return runner


def test(config,
         checkpoint,
         work_dir=None,
         out=None,
         tta=False,
         cfg_options=(),
         launcher='none',
         partial_load=False,
         preflight=False):
    """Test ``checkpoint`` on ``config``'s test set; returns the metrics, e.g.
    ``{'accuracy/top1': 76.2, ...}`` (with ``preflight``, only the checks, as
    :func:`train`'s).

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

    if preflight:
        return check_run(cfg, ['test_dataloader'], [checkpoint])
    runner = build_runner(cfg, ['test_dataloader'], [checkpoint])
    if not partial_load:
        # the TTA wrapper holds the model as ``module``
        check_fit_when_loaded(runner, checkpoint, '--partial-load',
                              (lambda m: m.module) if tta else (lambda m: m))
    with checkpoints_as_data():
        return runner.test()


def run_tool(main, preflight=False):
    """``main()`` of tools/train.py or tools/test.py, the process group torn
    down after it. With ``preflight`` (their ``--preflight``, which
    ``tools/dist_train.sh`` / ``dist_test.sh`` run once before they start
    their processes) a failed check prints its message alone, without a
    traceback, and exits 1."""
    import sys

    from .checkpoints import CheckpointNotDataError
    from .runner import close_distributed
    try:
        main()
    except (FileNotFoundError, KeyError, ValueError,
            CheckpointNotDataError) as e:
        if not preflight:
            close_distributed(finished=False)
            raise
        print(f'error: {e.args[0] if e.args else e}', file=sys.stderr)
        sys.exit(1)
    except BaseException:
        close_distributed(finished=False)
        raise
    close_distributed()
