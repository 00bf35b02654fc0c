"""Every config under configs/ loads, and its model builds in its toolbox's
registry; the ImageNet configs are the paper's models on the paper's recipe."""
import glob
import inspect
import os.path as osp
import re

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from mmmod.layers import MoDBlock

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in osp.relpath(p, ROOT).split(osp.sep))
IMAGENET = [p for p in CONFIGS if p.endswith('_in1k.py')]
RESNETS = [p for p in IMAGENET if osp.basename(p).startswith('resnet')]


def load(path):
    return Config.fromfile(osp.join(ROOT, path))


def build(cfg):
    init_default_scope(cfg.default_scope)
    return MODELS.build(cfg.model)


def feat_channels(backbone):
    """Channels of the last stage's output, read off the built modules."""
    if hasattr(backbone, 'res_layers'):  # block 0 is always a plain block
        return getattr(backbone, backbone.res_layers[-1])[0].out_channels
    return backbone.out_channel  # MobileNetV2


# The paper's ImageNet experiments (supplement Tables 1-9): each config's
# backbone type and the arguments its name stands for
PAPER_CONFIGS = {
    **{f'resnet_mod/resnet{d}-mod_8xb32_in1k.py':
       ('ResNetMoD', dict(depth=d, c=64, fusion='first-k'))
       for d in (18, 26, 34, 42, 50, 75, 86, 101, 152)},
    **{f'resnet_mod/baselines/resnet{d}_8xb32_in1k.py':
       ('ResNet', dict(depth=d)) for d in (18, 34, 50, 101, 152)},
    'mobilenet_v2_mod/mobilenet-v2_8xb32_in1k.py':
    ('MobileNetV2', dict(widen_factor=1.0)),
    'mobilenet_v2_mod/mobilenet-v2-mod_8xb32_in1k.py':
    ('MobileNetV2MoD', dict(arch='default', fusion='first-k')),
    'mobilenet_v2_mod/mobilenet-v2-mod-l_8xb32_in1k.py':
    ('MobileNetV2MoD', dict(arch='L', fusion='first-k')),
    **{f'ablations/resnet50-mod_c{c}_{f}_8xb32_in1k.py':
       ('ResNetMoD', dict(depth=50, c=c, fusion=f))
       for c in (2, 4, 8, 16, 32, 64) for f in ('first-k', 'original')},
    **{f'ablations/resnet{d}-mod-lk_8xb32_in1k.py':
       ('ResNetMoD', dict(depth=d, c=64, fusion='last-k'))
       for d in (50, 75, 86)},
}


@pytest.mark.parametrize('path', sorted(PAPER_CONFIGS))
def test_paper_config_is_the_experiment_its_name_says(path):
    """Read from the merged config (bases and overrides applied), as the
    runner reads it; an unset argument takes the class's default."""
    kind, expected = PAPER_CONFIGS[path]
    backbone = load(osp.join('configs', path)).model.backbone
    assert backbone.type == kind
    defaults = {}  # the first default along the MRO's __init__s
    for cls in MODELS.get(f'mmpretrain.{kind}').__mro__[::-1]:
        if '__init__' in vars(cls):
            defaults.update(
                (name, p.default) for name, p in
                inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty)
    for key, value in expected.items():
        got = backbone[key] if key in backbone else defaults[key]
        assert got == value, key


@pytest.mark.e2e
@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds(path):
    cfg = load(path)
    assert cfg.default_scope in ('mmpretrain', 'mmseg', 'mmdet')
    model = build(cfg)
    if 'MoD' in cfg.model.backbone.type:
        assert cfg.custom_imports.imports == ['mmmod']
        blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
        backbone = cfg.model.backbone
        assert blocks
        assert {b.fusion for b in blocks} == {
            backbone.get('fusion', 'first-k')}
        if 'c' in backbone:
            assert {b.c for b in blocks} == {backbone.c}
    if path in IMAGENET:
        assert cfg.model.head.in_channels == feat_channels(model.backbone)
        assert model.head.num_classes == 1000


@pytest.mark.parametrize('path', RESNETS)
def test_resnet_is_the_papers(path):
    name = osp.basename(path)
    depth, v1c, mod = re.match(r'resnet(\d+)(-v1c)?(-mod)?', name).groups()
    backbone = load(path).model.backbone
    assert backbone.depth == int(depth)
    expected = ('ResNetV1cMoD' if v1c else 'ResNetMoD') if mod else 'ResNet'
    assert backbone.type == expected
    if mod:
        ablation = re.search(r'_c(\d+)_(first-k|original)_', name)
        c, fusion = ablation.groups() if ablation else (64, 'first-k')
        if '-lk_' in name:
            fusion = 'last-k'
        assert backbone.get('c', 64) == int(c)
        assert backbone.get('fusion', 'first-k') == fusion


@pytest.mark.parametrize('path', RESNETS)
def test_resnet_recipe_is_the_papers(path):
    """Supplement S1.1: 100 epochs, batch 256, SGD lr 0.1 momentum 0.9,
    wd 1e-4, lr x0.1 every 30 epochs; MoD and baselines alike."""
    cfg = load(path)
    assert cfg.optim_wrapper.optimizer == dict(
        type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4,
        _scope_='mmpretrain')
    sched = cfg.param_scheduler
    assert (sched.type, sched.milestones, sched.gamma,
            sched.by_epoch) == ('MultiStepLR', [30, 60, 90], 0.1, True)
    assert cfg.train_cfg.max_epochs == 100
    # 8 GPUs x 32, and the lr scaling base is 256 as well
    assert cfg.train_dataloader.batch_size * 8 == 256
    assert cfg.auto_scale_lr.base_batch_size == 256
    assert cfg.train_dataloader.dataset.type == 'ImageNet'


def test_mobilenet_v2_recipe():
    """The stock (and torchvision's) MobileNetV2 recipe, for the baseline
    and both MoD variants: 300 epochs, SGD lr 0.045 momentum 0.9 wd 4e-5,
    lr x0.98 every epoch, batch 256."""
    names = ('mobilenet-v2_8xb32_in1k.py', 'mobilenet-v2-mod_8xb32_in1k.py',
             'mobilenet-v2-mod-l_8xb32_in1k.py')
    arches = []
    for name in names:
        cfg = load(osp.join('configs', 'mobilenet_v2_mod', name))
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, opt.momentum,
                opt.weight_decay) == ('SGD', 0.045, 0.9, 4e-5)
        sched = cfg.param_scheduler
        assert (sched.type, sched.step_size, sched.gamma) == ('StepLR', 1,
                                                              0.98)
        assert cfg.train_cfg.max_epochs == 300
        assert cfg.train_dataloader.batch_size * 8 == 256
        arches.append((cfg.model.backbone.type,
                       cfg.model.backbone.get('arch', 'default')))
    assert arches == [('MobileNetV2', 'default'),
                      ('MobileNetV2MoD', 'default'), ('MobileNetV2MoD', 'L')]
