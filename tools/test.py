"""Test a checkpoint of any mmmod config with the stock runner and metric.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] \
        [--out results.pkl] [--tta] [--partial-load] [--cfg-options k=v ...] \
        [--preflight] [--trust-checkpoint]

A checkpoint whose weights do not fit the config's model is refused (it
would test a mostly random model) unless --partial-load.
Several processes: tools/dist_test.sh.
"""
import sys

from mmmod.apis import (add_cfg_options, add_run_options, add_trust_flag,
                        parse_tool_args, run_tool, test, tool_parser)


def parse_args(argv=None):
    p = tool_parser(__doc__)
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='where logs and metrics go')
    p.add_argument('--out', help='dump the predictions to this pickle file')
    p.add_argument('--tta', action='store_true',
                   help='test-time augmentation from the config\'s '
                   'tta_model / tta_pipeline (e.g. multi-scale flip)')
    add_cfg_options(p)
    add_run_options(p)
    add_trust_flag(p)
    return parse_tool_args(p, argv)


def main(argv=None):
    """Returns the metrics, e.g. ``{'accuracy/top1': 76.2, ...}``."""
    args = parse_args(argv)
    return test(args.config, args.checkpoint, args.work_dir, args.out,
                args.tta, args.cfg_options, args.launcher, args.partial_load,
                args.preflight)


if __name__ == '__main__':
    run_tool(main, '--preflight' in sys.argv)
