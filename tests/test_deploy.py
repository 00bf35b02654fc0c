"""The inference form of the MoD block (``switch_to_deploy``, ``deploy=True``):
BN folded, the Conv-Block as one ``mmmod::conv_chain`` call, the fusion added
into the input in place (``ops.fuse_channels_``). It chooses the training
form's channels and equals its output (1e-5 eager, 1e-4 compiled and in ONNX
Runtime); its kernel equals its composite; it writes only the channels it
documents; it refuses training; the fast paths are asserted to have run."""
import copy
import threading

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from conftest import (cpu_supports, gpu_kernel, needs_opcheck,
                      needs_redispatch)

from mmmod.analysis import benchmark as bench
from mmmod.layers import (FUSIONS, HAS_EXT, ConvChain, MoDBlock,
                          fold_conv_bn, mod_blocks, ops, switch_to_deploy)
from mmmod.utils.timing import skip_mod_blocks

CL = torch.channels_last
needs_ext = pytest.mark.skipif(not HAS_EXT, reason='mmmod._ext not built')


def op_counts(fn):
    """``{op: calls}`` of ``fn()`` (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()}


def ops_run(fn):
    return set(op_counts(fn))


def randomise_norms(model, seed=0):
    """BN statistics and affine parameters unlike their init, so that a
    wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
    return model


def backbone(kind, **kwargs):
    from mmpretrain.registry import MODELS
    cfg = {
        # k = 1 .. 32 channels, as the paper's c = 64 on full widths
        'resnet50': dict(type='ResNetMoD', depth=50, base_channels=16, c=16),
        'resnet18': dict(type='ResNetMoD', depth=18, base_channels=16, c=16),
        'resnext': dict(type='ResNeXtMoD', depth=50, groups=4,
                        width_per_group=4, base_channels=16, c=16),
        'mobilenet': dict(type='MobileNetV2MoD', widen_factor=0.5, c=8),
        'vgg': dict(type='VGGMoD', depth=11, c=64, num_classes=-1),
    }[kind]
    cfg.update(kwargs)
    torch.manual_seed(0)
    model = randomise_norms(MODELS.build(cfg))
    model.eval()  # (stock backbones' train() returns None: no chaining)
    return model


def deployed_equals_training(block, x):
    """``block`` (norms randomised) switched to its inference form, after
    checking that this gives the training form's output on ``x``."""
    block = randomise_norms(block).eval()
    with torch.no_grad():
        ref = block(x)
        block.switch_to_deploy()
        torch.testing.assert_close(block(x.clone()), ref, rtol=1e-5,
                                   atol=1e-5)
    return block


def outputs(model, x):
    out = model(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


# --- the kernels ---------------------------------------------------------


def chain_case(seed, layout, dtype=torch.float32):
    """A random conv chain: 1-3 convs (1x1, 3x3, dilated, depthwise),
    random activations, residual or not."""
    g = torch.Generator().manual_seed(seed)
    r = lambda n: int(torch.randint(n, (1, ), generator=g))  # noqa: E731
    k = 1 + r(12)
    n, h, w = 1 + r(3), 1 + r(9), 1 + r(9)
    x = torch.randn(n, k, h, w, generator=g, dtype=dtype)
    x = x.contiguous(memory_format=CL) if layout == 'channels_last' else x
    weights, biases, meta, channels = [], [], [], k
    for _ in range(1 + r(3)):
        ksize, dil = (1, 1) if r(2) else (3, 1 + r(2))
        groups = channels if (ksize == 3 and r(3) == 0) else 1
        out = channels if groups > 1 else 1 + r(10)
        weights.append(torch.randn(out, channels // groups, ksize, ksize,
                                   generator=g, dtype=dtype))
        biases.append(torch.randn(out, generator=g, dtype=dtype))
        pad = dil * (ksize - 1) // 2
        meta += [pad, pad, dil, dil, groups, r(3)]
        channels = out
    residual = channels == k and bool(r(2))
    return x, weights, biases, meta, residual, r(3)


@needs_ext
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('seed', range(12))
def test_conv_chain_kernel_equals_the_composite(seed, layout):
    args = chain_case(seed, layout)
    ran = ops_run(lambda: torch.ops.mmmod.conv_chain(*args))
    assert 'aten::convolution' not in ran  # the C++ kernel, not oneDNN
    out = torch.ops.mmmod.conv_chain(*args)
    ref = ops._conv_chain_composite(*args)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert out.is_contiguous(memory_format=ops._layout(args[0]))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out64 = torch.ops.mmmod.conv_chain(*chain_case(seed, layout, torch.double))
    ref64 = ops._conv_chain_composite(*chain_case(seed, layout, torch.double))
    torch.testing.assert_close(out64, ref64, rtol=1e-12, atol=1e-12)
    # times the scores, in the kernel's last pass: the composite's rounding
    scale = torch.rand(out.shape[:2], generator=torch.Generator().manual_seed(
        seed))
    scaled = torch.ops.mmmod.conv_chain(*args, scale)
    assert torch.equal(scaled, out * scale[:, :, None, None])
    torch.testing.assert_close(
        scaled, ops._conv_chain_composite(*args, scale), rtol=1e-5, atol=1e-5)


@needs_ext
@needs_redispatch
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_conv_chain_gpu_kernel_equals_the_composite(layout):
    """The CUDA kernel (the composite in C++ ATen ops, with the
    activations, residual add and scale in place on its own tensors) gives
    the composite's output bit for bit, in x's layout; run here on CPU
    tensors (conftest.gpu_kernel)."""
    chain = gpu_kernel('conv_chain')
    for seed in range(12):
        args = chain_case(seed, layout)
        scale = torch.rand(args[0].shape[0], args[1][-1].shape[0])
        for extra in ((), (scale, )):
            out = chain(*args, *extra)
            ref = ops._conv_chain_composite(*args, *extra)
            assert torch.equal(out, ref), seed
            assert out.is_contiguous(memory_format=ops._layout(args[0]))
    with pytest.raises(RuntimeError, match='does not take'):
        chain(args[0], [torch.randn(2, args[0].shape[1] + 1, 1, 1)],
              [torch.randn(2)], [0, 0, 1, 1, 1, 0], False, 0)


@needs_ext
@needs_redispatch
def test_conv_chain_computes_in_its_maps_dtype_under_autocast():
    """As its fake says, the chain's output has its map's dtype under
    autocast too: the ATen convs of the CUDA kernel (here on CPU tensors)
    and of the CPU kernel's half path do not autocast (they would compute,
    and return, bfloat16)."""
    x, weights, biases, meta, _, _ = chain_case(3, 'contiguous')
    args = (x, weights, biases, meta, False, 1, torch.rand(x.shape[0],
                                                          weights[-1].shape[0]))
    gpu = gpu_kernel('conv_chain')
    want = gpu(*args)
    maps = [(gpu, args)]
    if cpu_supports(torch.half):
        half = (x.half(), [w.half() for w in weights],
                [b.half() for b in biases], *args[3:6], args[6].half())
        maps.append((torch.ops.mmmod.conv_chain, half))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(gpu(*args), want)
        for op, a in maps:
            assert op(*a).dtype == a[0].dtype


def test_conv_chain_rejects_bad_arguments():
    x = torch.randn(1, 4, 5, 5)
    w, b = torch.randn(4, 4, 3, 3), torch.zeros(4)
    with pytest.raises(RuntimeError, match='conv_chain'):  # same-size conv
        torch.ops.mmmod.conv_chain(x, [w], [b], [0, 0, 1, 1, 1, 0], False, 0)
    with pytest.raises(RuntimeError, match='conv_chain'):  # channels
        torch.ops.mmmod.conv_chain(x[:, :3], [w], [b], [1, 1, 1, 1, 1, 0],
                                   False, 0)
    with pytest.raises(RuntimeError, match='conv_chain'):  # meta length
        torch.ops.mmmod.conv_chain(x, [w], [b], [1, 1, 1, 1, 1], False, 0)
    for scale in (torch.ones(1, 3), torch.ones(4)):  # (N, C_out)
        with pytest.raises(RuntimeError, match='scale must have shape'):
            torch.ops.mmmod.conv_chain(x, [w], [b], [1, 1, 1, 1, 1, 0],
                                       False, 0, scale)
        with pytest.raises(RuntimeError, match='scale must have shape'):
            ops._conv_chain(x, [w], [b], [1, 1, 1, 1, 1, 0], False, 0, scale)
    # the kernel's, the composite's and the fake's checks alike
    meta = [1, 1, 1, 1, 1, 0]
    bad = {
        'residual add needs 4': (x, [w[:1]], [b[:1]], meta, True, 0),
        'final_act must be': (x, [w], [b], meta, False, 7),
        'bias must have shape': (x, [w], [b[:3]], meta, False, 0),
        'floating-point map': (x.long(), [w], [b], meta, False, 0),
    }
    for message, args in bad.items():
        for chain in (torch.ops.mmmod.conv_chain, ops._conv_chain,
                      ops._conv_chain_fake):
            with pytest.raises(RuntimeError, match=message):
                chain(*args)


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_fuse_in_place_equals_the_new_map_and_writes_only_k_channels(
        fusion, layout):
    torch.manual_seed(0)
    n, c, k = 3, 16, 4
    x = torch.randn(n, c, 5, 6)
    x = x.contiguous(memory_format=CL) if layout == 'channels_last' else x
    y, scores = torch.randn(n, k, 5, 6), torch.rand(n, k)
    idx = torch.stack([torch.randperm(c)[:k] for _ in range(n)])
    offset = {'first-k': 0, 'last-k': c - k, 'original': -1}[fusion]
    ref = ops._fuse_channels_composite(x, y, scores, idx, offset)
    before = x.clone()
    ptr = x.data_ptr()
    assert ops.fuse_channels_(x, y, scores, idx, offset) is x
    assert x.data_ptr() == ptr
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    written = torch.zeros(n, c, dtype=torch.bool)
    for s in range(n):
        targets = idx[s] if offset < 0 else torch.arange(offset, offset + k)
        written[s, targets] = True
    assert torch.equal(x[~written], before[~written])


@needs_ext
def test_conv_chain_has_its_cpu_kernel():
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        'mmmod::conv_chain', 'CPU')


def test_conv_chain_refuses_autograd_and_runs_without_it():
    """conv_chain has no backward: with an input that requires grad under
    grad mode, or with a forward-mode tangent, it says so; under no_grad,
    or with inputs that require no grad, it runs its kernel (its own
    Autograd kernel, not PyTorch's fallback)."""
    x, weights, biases, meta, residual, act = chain_case(0, 'contiguous')
    scale = torch.rand(x.shape[0], weights[-1].shape[0])
    op = torch.ops.mmmod.conv_chain
    want = op(x, weights, biases, meta, residual, act, scale)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        'mmmod::conv_chain', 'Autograd')
    for which in range(3):  # x, a weight, the scale
        leaves = [x.clone(), weights[0].clone(), scale.clone()]
        leaves[which].requires_grad_()
        args = (leaves[0], [leaves[1], *weights[1:]], biases, meta, residual,
                act, leaves[2])
        with pytest.raises(RuntimeError, match='conv_chain has no autograd'):
            op(*args)
        with torch.no_grad():
            out = op(*args)
        assert not out.requires_grad and torch.equal(out, want)
    # nor forward-mode AD: a tangent is refused, not dropped
    import torch.autograd.forward_ad as fwAD
    with torch.no_grad(), fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match='forward-mode tangent'):
            op(dual, weights, biases, meta, residual, act, scale)


def deployed_chain_block(fusion, layout, dtype, seed=0):
    torch.manual_seed(seed)
    block = MoDBlock(32, lambda k: nn.Sequential(
        nn.Conv2d(k, 2, 1), nn.BatchNorm2d(2), nn.ReLU(),
        nn.Conv2d(2, k, 3, padding=1)), c=4, fusion=fusion, reduction=4)
    block = randomise_norms(block).to(dtype).eval().switch_to_deploy()
    assert isinstance(block.block, ConvChain)
    return block


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('n', [1, 3])
def test_the_one_call_block_equals_its_steps(fusion, layout, dtype, n):
    """``mmmod::mod_block_`` (a deployed block with a chain, one call) is
    its steps to the bit: the Python composite, which calls the same ops
    one by one; it writes x and returns it."""
    block = deployed_chain_block(fusion, layout, dtype)
    fc1, fc2 = block.selector.fc1, block.selector.fc2
    x = torch.randn(n, 32, 5, 7, dtype=dtype)
    x = x.contiguous(memory_format=CL) if layout == 'channels_last' else x
    args = (fc1.weight, fc1.bias, fc2.weight, fc2.bias, block.k,
            *block.block.arguments(), block._fusion_offset)
    with torch.no_grad():
        want = ops._mod_block_(x.clone(), *args)
        got = x.clone()
        ran = op_counts(lambda: torch.ops.mmmod.mod_block_(got, *args))
        out = torch.ops.mmmod.mod_block_(x, *args)
        assert out is x
        assert torch.equal(x, want) and torch.equal(got, want)
        assert torch.equal(block(x.clone()), ops._mod_block_(x.clone(),
                                                             *args))
    # the steps ran inside the one call: the chain scaled, no mul of its own
    # (torch 2.1's profiler may list a C++ autograd kernel's call twice)
    assert ran['mmmod::mod_block_'] == 1
    assert {'mmmod::select_channels', 'mmmod::conv_chain'} <= set(ran)
    assert 'aten::mul' not in ran


@needs_ext
def test_the_one_call_block_is_cpp_and_traces_as_its_steps():
    """Its kernel is C++ (CompositeImplicitAutograd: eager has no Python
    between the steps); traced graphs (AOT's, under torch.compile and
    torch.export) hold the steps, so inductor fuses the means and the add
    as for separate calls."""
    from torch.fx.experimental.proxy_tensor import make_fx
    composite = [line for line in torch._C._dispatch_dump(
        'mmmod::mod_block_').splitlines()
        if line.startswith('CompositeImplicitAutograd')]
    assert len(composite) == 1 and 'ops.cpp' in composite[0], composite
    block = deployed_chain_block('first-k', 'contiguous', torch.float32)
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        graph = make_fx(block)(x).graph
    targets = {str(n.target) for n in graph.nodes if n.op == 'call_function'}
    assert {'mmmod.select_channels.default',
            'mmmod.conv_chain.default'} <= targets
    assert not any('mod_block' in t for t in targets), targets


@needs_opcheck
def test_opcheck_of_conv_chain():
    args = chain_case(3, 'contiguous')
    scale = torch.rand(args[0].shape[0], args[1][-1].shape[0])
    for extra in ((), (scale, )):
        torch.library.opcheck(torch.ops.mmmod.conv_chain.default,
                              (*args, *extra),
                              test_utils=('test_schema', 'test_faketensor'))


# --- the block -------------------------------------------------------------


@pytest.mark.parametrize('kind', ['resnet50', 'resnet18', 'resnext',
                                  'mobilenet', 'vgg'])
@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_inference_form_equals_the_training_form(kind, fusion, layout):
    # float64: BN folding rounds differently from BN, and over a whole
    # network of random weights that can flip a near-tied top-k in float32
    model = backbone(kind, fusion=fusion).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.double)
    x = x.contiguous(memory_format=CL) if layout == 'channels_last' else x
    model.to(memory_format=torch.contiguous_format if layout == 'contiguous'
             else CL)
    ref_model = copy.deepcopy(model)
    chosen = {}
    for i, b in enumerate(mod_blocks(ref_model)):
        b.register_forward_hook(lambda m, inp, out, i=i: chosen.__setitem__(
            i, m.select(inp[0])[1]))
    with torch.no_grad():
        ref = outputs(ref_model, x)
    deployed = switch_to_deploy(model)
    blocks = mod_blocks(deployed)
    assert blocks and all(b.deploy for b in blocks)
    # the fast path: every Conv-Block of these models is one fused call
    assert all(isinstance(b.block, ConvChain) for b in blocks)
    for i, b in enumerate(blocks):
        b.register_forward_pre_hook(
            lambda m, inp, i=i: torch.testing.assert_close(
                m.select(inp[0])[1], chosen[i], rtol=0, atol=0))
    with torch.no_grad():
        ran = op_counts(lambda: deployed(x.clone()))
        skip = op_counts(lambda: skip_mod_blocks(deployed)(x.clone()))
        out = outputs(deployed, x.clone())
    # each block one call, its Conv-Block one chain call that multiplies
    # by the scores (each fusion is its add alone)
    assert ran['mmmod::mod_block_'] == ran['mmmod::conv_chain'] == len(blocks)
    assert 'mmmod::fuse_channels' not in ran  # (the new map's copy)
    assert ran.get('aten::mul', 0) == skip.get('aten::mul', 0)
    # the Conv-Blocks run no convolution of their own
    assert ran['aten::convolution'] == skip['aten::convolution']
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('kind', ['resnet50', 'mobilenet'])
@pytest.mark.parametrize('fusion', FUSIONS)
def test_inference_form_on_cuda_and_in_a_cuda_graph(kind, fusion):
    """On the GPU (the extension's CUDA kernels, or the composites
    without it) the inference form chooses the training form's channels
    and gives its output, also when captured as a CUDA graph (the
    benchmark's cuda-graphs mode) and replayed on new input. ResNet's
    chains run cuDNN's fused conv + bias + ReLU (and + residual + ReLU)."""
    from mmmod.analysis.benchmark import CUDAGraphRunner

    model = backbone(kind, fusion=fusion).cuda()
    x, x2 = torch.randn(2, 2, 3, 64, 64, device='cuda')
    # full fp32 convs (cuDNN's default is TF32), as on the CPU
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True,
                                                     allow_tf32=False):
        ref, ref2 = outputs(model, x), outputs(model, x2)
        deployed = switch_to_deploy(copy.deepcopy(model))
        assert all(isinstance(b.block, ConvChain)
                   for b in mod_blocks(deployed))
        for o, r in zip(outputs(deployed, x.clone()), ref):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
        ran = ops_run(lambda: deployed(x.clone()))
        fused = {'aten::cudnn_convolution_relu',
                 'aten::cudnn_convolution_add_relu'}
        # MobileNet's chains: ReLU6 and depthwise convs, never fused
        assert (ran >= fused) == (HAS_EXT and kind == 'resnet50'), ran
        graph = CUDAGraphRunner(deployed)
        graph(x)  # captured on a copy of x
        for o, r in zip(outputs(graph, x2), ref2):  # replayed on x2
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    assert len(graph.graphs) == 1


def test_near_tied_scores_choose_the_same_channels():
    """Selector logits one ulp apart: the inference form ranks with the same
    ops as the training form, so it chooses the same channels."""
    torch.manual_seed(0)
    block = MoDBlock(32, lambda k: nn.Sequential(
        nn.Conv2d(k, k, 3, padding=1), nn.BatchNorm2d(k), nn.ReLU()),
        c=8, reduction=4).eval()
    with torch.no_grad():
        block.selector.fc1.weight.fill_(1 / 32)
        base = torch.full((32, ), 0.5)
        block.selector.fc2.weight.copy_(
            (base + torch.arange(32) % 3 * 1e-8)[:, None].expand(32, 8))
    x = torch.rand(4, 32, 6, 6) + 0.1
    ref_idx = block.select(x)[1]
    ref = block(x)
    block.switch_to_deploy()
    with torch.no_grad():
        assert torch.equal(block.select(x)[1], ref_idx)
        torch.testing.assert_close(block(x.clone()), ref, rtol=1e-5,
                                   atol=1e-5)


def test_inference_form_adds_into_its_input_and_nothing_else():
    model = backbone('resnet18')
    block = mod_blocks(model)[0].switch_to_deploy()
    x = torch.randn(2, block.channels, 16, 16)
    before = x.clone()
    with torch.no_grad():
        out = block(x)
    assert out is x  # as nn.ReLU(inplace=True)
    torch.testing.assert_close(x[:, block.k:], before[:, block.k:], rtol=0,
                               atol=0)
    assert not torch.equal(x[:, :block.k], before[:, :block.k])


def test_inference_form_refuses_training_and_autograd():
    model = switch_to_deploy(backbone('resnet18'))
    block = mod_blocks(model)[0]
    assert not any(p.requires_grad for p in block.parameters())
    with pytest.raises(RuntimeError, match='cannot train'):
        model.train()
    x = torch.randn(1, block.channels, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match='no_grad'):
        block(x * 1)
    with torch.inference_mode():
        block(torch.randn(1, block.channels, 8, 8))
    block.training = True  # set directly, past train()
    with torch.no_grad(), pytest.raises(RuntimeError, match='training mode'):
        block(torch.randn(1, block.channels, 8, 8))


def small_deployed_block(chain):
    """A deployed MoD block on 16 channels whose Conv-Block is a chain, or
    (a Sigmoid in it) keeps its modules."""
    act = nn.ReLU if chain else nn.Sigmoid
    torch.manual_seed(0)
    block = MoDBlock(16, lambda k: nn.Sequential(
        nn.Conv2d(k, k, 3, padding=1), nn.BatchNorm2d(k), act()), c=4)
    block.eval().switch_to_deploy()
    assert isinstance(block.block, ConvChain) == chain
    return block


@pytest.mark.parametrize('chain', [True, False])
def test_inference_form_refuses_parameters_set_to_require_grad(chain):
    """Parameters set to require grad again (``requires_grad_()``, as a
    fine-tuning script does to every parameter) are refused under grad mode,
    as an input that requires grad is: a Conv-Block that is no chain would
    otherwise record its in-place add, and an optimizer would train the
    folded Conv-Block."""
    block = small_deployed_block(chain)
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        want = block(x.clone())
    block.requires_grad_(True)
    with pytest.raises(RuntimeError,
                       match='conv_chain has no autograd' if chain else
                       'no_grad'):
        block(x.clone())
    with torch.no_grad():
        torch.testing.assert_close(block(x.clone()), want, rtol=0, atol=0)
    block.requires_grad_(False)
    out = block(x.clone())  # grad mode, nothing to record: it runs
    assert not out.requires_grad
    torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.mark.parametrize('chain', [True, False])
def test_inference_form_refuses_maps_it_cannot_write(chain):
    """An expanded map cannot be written in place: refused where it enters
    the block, naming MoD's in-place form, and the map is untouched; a batch
    of one expanded to one (stride 0 over a size-1 dimension) is fine. An
    inference tensor outside inference_mode is refused too: by the one-call
    block before it writes (PyTorch's in-place ops, which a Conv-Block that
    keeps its modules adds with, raise after writing)."""
    block = small_deployed_block(chain)
    expanded = torch.randn(1, 16, 5, 1).expand(2, 16, 5, 5)
    before = expanded.clone()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode(), pytest.raises(RuntimeError,
                                   match='inference form.*expanded'):
            block(expanded)
        assert torch.equal(expanded, before)
    one = torch.randn(16, 5, 5).expand(1, 16, 5, 5)
    with torch.no_grad():
        want = block(one.contiguous())
        torch.testing.assert_close(block(one), want, rtol=0, atol=0)
    with torch.inference_mode():
        frozen = torch.randn(2, 16, 5, 5)
    before = frozen.clone()
    with torch.no_grad(), pytest.raises(
            RuntimeError, match='mod_block_ adds into x in place, and x is an '
            'inference tensor' if chain else
            'inference tensor outside InferenceMode'):
        block(frozen)
    assert torch.equal(frozen, before) == chain


@pytest.mark.parametrize('mode', ['no_grad', 'inference_mode'])
@pytest.mark.parametrize('kind', ['resnet18', 'vgg', 'no_chain'])
def test_dynamo_traces_the_inference_form_in_one_graph(kind, mode):
    """Nothing in a deployed block's forward (its checks included) breaks
    dynamo's graph: a break would compile each block on its own and, in a
    network, hit dynamo's recompile limit."""
    import torch._dynamo
    model = (nn.Sequential(small_deployed_block(False), nn.ReLU())
             if kind == 'no_chain' else switch_to_deploy(backbone(kind)))
    channels = 16 if kind == 'no_chain' else 3
    x = torch.randn(1, channels, 32, 32)
    torch._dynamo.reset()
    with getattr(torch, mode)():
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize('chain', [True, False])
def test_fx_traces_the_inference_form(chain):
    """torch.fx traces a deployed model under no_grad (its map check is a
    leaf), and the traced module computes the same and still refuses an
    expanded map; an empty map passes."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                          small_deployed_block(chain)).eval()
    with torch.no_grad():  # (as it runs: under grad its input is checked)
        traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
        block = torch.fx.symbolic_trace(model[1])
        with pytest.raises(RuntimeError, match='expanded'):
            block(torch.randn(1, 16, 6, 1).expand(2, 16, 6, 6))
        empty = torch.randn(1, 16, 6, 1).expand(0, 16, 6, 6)
        assert model[1](empty).shape == (0, 16, 6, 6)


@pytest.mark.parametrize('kind', ['resnet18', 'mobilenet', 'vgg'])
def test_a_refused_train_switches_nothing(kind):
    """A deployed backbone's train() refuses before it switches a module
    (nn.Module.train would have switched the stem and the stages before the
    first MoD block, whose BN statistics the next forward would update)."""
    model = switch_to_deploy(backbone(kind))
    assert not any(m.training for m in model.modules())
    with pytest.raises(RuntimeError, match='cannot train'):
        model.train()
    assert not any(m.training for m in model.modules())
    model = backbone(kind, deploy=True)
    with pytest.raises(RuntimeError, match='cannot train'):
        model.train()
    assert not any(m.training for m in model.modules())


def test_syncbn_folds_and_functional_relu_chains():
    """mmseg's recipes use SyncBN: in eval it folds as BN does. F.relu (a
    call with an ``inplace`` keyword in the trace) is a ReLU."""

    class Block(nn.Module):

        def __init__(self, k):
            super().__init__()
            self.conv = nn.Conv2d(k, k, 3, padding=2, dilation=2, bias=False)
            self.bn = nn.SyncBatchNorm(k)

        def forward(self, x):
            return nn.functional.relu(self.bn(self.conv(x)) + x)

    torch.manual_seed(0)
    block = deployed_equals_training(MoDBlock(32, Block, c=4),
                                     torch.randn(2, 32, 9, 9))
    assert isinstance(block.block, ConvChain)
    assert block.block.residual and block.block.final_act == 1


def test_the_paper_fcn_backbone_deploys_with_mmengines_syncbn():
    """The FCN recipe builds its norms as mmengine's SyncBatchNorm (a
    subclass that checks its input in Python): its MoD blocks fold and
    chain, and the deployed backbone equals the training form."""
    from mmmod.deployment import build_tensor_model
    model = randomise_norms(build_tensor_model(
        'configs/fcn_r50mod_cityscapes.py', backbone=True))
    norm = model.model.layer1[0].bn1
    assert type(norm) is not nn.SyncBatchNorm
    assert isinstance(norm, nn.SyncBatchNorm)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = outputs(model, x)
        switch_to_deploy(model)
        got = outputs(model, x)
    blocks = list(mod_blocks(model))
    assert blocks and all(isinstance(b.block, ConvChain) for b in blocks)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('config,backbone_only', [
    ('configs/resnet_mod/resnet18-mod_8xb32_in1k.py', False),
    ('configs/fcn_r50mod_cityscapes.py', True),
    ('configs/faster_rcnn/faster-rcnn_r50mod_fpn_1x_voc0712.py', True),
])
def test_fold_conv_bn_of_a_whole_model_folds_every_norm(config,
                                                        backbone_only):
    """Whole models (classifier, mmseg and mmdet backbones with their
    input checks and SyncBN): every norm folds, the stem's too, to the same
    outputs."""
    from mmmod.deployment import build_tensor_model
    model = randomise_norms(build_tensor_model(config,
                                               backbone=backbone_only))
    x = torch.randn(1, 3, 64, 64)
    norms = lambda: [m for m in model.modules()  # noqa: E731
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms()
    with torch.no_grad():
        ref = outputs(model, x)
        fold_conv_bn(model, strict=False)
        got = outputs(model, x)
    assert norms() == []
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fold_conv_bn_folds_the_children_of_what_does_not_trace():
    """A forward fx cannot trace (``len`` of its input), a ModuleList (no
    forward): the pairs inside their children fold, the output is the
    same; with ``strict`` the untraceable module is an error."""

    class Head(nn.Module):

        def __init__(self):
            super().__init__()
            self.branches = nn.ModuleList(
                nn.Sequential(nn.Conv2d(4, 4, 3, padding=1),
                              nn.BatchNorm2d(4), nn.ReLU())
                for _ in range(2))

        def forward(self, x):
            assert len(x) > 0
            return sum(branch(x) for branch in self.branches)

    torch.manual_seed(0)
    head = randomise_norms(Head()).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        ref = head(x)
        with pytest.raises(ValueError, match='does not trace'):
            fold_conv_bn(head)
        fold_conv_bn(head, strict=False)
        torch.testing.assert_close(head(x), ref, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.modules())


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_inference_form_in_low_precision(dtype):
    if not cpu_supports(dtype):
        pytest.skip(f'torch {torch.__version__}: no {dtype} matmul on CPU')
    """Half and bfloat16 maps: the kernel runs the chain in ATen ops; each
    block gives the training form's result in that precision (BN folded in
    it; a whole network would also drift in which channels it chooses)."""
    model = backbone('resnet50')
    model.to(dtype)
    for block in mod_blocks(model):
        x = torch.randn(2, block.channels, 8, 8, dtype=dtype)
        with torch.no_grad():
            ref = block(x)
            block.switch_to_deploy()
            ran = op_counts(lambda: block(x.clone()))
            out = block(x.clone())
        assert ran['mmmod::conv_chain'] == 1 and out.dtype == dtype
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2,
                                   atol=2e-2)


def test_a_conv_block_that_is_no_chain_keeps_its_modules():
    """A Conv-Block with an op the chain does not know (here a sigmoid gate)
    stays a module, BN folded, and still equals the training form."""

    class Gated(nn.Module):

        def __init__(self, k):
            super().__init__()
            self.conv = nn.Conv2d(k, k, 3, padding=1)
            self.bn = nn.BatchNorm2d(k)

        def forward(self, x):
            return self.bn(self.conv(x)).sigmoid() * x

    torch.manual_seed(0)
    block = deployed_equals_training(MoDBlock(16, Gated, c=4),
                                     torch.randn(2, 16, 7, 7))
    assert isinstance(block.block, Gated)
    assert isinstance(block.block.bn, nn.Identity)  # folded


def test_a_residual_add_that_broadcasts_is_no_chain():
    """``conv(k -> 1)(x) + x`` broadcasts in the training form; deployed it
    keeps its module (a chain's residual needs its input's channels)."""

    class Gate(nn.Module):

        def __init__(self, k):
            super().__init__()
            self.conv = nn.Conv2d(k, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + x

    torch.manual_seed(0)
    block = deployed_equals_training(MoDBlock(16, Gate, c=4, reduction=4),
                                     torch.randn(2, 16, 5, 5))
    assert isinstance(block.block, Gate)


@pytest.mark.parametrize('extra', ['dcn', 'non_local'])
def test_conv_blocks_with_deformable_convs_or_plugins_deploy(extra):
    """mmdet's ResNetMoD with DCNv2 or a NonLocal2d plugin (modules that
    torch.fx cannot enter): deployed, each Conv-Block keeps its modules, the
    BN after a plain conv folded, and the model equals its training form."""
    from mmdet.registry import MODELS
    import mmmod  # noqa: F401 (registers ResNetMoD)
    extras = {
        'dcn': dict(dcn=dict(type='DCNv2', deform_groups=1,
                             fallback_on_stride=False),
                    stage_with_dcn=(False, True, True, True)),
        'non_local': dict(plugins=[dict(cfg=dict(type='NonLocal2d'),
                                        position='after_conv2')]),
    }
    torch.manual_seed(0)
    model = randomise_norms(MODELS.get('ResNetMoD')(
        depth=50, base_channels=16, c=16, **extras[extra]))
    model.eval()  # (mmdet's train() returns None)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = outputs(model, x)
        switch_to_deploy(model)
        out = outputs(model, x)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    kept = [b.block for b in mod_blocks(model)
            if not isinstance(b.block, ConvChain)]
    assert len(kept) == {'dcn': 6, 'non_local': 7}[extra]  # (stage 1: chain)
    assert all(isinstance(b.norm1, nn.Identity) for b in kept)  # folded


def test_wide_conv_blocks_stay_with_onednn():
    """c = 2 (the ablation) makes the Conv-Blocks of k >= 64 channels too
    wide for the direct kernel: they keep their (folded) convs; the model
    still equals its training form."""
    model = backbone('resnet50', c=2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = outputs(model, x)
        switch_to_deploy(model)
        out = outputs(model, x)
    fused = {b.k: isinstance(b.block, ConvChain) for b in mod_blocks(model)}
    assert fused == {32: True, 64: False, 128: False, 256: False}
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_concurrent_forwards_of_the_inference_form():
    model = switch_to_deploy(backbone('resnet50'))
    xs = [torch.randn(2, 3, 48, 48) for _ in range(4)]
    with torch.no_grad():
        refs = [outputs(model, x.clone()) for x in xs]
    results, errors = {}, []

    def run(i):
        try:
            with torch.no_grad():
                for _ in range(3):
                    results[i] = outputs(model, xs[i].clone())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, )) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, ref in enumerate(refs):
        for o, r in zip(results[i], ref):
            assert torch.equal(o, r)


def test_deploy_true_builds_the_converted_structure():
    model = backbone('resnet50')
    deployed = switch_to_deploy(copy.deepcopy(model))
    built = backbone('resnet50', deploy=True)
    assert all(b.deploy for b in mod_blocks(built))
    state = deployed.state_dict()
    assert state.keys() == built.state_dict().keys()
    built.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for o, r in zip(outputs(built, x.clone()), outputs(deployed, x)):
            assert torch.equal(o, r)


CPP_WRAPPER = pytest.param('cpp_wrapper', marks=pytest.mark.skipif(
    not bench.runs_on_this_torch('compile-freeze-cpp'),
    reason="inductor's C++ wrapper runs the MoD ops from torch 2.14"))


@pytest.mark.slow
@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('wrapper', ['python', 'frozen', CPP_WRAPPER])
def test_compiled_inference_form_equals_eager(wrapper, fusion):
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import run_and_get_code
    torch._dynamo.reset()
    model = switch_to_deploy(backbone('resnet50', fusion=fusion))
    x = torch.randn(2, 3, 64, 64)
    freezing = wrapper != 'python'
    options = dict(freezing=freezing, cpp_wrapper=wrapper == 'cpp_wrapper')
    # freezing set while dynamo traces (the option alone leaves the weights
    # graph inputs: nothing frozen), as docs/inference.md shows
    with torch.no_grad(), inductor_config.patch(**options):
        ref = outputs(model, x.clone())
        compiled = torch.compile(model, dynamic=False, options=options)
        out, code = run_and_get_code(outputs, compiled, x.clone())
        again = outputs(compiled, x.clone())
        ran = op_counts(lambda: compiled(x.clone()))
    code = ''.join(code)
    if wrapper == 'cpp_wrapper':
        # the generated C++ calls the ops through the dispatcher (by name),
        # with no Python between them
        for op in ('select_channels', 'conv_chain'):
            calls = code.count(f'"mmmod::{op}"')
            assert calls == len(mod_blocks(model)), (op, calls)
    # frozen: the network's convolutions prepacked, BN folded into them
    # (called from C++ through AOTInductor's shim, which the profiler does
    # not see, with the C++ wrapper)
    prepacked = any(op.startswith('mkldnn::_convolution_pointwise')
                    for op in ran) or (
                        'aoti_torch_cpu_mkldnn__convolution_pointwise' in code)
    assert prepacked == (freezing and torch.backends.mkldnn.is_available())
    for o, a, r in zip(out, again, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
        assert torch.equal(o, a)
    # the fast paths survive compilation: inductor calls the ops' kernels
    # (their composites, registered as decompositions for ONNX, are not
    # inlined into the graph)
    blocks = len(mod_blocks(model))
    assert ran['mmmod::conv_chain'] == ran['mmmod::select_channels'] == blocks
    assert 'mmmod::mod_block_' not in ran  # (its steps are in the graph)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_onnx_runtime_runs_the_inference_form(fusion, tmp_path):
    from mmmod.deployment import export, max_abs_diff, session
    model = switch_to_deploy(backbone('resnet50', fusion=fusion))
    x = torch.randn(2, 3, 64, 64)
    path = str(tmp_path / 'm.onnx')
    export(model, x, path, 18)
    import onnx
    kinds = {n.op_type for n in onnx.load(path).graph.node}
    assert {'TopK', 'Conv', 'ScatterElements'} <= kinds
    assert 'ScatterND' not in kinds and 'Transpose' not in kinds
    assert max_abs_diff(model, session(path), x) < 1e-4
