"""Train any mmmod config (mmpretrain, mmseg or mmdet) with the stock runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] \
        [--auto-scale-lr] [--cfg-options key=value ...] [--launcher pytorch]

The toolbox is the config's ``default_scope``; mmmod is imported so that its
backbones are registered. Several processes: tools/dist_train.sh.
"""
import argparse
import os
import os.path as osp

from mmmod.apis import build_runner, close_distributed, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file path')
    p.add_argument('--work-dir', help='where logs and checkpoints go')
    p.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work '
        'dir when no path is given')
    p.add_argument('--amp', action='store_true', help='mixed precision')
    p.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by (total batch size / the config\'s '
        'auto_scale_lr.base_batch_size), for other GPU counts')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V',
                   help='override config keys, e.g. '
                   'train_cfg.max_epochs=1 data_root=/data/cifar')
    p.add_argument('--launcher', default='none',
                   choices=['none', 'pytorch', 'slurm', 'mpi'])
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.launcher,
                      args.work_dir)
    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp: optim_wrapper.type={wrapper!r} is not '
                             'OptimWrapper, set AmpOptimWrapper yourself')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise KeyError(f'--auto-scale-lr: {args.config} sets no '
                           'auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume: no checkpoint {args.resume}')
        cfg.resume, cfg.load_from = True, args.resume

    loaders = ['train_dataloader']
    if cfg.get('val_cfg') is not None:
        loaders.append('val_dataloader')
    runner = build_runner(cfg, loaders)
    runner.train()
    return runner


if __name__ == '__main__':
    try:
        main()
    except BaseException:
        close_distributed(finished=False)
        raise
    close_distributed()
