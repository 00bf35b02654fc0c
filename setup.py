"""mmmod: CNN Mixture-of-Depths backbones for OpenMMLab.

Install the whole pinned stack with ``bash tools/install.sh`` (it builds mmcv's
ops for the installed torch, which a plain ``pip install`` of mmcv 2.1 cannot
do for torch >= 2.14); it installs this package in editable mode last.

The MoD block's CPU inference kernels (``mmmod/layers/csrc``) are a small C++
extension, ``mmmod._ext``, built against the installed torch: install with
``pip install --no-build-isolation``.
"""
import os.path as osp

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension


def version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmmod', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmmod',
    version=version(),
    description='CNN Mixture-of-Depths backbones for mmpretrain, '
    'mmsegmentation and mmdetection',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['mmmod', 'mmmod.*']),
    python_requires='>=3.8',
    ext_modules=[
        CppExtension(
            'mmmod._ext', ['mmmod/layers/csrc/mod_block.cpp'],
            # OpenMP: at::parallel_for's threads (torch's own libgomp)
            extra_compile_args=['-O3', '-fopenmp'],
            extra_link_args=['-fopenmp'])
    ],
    cmdclass={'build_ext': BuildExtension},
    install_requires=[
        'torch', 'torchvision', 'mmengine>=0.10', 'mmcv>=2.0.0,<2.2.0',
        'mmpretrain>=1.2', 'mmsegmentation>=1.2', 'mmdet>=3.3'
    ],
)
