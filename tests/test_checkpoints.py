"""mmmod.apis.check_checkpoints: every checkpoint a config starts from, at
any depth, found before anything is built; the message's two ways on."""
import pytest
from conftest import ROOT, RunsCode
from mmengine.config import Config

from mmmod.apis import check_checkpoints
from mmmod.apis.checkpoints import config_checkpoints


def config(tmp_path, **cfg):
    path = tmp_path / 'configs' / 'x_r50mod_y.py'
    path.parent.mkdir(exist_ok=True)
    path.write_text('')
    return Config(cfg, filename=str(path))


def test_every_checkpoint_of_the_config_is_found(tmp_path):
    cfg = config(
        tmp_path,
        model=dict(
            type='EncoderDecoder',
            pretrained='a.pth',
            backbone=dict(
                type='ResNetMoD',
                init_cfg=[
                    dict(type='Kaiming', layer='Conv2d'),
                    dict(type='WarmStartFromResNet', checkpoint='b.pth'),
                ]),
            decode_head=dict(
                init_cfg=dict(type='Pretrained', checkpoint='c.pth',
                              prefix='decode_head.')),
            neck=dict(init_cfg=dict(type='Normal', checkpoint='not one'))),
        load_from='d.pth')
    assert config_checkpoints(cfg) == [
        ('model.pretrained', 'a.pth'),
        ('model.backbone.init_cfg.1.checkpoint', 'b.pth'),
        ('model.decode_head.init_cfg.checkpoint', 'c.pth'),
        ('load_from', 'd.pth'),
    ]
    # a test run does not initialise the weights: load_from only
    assert config_checkpoints(cfg, init_weights=False) == [('load_from',
                                                            'd.pth')]


def test_local_paths_must_exist_schemes_are_the_loaders(tmp_path):
    there = tmp_path / 'there.pth'
    there.touch()
    cfg = config(tmp_path, model=dict(backbone=dict(init_cfg=dict(
        type='WarmStartFromResNet', checkpoint='torchvision://resnet50')),
        pretrained=str(there)), load_from='s3://bucket/x.pth')
    check_checkpoints(cfg)  # nothing missing
    cfg.model.neck = dict(init_cfg=dict(type='Pretrained',
                                        checkpoint=str(tmp_path / 'gone')))
    with pytest.raises(FileNotFoundError, match=r'^model\.neck\.init_cfg\.'
                       f'checkpoint: {tmp_path}/gone does not exist'):
        check_checkpoints(cfg)
    check_checkpoints(cfg, init_weights=False)  # testing does not load it
    cfg.load_from = str(tmp_path / 'trained.pth')
    with pytest.raises(FileNotFoundError, match='load_from: '):
        check_checkpoints(cfg, init_weights=False)


def test_message_without_a_known_way_on(tmp_path):
    """A user's config: no config makes the checkpoint, none names a
    stock-init config: the message says how to start from the stock
    ResNet."""
    cfg = config(tmp_path, model=dict(backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='work_dirs/mine/epoch_3.pth'))))
    with pytest.raises(FileNotFoundError) as error:
        check_checkpoints(cfg)
    message = str(error.value)
    assert '1. make it: train the model it comes from' in message
    assert ("2. or start from the stock ImageNet ResNet (no ImageNet MoD run "
            "needed): set the backbone's init_cfg=dict(type="
            "'WarmStartFromResNet', checkpoint='torchvision://resnet50')"
            ) in message
    assert message.endswith('--cfg-options '
                            'model.backbone.init_cfg.checkpoint=PATH')


def test_message_names_the_configs_found_by_name(tmp_path, monkeypatch):
    """The config that writes ``work_dirs/<name>/...`` and the config's
    ``stock_init_config``, under the ``configs`` folder that holds it, with
    the GPU count of the recipe's name and of this run."""
    cfg = config(tmp_path, stock_init_config='x_r50mod-stock-init_y',
                 load_from='work_dirs/r50-mod_4xb64_in1k/epoch_9.pth')
    for name in ('imagenet/r50-mod_4xb64_in1k.py',
                 'x_r50mod-stock-init_y.py'):
        (tmp_path / 'configs' / name).parent.mkdir(exist_ok=True)
        (tmp_path / 'configs' / name).touch()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(FileNotFoundError) as error:
        check_checkpoints(cfg)
    message = str(error.value)
    assert ('tools/dist_train.sh configs/imagenet/r50-mod_4xb64_in1k.py 4'
            in message)
    assert 'tools/dist_train.sh configs/x_r50mod-stock-init_y.py 2' in message
    # the stock-init config itself does not name itself
    cfg = Config(cfg.to_dict(), filename=str(
        tmp_path / 'configs' / 'x_r50mod-stock-init_y.py'))
    with pytest.raises(FileNotFoundError,
                       match="set the backbone's init_cfg"):
        check_checkpoints(cfg)


def test_shipped_stock_init_configs_start_from_schemes():
    """The stock-init configs run as written: nothing local to train
    first."""
    from mmmod.apis import load_config
    for name in ('fcn_r50mod-stock-init_cityscapes.py',
                 'faster_rcnn/faster-rcnn_r50mod-stock-init_fpn_1x_voc0712.py'):
        cfg = load_config(str(ROOT / 'configs' / name))
        [(key, path)] = config_checkpoints(cfg)
        assert key == 'model.backbone.init_cfg.checkpoint' and '://' in path
        check_checkpoints(cfg)


def test_home_relative_paths_are_expanded_as_the_loader_does(
        tmp_path, monkeypatch):
    """``~/x.pth``, which mmengine's loader expands and loads, is found,
    loaded and checked as data."""
    import torch

    from mmmod.apis import (CheckpointNotDataError, check_checkpoint_is_data,
                            load_checkpoint_into)
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    model = torch.nn.Linear(2, 3)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'c.pth')
    cfg = config(tmp_path, model=dict(backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='~/c.pth'))), load_from='~/c.pth')
    check_checkpoints(cfg)
    other = torch.nn.Linear(2, 3)
    load_checkpoint_into(other, '~/c.pth')
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(FileNotFoundError, match='~/gone.pth does not exist'):
        check_checkpoints(config(tmp_path, load_from='~/gone.pth'))
    if not _loads_as_data():
        return
    torch.save({'meta': RunsCode(str(tmp_path / 'opened'))},
               tmp_path / 'evil.pth')
    with pytest.raises(CheckpointNotDataError,
                       match='^~/evil.pth holds io.open'):
        check_checkpoint_is_data('~/evil.pth')
    assert not (tmp_path / 'opened').exists()


class RunsCommand:
    """A pickle that runs a shell command (torch blocks ``os``'s module by
    name) that creates a file, when it is loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f'touch {self.path}', ))


def _loads_as_data():
    import torch
    return hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint')


# checkpoints load as data from torch 2.6 (torch.load's weights_only)
needs_weights_only = pytest.mark.skipif(
    not _loads_as_data(), reason='this torch loads checkpoints as any pickle')


@needs_weights_only
@pytest.mark.parametrize('payload', [RunsCode, RunsCommand])
def test_legacy_format_checkpoint_that_runs_code_is_refused(
        tmp_path, monkeypatch, capsys, payload):
    """A checkpoint in torch's legacy (non-zip) format is refused as a zip
    one is: the same message naming the type and --trust-checkpoint, in the
    scan before anything is built (--preflight: exit 1), in the run and
    where a file is loaded without the scan (as a URL's); the payload never
    runs."""
    import os

    import torch
    from conftest import tool

    from mmmod.apis import (CheckpointNotDataError, check_checkpoint_is_data,
                            checkpoints_as_data, run_tool)
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.chdir(ROOT)
    marker = tmp_path / 'ran'
    ckpt = {'state_dict': {'w': torch.ones(2)}, 'meta': payload(str(marker))}
    legacy, zipped = tmp_path / 'legacy.pth', tmp_path / 'zipped.pth'
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    torch.save(ckpt, zipped)
    name = ('io.open' if payload is RunsCode else
            f'{os.system.__module__}.system')

    train = tool('train')
    demo = 'configs/demo/resnet18-mod_1xb16_digits.py'
    messages = {}
    for path in (zipped, legacy):
        with pytest.raises(CheckpointNotDataError) as err:
            check_checkpoint_is_data(str(path))
        assert str(err.value).startswith(f'{path} holds {name}: not data')
        assert '--trust-checkpoint' in str(err.value)
        argv = [demo, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                f'load_from={path}']
        with pytest.raises(SystemExit) as exit_:
            run_tool(lambda: train.main(argv + ['--preflight']),
                     preflight=True)
        assert exit_.value.code == 1
        messages[path] = capsys.readouterr().err
        with pytest.raises(CheckpointNotDataError, match=name):
            train.main(argv)  # the run
        # loaded without the scan first
        with pytest.raises(CheckpointNotDataError, match=name):
            with checkpoints_as_data():
                torch.load(path)
    assert messages[legacy] == messages[zipped].replace(str(zipped),
                                                        str(legacy))
    assert messages[legacy].startswith(f'error: {legacy} holds {name}')
    assert not marker.exists()


def test_legacy_format_checkpoint_of_data_passes(tmp_path):
    """A legacy-format checkpoint of mmengine's data types (tensors, numpy,
    HistoryBuffer) passes the scan and loads as data; a file in neither
    format is torch.load's to refuse."""
    import numpy as np
    import torch
    from mmengine.logging import HistoryBuffer

    from mmmod.apis import check_checkpoint_is_data, checkpoints_as_data
    path = tmp_path / 'legacy.pth'
    torch.save({'state_dict': torch.nn.BatchNorm2d(3).state_dict(),
                'meta': {'hub': HistoryBuffer([1.0], [1]),
                         'seed': np.int64(3), 'a': np.ones(2)}},
               path, _use_new_zipfile_serialization=False)
    check_checkpoint_is_data(str(path))
    with checkpoints_as_data():
        loaded = torch.load(path)
    assert loaded['meta']['hub'].statistics('mean') == 1.0
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    check_checkpoint_is_data(str(tmp_path / 'junk.pth'))


@pytest.mark.parametrize('message,name', [
    # torch >= 2.4
    ('Unsupported global: GLOBAL io.open was not an allowed global by '
     'default. Please use ...', 'io.open'),
    # torch >= 2.5, a blocked module
    ('Trying to load unsupported GLOBAL posix.system whose module posix is '
     'blocked.', 'posix.system'),
    # torch 2.1 - 2.3
    ('Weights only load failed. ... Unsupported class posix.system',
     'posix.system'),
    ("the checkpoint asks for getattr(<class 'X'>, '__init__'); only "
     "HistoryBuffer's statistics methods are data",
     "getattr(<class 'X'>, '__init__')"),
    ('Unsupported operand 149', None),
])
def test_refusal_wordings_of_torch_versions(message, name):
    from mmmod.apis.checkpoints import refused_global
    assert refused_global(message) == name
