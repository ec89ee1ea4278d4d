"""The cell kernels, three interchangeable implementations of one contract.

- ``reference`` (``pointwise``): the NumPy pointwise math of one step, written for
  reading; the tests' oracle.
- ``fused``: the same math in fewer, whole-block NumPy passes, bit-identical to it.
- ``native``: the whole time loop of a layer in C (``native``, ``csrc/native.c``): each
  thread owns some hidden units, computes their gates from ``W_hh`` packed once per
  sequence and applies the cell right there. Float32 on NumPy arrays only; everything
  else on the CPU (float64 gradient checks, single steps) runs ``fused``. Checked against
  the reference to float32 rounding, not bit for bit (its tanh is its own polynomial).
- ``cuda``: on CuPy arrays, each step's pointwise math as one CUDA kernel
  (``cuda_cells.cu``), whichever of ``native`` and ``fused`` is selected (``reference``
  keeps the reference there too).

``native`` is the default where it was built and the CPU has AVX-512 or AVX2 (see
``native.available()``), else ``fused``. The time loop asks at every call, so
``rnnkit.kernels.use("reference")`` switches every layer (for debugging, or to time the
difference); ``with kernels.using("fused"): ...`` switches for a block.
"""
from contextlib import contextmanager

import numpy as _np

from .. import backend as _backend

from . import cuda, fused, native, pointwise

_POINTWISE = {"native": fused, "fused": fused, "reference": pointwise}
_selected = "native" if native.available() else "fused"


def use(name: str) -> None:
    """Select the kernels every recurrent layer runs: ``"native"``, ``"fused"`` or ``"reference"``."""
    global _selected
    if name not in _POINTWISE:
        raise ValueError(f"kernels {name!r}; expected one of {sorted(_POINTWISE)}")
    if name == "native" and not native.available():
        raise RuntimeError(f"native kernels unavailable: {native.why_unavailable()}")
    _selected = name


def selected() -> str:
    """The name of the kernels in use."""
    return _selected


@contextmanager
def using(name: str):
    """``with kernels.using("reference"):`` run a block with other kernels, then switch back."""
    before = _selected
    use(name)
    try:
        yield
    finally:
        use(before)


def active():
    """The pointwise module the NumPy time loop calls (``fused`` or ``pointwise``)."""
    return _POINTWISE[_selected]


def pointwise_for(xp):
    """The pointwise module the time loop calls for arrays of ``xp``: on CuPy arrays the
    CUDA kernels (``cuda``) unless the reference is selected, on NumPy ``active()``."""
    if xp is not _np and _selected != "reference":
        return cuda
    return _POINTWISE[_selected]


def native_active() -> bool:
    """True when recurrent layers run their float32 CPU time loops in the native kernels."""
    return _selected == "native"


NATIVE_MIN_SIZE = 1 << 15  # below this many elements a ctypes call costs more than the pass


def native_for(*arrays, min_size: int = NATIVE_MIN_SIZE) -> bool:
    """True when the native kernels are selected and take these arrays: NumPy, float32,
    C-contiguous (None entries are skipped), the first at least ``min_size`` elements
    (smaller passes stay in NumPy: calling C costs more than it saves). The layers and
    optimizers ask this before each native call and otherwise run their NumPy code."""
    if _selected != "native":
        return False
    first = True
    for a in arrays:
        if a is None:
            continue
        if type(a) is not _np.ndarray or a.dtype != _np.float32 or not a.flags.c_contiguous:
            return False
        if first and a.size < min_size:
            return False
        first = False
    return True


_ROW_BLOCK_BYTES = 4 << 20


def accumulate_matmul(out, a, b) -> None:
    """``out += a @ b`` for a weight gradient, without an ``out``-sized temporary.

    With the native kernels selected: one BLAS call with beta = 1 where NumPy's OpenBLAS
    can take the arrays (``native.gemm_accumulate``); on CuPy arrays, one cuBLAS call
    with beta = 1 (``cuda.gemm``). Otherwise (NumPy kernels, a layout BLAS cannot take)
    through a scratch of a few MiB, block by block of rows: a (V, H) gradient of a big
    output layer would else be a second (V, H) array at the step's peak.
    """
    if native_active() and native.gemm_accumulate(out, a, b):
        return
    if _backend.get_array_module(out) is not _np and out.dtype.char in "fd" and out.flags.c_contiguous:
        cuda.gemm(a, b, out, beta=1.0)  # cuBLAS with beta = 1: no scratch, one call
        return
    rows = max(1, _ROW_BLOCK_BYTES // max(1, out.itemsize * out.shape[1]))
    if rows >= out.shape[0]:
        out += a @ b
        return
    xp = _backend.get_array_module(out)
    scratch = xp.empty((rows, out.shape[1]), dtype=out.dtype)
    for start in range(0, out.shape[0], rows):
        stop = min(start + rows, out.shape[0])
        block = scratch[: stop - start]
        xp.matmul(a[start:stop], b, out=block)
        out[start:stop] += block


__all__ = ["accumulate_matmul", "active", "cuda", "fused", "native", "native_active", "native_for", "pointwise",
           "pointwise_for", "selected", "use", "using"]
