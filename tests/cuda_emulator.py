"""Run rnnkit's CUDA kernels (``kernels/cuda_cells.cu``) on the CPU, for tests without a GPU.

The ``.cu`` text is compiled by the host C++ compiler behind a few lines that stand in
for CUDA (``__global__`` and ``__device__`` become nothing, ``blockIdx``/``threadIdx``/
``blockDim``/``gridDim`` become globals), and a launch ``kernel((grid,), (block,), args)``
runs every thread of the grid in turn, each a call of the kernel with those globals set.
That is how the kernels' math and indexing are checked against the NumPy reference on a
machine without a GPU; only what the shim cannot reach (the device compiler, memory
spaces, concurrency) is left to the GPU tests.

``Emulator(dtype).kernel(name)`` has the signature ``kernels.cuda`` launches with, so
``monkeypatch.setattr(cuda, "_kernel", emulator.lookup)`` runs the real wrappers on
NumPy arrays.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from rnnkit.kernels import cuda

SHIM = r"""
#include <cmath>
struct rk_dim3 { unsigned x; };
extern "C" { rk_dim3 blockIdx, threadIdx, blockDim, gridDim; }
#define __global__
#define __device__
#define __forceinline__ inline
"""

# each kernel's parameters, in the order of the .cu signatures: p = pointer, l = long long, i = int
SIGNATURES = {
    "rk_lstm_forward": "pppppll",
    "rk_lstm_backward": "pppppipippll",
    "rk_gru_forward": "pppippppill",
    "rk_gru_backward": "pppppipppill",
    "rk_rnn_forward": "ppil",
    "rk_rnn_backward": "pppipil",
}
_CTYPE = {"p": ctypes.c_void_p, "l": ctypes.c_longlong, "i": ctypes.c_int}


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


class Emulator:
    """The kernels of ``cuda_cells.cu`` compiled for the CPU with ``REAL`` = ``dtype``."""

    def __init__(self, dtype, workdir: Path, launches: list | None = None, collapse: bool = False):
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler on the PATH")
        self.dtype = np.dtype(dtype)
        real = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[self.dtype]
        src = Path(workdir) / f"cells_{real}.cpp"
        lib = Path(workdir) / f"cells_{real}.so"
        src.write_text(SHIM + f"#define REAL {real}\n" + cuda.source())
        # -ffp-contract=off: no fused multiply-adds the device might not make either
        subprocess.run([cxx, "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(lib), str(src)],
                       check=True, capture_output=True, text=True)
        self.lib = ctypes.CDLL(str(lib))
        # each of the four is a struct of one unsigned (.x): set through its first member
        self.dims = {name: ctypes.c_uint.in_dll(self.lib, name)
                     for name in ("blockIdx", "threadIdx", "blockDim", "gridDim")}
        # (kernel, grid, block) of every launch, in order (a list shared between emulators)
        self.launches: list[tuple[str, int, int]] = [] if launches is None else launches
        # collapse: run each launch as one thread whose grid-stride loop covers every element (the
        # same per-element work, one call instead of grid x block; for long runs of many launches)
        self.collapse = collapse

    def kernel(self, name: str):
        fn = getattr(self.lib, name)
        fn.restype = None
        kinds = SIGNATURES[name]
        fn.argtypes = [_CTYPE[k] for k in kinds]

        def launch(grid, block, args):
            if len(args) != len(kinds):
                raise TypeError(f"{name} takes {len(kinds)} arguments; got {len(args)}")
            values = []
            for kind, arg in zip(kinds, args):
                if kind == "p":
                    if not isinstance(arg, np.ndarray) or arg.dtype != self.dtype or not arg.flags.c_contiguous:
                        raise TypeError(f"{name}: pointer argument {getattr(arg, 'dtype', type(arg))}; "
                                        f"expected a C-contiguous {self.dtype} array")
                    values.append(arg.ctypes.data)
                elif kind == "l":
                    if not isinstance(arg, np.int64):
                        raise TypeError(f"{name}: long long argument {arg!r}; expected numpy.int64")
                    values.append(int(arg))
                else:
                    if not isinstance(arg, np.int32):
                        raise TypeError(f"{name}: int argument {arg!r}; expected numpy.int32")
                    values.append(int(arg))
            (gx,), (bx,) = grid, block
            self.launches.append((name, gx, bx))
            if self.collapse:
                gx = bx = 1
            self.dims["gridDim"].value, self.dims["blockDim"].value = gx, bx
            for b in range(gx):
                self.dims["blockIdx"].value = b
                for t in range(bx):
                    self.dims["threadIdx"].value = t
                    fn(*values)

        return launch

    def lookup(self, name: str, dtype):
        if np.dtype(dtype) != self.dtype:
            raise TypeError(f"emulator built for {self.dtype}; asked for {np.dtype(dtype)}")
        return self.kernel(name)


class Emulators:
    """One emulator per dtype; ``lookup`` has the signature of ``kernels.cuda._kernel``."""

    def __init__(self, workdir: Path, collapse: bool = False):
        self.launches: list[tuple[str, int, int]] = []  # both dtypes' launches, in order
        self.by_dtype = {np.dtype(d): Emulator(d, workdir, self.launches, collapse)
                         for d in (np.float32, np.float64)}

    def lookup(self, name: str, dtype):
        return self.by_dtype[np.dtype(dtype)].lookup(name, dtype)
