"""The MoD block's ops, registered with PyTorch's dispatcher as
``torch.ops.mmmod.*`` (as torchvision registers ``nms`` and ``roi_align``).

``select_channels(x, means, w1, b1, w2, b2, k) -> (x_k, scores, idx)``
    The selector and the gather of Figure 2: ``x``'s channel means (N, C),
    given -> Linear -> ReLU -> Linear gives the logits (N, C); ``idx`` are
    the ``k`` largest, largest first, exact ties to the lower channel (NaN
    above every number): a stable descending sort's first ``k``, ONNX's
    TopK order, on every device and runtime (the CPU kernel's float32
    linears at batch 1 equal ATen's to rounding, see ``csrc/ops.cpp``);
    ``scores`` their sigmoids (N, k), in ``x``'s dtype;
    ``x_k`` the chosen channels (N, k, H, W). The selector runs in its
    weights' dtype, never autocast's (the means are cast to it): a float32
    selector ranks in float32 under autocast too, at every batch size. The
    means are an input, computed by the caller (:func:`select_channels`
    below): in a compiled graph the mean is then inductor's to fuse into the
    op that makes ``x``.
``fuse_channels(x, y, scores, idx, offset) -> out``
    A new map: ``x`` with ``y * scores`` added to ``k`` of its channels,
    ``offset .. offset + k - 1``, or each back at ``idx`` when ``offset < 0``.
    ``x`` is never written.

The inference form (:meth:`mmmod.layers.MoDBlock.switch_to_deploy`) adds:

``conv_chain(x, weights, biases, meta, residual, final_act, scale=None) -> y``
    A Conv-Block with its BN folded, as one call: stride-1 "same" convs in
    a row, each with a bias (``meta``: six ints per conv, ``pad_h, pad_w,
    dil_h, dil_w, groups, act``, act 0 none, 1 ReLU, 2 ReLU6), then ``+ x`` if
    ``residual``, then ``final_act``, then ``× scale`` (N, C_out) if given:
    the inference form passes the scores, so that the fusion is one add.
    Not differentiable. The CPU kernel
    computes float32 and float64 directly, other dtypes with ATen's convs.
``mod_block_(x, w1, b1, w2, b2, k, weights, biases, meta, residual,
final_act, offset) -> x``
    A deployed MoD block whose Conv-Block is a chain, in one call: the
    channel means, ``select_channels``, ``conv_chain`` times the scores and
    :func:`add_channels_` into ``x``. A CompositeImplicitAutograd op (C++
    where the extension is built, :func:`_mod_block_` otherwise): eager runs
    its steps with no Python between them, and ``torch.compile``'s graphs
    hold the steps themselves (``torch.export`` on torch 2.14 keeps the one
    call until ``run_decompositions()``), so it needs no fake, inductor or
    ONNX form of its own (but a TorchScript symbolic,
    :mod:`mmmod.layers.onnx_symbolic`).

Each op has, here or in ``csrc/ops.cpp``:

* its schema (below);
* a CPU kernel in C++ (``mmmod._ext``, when built, unless the environment
  says ``MMMOD_WITH_EXT=0``): an eager call costs a dispatcher call, not a
  Python function;
* a CUDA kernel in the same extension: the composite below in C++ ATen ops
  (the GPU's own kernels, without Python between them);
* a composite implementation in standard ATen ops (``_*_composite``): the
  kernel for every other device and for installs without the extension
  (``MMMOD_WITH_EXT=0``), and the reference the tests compare the kernels
  with;
* a fake implementation, for ``torch.compile`` and ``torch.export``;
* autograd for the two training ops (their backward in ATen ops), so that
  training runs the same ops: in C++ where the extension is built (a call
  without autograd then costs no Python autograd kernel), in Python
  otherwise;
* ONNX forms in standard ops: the translations of
  :mod:`mmmod.deployment.onnx` (``mmmod.deployment.export``), the composite
  as a decomposition (a plain ``torch.onnx.export``) and a TorchScript
  symbolic (``torch.onnx.export(dynamo=False)``,
  :mod:`mmmod.layers.onnx_symbolic`).
"""
import importlib.util
import os
import warnings

import torch
import torch._decomp
import torch.fx
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

# What this torch offers, chosen once at import (README: what each torch
# range gets). flexible_layout: the kernels take NCHW and NHWC maps as they
# come (and keep the layout), so inductor need not convert its channels-last
# maps (torch >= 2.4; older inductor keeps its default layout handling).
_TAGS = tuple(getattr(torch.Tag, t) for t in ('flexible_layout',
                                               'pt2_compliant_tag')
              if hasattr(torch.Tag, t))
#: torch >= 2.4: ``torch.library.register_autograd`` / ``register_fake``;
#: older torch: an ``autograd.Function`` at the Autograd key and the fake
#: kernel as the Meta kernel, the same functions either way.
MODERN_LIBRARY = hasattr(torch.library, 'register_autograd')
_lib = torch.library.Library('mmmod', 'DEF')


def _register_fake(qualname):
    if MODERN_LIBRARY:
        return torch.library.register_fake(qualname)

    def register(fn):
        _lib.impl(qualname.split('::')[1], fn, 'Meta')
        return fn
    return register


def _define(schema):
    try:
        _lib.define(schema, tags=_TAGS)
    except TypeError:  # torch < 2.2: no tags
        _lib.define(schema)


_define('select_channels(Tensor x, Tensor means, Tensor w1, Tensor? b1, '
        'Tensor w2, Tensor? b2, int k) -> (Tensor, Tensor, Tensor)')
_define('fuse_channels(Tensor x, Tensor y, Tensor scores, Tensor idx, '
        'int offset) -> Tensor')
_define('conv_chain(Tensor x, Tensor[] weights, Tensor[] biases, '
        'int[] meta, bool residual, int final_act, Tensor? scale=None) '
        '-> Tensor')

# the inference form of a MoD block with a chain Conv-Block, the steps above
# in one call (CompositeImplicitAutograd: traced graphs see the steps)
_define('mod_block_(Tensor(a!) x, Tensor w1, Tensor? b1, Tensor w2, '
        'Tensor? b2, int k, Tensor[] weights, Tensor[] biases, int[] meta, '
        'bool residual, int final_act, int offset) -> Tensor(a!)')

_ext = None
# MMMOD_WITH_EXT=0 (as for setup.py): run without the C++ kernels even where
# they are built
if os.environ.get('MMMOD_WITH_EXT', '1') != '0':
    try:  # the CPU kernels (TORCH_LIBRARY_IMPL in csrc/ops.cpp)
        from mmmod import _ext
    except ImportError as e:
        # never built (MMMOD_WITH_EXT=0 at install): nothing to say; built
        # but not loading (e.g. against another torch): say so, once
        if importlib.util.find_spec('mmmod._ext') is not None:
            warnings.warn(
                f'mmmod._ext is built but does not load ({e}); the MoD ops '
                'run their pure-PyTorch forms on CPU (slower). Rebuild it '
                'against this torch: pip install --no-build-isolation '
                '--no-deps -e . (or set MMMOD_WITH_EXT=0 to run without it)',
                stacklevel=2)

#: Whether ``mmmod._ext``'s kernels serve the ops on CPU and CUDA.
HAS_EXT = _ext is not None


def _layout(x: Tensor) -> torch.memory_format:
    """The layout the ops give their outputs: x's if channels-last, else
    contiguous (as the C++ kernels decide)."""
    if not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _expand(idx: Tensor, x: Tensor) -> Tensor:
    """(N, k) channel indices -> (N, k, H, W), for gather / scatter."""
    return idx[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])


def channel_means(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C): what the selector starts from. ATen's
    ``x.mean((2, 3))`` to the bit (a sum, in float32 for half types, then a
    division), written out as ReduceSum and Div for ONNX: the TorchScript
    exporter of torch 2.1 writes an opset-18 ReduceMean that ONNX rejects."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.sum((2, 3), dtype=acc) / (x.shape[2] * x.shape[3])).to(x.dtype)


# a call in torch.fx graphs (its dtype choice does not trace)
torch.fx.wrap('channel_means')


def _in_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def selector_logits(means: Tensor, w1: Tensor, b1, w2: Tensor,
                    b2) -> Tensor:
    """Channel means -> Linear -> ReLU -> Linear: the logits (N, C), in the
    selector weights' dtype, never autocast's (the means cast to it), as
    ``select_channels``' kernels compute them."""
    with torch._C._DisableAutocast():  # (.to: traceable by torch.fx)
        return F.linear(F.linear(means.to(w1.dtype), w1, b1).relu(), w2, b2)


def top_k(logits: Tensor, k: int):
    """The ``k`` largest ``logits`` (N, C) of each row and their channels,
    largest first; exact ties go to the lower channel and NaN ranks above
    every number. A stable descending sort's first ``k``: the order of
    ONNX's TopK (``torch.topk``'s order among ties is its own)."""
    logits, idx = logits.sort(dim=1, descending=True, stable=True)
    # (clones: new (N, k) tensors, strided as the fake kernel's)
    return (logits[:, :k].clone(memory_format=torch.contiguous_format),
            idx[:, :k].clone(memory_format=torch.contiguous_format))


def _select_channels_composite(x, means, w1, b1, w2, b2, k, rank=top_k):
    logits, idx = rank(selector_logits(means, w1, b1, w2, b2), k)
    x_k = x.gather(1, _expand(idx, x)).contiguous(memory_format=_layout(x))
    return x_k, _in_dtype(logits.sigmoid(), x.dtype), idx


def _fuse_channels_composite(x, y, scores, idx, offset):
    y = y * scores[:, :, None, None]
    if offset < 0:
        out = x.scatter_add(1, _expand(idx, x), y)
    else:  # a slice_scatter, not a cat: inductor writes k channels in place
        k = y.shape[1]
        out = x.slice_scatter(
            x[:, offset:offset + k] + y, dim=1, start=offset, end=offset + k)
    return out.contiguous(memory_format=_layout(x))


#: Values per conv in ``conv_chain``'s ``meta``.
CHAIN_META = 6


def _activate(y: Tensor, act: int) -> Tensor:
    return y if act == 0 else y.relu() if act == 1 else F.relu6(y)


def _conv_chain_composite(x, weights, biases, meta, residual, final_act,
                          scale=None):
    # in the map's dtype, autocast or not, as the C++ kernel
    with torch._C._DisableAutocast():
        y = x
        for i, (w, b) in enumerate(zip(weights, biases)):
            pad_h, pad_w, dil_h, dil_w, groups, act = meta[
                CHAIN_META * i:CHAIN_META * (i + 1)]
            y = _activate(
                F.conv2d(y, w.to(x.dtype), b.to(x.dtype),
                         padding=(pad_h, pad_w), dilation=(dil_h, dil_w),
                         groups=groups), act)
        if residual:
            y = y + x
        y = _activate(y, final_act)
        if scale is not None:
            y = y * scale.to(x.dtype)[:, :, None, None]
    return y.contiguous(memory_format=_layout(x))


def _shape(t) -> str:
    return 'None' if t is None else str(tuple(t.shape))


def _check_floating_map(x, op):
    """The kernels' check of a map: an integer map would run the convs in
    integers and scale by 0."""
    torch._check(x.dtype.is_floating_point, lambda: f'mmmod::{op}: x must '
                 f'be a floating-point map, got {x.dtype}')


def _check_select(x, means, w1, b1, w2, b2, k):
    torch._check(x.dim() == 4, lambda: 'mmmod::select_channels: x must have '
                 f'shape (N, C, H, W), got {tuple(x.shape)}')
    _check_floating_map(x, 'select_channels')
    c = x.shape[1]
    torch._check(tuple(means.shape) == tuple(x.shape[:2]), lambda: 'mmmod::'
                 f'select_channels: means must have shape {tuple(x.shape[:2])}'
                 f' (x\'s channel means), got {tuple(means.shape)}')
    torch._check(1 <= k <= c, lambda: 'mmmod::select_channels: '
                 f'k={k} is not in [1, {c}]')
    # a logit per channel of x: top-k's indices must name x's channels
    h = w1.shape[0] if w1.dim() == 2 else -1
    torch._check(
        w1.dim() == 2 and w1.shape[1] == c and w2.dim() == 2
        and tuple(w2.shape) == (c, h)
        and (b1 is None or tuple(b1.shape) == (h, ))
        and (b2 is None or tuple(b2.shape) == (c, )),
        lambda: 'mmmod::select_channels: the selector\'s weights must be '
        f'w1 (h, {c}), b1 (h), w2 ({c}, h), b2 ({c}) for x\'s {c} channels, '
        f'got w1 {tuple(w1.shape)}, b1 {_shape(b1)}, w2 {tuple(w2.shape)}, '
        f'b2 {_shape(b2)}')
    torch._check(
        w1.dtype.is_floating_point and all(
            t is None or t.dtype == w1.dtype for t in (b1, w2, b2)),
        lambda: 'mmmod::select_channels: the selector\'s weights and biases '
        'must share one floating dtype')


def _check_fuse(x, y, scores, idx, offset):
    torch._check(
        x.dim() == 4 and y.dim() == 4 and y.shape[1] <= x.shape[1]
        and y.shape[0] == x.shape[0] and y.shape[2:] == x.shape[2:],
        lambda: f'mmmod::fuse_channels: y of shape {tuple(y.shape)} does '
        f'not fit x of shape {tuple(x.shape)}')
    _check_floating_map(x, 'fuse_channels')
    n, k = y.shape[:2]
    torch._check(tuple(scores.shape) == (n, k), lambda: 'mmmod::'
                 f'fuse_channels: scores must have shape ({n}, {k}), got '
                 f'{tuple(scores.shape)}')
    torch._check(
        idx.dtype == torch.long and tuple(idx.shape) == (n, k),
        lambda: f'mmmod::fuse_channels: idx must be int64 of shape ({n}, '
        f'{k}), got {idx.dtype} {tuple(idx.shape)}')
    torch._check(offset < 0 or offset + k <= x.shape[1],
                 lambda: f'mmmod::fuse_channels: offset={offset} + k={k} '
                 f'exceeds the {x.shape[1]} channels of x')


def _select_channels(x, means, w1, b1, w2, b2, k, rank=top_k):
    _check_select(x, means, w1, b1, w2, b2, k)
    return _select_channels_composite(x, means, w1, b1, w2, b2, k, rank)


def _fuse_channels(x, y, scores, idx, offset):
    _check_fuse(x, y, scores, idx, offset)
    return _fuse_channels_composite(x, y, scores, idx, offset)


def _check_chain(x, weights, biases, meta, residual, final_act, scale):
    """The C++ kernel's checks, for the composite and the fake."""
    torch._check(
        x.dim() == 4 and len(weights) >= 1 and len(biases) == len(weights)
        and len(meta) == CHAIN_META * len(weights),
        lambda: f'mmmod::conv_chain: x of shape {tuple(x.shape)} with '
        f'{len(weights)} weights, {len(biases)} biases, {len(meta)} meta '
        f'values ({CHAIN_META} a conv)')
    _check_floating_map(x, 'conv_chain')
    channels = x.shape[1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        pad_h, pad_w, dil_h, dil_w, groups, act = meta[CHAIN_META * i:
                                                       CHAIN_META * (i + 1)]
        torch._check(
            w.dim() == 4 and groups >= 1 and w.shape[0] % groups == 0
            and w.shape[1] * groups == channels,
            lambda: f'mmmod::conv_chain: layer {i}: weight '
            f'{tuple(w.shape)} (groups {groups}) does not take {channels} '
            'channels')
        torch._check(
            pad_h >= 0 and pad_w >= 0 and dil_h >= 1 and dil_w >= 1
            and 2 * pad_h == dil_h * (w.shape[2] - 1)
            and 2 * pad_w == dil_w * (w.shape[3] - 1) and 0 <= act <= 2,
            lambda: f'mmmod::conv_chain: layer {i}: padding ({pad_h}, '
            f'{pad_w}) and dilation ({dil_h}, {dil_w}) must keep the size '
            f'of the map, act must be 0, 1 or 2, got {act}')
        torch._check(
            b.dim() == 1 and b.shape[0] == w.shape[0],
            lambda: f'mmmod::conv_chain: layer {i}: bias must have shape '
            f'({w.shape[0]})')
        channels = w.shape[0]
    torch._check(
        not residual or channels == x.shape[1],
        lambda: f'mmmod::conv_chain: the residual add needs {x.shape[1]} '
        f'output channels, got {channels}')
    torch._check(
        0 <= final_act <= 2, lambda: 'mmmod::conv_chain: final_act must be '
        f'0, 1 or 2, got {final_act}')
    torch._check(
        scale is None or tuple(scale.shape) == (x.shape[0], channels),
        lambda: 'mmmod::conv_chain: scale must have shape '
        f'({x.shape[0]}, {channels}), got {tuple(scale.shape)}')


def _conv_chain(x, weights, biases, meta, residual, final_act, scale=None):
    _check_chain(x, weights, biases, meta, residual, final_act, scale)
    return _conv_chain_composite(x, weights, biases, meta, residual,
                                 final_act, scale)


# every device's kernel, but for CPU's and CUDA's when mmmod._ext is built
_lib.impl('select_channels', _select_channels, 'CompositeExplicitAutograd')
_lib.impl('fuse_channels', _fuse_channels, 'CompositeExplicitAutograd')
_lib.impl('conv_chain', _conv_chain, 'CompositeExplicitAutograd')

def _select_channels_for_onnx(x, means, w1, b1, w2, b2, k):
    # torch.topk, which the exporter writes as ONNX's TopK: that orders
    # exact ties as top_k does (it has no form for a stable sort)
    return _select_channels(x, means, w1, b1, w2, b2, k,
                            lambda logits, k: logits.topk(k, dim=1))


# the composites as decompositions too: a plain torch.onnx.export (the
# dynamo exporter) decomposes the ops it has no ONNX form for into these
# ATen ops (mmmod.deployment.export gives it the ops' own ONNX forms)
for _name, _fn in (('select_channels', _select_channels_for_onnx),
                   ('fuse_channels', _fuse_channels),
                   ('conv_chain', _conv_chain)):
    torch._decomp.register_decomposition(
        getattr(torch.ops.mmmod, _name).default)(_fn)


def _declare_inductor_fallbacks():
    """Inductor runs the ops as extern kernels (its fallbacks, with no
    layout constraint: the kernels take maps as they come), as it would
    on its own; declared here because an op with a registered
    decomposition (above, for ONNX) is refused as an implicit fallback
    whenever the environment sets ``CI`` (inductor's check for its own
    ops, as for ``torchvision::roi_align``)."""
    try:
        from torch._inductor.lowering import make_fallback
    except ImportError:  # a torch without inductor: nothing to declare
        return
    for name in ('select_channels', 'fuse_channels', 'conv_chain'):
        make_fallback(getattr(torch.ops.mmmod, name).default, warn=False)


_declare_inductor_fallbacks()


@_register_fake('mmmod::select_channels')
def _select_channels_fake(x, means, w1, b1, w2, b2, k):
    _check_select(x, means, w1, b1, w2, b2, k)
    n, _, h, w = x.shape
    x_k = torch.empty((n, k, h, w), dtype=x.dtype, device=x.device,
                      memory_format=_layout(x))
    return x_k, x.new_empty((n, k)), x.new_empty((n, k), dtype=torch.long)


@_register_fake('mmmod::fuse_channels')
def _fuse_channels_fake(x, y, scores, idx, offset):
    _check_fuse(x, y, scores, idx, offset)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                       memory_format=_layout(x))


@_register_fake('mmmod::conv_chain')
def _conv_chain_fake(x, weights, biases, meta, residual, final_act,
                     scale=None):
    _check_chain(x, weights, biases, meta, residual, final_act, scale)
    n, _, h, w = x.shape
    return torch.empty((n, weights[-1].shape[0], h, w), dtype=x.dtype,
                       device=x.device, memory_format=_layout(x))


def _select_setup(ctx, inputs, output):
    x, means, w1, b1, w2, b2, _ = inputs
    _, scores, idx = output
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.x_meta = (x.shape, _layout(x))
    ctx.mark_non_differentiable(idx)
    ctx.save_for_backward(means, w1, b1, w2, b2, scores, idx)


def _select_backward(ctx, g_xk, g_scores, _):
    """The gather's gradient (the chosen channels' gradients, back where
    they came from) and the selector's (through the chosen logits)."""
    means, w1, b1, w2, b2, scores, idx = ctx.saved_tensors
    shape, layout = ctx.x_meta
    g_x = torch.empty(shape, dtype=g_xk.dtype, device=g_xk.device,
                      memory_format=layout).zero_()
    g_x.scatter_add_(1, _expand(idx, g_xk), g_xk)
    with torch._C._DisableAutocast():  # the selector's dtype, as its forward
        inputs = _in_dtype(means, w1.dtype)
        pre = F.linear(inputs, w1, b1)
        # the sigmoid's slope from the forward's own precision: scores in
        # a lower one than the selector's round it (to 0 for confident
        # channels in bfloat16)
        s = scores if scores.dtype == w1.dtype else F.linear(
            pre.relu(), w2, b2).gather(1, idx).sigmoid()
        g_logits = s.new_zeros(pre.shape[0], w2.shape[0]).scatter(
            1, idx, _in_dtype(g_scores, s.dtype) * s * (1 - s))
        g_pre = (g_logits @ w2) * (pre > 0)  # ReLU's gradient, as ATen's
    return (g_x, _in_dtype(g_pre @ w1, means.dtype), g_pre.t() @ inputs,
            g_pre.sum(0) if ctx.has_bias[0] else None,
            g_logits.t() @ pre.relu(),
            g_logits.sum(0) if ctx.has_bias[1] else None, None)


def _fuse_setup(ctx, inputs, output):
    _, y, scores, idx, offset = inputs
    ctx.offset = offset
    ctx.save_for_backward(y, scores, idx)


def _fuse_backward(ctx, g_out):
    y, scores, idx = ctx.saved_tensors
    k, offset = y.shape[1], ctx.offset
    g_target = (g_out.gather(1, _expand(idx, g_out)) if offset < 0 else
                g_out[:, offset:offset + k])
    return (g_out, g_target * scores[:, :, None, None],
            (g_target * y).sum((2, 3)), None, None)


def _register_autograd(name, backward, setup_context):
    if MODERN_LIBRARY:
        torch.library.register_autograd(f'mmmod::{name}', backward,
                                        setup_context=setup_context)
        return
    op = getattr(torch.ops.mmmod, name).default

    class Function(torch.autograd.Function):

        @staticmethod
        def forward(ctx, *inputs):
            with torch._C._AutoDispatchBelowAutograd():
                output = op(*inputs)
            setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    _lib.impl(name, Function.apply, 'Autograd')


def _mod_block_(x, w1, b1, w2, b2, k, weights, biases, meta, residual,
                final_act, offset):
    # before anything is written: ATen's in-place ops raise after writing
    # (dynamo does not trace this: the op is one call in its graph)
    if x.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(
            'mmmod::mod_block_ adds into x in place, and x is an inference '
            'tensor (made under torch.inference_mode()), which cannot be '
            'written outside it: run the model under torch.inference_mode(), '
            'or pass a clone')
    torch._check(offset < 0 or offset + k <= x.shape[1],
                 lambda: f'mmmod::mod_block_: offset={offset} + k={k} '
                 f'exceeds the {x.shape[1]} channels of x')
    x_k, scores, idx = torch.ops.mmmod.select_channels(
        x, channel_means(x), w1, b1, w2, b2, k)
    y = torch.ops.mmmod.conv_chain(x_k, weights, biases, meta, residual,
                                   final_act, scores)
    return add_channels_(x, y.to(x.dtype), idx, offset)


def _conv_chain_autograd(x, weights, biases, meta, residual, final_act,
                        scale=None):
    """``conv_chain`` has no backward: a call that autograd would record
    (or that carries a forward-mode tangent) is an error, any other runs the
    op below autograd."""
    tensors = [t for t in (x, scale, *weights, *biases) if t is not None]
    if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) \
            or any(forward_ad.unpack_dual(t).tangent is not None
                   for t in tensors):
        raise RuntimeError(
            "mmmod::conv_chain has no autograd (it is the inference form's "
            'Conv-Block): call it under torch.no_grad() or '
            'torch.inference_mode(), with inputs that do not require grad '
            'and have no forward-mode tangent')
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.mmmod.conv_chain(x, weights, biases, meta, residual,
                                          final_act, scale)


if not HAS_EXT:  # the extension registers the same in C++
    _register_autograd('select_channels', _select_backward, _select_setup)
    _register_autograd('fuse_channels', _fuse_backward, _fuse_setup)
    _lib.impl('conv_chain', _conv_chain_autograd, 'Autograd')
    _lib.impl('mod_block_', _mod_block_, 'CompositeImplicitAutograd')


def select_channels(x: Tensor, w1: Tensor, b1, w2: Tensor, b2,
                    k: int):
    """``torch.ops.mmmod.select_channels`` (see the module docstring) of
    ``x`` and its channel means."""
    return torch.ops.mmmod.select_channels(x, channel_means(x), w1, b1, w2,
                                           b2, k)


def fuse_channels(x: Tensor, y: Tensor, scores: Tensor, idx: Tensor,
                  offset: int) -> Tensor:
    """``torch.ops.mmmod.fuse_channels`` (see the module docstring), with
    ``y`` and ``scores`` in ``x``'s dtype: under autocast the Conv-Block may
    compute in a lower precision than the map it adds to, and the sum keeps
    the map's dtype (no-ops otherwise; ``.to``, not a test of the dtypes,
    so that torch.fx traces the block)."""
    return torch.ops.mmmod.fuse_channels(x, y.to(x.dtype), scores.to(x.dtype),
                                         idx, offset)


def fuse_channels_(x: Tensor, y: Tensor, scores: Tensor, idx: Tensor,
                   offset: int) -> Tensor:
    """What :func:`fuse_channels` computes, added into ``x`` (the inference
    form); returns ``x``: :func:`add_channels_` of ``y * scores``."""
    y = y.to(x.dtype) * scores.to(x.dtype)[:, :, None, None]
    return add_channels_(x, y, idx, offset)


def add_channels_(x: Tensor, y: Tensor, idx: Tensor, offset: int) -> Tensor:
    """Adds ``y`` (N, k, H, W), already scaled by the scores, into ``k``
    channels of ``x`` (as :func:`fuse_channels`' ``offset``); returns ``x``.
    One standard in-place op, not a registered op: ``index_add_`` onto the
    channels ``offset .. offset + k - 1`` (or ``scatter_add_`` back at
    ``idx``). Eager runs it on the ``k`` channels alone; inductor fuses it
    into one loop over those channels, in the map's buffer and layout (a
    slice add would make it a masked pass over the whole map, and a mutating
    custom op a copy of channels-last maps under freezing); the ONNX export
    is one ScatterElements (:mod:`mmmod.deployment.onnx`)."""
    if offset < 0:
        return x.scatter_add_(1, _expand(idx, x), y)
    targets = torch.arange(offset, offset + y.shape[1], device=x.device)
    return x.index_add_(1, targets, y)
