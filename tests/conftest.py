import os

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
