from .onnx import export, max_abs_diff, session
from .tensor_model import TensorModel, build_tensor_model

__all__ = [
    'TensorModel', 'build_tensor_model', 'export', 'max_abs_diff', 'session'
]
