import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Small CPU runs: keep the two cores for the test process itself.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import mmmod  # noqa: E402,F401  registers the backbones


def build_classifier(backbone, num_classes, feat_channels, mid_channels=None):
    """An mmpretrain ImageClassifier around ``backbone``: global average
    pooling and a linear head (or a stacked one with ``mid_channels``)."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    # earlier tests may have left another toolbox's scope as the default
    init_default_scope('mmpretrain')
    head = dict(
        type='LinearClsHead',
        num_classes=num_classes,
        in_channels=feat_channels)
    if mid_channels:
        head.update(type='StackedLinearClsHead', mid_channels=mid_channels)
    return MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=backbone,
            neck=dict(type='GlobalAveragePooling'),
            head=head))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ROOT = Path(__file__).resolve().parents[1]


def tool(name):
    """``tools/<name>.py`` as a module, to call its ``main(argv)`` in this
    process (a subprocess would pay the toolboxes' import time again)."""
    spec = importlib.util.spec_from_file_location(
        f'mmmod_tools_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_classifier_checkpoint(config, path):
    """Build the mmpretrain classifier of ``config`` and save it as the
    runner does: a stand-in for its ImageNet training. BN layers get their
    affine weights nudged (so that no downstream initialisation matches them
    by chance) and the statistics of one batch of noise (so that a model
    with frozen BN, as mmdet's, sees activations of a sane scale). Returns
    the state dict."""
    from mmengine.config import Config
    from mmengine.runner.checkpoint import save_checkpoint
    from mmpretrain.registry import MODELS
    from torch.nn.modules.batchnorm import _BatchNorm
    model = MODELS.build(Config.fromfile(str(config)).model)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            with torch.no_grad():
                m.weight.add_(torch.rand_like(m.weight), alpha=0.1)
                m.bias.uniform_(-0.1, 0.1)
            m.reset_running_stats()
            m.momentum = None  # running stats = this batch's stats
    with torch.no_grad():
        model.train().backbone(torch.randn(2, 3, 64, 64))
    state = model.state_dict()
    save_checkpoint({'meta': {}, 'state_dict': state}, str(path))
    return state
