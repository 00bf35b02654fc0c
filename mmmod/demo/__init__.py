"""The one-command demo (``python tools/demo.py``): data and report.

Not imported by ``import mmmod``: it needs scikit-learn and matplotlib.
"""
from .digits import export_digits, split_sizes

__all__ = ['export_digits', 'split_sizes']
