"""The paper's CIFAR experiments (supplement S4, Table 11): the configs, the
fixed 90/10 train/val split, and train -> best-on-val checkpoint -> test ->
mean +/- std over seeds, on tiny CIFAR-10/100 in the real on-disk format."""
import glob
import json
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, tool
from mmengine.config import Config
from mmengine.registry import DATASETS, MODELS, init_default_scope
from mmengine.runner import set_random_seed

from mmmod import paper
from mmmod.datasets import train_val_indices
from mmmod.utils import count_macs, count_params

CONFIGS = ROOT / 'configs' / 'cifar'

CASES = [(m, n) for m in paper.CIFAR for n in (10, 100)]

# The stock classes, reading the real format, without the md5 checks of
# the real files (CIFAR10 has no switch for them: it would try to download).
TINY_MODULE = '''
from mmpretrain.datasets import CIFAR10, CIFAR100
from mmpretrain.registry import DATASETS


def _no_md5(cls):
    return dict(
        train_list=[[name, None] for name, _ in cls.train_list],
        test_list=[[name, None] for name, _ in cls.test_list],
        meta=dict(cls.meta, md5=None))


TinyCIFAR10 = DATASETS.register_module(
    'TinyCIFAR10', force=True,
    module=type('TinyCIFAR10', (CIFAR10, ), _no_md5(CIFAR10)))
TinyCIFAR100 = DATASETS.register_module(
    'TinyCIFAR100', force=True,
    module=type('TinyCIFAR100', (CIFAR100, ), _no_md5(CIFAR100)))
'''
NUM_TRAIN, NUM_TEST = 100, 20  # -> 90 train, 10 val


def _images(rng, n):
    return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)


def _dump(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f)


def write_cifar10(root, rng):
    """cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta."""
    folder = osp.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    sizes = [NUM_TRAIN // 5] * 5 + [NUM_TEST]
    for name, n in zip(names, sizes):
        _dump(
            osp.join(folder, name), {
                'batch_label': name,
                'labels': rng.integers(0, 10, n).tolist(),
                'data': _images(rng, n),
                'filenames': [f'{name}_{i}.png' for i in range(n)]
            })
    _dump(
        osp.join(folder, 'batches.meta'), {
            'label_names': [f'class{i}' for i in range(10)],
            'num_cases_per_batch': NUM_TRAIN // 5,
            'num_vis': 3072
        })


def write_cifar100(root, rng):
    """cifar-100-python/: train, test, meta."""
    folder = osp.join(root, 'cifar-100-python')
    os.makedirs(folder)
    for name, n in (('train', NUM_TRAIN), ('test', NUM_TEST)):
        _dump(
            osp.join(folder, name), {
                'batch_label': name,
                'fine_labels': rng.integers(0, 100, n).tolist(),
                'coarse_labels': rng.integers(0, 20, n).tolist(),
                'data': _images(rng, n),
                'filenames': [f'{name}_{i}.png' for i in range(n)]
            })
    _dump(
        osp.join(folder, 'meta'), {
            'fine_label_names': [f'fine{i}' for i in range(100)],
            'coarse_label_names': [f'coarse{i}' for i in range(20)]
        })


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Tiny CIFAR-10 and -100 on disk and the module that reads them."""
    root = tmp_path_factory.mktemp('cifar')
    rng = np.random.default_rng(0)
    write_cifar10(str(root / 'cifar10'), rng)
    write_cifar100(str(root / 'cifar100'), rng)
    (root / 'tiny_cifar.py').write_text(TINY_MODULE)
    sys.path.insert(0, str(root))
    import tiny_cifar  # noqa: F401  registers TinyCIFAR10/100 here
    yield root
    sys.path.remove(str(root))


def _config(model, classes):
    return CONFIGS / f'{model}_8xb16_cifar{classes}.py'


def tiny_options(root, classes):
    """``--cfg-options`` that point the three datasets at the tiny data."""
    keys = ('train_dataloader.dataset.dataset',
            'val_dataloader.dataset.dataset', 'test_dataloader.dataset')
    return [f'{k}.type=TinyCIFAR{classes}' for k in keys] + [
        f'{k}.data_root={root / f"cifar{classes}"}' for k in keys
    ]


@pytest.mark.e2e
@pytest.mark.parametrize(
    'model,classes', CASES, ids=[f'{m}-c{n}' for m, n in CASES])
def test_config_matches_table11(model, classes):
    cfg = Config.fromfile(str(_config(model, classes)))
    # The protocol: 90/10 split of the training set, same split for both
    # sides; best-on-val checkpoint; the stock test set for testing.
    train, val = (cfg.train_dataloader.dataset, cfg.val_dataloader.dataset)
    for side, subset in ((train, 'train'), (val, 'val')):
        assert side.type == 'TrainValSplit' and side.subset == subset
        assert (side.val_ratio, side.seed) == (0.1, 0)
        assert side.dataset.type == f'CIFAR{classes}'
        assert side.dataset.split == 'train'
    assert val.dataset.pipeline == cfg.test_pipeline  # no augmentation
    assert cfg.test_dataloader.dataset.type == f'CIFAR{classes}'
    assert cfg.test_dataloader.dataset.split == 'test'
    assert cfg.default_hooks.checkpoint.save_best == 'accuracy/top1'

    backbone = cfg.model.backbone.type
    stock = 'ResNet_CIFAR' if model.startswith('resnet') else 'VGG'
    mod = {'ResNet_CIFAR': 'ResNetMoD_CIFAR', 'VGG': 'VGGMoD'}[stock]
    assert backbone == (mod if model.endswith('-mod') else stock)
    init_default_scope('mmpretrain')
    net = MODELS.build(cfg.model)
    params_c10, params_c100, mmac = paper.CIFAR[model]  # Table 11
    params = params_c10 if classes == 10 else params_c100
    assert count_params(net) / 1e6 == pytest.approx(params, abs=0.011)
    if classes == 10:
        assert count_macs(net, (3, 32, 32)) / 1e6 == pytest.approx(
            mmac, rel=0.03)


def test_train_val_indices():
    train, val = train_val_indices(50000)
    assert (len(train), len(val)) == (45000, 5000)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(50000))
    # fixed by its own seed, whatever the global random state
    np.random.seed(1)
    assert train_val_indices(50000) == (train, val)
    assert train_val_indices(50000, seed=1)[1] != val
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match='val_ratio'):
            train_val_indices(100, val_ratio=bad)


def _image_keys(dataset):
    return [
        dataset.get_data_info(i)['img'].tobytes() for i in range(len(dataset))
    ]


@pytest.mark.e2e
@pytest.mark.parametrize('classes', [10, 100])
def test_split_on_disk(tiny, classes):
    cfg = Config.fromfile(str(_config('resnet18-mod', classes)))
    cfg.merge_from_dict(
        dict(o.split('=', 1) for o in tiny_options(tiny, classes)))
    init_default_scope('mmpretrain')

    def build(loader, seed):
        set_random_seed(seed)  # what randomness.seed does in a run
        return DATASETS.build(cfg[loader].dataset)

    train, val, test = (
        build(k, 0)
        for k in ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    assert (len(train), len(val), len(test)) == (90, 10, NUM_TEST)
    full = DATASETS.build(dict(cfg.train_dataloader.dataset.dataset))
    assert len(full) == NUM_TRAIN
    train_keys, val_keys = _image_keys(train), _image_keys(val)
    assert not set(train_keys) & set(val_keys)
    assert sorted(train_keys + val_keys) == sorted(_image_keys(full))
    assert not set(_image_keys(test)) & set(_image_keys(full))
    # labels come along with their images (the fine labels for CIFAR-100)
    labels = {
        k: full.get_data_info(i)['gt_label']
        for i, k in enumerate(_image_keys(full))
    }
    assert all(labels[k] == val.get_data_info(i)['gt_label']
               for i, k in enumerate(val_keys))
    assert max(labels.values()) < classes
    assert cfg.model.head.num_classes == len(full.metainfo['classes'])
    # the same split for every training seed
    assert _image_keys(build('train_dataloader', 1)) == train_keys
    assert _image_keys(build('val_dataloader', 2)) == val_keys
    # training samples are augmented, val samples are not
    assert 'RandomCrop' in [
        type(t).__name__ for t in train.pipeline.transforms
    ]
    assert np.array_equal(val[0]['inputs'].permute(1, 2, 0).numpy(),
                          val.get_data_info(0)['img'])

    with pytest.raises(ValueError, match='subset'):
        DATASETS.build(dict(cfg.val_dataloader.dataset, subset='test'))


def _json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_seeds_train_test_gather(tiny, tmp_path, capsys):
    """tools/cifar_seeds.sh with two seeds on ResNet18-MoD: training keeps
    the best-on-val checkpoint, tools/test.py tests it on the test split,
    gather_seeds.py averages the runs."""
    # A config that reads the tiny data through TinyCIFAR10; custom_imports
    # are imported when the config is loaded, so they live in a file.
    config = tmp_path / 'resnet18-mod_8xb16_cifar10.py'
    config.write_text(
        f"_base_ = '{_config('resnet18-mod', 10)}'\n"
        "custom_imports = dict(imports=['mmmod', 'tiny_cifar'])\n")
    options = tiny_options(tiny, 10) + [
        'train_cfg.max_epochs=2', 'train_dataloader.batch_size=30',
        'default_hooks.logger.interval=1'
    ] + [
        f'{loader}.num_workers=0'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ]
    work = tmp_path / 'work'
    env = dict(
        os.environ,
        SEEDS='0 1',
        PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join(
            [str(tiny), str(ROOT),
             os.environ.get('PYTHONPATH', '')]))
    script = [str(ROOT / 'tools' / 'cifar_seeds.sh'), str(config), str(work)]
    done = subprocess.run(
        script + options,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    losses, tested, best_of = {}, {}, {}
    for seed in (0, 1):
        run = work / f'seed{seed}'
        dumped = Config.fromfile(str(run / config.name))
        assert dumped.randomness.seed == seed
        # one best-on-val checkpoint, at the epoch of the best val accuracy
        best = glob.glob(str(run / 'best_accuracy_top1_epoch_*.pth'))
        assert len(best) == 1
        logs = _json_lines(
            glob.glob(str(run / '*' / 'vis_data' / 'scalars.json'))[0])
        val_accs = [r['accuracy/top1'] for r in logs if 'accuracy/top1' in r]
        assert len(val_accs) == 2
        epoch = int(re.search(r'epoch_(\d+)', best[0]).group(1))
        assert epoch == 1 + int(np.argmax(val_accs))
        best_of[seed] = best[0]
        losses[seed] = [r['loss'] for r in logs if 'loss' in r]
        tested[seed] = _json_lines(
            glob.glob(str(run / 'test' / '*' / '*.json'))[0])[-1]
        assert 0 <= tested[seed]['accuracy/top1'] <= 100
    assert losses[0] != losses[1]  # the seeds did change the runs

    # tools/test.py on seed 0's best checkpoint: the same accuracy, from
    # predictions on exactly the test split, in order
    preds = tmp_path / 'preds.pkl'
    metrics = tool('test').main([
        str(config), best_of[0], '--work-dir',
        str(tmp_path / 'retest'), '--out',
        str(preds), '--cfg-options', *options
    ])
    assert metrics['accuracy/top1'] == pytest.approx(
        tested[0]['accuracy/top1'])
    with open(preds, 'rb') as f:
        results = pickle.load(f)
    with open(tiny / 'cifar10' / 'cifar-10-batches-py' / 'test_batch',
              'rb') as f:
        test_labels = pickle.load(f)['labels']
    assert [int(r['gt_label']) for r in results] == test_labels
    correct = [int(r['pred_label']) == int(r['gt_label']) for r in results]
    assert metrics['accuracy/top1'] == pytest.approx(100 * np.mean(correct))

    # gather_seeds.py: mean +/- sample std of the two test accuracies
    gather = tool('analysis/gather_seeds')
    out = tmp_path / 'table.json'
    (row, ) = gather.main([str(work), '--out', str(out)])
    accs = [tested[s]['accuracy/top1'] for s in (0, 1)]
    assert row['values'] == accs and row['seeds'] == [0, 1]
    assert row['mean'] == pytest.approx(np.mean(accs))
    assert row['std'] == pytest.approx(np.std(accs, ddof=1))
    assert (row['model'], row['set']) == ('resnet18-mod', 'C10')
    params, _, mmac = paper.CIFAR['resnet18-mod']
    assert round(row['params'], 2) == params
    assert row['mmac'] == pytest.approx(mmac, rel=0.03)
    assert json.loads(out.read_text()) == [row]
    printed = capsys.readouterr().out
    assert f'{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}' in printed

    # a rerun skips the tested seeds
    again = subprocess.run(
        script + options,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60)
    assert again.returncode == 0
    assert again.stdout.count('already tested') == 2
