"""Pointwise cell kernels. ``pointwise`` is the NumPy reference every fast path is tested against."""
from . import pointwise

__all__ = ["pointwise"]
