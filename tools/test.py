"""Test a checkpoint of any mmmod config with the stock runner and metric.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] \
        [--out results.pkl] [--tta] [--partial-load] [--cfg-options k=v ...] \
        [--preflight] [--trust-checkpoint]

A checkpoint whose weights do not fit the config's model is refused (it
would test a mostly random model) unless --partial-load.
Several processes: tools/dist_test.sh.
"""
import argparse
import os
import sys

from mmmod.apis import add_trust_flag, apply_trust_flag, run_tool, test


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='where logs and metrics go')
    p.add_argument('--out', help='dump the predictions to this pickle file')
    p.add_argument('--tta', action='store_true',
                   help='test-time augmentation from the config\'s '
                   'tta_model / tta_pipeline (e.g. multi-scale flip)')
    p.add_argument('--partial-load', action='store_true',
                   help='accept a checkpoint whose weights do not all fit '
                   'the model (refused by default)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V')
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
    """Returns the metrics, e.g. ``{'accuracy/top1': 76.2, ...}``."""
    args = parse_args(argv)
    return test(args.config, args.checkpoint, args.work_dir, args.out,
                args.tta, args.cfg_options, args.launcher, args.partial_load,
                args.preflight)


if __name__ == '__main__':
    run_tool(main, '--preflight' in sys.argv)
