"""FCN ResNet50-MoD on Cityscapes (configs/fcn_r50mod_cityscapes.py): the
stock mmseg recipe, the hand-off from our ImageNet classifier, and the tools
training, resuming and testing it on a tiny dataset in Cityscapes' layout;
without the ImageNet MoD checkpoint, the message that says what to do; and
the config that starts from the stock ImageNet ResNet50-V1c instead
(configs/fcn_r50mod-stock-init_cityscapes.py), on a stand-in of it."""
import re

import numpy as np
import pytest
import torch
from conftest import ROOT, save_classifier_checkpoint, tool
from mmengine.fileio import load
from mmengine.registry import init_default_scope
from PIL import Image
from stock_checkpoints import (check_mod_blocks_start_fresh,
                               check_only_the_init_differs,
                               place_stock_checkpoint, run_dist,
                               run_dist_train,
                               stand_in_state)

from mmmod import apis
from mmmod.models.warm_start import canonical_name

CONFIG = str(ROOT / 'configs' / 'fcn_r50mod_cityscapes.py')
STOCK_INIT = str(ROOT / 'configs' / 'fcn_r50mod-stock-init_cityscapes.py')
STOCK = 'open-mmlab://resnet50_v1c'  # where mmseg's stock FCN starts
IMAGENET = ROOT / 'configs' / 'resnet_mod' / 'resnet50-v1c-mod_8xb32_in1k.py'
CITIES = {'train': ['aachen', 'bochum'], 'val': ['frankfurt']}
H, W = 32, 64  # Cityscapes' 1:2 aspect ratio, tiny


def load_config(*options, config=CONFIG):
    return apis.load_config(config, options)


def test_config_is_the_stock_fcn_recipe():
    cfg = load_config()
    model = cfg.model
    assert cfg.default_scope == 'mmseg'
    assert model.type == 'EncoderDecoder' and model.pretrained is None
    backbone = model.backbone
    assert backbone.type == 'ResNetV1cMoD' and backbone.depth == 50
    assert (backbone.dilations, backbone.strides) == ((1, 1, 2, 4),
                                                      (1, 2, 1, 1))
    assert backbone.contract_dilation
    for m in (backbone, model.decode_head, model.auxiliary_head):
        assert m.norm_cfg.type == 'SyncBN'
    assert model.decode_head.type == model.auxiliary_head.type == 'FCNHead'
    assert model.decode_head.dropout_ratio == 0.1
    assert model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.optim_wrapper.optimizer == dict(
        type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4)
    [poly] = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 0.9,
                                                               1e-4, 80000)
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval,
            cfg.default_hooks.checkpoint.interval) == (80000, 8000, 8000)
    assert cfg.train_dataloader.batch_size == 2  # x 4 GPUs
    assert cfg.train_dataloader.dataset.type == 'CityscapesDataset'
    assert cfg.val_evaluator.type == 'IoUMetric'
    # Multi-scale flip test-time augmentation for `tools/test.py --tta`.
    assert cfg.tta_model.type == 'SegTTAModel'
    aug = cfg.tta_pipeline[1]
    assert aug.type == 'TestTimeAug'
    assert [t.scale_factor for t in aug.transforms[0]] == [
        0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [t.prob for t in aug.transforms[1]] == [0., 1.]


def test_default_checkpoint_is_what_the_imagenet_config_writes():
    imagenet = apis.load_config(str(IMAGENET))
    assert imagenet.model.backbone.type == 'ResNetV1cMoD'
    init = load_config().model.backbone.init_cfg
    assert init.type == 'WarmStartFromResNet'
    assert init.checkpoint == (f'{imagenet.work_dir}/'
                               f'epoch_{imagenet.train_cfg.max_epochs}.pth')


def test_backbone_starts_from_the_imagenet_classifier(tmp_path):
    ckpt = tmp_path / 'epoch_100.pth'
    classifier = save_classifier_checkpoint(IMAGENET, ckpt)
    cfg = load_config(f'model.backbone.init_cfg.checkpoint={ckpt}')
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    expected = {
        k[len('backbone.'):]: v
        for k, v in classifier.items() if k.startswith('backbone.')
    }
    # the whole ResNet-MoD, MoD blocks too; the deep stem from mmpretrain's
    # layout (stem.0.conv.weight) into mmseg's (stem.0.weight)
    got = {canonical_name(k): v
           for k, v in model.backbone.state_dict().items()}
    expected = {canonical_name(k): v for k, v in expected.items()}
    assert got.keys() == expected.keys()
    assert 'stem.0.weight' in model.backbone.state_dict()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def make_cityscapes(root):
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png and the matching
    gtFine/<split>/<city>/*_gtFine_labelTrainIds.png (train ids 0-18, 255 =
    ignore), one frame per city."""
    rng = np.random.default_rng(0)
    for split, cities in CITIES.items():
        for city in cities:
            for i in range(1):
                name = f'{city}_{i:06d}_000019'
                img = root / 'leftImg8bit' / split / city
                gt = root / 'gtFine' / split / city
                img.mkdir(parents=True, exist_ok=True)
                gt.mkdir(parents=True, exist_ok=True)
                # Vertical stripes of all 19 classes (so that whatever an
                # untrained model predicts scores some IoU), an ignored top.
                label = np.tile(
                    (np.arange(W) * 19 // W + rng.integers(19)) % 19, (H, 1))
                label = label.astype(np.uint8)
                label[:4] = 255
                pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(img / f'{name}_leftImg8bit.png')
                Image.fromarray(label).save(
                    gt / f'{name}_gtFine_labelTrainIds.png')


def tiny_run_options(root, ckpt=None):
    """The command-line overrides of the test: data, image size, schedule
    (the stock RandomResize / Resize would blow the images up to 2048x1024),
    and the backbone's checkpoint if given."""
    options = [f'model.backbone.init_cfg.checkpoint={ckpt}'] if ckpt else []
    options += [
        f'model.data_preprocessor.size=({H},{H})',
        f'train_dataloader.dataset.pipeline.2.scale=({W},{H})',
        f'train_dataloader.dataset.pipeline.3.crop_size=({H},{H})',
        'train_cfg.max_iters=1', 'train_cfg.val_interval=1',
        'default_hooks.checkpoint.interval=1',
        'default_hooks.logger.interval=1'
    ]
    for loader in ('train', 'val', 'test'):
        options += [
            f'{loader}_dataloader.dataset.data_root={root}',
            f'{loader}_dataloader.num_workers=0',
            f'{loader}_dataloader.persistent_workers=False'
        ]
    for loader in ('val', 'test'):
        options.append(
            f'{loader}_dataloader.dataset.pipeline.1.scale=({W},{H})')
    return options


def miou(results):
    """mIoU over the classes present, from the dumped predictions and the
    label files: what the stock IoUMetric must report."""
    inter, union = np.zeros(19), np.zeros(19)
    for r in results:
        pred = r['pred_sem_seg']['data'].squeeze(0).numpy()
        gt = np.array(Image.open(r['seg_map_path']))
        valid = gt != 255
        for c in range(19):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    present = union > 0
    return 100 * (inter[present] / union[present]).mean()


@pytest.mark.e2e
def test_train_resume_and_test_on_cityscapes_layout(tmp_path):
    root = tmp_path / 'cityscapes'
    make_cityscapes(root)
    ckpt = tmp_path / 'imagenet.pth'
    save_classifier_checkpoint(IMAGENET, ckpt)
    work = tmp_path / 'work'
    options = tiny_run_options(root, ckpt)
    train = tool('train')
    train.main([CONFIG, '--work-dir', str(work), '--cfg-options', *options])
    saved = {p.name: p.stat().st_mtime_ns for p in work.glob('iter_*.pth')}
    assert list(saved) == ['iter_1.pth']
    log = next(work.glob('*/*.log')).read_text()
    assert 'Iter(val) [1/1]' in log and 'mIoU' in log

    # Resume: one more iteration from iter_1, which stays untouched.
    train.main([
        CONFIG, '--work-dir', str(work), '--resume', '--cfg-options',
        *options, 'train_cfg.max_iters=2'
    ])
    assert torch.load(work / 'iter_2.pth', weights_only=False)['meta'][
        'iter'] == 2
    assert all(
        (work / name).stat().st_mtime_ns == t for name, t in saved.items())
    logs = sorted(work.glob('*/*.log'))
    assert 'resumed epoch: 0, iter: 1' in logs[-1].read_text()

    test = tool('test')
    for tta in ([], ['--tta']):
        out = tmp_path / f'preds{len(tta)}.pkl'
        metrics = test.main([
            CONFIG,
            str(work / 'iter_2.pth'), '--work-dir',
            str(work), '--out',
            str(out), *tta, '--cfg-options', *options
        ])
        results = load(out)
        assert len(results) == len(CITIES['val'])  # the val split
        for r in results:
            assert r['pred_sem_seg']['data'].shape[-2:] == (H, W)
            # TTA's merged prediction carries the meta of one of its views:
            # a scale of the stock multi-scale pipeline other than 1.
            scale = r['scale_factor']
            assert scale[0] == pytest.approx(scale[1])
            if tta:
                assert round(scale[0], 2) in (0.5, 0.75, 1.25, 1.5, 1.75)
            else:
                assert scale[0] == pytest.approx(1.0)
        assert 0 < metrics['mIoU'] == pytest.approx(
            miou(results), abs=0.01)

    # tools/dist_test.sh --tta (a DDP-wrapped TTA model): the same mIoU
    code, log = run_dist('dist_test.sh', [
        CONFIG, str(work / 'iter_2.pth'), '1', '--tta', '--work-dir',
        str(tmp_path / 'dist'), '--cfg-options', *options], tmp_path)
    assert code == 0, log[-3000:]
    assert f"mIoU: {metrics['mIoU']:.4f}" in log


def test_missing_data_root_names_the_expected_layout(tmp_path):
    root = tmp_path / 'cityscapes'
    (tmp_path / 'imagenet.pth').touch()  # checked first
    with pytest.raises(FileNotFoundError) as error:
        tool('train').main([
            CONFIG, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options',
            *tiny_run_options(root, tmp_path / 'imagenet.pth')
        ])
    message = str(error.value)
    assert f'train_dataloader.dataset.data_root: {root} ' in message
    assert 'leftImg8bit/{train,val}/<city>/*_leftImg8bit.png' in message
    assert 'gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png' in message


@pytest.fixture
def not_built(monkeypatch):
    """Fails the test if a runner (which builds the model and the data) is
    made."""
    from mmengine.runner import Runner

    def refuse(*args, **kwargs):
        raise AssertionError('the runner was built')

    monkeypatch.setattr(Runner, '__init__', refuse)


def test_missing_imagenet_checkpoint_says_the_two_ways_on(
        tmp_path, monkeypatch, not_built):
    """The user's command as written, without the ImageNet MoD checkpoint:
    one message naming the path, the command that trains it and the config
    that starts from the stock ResNet; nothing is built."""
    monkeypatch.chdir(ROOT)  # where the user runs the tools: relative names
    missing = tmp_path / 'work_dirs/resnet50-v1c-mod_8xb32_in1k/epoch_100.pth'
    work = tmp_path / 'work'
    train = tool('train')
    with pytest.raises(FileNotFoundError) as error:
        train.main([CONFIG, '--work-dir', str(work), '--cfg-options',
                    f'model.backbone.init_cfg.checkpoint={missing}'])
    message = str(error.value)
    assert message.startswith(
        f'model.backbone.init_cfg.checkpoint: {missing} does not exist.')
    assert ('1. train the model that writes it:\n       tools/dist_train.sh '
            'configs/resnet_mod/resnet50-v1c-mod_8xb32_in1k.py 8') in message
    assert ('2. or use the config that starts from the stock ImageNet ResNet '
            '(no ImageNet MoD run needed):\n       python tools/train.py '
            'configs/fcn_r50mod-stock-init_cityscapes.py') in message
    assert not work.exists()

    # In a distributed run: the user's own GPU count
    monkeypatch.setenv('WORLD_SIZE', '4')
    with pytest.raises(FileNotFoundError, match=re.escape(
            'tools/dist_train.sh configs/fcn_r50mod-stock-init_cityscapes.py '
            '4')):
        train.main([CONFIG, '--cfg-options',
                    f'model.backbone.init_cfg.checkpoint={missing}'])


def test_stock_init_config_changes_only_the_backbone_init():
    check_only_the_init_differs(CONFIG, STOCK_INIT, STOCK)
    # the starting point of mmseg's own FCN config
    from mmengine.hub import get_config
    assert get_config('mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-'
                      '512x1024.py').model.pretrained == STOCK


@pytest.fixture
def stock_v1c(tmp_path, monkeypatch):
    """A stand-in of mmseg's ImageNet ResNet50-V1c where `open-mmlab://
    resnet50_v1c` finds it (TORCH_HOME), in its layout (mmseg's own
    ResNetV1c, bare keys)."""
    from mmseg.models.backbones import ResNetV1c
    torch_home = tmp_path / 'torch'
    monkeypatch.setenv('TORCH_HOME', str(torch_home))
    state = stand_in_state(ResNetV1c(depth=50))
    place_stock_checkpoint(torch_home, STOCK, state)
    return state


def test_stock_init_backbone_takes_the_stock_weights(stock_v1c):
    cfg = load_config(config=STOCK_INIT)
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    backbone = MODELS.build(cfg.model).backbone
    backbone.init_weights()
    got, report = backbone.state_dict(), backbone.warm_start_report
    # the stem (renamed into the backbone's layout where it differs) and
    # the standard blocks: the stock weights
    stock = {canonical_name(k): v for k, v in stock_v1c.items()}
    for key in report.mapped:
        assert torch.equal(got[key], stock[canonical_name(key)]), key
    assert 'stem.0.weight' in stock_v1c
    assert {k for k in got if k.startswith('stem.')} <= set(report.mapped)
    mod = check_mod_blocks_start_fresh(backbone)
    assert len(mod) == 1 + 2 + 3 + 1  # the odd blocks of ResNet50's 3 4 6 3
    for name in mod:  # fresh as in a scratch ResNet-MoD: zero_init_residual
        assert torch.all(backbone.get_submodule(name).block.norm3.weight == 0)


@pytest.mark.e2e
def test_stock_init_trains_on_cityscapes_layout(tmp_path, stock_v1c):
    root = tmp_path / 'cityscapes'
    make_cityscapes(root)
    work = tmp_path / 'work'
    runner = tool('train').main([
        STOCK_INIT, '--work-dir', str(work), '--cfg-options',
        *tiny_run_options(root), 'train_cfg.max_iters=2'
    ])
    assert runner.iter == 2
    assert np.isfinite(
        runner.message_hub.get_scalar('train/loss').current())
    log = next(work.glob('*/*.log')).read_text()
    report = runner.model.backbone.warm_start_report
    assert f'{report.summary()}' in log and STOCK in log
    assert (work / 'iter_2.pth').exists()


@pytest.mark.slow
def test_dist_train_two_cpu_processes(tmp_path):
    """tools/dist_train.sh with 2 CPU processes: the user's command without
    the ImageNet MoD checkpoint stops in every process before building
    anything; the stock-init config trains."""
    from mmseg.models.backbones import ResNetV1c
    torch_home = tmp_path / 'torch'
    place_stock_checkpoint(torch_home, STOCK,
                           stand_in_state(ResNetV1c(depth=50)))
    root = tmp_path / 'cityscapes'
    make_cityscapes(root)

    status, log = run_dist_train(
        [CONFIG, '--work-dir', str(tmp_path / 'missing'), '--cfg-options',
         *tiny_run_options(root)], cwd=tmp_path, TORCH_HOME=str(torch_home))
    assert status != 0
    # said by each process that got to say it (the launcher stops the
    # other when the first fails)
    assert 1 <= log.count('work_dirs/resnet50-v1c-mod_8xb32_in1k/epoch_100'
                          '.pth does not exist') <= 2, log[-5000:]
    assert f'tools/dist_train.sh {STOCK_INIT} 2' in log
    assert not (tmp_path / 'missing').exists()

    work = tmp_path / 'work'
    status, log = run_dist_train(
        [STOCK_INIT, '--work-dir', str(work), '--cfg-options',
         *tiny_run_options(root), 'train_cfg.max_iters=2'],
        cwd=tmp_path, TORCH_HOME=str(torch_home))
    assert status == 0, log[-5000:]
    assert 'GPU number: 2' in log
    assert 'warm start: ' in log and STOCK in log
    assert torch.load(work / 'iter_2.pth', weights_only=False)['meta'][
        'iter'] == 2
