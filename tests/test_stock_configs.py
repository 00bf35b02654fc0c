"""Stock configs of mmdet, mmseg and mmpretrain (from the installed packages'
``.mim/configs``) with only the backbone ``type`` changed build the toolbox's
own backbone with MoD blocks, predict, and train a step.

Besides the type, the tests change only what a CPU test needs: ``SyncBN``
becomes ``BN`` (SyncBN needs a process group) and mmseg's data preprocessor
pads to 64x64 instead of the 512x1024 crop. Nothing is downloaded: the
``Pretrained`` init of the stock configs runs in ``init_weights``, which the
tests do not call.
"""
import importlib
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmmod.layers import MoDBlock
from mmmod.models.backbones import FittedGroupNorm, MoDStagesMixin

pytestmark = pytest.mark.e2e

MOD_TYPES = {
    'ResNet': 'ResNetMoD',
    'ResNetV1c': 'ResNetV1cMoD',
    'ResNetV1d': 'ResNetV1dMoD',
    'ResNeXt': 'ResNeXtMoD',
}


def stock_config(scope, path, backbone=None):
    """The stock config ``path`` of ``scope`` with the backbone type swapped
    (and ``backbone`` merged in, where a toolbox has no stock config)."""
    package = Path(importlib.import_module(scope).__file__).parent
    cfg = Config.fromfile(str(package / '.mim' / 'configs' / path))
    if backbone:
        cfg.model.backbone.update(backbone)
    cfg.model.backbone.type = MOD_TYPES[cfg.model.backbone.type]
    _no_sync_bn(cfg.model)
    return cfg


def _no_sync_bn(node):
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _no_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _no_sync_bn(value)


def build(scope, cfg):
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model = registry.build(cfg.model)
    mod_type = cfg.model.backbone.type
    stock_type = {v: k for k, v in MOD_TYPES.items()}[mod_type]
    # the toolbox's own class, under the stock name's MoD twin
    assert type(model.backbone) is registry.get(mod_type)
    assert isinstance(model.backbone, registry.get(stock_type))
    assert isinstance(model.backbone, MoDStagesMixin)
    return model


def train_step_then_predict(model, data):
    """One loss + backward (the trainable selectors get gradients), then
    ``predict`` in eval mode; returns the predictions."""
    model.train()
    batch = model.data_preprocessor(data, True)
    loss, _ = model.parse_losses(model(**batch, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    selectors = [
        m.selector.fc2.weight for m in model.backbone.modules()
        if isinstance(m, MoDBlock) and m.selector.fc2.weight.requires_grad
    ]
    assert selectors and all(w.grad is not None for w in selectors)
    assert sum(w.grad.abs().sum() for w in selectors) > 0
    model.eval()
    with torch.no_grad():
        return model.val_step(data)


# ---------------------------------------------------------------- mmdet

def det_data(with_mask):
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(
        2, [(3, 128, 128), (3, 128, 128)], num_items=[2, 3], num_classes=80,
        with_mask=with_mask)


def check_dcn(backbone):
    from mmcv.ops import DeformConv2dPack
    # (stage 1 has no DCN: a plain conv, FewChannelConv2d on its 1 channel)
    assert not isinstance(backbone.layer1[1].block.conv2, DeformConv2dPack)
    assert isinstance(backbone.layer1[1].block.conv2, torch.nn.Conv2d)
    for stage in (backbone.layer2, backbone.layer3, backbone.layer4):
        assert isinstance(stage[1].block.conv2, DeformConv2dPack)
        assert isinstance(stage[0].conv2, DeformConv2dPack)


def check_gcnet(backbone):
    assert not hasattr(backbone.layer1[1].block, 'context_block')
    for stage in (backbone.layer2, backbone.layer3, backbone.layer4):
        block = stage[1].block
        # ratio 1/4 of the block's k output channels
        assert block.context_block.planes == block.conv3.out_channels // 4


def check_gn(backbone):
    # k = 4, inner width 1 in layer1; k = 32, inner width 8 in layer4
    gn = backbone.layer1[1].block
    assert isinstance(gn.gn1, FittedGroupNorm)
    assert (gn.gn1.num_groups, gn.gn3.num_groups) == (1, 4)
    gn = backbone.layer4[1].block
    assert (gn.gn1.num_groups, gn.gn3.num_groups) == (8, 32)
    # the standard blocks keep the stock GroupNorm
    assert type(backbone.layer4[0].gn1) is torch.nn.GroupNorm
    assert backbone.layer4[0].gn1.num_groups == 32


def check_resnext(backbone):
    assert backbone.layer4[0].conv2.groups == 32
    # k = 32, inner width 8: gcd(32, 8) groups
    assert backbone.layer4[1].block.conv2.groups == 8


def check_mmdet_defaults(backbone):
    assert backbone.norm_eval and len(backbone.out_indices) == 4


MMDET = [
    ('dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py', False, check_dcn),
    ('gcnet/mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco.py', True, check_gcnet),
    ('gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py', True, check_gn),
    ('retinanet/retinanet_r50_fpn_1x_coco.py', False, check_mmdet_defaults),
    ('faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py', False,
     check_resnext),
]


@pytest.mark.parametrize('path,with_mask,check', MMDET,
                         ids=[p[0].split('/')[0] for p in MMDET])
def test_mmdet_stock_config(path, with_mask, check):
    model = build('mmdet', stock_config('mmdet', path))
    check(model.backbone)
    preds = train_step_then_predict(model, det_data(with_mask))
    assert len(preds) == 2
    assert preds[0].pred_instances.bboxes.shape[1] == 4


# ---------------------------------------------------------------- mmseg

def seg_data():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        sample = SegDataSample(
            metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                          pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 19, (1, 64, 64)))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, 64, 64)).float() for _ in samples]
    return dict(inputs=inputs, data_samples=samples)


def check_d8(backbone):
    assert isinstance(backbone.stem[0], torch.nn.Conv2d)  # mmseg stem layout
    assert backbone.layer3[0].conv2.dilation == (1, 1)     # contracted
    assert backbone.layer4[1].block.conv2.dilation == (4, 4)


def check_multi_grid(backbone):
    # deeplabv3 mg124: layer4 blocks get dilations multi_grid = (1, 2, 4)
    assert backbone.layer4[0].conv2.dilation == (1, 1)
    assert backbone.layer4[1].block.conv2.dilation == (2, 2)
    assert backbone.layer4[2].conv2.dilation == (4, 4)


def check_upernet(backbone):
    assert len(backbone.out_indices) == 4 and not backbone.norm_eval


MMSEG = [
    ('pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py', None, check_d8),
    ('deeplabv3/deeplabv3_r101-d16-mg124_4xb2-40k_cityscapes-512x1024.py',
     None, check_multi_grid),
    ('upernet/upernet_r50_4xb2-40k_cityscapes-512x1024.py', None,
     check_upernet),
    # mmseg ships no ResNeXt config: UPerNet with mmseg's ResNeXt backbone
    ('upernet/upernet_r50_4xb2-40k_cityscapes-512x1024.py',
     dict(type='ResNeXt', groups=32, base_width=4), check_resnext),
]


@pytest.mark.parametrize('path,backbone,check', MMSEG,
                         ids=['pspnet', 'deeplabv3-mg', 'upernet', 'resnext'])
def test_mmseg_stock_config(path, backbone, check):
    cfg = stock_config('mmseg', path, backbone)
    cfg.model.data_preprocessor.size = (64, 64)
    model = build('mmseg', cfg)
    check(model.backbone)
    preds = train_step_then_predict(model, seg_data())
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 64)


# ----------------------------------------------------------- mmpretrain

def cls_data():
    from mmpretrain.structures import DataSample
    return dict(
        inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
                for _ in range(2)],
        data_samples=[DataSample().set_gt_label(i) for i in range(2)])


def check_v1d(backbone):
    # mmpretrain's deep stem layout: ConvModules (stem.0.conv.weight)
    assert hasattr(backbone.stem[0], 'conv')
    assert isinstance(backbone.layer2[0].downsample[0], torch.nn.AvgPool2d)


MMPRETRAIN = [
    ('resnet/resnet50_8xb32_in1k.py', None),
    ('resnet/resnetv1d50_8xb32_in1k.py', check_v1d),
    ('resnext/resnext50-32x4d_8xb32_in1k.py', check_resnext),
]


@pytest.mark.parametrize('path,check', MMPRETRAIN,
                         ids=['resnet50', 'resnetv1d50', 'resnext50'])
def test_mmpretrain_stock_config(path, check):
    model = build('mmpretrain', stock_config('mmpretrain', path))
    if check:
        check(model.backbone)
    preds = train_step_then_predict(model, cls_data())
    assert preds[0].pred_score.shape == (1000, )
