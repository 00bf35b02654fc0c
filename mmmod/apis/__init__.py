"""What the command lines in ``tools/`` share: configs, data checks, the
stock runner, checkpoints and models built from configs."""
from .checkpoints import (TRUST_FLAG, CheckpointNotDataError,
                          add_trust_flag, allow_checkpoint_data,
                          apply_trust_flag, check_checkpoint_is_data,
                          check_checkpoints, checkpoints_as_data,
                          trust_checkpoints)
from .cli import (add_cfg_options, add_input_size, add_run_options,
                  add_threads, parse_tool_args, tool_parser)
from .config import SCOPES, check_data_roots, load_config, model_name
from .runner import (build_model, build_runner, check_checkpoint_fits,
                     check_run, close_distributed, load_checkpoint_into,
                     setup_distributed_without_cuda)
from .launch import run_tool, test, train

__all__ = [
    'SCOPES', 'TRUST_FLAG', 'CheckpointNotDataError', 'add_cfg_options',
    'add_input_size', 'add_run_options', 'add_threads', 'add_trust_flag',
    'allow_checkpoint_data', 'apply_trust_flag', 'build_model',
    'build_runner', 'check_checkpoint_fits', 'check_checkpoint_is_data',
    'check_checkpoints', 'check_data_roots', 'check_run',
    'checkpoints_as_data', 'close_distributed', 'load_checkpoint_into',
    'load_config', 'model_name', 'parse_tool_args', 'run_tool',
    'setup_distributed_without_cuda', 'test', 'tool_parser', 'train',
    'trust_checkpoints'
]
