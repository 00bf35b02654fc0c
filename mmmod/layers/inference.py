"""What the MoD block's CPU inference path runs (see
:meth:`mmmod.layers.MoDBlock.forward_inference`).

At batch 1 a MoD block does little arithmetic (its Conv-Block works on
``k = C // c`` channels, 1 to 32 in ResNet50-MoD), so in eager PyTorch its
cost is the number of ops it calls, each with cold caches between two large
convolutions. The inference path cuts that number:

* :data:`kernels`: the compiled ``mmmod._ext`` (``csrc/mod_block.cpp``): the
  selector, top-k and gather in one call, each small convolution with the
  ReLU and residual add after it in one call, the scaled fusion in one call;
* :func:`fold_for_inference`: a copy of the Conv-Block with each BN folded
  into the conv before it, rewritten to call those convolutions (and any
  other activation) as functions.
"""
import copy
import inspect
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath
from torch.fx.experimental.optimization import fuse as fuse_conv_bn

try:
    from mmmod import _ext as kernels
except ImportError:  # a source tree that was never built: see setup.py
    kernels = None

# Modules that are the identity at inference.
_IDENTITIES = (nn.Identity, nn.Dropout, DropPath)


def fold_for_inference(block: nn.Module) -> nn.Module:
    """An inference copy of ``block`` that computes the same function in
    fewer calls.

    The copy is traced with ``torch.fx``; every ``Conv2d -> BatchNorm2d``
    pair becomes one conv (BN folded into its weights), convs become
    ``kernels.conv2d`` calls that also apply the ReLU and the residual add
    following them, other ReLUs are called as functions, identities go. A block
    that does not trace is returned as an eval copy, unchanged. The copy
    holds its own weights: rebuild it when ``block``'s change.
    """
    block = copy.deepcopy(block)
    block.eval()
    try:
        # forward's optional arguments (e.g. ConvModule's ``activate``) take
        # their defaults, as in ``block(x)``
        params = list(inspect.signature(block.forward).parameters.values())
        concrete = {
            p.name: p.default
            for p in params[1:] if p.default is not inspect.Parameter.empty
        }
        graph_module = fx.symbolic_trace(block, concrete_args=concrete)
    except fx.proxy.TraceError:  # tensor-dependent control flow
        return block
    graph_module = fuse_conv_bn(graph_module, inplace=True, no_trace=True)
    _call_as_functions(graph_module)
    return graph_module


def _call_as_functions(gm: fx.GraphModule) -> None:
    """Rewrites the graph's calls of convs, ReLUs and identities as function
    calls on the same weights (a module call costs as much as the op at
    this size)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == 'call_function' and node.target is torch._assert:
            # the checks that fx adds for concrete arguments
            graph.erase_node(node)
            continue
        if node.op != 'call_module':
            continue
        module = gm.get_submodule(node.target)
        x = node.args[0] if node.args else None
        if isinstance(module, _IDENTITIES):
            node.replace_all_uses_with(x)
            graph.erase_node(node)
            continue
        with graph.inserting_before(node):
            if isinstance(module, nn.ReLU):
                new = graph.call_function(
                    torch.relu_ if module.inplace else torch.relu, (x, ))
            elif isinstance(module, nn.ReLU6):
                new = graph.call_function(F.relu6, (x, ),
                                          dict(inplace=module.inplace))
            elif (type(module) is nn.Conv2d
                  and module.padding_mode == 'zeros'):
                # weights as plain attributes of the copy: one dict lookup
                # each in the generated code, not two module lookups
                name = node.target.replace('.', '_')
                setattr(gm, f'{name}_weight', module.weight.detach())
                weight = graph.create_node('get_attr', f'{name}_weight')
                bias = None
                if module.bias is not None:
                    setattr(gm, f'{name}_bias', module.bias.detach())
                    bias = graph.create_node('get_attr', f'{name}_bias')
                args = (x, weight, bias, module.stride, module.padding,
                        module.dilation, module.groups)
                if kernels is None or isinstance(module.padding, str):
                    new = graph.call_function(F.conv2d, args)
                else:  # residual and ReLU: see _fuse_into_convs
                    new = graph.call_function(kernels.conv2d,
                                              args + (None, False))
            else:
                continue
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    _fuse_into_convs(graph)
    graph.eliminate_dead_code()
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _fuse_into_convs(graph: fx.Graph) -> None:
    """``relu(conv(x))``, ``conv(x) + r`` and ``relu(conv(x) + r)`` become
    one ``kernels.conv2d`` call, where the conv's output has no other use
    (the inner layers and the residual end of ResNet and VGG blocks)."""
    order = {node: i for i, node in enumerate(graph.nodes)}

    def fusable_conv(node):  # args: x, w, b, stride, pad, dil, groups, r, relu
        return (isinstance(node, fx.Node) and node.op == 'call_function'
                and node.target is kernels.conv2d and len(node.users) == 1
                and not node.args[8])

    for node in list(graph.nodes):
        if node.op != 'call_function':
            continue
        conv = None
        if node.target in (torch.relu, torch.relu_) and fusable_conv(
                node.args[0]):
            conv = node.args[0]
            conv.args = conv.args[:8] + (True, )
        elif (node.target in (operator.add, torch.add) and not node.kwargs
              and len(node.args) == 2):
            for conv, other in (node.args, node.args[::-1]):
                # the residual must exist before the conv runs
                if (fusable_conv(conv) and conv.args[7] is None
                        and isinstance(other, fx.Node)
                        and order[other] < order[conv]):
                    conv.args = conv.args[:7] + (other, False)
                    break
            else:
                conv = None
        if conv is not None:
            node.replace_all_uses_with(conv)
            graph.erase_node(node)
