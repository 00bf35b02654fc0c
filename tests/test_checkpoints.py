"""mmmod.apis.check_checkpoints: every checkpoint a config starts from, at
any depth, found before anything is built; the message's two ways on."""
import pytest
from conftest import ROOT
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
