import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Small CPU runs: keep the two cores for the test process itself.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import mmmod  # noqa: E402,F401  registers the backbones

#: torch.library.opcheck (torch >= 2.4)
needs_opcheck = pytest.mark.skipif(
    not hasattr(torch.library, 'opcheck'),
    reason=f'torch {torch.__version__} has no torch.library.opcheck')


#: OpOverload.redispatch, which gpu_kernel needs (not in torch 2.1)
needs_redispatch = pytest.mark.skipif(
    not hasattr(torch._ops.OpOverload, 'redispatch'),
    reason=f'torch {torch.__version__} has no OpOverload.redispatch')


def gpu_kernel(op):
    """``mmmod::op``'s CUDA kernel (the extension's composite in C++ ATen
    ops, device-generic), callable on CPU tensors: the call is redispatched
    to the dispatcher's CUDA entry, so no GPU is needed to run it."""
    handle = getattr(torch.ops.mmmod, op).default
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f'mmmod::{op}',
                                                          'CUDA')
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    return lambda *args: handle.redispatch(keys, *args)


def cpu_supports(dtype):
    """Whether this torch's CPU kernels do matrix products in ``dtype``
    (float16 only from torch 2.2)."""
    try:
        torch.ones(2, 2, dtype=dtype) @ torch.ones(2, 2, dtype=dtype)
    except RuntimeError:
        return False
    return True


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


def _managed_classes():
    from mmengine.utils import ManagerMixin
    todo, seen = [ManagerMixin], []
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo += cls.__subclasses__()
    return [c for c in seen if '_instance_dict' in vars(c)]


@pytest.fixture(autouse=True)
def _mmengine_globals():
    """mmengine's global instances (default scope, visualizers, message
    hubs, loggers) that a test makes do not outlive it: a runner reuses the
    visualizer of the last one by name, with that run's work dir (deleted
    once its test passes), and with mmdet's scope left as the default,
    mmpretrain's registry builds mmdet's ResNeXtMoD, which takes other
    arguments."""
    before = {cls: cls._instance_dict.copy() for cls in _managed_classes()}
    yield
    for cls in _managed_classes():
        cls._instance_dict.clear()
        cls._instance_dict.update(before.get(cls, {}))


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
    runner does: a stand-in for its ImageNet training, with weights unlike
    any init (:func:`stock_checkpoints.stand_in_state` on its backbone).
    Returns the state dict."""
    from mmengine.config import Config
    from mmengine.runner.checkpoint import save_checkpoint
    from mmpretrain.registry import MODELS
    from stock_checkpoints import stand_in_state
    model = MODELS.build(Config.fromfile(str(config)).model)
    stand_in_state(model.backbone)
    state = model.state_dict()
    save_checkpoint({'meta': {}, 'state_dict': state}, str(path))
    return state


class RunsCode:
    """A pickle that opens (creates) a file when it is loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))
