"""Faster R-CNN ResNet50-MoD + FPN on Pascal VOC
(configs/faster_rcnn/faster-rcnn_r50mod_fpn_1x_voc0712.py): the stock mmdet
recipe, the hand-off from our ImageNet classifier, and the tools training and
testing it on a tiny VOC07+12 in VOCdevkit's layout; and the config that
starts from torchvision's ImageNet ResNet50 instead
(configs/faster_rcnn/faster-rcnn_r50mod-stock-init_fpn_1x_voc0712.py), on a
stand-in of it."""
import numpy as np
import pytest
import torch
from conftest import ROOT, save_classifier_checkpoint, tool
from mmengine.fileio import load
from mmengine.registry import init_default_scope
from PIL import Image
from stock_checkpoints import (check_mod_blocks_start_fresh,
                               check_only_the_init_differs,
                               place_stock_checkpoint, stand_in_state)

from mmmod import apis

CONFIG = str(ROOT / 'configs' / 'faster_rcnn' /
             'faster-rcnn_r50mod_fpn_1x_voc0712.py')
STOCK_INIT = str(ROOT / 'configs' / 'faster_rcnn' /
                 'faster-rcnn_r50mod-stock-init_fpn_1x_voc0712.py')
STOCK = 'torchvision://resnet50'  # where mmdet's stock Faster R-CNN starts
IMAGENET = ROOT / 'configs' / 'resnet_mod' / 'resnet50-mod_8xb32_in1k.py'
# VOC year -> image set -> image ids (VOC's own naming).
SPLITS = {
    'VOC2007': {
        'trainval': ['000005'],
        'test': ['000001', '000004']
    },
    'VOC2012': {
        'trainval': ['2008_000008']
    },
}
H, W = 96, 128
CLASSES = ('dog', 'person', 'car')
TRAIN = 'train_dataloader.dataset.dataset.datasets'  # Repeat(Concat(07, 12))


def load_config(*options, config=CONFIG):
    return apis.load_config(config, options)


def backbone_weights(state, prefix='backbone.'):
    return {k[len(prefix):]: v
            for k, v in state.items() if k.startswith(prefix)}


def test_config_is_the_stock_voc0712_recipe():
    cfg = load_config()
    assert cfg.default_scope == 'mmdet'
    model = cfg.model
    assert model.type == 'FasterRCNN' and model.neck.type == 'FPN'
    assert model.backbone.type == 'ResNetMoD' and model.backbone.depth == 50
    assert model.roi_head.bbox_head.num_classes == 20
    assert cfg.train_dataloader.batch_size == 2
    repeat = cfg.train_dataloader.dataset
    assert (repeat.type, repeat.times, repeat.dataset.type) == (
        'RepeatDataset', 3, 'ConcatDataset')
    assert [(d.type, d.ann_file) for d in repeat.dataset.datasets] == [
        ('VOCDataset', 'VOC2007/ImageSets/Main/trainval.txt'),
        ('VOCDataset', 'VOC2012/ImageSets/Main/trainval.txt')
    ]
    for d in repeat.dataset.datasets:
        resize, flip = d.pipeline[2:4]
        assert (resize.type, resize.scale, resize.keep_ratio) == ('Resize',
                                                                  (1000, 600),
                                                                  True)
        assert (flip.type, flip.prob) == ('RandomFlip', 0.5)
    test = cfg.test_dataloader.dataset
    assert test.ann_file == 'VOC2007/ImageSets/Main/test.txt'
    assert test.pipeline[1].scale == (1000, 600)
    metric = cfg.test_evaluator
    assert (metric.type, metric.metric, metric.eval_mode) == ('VOCMetric',
                                                              'mAP',
                                                              '11points')
    assert cfg.train_cfg.max_epochs == 4  # x 3 repeats: 12 epochs


def test_default_checkpoint_is_what_the_imagenet_config_writes():
    imagenet = apis.load_config(str(IMAGENET))
    assert imagenet.model.backbone.type == 'ResNetMoD'  # the 7x7 stem
    init = load_config().model.backbone.init_cfg
    assert init.type == 'WarmStartFromResNet'
    assert init.checkpoint == (f'{imagenet.work_dir}/'
                               f'epoch_{imagenet.train_cfg.max_epochs}.pth')


def test_backbone_starts_from_the_imagenet_classifier(tmp_path):
    ckpt = tmp_path / 'epoch_100.pth'
    expected = backbone_weights(save_classifier_checkpoint(IMAGENET, ckpt))
    cfg = load_config(f'model.backbone.init_cfg.checkpoint={ckpt}')
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    got = model.backbone.state_dict()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def write_voc_xml(path, folder, image_id, boxes):
    objects = ''.join(f"""
    <object>
        <name>{name}</name>
        <pose>Unspecified</pose>
        <truncated>0</truncated>
        <difficult>0</difficult>
        <bndbox>
            <xmin>{x1}</xmin>
            <ymin>{y1}</ymin>
            <xmax>{x2}</xmax>
            <ymax>{y2}</ymax>
        </bndbox>
    </object>""" for name, (x1, y1, x2, y2) in boxes)
    path.write_text(f"""<annotation>
    <folder>{folder}</folder>
    <filename>{image_id}.jpg</filename>
    <source>
        <database>The {folder} Database</database>
    </source>
    <size>
        <width>{W}</width>
        <height>{H}</height>
        <depth>3</depth>
    </size>
    <segmented>0</segmented>{objects}
</annotation>
""")


def make_voc(root):
    """VOCdevkit/VOC20xx/{Annotations,JPEGImages,ImageSets/Main}: a JPEG, a
    VOC XML annotation (two objects of at least 32 px, the stock filter's
    bbox_min_size) per image, and the image-set lists."""
    rng = np.random.default_rng(0)
    for year, image_sets in SPLITS.items():
        base = root / year
        for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for image_set, ids in image_sets.items():
            (base / 'ImageSets' / 'Main' / f'{image_set}.txt').write_text(
                ''.join(f'{i}\n' for i in ids))
            for i in ids:
                pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / 'JPEGImages' / f'{i}.jpg')
                x, y = rng.integers(1, 20, 2)
                boxes = [(rng.choice(CLASSES), (x, y, x + 60, y + 50)),
                         (rng.choice(CLASSES), (60, 40, 120, 90))]
                write_voc_xml(base / 'Annotations' / f'{i}.xml', year, i,
                              boxes)


def tiny_run_options(root, ckpt=None):
    """The command-line overrides of the test: data, image size (the stock
    (1000, 600) would make every image 600 px high), schedule, and the
    backbone's checkpoint if given."""
    options = [f'model.backbone.init_cfg.checkpoint={ckpt}'] if ckpt else []
    options += [
        'train_dataloader.dataset.times=1',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'train_cfg.max_epochs=1', 'default_hooks.logger.interval=1',
        # One step at lr 0.01 from random heads would blow the features of
        # our stand-in ImageNet weights up; keep the low-scored boxes of an
        # untrained model: some to check.
        'optim_wrapper.optimizer.lr=1e-4', 'model.test_cfg.rcnn.score_thr=0'
    ]
    for i in range(2):
        options += [
            f'{TRAIN}.{i}.data_root={root}',
            f'{TRAIN}.{i}.pipeline.2.scale=({W},{H})'
        ]
    for loader in ('val', 'test'):
        options += [
            f'{loader}_dataloader.dataset.data_root={root}',
            f'{loader}_dataloader.dataset.pipeline.1.scale=({W},{H})',
            f'{loader}_dataloader.num_workers=0',
            f'{loader}_dataloader.persistent_workers=False'
        ]
    return options


@pytest.mark.e2e
def test_train_and_test_on_voc0712_layout(tmp_path):
    root = tmp_path / 'VOCdevkit'
    make_voc(root)
    ckpt = tmp_path / 'imagenet.pth'
    imagenet = backbone_weights(save_classifier_checkpoint(IMAGENET, ckpt))
    work = tmp_path / 'work'
    options = tiny_run_options(root, ckpt)

    runner = tool('train').main(
        [CONFIG, '--work-dir', str(work), '--cfg-options', *options])
    # VOC2007 + VOC2012 trainval, one batch of 2 images.
    assert len(runner.train_dataloader.dataset) == 2
    assert runner.iter == 1
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert np.isfinite(loss)
    trained = backbone_weights(
        torch.load(work / 'epoch_1.pth', weights_only=False)['state_dict'])
    # The stock recipe freezes the stem and stage 1 (frozen_stages=1) and
    # keeps every BN in eval mode (norm_eval): those are still the ImageNet
    # weights; the rest trained.
    for name, value in trained.items():
        frozen = name.startswith(('conv1.', 'bn1.', 'layer1.'))
        if frozen or 'running_' in name or 'num_batches' in name:
            assert torch.equal(value, imagenet[name]), name
    assert not torch.equal(trained['layer4.1.block.conv2.weight'],
                           imagenet['layer4.1.block.conv2.weight'])

    out = tmp_path / 'preds.pkl'
    metrics = tool('test').main([
        CONFIG,
        str(work / 'epoch_1.pth'), '--work-dir',
        str(work), '--out',
        str(out), '--cfg-options', *options
    ])
    assert 0 <= metrics['pascal_voc/mAP'] <= 1  # VOCMetric, 11 points
    results = load(out)
    test_ids = SPLITS['VOC2007']['test']
    assert sorted(r['img_id'] for r in results) == test_ids
    for r in results:
        boxes = r['pred_instances']['bboxes']
        assert len(boxes) and (boxes[:, 2:] <= torch.tensor(
            [W, H])).all()  # in the original image's pixels


def test_missing_data_root_names_the_expected_layout(tmp_path):
    root = tmp_path / 'VOCdevkit'
    (tmp_path / 'imagenet.pth').touch()  # checked first
    with pytest.raises(FileNotFoundError) as error:
        tool('train').main([
            CONFIG, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options',
            *tiny_run_options(root, tmp_path / 'imagenet.pth')
        ])
    message = str(error.value)
    assert f'{TRAIN}.0.data_root: {root} ' in message
    assert 'VOC2007/{Annotations,ImageSets/Main,JPEGImages}/' in message


def test_stock_init_config_changes_only_the_backbone_init(tmp_path,
                                                          monkeypatch):
    check_only_the_init_differs(CONFIG, STOCK_INIT, STOCK)
    # the starting point of mmdet's own config
    from mmengine.hub import get_config
    stock_cfg = get_config('mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_'
                           'voc0712.py')
    assert stock_cfg.model.backbone.init_cfg.checkpoint == STOCK

    # and it is what the message of the MoD config names
    monkeypatch.chdir(ROOT)
    missing = tmp_path / 'work_dirs/resnet50-mod_8xb32_in1k/epoch_100.pth'
    with pytest.raises(FileNotFoundError) as error:
        apis.check_checkpoints(
            load_config(f'model.backbone.init_cfg.checkpoint={missing}'))
    message = str(error.value)
    assert 'tools/dist_train.sh configs/resnet_mod/resnet50-mod_8xb32_in1k' \
        '.py 8' in message
    assert 'python tools/train.py configs/faster_rcnn/faster-rcnn_r50mod-' \
        'stock-init_fpn_1x_voc0712.py' in message


@pytest.mark.e2e
def test_stock_init_trains_on_voc0712_layout(tmp_path, monkeypatch):
    """From a stand-in of `torchvision://resnet50` (torchvision's own
    ResNet50, where mmengine caches it): the stem and the standard blocks
    take its weights (those the recipe freezes keep them through training),
    the MoD blocks start fresh."""
    import torchvision
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    stock = stand_in_state(torchvision.models.resnet50())
    place_stock_checkpoint(tmp_path / 'torch', STOCK, stock)
    make_voc(tmp_path / 'VOCdevkit')
    options = tiny_run_options(tmp_path / 'VOCdevkit')
    work = tmp_path / 'work'
    runner = tool('train').main(
        [STOCK_INIT, '--work-dir', str(work), '--cfg-options', *options])
    assert runner.iter == 1
    assert np.isfinite(runner.message_hub.get_scalar('train/loss').current())
    check_mod_blocks_start_fresh(runner.model.backbone)
    report = runner.model.backbone.warm_start_report
    assert 'fc.weight' in report.skipped
    trained = backbone_weights(
        torch.load(work / 'epoch_1.pth', weights_only=False)['state_dict'])
    assert set(report.mapped) | set(report.new) == set(trained)
    # frozen_stages=1 and norm_eval: the stem, stage 1 and every BN
    # statistic are still the stock weights after a training step
    for name in report.mapped:
        frozen = name.startswith(('conv1.', 'bn1.', 'layer1.'))
        if frozen or 'running_' in name:
            assert torch.equal(trained[name], stock[name]), name
    assert not torch.equal(trained['layer4.0.conv2.weight'],
                           stock['layer4.0.conv2.weight'])
    log = next(work.glob('*/*.log')).read_text()
    assert report.summary() in log and STOCK in log
