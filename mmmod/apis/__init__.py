"""What the command lines in ``tools/`` share: configs, data checks, the
stock runner, checkpoints and models built from configs."""
from .checkpoints import check_checkpoints
from .config import SCOPES, check_data_roots, load_config, model_name
from .runner import (build_model, build_runner, check_checkpoint_fits,
                     close_distributed, setup_distributed_without_cuda,
                     trust_checkpoints)
from .train_test import test, train

__all__ = [
    'SCOPES', 'build_model', 'build_runner', 'check_checkpoint_fits',
    'check_checkpoints', 'check_data_roots', 'close_distributed', 'load_config', 'model_name',
    'setup_distributed_without_cuda', 'test', 'train', 'trust_checkpoints'
]
