"""The array module seam: NumPy on CPU, CuPy on GPU.

Every layer asks this module for its array namespace (``xp``) instead of importing
NumPy directly, so the same code runs on either device. CuPy is imported lazily, only
when a CUDA device is asked for, so ``import rnnkit`` never needs a GPU.
"""
from __future__ import annotations

import numpy as np

_DEVICE = "cpu"
_DTYPE = np.float32
_cupy = None


def _import_cupy():
    global _cupy
    if _cupy is None:
        try:
            import cupy  # noqa: PLC0415 - lazy on purpose
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "device 'cuda' needs CuPy; install the extra: pip install 'rnnkit[gpu]'"
            ) from exc
        _cupy = cupy
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cp = _import_cupy()
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def set_device(device: str) -> None:
    """Select the default device for new parameters: ``"cpu"`` or ``"cuda"``."""
    global _DEVICE
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}; expected 'cpu' or 'cuda'")
    if device == "cuda":
        _import_cupy()
    _DEVICE = device


def get_device() -> str:
    return _DEVICE


def xp_for(device: str | None = None):
    """The array module for ``device`` (default: the current default device)."""
    device = device or _DEVICE
    return _import_cupy() if device == "cuda" else np


def get_array_module(array):
    """NumPy or CuPy, whichever owns ``array``."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy
    return np


def set_default_dtype(dtype) -> None:
    """float32 (default, fast) or float64 (gradient checks)."""
    global _DTYPE
    dtype = np.dtype(dtype).type
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype {np.dtype(dtype).name}; expected float32 or float64")
    _DTYPE = dtype


def get_default_dtype():
    return _DTYPE


def to_numpy(array):
    """A NumPy copy (or view) of ``array`` wherever it lives."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_device(array, device: str):
    """Move ``array`` to ``device`` ("cpu" or "cuda")."""
    if device == "cuda":
        return _import_cupy().asarray(array)
    return to_numpy(array)


def default_rng(seed=None):
    """A NumPy random Generator; all rnnkit randomness flows from Generators, never global state."""
    return np.random.default_rng(seed)
