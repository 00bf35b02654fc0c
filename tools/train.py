"""Train any mmmod config (mmpretrain, mmseg or mmdet) with the stock runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] \
        [--auto-scale-lr] [--partial-load] [--cfg-options key=value ...] \
        [--launcher pytorch] [--preflight] [--trust-checkpoint]

The toolbox is the config's ``default_scope``; mmmod is imported so that its
backbones are registered. Several processes: tools/dist_train.sh.
"""
import argparse
import os
import sys

from mmmod.apis import add_trust_flag, apply_trust_flag, run_tool, train


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
    p.add_argument(
        '--partial-load',
        action='store_true',
        help='accept a --resume / load_from checkpoint whose weights do not '
        'all fit the model (refused by default)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V',
                   help='override config keys, e.g. '
                   'train_cfg.max_epochs=1 data_root=/data/cifar')
    p.add_argument('--launcher', default='none',
                   choices=['none', 'pytorch', 'slurm', 'mpi'])
    p.add_argument('--preflight', action='store_true',
                   help='only check that the run can start (checkpoints, '
                   'data roots): one message and exit 1 if not')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_trust_flag(p)
    args = p.parse_args(argv)
    apply_trust_flag(args)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    return train(args.config, args.work_dir, args.resume, args.amp,
                 args.auto_scale_lr, args.cfg_options, args.launcher,
                 args.partial_load, args.preflight)


if __name__ == '__main__':
    run_tool(main, '--preflight' in sys.argv)
