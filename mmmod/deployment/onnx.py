"""ONNX export of mmmod models and the ONNX Runtime session that checks and
times them (tools/deployment/export_onnx.py, tools/analysis/benchmark.py).

The MoD block's ops (:mod:`mmmod.layers.ops`) are exported as standard ONNX
ops by the translations below (:data:`ONNX_TRANSLATIONS`): ReduceMean,
MatMul, Relu, TopK, Sigmoid and GatherElements for ``select_channels``; Mul
and ScatterElements (reduction ``add``) for ``fuse_channels``. ONNX Runtime
needs no custom op.
"""
import numpy as np
import torch
from onnxscript import opset18 as op

import mmmod.layers  # noqa: F401  (defines torch.ops.mmmod)


def _linear(x, weight, bias):
    y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
    return y if bias is None else op.Add(y, bias)


def _expand_index(idx, x, k):
    """(N, k) indices -> (N, k, H, W), for GatherElements/ScatterElements."""
    shape = op.Shape(x)
    size = op.Concat(
        op.Slice(shape, [0], [1]), op.Constant(value_ints=[k]),
        op.Slice(shape, [2], [4]), axis=0)
    return op.Expand(op.Unsqueeze(idx, [2, 3]), size)


def select_channels(x, w1, b1, w2, b2, k: int):
    """``mmmod::select_channels`` in standard ONNX ops."""
    mean = op.ReduceMean(x, op.Constant(value_ints=[2, 3]), keepdims=0)
    logits = _linear(op.Relu(_linear(mean, w1, b1)), w2, b2)
    top, idx = op.TopK(logits, op.Constant(value_ints=[k]), axis=1)
    x_k = op.GatherElements(x, _expand_index(idx, x, k), axis=1)
    return x_k, op.Sigmoid(top), idx


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


#: ``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``.
ONNX_TRANSLATIONS = {
    torch.ops.mmmod.select_channels.default: select_channels,
    torch.ops.mmmod.fuse_channels.default: fuse_channels,
}


def export(model, x, path, opset):
    """Write ``model`` traced on ``x`` to ``path`` (ONNX, static shapes)."""
    with torch.no_grad():
        torch.onnx.export(
            model, (x, ), path, opset_version=opset, dynamo=True,
            external_data=False, verbose=False,
            custom_translation_table=ONNX_TRANSLATIONS)


def session(path, threads=None, spinning=True):
    """An ONNX Runtime CPU session on ``path``. ``spinning=False`` stops its
    worker threads from spinning between runs: time several sessions side by
    side on few cores that way, or the idle sessions' spinning threads take
    the cores from the one being timed (at 2 threads on 2 cores, a third
    session doubled ResNet18-MoD's time)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
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
