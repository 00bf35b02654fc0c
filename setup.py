from setuptools import find_packages, setup

setup(
    name='mmmod',
    version='0.1.0',
    description='CNN Mixture-of-Depths backbones for OpenMMLab',
    packages=find_packages(include=['mmmod', 'mmmod.*']),
    python_requires='>=3.8',
)
