"""mmmod: CNN Mixture-of-Depths backbones for OpenMMLab.

Install the whole pinned stack with ``bash tools/install.sh`` (it builds mmcv's
ops for the installed torch, which a plain ``pip install`` of mmcv 2.1 cannot
do for torch >= 2.14); it installs this package in editable mode last.

The MoD block's CPU kernels (``mmmod/layers/csrc``) are a small C++ extension,
``mmmod._ext``, built against the installed torch (declared in
pyproject.toml). ``MMMOD_WITH_EXT=0 pip install .`` builds none: the ops then
run their pure-PyTorch implementations (``mmmod/layers/ops.py``).
"""
import os
import os.path as osp

from setuptools import find_packages, setup


def version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmmod', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def extensions():
    """``mmmod._ext`` unless ``MMMOD_WITH_EXT=0``."""
    if os.environ.get('MMMOD_WITH_EXT', '1') == '0':
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension
    ext = CppExtension(
        'mmmod._ext', ['mmmod/layers/csrc/ops.cpp'],
        # no FMA contraction: the kernels round as ATen's ops do
        extra_compile_args=['-O3', '-ffp-contract=off'])
    return dict(ext_modules=[ext], cmdclass={'build_ext': BuildExtension})


setup(
    name='mmmod',
    version=version(),
    description='CNN Mixture-of-Depths backbones for mmpretrain, '
    'mmsegmentation and mmdetection',
    long_description=(open('README.md').read()
                      if osp.exists('README.md') else ''),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['mmmod', 'mmmod.*']),
    python_requires='>=3.8',
    install_requires=[
        # the range tested (README): torch 2.1 (oldest) to 2.15 (newest)
        'torch>=2.1,<2.16', 'torchvision', 'mmengine>=0.10',
        'mmcv>=2.0.0,<2.2.0', 'mmpretrain>=1.2', 'mmsegmentation>=1.2',
        'mmdet>=3.3'
    ],
    **extensions(),
)
