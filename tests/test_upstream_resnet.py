"""The toolboxes' own ResNet backbone tests (mmpretrain v1.2.0, mmdet 3.3.0
and mmseg 1.2.2 ``tests/test_models/test_backbones/test_resnet.py``),
rewritten against the MoD classes wherever they apply.

Differences by design, each checked below where it shows:

* Blocks 1, 3, 5, ... of every stage are ``MoDBlock``s (SPEC, supplement
  Table 5): a block loop over ``modules()`` finds their Conv-Blocks (the
  toolbox's own ``BasicBlock``/``Bottleneck``) one level down, plus a
  ``ChannelSelector``; parameter and module counts differ from the stock
  ones accordingly.
* A MoD Conv-Block works on ``k = C // c`` channels (inner width
  ``max(1, k // expansion)``), so its convs, norms and plugins are ``k``
  wide, not ``C`` wide. The upstream tests shrink the network with
  ``base_channels`` 1 to 8; at such widths ``c=1`` (k = C) keeps every MoD
  Conv-Block as wide as the stock block, and the stock widths are asserted
  for all blocks. mmdet's and mmseg's Bottleneck outputs ``planes * 4``, so
  there k must be a multiple of 4.
* GroupNorm inside a MoD Conv-Block has ``gcd(num_groups, channels)``
  groups (:class:`~mmmod.models.backbones.FittedGroupNorm`).
* The depths are the stock ones plus the paper's 26, 42, 75 and 86.
* Not carried over: the tests of the blocks and ``ResLayer`` alone (stock
  classes, used unchanged) and the torchvision-checkpoint test (a
  download).
"""
import copy
import importlib

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmmod.layers import MoDBlock

SCOPES = ['mmpretrain', 'mmseg', 'mmdet']
# the toolboxes whose blocks take inplanes/planes, dcn and plugins
PLANES = ['mmseg', 'mmdet']


def cls(scope, name):
    return importlib.import_module(f'{scope}.registry').MODELS.get(name)


def blocks(module, scope):
    """Every residual block, the MoD Conv-Blocks included."""
    stock = importlib.import_module(f'{scope}.models.backbones.resnet')
    kinds = (stock.BasicBlock, stock.Bottleneck)
    return [m for m in module.modules() if isinstance(m, kinds)]


def all_outputs(scope):
    # mmpretrain returns the last stage only by default
    return dict(out_indices=(0, 1, 2, 3)) if scope == 'mmpretrain' else {}


def norms_frozen(modules):
    return all(not m.training for m in modules if isinstance(m, _BatchNorm))


def shapes(outs):
    return [tuple(o.shape[1:]) for o in outs]


@pytest.mark.parametrize('scope', SCOPES)
def test_bad_arguments_fail_as_in_the_stock_class(scope):
    ResNetMoD = cls(scope, 'ResNetMoD')
    with pytest.raises(KeyError):
        ResNetMoD(20)
    for bad in (dict(num_stages=0), dict(num_stages=5),
                dict(strides=(1, ), dilations=(1, 1), num_stages=3),
                dict(style='tensorflow')):
        with pytest.raises(AssertionError):
            ResNetMoD(50, **bad)
    with pytest.raises(TypeError):
        ResNetMoD(50, pretrained=0)


@pytest.mark.parametrize('scope', PLANES)
def test_dcn_and_plugin_stages_must_match_num_stages(scope):
    ResNetMoD = cls(scope, 'ResNetMoD')
    with pytest.raises(AssertionError):
        ResNetMoD(50, dcn=dict(type='DCN', deform_groups=1,
                               fallback_on_stride=False),
                  stage_with_dcn=(True, ))
    with pytest.raises(AssertionError):
        gcb = dict(cfg=dict(type='ContextBlock', ratio=1 / 16),
                   stages=(False, True, True), position='after_conv3')
        ResNetMoD(50, plugins=[gcb])


@pytest.mark.parametrize('scope', PLANES)
def test_stem_channels(scope):
    ResNetMoD = cls(scope, 'ResNetMoD')
    model = ResNetMoD(50, stem_channels=3, c=1)
    assert (model.conv1.out_channels, model.norm1.num_features) == (3, 3)
    assert model.layer1[0].conv1.in_channels == 3
    if scope == 'mmdet':  # mmdet: stem_channels defaults to base_channels
        model = ResNetMoD(50, base_channels=3, c=3)
        assert model.conv1.out_channels == 3
        assert model.layer1[1].k == 4
    # the V1d stem: three conv-norm-relu, 9 modules (stem.0.weight, ...)
    model = cls(scope, 'ResNetV1dMoD')(depth=50, stem_channels=6)
    assert len(model.stem) == 9
    assert [model.stem[i].out_channels for i in (0, 3, 6)] == [3, 3, 6]
    assert model.layer1[0].conv1.in_channels == 6


@pytest.mark.parametrize('scope', SCOPES)
def test_norm_eval_and_frozen_stages(scope):
    ResNetMoD = cls(scope, 'ResNetMoD')
    model = ResNetMoD(50, norm_eval=True, base_channels=1, c=1)
    model.train()
    assert norms_frozen(model.modules())
    model = ResNetMoD(50, frozen_stages=1, base_channels=1, c=1)
    model.train()
    assert not model.norm1.training
    frozen = [*model.conv1.parameters(), *model.layer1.parameters()]
    assert not any(p.requires_grad for p in frozen)
    # layer1's MoD block (selector and Conv-Block) is frozen with it
    assert not model.layer1[1].selector.fc1.weight.requires_grad
    assert norms_frozen(model.layer1.modules())
    assert all(p.requires_grad for p in model.layer2.parameters())
    stem = 'ResNetV1cMoD' if scope != 'mmdet' else 'ResNetV1dMoD'
    model = cls(scope, stem)(depth=50, frozen_stages=1, base_channels=2, c=2)
    model.train()
    assert norms_frozen(model.stem.modules())
    assert not any(p.requires_grad for p in model.stem.parameters())


@pytest.mark.parametrize('scope', SCOPES)
def test_resnet18_forward(scope):
    model = cls(scope, 'ResNetMoD')(18, **all_outputs(scope))
    model.train()
    assert shapes(model(torch.randn(2, 3, 32, 32))) == [
        (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]
    model = cls(scope, 'ResNetMoD')(50, out_indices=(0, 1, 2),
                                    base_channels=1, c=1)
    model.train()
    assert shapes(model(torch.randn(2, 3, 32, 32))) == [
        (4, 8, 8), (8, 4, 4), (16, 2, 2)]


@pytest.mark.parametrize('scope', SCOPES)
def test_with_cp_reaches_every_block(scope):
    """with_cp (activation checkpointing) in every block, the MoD
    Conv-Blocks too; the gradients are those of the same model without it,
    every parameter's and the input's."""
    torch.manual_seed(0)
    model = cls(scope, 'ResNetMoD')(50, with_cp=True, base_channels=8, c=8)
    assert all(b.with_cp for b in blocks(model, scope))
    assert len(blocks(model, scope)) == 16  # 7 of them MoD Conv-Blocks
    ref = copy.deepcopy(model)
    for b in blocks(ref, scope):
        b.with_cp = False
    grads = []
    x = torch.randn(2, 3, 32, 32)
    for m in (model, ref):
        m.train()
        xi = x.clone().requires_grad_()
        m(xi)[-1].square().sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    assert grads[0][0].abs().sum() > 0  # (the input's)
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('scope', SCOPES)
def test_group_norm(scope):
    gn = dict(type='GN', num_groups=2, requires_grad=True)
    model = cls(scope, 'ResNetMoD')(
        50, base_channels=4, norm_cfg=gn, c=1, **all_outputs(scope))
    norms = [m for m in model.modules()
             if isinstance(m, (_BatchNorm, torch.nn.GroupNorm))]
    assert all(isinstance(m, torch.nn.GroupNorm) for m in norms)
    model.train()
    assert shapes(model(torch.randn(2, 3, 32, 32))) == [
        (16, 8, 8), (32, 4, 4), (64, 2, 2), (128, 1, 1)]


@pytest.mark.parametrize('scope', PLANES)
def test_plugins_in_every_block(scope):
    plugins = [
        dict(cfg=dict(type='GeneralizedAttention', spatial_range=-1,
                      num_heads=8, attention_type='0010', kv_stride=2),
             stages=(False, True, True, True), position='after_conv2'),
        dict(cfg=dict(type='NonLocal2d'), position='after_conv2'),
        dict(cfg=dict(type='ContextBlock', ratio=1. / 16),
             stages=(False, True, True, False), position='after_conv3'),
    ]
    model = cls(scope, 'ResNetMoD')(50, plugins=plugins, base_channels=8,
                                    c=1)
    widths = {1: 8, 2: 16, 3: 32, 4: 64}
    for i, width in widths.items():
        stage = getattr(model, f'layer{i}')
        assert isinstance(stage[1], MoDBlock)
        for block in blocks(stage, scope):
            assert block.nonlocal_block.in_channels == width
            assert hasattr(block, 'gen_attention_block') == (i > 1)
            if i in (2, 3):
                assert block.context_block.in_channels == width * 4
            else:
                assert not hasattr(block, 'context_block')
    model.train()
    assert shapes(model(torch.randn(2, 3, 32, 32))) == [
        (32, 8, 8), (64, 4, 4), (128, 2, 2), (256, 1, 1)]
    # with c = 2, the MoD Conv-Blocks' plugins are k wide (k = C // 2)
    model = cls(scope, 'ResNetMoD')(50, plugins=plugins[2:], base_channels=8,
                                    c=2)
    assert model.layer2[1].block.context_block.in_channels == 64 // 2


@pytest.mark.parametrize('scope', SCOPES)
def test_zero_init_residual_reaches_mod_conv_blocks(scope):
    model = cls(scope, 'ResNetMoD')(50, zero_init_residual=True,
                                    base_channels=1, c=1)
    model.init_weights()
    for block in blocks(model, scope):
        assert not block.norm3.weight.any()
    mod = [b.block for b in model.modules() if isinstance(b, MoDBlock)]
    assert len(mod) == 7 and all(not b.norm3.weight.any() for b in mod)


@pytest.mark.parametrize('scope', SCOPES)
def test_resnet_v1d_forward(scope):
    model = cls(scope, 'ResNetV1dMoD')(
        depth=50, base_channels=2, c=2, **all_outputs(scope))
    assert isinstance(model.layer2[0].downsample[0], torch.nn.AvgPool2d)
    model.train()
    assert shapes(model(torch.randn(2, 3, 32, 32))) == [
        (8, 8, 8), (16, 4, 4), (32, 2, 2), (64, 1, 1)]


def test_mmseg_contract_dilation_and_multi_grid():
    scope = 'mmseg'
    ResNetMoD = cls('mmseg', 'ResNetMoD')
    model = ResNetMoD(50, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                      contract_dilation=True)
    layer4 = blocks(model.layer4, scope)
    assert [b.conv2.dilation[0] for b in layer4] == [2, 4, 4]
    model = ResNetMoD(50, dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1),
                      multi_grid=(1, 2, 4), contract_dilation=True)
    # multi-grid sets layer4's dilations block by block, the MoD one too
    layer4 = blocks(model.layer4, scope)
    assert [b.conv2.dilation[0] for b in layer4] == [1, 2, 4]
    assert isinstance(model.layer4[1], MoDBlock)
    model.eval()
    assert shapes(model(torch.randn(1, 3, 64, 64)))[-1] == (2048, 4, 4)


def test_mmpretrain_deep_stem_and_single_output():
    model = cls('mmpretrain', 'ResNetV1cMoD')(depth=50)
    # mmpretrain's stem layout: three ConvModules (stem.0.conv.weight)
    assert len(model.stem) == 3 and hasattr(model.stem[0], 'conv')
    model.eval()
    outs = model(torch.randn(1, 3, 32, 32))
    assert isinstance(outs, tuple) and shapes(outs) == [(2048, 1, 1)]
