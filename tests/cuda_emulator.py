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
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from rnnkit.kernels import cuda

SHIM = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>
struct rk_dim3 { unsigned x; };
static thread_local rk_dim3 blockIdx, threadIdx, blockDim, gridDim;
static thread_local unsigned char* rk_emu_shared = nullptr;
static thread_local std::barrier<>* rk_emu_block_barrier = nullptr;
extern "C" void rk_emu_set_thread(unsigned b, unsigned t, unsigned grid, unsigned block) {
    blockIdx.x = b; threadIdx.x = t; gridDim.x = grid; blockDim.x = block;
}
using std::exp;  // CUDA's float overloads of the math functions (expf, logf, fmaxf, sqrtf)
using std::fmax;
using std::log;
using std::sqrt;
#define __global__
#define __device__
#define __forceinline__ inline
#define RK_DYNAMIC_SHARED(name) unsigned char* name = rk_emu_shared
inline void __syncthreads() { rk_emu_block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
template <class T> inline T __ldcg(const T* p) { T v; __atomic_load(p, &v, __ATOMIC_SEQ_CST); return v; }

// a cooperative launch: every thread of the grid a std::thread, each block its own shared
// memory and __syncthreads barrier, all running at once (as resident blocks do). Returns the
// number of blocks that wrote past the shared memory the launch asked for (a guard zone).
static const size_t RK_GUARD = 256;
template <class F> static int rk_emu_run(unsigned grid, unsigned block, size_t smem, F body) {
    std::vector<std::vector<unsigned char>> shared(grid, std::vector<unsigned char>(smem + RK_GUARD, 0xa5));
    std::vector<std::unique_ptr<std::barrier<>>> barriers;
    for (unsigned b = 0; b < grid; ++b) barriers.emplace_back(new std::barrier<>(block));
    std::vector<std::thread> threads;
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([&, b, t] {
                rk_emu_set_thread(b, t, grid, block);
                rk_emu_shared = shared[b].data();
                rk_emu_block_barrier = barriers[b].get();
                body();
            });
    for (auto& th : threads) th.join();
    int overruns = 0;
    for (unsigned b = 0; b < grid; ++b)
        for (size_t i = smem; i < smem + RK_GUARD; ++i)
            if (shared[b][i] != 0xa5) { ++overruns; break; }
    return overruns;
}
"""

# each kernel's parameters, in the order of the .cu signatures: p = pointer to REAL, u = pointer to
# unsigned int, q = pointer to long long, b = pointer to unsigned char (bool), d = pointer to double,
# l = long long, i = int, r = a REAL (tests/test_cuda_kernels.py reads them off the .cu and compares)
SIGNATURES = {
    "rk_lstm_forward": "pppppll",
    "rk_lstm_backward": "pppppipippll",
    "rk_gru_forward": "pppippppill",
    "rk_gru_backward": "pppppipppill",
    "rk_rnn_forward": "ppil",
    "rk_rnn_backward": "pppipil",
}
SIGNATURES["rk_softmax_xent_rows"] = "pqbiripll"
SIGNATURES.update({"rk_sgd_step": "pprl", "rk_adam_step": "pppprrrrrl", "rk_sumsq": "pld"})
for _cell in ("rnn", "lstm", "gru"):
    SIGNATURES[f"rk_{_cell}_persistent_forward"] = "plppiippppullll"
    SIGNATURES[f"rk_{_cell}_persistent_backward"] = "plppppppiippulllll"
# the kernels that run as one concurrent grid (all threads at once, with barriers): the
# persistent ones (launched cooperatively on the GPU) and those with block barriers
COOPERATIVE = tuple(name for name in SIGNATURES if "_persistent_" in name) + ("rk_softmax_xent_rows", "rk_sumsq")
_CTYPE = {"p": ctypes.c_void_p, "u": ctypes.c_void_p, "q": ctypes.c_void_p, "b": ctypes.c_void_p,
          "d": ctypes.c_void_p, "l": ctypes.c_longlong, "i": ctypes.c_int}
_POINTEE = {"u": np.dtype(np.uint32), "q": np.dtype(np.int64), "b": np.dtype(np.bool_), "d": np.dtype(np.float64)}
_KERNEL_DECL = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')


_ENTRIES_MACRO = re.compile(r"rk_##cell##_persistent_(forward|backward)\(([^)]*)\)")
_ENTRIES_USE = re.compile(r"^RK_PERSISTENT_ENTRIES\((\w+),", re.M)


def _params(text: str) -> list[tuple[str, str]]:
    return [tuple(p.strip().rsplit(" ", 1)) for p in text.replace("\\", " ").replace("\n", " ").split(",")]


def kernel_params(source: str) -> dict[str, list[tuple[str, str]]]:
    """name -> [(C type, parameter name)] of every kernel in the .cu text, those that the
    RK_PERSISTENT_ENTRIES macro declares for each cell included."""
    out = {}
    for name, params in _KERNEL_DECL.findall(source):
        out[name] = _params(params)
    macro = {kind: _params(params) for kind, params in _ENTRIES_MACRO.findall(source)}
    for cell in _ENTRIES_USE.findall(source):
        for kind, params in macro.items():
            out[f"rk_{cell}_persistent_{kind}"] = params
    return out


def _launchers(source: str) -> str:
    """C entry points that run a whole grid of each kernel: the cooperative ones over
    std::threads all at once, the others thread after thread."""
    text = []
    for name, params in kernel_params(source).items():
        decl = ", ".join(f"{ctype} {pname}" for ctype, pname in params)
        args = ", ".join(pname for _, pname in params)
        if name in COOPERATIVE:
            text.append(f'extern "C" int rk_emu_{name}(unsigned grid, unsigned block, size_t smem, {decl}) {{\n'
                        f"    return rk_emu_run(grid, block, smem, [=] {{ {name}({args}); }});\n}}\n")
        else:
            text.append(f'extern "C" void rk_emu_{name}(unsigned grid, unsigned block, {decl}) {{\n'
                        f"    for (unsigned b = 0; b < grid; ++b)\n"
                        f"        for (unsigned t = 0; t < block; ++t) {{\n"
                        f"            rk_emu_set_thread(b, t, grid, block);\n"
                        f"            {name}({args});\n"
                        f"        }}\n}}\n")
    return "\n".join(text)


_BUILT: dict[str, ctypes.CDLL] = {}


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
        source = cuda.source()
        text = SHIM + f"#define REAL {real}\n" + source + "\n" + _launchers(source)
        self.lib = _BUILT.get(text)  # one build per text and process, shared by the test modules
        if self.lib is None:
            src.write_text(text)
            # -ffp-contract=off: no fused multiply-adds the device might not make either
            subprocess.run([cxx, "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-shared", "-fPIC", "-o",
                            str(lib), str(src)], check=True, capture_output=True, text=True)
            self.lib = _BUILT[text] = ctypes.CDLL(str(lib))
        # (kernel, grid, block) of every launch, in order (a list shared between emulators)
        self.launches: list[tuple[str, int, int]] = [] if launches is None else launches
        # collapse: run each launch as one thread whose grid-stride loop covers every element (the
        # same per-element work, one call instead of grid x block; for long runs of many launches)
        self.collapse = collapse

    def kernel(self, name: str):
        kinds = SIGNATURES[name]
        cooperative = name in COOPERATIVE
        fn = getattr(self.lib, f"rk_emu_{name}")
        fn.restype = ctypes.c_int if cooperative else None
        real = ctypes.c_float if self.dtype == np.float32 else ctypes.c_double
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + ([ctypes.c_size_t] if cooperative else []) + \
            [real if k == "r" else _CTYPE[k] for k in kinds]

        def launch(grid, block, args, shared_mem=0):
            if len(args) != len(kinds):
                raise TypeError(f"{name} takes {len(kinds)} arguments; got {len(args)}")
            values = []
            for kind, arg in zip(kinds, args):
                if kind in "pubqd":
                    want = self.dtype if kind == "p" else _POINTEE[kind]
                    # a view's data pointer is where its element [0] is, as CuPy passes it (a reversed
                    # view of a time axis included); the kernels index from there with the strides given
                    if not isinstance(arg, np.ndarray) or arg.dtype != want:
                        raise TypeError(f"{name}: pointer argument {getattr(arg, 'dtype', type(arg))}; "
                                        f"expected a {want} array")
                    if not cooperative and not arg.flags.c_contiguous:
                        raise TypeError(f"{name}: pointer argument not C-contiguous")
                    values.append(arg.__array_interface__["data"][0])
                elif kind == "l":
                    if not isinstance(arg, np.int64):
                        raise TypeError(f"{name}: long long argument {arg!r}; expected numpy.int64")
                    values.append(int(arg))
                elif kind == "r":
                    if not isinstance(arg, self.dtype.type):
                        raise TypeError(f"{name}: REAL argument {arg!r}; expected numpy.{self.dtype.name}")
                    values.append(float(arg))
                else:
                    if not isinstance(arg, np.int32):
                        raise TypeError(f"{name}: int argument {arg!r}; expected numpy.int32")
                    values.append(int(arg))
            (gx,), (bx,) = grid, block
            self.launches.append((name, gx, bx))
            if cooperative:
                overruns = fn(gx, bx, shared_mem, *values)
                if overruns:
                    raise RuntimeError(f"{name}: {overruns} block(s) wrote past the {shared_mem} bytes of shared "
                                       "memory the launch asked for")
                return
            if shared_mem:
                raise TypeError(f"{name} takes no shared memory; got shared_mem={shared_mem}")
            if self.collapse:
                gx = bx = 1
            fn(gx, bx, *values)

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
