"""ONNX export of MoD models: a static graph of standard ops (the mmmod ops
translated to TopK, Gather, ScatterElements), ONNX Runtime
agrees with PyTorch, and tools/deployment/export_onnx.py runs end to end."""
import collections
import copy

import onnx
import pytest
import torch
from conftest import tool

from mmmod.deployment.onnx import DYNAMO_EXPORT
from mmmod.models import ResNetMoD_CIFAR

export_tool = tool('deployment/export_onnx')
CONFIGS = 'configs/resnet_mod/'


def op_counts(path):
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


@pytest.mark.parametrize('fusion', ['first-k', 'original'])
def test_backbone_exports_and_runs_in_onnx_runtime(fusion, tmp_path):
    model = ResNetMoD_CIFAR(depth=18, fusion=fusion, out_indices=(1, 3))
    model.eval()
    path = str(tmp_path / 'r18mod.onnx')
    export_tool.export(model, torch.randn(2, 3, 32, 32), path, opset=18)
    ops = op_counts(path)
    assert ops['TopK'] == ops['Gather'] == 4  # one per MoD block
    assert not ops['GatherElements']  # planes, not an element-wise index
    # the mmmod ops are translated to standard ONNX ops: no custom domain
    graph = onnx.load(path).graph
    assert {n.domain for n in graph.node} <= {'', 'ai.onnx'}
    assert not any('mmmod' in n.op_type for n in graph.node)
    assert ops['ScatterElements'] == 4  # the fusions
    sess = export_tool.session(path)
    # a new input selects other channels: the graph does not depend on it
    x = torch.randn(2, 3, 32, 32)
    assert export_tool.max_abs_diff(model, sess, x) <= 1e-4
    with torch.no_grad():
        mine = model(x)
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert [o.shape for o in onnx_out] == [tuple(t.shape) for t in mine]


def plain_models():
    """A MoD backbone of each kind, a classifier, and the inference form."""
    from mmpretrain.registry import MODELS

    from mmmod.deployment import build_tensor_model
    from mmmod.layers import switch_to_deploy
    torch.manual_seed(0)
    models = {
        'resnet50-mod': MODELS.build(dict(type='ResNetMoD', depth=50,
                                          base_channels=16, c=16)),
        'mobilenet-v2-mod': MODELS.build(dict(type='MobileNetV2MoD',
                                              widen_factor=0.5, c=8)),
        'vgg-mod': MODELS.build(dict(type='VGGMoD', depth=11, c=64,
                                     num_classes=-1)),
        'resnet50-mod, original fusion': MODELS.build(dict(
            type='ResNetMoD', depth=50, base_channels=16, c=16,
            fusion='original')),
        'resnet18-mod classifier': build_tensor_model(
            CONFIGS + 'resnet18-mod_8xb32_in1k.py'),
    }
    for m in models.values():
        m.eval()  # (stock backbones' eval() returns None: no chaining)
        wake_selectors(m, torch.randn(2, 3, 64, 64))
    models['resnet18-mod classifier, inference form'] = switch_to_deploy(
        copy.deepcopy(models['resnet18-mod classifier']))
    return models


def min_top_k_gap(model, x):
    """The smallest gap, over the MoD blocks of ``model`` run on ``x``,
    between the k-th and (k+1)-th selector logits, relative to the largest
    logit: where it is within runtimes' rounding, ONNX Runtime may rightly
    choose another channel."""
    from mmmod.layers import mod_blocks
    gaps = []

    def hook(block, inputs):
        s = block.selector
        logits = s.fc2(s.fc1(inputs[0].mean((2, 3))).relu())
        top = logits.topk(block.k + 1, dim=1).values if block.k < logits.shape[
            1] else None
        if top is not None:
            scale = logits.abs().amax(1).clamp_min(1e-30)
            gaps.append(float(((top[:, -2] - top[:, -1]) / scale).min()))
    handles = [b.register_forward_pre_hook(hook) for b in mod_blocks(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return min(gaps, default=float('inf'))


def wake_selectors(model, x):
    """Random weights can leave a selector dead (every hidden unit off for
    every input: all logits 0, so channels 0..k-1 for any input, in every
    runtime), which would leave the selection untested; flip the sign of
    the rows of fc1 that are off on ``x``, as training would not leave
    them."""
    from mmmod.layers import mod_blocks

    def hook(block, inputs):
        fc1 = block.selector.fc1
        off = (fc1(inputs[0].mean((2, 3))) <= 0).all(0)
        fc1.weight.data[off] *= -1
    handles = [b.register_forward_pre_hook(hook) for b in mod_blocks(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()


def input_without_near_ties(model, shape, gap=1e-4):
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x = torch.randn(shape, generator=g)
        if min_top_k_gap(model, x) >= gap:
            return x
    raise AssertionError('no input without near-tied selector scores')


@pytest.mark.parametrize('dynamo', [
    pytest.param(True, marks=pytest.mark.skipif(
        not DYNAMO_EXPORT, reason='torch < 2.6: no dynamo exporter')), False
])
def test_plain_torch_onnx_export(dynamo, tmp_path):
    """``torch.onnx.export(model, (x,), f)`` with nothing mmmod-specific,
    with the default exporter and the TorchScript one (``dynamo=False``, as
    mmdeploy calls it): standard ops only, and ONNX Runtime equals eager on
    new input."""
    import warnings
    x = torch.randn(2, 3, 64, 64)
    for name, model in plain_models().items():
        path = str(tmp_path / 'model.onnx')
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            # (torch < 2.6 has the TorchScript exporter alone)
            torch.onnx.export(model, (x, ), path,
                              **({'dynamo': dynamo} if DYNAMO_EXPORT else {}))
        graph = onnx.load(path).graph
        assert {n.domain for n in graph.node} <= {'', 'ai.onnx'}, name
        assert op_counts(path)['TopK'] > 0, name  # the selectors are there
        if not dynamo:  # mmmod's symbolic functions: Gather, not the
            # composite's GatherElements
            assert not op_counts(path)['GatherElements'], name
        sess = export_tool.session(path)
        x2 = input_without_near_ties(model, x.shape)  # other channels
        assert export_tool.max_abs_diff(model, sess, x2) <= 1e-4, name


def test_torchscript_export_with_dynamic_axes_runs_other_shapes(tmp_path):
    """The symbolic functions take the gather's plane offsets (n * C) and
    the index shapes from the input's shape, not the traced one: a graph
    exported with a dynamic batch and size runs other batches and sizes."""
    import warnings
    for name, model in plain_models().items():
        path = str(tmp_path / 'model.onnx')
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(
                model, (torch.randn(2, 3, 64, 64), ), path,
                input_names=['x'],
                dynamic_axes={'x': {0: 'n', 2: 'h', 3: 'w'}},
                **({'dynamo': False} if DYNAMO_EXPORT else {}))
        sess = export_tool.session(path)
        for shape in [(3, 3, 64, 64), (1, 3, 32, 48), (5, 3, 96, 64)]:
            x = input_without_near_ties(model, shape)
            assert export_tool.max_abs_diff(model, sess, x) <= 1e-4, (
                name, shape)


@pytest.mark.e2e
def test_export_tool_checks_and_times_against_the_baseline(tmp_path):
    results = export_tool.main([
        CONFIGS + 'resnet18-mod_8xb32_in1k.py', '--baseline',
        CONFIGS + 'baselines/resnet18_8xb32_in1k.py', '--input-size', '32',
        '--warmup', '1', '--repeats', '3', '--out-dir',
        str(tmp_path)
    ])
    mod, base = results['resnet18-mod'], results['resnet18']
    for r in (mod, base):
        assert 0 <= r['max_abs_diff'] <= 1e-4
        assert len(r['ort_ms']['times']) == 3
    assert op_counts(mod['onnx'])['TopK'] == 4
    assert 'TopK' not in op_counts(base['onnx'])
    assert mod['ort_speedup'] == pytest.approx(
        base['ort_ms']['median'] / mod['ort_ms']['median'])


@pytest.mark.e2e
def test_export_tool_backbone_of_a_segmentor(tmp_path):
    results = export_tool.main([
        'configs/fcn_r50mod_cityscapes.py', '--backbone', '--input-size',
        '32', '64', '--repeats', '0', '--out-dir',
        str(tmp_path)
    ])
    (r, ) = results.values()
    assert r['max_abs_diff'] <= 1e-4
    assert op_counts(r['onnx'])['TopK'] == 7  # ResNet50-MoD: 1 + 2 + 3 + 1


def test_export_tool_rejects_a_whole_segmentor(tmp_path):
    with pytest.raises(ValueError, match='--backbone'):
        export_tool.main([
            'configs/fcn_r50mod_cityscapes.py', '--out-dir',
            str(tmp_path)
        ])


def test_session_without_spinning_threads(tmp_path):
    from mmmod.deployment import export, session
    model = ResNetMoD_CIFAR(depth=18)
    model.eval()
    path = str(tmp_path / 'r18mod.onnx')
    export(model, torch.randn(1, 3, 32, 32), path, opset=18)
    x = torch.randn(1, 3, 32, 32).numpy()
    outs = []
    for spinning in (True, False):
        sess = session(path, threads=2, spinning=spinning)
        if not spinning:
            assert sess.get_session_options().get_session_config_entry(
                'session.intra_op.allow_spinning') == '0'
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x}))
    for a, b in zip(*outs):
        assert (a == b).all()


class Selection(torch.nn.Module):
    """``select_channels`` of a map, with a selector of its own dtype."""

    def __init__(self, channels, k):
        super().__init__()
        self.fc1 = torch.nn.Linear(channels, channels // 4)
        self.fc2 = torch.nn.Linear(channels // 4, channels)
        self.k = k

    def forward(self, x):
        from mmmod.layers.ops import select_channels
        return select_channels(x, self.fc1.weight, self.fc1.bias,
                               self.fc2.weight, self.fc2.bias, self.k)


@pytest.mark.parametrize('dynamo', [
    pytest.param(True, marks=pytest.mark.skipif(
        not DYNAMO_EXPORT, reason='torch < 2.6: no dynamo exporter')), False
])
def test_a_selector_in_another_dtype_than_the_map_exports(dynamo, tmp_path):
    """The op's rule (the selector computes in its weights' dtype, the
    scores come back in the map's) holds in the exported graph: a float32
    selector on a float64 map is two casts, a selector in the map's dtype
    none, and ONNX Runtime chooses and scores as PyTorch does."""
    import warnings
    torch.manual_seed(0)
    model = Selection(32, 8).eval()
    casts = {}
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(0)
        for _ in range(50):  # an input whose k-th and k+1-th logits differ
            x = torch.randn(2, 32, 5, 5, dtype=dtype, generator=g)
            with torch.no_grad():
                logits = model.fc2(model.fc1(x.float().mean((2, 3))).relu())
            top = logits.topk(model.k + 1).values
            if (top[:, -2] - top[:, -1]).min() > 1e-4:
                break
        else:
            pytest.fail('no input without near-tied logits')
        path = str(tmp_path / f'{dtype}.onnx')
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            if dynamo:
                export_tool.export(model, x, path, opset=18)
            else:
                torch.onnx.export(
                    model, (x, ), path,
                    **({'dynamo': False} if DYNAMO_EXPORT else {}))
            want = model(x)
        ops = op_counts(path)
        casts[dtype] = ops['Cast'] + ops['CastLike']
        sess = export_tool.session(path)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        assert [o.dtype for o in got] == [
            torch.empty(0, dtype=t.dtype).numpy().dtype for t in want]
        torch.testing.assert_close(torch.from_numpy(got[0]), want[0],
                                   rtol=0, atol=0)
        torch.testing.assert_close(torch.from_numpy(got[1]), want[1],
                                   rtol=1e-6, atol=1e-6)
        assert torch.equal(torch.from_numpy(got[2]), want[2])
    assert casts[torch.float64] == casts[torch.float32] + 2


@pytest.mark.parametrize('dynamo', [
    pytest.param(True, marks=pytest.mark.skipif(
        not DYNAMO_EXPORT, reason='torch < 2.6: no dynamo exporter')), False
])
def test_exact_ties_choose_alike_in_onnx_runtime(dynamo, tmp_path):
    """Exactly tied logits (every logit its bias, as from a selector whose
    hidden units are all off) choose the same channels in the same order in
    ONNX Runtime as in PyTorch: the lower channel first, as ONNX's TopK
    orders them."""
    import warnings
    torch.manual_seed(0)
    model = Selection(32, 8).eval()
    with torch.no_grad():
        model.fc2.weight.zero_()  # logits = fc2's bias: 16 ties at the top
        model.fc2.bias.copy_(torch.tensor([0., 1.]).repeat(16))
    x = torch.randn(2, 32, 5, 5)
    path = str(tmp_path / 'ties.onnx')
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if dynamo:
            export_tool.export(model, x, path, opset=18)
        else:
            torch.onnx.export(model, (x, ), path,
                              **({'dynamo': False} if DYNAMO_EXPORT else {}))
        want = model(x)
    assert torch.equal(want[2], torch.arange(1, 16, 2).expand(2, -1))
    sess = export_tool.session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert torch.equal(torch.from_numpy(got[2]), want[2])
    assert torch.equal(torch.from_numpy(got[0]), want[0])
