"""ResNetMoD, MobileNetV2MoD and VGGMoD: layout, stock arguments, modes,
export, bad input, and the three toolboxes' registries."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmmod.layers import MoDBlock, is_mod_position
from mmmod.models import MobileNetV2MoD, ResNetMoD, ResNetMoD_CIFAR, VGGMoD
from mmmod.models.backbones import FittedGroupNorm, MoDStagesMixin


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


def toolbox_class(scope, name):
    import importlib
    return importlib.import_module(f'{scope}.registry').MODELS.get(name)


def test_mmseg_fcn_backbone_args_dilated_d8():
    """mmseg's FCN R50-D8 backbone dict, with only ``type`` changed."""
    model = toolbox_class('mmseg', 'ResNetV1cMoD')(
        depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
        style='pytorch', contract_dilation=True)
    assert isinstance(model.stem[0], torch.nn.Conv2d)  # mmseg's stem layout
    assert model.layer3[0].conv2.dilation == (1, 1)   # contracted
    assert model.layer3[2].conv2.dilation == (2, 2)
    assert model.layer4[1].block.conv2.dilation == (4, 4)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (256, 16, 16), (512, 8, 8), (1024, 8, 8), (2048, 8, 8)]


def test_mmdet_frozen_stages_and_norm_eval():
    """mmdet's Faster R-CNN backbone dict, with only ``type`` changed."""
    model = toolbox_class('mmdet', 'ResNetMoD')(
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


@pytest.mark.parametrize('scope,outputs,norm_eval', [
    ('mmpretrain', 1, False), ('mmseg', 4, False), ('mmdet', 4, True)])
def test_defaults_are_the_toolboxs(scope, outputs, norm_eval):
    model = toolbox_class(scope, 'ResNetMoD')(depth=18)
    model.eval()  # the stock train() returns None
    assert len(model(torch.randn(1, 3, 32, 32))) == outputs
    assert model.norm_eval is norm_eval


def test_mmdet_stem_channels_default_to_base_channels():
    model = toolbox_class('mmdet', 'ResNetV1dMoD')(
        depth=18, base_channels=32, c=32)
    assert isinstance(model.stem[0], torch.nn.Conv2d)  # mmdet's stem layout
    assert model.stem[0].out_channels == 16            # stem_channels // 2
    assert (model.layer1[1].channels, model.layer1[1].k) == (32, 1)


def test_drop_path_reaches_every_block():
    """mmpretrain's stochastic-depth rule (linear in the block index over
    the whole network) holds for MoD Conv-Blocks too: ResNet50 has 15
    blocks with drop path, 8 standard and 7 MoD."""
    from mmpretrain.models.backbones import ResNet
    stock, mod = ResNet(depth=50, drop_path_rate=0.5), \
        ResNetMoD(depth=50, drop_path_rate=0.5)
    rates = []
    for name in stock.res_layers:
        for s, m in zip(getattr(stock, name), getattr(mod, name)):
            block = m.block if isinstance(m, MoDBlock) else m
            rate = getattr(block.drop_path, 'drop_prob', 0.0)
            assert rate == getattr(s.drop_path, 'drop_prob', 0.0)
            rates.append((isinstance(m, MoDBlock), rate))
    assert sum(1 for is_mod, r in rates if is_mod and r > 0) == 7
    assert rates[-1] == (False, 0.5)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_pretrained_must_be_a_str(scope):
    with pytest.raises(TypeError, match='pretrained must be a str or None'):
        toolbox_class(scope, 'ResNetMoD')(depth=18, pretrained=0)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_group_norm_fits_k_channels(scope):
    """GN with 32 groups in a MoD Conv-Block on k = 1 channel (ResNet18's
    first stage, c = 64) gets gcd(32, 1) = 1 group; stock blocks keep 32."""
    gn = dict(type='GN', num_groups=32, requires_grad=True)
    model = toolbox_class(scope, 'ResNetMoD')(depth=18, norm_cfg=gn)
    conv_block = model.layer1[1].block
    assert isinstance(conv_block.gn1, FittedGroupNorm)
    assert conv_block.gn1.num_groups == 1 and conv_block.gn1.num_channels == 1
    assert model.layer4[1].block.gn2.num_groups == 8      # k = 8
    assert type(model.layer1[0].gn1) is torch.nn.GroupNorm
    assert model.layer1[0].gn1.num_groups == 32
    model.train()
    model(torch.randn(2, 3, 32, 32))[-1].mean().backward()
    assert conv_block.gn1.weight.grad is not None
    # the checkpoint keys are the stock ones
    assert 'layer1.1.block.gn1.weight' in model.state_dict()


def test_fitted_group_norm_keeps_the_stock_groups_where_they_fit():
    assert FittedGroupNorm(64, num_groups=32).num_groups == 32
    assert FittedGroupNorm(12, num_groups=32).num_groups == 4
    assert FittedGroupNorm(1, num_groups=32).num_groups == 1


def test_plugin_that_cannot_fit_k_is_a_clear_error():
    # GCNet's ContextBlock at ratio 1/4 after conv1: the inner width of the
    # MoD Bottleneck in layer1 is 1, so the plugin would have 0 channels
    gcb = dict(cfg=dict(type='ContextBlock', ratio=1. / 4),
               position='after_conv1', stages=(True, False, False, False))
    with pytest.raises(ValueError, match=r'layer1\[1\].*k=4.*ContextBlock'
                       r'.*no channels'):
        toolbox_class('mmdet', 'ResNetMoD')(depth=50, plugins=[gcb])


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_planes_toolboxes_need_k_a_multiple_of_the_expansion(scope):
    # their Bottleneck outputs planes * 4: k = 256 // 128 = 2 cannot be
    with pytest.raises(ValueError, match=r'layer1\[1\].*k=2.*multiple of '
                       'its expansion 4'):
        toolbox_class(scope, 'ResNetMoD')(depth=50, c=128)
    # mmpretrain's Bottleneck takes its expansion as an argument
    assert ResNetMoD(depth=50, c=128).layer1[1].k == 2


def test_stage_with_dcn_reaches_mod_conv_blocks():
    from mmcv.ops import DeformConv2dPack
    model = toolbox_class('mmdet', 'ResNetMoD')(
        depth=50, stage_with_dcn=(False, True, True, True),
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False))
    assert not isinstance(model.layer1[1].block.conv2, DeformConv2dPack)
    assert isinstance(model.layer1[1].block.conv2, torch.nn.Conv2d)
    assert isinstance(model.layer2[1].block.conv2, DeformConv2dPack)
    assert model.layer2[1].block.conv2.in_channels == 512 // 64 // 4


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_resnext_params_and_macs_are_counted(scope):
    from mmmod.utils import count_macs, count_params
    # mmdet's and mmseg's ResNeXt default to groups=1; their configs set 32
    mod = toolbox_class(scope, 'ResNeXtMoD')(depth=50, groups=32)
    stock = toolbox_class(scope, 'ResNeXt')(depth=50, groups=32)
    # groups=32: the stock standard blocks; the MoD ones in gcd groups
    assert mod.layer4[0].conv2.groups == 32
    assert mod.layer4[1].block.conv2.groups == 8
    assert 0.4 < count_params(mod) / count_params(stock) < 0.8
    macs = count_macs(mod, (3, 64, 64))
    assert 0.3 < macs / count_macs(stock, (3, 64, 64)) < 0.9


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
    # c follows widen_factor as the stages do (stage 2: 24 * 0.5 -> 16)
    for widen, c in ((0.5, 16), (0.35, 8), (1.4, 32)):
        narrow = MobileNetV2MoD(widen_factor=widen)
        assert narrow.c == c and narrow.layer2[1].k == 1


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


MOD_NAMES = {
    'mmpretrain': {'ResNetMoD': 'ResNet', 'ResNetV1cMoD': 'ResNetV1c',
                   'ResNetV1dMoD': 'ResNetV1d', 'ResNeXtMoD': 'ResNeXt',
                   'ResNetMoD_CIFAR': 'ResNet_CIFAR'},
    'mmseg': {'ResNetMoD': 'ResNet', 'ResNetV1cMoD': 'ResNetV1c',
              'ResNetV1dMoD': 'ResNetV1d', 'ResNeXtMoD': 'ResNeXt'},
    'mmdet': {'ResNetMoD': 'ResNet', 'ResNetV1dMoD': 'ResNetV1d',
              'ResNeXtMoD': 'ResNeXt'},
}


@pytest.mark.parametrize('scope', sorted(MOD_NAMES))
def test_every_toolbox_builds_its_own_resnets_by_name(scope):
    import importlib

    from mmengine.registry import init_default_scope

    # as a runner does: build() resolves names in the default scope
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    for name, stock in MOD_NAMES[scope].items():
        model = registry.build(dict(type=name, depth=50))
        # the toolbox's own class, defined in the toolbox's mmmod module
        assert isinstance(model, registry.get(stock))
        assert isinstance(model, MoDStagesMixin)
        assert type(model).__name__ == name
        assert any(isinstance(m, MoDBlock) for m in model.modules())
    for cfg, cls in [(dict(type='MobileNetV2MoD'), MobileNetV2MoD),
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


@pytest.mark.parametrize('scope', sorted(MOD_NAMES))
def test_standard_keys_are_the_stock_checkpoint_keys(scope):
    """Stem, down-sampling and standard blocks have the stock class's names
    and shapes (so its checkpoints load there); the keys of the stock
    blocks at MoD positions are replaced by the MoD blocks'."""
    import importlib
    import re
    registry = importlib.import_module(f'{scope}.registry').MODELS
    at_mod_position = re.compile(r'layer\d+\.(\d+)\.')

    def standard(model):
        return {
            k: v.shape for k, v in model.state_dict().items()
            if not (m := at_mod_position.match(k))
            or not is_mod_position(int(m.group(1)))
        }

    for name, stock in MOD_NAMES[scope].items():
        depth = 50 if 'ResNeXt' in name else 18
        mod = standard(registry.get(name)(depth=depth))
        assert mod == standard(registry.get(stock)(depth=depth))
        assert any(k.startswith('layer1.0.') for k in mod)
        assert not any(k.startswith('layer1.1.') for k in mod)


def test_mmdet_resnet_v1c_mod_is_mmdets_resnet_with_the_deep_stem():
    """mmdet has no ResNetV1c: its ResNetV1cMoD is mmdet's ResNet with the
    deep stem (as mmseg's V1c), not another toolbox's class through the
    root registry (which would give one output and mmpretrain's layout)."""
    from mmdet.models.backbones import ResNet as MMDetResNet
    from mmdet.registry import MODELS as MMDET
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model = MMDET.build(dict(type='ResNetV1cMoD', depth=50))
    model.eval()  # (mmdet's train() returns None: no chaining)
    assert isinstance(model, MMDetResNet) and model.deep_stem
    assert not model.avg_down
    assert 'stem.0.weight' in model.state_dict()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]
