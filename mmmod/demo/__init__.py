"""The one-command demo (``python tools/demo.py``): data and report.

Not imported by ``import mmmod``: it needs scikit-learn and matplotlib.
"""
from .digits import export_digits, split_sizes
from .run import DemoError, run_demo

__all__ = ['DemoError', 'export_digits', 'run_demo', 'split_sizes']
