"""The MoD block's fast eager path computes what its reference
implementation computes: every fusion mode, memory layout, batch size and
autograd mode; inputs are left alone unless ``inplace`` says otherwise;
exporters and compilers see the reference graph. Speed is measured by
tools/analysis/benchmark.py, never asserted here."""
import copy
import json

import pytest
import torch
import torch.nn as nn
from conftest import tool

from mmmod.layers import FUSIONS, MoDBlock, gather_channels, set_inplace
from mmmod.models import ResNetMoD_CIFAR
from mmmod.utils.benchmark import (measure_latency, measure_train_throughput,
                                   skip_mod_blocks, use_plain_path)

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
    block = MoDBlock(32, conv_block, c=8, fusion=fusion, inplace=inplace)
    with torch.no_grad():  # non-trivial BN statistics for eval mode
        block.block[1].running_mean.uniform_(-1, 1)
        block.block[1].running_var.uniform_(0.5, 2)
    return block


def inputs(batch, layout, requires_grad=False):
    x = LAYOUTS[layout](torch.randn(batch, 32, 5, 6))
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
@pytest.mark.parametrize('batch', [1, 3])
def test_gather_channels_is_gather(layout, batch):
    x = inputs(batch, layout)
    idx = torch.randn(batch, 32).topk(4, dim=1)[1]
    out = gather_channels(x, idx)
    ref = x.gather(1, idx[:, :, None, None].expand(-1, -1, 5, 6))
    assert torch.equal(out, ref)
    if layout == 'channels_last':  # the inner block runs in x's layout
        assert out.is_contiguous(memory_format=CL)


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('mode', ['eval-no-grad', 'eval-grad', 'train'])
def test_fast_path_matches_plain(fusion, layout, batch, mode):
    block = make_block(fusion)
    block.train(mode == 'train')
    x = inputs(batch, layout, requires_grad=mode != 'eval-no-grad')
    kept = x.detach().clone()
    with torch.set_grad_enabled(mode != 'eval-no-grad'):
        ref = block.forward_plain(x)
        out = block(x)  # eager: the fast path
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(x, kept)  # the caller's input is untouched
    assert out.requires_grad == ref.requires_grad
    if layout == 'channels_last':
        assert out.is_contiguous(memory_format=CL)
    # a different selection per sample (else the batch case tests little)
    if batch > 1:
        _, idx = block.select(x)
        assert len({tuple(sorted(r)) for r in idx.tolist()}) > 1


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_gradients_match_plain(fusion, layout):
    fast = make_block(fusion).train()
    plain = copy.deepcopy(fast)
    grads = []
    for block, forward in ((fast, fast.__call__),
                           (plain, plain.forward_plain)):
        torch.manual_seed(1)
        x = inputs(3, layout, requires_grad=True)
        w = torch.randn(3, 32, 5, 6)
        (forward(x) * w).sum().backward()
        grads.append([x.grad] + [p.grad for p in block.parameters()])
    for g_fast, g_plain in zip(*grads):
        assert g_fast is not None and g_fast.abs().sum() > 0
        assert torch.allclose(g_fast, g_plain, atol=1e-5, rtol=1e-4)


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
    assert len(blocks) == 7 and not any(b.inplace for b in blocks)
    assert set_inplace(model) is model and all(b.inplace for b in blocks)
    set_inplace(model, False)
    assert not any(b.inplace for b in blocks)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_backbone_fast_equals_plain(fusion):
    """A whole backbone, eval and train, batch > 1, channels last."""
    model = ResNetMoD_CIFAR(depth=18, fusion=fusion, out_indices=(0, 1, 2, 3))
    plain = use_plain_path(model)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    for train in (False, True):
        model.train(train)
        plain.train(train)
        with torch.no_grad():
            outs, refs = model(x), plain(x)
        for out, ref in zip(outs, refs):
            assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    # in place: the same result, and no stage output is overwritten later
    set_inplace(model).eval()
    plain.eval()
    with torch.no_grad():
        for out, ref in zip(model(x), plain(x)):
            assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('grad', [False, True])
def test_eager_calls_take_the_fast_path(grad):
    block = make_block('first-k').train(grad)
    x = inputs(2, 'contiguous', requires_grad=grad)
    with torch.set_grad_enabled(grad), torch.profiler.profile() as prof:
        block(x)
    ops = {e.name for e in prof.events()}
    assert {'aten::index_select', 'aten::addcmul_'} <= ops
    assert 'aten::cat' not in ops and 'aten::gather' not in ops


def test_tracing_sees_the_reference_graph():
    block = make_block('first-k').eval()
    traced = torch.jit.trace(block, torch.randn(2, 32, 5, 6))
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert {'aten::gather', 'aten::cat'} <= kinds
    assert 'aten::addcmul_' not in kinds and 'aten::index_select' not in kinds


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


def test_skip_bound_and_measurements():
    model = ResNetMoD_CIFAR(depth=18)
    skipped = skip_mod_blocks(model)
    assert not any(isinstance(m, MoDBlock) for m in skipped.modules())
    assert any(isinstance(m, MoDBlock) for m in model.modules())  # a copy
    models = {'mod': model, 'skip': skipped}
    lat = measure_latency(models, (3, 16, 16), warmup=1, repeats=3)
    train = measure_train_throughput(models, (3, 16, 16), batch_size=2,
                                     warmup=1, repeats=2)
    for stats in list(lat.values()) + list(train.values()):
        assert 0 < stats['min'] <= stats['q1'] <= stats['median'] \
            <= stats['q3']
    assert [len(s['times']) for s in lat.values()] == [3, 3]
    assert train['mod']['images_per_s'] == pytest.approx(
        2e3 / train['mod']['median'])


def test_benchmark_tool_writes_the_table(tmp_path):
    out = tmp_path / 'speed.md'
    tool('analysis/benchmark').main([
        'configs/resnet_mod/baselines/resnet18_8xb32_in1k.py',
        'configs/resnet_mod/resnet18-mod_8xb32_in1k.py', '--input-size',
        '32', '--warmup', '1', '--repeats', '2', '--train-repeats', '1',
        '--train-batch-size', '2', '--plain', '--out',
        str(out)
    ])
    lines = out.read_text().splitlines()
    assert lines[2].startswith('| Model | Params (M) | GMACs | CPU (ms) |')
    rows = {r.split(' | ')[0][2:]: r.split(' | ') for r in lines[4:]}
    assert list(rows) == ['resnet18', 'resnet18-mod',
                          'resnet18-mod (skip bound)', 'resnet18-mod (plain)']
    assert rows['resnet18'][1] == '11.69' and rows['resnet18-mod'][1] == '5.46'
    assert rows['resnet18'][5] == '1.00x'
    assert float(rows['resnet18-mod'][7]) > 0  # % of skip bound
    raw = json.loads(out.with_suffix('.json').read_text())
    assert raw['meta']['baseline'] == 'resnet18'
    assert len(raw['results']['resnet18-mod']['cpu']['times']) == 2
