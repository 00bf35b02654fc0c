"""Test a checkpoint of any mmmod config with the stock runner and metric.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] \
        [--out results.pkl] [--tta] [--cfg-options key=value ...]

Several processes: tools/dist_test.sh.
"""
import argparse
import os
import os.path as osp

from mmmod.apis import build_runner, close_distributed, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='where logs and metrics go')
    p.add_argument('--out', help='dump the predictions to this pickle file')
    p.add_argument('--tta', action='store_true',
                   help='test-time augmentation from the config\'s '
                   'tta_model / tta_pipeline (e.g. multi-scale flip)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V')
    p.add_argument('--launcher', default='none',
                   choices=['none', 'pytorch', 'slurm', 'mpi'])
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    """Returns the metrics, e.g. ``{'accuracy/top1': 76.2, ...}``."""
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_config(args.config, args.cfg_options, args.launcher,
                      args.work_dir)
    cfg.load_from = args.checkpoint
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise KeyError(f'{args.config} defines no tta_model / '
                           'tta_pipeline for --tta')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out:
        cfg.test_evaluator = list(cfg.test_evaluator) if isinstance(
            cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
        cfg.test_evaluator.append(
            dict(type='DumpResults', out_file_path=args.out))

    runner = build_runner(cfg, ['test_dataloader'])
    return runner.test()


if __name__ == '__main__':
    try:
        main()
    except BaseException:
        close_distributed(finished=False)
        raise
    close_distributed()
