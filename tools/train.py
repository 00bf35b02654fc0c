"""Train any mmmod config (mmpretrain, mmseg or mmdet) with the stock runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] \
        [--auto-scale-lr] [--partial-load] [--cfg-options key=value ...] \
        [--launcher pytorch] [--preflight] [--trust-checkpoint]

The toolbox is the config's ``default_scope``; mmmod is imported so that its
backbones are registered. Several processes: tools/dist_train.sh.
"""
import sys

from mmmod.apis import (add_cfg_options, add_run_options, add_trust_flag,
                        parse_tool_args, run_tool, tool_parser, train)


def parse_args(argv=None):
    p = tool_parser(__doc__)
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
    add_cfg_options(p)
    add_run_options(p)
    add_trust_flag(p)
    return parse_tool_args(p, argv)


def main(argv=None):
    args = parse_args(argv)
    return train(args.config, args.work_dir, args.resume, args.amp,
                 args.auto_scale_lr, args.cfg_options, args.launcher,
                 args.partial_load, args.preflight)


if __name__ == '__main__':
    run_tool(main, '--preflight' in sys.argv)
