"""What tools/train.py and tools/test.py share: loading a config."""
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
