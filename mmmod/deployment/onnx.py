"""ONNX export of mmmod models and the ONNX Runtime session that checks and
times them (tools/deployment/export_onnx.py, tools/analysis/benchmark.py)."""
import numpy as np
import torch


def export(model, x, path, opset):
    """Write ``model`` traced on ``x`` to ``path`` (ONNX, static shapes)."""
    with torch.no_grad():
        torch.onnx.export(
            model, (x, ), path, opset_version=opset, dynamo=True,
            external_data=False, verbose=False)


def session(path, threads=None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
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
