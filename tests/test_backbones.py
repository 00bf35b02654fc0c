"""ResNetMoD, MobileNetV2MoD and VGGMoD: layout, stock arguments, modes,
export, bad input, and the three toolboxes' registries."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmmod.layers import MoDBlock
from mmmod.models import (MobileNetV2MoD, ResNetMoD, ResNetMoD_CIFAR,
                          ResNetV1cMoD, VGGMoD)


def layout(stage):
    return ''.join('M' if isinstance(b, MoDBlock) else 'S' for b in stage)


def test_resnet34_layout_alternates():
    model = ResNetMoD(depth=34)
    assert [layout(getattr(model, f'layer{i}')) for i in range(1, 5)] == \
        ['SMS', 'SMSM', 'SMSMSM', 'SMS']


@pytest.mark.parametrize('depth,blocks', list(ResNetMoD.arch_settings.items()))
def test_every_depth_builds_its_table(depth, blocks):
    model = ResNetMoD_CIFAR(depth=depth, out_indices=(0, 1, 2, 3))
    assert tuple(len(getattr(model, f'layer{i + 1}'))
                 for i in range(4)) == blocks[1]
    widths = [64, 128, 256, 512] if blocks[0].__name__ == 'BasicBlock' \
        else [256, 512, 1024, 2048]
    for i, stage in enumerate(model.res_layers):
        for b in getattr(model, stage):
            if isinstance(b, MoDBlock):
                assert b.channels == widths[i] and b.k == widths[i] // 64
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == widths


def test_bottleneck_inner_width_scales_with_k():
    model = ResNetMoD(depth=50)
    inner = model.layer1[1].block          # k = 256 // 64 = 4
    assert (inner.conv1.in_channels, inner.conv1.out_channels,
            inner.conv3.out_channels) == (4, 1, 4)
    inner = model.layer4[1].block          # k = 2048 // 64 = 32
    assert inner.conv1.out_channels == 8


def test_mmseg_fcn_backbone_args_dilated_d8():
    """mmseg's FCN R50-D8 backbone dict, with only ``type`` changed."""
    model = ResNetV1cMoD(
        depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
        style='pytorch', contract_dilation=True)
    assert hasattr(model, 'stem')                     # V1c deep stem
    assert model.layer3[0].conv2.dilation == (1, 1)   # contracted
    assert model.layer3[2].conv2.dilation == (2, 2)
    assert model.layer4[1].block.conv2.dilation == (4, 4)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (256, 16, 16), (512, 8, 8), (1024, 8, 8), (2048, 8, 8)]


def test_mmdet_frozen_stages_and_norm_eval():
    """mmdet's Faster R-CNN backbone dict, with only ``type`` changed."""
    model = ResNetMoD(
        depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True,
        style='pytorch')
    model.train()
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert not any(p.requires_grad for p in model.conv1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert all(not m.training for m in model.modules()
               if isinstance(m, _BatchNorm))
    assert model.layer2[1].selector.training      # only norms are frozen


@pytest.mark.parametrize('build', [
    lambda: ResNetMoD_CIFAR(depth=18),
    lambda: ResNetMoD_CIFAR(depth=50, fusion='original'),
    lambda: MobileNetV2MoD(),
    lambda: MobileNetV2MoD(arch='L', fusion='last-k'),
    lambda: VGGMoD(depth=16),
], ids=['r18', 'r50-original', 'mbv2', 'mbv2-L-lastk', 'vgg16'])
def test_train_step_reaches_every_selector(build):
    model = build()
    model.train()   # the stock backbones' train() returns None
    out = model(torch.randn(2, 3, 32, 32))[-1]
    out.mean().backward()
    selectors = [m.selector for m in model.modules()
                 if isinstance(m, MoDBlock)]
    assert selectors
    for s in selectors:
        # (fc1 of a 24-channel selector has one hidden unit, which a ReLU
        # may switch off for a whole batch; fc2 always gets a gradient)
        assert s.fc2.weight.grad is not None
        assert s.fc2.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_train_uses_batch_stats():
    model = ResNetMoD_CIFAR(depth=18)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x)[0], model(x)[0]
        assert torch.equal(a, b)
        model.train()
        c = model(x)[0]
    assert not torch.allclose(a, c)


def test_mobilenet_v2_settings():
    model = MobileNetV2MoD()
    assert model.c == 24
    assert layout(model.layer2) == 'SM' and layout(model.layer4) == 'SMSM'
    assert layout(model.layer1) == 'S' and layout(model.layer7) == 'S'
    assert model.layer2[1].k == 1 and model.layer6[1].k == 160 // 24
    wide = MobileNetV2MoD(arch='L')
    assert wide.c == 32
    assert [getattr(wide, f'layer{i}')[0].conv[-1].conv.out_channels
            for i in range(1, 8)] == [16, 32, 64, 96, 128, 160, 320]
    assert MobileNetV2MoD(c=8).layer2[1].k == 3


def test_vgg_mod_layers():
    model = VGGMoD(depth=19)
    kinds = ['M' if isinstance(m, MoDBlock) else
             ('P' if isinstance(m, torch.nn.MaxPool2d) else 'S')
             for m in model.features]
    assert ''.join(kinds) == 'SMP' 'SMP' 'SMSMP' 'SMSMP' 'SMSMP'
    assert model(torch.randn(1, 3, 32, 32))[-1].shape == (1, 512, 1, 1)


def test_export_gives_the_same_output():
    model = ResNetMoD_CIFAR(depth=18, out_indices=(3, ))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x, ))
    x2 = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            exported.module()(x2)[0], model(x2)[0], atol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=20), r'depth=20 is not one of \[18, 26, 34, 42, 50'),
    (dict(depth=18, fusion='middle'), 'first-k, last-k, original'),
    (dict(depth=18, c=128), r'c=128 .* \[1, 64\]'),
    (dict(depth=50, c=0), r'c=0'),
    (dict(depth=50, c=16.0), 'integer'),
])
def test_bad_resnet_arguments(kwargs, match):
    with pytest.raises((KeyError, ValueError), match=match):
        ResNetMoD(**kwargs)


def test_bad_mobilenet_and_vgg_arguments():
    with pytest.raises(KeyError, match="'default', 'L'|'L', 'default'"):
        MobileNetV2MoD(arch='XL')
    with pytest.raises(ValueError, match=r'c=64 .* \[1, 24\]'):
        MobileNetV2MoD(c=64)
    with pytest.raises(KeyError, match='depth'):
        VGGMoD(depth=17)


@pytest.mark.parametrize('model', [
    lambda: ResNetMoD_CIFAR(depth=18), lambda: MobileNetV2MoD(),
    lambda: VGGMoD(depth=16)])
def test_wrong_input_channels(model):
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        model()(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_every_toolbox_builds_every_backbone_by_name(scope):
    import importlib
    registry = importlib.import_module(f'{scope}.registry').MODELS
    for cfg, cls in [(dict(type='ResNetMoD', depth=18), ResNetMoD),
                     (dict(type='ResNetV1cMoD', depth=50), ResNetV1cMoD),
                     (dict(type='MobileNetV2MoD'), MobileNetV2MoD),
                     (dict(type='VGGMoD', depth=16), VGGMoD)]:
        assert type(registry.build(cfg)) is cls


def test_selectors_keep_default_init_in_every_backbone():
    """The stock VGG init (N(0, 0.01) for every Linear) would leave the
    selectors' scores all near 0.5; every backbone keeps PyTorch's init."""
    for model in [VGGMoD(depth=16), ResNetMoD_CIFAR(depth=18)]:
        model.init_weights()
        for m in model.modules():
            if isinstance(m, MoDBlock):
                fc1 = m.selector.fc1.weight
                bound = 1 / fc1.shape[1]**0.5   # nn.Linear's uniform bound
                assert fc1.abs().max() <= bound
                assert fc1.std() > bound / 3
