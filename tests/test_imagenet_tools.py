"""tools/ end to end on a tiny ImageNet in the real on-disk layout: train,
test, resume, 2 CPU processes, a missing data root, the complexity table."""
import glob
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
import stock_checkpoints
from conftest import RunsCode, tool
from mmengine.config import Config
from PIL import Image

from mmmod import apis

pytestmark = pytest.mark.e2e

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/resnet_mod/resnet18-mod_8xb32_in1k.py')
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 4, 2
N_TRAIN = CLASSES * TRAIN_PER_CLASS  # 12 images: 6 iterations of 2


train_tool = tool('train')
test_tool = tool('test')


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    """The layout mmpretrain's ImageNet reads (its docs' "Prepare Dataset"):
    train/<wnid>/*.JPEG, flat val/*.JPEG, and meta/{train,val}.txt with
    '<path> <label>' lines (without them it demands all 1000 class folders).
    """
    root = tmp_path_factory.mktemp('imagenet')
    rng = np.random.default_rng(0)
    lines = {'train': [], 'val': []}
    for label in range(CLASSES):
        wnid = f'n{label:08d}'
        os.makedirs(root / 'train' / wnid)
        for i in range(TRAIN_PER_CLASS + VAL_PER_CLASS):
            split = 'train' if i < TRAIN_PER_CLASS else 'val'
            name = (f'{wnid}/{wnid}_{i}.JPEG' if split == 'train' else
                    f'ILSVRC2012_val_{label}{i}.JPEG')
            os.makedirs(root / split, exist_ok=True)
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name)
            lines[split].append(f'{name} {label}')
    os.makedirs(root / 'meta')
    for split, rows in lines.items():
        (root / 'meta' / f'{split}.txt').write_text('\n'.join(rows) + '\n')
    return root


def tiny(root, epochs=1):
    """--cfg-options for a few seconds' run of the stock pipeline on 32x32
    crops, batch 2, in the main process."""
    opts = [
        f'train_cfg.max_epochs={epochs}', 'default_hooks.logger.interval=1',
        'randomness.seed=0', 'train_dataloader.dataset.pipeline.1.scale=32'
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.dataset.data_root={root}',
                 f'{loader}.batch_size=2', f'{loader}.num_workers=0']
    for loader in ('val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.dataset.pipeline.1.scale=36',
                 f'{loader}.dataset.pipeline.2.crop_size=32']
    return opts


def meta(ckpt):
    return torch.load(ckpt, map_location='cpu', weights_only=False)['meta']


def assert_same(a, b, where='checkpoint'):
    """``a`` and ``b`` hold equal values of equal types, tensors and arrays
    bit for bit."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f'{where}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    elif hasattr(a, '__dict__'):  # HistoryBuffer
        assert_same(vars(a), vars(b), where)
    else:
        assert a == b, where


def logged_steps(runner):
    with open(osp.join(runner.log_dir, 'vis_data', 'scalars.json')) as f:
        return [json.loads(line)['step'] for line in f if '"loss"' in line]


def test_train_resume_test(imagenet, tmp_path, monkeypatch):
    # The tools themselves must make torch >= 2.6 load the checkpoints.
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    work_dir = str(tmp_path / 'work')
    args = [CONFIG, '--work-dir', work_dir, '--cfg-options']

    runner = train_tool.main(args + tiny(imagenet, epochs=1))
    assert type(runner.model.backbone).__name__ == 'ResNetMoD'
    assert len(runner.train_dataloader.dataset) == N_TRAIN
    assert (runner.epoch, runner.iter) == (1, N_TRAIN // 2)
    ckpt = osp.join(work_dir, 'epoch_1.pth')
    assert (meta(ckpt)['epoch'], meta(ckpt)['iter']) == (1, 6)
    # It loads as data (torch >= 2.5): nothing in it beyond the allowlist,
    # and what weights_only reads is what a full unpickling reads, bit for
    # bit.
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(
            ckpt) == []
        as_data = torch.load(ckpt, map_location='cpu', weights_only=True)
        full = torch.load(ckpt, map_location='cpu', weights_only=False)
        assert_same(as_data, full)
        assert as_data['message_hub']['log_scalars']['train/loss'].mean() > 0

    # --resume picks up epoch_1.pth and trains epoch 2 only.
    runner = train_tool.main(args + tiny(imagenet, epochs=2) + ['--resume'])
    assert (runner.epoch, runner.iter) == (2, 12)
    assert logged_steps(runner) == list(range(7, 13))
    log = open(osp.join(runner.log_dir, osp.basename(runner.log_dir) +
                        '.log')).read()
    assert 'resumed epoch: 1, iter: 6' in log
    assert meta(osp.join(work_dir, 'epoch_2.pth'))['iter'] == 12

    metrics = test_tool.main([
        CONFIG, osp.join(work_dir, 'epoch_2.pth'), '--work-dir',
        str(tmp_path / 'test'), '--cfg-options'
    ] + tiny(imagenet))
    top1 = metrics['accuracy/top1']
    # the stock Accuracy metric over the 6 val images
    n_val = CLASSES * VAL_PER_CLASS
    assert 0 <= top1 <= 100
    assert top1 * n_val / 100 == pytest.approx(round(top1 * n_val / 100))
    assert metrics['accuracy/top5'] >= top1


def test_checkpoint_of_another_model_is_refused(imagenet, tmp_path):
    """A ResNet18-MoD checkpoint on the ResNet50-MoD config: refused, naming
    the keys, in tools/test.py, --resume and load_from; --partial-load runs
    it anyway."""
    from conftest import save_classifier_checkpoint
    r50 = osp.join(ROOT, 'configs/resnet_mod/resnet50-mod_8xb32_in1k.py')
    ckpt = tmp_path / 'r18mod.pth'
    save_classifier_checkpoint(CONFIG, ckpt)
    opts = ['--work-dir', str(tmp_path / 'work'), '--cfg-options'
            ] + tiny(imagenet)

    with pytest.raises(ValueError) as err:
        test_tool.main([r50, str(ckpt)] + opts)
    msg = str(err.value)
    assert f'{ckpt} does not fit the model of this config' in msg
    assert 'shapes that differ: backbone.layer1.0.conv1.weight' in msg
    assert 'missing from the checkpoint: backbone.layer1.0.conv3.weight' in msg
    assert '--partial-load' in msg
    for args in ([r50, '--resume', str(ckpt)] + opts,
                 [r50] + opts + [f'load_from={ckpt}']):
        with pytest.raises(ValueError, match='does not fit the model'):
            train_tool.main(args)
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))  # nothing ran

    metrics = test_tool.main([r50, str(ckpt), '--partial-load'] + opts)
    assert 0 <= metrics['accuracy/top1'] <= 100
    # the right model's checkpoint passes the check
    assert test_tool.main([CONFIG, str(ckpt)] + opts)['accuracy/top1'] >= 0


class Getattr:
    """A pickle that asks for a HistoryBuffer attribute that is no
    statistics method."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


def test_checkpoint_that_runs_code_is_refused(imagenet, tmp_path,
                                              monkeypatch):
    """A checkpoint whose pickle would open a file: refused before anything
    is built, naming the type and the opt-in, in tools/test.py, load_from,
    --resume, build_model and the converters; the file is never opened.
    With --trust-checkpoint a file of a type that is no data loads."""
    from fractions import Fraction

    from conftest import save_classifier_checkpoint
    # --trust-checkpoint below sets it for the process: undone after
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0')
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')
    marker = tmp_path / 'opened'
    good = tmp_path / 'good.pth'
    state = save_classifier_checkpoint(CONFIG, good)
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': state, 'meta': RunsCode(str(marker))}, evil)
    opts = ['--work-dir', str(tmp_path / 'work'), '--cfg-options'
            ] + tiny(imagenet)
    attempts = [
        lambda: test_tool.main([CONFIG, str(evil)] + opts),
        lambda: train_tool.main([CONFIG] + opts + [f'load_from={evil}']),
        lambda: train_tool.main([CONFIG, '--resume', str(evil)] + opts),
        lambda: apis.build_model(CONFIG, str(evil)),
        lambda: tool('deployment/switch_to_deploy').main(
            [CONFIG, str(evil), str(tmp_path / 'dst.pth')]),
    ]
    for attempt in attempts:
        with pytest.raises(apis.CheckpointNotDataError) as err:
            attempt()
        assert f'{evil} holds io.open' in str(err.value)
        assert '--trust-checkpoint' in str(err.value)
    # the same refusal where the file is not scanned first (as a URL's)
    with pytest.raises(apis.CheckpointNotDataError, match='io.open'):
        with apis.checkpoints_as_data():
            torch.load(evil)
    # URLs too (here one already in torch.hub's cache: no download)
    hub = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    hub.mkdir(parents=True)
    (hub / 'evil.pth').write_bytes(evil.read_bytes())
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    from mmengine.runner import CheckpointLoader
    with pytest.raises(apis.CheckpointNotDataError, match='io.open'):
        with apis.checkpoints_as_data():
            CheckpointLoader.load_checkpoint('https://example.invalid/evil.pth')
    # getattr is allowed for HistoryBuffer's statistics alone
    torch.save({'meta': Getattr()}, tmp_path / 'getattr.pth')
    with pytest.raises(apis.CheckpointNotDataError, match='__init__'):
        with apis.checkpoints_as_data():
            torch.load(tmp_path / 'getattr.pth')
    assert not marker.exists()
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))

    # a checkpoint cannot rewrite the statistics every HistoryBuffer of the
    # process shares (mmengine's own __setstate__ merges the file's table)
    from mmengine.logging import HistoryBuffer
    table = HistoryBuffer._statistics_methods
    HistoryBuffer([1.0], [1])  # (the class fills its table on first use)
    saved = dict(table)
    table['mean'] = HistoryBuffer
    try:
        torch.save({'hub': HistoryBuffer([2.0, 4.0], [1, 1])},
                   tmp_path / 'hub.pth')
    finally:
        table.clear()
        table.update(saved)
    with apis.checkpoints_as_data():
        loaded = torch.load(tmp_path / 'hub.pth')['hub']
    assert table == saved and type(loaded) is HistoryBuffer
    assert loaded.statistics('mean') == 3.0

    odd = tmp_path / 'odd.pth'  # a harmless type that is no data
    torch.save({'state_dict': state, 'meta': {'ratio': Fraction(1, 3)}}, odd)
    with pytest.raises(apis.CheckpointNotDataError,
                       match='fractions.Fraction'):
        test_tool.main([CONFIG, str(odd)] + opts)
    metrics = test_tool.main([CONFIG, str(odd), '--trust-checkpoint'] + opts)
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_deployed_checkpoint_tests_as_the_trained_one(imagenet, tmp_path):
    """tools/deployment/switch_to_deploy.py converts a checkpoint; the model
    built with deploy=True loads it and tools/test.py gives the training
    form's predictions."""
    from mmengine.runner.checkpoint import save_checkpoint
    from mmmod.layers import ConvChain, mod_blocks
    from stock_checkpoints import stand_in_state
    ckpt, deployed = tmp_path / 'r18mod.pth', tmp_path / 'deployed.pth'
    trained_model, _ = apis.build_model(CONFIG)
    stand_in_state(trained_model.backbone)
    classes = dict(classes=('a', 'b', 'c'))
    save_checkpoint({'meta': {'dataset_meta': classes},
                     'state_dict': trained_model.state_dict()}, str(ckpt))
    converter = tool('deployment/switch_to_deploy')
    with pytest.raises(ValueError, match='new file'):
        converter.convert(CONFIG, str(ckpt), str(ckpt))
    converter.main([CONFIG, str(ckpt), str(deployed)])
    state = torch.load(deployed, map_location='cpu', weights_only=True)
    assert state['meta']['deploy'] is True
    assert state['meta']['dataset_meta'] == classes  # kept
    assert 'backbone.layer1.1.block.weight.0' in state['state_dict']
    assert not any('layer1.1.block.bn' in k for k in state['state_dict'])

    opts = ['--work-dir', str(tmp_path / 'test'), '--cfg-options'
            ] + tiny(imagenet)
    trained = test_tool.main([CONFIG, str(ckpt)] + opts)
    fast = test_tool.main([CONFIG, str(deployed)] + opts +
                          ['model.backbone.deploy=True'])
    assert fast == trained
    model, _ = apis.build_model(CONFIG, str(deployed),
                                ['model.backbone.deploy=True'])
    blocks = mod_blocks(model)
    assert blocks and all(
        b.deploy and isinstance(b.block, ConvChain) for b in blocks)
    # the class scores themselves: the converted model is the trained one
    trained_model.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = trained_model.head(trained_model.extract_feat(x))
        got = model.head(model.extract_feat(x))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the training form's checkpoint does not fit the inference form
    with pytest.raises(ValueError, match='does not fit'):
        apis.build_model(CONFIG, str(ckpt), ['model.backbone.deploy=True'])


def run_dist(script, args, tmp_path):
    """tools/SCRIPT with 2 CPU processes; returns its log."""
    code, log = stock_checkpoints.run_dist(script, args, tmp_path)
    assert code == 0, log[-5000:]
    return log


def test_dist_preflight_prints_one_message(imagenet, tmp_path):
    """tools/dist_train.sh / dist_test.sh check once before torchrun starts
    N processes: a missing checkpoint or data root is one message, no
    traceback, exit 1, no process started."""
    fcn = osp.join(ROOT, 'configs/fcn_r50mod_cityscapes.py')
    code, log = stock_checkpoints.run_dist('dist_train.sh', [fcn, '4'],
                                           tmp_path)
    assert code == 1
    assert log.count('does not exist') == 1, log
    # the way on, for the same 4 processes
    assert 'tools/dist_train.sh configs/fcn_r50mod-stock-init_cityscapes.py 4'\
        in log.replace(ROOT + os.sep, '')
    assert 'Traceback' not in log and 'torch.distributed' not in log
    assert log.startswith('error: model.backbone.init_cfg.checkpoint: ')

    missing = str(tmp_path / 'no.pth')
    code, log = stock_checkpoints.run_dist(
        'dist_test.sh', [CONFIG, missing, '2', '--cfg-options'] +
        tiny(imagenet), tmp_path)
    assert (code, log) == (1, f'error: checkpoint not found: {missing}\n')
    code, log = stock_checkpoints.run_dist(
        'dist_train.sh', [CONFIG, '2', '--cfg-options',
                          'train_dataloader.dataset.data_root=/nowhere'],
        tmp_path)
    assert code == 1 and log.count('/nowhere does not exist') == 1, log
    assert 'Traceback' not in log


@pytest.mark.slow
def test_dist_train_and_test_two_cpu_processes(imagenet, tmp_path):
    work_dir = tmp_path / 'dist'
    log = run_dist('dist_train.sh', [CONFIG, '2', '--work-dir',
                                     str(work_dir), '--cfg-options'] +
                   tiny(imagenet), tmp_path)
    assert 'GPU number: 2' in log
    # each process sees half of the 12 images: 3 iterations of 2 per epoch
    # (1 process: 6)
    assert 'Epoch(train) [1][3/3]' in log
    assert 'Epoch(val) [1][2/2]' in log
    assert meta(work_dir / 'epoch_1.pth')['iter'] == 3

    # 2 processes evaluate 3 val images each; the stock metric gathers them
    # into the same numbers as 1 process over all 6
    ckpt = str(work_dir / 'epoch_1.pth')
    log = run_dist('dist_test.sh', [CONFIG, ckpt, '2', '--work-dir',
                                    str(tmp_path / 'dist_test'),
                                    '--cfg-options'] + tiny(imagenet),
                   tmp_path)
    single = test_tool.main([CONFIG, ckpt, '--work-dir',
                             str(tmp_path / 'test'), '--cfg-options'] +
                            tiny(imagenet))
    assert 'Epoch(test) [2/2]' in log
    assert (f"accuracy/top1: {single['accuracy/top1']:.4f}  "
            f"accuracy/top5: {single['accuracy/top5']:.4f}") in log


def test_missing_data_root_is_named(imagenet, tmp_path):
    missing = tmp_path / 'no_imagenet'
    with pytest.raises(FileNotFoundError) as err:
        train_tool.main([CONFIG, '--work-dir', str(tmp_path), '--cfg-options']
                        + tiny(imagenet) +
                        [f'val_dataloader.dataset.data_root={missing}'])
    msg = str(err.value)
    assert f'val_dataloader.dataset.data_root: {missing} does not exist' in msg
    assert f'{missing}/\n  train/<wnid>/*.JPEG' in msg
    assert 'meta/val.txt' in msg


def test_missing_data_in_nested_and_other_datasets(tmp_path):
    # mmdet's VOC0712: RepeatDataset(ConcatDataset([VOC2007, VOC2012]))
    voc = tmp_path / 'voc.py'
    voc.write_text("_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712"
                   ".py'\n")
    cfg = Config.fromfile(str(voc))
    # VOC2007 is there, VOC2012 is not
    voc2007 = tmp_path / 'VOC2007' / 'ImageSets' / 'Main'
    voc2007.mkdir(parents=True)
    (voc2007 / 'trainval.txt').write_text('000005\n')
    key = 'train_dataloader.dataset.dataset.datasets.1'
    cfg.merge_from_dict({
        'train_dataloader.dataset.dataset.datasets.0.data_root':
        str(tmp_path),
        f'{key}.data_root': str(tmp_path / 'VOCdevkit')
    })
    with pytest.raises(FileNotFoundError) as err:
        apis.check_data_roots(cfg, ['train_dataloader'])
    assert f'{key}.data_root: {tmp_path}/VOCdevkit does not exist' in str(
        err.value)
    assert 'VOC2012/{Annotations,ImageSets/Main,JPEGImages}/' in str(
        err.value)
    # the root exists, its annotation file does not
    cfg.merge_from_dict({f'{key}.data_root': str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=f'{key}.ann_file: '
                       f'{tmp_path}/VOC2012/ImageSets/Main/trainval.txt'):
        apis.check_data_roots(cfg, ['train_dataloader'])

    def loader(**dataset):
        return dict(test_dataloader=dict(dataset=dataset))

    city = loader(type='CityscapesDataset', data_root='/no/cityscapes')
    with pytest.raises(FileNotFoundError, match='gtFine/{train,val}/<city>'):
        apis.check_data_roots(city, ['test_dataloader'])
    other = loader(type='ADE20KDataset', data_root='/no/ade')
    with pytest.raises(FileNotFoundError, match='as the ADE20KDataset class'):
        apis.check_data_roots(other, ['test_dataloader'])
    # CIFAR downloads itself unless told not to
    apis.check_data_roots(
        loader(type='CIFAR10', data_root='/no/cifar'), ['test_dataloader'])
    with pytest.raises(FileNotFoundError, match='cifar-10-batches-py/'):
        apis.check_data_roots(
            loader(type='CIFAR10', data_root='/no/cifar', download=False),
            ['test_dataloader'])
    # only the loaders the run uses are checked
    apis.check_data_roots(city, ['train_dataloader'])


def test_complexity_table(tmp_path, capsys):
    from mmmod import paper
    md = tmp_path / 'table7.md'
    rows = tool('analysis/complexity').main([
        CONFIG,
        osp.join(ROOT, 'configs/resnet_mod/baselines/resnet18_8xb32_in1k.py'),
        '--input-size', '224', '--out', str(md)
    ])
    # the paper's Table 7; stock ResNet18's 11.69M is torchvision's count
    # (the paper's 11.18M leaves out the head)
    mod = (paper.GMACS['resnet18-mod'], paper.PARAMS['resnet18-mod'])
    base = (paper.GMACS['resnet18'], 11.69)
    assert [(n, round(g, 2), round(p, 2)) for n, g, p in rows] == [
        ('resnet18-mod', *mod), ('resnet18', *base)]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == 'Input shape: 3x224x224'
    assert printed[1].split() == ['Model', 'GMACs', 'Params', '(M)']
    assert printed[2].split() == ['resnet18-mod', f'{mod[0]:.2f}',
                                  f'{mod[1]:.2f}']
    assert md.read_text().splitlines() == [
        '| Model | GMACs | Params (M) |', '|---|---:|---:|',
        f'| resnet18-mod | {mod[0]:.2f} | {mod[1]:.2f} |',
        f'| resnet18 | {base[0]:.2f} | {base[1]:.2f} |'
    ]
