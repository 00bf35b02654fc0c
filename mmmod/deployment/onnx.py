"""ONNX export of mmmod models and the ONNX Runtime session that checks and
times them (tools/deployment/export_onnx.py, tools/analysis/benchmark.py).

The MoD block's ops (:mod:`mmmod.layers.ops`) are exported as standard ONNX
ops by the translations below (:data:`ONNX_TRANSLATIONS`): MatMul, Relu,
TopK, Sigmoid and Gather for ``select_channels`` (its means are the
ReduceSum and Div before it); Mul and ScatterElements (reduction ``add``) for
``fuse_channels``; Conv (with Relu, Clip, Add, Mul) for ``conv_chain``; and
the in-place fusion of the inference form, an ``aten::index_add`` once
exported, as one ScatterElements. ONNX Runtime needs no custom op.
"""
import inspect

import numpy as np
import torch
from onnxscript import opset18 as op

import mmmod.layers  # noqa: F401  (defines torch.ops.mmmod)


def _linear(x, weight, bias):
    y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
    return y if bias is None else op.Add(y, bias)


def _expand_index(idx, x, k):
    """(N, k) indices -> (N, k, H, W), for ScatterElements."""
    shape = op.Shape(x)
    size = op.Concat(
        op.Slice(shape, [0], [1]), op.Constant(value_ints=[k]),
        op.Slice(shape, [2], [4]), axis=0)
    return op.Expand(op.Unsqueeze(idx, [2, 3]), size)


def _gather_channels(x, idx):
    """``x``'s channels ``idx`` (N, k) as (N, k, H, W): one Gather of whole
    H x W planes from ``x`` viewed as (N * C, H, W), at ``idx`` plus each
    sample's ``n * C``. ONNX Runtime copies a plane at a time there, where a
    GatherElements reads an expanded (N, k, H, W) index per element
    (ResNet50-MoD's 7 blocks at batch 1: 56 us against 167 us and the
    index's Expand, docs/speed.md)."""
    shape = op.Shape(x)
    n, c = (op.Squeeze(op.Slice(shape, [i], [i + 1])) for i in (0, 1))
    planes = op.Reshape(x, op.Concat(op.Constant(value_ints=[-1]),
                                     op.Slice(shape, [2], [4]), axis=0))
    first = op.Mul(op.Range(op.Constant(value_int=0), n,
                            op.Constant(value_int=1)), c)
    return op.Gather(planes, op.Add(idx, op.Unsqueeze(first, [1])), axis=0)


def select_channels(x, means, w1, b1, w2, b2, k: int):
    """``mmmod::select_channels`` in standard ONNX ops (the means are
    computed before it, by ``channel_means``' sum and division). The
    selector computes in its weights' dtype and the scores come back in
    ``x``'s, as the op's (CastLike: nothing once the dtypes agree)."""
    logits = _linear(op.Relu(_linear(op.CastLike(means, w1), w1, b1)), w2,
                     b2)
    top, idx = op.TopK(logits, op.Constant(value_ints=[k]), axis=1)
    return _gather_channels(x, idx), op.CastLike(op.Sigmoid(top), x), idx


def fuse_channels(x, y, scores, idx, offset: int):
    """``mmmod::fuse_channels`` in standard ONNX ops: one ScatterElements
    that adds ``y * scores`` onto ``x`` (ONNX Runtime writes it into ``x``'s
    buffer when nothing else reads ``x`` later: no copy of the map)."""
    k = y.shape[1]
    y = op.Mul(y, op.Unsqueeze(scores, [2, 3]))
    if offset >= 0:  # channels offset .. offset + k - 1 of every sample
        idx = op.Expand(
            op.Constant(value_ints=list(range(offset, offset + k))),
            op.Concat(op.Slice(op.Shape(x), [0], [1]),
                      op.Constant(value_ints=[k]), axis=0))
    return op.ScatterElements(
        x, _expand_index(idx, x, k), y, axis=1, reduction='add')


def index_add(x, dim: int, index, source, alpha: float = 1.0):
    """``aten::index_add`` (the inference form's fusion, once exported) as
    one ScatterElements (reduction ``add``) onto ``x``: the stock
    translation goes through ScatterND with the map transposed around it
    (in ONNX Runtime, ResNet50-MoD's 7 MoD blocks paid ~1.4 ms for that at
    batch 1, against ~0.3 ms)."""
    if alpha != 1.0:
        source = op.Mul(source, op.CastLike(op.Constant(value_float=alpha),
                                            source))
    shape = [1] * len(x.shape)
    shape[dim] = -1
    idx = op.Reshape(index, op.Constant(value_ints=shape))
    return op.ScatterElements(x, op.Expand(idx, op.Shape(source)), source,
                              axis=dim, reduction='add')


def _activate(y, act: int):
    if act == 1:
        return op.Relu(y)
    if act == 2:
        return op.Clip(y, op.CastLike(op.Constant(value_float=0.0), y),
                       op.CastLike(op.Constant(value_float=6.0), y))
    return y


def conv_chain(x, weights, biases, meta, residual: bool, final_act: int,
               scale=None):
    """``mmmod::conv_chain`` as ONNX Conv nodes (with Relu / Clip, Add and
    Mul): the folded Conv-Block, as ONNX Runtime runs convolutions."""
    y = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        pad_h, pad_w, dil_h, dil_w, groups, act = meta[6 * i:6 * i + 6]
        y = _activate(
            op.Conv(y, w, b, pads=[pad_h, pad_w, pad_h, pad_w],
                    dilations=[dil_h, dil_w], group=groups, strides=[1, 1]),
            act)
    if residual:
        y = op.Add(y, x)
    y = _activate(y, final_act)
    return y if scale is None else op.Mul(y, op.Unsqueeze(scale, [2, 3]))


#: ``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``.
ONNX_TRANSLATIONS = {
    torch.ops.mmmod.select_channels.default: select_channels,
    torch.ops.mmmod.fuse_channels.default: fuse_channels,
    torch.ops.mmmod.conv_chain.default: conv_chain,
    torch.ops.aten.index_add.default: index_add,
}


#: torch >= 2.6: the dynamo exporter with the translations above; older
#: torch: the TorchScript exporter with the ops' symbolic functions
#: (:mod:`mmmod.layers.onnx_symbolic`).
DYNAMO_EXPORT = 'custom_translation_table' in inspect.signature(
    torch.onnx.export).parameters


def export(model, x, path, opset):
    """Write ``model`` traced on ``x`` to ``path`` (ONNX, static shapes)."""
    with torch.no_grad():
        if DYNAMO_EXPORT:
            torch.onnx.export(
                model, (x, ), path, opset_version=opset, dynamo=True,
                external_data=False, verbose=False,
                custom_translation_table=ONNX_TRANSLATIONS)
        else:
            torch.onnx.export(model, (x, ), path, opset_version=opset)


def session(path, threads=None, spinning=True, profile=None):
    """An ONNX Runtime CPU session on ``path`` (or the model's bytes).
    ``spinning=False`` stops its worker threads from spinning between runs:
    time several sessions side by side on few cores that way, or the idle
    sessions' spinning threads take the cores from the one being timed (at
    2 threads on 2 cores, a third session doubled ResNet18-MoD's time).
    ``profile``: a file name prefix; ONNX Runtime profiles every node, and
    ``end_profiling()`` gives the file."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(
        path, opts, providers=['CPUExecutionProvider'])


def max_abs_diff(model, sess, x):
    """Largest |ONNX Runtime - PyTorch| over all outputs, on input ``x``."""
    with torch.no_grad():
        ref = model(x)
    ref = ref if isinstance(ref, (tuple, list)) else [ref]
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    if len(outs) != len(ref):
        raise RuntimeError(f'ONNX model gives {len(outs)} outputs, PyTorch '
                           f'{len(ref)}')
    return max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, ref))
