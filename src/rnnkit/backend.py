"""The array module seam: NumPy on CPU, CuPy on GPU.

Every layer asks this module for its array namespace (``xp``) instead of importing
NumPy directly, so the same code runs on either device. CuPy is imported lazily, only
when a CUDA device is asked for, so ``import rnnkit`` never needs a GPU.
"""
from __future__ import annotations

import math
import mmap
import sys

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


# ----------------------------------------------------------- gradients zeroed by the kernel
#: Smallest array (bytes) that ``page_zeros`` maps on its own; smaller ones are plain np.zeros.
#: Each page a step writes costs a page fault after every ``zero_`` (~2.4 us on the benchmark's
#: VM, against ~0.08 us for a memset of the page), so a mapping pays only where the memory it
#: keeps unused is large: config M's (10000, 650) gradient, 25 MiB, of which a step writes ~4;
#: config S's (10000, 100), 4 MiB, measured 1.1-1.5 ms a step slower mapped (of ~13.5 ms).
PAGE_ZEROS_MIN_BYTES = 16 << 20
_PAGE_ZEROS = sys.platform.startswith("linux") and hasattr(mmap, "MADV_DONTNEED")


ALIGN = 64  # bytes: one cache line, and one AVX-512 vector
_ALIGN_FROM = 1 << 16  # bytes: smaller arrays are not aligned


def empty_aligned(xp, shape, dtype):
    """``xp.empty(shape, dtype)`` whose data starts on a 64-byte boundary.

    NumPy's big arrays come from malloc at 16-byte alignment, so a 64-byte vector load of
    the native loops then straddles two cache lines on every access: measured on the C/LSTM
    forward loop (B 32, H 512, T 128) 53-56 ms against 49 ms aligned. CuPy's allocations are
    aligned already. Arrays under 64 KiB are plain ``np.empty``: the four extra NumPy calls
    cost more than the alignment buys there (one-token generation).
    """
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if xp is not np or n * dtype.itemsize < _ALIGN_FROM:
        return xp.empty(shape, dtype=dtype)
    buf = np.empty(n * dtype.itemsize + ALIGN, dtype=np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start : start + n * dtype.itemsize].view(dtype).reshape(shape)


def ascontiguous_aligned(array, dtype=None):
    """``array`` itself when it is a C-contiguous NumPy array of ``dtype`` starting on a
    64-byte boundary, else such a copy (see :func:`empty_aligned`); a CuPy array goes through
    ``cupy.ascontiguousarray`` (its allocations are aligned already)."""
    dtype = np.dtype(dtype or array.dtype)
    if not isinstance(array, np.ndarray) or array.nbytes < _ALIGN_FROM:
        return get_array_module(array).ascontiguousarray(array, dtype=dtype)
    if array.flags.c_contiguous and array.dtype == dtype and array.ctypes.data % ALIGN == 0:
        return array
    out = empty_aligned(np, array.shape, dtype)
    out[...] = array
    return out


def page_zeros(shape, dtype):
    """A zeroed NumPy array whose untouched pages occupy no memory, and that ``zero_`` can
    hand back to the kernel instead of writing zeros.

    On Linux an array of at least ``PAGE_ZEROS_MIN_BYTES`` (16 MiB) lives in its own private
    anonymous mapping: a page no one has written reads as zeros from the kernel's shared
    zero page and is not resident, and ``zero_`` (``madvise(MADV_DONTNEED)``) drops every
    page again. An embedding's weight gradient is the use: a batch writes only the rows of
    the ids it holds (700 of 10,000 on config M), so the rest of its (V, E) gradient never
    costs memory. It is an ordinary C-contiguous ndarray otherwise; elsewhere (other systems,
    small arrays) it is ``np.zeros``.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64))
    nbytes = size * dtype.itemsize
    if not _PAGE_ZEROS or nbytes < PAGE_ZEROS_MIN_BYTES:
        return np.zeros(shape, dtype=dtype)
    # MAP_PRIVATE: MADV_DONTNEED on a private anonymous mapping zero-fills (a shared one would keep the data)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a huge page would make one written row cost 2 MiB
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=dtype, count=size).reshape(shape)


def _whole_mapping(array):
    """The mmap behind ``array`` when ``array`` covers all of it (made by ``page_zeros``), else None."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer keeps the mmap behind a memoryview
        base = base.obj
    if isinstance(base, mmap.mmap) and array.flags.c_contiguous and array.nbytes == len(base):
        return base
    return None


def zero_(array) -> None:
    """``array[...] = 0`` in place; an array from ``page_zeros`` gives its pages back instead."""
    region = _whole_mapping(array) if isinstance(array, np.ndarray) and _PAGE_ZEROS else None
    if region is not None and not region.closed:
        region.madvise(mmap.MADV_DONTNEED)
    else:
        array[...] = 0
