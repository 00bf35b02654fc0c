from .onnx import export, max_abs_diff, session

__all__ = ['export', 'max_abs_diff', 'session']
