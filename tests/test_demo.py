"""tools/demo.py end to end, shortened with --quick (1 epoch on 64 images):
the exported data, the training and testing through the stock runner, the
table, its Markdown file and figure, the re-run and the errors."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'tools', 'demo.py')
CONFIGS = {
    'ResNet18': 'configs/demo/resnet18_1xb16_digits.py',
    'ResNet18-MoD': 'configs/demo/resnet18-mod_1xb16_digits.py',
}


def run_demo(*args, timeout=600):
    return subprocess.run([sys.executable, DEMO, *args],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('demo')
    data, work = str(tmp / 'digits'), str(tmp / 'work')
    proc = run_demo('--quick', '--data-root', data, '--work-dir', work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return data, work, proc.stdout


def table_rows(text):
    """``{model: [cells]}`` of the comparison table in ``text``."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| ResNet18'):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_exported_digits(demo):
    from PIL import Image

    from mmmod.demo import split_sizes
    data, _, stdout = demo
    assert f'exported the digits to {data}' in stdout
    sizes = split_sizes(1797)
    assert sizes == dict(train=1258, val=180, test=359)
    with open(osp.join(data, 'meta.json')) as f:
        assert json.load(f)['splits'] == sizes
    names = {}
    for split, n in sizes.items():
        files = glob.glob(osp.join(data, split, '*', '*.png'))
        assert len(files) == n, split
        # every class in every split (the split is stratified)
        assert sorted(os.listdir(osp.join(data, split))) == [
            str(c) for c in range(10)]
        names[split] = {osp.basename(f) for f in files}
        img = Image.open(files[0])
        assert (img.size, img.mode) == ((32, 32), 'RGB')
    # no image in two splits
    assert len(set.union(*names.values())) == 1797


@pytest.mark.slow
def test_table_matches_models(demo):
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    from mmmod.utils import count_macs, count_params

    _, work, stdout = demo
    rows = table_rows(stdout)
    assert list(rows) == list(CONFIGS)
    with open(osp.join(work, 'results.md')) as f:
        assert table_rows(f.read()) == rows  # the same table in the file
    medians = {}
    for name, config in CONFIGS.items():
        top1, params, macs, latency, speedup = rows[name]
        model = MODELS.build(Config.fromfile(osp.join(ROOT, config)).model)
        assert params == f'{count_params(model) / 1e6:.2f}'
        assert macs == f'{count_macs(model, (3, 32, 32)) / 1e6:.1f}'
        # top-1 is the stock test metric, as tools/test.py logged it in the
        # model's work dir (beside the training's log)
        logs = glob.glob(
            osp.join(work, osp.splitext(osp.basename(config))[0], '*',
                     '*.log'))
        assert len(logs) == 2
        logged = []
        for log in logs:
            with open(log) as f:
                logged += re.findall(
                    r'Epoch\(test\).*accuracy/top1: ([\d.]+)', f.read())
        assert len(logged) == 1 and top1 == f'{float(logged[0]):.2f}'
        median = float(re.findall(r'[\d.]+', latency)[0])
        medians[name] = median, float(speedup.rstrip('x'))
    base = medians['ResNet18'][0]
    assert medians['ResNet18'][1] == 1.0
    mod, speedup = medians['ResNet18-MoD']
    assert speedup == pytest.approx(base / mod, abs=0.01)


@pytest.mark.slow
def test_figure_and_checkpoints(demo):
    from PIL import Image
    _, work, _ = demo
    with Image.open(osp.join(work, 'results.png')) as img:
        assert img.format == 'PNG' and min(img.size) >= 200
    for config in CONFIGS.values():
        name = osp.splitext(osp.basename(config))[0]
        assert len(glob.glob(osp.join(work, name, 'best_*.pth'))) == 1


@pytest.mark.slow
def test_rerun_reuses_data_and_unwritable_work_dir(demo, tmp_path):
    data, _, _ = demo
    stamps = {f: os.stat(f).st_mtime_ns for f in glob.glob(
        osp.join(data, '*', '*', '*.png'))}
    # A path under a regular file: mkdir fails, even for root.
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    bad = str(blocker / 'work')
    proc = run_demo('--quick', '--data-root', data, '--work-dir', bad)
    assert f'reusing the digits exported earlier in {data}' in proc.stdout
    assert stamps == {f: os.stat(f).st_mtime_ns for f in stamps}
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert f"--work-dir: cannot write the work dir '{bad}'" in proc.stderr


def test_bad_arguments(tmp_path):
    proc = run_demo('--epochs', '0')
    assert proc.returncode == 2 and '--epochs: must be >= 1' in proc.stderr
    # a data root that is not an export of ours is not overwritten
    (tmp_path / 'mine.txt').write_text('keep me')
    proc = run_demo('--data-root', str(tmp_path))
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert f"--data-root: cannot export the digits to '{tmp_path}'" \
        in proc.stderr
    assert (tmp_path / 'mine.txt').read_text() == 'keep me'


def test_damaged_export_is_redone(tmp_path):
    from mmmod.demo import export_digits
    root = str(tmp_path / 'digits')
    meta, reused = export_digits(root)
    assert not reused
    assert export_digits(root) == (meta, True)
    lost = glob.glob(osp.join(root, 'val', '7', '*.png'))[0]
    os.remove(lost)
    assert export_digits(root) == (meta, False)
    assert osp.isfile(lost)


def test_busy_machine_is_said_in_the_report(tmp_path):
    """Latencies whose quartiles lie far apart (a busy machine) get a
    warning to rerun, in the printed and the written report."""
    from mmmod.demo.run import write_report
    from mmmod.utils import spread_warning
    from mmmod.utils.timing import summarise
    quiet = summarise([10.0, 10.1, 10.2, 9.9, 10.0])
    busy = summarise([25.0, 98.0, 40.0, 26.0, 90.0])
    results = {
        name: dict(top1=90.0, params=1e6, macs=m, latency=lat)
        for name, m, lat in (('ResNet18', 2e8, busy),
                             ('ResNet18-MoD', 1e8, quiet))
    }
    warning = spread_warning({n: r['latency'] for n, r in results.items()})
    assert 'ResNet18 (' in warning and 'ResNet18-MoD' not in warning
    meta = dict(size=32, splits=dict(train=1, val=1, test=1))
    write_report(results, str(tmp_path), meta, 1, 5, warning)
    text = (tmp_path / 'results.md').read_text()
    assert 'unsteady timings' in text and 'rerun on a quiet machine' in text
    assert spread_warning({'ResNet18-MoD': quiet}) is None
