"""Warm start: stock ResNet weights (mmpretrain, mmseg, mmdet or
torchvision) into ResNet-MoD, through the converter and through
``init_cfg=dict(type='WarmStartFromResNet')``, from files and from the
``torchvision://`` / ``open-mmlab://`` schemes (stand-ins, no download)."""
import io
import json
import logging
import re
from functools import partial

import pytest
import torch
import torchvision
from conftest import build_classifier, tool
from mmengine.logging import MMLogger
from mmengine.runner import load_checkpoint
from stock_checkpoints import place_stock_checkpoint, stand_in_state

from mmmod.layers import MoDBlock, is_mod_position
from mmmod.models import ResNetMoD, ResNetV1cMoD, ResNetV1dMoD
from mmmod.models.warm_start import (WarmStartFromResNet, canonical_name,
                                     map_resnet_to_mod, warm_start_resnet_mod)

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
    with pytest.raises(TypeError, match='ResNet-MoD backbone'):
        build_classifier(
            dict(type='ResNet', depth=18, init_cfg=dict(
                type='WarmStartFromResNet', checkpoint=str(path))), 1000,
            512).init_weights()


def v1c_class(toolbox):
    """``toolbox``'s ResNetV1c (mmdet's is its ResNet with deep_stem)."""
    import importlib
    module = importlib.import_module(f'{toolbox}.models.backbones')
    if toolbox == 'mmdet':
        return partial(module.ResNet, deep_stem=True)
    return module.ResNetV1c


def stock_v1c(toolbox, depth=18):
    """A stock ResNetV1c of ``toolbox``, randomised: mmseg's and mmdet's
    deep stem is one Sequential (stem.0.weight, stem.1.*, stem.3.weight...),
    mmpretrain's three ConvModules (stem.0.conv.weight, stem.0.bn.*...)."""
    return randomised(v1c_class(toolbox)(depth=depth).state_dict())


def mod_model_of(stock_cls, depth=18):
    """The layout the MoD backbones have once each toolbox's ResNetMoD is
    that toolbox's own ResNet class: the stock model with block 1 of each
    stage a MoD block around the toolbox's own BasicBlock."""
    model = stock_cls(depth=depth)
    for stage in range(1, 5):
        layer = getattr(model, f'layer{stage}')
        block = type(layer[1])
        layer[1] = MoDBlock(layer[1].conv2.out_channels,
                            lambda k, block=block: block(k, k))
    return model


def check_warm_started(model, stock, rename=lambda k: k):
    """Every standard key of ``model`` holds the stock weight of its name
    (after ``rename``), every MoD block key is new, and the stock keys of
    the blocks MoD blocks replace are skipped."""
    state, report = map_resnet_to_mod(model, stock)
    model.load_state_dict(state, strict=False)
    loaded = model.state_dict()
    new = {k for k in loaded if at_mod_position(k)}
    assert new and set(report.new) == new
    for key in set(loaded) - new:
        assert torch.equal(loaded[key], stock[rename(key)]), key
    assert set(report.skipped) == {k for k in stock if at_mod_position(k)}
    assert set(report.mapped) == set(loaded) - new
    return report


SEQUENTIAL_STEM = {  # mmpretrain's stem name -> mmseg's / mmdet's
    f'stem.{i}.{kind}.{p}': f'stem.{3 * i + (kind == "bn")}.{p}'
    for i in range(3) for kind in ('conv', 'bn')
    for p in ('weight', 'bias', 'running_mean', 'running_var',
              'num_batches_tracked')
}


@pytest.mark.parametrize('toolbox', ['mmseg', 'mmdet'])
def test_mmseg_mmdet_v1c_checkpoint_into_mmpretrain_layout(toolbox):
    """`open-mmlab://resnet50_v1c` (mmseg's and mmdet's layout) warm-starts
    ResNetV1cMoD, whose stem is mmpretrain's: the stem is renamed, none of
    it stays random."""
    stock = stock_v1c(toolbox)
    assert 'stem.0.weight' in stock and 'stem.7.running_var' in stock
    model = ResNetV1cMoD(depth=18)
    assert 'stem.2.bn.running_var' in model.state_dict()
    report = check_warm_started(model, stock,
                                lambda k: SEQUENTIAL_STEM.get(k, k))
    assert 'stem.2.bn.running_var' in report.mapped


@pytest.mark.parametrize('toolbox', ['mmseg', 'mmdet', 'mmpretrain'])
@pytest.mark.parametrize('layout', ['mmseg', 'mmdet'])
def test_v1c_checkpoints_into_the_toolbox_layout(toolbox, layout):
    """After the backbones become each toolbox's own class (mmseg's and
    mmdet's V1c stem layout), checkpoints of every toolbox still load."""
    model = mod_model_of(v1c_class(layout))
    stock = stock_v1c(toolbox)
    if toolbox == 'mmpretrain':
        to_mmpretrain = {v: k for k, v in SEQUENTIAL_STEM.items()}
        check_warm_started(model, stock, lambda k: to_mmpretrain.get(k, k))
    else:
        check_warm_started(model, stock)


def test_canonical_stem_names():
    assert canonical_name('stem.0.weight') == canonical_name(
        'stem.0.conv.weight') == 'stem.0.conv.weight'
    assert canonical_name('stem.4.running_mean') == canonical_name(
        'stem.1.bn.running_mean') == 'stem.1.norm.running_mean'
    assert canonical_name('stem.7.bias') == canonical_name('stem.2.gn.bias')
    assert canonical_name('layer1.0.conv1.weight') == 'layer1.0.conv1.weight'


def test_stems_that_do_not_match_are_refused():
    """No silent random stem: a deep-stem checkpoint into the plain stem,
    the plain stem into the deep one, a checkpoint without a stem."""
    v1c = stock_v1c('mmseg')
    with pytest.raises(ValueError, match=r'deep V1c/V1d stem .*ResNetMoD'
                       r'\(depth=18\) the plain 7x7'):
        map_resnet_to_mod(ResNetMoD(depth=18), v1c)
    plain = randomised(torchvision.models.resnet18().state_dict())
    with pytest.raises(ValueError, match=r'plain 7x7 stem .*ResNetV1cMoD'
                       r"\(depth=18\) the deep.*'open-mmlab://resnet50_v1c'"):
        map_resnet_to_mod(ResNetV1cMoD(depth=18), plain)
    stemless = {k: v for k, v in plain.items()
                if not k.startswith(('conv1.', 'bn1.'))}
    with pytest.raises(ValueError, match='no stem weights'):
        map_resnet_to_mod(ResNetMoD(depth=18), stemless)
    # a stock part of the model without weights: named, not skipped
    holed = {k: v for k, v in plain.items()
             if not k.startswith('layer3.0.downsample.1.')}
    with pytest.raises(ValueError, match=r"no weights for 4 keys .*"
                       r"'layer3.0.downsample.1.weight'"):
        map_resnet_to_mod(ResNetMoD(depth=18), holed)
    # V1d's strided shortcut (AvgPool, conv, norm) is not V1c's (conv, norm)
    with pytest.raises(ValueError, match=r'layer2.0.downsample is the strided'
                       r' 1x1 conv .*ResNetV1dMoD\(depth=18\) has the V1d'):
        map_resnet_to_mod(ResNetV1dMoD(depth=18), v1c)
    v1d = randomised(ResNetV1dMoD(depth=18).state_dict())
    with pytest.raises(ValueError, match=r'layer2.0.downsample is the V1d '
                       r'shortcut .*ResNetV1cMoD\(depth=18\) has the strided'):
        map_resnet_to_mod(ResNetV1cMoD(depth=18), v1d)
    with pytest.raises(ValueError, match=r'ResNet18 weights.*depth=50'):
        map_resnet_to_mod(ResNetMoD(depth=50), plain)
    with pytest.raises(TypeError, match='ResNet-MoD backbone'):
        map_resnet_to_mod(torchvision.models.resnet18(), plain)
    with pytest.raises(TypeError, match='checkpoint must be a path'):
        WarmStartFromResNet(checkpoint=None)


def test_extra_modules_of_standard_blocks_start_fresh():
    """A module a stock ResNet does not have (a DCN offset, a plugin) in a
    standard block is new, as in mmdet, not a missing stock key."""
    from mmseg.models.backbones import ResNetV1c
    model = mod_model_of(ResNetV1c)
    model.layer2[0].add_module('context', torch.nn.Conv2d(128, 8, 1))
    _, report = map_resnet_to_mod(model, stock_v1c('mmseg'))
    assert {'layer2.0.context.weight', 'layer2.0.context.bias'} <= set(
        report.new)


def stock_resnet18(kind):
    if kind == 'torchvision':
        return torchvision.models.resnet18()
    from mmseg.models.backbones import ResNetV1c
    return ResNetV1c(depth=18)


@pytest.mark.parametrize('scheme,backbone,kind', [
    ('torchvision://resnet18', 'ResNetMoD', 'torchvision'),
    ('open-mmlab://resnet18_v1c', 'ResNetV1cMoD', 'mmseg'),
])
def test_stock_schemes_load_through_init_cfg(scheme, backbone, kind,
                                             tmp_path, monkeypatch):
    """``torchvision://`` and ``open-mmlab://`` go through mmengine's
    loader, which finds the stand-in where it caches downloads."""
    stock = stand_in_state(stock_resnet18(kind))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    place_stock_checkpoint(tmp_path, scheme, stock)
    model = build_classifier(
        dict(type=backbone, depth=18, init_cfg=dict(
            type='WarmStartFromResNet', checkpoint=scheme)), 1000, 512)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        model.init_weights()
    finally:
        logger.removeHandler(handler)
    log = log.getvalue()
    report = model.backbone.warm_start_report
    loaded = model.backbone.state_dict()
    renamed = {canonical_name(k): v for k, v in stock.items()}
    for key in report.mapped:
        assert torch.equal(loaded[key], renamed[canonical_name(key)]), key
    assert set(report.new) == {k for k in loaded if at_mod_position(k)}
    assert 'fc.weight' not in loaded and 'layer4.1.conv2.weight' in \
        report.skipped
    # the MoD blocks start as in a scratch ResNet-MoD
    for stage in range(1, 5):
        block = getattr(model.backbone, f'layer{stage}')[1].block
        assert torch.all(block.bn1.weight == 1)
        assert torch.all(block.bn2.weight == 0)
    assert report.summary() in log and scheme in log
    assert 'skipped: layer1.1, layer2.1, layer3.1, layer4.1' in log


def test_converter_renames_a_deep_stem_into_mmpretrain_layout(tmp_path):
    """`open-mmlab://resnet50_v1c`'s layout (bare keys, mmseg's stem)
    converted for an mmpretrain ResNetV1cMoD (``load_from``)."""
    stock = stock_v1c('mmseg')
    src, dst = tmp_path / 'v1c.pth', tmp_path / 'mod.pth'
    torch.save(stock, src)
    report = convert([str(src), str(dst), '--depth', '18', '--torchvision',
                      '--type', 'ResNetV1cMoD'])
    out = torch.load(dst, weights_only=True)['state_dict']
    stem = [k[len('backbone.'):] for k in out if k.startswith('backbone.stem')]
    assert len(stem) == sum(k.startswith('stem.') for k in stock)
    for key in stem:
        assert torch.equal(out[f'backbone.{key}'],
                           stock[SEQUENTIAL_STEM[key]]), key
    model = build_classifier(dict(type='ResNetV1cMoD', depth=18), 1000, 512)
    missing = set(model.state_dict()) - set(out)
    assert missing and all(at_mod_position(k) or k.startswith('head.')
                           for k in missing)
    assert set(report.new) == {k for k in missing if at_mod_position(k)}


def test_a_resnet_mod_checkpoint_loads_whole(tmp_path):
    """The ImageNet ResNet-MoD classifier's own checkpoint through the same
    init_cfg: its MoD blocks load too (none new); another c is refused."""
    trained = build_classifier(dict(type='ResNetMoD', depth=18), 1000, 512)
    state = randomised(trained.state_dict())
    path = tmp_path / 'mod.pth'
    torch.save({'state_dict': state}, path)
    model = build_classifier(
        dict(type='ResNetMoD', depth=18, init_cfg=dict(
            type='WarmStartFromResNet', checkpoint=str(path))), 1000, 512)
    model.init_weights()
    report = model.backbone.warm_start_report
    assert report.new == [] and set(report.skipped) == {
        'head.fc.weight', 'head.fc.bias'}
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[f'backbone.{key}']), key
    other_c = build_classifier(dict(type='ResNetMoD', depth=18, c=32),
                               1000, 512).backbone
    with pytest.raises(ValueError, match=r'layer1.1.block.conv1.weight has '
                       r'shape \(1, 1, 3, 3\).*another c'):
        map_resnet_to_mod(other_c, {k[len('backbone.'):]: v
                                    for k, v in state.items()
                                    if k.startswith('backbone.')})


TOOLBOXES = ['mmpretrain', 'mmseg', 'mmdet']


def toolbox_class(toolbox, name):
    import importlib
    import mmmod.models  # noqa: F401  registers the MoD backbones
    return importlib.import_module(f'{toolbox}.registry').MODELS.get(name)


def v1d_source_key(key, src, dst):
    """The name in ``src``'s ResNetV1d of ``dst``'s key: the deep stem's two
    layouts, and layer1's shortcut, [conv, norm] in mmpretrain and
    [AvgPool2d(1), conv, norm] in mmseg and mmdet."""
    if (src == 'mmpretrain') != (dst == 'mmpretrain'):
        stem = SEQUENTIAL_STEM if dst == 'mmpretrain' else {
            v: k for k, v in SEQUENTIAL_STEM.items()}
        key = stem.get(key, key)
        m = re.fullmatch(r'layer1\.0\.downsample\.(\d)\.(\w+)', key)
        if m:
            shift = 1 if src != 'mmpretrain' else -1
            key = f'layer1.0.downsample.{int(m[1]) + shift}.{m[2]}'
    return key


@pytest.mark.parametrize('dst', TOOLBOXES)
@pytest.mark.parametrize('src', TOOLBOXES)
def test_v1d_checkpoints_across_toolboxes(src, dst):
    """A ResNetV1d checkpoint of any toolbox warm-starts any toolbox's
    ResNetV1dMoD: every stock tensor, layer1's shortcut included (its
    indices differ: mmseg and mmdet put an identity AvgPool2d first),
    loads equal to its source."""
    torch.manual_seed(0)
    stock = randomised(toolbox_class(src, 'ResNetV1d')(depth=50).state_dict())
    model = toolbox_class(dst, 'ResNetV1dMoD')(depth=50)
    report = warm_start_resnet_mod(model, stock, f'{src} V1d')
    loaded = model.state_dict()
    new = {k for k in loaded if at_mod_position(k)}
    assert new and set(report.new) == new
    assert set(report.mapped) == set(loaded) - new
    for key in report.mapped:
        assert torch.equal(loaded[key], stock[v1d_source_key(key, src, dst)]
                           ), key
    assert set(report.skipped) == {k for k in stock if at_mod_position(k)}


@pytest.mark.parametrize('extra', ['dcnv2', 'nonlocal'])
def test_warm_start_is_applied_after_the_childrens_init(extra, tmp_path):
    """mmdet's DCNv2 convs (ModulatedDeformConv2dPack) and NonLocal2d
    re-initialise their weights in their own init_weights, which mmengine
    runs after an ordinary init_cfg: the warm start must come after them,
    as type='Pretrained' does, and keep every mapped tensor."""
    from mmdet.models.backbones import ResNet
    kwargs = dict(depth=50)
    if extra == 'dcnv2':
        kwargs.update(dcn=dict(type='DCNv2', deform_groups=1,
                               fallback_on_stride=False),
                      stage_with_dcn=(False, True, True, True))
        stock = stand_in_state(ResNet(depth=50))  # torchvision://resnet50
    else:
        kwargs.update(plugins=[dict(cfg=dict(type='NonLocal2d'),
                                    stages=(False, False, True, True),
                                    position='after_conv2')])
        stock = randomised(ResNet(**kwargs).state_dict())
    path = tmp_path / 'stock.pth'
    torch.save(stock, path)
    model = toolbox_class('mmdet', 'ResNetMoD')(
        **kwargs, init_cfg=dict(type='WarmStartFromResNet',
                                checkpoint=str(path)))
    model.init_weights()
    report = model.warm_start_report
    loaded = model.state_dict()
    assert any('conv2.weight' in k for k in report.mapped)
    if extra == 'nonlocal':
        assert 'layer3.0.nonlocal_block.g.conv.weight' in report.mapped
    for key in report.mapped:
        assert torch.equal(loaded[key], stock[key]), key
    # what the checkpoint lacks starts as in a scratch model: DCN offsets 0
    if extra == 'dcnv2':
        offsets = [k for k in report.new if 'conv_offset' in k
                   and not at_mod_position(k)]
        assert offsets and all(not loaded[k].any() for k in offsets)
