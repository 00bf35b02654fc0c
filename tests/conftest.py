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
    from mmpretrain.registry import MODELS
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
    runner does; every weight and BN statistic is made random, so that no
    downstream initialisation can match it by chance. Returns the state."""
    from mmengine.config import Config
    from mmengine.runner.checkpoint import save_checkpoint
    from mmpretrain.registry import MODELS
    model = MODELS.build(Config.fromfile(str(config)).model)
    state = model.state_dict()
    with torch.no_grad():
        for value in state.values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)  # > 0: valid running variances
    save_checkpoint({'meta': {}, 'state_dict': state}, str(path))
    return state
