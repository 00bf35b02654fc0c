"""Stand-ins for the stock ImageNet checkpoints that configs start from
(``torchvision://resnet50``, ``open-mmlab://resnet50_v1c``), placed where
mmengine's CheckpointLoader finds them cached, so that nothing downloads;
and the 2-process runs of ``tools/dist_train.sh``."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.runner.checkpoint import (get_external_models,
                                        get_torchvision_models)
from torch.nn.modules.batchnorm import _BatchNorm

ROOT = Path(__file__).resolve().parents[1]


def stock_url(checkpoint):
    """The URL that mmengine downloads ``torchvision://NAME`` or
    ``open-mmlab://NAME`` from."""
    scheme, name = checkpoint.split('://')
    urls = (get_torchvision_models()
            if scheme == 'torchvision' else get_external_models())
    return urls[name]


def stand_in_state(model):
    """The weights of ``model`` (a stock ResNet) made unlike any init: the
    norms' affine weights nudged and their statistics those of one batch of
    noise, so that frozen-BN models still see activations of a sane
    scale."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            with torch.no_grad():
                m.weight.add_(torch.rand_like(m.weight), alpha=0.1)
                m.bias.uniform_(-0.1, 0.1)
            m.reset_running_stats()
            m.momentum = None  # running stats = this batch's stats
    model.train()  # (some stock backbones' train() returns None)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    return {k: v.clone() for k, v in model.state_dict().items()}


def place_stock_checkpoint(torch_home, checkpoint, state):
    """Save ``state`` as the cached download of ``checkpoint`` under
    ``torch_home`` (``$TORCH_HOME/hub/checkpoints/<file name of the URL>``),
    in the bare layout of the real file. Returns its path."""
    path = (Path(torch_home) / 'hub' / 'checkpoints' /
            stock_url(checkpoint).rsplit('/', 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def check_only_the_init_differs(mod_config, stock_init_config, checkpoint):
    """``stock_init_config`` is ``mod_config`` with the backbone warm-started
    from ``checkpoint`` (and its own work dir): nothing else changes."""
    from mmmod.apis import load_config
    mod = load_config(mod_config).to_dict()
    stock = load_config(stock_init_config).to_dict()
    assert stock['model']['backbone'].pop('init_cfg') == dict(
        type='WarmStartFromResNet', checkpoint=checkpoint)
    del mod['model']['backbone']['init_cfg']
    for config, cfg in ((mod_config, mod), (stock_init_config, stock)):
        assert cfg.pop('work_dir') == f'work_dirs/{Path(config).stem}'
    assert stock == mod


def check_mod_blocks_start_fresh(backbone):
    """The warm-start report of ``backbone``: the keys of its MoD blocks
    new, the stock blocks they replace skipped, every other key mapped.
    Returns the names of the MoD blocks."""
    from mmmod.layers import MoDBlock
    report = backbone.warm_start_report
    mod = [n for n, m in backbone.named_modules() if isinstance(m, MoDBlock)]
    state = backbone.state_dict()
    new = {k for k in state if k.startswith(tuple(f'{n}.' for n in mod))}
    assert mod and set(report.new) == new
    assert set(report.mapped) == set(state) - new
    assert {f'{n}.conv1.weight' for n in mod} <= set(report.skipped)
    return mod


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_dist(script, args, cwd, **env):
    """``tools/SCRIPT ARGS`` (``dist_train.sh`` or ``dist_test.sh``, whose
    ARGS hold the process count) as CPU processes; returns ``(exit status,
    output)``. Without torch's weights-only override: the tools must set
    what they need."""
    env = dict(os.environ, PORT=str(free_port()), PYTHON=sys.executable,
               **env)
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    out = subprocess.run(['bash', str(ROOT / 'tools' / script), *args],
                         capture_output=True, text=True, timeout=500,
                         env=env, cwd=cwd)
    return out.returncode, out.stdout + out.stderr


def run_dist_train(args, cwd, **env):
    """``tools/dist_train.sh CONFIG 2 ARGS...`` for ``args = [CONFIG,
    ARGS...]``: 2 CPU processes."""
    return run_dist('dist_train.sh', [args[0], '2', *args[1:]], cwd, **env)
