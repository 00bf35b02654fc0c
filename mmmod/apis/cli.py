"""The options the command lines in ``tools/`` share, and the parse that
checks and applies them (:func:`parse_tool_args`): each tool adds its own
options beside these."""
import argparse
import os

from .checkpoints import apply_trust_flag


def tool_parser(doc: str) -> argparse.ArgumentParser:
    """A tool's parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=doc.split('\n')[0])


def add_cfg_options(p, help='override config keys, e.g. '
                    'model.backbone.c=32 data_root=/data/cifar'):
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='K=V',
                   help=help)


def add_run_options(p):
    """tools/train.py's and test.py's options of the run itself (the stock
    runner's launcher, the loading check, the distributed preflight)."""
    p.add_argument('--partial-load', action='store_true',
                   help='accept a checkpoint (--resume, load_from, the one '
                   'tested) whose weights do not all fit the model '
                   '(refused by default)')
    p.add_argument('--launcher', default='none',
                   choices=['none', 'pytorch', 'slurm', 'mpi'])
    p.add_argument('--preflight', action='store_true',
                   help='only check that the run can start (checkpoints, '
                   'data roots): one message and exit 1 if not')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)


def add_input_size(p, default=224):
    p.add_argument('--input-size', type=int, nargs='+', default=[default],
                   help=f'S (square) or H W (default {default})')


def add_threads(p):
    p.add_argument('--threads', type=int,
                   help='CPU threads of PyTorch and ONNX Runtime')


def parse_tool_args(p, argv=None) -> argparse.Namespace:
    """``p.parse_args(argv)`` with the shared options checked (a usage
    error names the option) and applied: ``input_size`` becomes ``(H, W)``,
    a trusted checkpoint is trusted, ``LOCAL_RANK`` is set."""
    args = p.parse_args(argv)
    size = getattr(args, 'input_size', None)
    if size is not None:
        if len(size) not in (1, 2) or min(size) < 1:
            p.error(f'--input-size takes S or H W (positive), got {size}')
        args.input_size = tuple(size * (3 - len(size)))
    threads = getattr(args, 'threads', None)
    if threads is not None and threads < 1:
        p.error(f'--threads must be >= 1, got {threads}')
    apply_trust_flag(args)
    if hasattr(args, 'local_rank'):
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args
