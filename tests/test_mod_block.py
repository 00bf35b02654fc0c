"""The MoD block: selection, fusion, gradients, static graph, bad input."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.profiler import profile

from mmmod.layers import (FUSIONS, ChannelSelector, ConvChain,
                          FewChannelConv2d, MoDBlock, few_channel_convs,
                          is_mod_position, mod_channels, switch_to_deploy)


def conv_block(k):
    return nn.Sequential(nn.Conv2d(k, k, 3, padding=1), nn.BatchNorm2d(k))


def reference(block, x):
    """The block's definition, one sample and one channel at a time."""
    scores = block.selector(x)
    out = x.clone()
    for n in range(x.shape[0]):
        top = sorted(range(block.channels), key=lambda i: -scores[n, i])
        top = top[:block.k]
        y = block.block(x[n:n + 1, top])[0]
        targets = {
            'first-k': list(range(block.k)),
            'last-k': list(range(block.channels - block.k, block.channels)),
            'original': top,
        }[block.fusion]
        for j, t in enumerate(targets):
            out[n, t] += y[j] * scores[n, top[j]]
    return out


@pytest.mark.parametrize('fusion', FUSIONS)
def test_forward_matches_definition(fusion):
    block = MoDBlock(32, conv_block, c=8, fusion=fusion).eval()
    # keep the selector's hidden units alive, so that scores have no ties
    block.selector.fc1.weight.data.abs_()
    x = torch.randn(3, 32, 5, 6) + 1
    with torch.no_grad():
        assert torch.allclose(block(x), reference(block, x), atol=1e-5)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_unselected_channels_pass_through(fusion):
    block = MoDBlock(32, conv_block, c=8, fusion=fusion).eval()
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        y = block(x)
        _, idx = block.select(x)
    for n in range(2):
        touched = {
            'first-k': set(range(4)),
            'last-k': set(range(28, 32)),
            'original': set(idx[n].tolist()),
        }[fusion]
        untouched = [i for i in range(32) if i not in touched]
        assert torch.equal(y[n, untouched], x[n, untouched])
        assert not torch.allclose(y[n, sorted(touched)], x[n, sorted(touched)])


@pytest.mark.parametrize('fusion', FUSIONS)
def test_gradients_reach_selector_and_block(fusion):
    """Every parameter gets a gradient, and the block's gradients (input,
    selector, Conv-Block; through the ops' own backward) are the numerical
    ones, in float64 (BN in eval)."""
    torch.manual_seed(0)
    block = MoDBlock(32, conv_block, c=4, fusion=fusion).train()
    x = torch.randn(4, 32, 6, 6, requires_grad=True)
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0

    block = block.double().eval()
    names = [n for n, _ in block.named_parameters()]
    x = torch.randn(2, 32, 3, 3, dtype=torch.double, requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(block, dict(zip(names, params)),
                                          (x, ))
    assert torch.autograd.gradcheck(
        f, (x, *[p.detach().clone().requires_grad_()
                 for p in block.parameters()]), eps=1e-6, atol=1e-5)


def test_selection_depends_on_the_input():
    torch.manual_seed(1)
    block = MoDBlock(64, conv_block, c=8)
    _, idx = block.select(torch.randn(16, 64, 4, 4))
    assert len({tuple(r) for r in idx.tolist()}) > 1


def test_selector_shape_and_range():
    s = ChannelSelector(64)
    assert s.fc1.out_features == 4 and s.fc1.bias is None
    assert ChannelSelector(64, bias=True).fc2.bias.shape == (64, )
    scores = s(torch.randn(2, 64, 3, 3))
    assert scores.shape == (2, 64)
    assert ((scores > 0) & (scores < 1)).all()


def test_k_and_layout():
    assert MoDBlock(256, conv_block, c=64).k == 4
    assert MoDBlock(64, conv_block, c=64).k == 1
    assert [is_mod_position(i) for i in range(5)] == [0, 1, 0, 1, 0]


@pytest.mark.parametrize('c', [0, -1, 65, 2.0, '4', True, None])
def test_bad_capacity_is_rejected(c):
    with pytest.raises(ValueError, match='c'):
        MoDBlock(64, conv_block, c=c)


def test_capacity_error_names_the_range():
    with pytest.raises(ValueError, match=r'\[1, 64\]'):
        mod_channels(64, 128)


def test_unknown_fusion_is_rejected():
    with pytest.raises(ValueError, match='first-k, last-k, original'):
        MoDBlock(64, conv_block, fusion='first_k')


def test_wrong_input_channels_is_rejected():
    block = MoDBlock(64, conv_block)
    with pytest.raises(ValueError, match=r'\(N, 64, H, W\)'):
        block(torch.randn(1, 32, 4, 4))


def test_static_graph_traces():
    """The graph does not depend on the input: a trace on one input gives
    the eager output on another, for every fusion mode."""
    for fusion in FUSIONS:
        block = MoDBlock(32, conv_block, c=8, fusion=fusion).eval()
        traced = torch.jit.trace(block, torch.randn(2, 32, 4, 4))
        x = torch.randn(2, 32, 4, 4)
        with torch.no_grad():
            assert torch.allclose(traced(x), block(x), atol=1e-6)


def test_saturated_selector_still_ranks_by_logits():
    """Scores of 1.0 in float32 (logits > ~17) do not hand the choice to
    top-k's tie-breaking: the block ranks the logits."""
    block = MoDBlock(64, conv_block, c=16)
    with torch.no_grad():
        block.selector.fc1.weight.fill_(1.0)
        block.selector.fc2.weight.copy_(torch.linspace(1, 2, 64)[:, None])
    x = torch.full((1, 64, 2, 2), 1.0)
    assert (block.selector(x) == 1).all()          # saturated scores
    scores, idx = block.select(x)
    assert idx[0].tolist() == [63, 62, 61, 60]     # the largest logits
    assert torch.equal(scores, torch.ones(1, 4))


@pytest.mark.parametrize('reduction', [0, -1, 2.5, True, '4', None])
def test_bad_reduction_is_rejected(reduction):
    with pytest.raises(ValueError, match='reduction'):
        MoDBlock(64, conv_block, reduction=reduction)


def test_reduction_error_names_the_range():
    with pytest.raises(ValueError, match=r'reduction=0: .* integer >= 1'):
        ChannelSelector(64, reduction=0)
    # wider than the channels: one hidden unit, as an SE layer clamps
    assert ChannelSelector(64, reduction=65).fc1.out_features == 1
    assert ChannelSelector(64, reduction=64).fc1.out_features == 1
    assert ChannelSelector(64, reduction=16).fc1.out_features == 4


def _mod_blocks(model):
    return [m for m in model.modules() if isinstance(m, MoDBlock)]


def _deploy_cases():
    from mmmod.models import MobileNetV2MoD, ResNetMoD_CIFAR, VGGMoD
    from mmmod.models.backbones.resnet_mod import ResNetV1cMoD
    return {
        'resnet18 (basic)': lambda: ResNetMoD_CIFAR(depth=18),
        'resnet50 (bottleneck)': lambda: ResNetMoD_CIFAR(depth=50),
        'resnet50v1c': lambda: ResNetV1cMoD(depth=50),
        'mobilenetv2': lambda: MobileNetV2MoD(),
        'vgg11-bn': lambda: VGGMoD(depth=11, norm_cfg=dict(type='BN')),
    }


@pytest.mark.parametrize('name', sorted(_deploy_cases()))
def test_switch_to_deploy_folds_every_bn_and_keeps_the_output(name):
    torch.manual_seed(0)
    model = _deploy_cases()[name]()
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        switch_to_deploy(model)
        got = model(x)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4, rtol=1e-4)
    for block in _mod_blocks(model):
        assert block.deploy
        assert not any(isinstance(m, nn.BatchNorm2d)
                       for m in block.block.modules())
        with pytest.raises(RuntimeError, match='cannot train'):
            block.train()


def test_switch_to_deploy_is_one_way_and_needs_eval():
    block = MoDBlock(32, conv_block, c=8)
    with pytest.raises(RuntimeError, match='eval'):
        block.switch_to_deploy()
    block.eval().switch_to_deploy()
    folded = block.block
    assert block.switch_to_deploy().block is folded  # a second call: no-op
    # conv-BN-ReLU, BN folded, is one fused conv chain
    assert isinstance(block.block, ConvChain)
    assert [tuple(w.shape) for w in block.block.weight] == [(4, 4, 3, 3)]
    block.eval()  # eval stays allowed
    with pytest.raises(RuntimeError, match='switch_to_deploy'):
        block.train()


class _SharedNorm(nn.Module):
    """A block that calls one BN at two places: it cannot be folded into
    either conv without changing the other place."""

    def __init__(self, k):
        super().__init__()
        self.conv = nn.Conv2d(k, k, 3, padding=1)
        self.bn = nn.BatchNorm2d(k)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.bn(x)


def test_deploy_leaves_a_norm_used_twice_alone():
    block = MoDBlock(32, _SharedNorm, c=8)
    with torch.no_grad():
        block.block.bn.running_mean.uniform_(-1, 1)
        block.block.bn.running_var.uniform_(0.5, 2)
    block.eval()
    x = torch.randn(2, 32, 5, 5)
    with torch.no_grad():
        before = block(x)
        block.switch_to_deploy()
        after = block(x)
    assert isinstance(block.block.bn, nn.BatchNorm2d)  # not folded
    torch.testing.assert_close(after, before)


def test_deploy_of_a_block_that_does_not_trace_is_refused():
    """mmdet's and mmseg's blocks with with_cp branch on x.requires_grad:
    nothing could be folded, so the conversion says so (and the block stays
    trainable) instead of marking it deployed."""
    from mmdet.models.backbones.resnet import Bottleneck
    block = MoDBlock(64, lambda k: Bottleneck(k, k // 4, with_cp=True), c=4)
    block.eval()
    with pytest.raises(ValueError, match='with_cp'):
        block.switch_to_deploy()
    assert not block.deploy
    block.train()


@pytest.mark.parametrize('fusion', FUSIONS)
def test_autocast_on_a_float32_map(fusion):
    """Under CPU autocast the selector and the Conv-Block compute in
    bfloat16 while the map is float32: the output keeps the map's dtype and
    is the float32 output to bfloat16 precision."""
    block = MoDBlock(64, conv_block, c=4, fusion=fusion).eval()
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        reference = block(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = block(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('stride, ksize, cin, cout, bias', [
    (1, 3, 1, 1, True), (2, 3, 2, 2, False), (1, 1, 4, 1, True),
    (1, 1, 1, 4, False)])
def test_few_channel_convs_train_through_im2col(layout, stride, ksize, cin,
                                                cout, bias):
    """A Conv-Block's convolution on few channels is a FewChannelConv2d:
    in training mode on CPU it runs ATen's im2col + GEMM (not oneDNN), with
    nn.Conv2d's output and gradients; in eval mode nn.Conv2d's own path."""
    torch.manual_seed(0)
    ref = nn.Conv2d(cin, cout, ksize, stride, ksize // 2, bias=bias)
    conv = few_channel_convs(copy.deepcopy(ref))
    assert type(conv) is FewChannelConv2d
    assert conv.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, cin, 9, 11)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with profile() as prof:
        out = conv(xs[0])
    ran = {e.key for e in prof.key_averages()}
    want = ref(xs[1])
    g = torch.randn_like(want)
    out.backward(g)
    want.backward(g)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-4,
                               atol=1e-4)
    # the fast path ran where it serves (NCHW; a one-channel map is both),
    # oneDNN's elsewhere
    assert ('aten::thnn_conv2d' in ran) == x.is_contiguous(), ran
    conv.eval()
    with profile() as prof, torch.no_grad():
        conv(x)
    assert 'aten::thnn_conv2d' not in {e.key for e in prof.key_averages()}


def test_only_few_channel_convs_of_the_conv_block_change():
    narrow = MoDBlock(64, lambda k: nn.Sequential(
        nn.Conv2d(k, k, 3, padding=1), nn.Conv2d(k, k, 3, padding=1,
                                                 groups=k)), c=16)
    assert type(narrow.block[0]) is FewChannelConv2d  # 4 x 4 x 3 x 3
    assert type(narrow.block[1]) is nn.Conv2d  # grouped: oneDNN's
    wide = MoDBlock(64, conv_block, c=2)  # 32 x 32 x 3 x 3
    assert type(wide.block[0]) is nn.Conv2d


@pytest.mark.slow
@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_compiled_training_step_equals_eager(fusion, layout):
    """torch.compile of the training form: the same output and gradients as
    eager, and the Conv-Block's few-channel convolutions still train through
    im2col on NCHW maps (oneDNN's on channels-last ones, as in eager), in
    the forward and the backward of the compiled graphs."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = MoDBlock(32, lambda k: nn.Sequential(
        nn.Conv2d(k, k, 3, padding=1), nn.ReLU(), nn.Conv2d(k, 2 * k, 1),
        nn.ReLU(), nn.Conv2d(2 * k, k, 1)), c=8, fusion=fusion)
    assert all(type(block.block[i]) is FewChannelConv2d for i in (0, 2, 4))
    compiled = copy.deepcopy(block)
    run = torch.compile(compiled, fullgraph=True)
    x = torch.randn(3, 32, 10, 12)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    for step in range(2):  # compiles, then runs the compiled graphs
        xs = [x.clone().requires_grad_() for _ in range(2)]
        want = block(xs[0])
        with profile() as prof:
            out = run(xs[1])
            out.backward(torch.ones_like(out))
        want.backward(torch.ones_like(want))
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-4,
                                   atol=1e-4)
        for (name, p), q in zip(block.named_parameters(),
                                compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4,
                                       msg=name)
        block.zero_grad()
        compiled.zero_grad()
    ran = {e.key for e in prof.key_averages()}
    # the forward and backward graphs ran, compiled
    assert sum(k.startswith('## Call CompiledFxGraph') for k in ran) == 2, ran
    thnn = {'aten::_slow_conv2d_forward', 'aten::_slow_conv2d_backward'}
    if layout == 'contiguous':
        assert thnn <= ran, ran
    else:
        assert not thnn & ran, ran
