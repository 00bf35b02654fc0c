"""Warm start: stock ResNet weights (mmpretrain or torchvision) into
ResNet-MoD, through the converter and through
``init_cfg=dict(type='WarmStartFromResNet')``."""
import json
import re

import pytest
import torch
import torchvision
from conftest import build_classifier, tool
from mmengine.runner import load_checkpoint

from mmmod.layers import is_mod_position

convert = tool('model_converters/resnet_to_mod').main
MOD_KEY = re.compile(r'(backbone\.)?layer\d+\.(\d+)\.')


def at_mod_position(key):
    """Whether ``key`` lies in block ``layerS.I`` with I a MoD position."""
    m = MOD_KEY.match(key)
    return bool(m) and is_mod_position(int(m[2]))


def randomised(state):
    """Random weights and BN statistics: no init can equal them by chance."""
    with torch.no_grad():
        for value in state.values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)  # > 0: valid running variances
    return state


@pytest.fixture(scope='module')
def torchvision18(tmp_path_factory):
    state = randomised(torchvision.models.resnet18(weights=None).state_dict())
    path = tmp_path_factory.mktemp('tv') / 'resnet18.pth'
    torch.save(state, path)
    return path, state


def test_mmpretrain_checkpoint_converts_and_loads(tmp_path):
    stock = build_classifier(dict(type='ResNet', depth=18), 1000, 512)
    stock_state = randomised(stock.state_dict())
    src, dst, rep = (tmp_path / n for n in ('r18.pth', 'mod.pth', 'r.json'))
    torch.save({'meta': {}, 'state_dict': stock_state}, src)
    convert([str(src), str(dst), '--depth', '18', '--report', str(rep)])

    model = build_classifier(dict(type='ResNetMoD', depth=18), 1000, 512)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_checkpoint(model, str(dst), strict=False)  # as load_from does
    loaded = model.state_dict()
    mod_keys = {k for k in loaded if at_mod_position(k)}
    assert mod_keys and all(k.split('.')[3] in ('selector', 'block')
                            for k in mod_keys)
    for key, value in loaded.items():
        expected = fresh[key] if key in mod_keys else stock_state[key]
        assert torch.equal(value, expected), key

    report = json.loads(rep.read_text())
    assert set(report['mapped']) == set(loaded) - mod_keys
    assert set(report['new']) == mod_keys
    # skipped: exactly the stock blocks that MoD blocks replace
    assert set(report['skipped']) == {k for k in stock_state
                                      if at_mod_position(k)}
    assert 'backbone.layer4.1.conv2.weight' in report['skipped']
    # and the warm-started model runs
    assert model(torch.randn(1, 3, 64, 64), mode='tensor').shape == (1, 1000)


def test_torchvision_checkpoint_from_init_cfg(torchvision18):
    path, tv = torchvision18
    model = build_classifier(
        dict(type='ResNetMoD', depth=18, init_cfg=dict(
            type='WarmStartFromResNet', checkpoint=str(path))), 1000, 512)
    model.init_weights()
    backbone = model.backbone.state_dict()
    for key, value in backbone.items():
        if not at_mod_position(key):
            # zero_init_residual must not wipe the loaded last norms
            assert torch.equal(value, tv[key]), key
    # MoD blocks start as in a scratch ResNetMoD: unit norms, the inner
    # block's last norm zeroed (zero_init_residual), fresh convs
    for stage in range(1, 5):
        block = getattr(model.backbone, f'layer{stage}')[1].block
        assert torch.all(block.bn1.weight == 1)
        assert torch.all(block.bn2.weight == 0)
    assert not torch.equal(model.head.fc.weight, tv['fc.weight'][:1000])


def test_torchvision_converter_maps_fc_to_head(torchvision18, tmp_path,
                                               capsys):
    path, tv = torchvision18
    dst = tmp_path / 'mod.pth'
    report = convert([str(path), str(dst), '--depth', '18', '--torchvision'])
    out = torch.load(dst, weights_only=True)['state_dict']
    assert torch.equal(out['head.fc.weight'], tv['fc.weight'])
    assert torch.equal(out['backbone.layer2.0.downsample.0.weight'],
                       tv['layer2.0.downsample.0.weight'])
    assert not any(at_mod_position(k) for k in out)
    assert 'layer3.1.bn2.running_var' in report.skipped
    assert 'backbone.layer3.1.selector.fc1.weight' in report.new
    assert f'{len(report.mapped)} keys mapped' in capsys.readouterr().out


def test_depth_mismatch_names_both_depths(torchvision18, tmp_path):
    path, _ = torchvision18
    # 18 into 34 (same block, other stage depths), via init_cfg
    model = build_classifier(
        dict(type='ResNetMoD', depth=34, init_cfg=dict(
            type='WarmStartFromResNet', checkpoint=str(path))), 1000, 512)
    with pytest.raises(ValueError, match=r'ResNet18 .*depth=34'):
        model.init_weights()
    # 34 into 50 (other block), via the converter
    from mmpretrain.models import ResNet
    state = ResNet(depth=34).state_dict()
    src = tmp_path / 'r34.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in state.items()}},
               src)
    with pytest.raises(ValueError, match=r'ResNet34 .*depth=50.*ResNet50'):
        convert([str(src), str(tmp_path / 'x.pth'), '--depth', '50'])
    # a MoD depth with no stock ResNet
    with pytest.raises(ValueError, match='no stock ResNet26 exists'):
        convert([str(path), str(tmp_path / 'x.pth'), '--depth', '26',
                 '--torchvision'])


def test_bad_input_is_named(torchvision18, tmp_path):
    path, _ = torchvision18
    with pytest.raises(ValueError, match='add --torchvision'):
        convert([str(path), str(tmp_path / 'x.pth'), '--depth', '18'])
    with pytest.raises(ValueError, match=r'conv1.weight has shape '
                       r'\(64, 3, 7, 7\).*\(64, 3, 3, 3\)'):
        convert([str(path), str(tmp_path / 'x.pth'), '--depth', '18',
                 '--torchvision', '--type', 'ResNetMoD_CIFAR'])
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        convert([str(tmp_path / 'nope.pth'), str(tmp_path / 'x.pth'),
                 '--depth', '18'])
    with pytest.raises(TypeError, match='ResNetMoD backbone'):
        build_classifier(
            dict(type='ResNet', depth=18, init_cfg=dict(
                type='WarmStartFromResNet', checkpoint=str(path))), 1000,
            512).init_weights()


def test_deep_stem_maps_only_onto_a_deep_stem():
    """mmseg's FCN starts from a V1c ResNet (deep stem): it warm-starts
    ResNetV1cMoD, and is refused by the plain stem, naming the keys."""
    from mmpretrain.models import ResNetV1c

    from mmmod.models import ResNetMoD, ResNetV1cMoD
    from mmmod.models.warm_start import map_resnet_to_mod
    stock = randomised(ResNetV1c(depth=18).state_dict())
    state, report = map_resnet_to_mod(ResNetV1cMoD(depth=18), stock)
    assert torch.equal(state['stem.0.conv.weight'],
                       stock['stem.0.conv.weight'])
    assert 'stem.2.bn.running_var' in report.mapped
    assert report.skipped == [k for k in stock if at_mod_position(k)]
    with pytest.raises(KeyError, match=r"conv1\.weight"):
        map_resnet_to_mod(ResNetMoD(depth=18), stock)
