"""ONNX forms of the MoD ops for the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``, what mmdeploy and many scripts
call), registered when :mod:`mmmod.layers` is imported, as torchvision
registers its ops'. The same standard ops as the dynamo exporter's
translations (:mod:`mmmod.deployment.onnx`). The fusion is a
ScatterElements with reduction ``add`` from opset 16 (the TorchScript
exporter's default opset in torch < 2.5 is older: there it gathers the k
channels, adds and scatters them back).
"""
import torch
from torch.onnx import symbolic_helper as sh

from .ops import CHAIN_META

#: the oldest opset of these forms (TopK with k as an input, Unsqueeze's
#: axes as an attribute until 13 are handled by the helpers)
OPSET = 11


def _ints(g, values):
    return g.op('Constant', value_t=torch.tensor(values, dtype=torch.long))


def _linear(g, x, weight, bias):
    y = g.op('MatMul', x, g.op('Transpose', weight, perm_i=[1, 0]))
    return y if sh._is_none(bias) else g.op('Add', y, bias)


def _expand_index(g, idx, x, k):
    """(N, k) indices -> (N, k, H, W), for ScatterElements."""
    shape = g.op('Shape', x)
    size = g.op('Concat', sh._slice_helper(g, shape, [0], [0], [1]),
                _ints(g, [k]), sh._slice_helper(g, shape, [0], [2], [4]),
                axis_i=0)
    return g.op('Expand', sh._unsqueeze_helper(g, idx, [2, 3]), size)


@sh.parse_args('v', 'v', 'v', 'v', 'v', 'v', 'i')
def select_channels(g, x, means, w1, b1, w2, b2, k):
    """The selector in its weights' dtype, the scores in ``x``'s (the
    means are in ``x``'s), as the op's."""
    types = sh._type_utils.JitScalarType
    dtype = types.from_value(x, types.FLOAT)
    selector = types.from_value(w1, dtype)
    if selector != dtype:
        means = g.op('Cast', means, to_i=selector.onnx_type())
    logits = _linear(g, g.op('Relu', _linear(g, means, w1, b1)), w2, b2)
    top, idx = g.op('TopK', logits, _ints(g, [k]), axis_i=1, outputs=2)
    scores = g.op('Sigmoid', top)
    if selector != dtype:
        scores = g.op('Cast', scores, to_i=dtype.onnx_type())
    return _gather_channels(g, x, idx), scores, idx


def _gather_channels(g, x, idx):
    """One Gather of whole planes of ``x`` viewed as (N * C, H, W), at
    ``idx`` plus each sample's ``n * C`` (mmmod.deployment.onnx's form)."""
    shape = g.op('Shape', x)

    def dim(i):
        return sh._squeeze_helper(
            g, sh._slice_helper(g, shape, [0], [i], [i + 1]), [0])

    planes = g.op('Reshape', x, g.op('Concat', _ints(g, [-1]),
                                     sh._slice_helper(g, shape, [0], [2], [4]),
                                     axis_i=0))
    zero, one = (g.op('Constant', value_t=torch.tensor(v)) for v in (0, 1))
    first = g.op('Mul', g.op('Range', zero, dim(0), one), dim(1))
    return g.op('Gather', planes,
                g.op('Add', idx, sh._unsqueeze_helper(g, first, [1])),
                axis_i=0)


@sh.parse_args('v', 'v', 'v', 'v', 'i')
def fuse_channels(g, x, y, scores, idx, offset):
    return _fuse(g, x, y, scores, idx, offset, sh._get_tensor_dim_size(y, 1))


def _fuse(g, x, y, scores, idx, offset, k):
    y = g.op('Mul', y, sh._unsqueeze_helper(g, scores, [2, 3]))
    if offset >= 0:  # channels offset .. offset + k - 1 of every sample
        size = g.op('Concat', sh._slice_helper(
            g, g.op('Shape', x), [0], [0], [1]), _ints(g, [k]), axis_i=0)
        idx = g.op('Expand', _ints(g, list(range(offset, offset + k))), size)
    idx = _expand_index(g, idx, x, k)
    if g.opset >= 16:
        return g.op('ScatterElements', x, idx, y, axis_i=1,
                    reduction_s='add')
    # the k indices of a sample are distinct (top-k, or a range): add to
    # the k channels gathered and write them back
    return g.op('ScatterElements', x, idx,
                g.op('Add', g.op('GatherElements', x, idx, axis_i=1), y),
                axis_i=1)


def _activate(g, y, act):
    if act == 1:
        return g.op('Relu', y)
    if act == 2:
        return g.op('Clip', y, g.op('Constant', value_t=torch.tensor(0.0)),
                    g.op('Constant', value_t=torch.tensor(6.0)))
    return y


@sh.parse_args('v', 'v', 'v', 'is', 'b', 'i', 'v')
def conv_chain(g, x, weights, biases, meta, residual, final_act, scale=None):
    y = x
    for i, (w, b) in enumerate(zip(sh._unpack_list(weights),
                                   sh._unpack_list(biases))):
        pad_h, pad_w, dil_h, dil_w, groups, act = meta[CHAIN_META * i:
                                                       CHAIN_META * (i + 1)]
        y = _activate(g, g.op('Conv', y, w, b,
                              pads_i=[pad_h, pad_w, pad_h, pad_w],
                              dilations_i=[dil_h, dil_w], group_i=groups,
                              strides_i=[1, 1]), act)
    if residual:
        y = g.op('Add', y, x)
    y = _activate(g, y, final_act)
    if scale is None or sh._is_none(scale):
        return y
    return g.op('Mul', y, sh._unsqueeze_helper(g, scale, [2, 3]))


def _channel_means(g, x):
    """ops.channel_means: ReduceSum, then Div by H * W."""
    hw = g.op('ReduceProd', sh._slice_helper(g, g.op('Shape', x), axes=[0],
                                             starts=[2], ends=[4]),
              keepdims_i=0)
    dtype = sh._type_utils.JitScalarType.from_value(x).onnx_type()
    return g.op('Div', sh._reducesum_helper(g, x, axes_i=[2, 3], keepdims_i=0),
                g.op('Cast', hw, to_i=dtype))


@sh.parse_args('v', 'v', 'v', 'v', 'v', 'i', 'v', 'v', 'is', 'b', 'i', 'i')
def mod_block_(g, x, w1, b1, w2, b2, k, weights, biases, meta, residual,
               final_act, offset):
    """The inference form's block: its steps' forms in a row (the chain's
    output scaled in the fusion's Mul)."""
    x_k, scores, idx = select_channels(g, x, _channel_means(g, x), w1, b1,
                                       w2, b2, k)
    return _fuse(g, x, conv_chain(g, x_k, weights, biases, meta, residual,
                                  final_act), scores, idx, offset, k)


for _name, _fn in (('select_channels', select_channels),
                   ('fuse_channels', fuse_channels),
                   ('conv_chain', conv_chain),
                   # (the exporter's in-place pass names it without the _)
                   ('mod_block', mod_block_)):
    torch.onnx.register_custom_op_symbolic(f'mmmod::{_name}', _fn, OPSET)
