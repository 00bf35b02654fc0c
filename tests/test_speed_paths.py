"""The MoD block's CPU inference path (compiled kernels around a BN-folded
Conv-Block) computes what its reference implementation computes: every
fusion mode, memory layout and batch size; inputs are left alone unless
``inplace`` says otherwise; the folded copy follows the weights; exporters
and compilers see the reference graph. Speed is measured by
tools/analysis/benchmark.py, never asserted here."""
import copy

import pytest
import torch
import torch.nn as nn

import mmmod.layers.mod_block as mod_block
from mmmod.layers import FUSIONS, MoDBlock, fold_for_inference, set_inplace
from mmmod.layers.inference import kernels
from mmmod.models import ResNetMoD_CIFAR

CL = torch.channels_last
LAYOUTS = {
    'contiguous': lambda x: x.contiguous(),
    'channels_last': lambda x: x.contiguous(memory_format=CL),
    'strided': lambda x: torch.cat([x, x], 3)[..., ::2],  # neither
}


def conv_block(k):
    return nn.Sequential(
        nn.Conv2d(k, k, 3, padding=1), nn.BatchNorm2d(k), nn.ReLU())


def make_block(fusion, inplace=False):
    # reduction 4: a hidden layer of 8, not 2 units that a ReLU can both
    # zero (equal logits everywhere: any k channels are a valid top-k)
    torch.manual_seed(0)
    block = MoDBlock(
        32, conv_block, c=8, fusion=fusion, reduction=4, inplace=inplace)
    with torch.no_grad():  # non-trivial BN statistics for eval mode
        block.block[1].running_mean.uniform_(-1, 1)
        block.block[1].running_var.uniform_(0.5, 2)
    return block


def inputs(batch, layout, requires_grad=False):
    x = LAYOUTS[layout](torch.randn(batch, 32, 5, 6))
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('mode', ['eval-no-grad', 'eval-grad', 'train'])
def test_eager_call_matches_plain(fusion, layout, batch, mode):
    block = make_block(fusion)
    block.train(mode == 'train')
    x = inputs(batch, layout, requires_grad=mode != 'eval-no-grad')
    kept = x.detach().clone()
    with torch.set_grad_enabled(mode != 'eval-no-grad'):
        ref = block.forward_plain(x)
        out = block(x)  # eval without grad: the inference path
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(x, kept)  # the caller's input is untouched
    assert out.requires_grad == ref.requires_grad
    if layout == 'channels_last' and mode == 'eval-no-grad':
        assert out.is_contiguous(memory_format=CL)  # the kernels keep it
    # a different selection per sample (else the batch case tests little)
    if batch > 1:
        _, idx = block.select(x)
        assert len({tuple(sorted(r)) for r in idx.tolist()}) > 1


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_inplace_writes_into_the_input_only_without_autograd(fusion, layout):
    block = make_block(fusion, inplace=True).eval()
    x = inputs(2, layout)
    with torch.no_grad():
        ref = block.forward_plain(x)
        out = block(x)
    assert out is x and torch.allclose(out, ref, atol=1e-6)
    # with autograd recording, x stays as it is and the output is new
    x = inputs(2, layout, requires_grad=True)
    kept = x.detach().clone()
    out = block(x)
    assert out is not x and torch.equal(x, kept)
    assert torch.allclose(out, block.forward_plain(x), atol=1e-6)


def test_set_inplace_switches_every_block():
    model = ResNetMoD_CIFAR(depth=34)
    blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
    # the backbones' stages drop each block's input: in place by default
    assert len(blocks) == 7 and all(b.inplace for b in blocks)
    assert set_inplace(model, False) is model
    assert not any(b.inplace for b in blocks)
    set_inplace(model)
    assert all(b.inplace for b in blocks)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_backbone_fast_equals_plain(fusion):
    """A whole backbone, eval and train, batch > 1, channels last."""
    model = ResNetMoD_CIFAR(depth=18, fusion=fusion, out_indices=(0, 1, 2, 3))
    plain = copy.deepcopy(model)
    for block in plain.modules():
        if isinstance(block, MoDBlock):
            block.forward = block.forward_plain
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    for train in (False, True):
        model.train(train)
        plain.train(train)
        with torch.no_grad():
            outs, refs = model(x), plain(x)
        for out, ref in zip(outs, refs):
            assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    # copying: the same result
    set_inplace(model, False).eval()
    plain.eval()
    with torch.no_grad():
        for out, ref in zip(model(x), plain(x)):
            assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('grad', [False, True])
def test_which_path_runs(grad):
    """Eval without autograd: the kernels and the folded block (no ATen
    top-k, gather, concatenation, convolution or BN); with autograd: the
    reference ops."""
    block = make_block('first-k').eval()
    x = inputs(2, 'contiguous', requires_grad=grad)
    with torch.set_grad_enabled(grad), torch.profiler.profile() as prof:
        block(x)
    ops = {e.name for e in prof.events()}
    reference = {'aten::topk', 'aten::gather', 'aten::cat', 'aten::conv2d',
                 'aten::batch_norm'}
    assert (reference <= ops) if grad else not (reference & ops)


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('bias', [False, True])
def test_select_gather_kernel(layout, batch, bias):
    torch.manual_seed(0)
    block = MoDBlock(48, conv_block, c=6, reduction=4)  # see make_block
    if bias:
        block.selector = mod_block.ChannelSelector(48, 4, bias=True)
    x = LAYOUTS[layout](torch.randn(batch, 48, 5, 6))
    fc1, fc2 = block.selector.fc1, block.selector.fc2
    with torch.no_grad():
        x_k, scores, idx = kernels.select_gather(x, fc1.weight, fc1.bias,
                                                 fc2.weight, fc2.bias, 8)
        ref_scores, ref_idx = block.select(x)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(scores, ref_scores, atol=1e-6)
    assert torch.equal(x_k, x.gather(1, idx[:, :, None, None].expand(
        -1, -1, 5, 6)))
    assert x_k.is_contiguous(memory_format=CL if layout != 'contiguous'
                             else torch.contiguous_format)


def test_select_gather_breaks_ties_as_torch_topk():
    x = torch.randn(1, 16, 2, 2)
    w1, w2 = torch.zeros(4, 16), torch.randn(16, 4)  # equal logits (0)
    _, scores, idx = kernels.select_gather(x, w1, None, w2, None, 4)
    assert torch.equal(idx, torch.zeros(1, 16).topk(4, dim=1)[1])
    assert torch.equal(scores, torch.full((1, 4), 0.5))


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('offset', [0, 24, -1])
def test_scale_add_kernel(layout, offset):
    out = LAYOUTS[layout](torch.randn(2, 32, 3, 4))
    y = LAYOUTS[layout](torch.randn(2, 8, 3, 4))
    scores = torch.rand(2, 8)
    idx = torch.stack([torch.randperm(32)[:8] for _ in range(2)])
    dst = idx if offset < 0 else torch.arange(offset, offset + 8).expand(2, 8)
    ref = out.clone()
    ref.scatter_add_(1, dst[:, :, None, None].expand(-1, -1, 3, 4),
                     y * scores[:, :, None, None])
    assert kernels.scale_add_(out, y, scores, idx, offset) is out
    assert torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(RuntimeError, match='exceeds C=32'):
        kernels.scale_add_(out, y, scores, idx, 30)
    with pytest.raises(RuntimeError, match=r'index 32 is not in \[0, 32\)'):
        kernels.scale_add_(out, y, scores, torch.full_like(idx, 32), -1)


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize(
    'shape',  # batch, in, out, kernel, stride, padding, dilation, groups, size
    [
        (1, 4, 1, 1, 1, 0, 1, 1, 56),  # pointwise: the input is the matrix
        # narrow outputs (< 14 columns): im2col patches
        (2, 8, 8, 3, 1, 1, 1, 1, 7), (1, 6, 6, 3, 1, 1, 1, 6, 9),
        (3, 4, 8, 3, 2, 1, 1, 2, 11), (1, 4, 4, 3, 1, 2, 2, 1, 10),
        (1, 3, 5, 5, 2, 0, 1, 1, 13),
        # wide outputs: direct taps
        (1, 2, 2, 3, 1, 1, 1, 1, 28), (2, 4, 4, 3, 2, 1, 1, 2, 32),
        (1, 4, 8, 1, 2, 0, 1, 1, 30), (1, 3, 3, 3, 1, 2, 2, 1, 20),
        (2, 64, 64, 3, 1, 1, 1, 1, 16),  # too big: ATen's conv
    ])
def test_conv2d_kernel(layout, shape):
    n, cin, cout, k, stride, pad, dil, groups, size = shape
    x = LAYOUTS[layout](torch.randn(n, cin, size, size))
    w, b = torch.randn(cout, cin // groups, k, k), torch.randn(cout)
    conv = torch.conv2d(x, w, b, stride, pad, dil, groups)
    r = torch.randn_like(conv)
    for residual, relu in ((None, False), (None, True), (r, False), (r, True)):
        out = kernels.conv2d(x, w, b, [stride] * 2, [pad] * 2, [dil] * 2,
                             groups, residual, relu)
        ref = conv if residual is None else conv + residual
        ref = ref.relu() if relu else ref
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-5)
        if layout == 'channels_last':
            assert out.is_contiguous(memory_format=CL)


def test_fold_for_inference_on_every_backbone_block():
    """The Conv-Blocks of ResNet (basic, bottleneck), MobileNetV2 and VGG
    MoD blocks: BN folded away, the same outputs; a ResNet block is nothing
    but its convs (ReLUs and the residual add fused into them)."""
    from mmmod.models import MobileNetV2MoD, ResNetMoD, VGGMoD
    models = [ResNetMoD(depth=18), ResNetMoD(depth=50), MobileNetV2MoD(),
              VGGMoD(depth=11)]
    for model, convs in zip(models, [2, 3, None, 1]):
        block = next(m for m in model.modules()
                     if isinstance(m, MoDBlock)).block
        for m in block.modules():  # non-trivial BN statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        block.eval()
        folded = fold_for_inference(block)
        assert not any(isinstance(m, nn.BatchNorm2d)
                       for m in folded.modules()), type(block).__name__
        x = torch.randn(2, block_in_channels(block), 6, 6)
        with torch.no_grad():
            assert torch.allclose(folded(x), block(x), atol=1e-5)
        calls = [n.target for n in folded.graph.nodes
                 if n.op in ('call_function', 'call_module')]
        if convs is not None:
            assert calls == [kernels.conv2d] * convs, calls


def block_in_channels(block):
    return next(m for m in block.modules()
                if isinstance(m, nn.Conv2d)).in_channels


def test_folded_block_follows_the_weights():
    block = make_block('first-k').eval()
    x = inputs(2, 'contiguous')
    with torch.no_grad():
        block(x)
        # edited in place in eval mode: the version counters notice
        block.block[0].weight.mul_(-2)
        assert torch.allclose(block(x), block.forward_plain(x), atol=1e-6)
        # loaded from a checkpoint
        other = make_block('first-k')
        block.load_state_dict(other.state_dict())
        assert torch.allclose(block(x), other.eval().forward_plain(x),
                              atol=1e-6)
        # trained a step (BN statistics move without a version bump)
        block.train()
        block.forward_plain(inputs(4, 'contiguous') * 3)
        block.eval()
        assert torch.allclose(block(x), block.forward_plain(x), atol=1e-6)
    # the folded copy is no submodule: not in state_dict, not in modules(),
    # not in copies (rebuilt there on first use)
    assert set(block.state_dict()) == set(other.state_dict())
    assert block._folded is not None and copy.deepcopy(block)._folded is None


def test_without_the_compiled_kernels_the_reference_path_runs(monkeypatch):
    block = make_block('first-k').eval()
    x = inputs(2, 'contiguous')
    monkeypatch.setattr(mod_block, 'kernels', None)
    with torch.no_grad(), torch.profiler.profile() as prof:
        out = block(x)
    assert 'aten::topk' in {e.name for e in prof.events()}
    assert torch.allclose(out, block.forward_plain(x))


@pytest.mark.parametrize('grad', [False, True])
def test_tracing_sees_the_reference_graph(grad):
    block = make_block('first-k').eval()
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(block, torch.randn(2, 32, 5, 6))
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert {'aten::topk', 'aten::gather', 'aten::cat'} <= kinds


def test_torch_compile_gives_the_eager_output():
    """One MoD stage (standard block + MoD block), compiled on the CPU."""
    torch._dynamo.reset()
    stage = ResNetMoD_CIFAR(depth=18).layer1
    stage.eval()
    compiled = torch.compile(stage)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        for _ in range(2):  # a new input: the graph is not specialised
            assert torch.allclose(compiled(x), stage(x), atol=1e-5)
            x = torch.randn(2, 64, 8, 8)
