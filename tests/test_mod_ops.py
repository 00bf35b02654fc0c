"""The MoD block's registered ops (mmmod/layers/ops.py, csrc/ops.cpp): the C++
CPU kernels give what the composite (pure-PyTorch) implementation gives on
the same inputs (bit for bit, but for the float32 selector's own linears:
to rounding, and then a top-k of the composite's logits; and for the
scores, whose sigmoid the CPU kernel computes itself: to two ulps where
ATen's sigmoid vectorises), on fuzzed shapes,
layouts, fusions, batch sizes and ties; the block's
eval output equals the training graph's in eager, torch.compile, torch.export
and ONNX Runtime; every test that is about a fast path asserts it ran."""
import importlib.machinery
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile
from conftest import cpu_supports, gpu_kernel, needs_opcheck, needs_redispatch

from mmmod.layers import FUSIONS, HAS_EXT, MoDBlock, ops
from mmmod.layers.ops import channel_means

CL = torch.channels_last
LAYOUTS = {
    'contiguous': lambda x: x.contiguous(),
    'channels_last': lambda x: x.contiguous(memory_format=CL),
    'strided': lambda x: torch.cat([x, x], 3)[..., ::2],  # neither
}
OFFSET = {'first-k': lambda c, k: 0, 'last-k': lambda c, k: c - k,
          'original': lambda c, k: -1}
needs_ext = pytest.mark.skipif(not HAS_EXT, reason='mmmod._ext not built')


def cpu_kernel_registered(op):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f'mmmod::{op}',
                                                          'CPU')


def ops_run(fn):
    """The names of the ops ``fn()`` called (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def conv_block(k):
    return nn.Sequential(
        nn.Conv2d(k, k, 3, padding=1), nn.BatchNorm2d(k), nn.ReLU())


def make_block(channels=32, c=8, fusion='first-k', seed=0):
    torch.manual_seed(seed)
    block = MoDBlock(channels, conv_block, c=c, fusion=fusion, reduction=4)
    with torch.no_grad():  # non-trivial BN statistics for eval mode
        block.block[1].running_mean.uniform_(-1, 1)
        block.block[1].running_var.uniform_(0.5, 2)
    return block.eval()


def training_graph(block, x):
    """The block's output as autograd records it, from the composite
    implementation: the definition the fast paths must reproduce."""
    x = x.detach().requires_grad_()
    fc1, fc2 = block.selector.fc1, block.selector.fc2
    with torch.enable_grad():
        x_k, scores, idx = ops._select_channels_composite(
            x, x.mean((2, 3)), fc1.weight, fc1.bias, fc2.weight, fc2.bias,
            block.k)
        out = ops._fuse_channels_composite(x, block.block(x_k), scores, idx,
                                           block._fusion_offset)
    assert out.requires_grad
    return out.detach(), idx


def rounding(logits):
    """How far float32 logits computed in another order may be from
    ``logits``."""
    return 1e-5 * (1 + logits.abs().max())


def assert_a_top_k(idx, logits, k):
    """``idx`` (N, k) is a top-k of ``logits``, best first, to float32
    rounding: what a kernel whose logits differ from these by rounding may
    choose among near-tied channels."""
    chosen = logits.gather(1, idx)
    tol = rounding(logits)
    assert (chosen >= logits.topk(k, 1).values[:, -1:] - tol).all()
    assert (chosen[:, 1:] <= chosen[:, :-1] + tol).all()
    assert all(len(set(row.tolist())) == k for row in idx)


def assert_scores_of(scores, idx, logits):
    """``scores`` are the sigmoids of ``logits`` at ``idx``, to rounding
    (the sigmoid's slope is at most 1/4)."""
    want = logits.gather(1, idx).sigmoid()
    assert (scores - want).abs().max() <= rounding(logits) / 4


def assert_scores_like(scores, aten):
    """The CPU kernel's scores against ATen's sigmoid of the same logits:
    the kernel computes ATen's scalar form, 1 / (1 + exp(-v)), which ATen
    runs on fewer than two vectors of values (64 bytes with AVX2: 16
    float32), so there bit for bit; on more, ATen's vectorised exp differs
    by up to two ulps."""
    if scores.numel() * scores.element_size() < 64:
        assert torch.equal(scores, aten)
    torch.testing.assert_close(scores, aten, atol=0, equal_nan=True,
                               rtol=2 * torch.finfo(scores.dtype).eps)


def weights(kind, channels, hidden):
    """Selector weights: random, trained-like (saturated sigmoids), with
    exact ties (repeated rows) or near ties (logits one ulp apart)."""
    w1 = torch.randn(hidden, channels) / channels**0.5
    w2 = torch.randn(channels, hidden)
    if kind == 'saturated':
        w1, w2 = w1.abs() * 40, w2 * 40
    elif kind == 'exact-ties':
        w2[1::2] = w2[::2][:w2[1::2].shape[0]]
    elif kind == 'near-ties':
        w1 = w1.abs()
        base = torch.full((channels, ), 0.5)
        for i in range(1, channels):  # 0.5, and one ulp above, alternating
            base[i] = torch.nextafter(base[i - 1], torch.tensor(1.0)) \
                if i % 2 else base[i - 2]
        w2 = base[:, None].expand(-1, hidden).contiguous()
    return w1, w2


def fuzzed_map(gen, layout, seed):
    """A map of a random shape (batch 1..8, 2..64 channels, odd and 1x1
    sizes) in ``layout``, and a k among its channels."""
    n = int(torch.randint(1, 9, (), generator=gen))
    channels = int(torch.randint(2, 65, (), generator=gen))
    h, w = (int(v) for v in torch.randint(1, 8, (2, ), generator=gen))
    k = int(torch.randint(1, channels + 1, (), generator=gen))
    torch.manual_seed(seed)
    return LAYOUTS[layout](torch.randn(n, channels, h, w)), k


# ---------------------------------------------------------------- the ops


@needs_ext
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
@pytest.mark.parametrize('kind',
                         ['random', 'saturated', 'exact-ties', 'near-ties'])
def test_cpu_kernels_match_the_composite(layout, kind):
    """Fuzzed shapes (odd, 1x1), c, batch 1..8, every fusion: the kernels'
    outputs are the composite's, and the kernels ran. The float32 selector
    computes its linears itself: its scores are the composite's to rounding
    and its channels a top-k of the composite's logits (the same channels
    but among near-ties); the chosen channels are copied bit for bit."""
    gen = torch.Generator().manual_seed(hash((layout, kind)) % 2**31)
    for trial in range(12):
        x, k = fuzzed_map(gen, layout, trial)
        n, channels, h, w = x.shape
        hidden = max(1, channels // 4)
        w1, w2 = weights(kind, channels, hidden)
        b1 = torch.randn(hidden) if trial % 2 else None
        args = (x, x.mean((2, 3)), w1, b1, w2, None, k)
        x_k, scores, idx = torch.ops.mmmod.select_channels(*args)
        want = ops._select_channels_composite(*args)
        logits = ops.selector_logits(*args[1:-1])
        where = (trial, n, channels, h, w, k)
        if kind == 'near-ties':
            assert_a_top_k(idx, logits, k)
        else:
            assert torch.equal(idx, want[2]), where
        assert torch.equal(x_k, x.gather(1, ops._expand(idx, x))), where
        assert_scores_of(scores, idx, logits)
        assert x_k.is_contiguous(memory_format=ops._layout(x))
        y = torch.randn_like(x_k)
        for fusion in FUSIONS:
            fargs = (x, y, scores, idx, OFFSET[fusion](channels, k))
            assert torch.equal(
                torch.ops.mmmod.fuse_channels(*fargs),
                ops._fuse_channels_composite(*fargs)), (trial, fusion)
    called = ops_run(lambda: torch.ops.mmmod.fuse_channels(*fargs))
    assert 'mmmod::fuse_channels' in called
    # the composite's ops are not what ran: the C++ kernel did
    assert not called & {'aten::slice_scatter', 'aten::scatter_add'}


def test_ops_without_autograd_to_record_skip_it():
    """Under no_grad, or with no input that requires grad, the ops give
    what autograd's path gives, and outputs that record nothing; with one,
    autograd records them."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    w1, w2 = (w.requires_grad_() for w in weights('random', 32, 8))
    args = (x, x.mean((2, 3)), w1, None, w2, None, 4)
    recorded = torch.ops.mmmod.select_channels(*args)
    assert recorded[1].grad_fn is not None
    y = torch.randn(2, 4, 5, 5)
    fused = torch.ops.mmmod.fuse_channels(x, y, recorded[1], recorded[2], 3)
    assert fused.grad_fn is not None
    with torch.no_grad():
        got = torch.ops.mmmod.select_channels(*args)
        got_fused = torch.ops.mmmod.fuse_channels(x, y, got[1], got[2], 3)
    plain = (x, x.mean((2, 3)), w1.detach(), None, w2.detach(), None, 4)
    for out in (got, torch.ops.mmmod.select_channels(*plain)):
        assert not any(t.requires_grad for t in out)
        for a, b in zip(out, recorded):
            assert torch.equal(a, b)
    assert not got_fused.requires_grad and torch.equal(got_fused, fused)


def autograd_nodes_made(fn):
    """How many autograd nodes ``fn`` constructed: every node takes the
    thread's next sequence number, recorded or not (an autograd Function
    makes its node under ``torch.no_grad()`` too, then drops it)."""
    def next_nr():
        with torch.enable_grad():
            node = (torch.ones(1, requires_grad=True) * 2).grad_fn
        return node._sequence_nr()

    before = next_nr()
    fn()
    return next_nr() - before - 1


@needs_ext
@pytest.mark.skipif(
    not hasattr((torch.ones(1, requires_grad=True) * 2).grad_fn,
                '_sequence_nr'),
    reason=f'torch {torch.__version__}: no Node._sequence_nr')
def test_the_autograd_skip_path_runs():
    """With nothing to record, the C++ autograd kernels go straight to the
    device's kernel: no autograd Function, so no node (with the Function
    under no_grad, two nodes here); with something to record, one node per
    op."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    w1, w2 = weights('random', 32, 8)
    y = torch.randn(2, 4, 5, 5)

    def both_ops():
        _, scores, idx = torch.ops.mmmod.select_channels(
            x, x.mean((2, 3)), w1, None, w2, None, 4)
        torch.ops.mmmod.fuse_channels(x, y, scores, idx, 3)

    for requires_grad in (False, True):
        w1.requires_grad_(requires_grad)
        w2.requires_grad_(requires_grad)
        y.requires_grad_(requires_grad)
        with torch.no_grad():
            assert autograd_nodes_made(both_ops) == 0
        with torch.enable_grad():
            assert autograd_nodes_made(both_ops) == 2 * requires_grad


@needs_ext
def test_forward_mode_ad_is_refused_not_dropped():
    """The ops have no forward-mode AD: a tangent on an input is an error,
    under no_grad too, never silently dropped."""
    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    w1, w2 = weights('random', 32, 8)
    y, scores = torch.randn(2, 4, 5, 5), torch.rand(2, 4)
    idx = torch.randint(0, 32, (2, 4))
    for grad in (True, False):
        with torch.set_grad_enabled(grad), fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.ones_like(x))
            with pytest.raises(RuntimeError, match='forward-mode AD'):
                torch.ops.mmmod.select_channels(dual, x.mean((2, 3)), w1,
                                                None, w2, None, 4)
            with pytest.raises(RuntimeError, match='forward-mode AD'):
                torch.ops.mmmod.fuse_channels(dual, y, scores, idx, 3)


@needs_ext
def test_the_selector_kernel_computes_float32_itself():
    """Float32 at batch 1 runs the kernel's own linears (no ATen GEMM
    call); larger batches, float64 and weights that are not plain float32
    run ATen's linear, the composite's: the same channels and scores (to
    ATen's vectorised sigmoid, assert_scores_like); both agree with it."""
    torch.manual_seed(0)
    x = torch.randn(1, 64, 4, 4)
    w1, w2 = weights('random', 64, 16)
    b1, b2 = torch.randn(16), torch.randn(64)
    gemm = {'aten::linear', 'aten::mm', 'aten::addmm', 'aten::matmul'}
    op = torch.ops.mmmod.select_channels
    args = (x, x.mean((2, 3)), w1, b1, w2, b2, 8)
    assert not ops_run(lambda: op(*args)) & gemm
    logits = ops.selector_logits(*args[1:-1])
    x_k, scores, idx = op(*args)
    assert torch.equal(idx, logits.topk(8, 1).indices)
    assert_scores_of(scores, idx, logits)
    x3 = torch.randn(3, 64, 4, 4)
    for other in (tuple(a.double() if isinstance(a, torch.Tensor) else a
                        for a in args),
                  args[:4] + (w2.t().contiguous().t(), ) + args[5:],
                  (x3, x3.mean((2, 3))) + args[2:]):
        assert ops_run(lambda: op(*other)) & gemm
        x_k, scores, idx = op(*other)
        ref = ops._select_channels_composite(*other)
        assert torch.equal(x_k, ref[0]) and torch.equal(idx, ref[2])
        assert_scores_like(scores, ref[1])
    # a bias of another shape is an error, as at any batch size
    with pytest.raises(RuntimeError, match="selector's weights"):
        op(*args[:3], b1[:, None], *args[4:])


@needs_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64,
                                   torch.bfloat16])
@pytest.mark.parametrize('k', [4, 16, 40])
def test_the_selector_kernel_computes_the_scores_itself(dtype, k):
    """The CPU kernel's sigmoid of the k chosen logits is its own (no ATen
    call: each costs ~5-40 us from cold caches in a network): ATen's
    scalar form, assert_scores_like the composite's ATen sigmoid. The
    channels are the composite's, bit for bit."""
    if not cpu_supports(dtype):
        pytest.skip(f'torch {torch.__version__}: no {dtype} matmul on CPU')
    torch.manual_seed(k)
    for n in (1, 3):
        x = torch.randn(n, 64, 3, 3).to(dtype)
        w1, w2 = (w.to(dtype) for w in weights('random', 64, 16))
        args = (x, x.float().mean((2, 3)).to(dtype), w1, None, w2, None, k)
        called = ops_run(lambda: torch.ops.mmmod.select_channels(*args))
        assert 'mmmod::select_channels' in called
        assert not called & {'aten::sigmoid', 'aten::sigmoid_'}
        x_k, scores, idx = torch.ops.mmmod.select_channels(*args)
        ref = ops._select_channels_composite(*args)
        if n > 1 or dtype != torch.float32:  # the composite's logits
            assert torch.equal(idx, ref[2]) and torch.equal(x_k, ref[0])
            assert_scores_like(scores, ref[1])
        else:  # the kernel's own linears: scores of its top-k, to rounding
            assert_scores_of(scores, idx, ops.selector_logits(*args[1:-1]))


def lower_channel_first(logits, k):
    """The ``k`` best channels of each row by the ops' rule, written out:
    largest first, NaN above every number, exact ties to the lower
    channel."""
    def rank(row):
        return lambda i: (not row[i] != row[i], -row[i] if row[i] == row[i]
                          else 0, i)
    return torch.tensor([sorted(range(len(row)), key=rank(row))[:k]
                         for row in logits.double().tolist()])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64,
                                   torch.float16, torch.bfloat16])
def test_exact_ties_go_to_the_lower_channel(dtype):
    """Logits with many exact ties (and NaN, +0 and -0): the CPU kernel
    (its own top-k: no ATen top-k or sort ran), the GPU kernel and the
    composite choose the same channels in the same order, the order of
    ONNX's TopK (``torch.topk`` orders ties its own way)."""
    if not cpu_supports(dtype):
        pytest.skip(f'torch {torch.__version__}: no {dtype} matmul on CPU')
    kernels = {'composite': ops._select_channels_composite,
               'op': torch.ops.mmmod.select_channels}
    if HAS_EXT and hasattr(torch._ops.OpOverload, 'redispatch'):
        kernels['gpu'] = gpu_kernel('select_channels')
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = 1 + trial % 3
        channels = int(torch.randint(1, 70, (), generator=gen))
        k = int(torch.randint(1, channels + 1, (), generator=gen))
        # a dead selector (no weights reach the logits): logits = b2
        b2 = torch.randint(-2, 3, (channels, ), generator=gen).to(dtype)
        if trial % 4 == 1:
            b2[::3] = float('nan')
        elif trial % 4 == 2:
            b2[b2 == 0] = -0.0
        x = torch.randn(n, channels, 2, 3, generator=gen).to(dtype)
        w1 = torch.zeros(1, channels, dtype=dtype)
        w2 = torch.zeros(channels, 1, dtype=dtype)
        args = (x, channel_means(x), w1, None, w2, b2, k)
        want = lower_channel_first(b2.expand(n, -1), k)
        for name, kernel in kernels.items():
            x_k, scores, idx = kernel(*args)
            assert torch.equal(idx, want), (name, trial)
            assert torch.equal(x_k, x.gather(1, ops._expand(idx, x)))
            torch.testing.assert_close(scores, b2[idx].sigmoid(), rtol=0,
                                       atol=0, equal_nan=True)
    if HAS_EXT:
        called = ops_run(lambda: torch.ops.mmmod.select_channels(*args))
        assert 'mmmod::select_channels' in called
        assert not called & {'aten::topk', 'aten::sort'}


@needs_ext
def test_cpu_kernels_are_registered_with_the_dispatcher():
    for op in ('select_channels', 'fuse_channels'):
        assert cpu_kernel_registered(op)
        # and their autograd, in C++: a call without autograd runs no
        # Python kernel
        autograd = [line for line in torch._C._dispatch_dump(
            f'mmmod::{op}').splitlines() if line.startswith('Autograd')]
        assert len(autograd) == 1 and 'ops.cpp' in autograd[0], autograd
    x = torch.randn(1, 16, 3, 3)
    w1, w2 = torch.randn(4, 16), torch.randn(16, 4)
    called = ops_run(lambda: torch.ops.mmmod.select_channels(
        x, x.mean((2, 3)), w1, None, w2, None, 4))
    assert 'mmmod::select_channels' in called
    assert 'aten::gather' not in called  # the composite gathers


@needs_ext
@needs_redispatch
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_gpu_kernels_match_the_composite(layout):
    """The extension's CUDA kernels (the composites in C++ ATen ops: an
    eager call on the GPU runs no Python) give the composite's outputs bit
    for bit, in its layouts, on fuzzed shapes, c, batches, biases and
    fusions; run here on CPU tensors (conftest.gpu_kernel)."""
    select, fuse = gpu_kernel('select_channels'), gpu_kernel('fuse_channels')
    gen = torch.Generator().manual_seed(len(layout))
    for trial in range(12):
        x, k = fuzzed_map(gen, layout, trial)
        channels = x.shape[1]
        hidden = max(1, channels // 4)
        w1, w2 = weights('random' if trial % 3 else 'exact-ties', channels,
                         hidden)
        b1 = torch.randn(hidden) if trial % 2 else None
        b2 = torch.randn(channels) if trial % 4 == 1 else None
        args = (x, x.mean((2, 3)), w1, b1, w2, b2, k)
        got = select(*args)
        for g, r in zip(got, ops._select_channels_composite(*args)):
            assert torch.equal(g, r) and g.stride() == r.stride(), trial
        y = LAYOUTS[layout](torch.randn_like(got[0]))
        for fusion in FUSIONS:
            fargs = (x, y, got[1], got[2], OFFSET[fusion](channels, k))
            out = fuse(*fargs)
            want = ops._fuse_channels_composite(*fargs)
            assert torch.equal(out, want), (trial, fusion)
            assert out.stride() == want.stride(), (trial, fusion)
    with pytest.raises(RuntimeError, match='k=0 is not in'):
        select(*args[:-1], 0)
    with pytest.raises(RuntimeError, match=r'offset=\d+ \+ k'):
        fuse(x, y, got[1], got[2], channels)


@needs_opcheck
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_opcheck(layout):
    """torch.library.opcheck: schema, fake tensors (shapes and strides),
    autograd registration and AOT dispatch agree with the kernels."""
    torch.manual_seed(0)
    x = LAYOUTS[layout](torch.randn(2, 8, 3, 5)).requires_grad_()
    w1, w2 = torch.randn(2, 8), torch.randn(8, 2)
    b1 = torch.randn(2)
    means = x.detach().mean((2, 3))  # a leaf: its gradient is checked too
    for t in (means, w1, w2, b1):
        t.requires_grad_()
    assert all(v == 'SUCCESS' for v in torch.library.opcheck(
        torch.ops.mmmod.select_channels.default,
        (x, means, w1, b1, w2, None, 3)).values())
    x_k, s, idx = torch.ops.mmmod.select_channels(
        x.detach(), means.detach(), w1.detach(), None, w2.detach(), None, 3)
    y = torch.randn_like(x_k).requires_grad_()
    s = s.detach().requires_grad_()
    for offset in (0, 5, -1):
        assert all(v == 'SUCCESS' for v in torch.library.opcheck(
            torch.ops.mmmod.fuse_channels.default,
            (x, y, s, idx, offset)).values())


def test_without_the_extension_in_a_subprocess():
    """MMMOD_WITH_EXT=0: no C++ kernel, and the ops (composite on CPU)
    still train and infer as with it."""
    script = textwrap.dedent('''
        import torch
        from mmmod.layers import HAS_EXT, MoDBlock
        from mmmod.layers.ops import _fuse_channels_composite
        import torch.nn as nn
        assert not HAS_EXT
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(
            'mmmod::fuse_channels', 'CPU')
        torch.manual_seed(0)
        for fusion in ('first-k', 'last-k', 'original'):
            block = MoDBlock(32, lambda k: nn.Conv2d(k, k, 3, padding=1),
                             c=8, fusion=fusion, reduction=4)
            x = torch.randn(2, 32, 5, 5, requires_grad=True)
            block(x).square().sum().backward()
            assert x.grad.abs().sum() > 0
            assert block.selector.fc1.weight.grad.abs().sum() > 0
            block.eval()
            with torch.no_grad():
                x_k, s, idx = block._select_channels(x)
                want = _fuse_channels_composite(x, block.block(x_k), s, idx,
                                                block._fusion_offset)
                assert torch.equal(block(x), want)
                # the inference form's one call, in Python
                block.switch_to_deploy()
                torch.testing.assert_close(block(x.clone()), want)
        block = MoDBlock(32, lambda k: nn.Conv2d(k, k, 3, padding=1), c=8)
        with torch.autocast('cpu', dtype=torch.bfloat16):  # AMP's forward
            out = block(torch.randn(2, 32, 5, 5).bfloat16())
        out.float().sum().backward()
        assert block.selector.fc1.weight.grad.dtype == torch.float32
        w = torch.randn(4, 4, 1, 1, requires_grad=True)
        try:  # no backward: refused, as with the extension
            torch.ops.mmmod.conv_chain(torch.randn(1, 4, 3, 3), [w],
                                       [torch.zeros(4)], [0, 0, 1, 1, 1, 0],
                                       False, 0)
            raise AssertionError('conv_chain ran under autograd')
        except RuntimeError as e:
            assert 'conv_chain has no autograd' in str(e), e
        composite, = [line for line in torch._C._dispatch_dump(
            'mmmod::mod_block_').splitlines()
            if line.startswith('CompositeImplicitAutograd')]
        assert 'ops.cpp' not in composite  # (ops.py's, on every torch)
        print('ok')
    ''')
    env = dict(os.environ, MMMOD_WITH_EXT='0')
    res = subprocess.run([sys.executable, '-c', script], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 'ok'


def test_an_extension_that_does_not_load_is_named_once(tmp_path):
    """A built mmmod._ext that does not load (built against another torch,
    say): one warning naming the cause and the rebuild, the ops on their
    pure-PyTorch forms, HAS_EXT false."""
    import shutil

    import mmmod
    copy = tmp_path / 'mmmod'
    shutil.copytree(os.path.dirname(mmmod.__file__), copy,
                    ignore=shutil.ignore_patterns('_ext*', '__pycache__'))
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (copy / f'_ext{suffix}').write_bytes(b'not a shared library')
    script = textwrap.dedent('''
        import warnings
        warnings.simplefilter('always')
        with warnings.catch_warnings(record=True) as caught:
            import mmmod
            import mmmod.layers.ops as ops
        assert mmmod.__file__.startswith(%r), mmmod.__file__
        assert not ops.HAS_EXT
        texts = [str(w.message) for w in caught if 'mmmod._ext' in
                 str(w.message)]
        assert len(texts) == 1, texts
        print(texts[0])
    ''' % str(tmp_path))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([sys.executable, '-c', script], env=env,
                         capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert 'is built but does not load' in res.stdout
    assert 'pip install --no-build-isolation --no-deps -e .' in res.stdout


def test_bad_arguments_get_clear_errors():
    x = torch.randn(1, 8, 2, 2)
    w1, w2 = torch.randn(2, 8), torch.randn(8, 2)
    with pytest.raises(RuntimeError, match='k=9 is not in'):
        torch.ops.mmmod.select_channels(x, x.mean((2, 3)), w1, None, w2,
                                        None, 9)
    with pytest.raises(RuntimeError, match=r'means must have shape \(1, 8\)'):
        torch.ops.mmmod.select_channels(x, x.mean((1, 2)), w1, None, w2,
                                        None, 2)
    y, s = torch.randn(1, 2, 2, 2), torch.rand(1, 2)
    with pytest.raises(RuntimeError, match='offset=7'):
        torch.ops.mmmod.fuse_channels(x, y, s, torch.zeros(1, 2).long(), 7)
    with pytest.raises(RuntimeError, match='does not fit'):
        torch.ops.mmmod.fuse_channels(x, torch.randn(1, 2, 3, 2), s,
                                      torch.zeros(1, 2).long(), 0)
    with pytest.raises(RuntimeError, match=r'scores must have shape \(1, 2\)'):
        torch.ops.mmmod.fuse_channels(x, y, torch.rand(2),
                                      torch.zeros(1, 2).long(), 0)
    with pytest.raises(RuntimeError, match='idx must be int64'):
        torch.ops.mmmod.fuse_channels(x, y, s, torch.zeros(1, 2), 0)
    with pytest.raises(RuntimeError, match='offset=5 \\+ k=4 exceeds'):
        torch.ops.mmmod.mod_block_(x.clone(), w1, None, w2, None, 4,
                                   [torch.randn(4, 4, 1, 1)], [torch.zeros(4)],
                                   [0, 0, 1, 1, 1, 0], False, 0, 5)


def test_the_selector_ignores_autocast():
    """The selector runs in its weights' dtype under autocast too: with a
    float32 map the same channels, values and gradients as without autocast
    at every batch size (the batch-1 linears and ATen's alike); with a
    bfloat16 map (autocast's convs make one) those of its float32 copy,
    scores in the map's dtype, the selector's gradients those of the copy
    (the sigmoid's slope in float32, not from the bfloat16 scores)."""
    torch.manual_seed(0)
    x = torch.randn(3, 64, 5, 5)
    w1, w2 = weights('random', 64, 8)
    b1, b2 = torch.randn(w1.shape[0]), torch.randn(64)
    params = [t.requires_grad_() for t in (w1, b1, w2, b2)]
    kernels = {'op': torch.ops.mmmod.select_channels}
    if HAS_EXT and hasattr(torch._ops.OpOverload, 'redispatch'):
        kernels['gpu kernel'] = gpu_kernel('select_channels')

    def run(kernel, x, autocast, means=None):
        x = x.detach().requires_grad_()
        means = channel_means(x) if means is None else means
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            x_k, scores, idx = kernel(x, means, w1, b1, w2, b2, 8)
        (x_k.float().square().sum() + scores.float().sum()).backward()
        grads = [x.grad] + [p.grad for p in params]
        for p in params:
            p.grad = None
        return (x_k, scores, idx), grads

    for name, kernel in kernels.items():
        chosen = run(kernel, x, False)[0][2]
        for batch in (1, 3):
            for i in range(0, 3, batch):
                part = x[i:i + batch]
                want, want_grads = run(kernel, part, False)
                got, grads = run(kernel, part, True)
                for a, b in zip([*got, *grads], [*want, *want_grads]):
                    assert torch.equal(a, b), (name, batch)
                assert torch.equal(got[2], chosen[i:i + batch])
        half = x.bfloat16()  # (its means: a bfloat16 sum, as the copy's)
        want, want_grads = run(kernel, half.float(), False,
                               channel_means(half).float())
        got, grads = run(kernel, half, True)
        assert got[1].dtype == torch.bfloat16
        assert torch.equal(got[2], want[2]), name
        assert torch.equal(got[1], want[1].bfloat16()), name
        assert torch.equal(got[0].float(), want[0]), name
        for g, w in zip(grads[1:], want_grads[1:]):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_a_mixed_precision_training_step(fusion):
    """As mmengine's AmpOptimWrapper trains: the forward under autocast
    (its convs make bfloat16 maps), the backward after it; every parameter
    gets a finite gradient in its own dtype."""
    block = make_block(fusion=fusion).train()
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(nn.functional.conv2d(x, torch.eye(32)[:, :, None, None]))
    assert out.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        m = nn.functional.conv2d(x, torch.eye(32)[:, :, None, None])
        scores, idx = block.select(m)  # the op's, and the module's own:
        assert torch.equal(scores, block.selector(m).gather(1, idx).to(
            scores.dtype))
    out.float().square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype, name
        assert p.grad.isfinite().all(), name
    assert block.selector.fc1.weight.grad.abs().sum() > 0


def test_integer_maps_are_refused_where_they_enter():
    """An integer map is refused by the ops (the convs would run in
    integers and the scores, in (0, 1), scale by 0), also by a deployed
    block, which would otherwise return its input."""
    torch.manual_seed(0)
    x = torch.randint(0, 5, (2, 16, 3, 3))
    w1, w2 = torch.randn(4, 16), torch.randn(16, 4)
    calls = {
        'select_channels': lambda: torch.ops.mmmod.select_channels(
            x, x.float().mean((2, 3)), w1, None, w2, None, 4),
        'fuse_channels': lambda: torch.ops.mmmod.fuse_channels(
            x, x[:, :4], torch.ones(2, 4, dtype=x.dtype),
            torch.zeros(2, 4, dtype=torch.long), 0),
    }
    for op, call in calls.items():
        with pytest.raises(RuntimeError, match=f'mmmod::{op}: x must be a '
                           'floating-point map, got'):
            call()
    block = make_block(16, c=4).eval().switch_to_deploy()
    with torch.no_grad(), pytest.raises(
            RuntimeError, match='must be a floating-point map'):
        block(x)


def test_selector_weights_must_fit_the_map():
    """A logit per channel of x, or a clear error: a w2 with more rows than x
    has channels would let top-k name channels x does not have (the kernel
    read planes past x's end). Checked by every kernel, the composite and the
    fake alike."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    x = torch.randn(2, 4, 3, 3)
    means, w1 = x.mean((2, 3)), torch.randn(3, 4)
    kernels = [torch.ops.mmmod.select_channels, ops._select_channels]
    if HAS_EXT and hasattr(torch._ops.OpOverload, 'redispatch'):
        kernels.append(gpu_kernel('select_channels'))
    bad = {'w2 rows': (w1, None, torch.randn(40, 3), None),
           'w2 columns': (w1, None, torch.randn(4, 2), None),
           'w1 columns': (torch.randn(3, 5), None, torch.randn(4, 3), None),
           'b2': (w1, None, torch.randn(4, 3), torch.randn(40)),
           'dtypes': (w1, None, torch.randn(4, 3).double(), None)}
    for name, (a, b, c, d) in bad.items():
        for kernel in kernels:
            with pytest.raises(RuntimeError, match='select_channels: the '
                               "selector's weights"):
                kernel(x, means, a, b, c, d, 1)
        mode = FakeTensorMode()
        fake = [mode.from_tensor(t) if t is not None else None
                for t in (x, means, a, b, c, d)]
        with mode, pytest.raises(RuntimeError, match="selector's weights"):
            torch.ops.mmmod.select_channels(*fake, 1)
    for batch in (1, 2):  # the batch-1 linears and ATen's: both refuse
        with pytest.raises(RuntimeError, match='for x\'s 4 channels'):
            torch.ops.mmmod.select_channels(
                x[:batch], x[:batch].mean((2, 3)), w1, None,
                torch.randn(1 << 20, 3), None, 1)


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_fuse_adds_up_repeated_indices(layout):
    """As scatter_add: a channel named twice in idx gets both additions."""
    x = LAYOUTS[layout](torch.randn(2, 8, 3, 3))
    y = LAYOUTS[layout](torch.randn(2, 2, 3, 3))
    s, idx = torch.rand(2, 2), torch.tensor([[3, 3], [0, 5]])
    got = torch.ops.mmmod.fuse_channels(x, y, s, idx, -1)
    assert torch.allclose(got, ops._fuse_channels_composite(x, y, s, idx, -1))
    assert torch.allclose(got[0, 3], x[0, 3] + y[0, 0] * s[0, 0] +
                          y[0, 1] * s[0, 1])


@needs_ext
def test_fuse_rejects_channel_indices_out_of_range():
    x, y = torch.randn(1, 8, 2, 2), torch.randn(1, 2, 2, 2)
    s = torch.rand(1, 2)
    with pytest.raises(RuntimeError, match=r'index 8 is not in \[0, 8\)'):
        torch.ops.mmmod.fuse_channels(x, y, s, torch.tensor([[1, 8]]), -1)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_gradients_equal_the_composite(fusion):
    """The ops' backward (register_autograd) gives autograd's gradients of
    the composite, for the map and every weight."""
    block = make_block(fusion=fusion).train()
    block.selector.fc1.bias = nn.Parameter(torch.randn(8))
    x = torch.randn(3, 32, 5, 4)
    grads = []
    for run in ('ops', 'composite'):
        block.zero_grad()
        xr = x.clone().requires_grad_()
        if run == 'ops':
            out = block(xr)
        else:
            fc1, fc2 = block.selector.fc1, block.selector.fc2
            x_k, s, idx = ops._select_channels_composite(
                xr, xr.mean((2, 3)), fc1.weight, fc1.bias, fc2.weight,
                fc2.bias, block.k)
            out = ops._fuse_channels_composite(xr, block.block(x_k), s, idx,
                                               block._fusion_offset)
        weight = torch.linspace(-1, 1, out.numel()).view_as(out)
        (out * weight).sum().backward()
        grads.append([xr.grad] + [p.grad for p in block.parameters()])
    for g, r in zip(*grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)


def test_gradcheck_of_the_ops():
    torch.manual_seed(0)
    dbl = dict(dtype=torch.double)
    x = torch.randn(2, 6, 3, 3, **dbl, requires_grad=True)
    w1 = torch.randn(3, 6, **dbl, requires_grad=True)
    b1 = torch.randn(3, **dbl, requires_grad=True)
    w2 = torch.randn(6, 3, **dbl, requires_grad=True)
    b2 = torch.randn(6, **dbl, requires_grad=True)
    means = torch.randn(2, 6, **dbl, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: torch.ops.mmmod.select_channels(*a, 3)[:2],
        (x, means, w1, b1, w2, b2))
    y = torch.randn(2, 3, 3, 3, **dbl, requires_grad=True)
    s = torch.rand(2, 3, **dbl, requires_grad=True)
    idx = torch.tensor([[5, 0, 2], [1, 4, 3]])
    for offset in (-1, 0, 3):
        assert torch.autograd.gradcheck(
            lambda x, y, s: torch.ops.mmmod.fuse_channels(x, y, s, idx,
                                                          offset), (x, y, s))


# ---------------------------------------------------- the block, eval vs train


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('kind', ['random', 'saturated', 'exact-ties',
                                  'near-ties'])
def test_eval_equals_training_graph(fusion, layout, kind):
    block = make_block(fusion=fusion)
    with torch.no_grad():
        w1, w2 = weights(kind, 32, 8)
        block.selector.fc1.weight.copy_(w1)
        block.selector.fc2.weight.copy_(w2)
    for batch in (1, 3, 8):
        x = LAYOUTS[layout](torch.randn(batch, 32, 5, 3))
        with torch.no_grad():
            _, idx = block.select(x)
            out = block(x)
        want, want_idx = training_graph(block, x)
        if kind == 'near-ties' and not torch.equal(idx, want_idx):
            # the kernel's float32 logits differ from the composite's by
            # rounding: another near-tied channel, then its output
            fc1, fc2 = block.selector.fc1, block.selector.fc2
            logits = ops.selector_logits(x.mean((2, 3)), fc1.weight,
                                         fc1.bias, fc2.weight, fc2.bias)
            assert_a_top_k(idx, logits, block.k)
            want = ops._fuse_channels_composite(
                x, block.block(x.gather(1, ops._expand(idx, x))),
                logits.gather(1, idx).sigmoid(), idx, block._fusion_offset)
        else:
            assert torch.equal(idx, want_idx)
        assert torch.allclose(out, want, atol=1e-5, rtol=0)
    called = ops_run(lambda: block(x))
    assert {'mmmod::select_channels', 'mmmod::fuse_channels'} <= called


def test_input_is_never_written():
    block = make_block(fusion='first-k')
    for train in (False, True):
        block.train(train)
        x = torch.randn(2, 32, 4, 4)
        kept = x.clone()
        out = block(x)
        assert torch.equal(x, kept)
        assert out.data_ptr() != x.data_ptr()


def test_empty_map_matches_the_reference_in_a_subprocess():
    """H*W == 0 (the old kernel died of SIGFPE): the same result or the
    same error as the composite."""
    script = textwrap.dedent('''
        import torch, torch.nn as nn
        from mmmod.layers import MoDBlock, ops
        block = MoDBlock(32, lambda k: nn.Conv2d(k, k, 1), c=8).eval()
        fc1, fc2 = block.selector.fc1, block.selector.fc2
        def ref(x):
            x_k, s, i = ops._select_channels_composite(
                x, x.mean((2, 3)), fc1.weight, fc1.bias, fc2.weight,
                fc2.bias, block.k)
            return ops._fuse_channels_composite(x, block.block(x_k), s, i, 0)
        for shape in [(1, 32, 0, 5), (2, 32, 3, 0), (0, 32, 4, 4)]:
            x = torch.randn(shape)
            results = []
            for f in (block, ref):
                try:
                    with torch.no_grad():
                        results.append(f(x))
                except Exception as e:
                    results.append(type(e))
            a, b = results
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor)
                    else a is b), (shape, a, b)
        print('ok')
    ''')
    res = subprocess.run([sys.executable, '-c', script], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.strip() == 'ok'


def test_concurrent_first_forwards():
    """Two threads doing forwards on one model, each after ``eval()`` (a
    first forward: the old code traced the block with torch.fx then,
    patching ``nn.Module.__call__`` for the whole process), and an unrelated
    model in a third: no crash, the single-threaded results."""
    import threading
    block = make_block(fusion='original')
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1),
                          nn.ReLU()).eval()
    xs = [torch.randn(2, 32, 6, 6) for _ in range(2)]
    xo = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = [block(x) for x in xs] + [other(xo)]
    got, errors, done = [[], [], []], [], threading.Event()

    def run(i, model, x):
        try:
            with torch.no_grad():
                while not done.is_set():
                    if i < 2:
                        model.eval()
                    got[i].append(model(x))
                    if i < 2 and len(got[i]) == 30:
                        return
        except Exception as e:  # noqa: B902  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=a) for a in
               [(0, block, xs[0]), (1, block, xs[1]), (2, other, xo)]]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join()
    done.set()
    threads[2].join()
    assert not errors
    for outs, w in zip(got, want):
        assert outs and all(torch.equal(o, w) for o in outs)


def test_model_built_in_inference_mode_works_in_eval():
    with torch.inference_mode():
        block = make_block()
        x = torch.randn(2, 32, 4, 4)
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            out = block(x)
    # the same weights (same seed), built normally
    want, _ = training_graph(make_block(), x.clone())
    assert torch.allclose(out, want, atol=1e-5)


def test_weights_edited_through_data_take_effect():
    """What mmengine's EMA does: ``p.data.copy_(...)`` between forwards."""
    block = make_block()
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        before = block(x)
        block.block[0].weight.data.mul_(-2)
        block.selector.fc2.weight.data.copy_(
            torch.randn_like(block.selector.fc2.weight))
        after = block(x)
    want, _ = training_graph(block, x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, want, atol=1e-5)


def test_bn_in_train_mode_inside_an_eval_model_updates_its_stats():
    """AdaBN: BN layers set back to train mode inside an eval model."""
    block = make_block()
    bn = block.block[1]
    bn.train()
    before = bn.running_mean.clone()
    with torch.no_grad():
        block(torch.randn(4, 32, 4, 4) + 3)
    assert not torch.equal(bn.running_mean, before)


def test_hooks_fire_and_see_their_input_unchanged():
    block = make_block()
    seen = {}
    def inner_hook(module, args, out):
        seen['inner'] = out.shape

    def keep_input(module, args):
        seen['input'] = args[0], args[0].clone()

    block.block.register_forward_hook(inner_hook)
    block.register_forward_pre_hook(keep_input)
    with torch.no_grad():
        block(torch.randn(1, 32, 4, 4))
    assert seen['inner'] == (1, 4, 4, 4)
    kept, copy = seen['input']
    assert torch.equal(kept, copy)


def test_backbone_leaves_the_input_of_its_mod_blocks_alone():
    """The mmmod backbones' MoD blocks return new tensors: a hook that keeps
    a block's input sees it unchanged (the old backbones set
    ``inplace=True`` and overwrote it)."""
    from mmmod.models import ResNetMoD_CIFAR
    model = ResNetMoD_CIFAR(depth=18)
    model.eval()
    mod_block = next(m for m in model.modules() if isinstance(m, MoDBlock))
    seen = []
    mod_block.register_forward_pre_hook(
        lambda m, args: seen.append((args[0], args[0].clone())) and None)
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 16))
    kept, copy = seen[0]
    assert torch.equal(kept, copy)


# ----------------------------------------- compile, export, ONNX Runtime, CUDA


@pytest.mark.slow
@pytest.mark.parametrize('fusion', FUSIONS)
def test_compiled_equals_training_graph(fusion):
    block = make_block(fusion=fusion)
    compiled = torch.compile(block)
    for batch, layout in [(1, 'contiguous'), (3, 'channels_last')]:
        x = LAYOUTS[layout](torch.randn(batch, 32, 5, 7))
        with torch.no_grad():
            out = compiled(x)
        want, _ = training_graph(block, x)
        assert torch.allclose(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64,
                                   torch.bfloat16, torch.float16])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_channel_means_are_atens_mean_to_the_bit(dtype, layout):
    for shape in [(2, 64, 7, 5), (1, 256, 56, 56), (3, 8, 1, 1)]:
        x = LAYOUTS[layout](torch.randn(shape).to(dtype) * 3)
        means = ops.channel_means(x)
        assert means.dtype == dtype
        assert torch.equal(means, x.mean((2, 3))), shape


def test_compiles_where_the_environment_sets_ci(monkeypatch):
    """Inductor refuses an implicit fallback for an op with a registered
    decomposition (the ops have them, for ONNX) when CI is set, as GitHub
    Actions sets it: the ops declare their fallbacks, so it compiles and
    runs their kernels."""
    import torch._inductor.config as inductor_config
    monkeypatch.setenv('CI', 'true')
    # lower anew (config.patch restores them; a setattr of an alias does not)
    caches = {c: c == 'force_disable_caches'
              for c in ('fx_graph_cache', 'force_disable_caches')
              if hasattr(inductor_config, c)}
    torch._dynamo.reset()
    block = make_block(fusion='first-k')
    x = torch.randn(2, 32, 5, 7)
    compiled = torch.compile(block, backend='inductor')
    with torch.no_grad(), inductor_config.patch(caches):
        called = ops_run(lambda: compiled(x))
        out = compiled(x)
    assert {'mmmod::select_channels', 'mmmod::fuse_channels'} <= called
    want, _ = training_graph(block, x)
    assert torch.allclose(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_exported_program_keeps_the_ops_and_equals_eager(fusion):
    block = make_block(fusion=fusion)
    x = torch.randn(2, 32, 5, 3)
    ep = torch.export.export(block, (x, ))
    targets = {str(n.target) for n in ep.graph.nodes}
    assert {'mmmod.select_channels.default',
            'mmmod.fuse_channels.default'} <= targets
    x = torch.randn(2, 32, 5, 3)  # another input: other channels chosen
    want, _ = training_graph(block, x)
    assert torch.allclose(ep.module()(x), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_onnx_runtime_equals_training_graph(fusion, tmp_path):
    from mmmod.deployment import export, session
    block = make_block(fusion=fusion)
    path = str(tmp_path / 'block.onnx')
    export(block, torch.randn(2, 32, 5, 3), path, opset=18)
    sess = session(path)
    for batch in (2, ):
        x = torch.randn(batch, 32, 5, 3)
        (got, ) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        want, _ = training_graph(block, x)
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-5, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('fusion', FUSIONS)
def test_cuda_kernels_equal_the_training_graph(fusion):
    """On the GPU the ops run the extension's CUDA kernels where it is
    built (the composites otherwise) and give the training graph's output
    and gradients."""
    block = make_block(fusion=fusion)
    x = torch.randn(3, 32, 5, 3)
    want, _ = training_graph(block, x)
    block.cuda()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True,
                                                     allow_tf32=False):
        out = block(x.cuda())
        called = ops_run(lambda: block(x.cuda()))
    assert torch.allclose(out.cpu(), want, atol=1e-5)
    assert {'mmmod::select_channels', 'mmmod::fuse_channels'} <= called
    # the C++ kernel adds in place into its own copy; the composite's
    # slice_scatter and scatter_add make new maps
    composite = bool(called & {'aten::slice_scatter', 'aten::scatter_add'})
    assert composite != HAS_EXT, called
    xc = x.cuda().requires_grad_()
    block.train()(xc).sum().backward()
    assert xc.grad is not None
