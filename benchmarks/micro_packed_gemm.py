"""The recurrent layers' per-step GEMM: NumPy (OpenBLAS) against MKL with W_hh packed once.

Why: a time loop calls ``h_{t-1} @ W_hh^T`` (forward) and ``dA_t @ W_hh`` (backward) once per
step with a small batch; OpenBLAS packs W_hh again at every call, PyTorch's oneDNN LSTM keeps it
packed. MKL's ``cblas_sgemm_pack`` / ``cblas_sgemm_compute`` is the one packed-GEMM interface a
well-kept library offers, so this times the T-step loops both ways (median of ``--reps``)
and prints GFLOP/s.

MKL is optional: it is looked up as ``$MKL_RT`` (a path to libmkl_rt), else ``libmkl_rt`` in
this interpreter's ``lib/`` (``pip install mkl`` puts it there), else on the loader's path.
Without it only the NumPy figures are printed.

    python benchmarks/micro_packed_gemm.py --threads 1
    python benchmarks/micro_packed_gemm.py --threads 2 --sizes C:32,512,2048,128 M:20,650,2600,35
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import glob
import os
import sys
import time

import numpy as np

ROW_MAJOR, NO_TRANS, B_MATRIX, PACKED = 101, 111, 162, 151  # CBLAS enums (mkl_cblas.h)


def load_mkl():
    """libmkl_rt as a ctypes library with the three functions typed, or None."""
    candidates = [os.environ.get("MKL_RT", "")]
    candidates += sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    candidates.append(ctypes.util.find_library("mkl_rt") or "")
    for path in filter(None, candidates):
        try:
            mkl = ctypes.CDLL(path)
        except OSError:
            continue
        ptr, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        mkl.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
        mkl.cblas_sgemm_pack_get_size.argtypes = [i, i, i, i]
        mkl.cblas_sgemm_pack.argtypes = [i] * 6 + [f, ptr, i, ptr]
        mkl.cblas_sgemm_compute.argtypes = [i] * 6 + [ptr, i, ptr, i, f, ptr, i]
        mkl.path = path
        return mkl
    return None


class PackedB:
    """``x @ B`` for many x of one shape (m, k) with B (k, n) packed once by MKL."""

    def __init__(self, mkl, B: np.ndarray, m: int):
        self.mkl, (self.k, self.n), self.m = mkl, B.shape, m
        size = mkl.cblas_sgemm_pack_get_size(B_MATRIX, m, self.n, self.k)
        self.buf = np.empty(size // 4 + 16, np.float32)
        B = np.ascontiguousarray(B, dtype=np.float32)
        mkl.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, NO_TRANS, m, self.n, self.k, 1.0, B.ctypes.data, self.n,
                             self.buf.ctypes.data)

    def matmul(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        if x.shape != (self.m, self.k) or out.shape != (self.m, self.n) or x.dtype != np.float32 \
                or not (x.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError(f"x {x.shape} {x.dtype}, out {out.shape}; expected C-contiguous float32 "
                             f"({self.m}, {self.k}) and ({self.m}, {self.n})")
        self.mkl.cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, self.m, self.n, self.k, x.ctypes.data, self.k,
                                     self.buf.ctypes.data, self.n, 0.0, out.ctypes.data, self.n)
        return out


def loop_ms(fn, steps: int, reps: int) -> float:
    """Median wall time (ms) of ``steps`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def parse_size(text: str) -> tuple[str, int, int, int, int]:
    name, _, dims = text.partition(":")
    try:
        b, h, g, t = (int(v) for v in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}; expected NAME:B,H,G,T such as C:32,512,2048,128") from None
    return name, b, h, g, t


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (NumPy's and MKL's)")
    p.add_argument("--sizes", type=parse_size, nargs="*", default=[parse_size("C:32,512,2048,128"),
                                                                  parse_size("M:20,650,2600,35")],
                   help="NAME:B,H,G,T: batch, hidden size, gate width (4H for an LSTM), steps")
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args(argv)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    threadpool_limits(a.threads, user_api="blas")
    mkl = load_mkl()
    if mkl is not None:
        mkl.MKL_Set_Num_Threads(ctypes.c_int(a.threads))
    print(f"threads {a.threads}; MKL: {mkl.path if mkl else 'not found (NumPy only)'}")
    rows = []
    for name, b, h, g, t in a.sizes:
        rng = np.random.default_rng(0)
        x, dA = rng.standard_normal((b, h), dtype=np.float32), rng.standard_normal((b, g), dtype=np.float32)
        W = rng.standard_normal((g, h), dtype=np.float32)  # W_hh (G, H)
        WT = np.ascontiguousarray(W.T)
        y, dh = np.empty((b, g), np.float32), np.empty((b, h), np.float32)
        gflop = 2.0 * b * h * g * t / 1e9
        row = {"size": name, "B": b, "H": h, "G": g, "T": t, "threads": a.threads,
               "numpy_fwd_ms": loop_ms(lambda: np.matmul(x, WT, out=y), t, a.reps),
               "numpy_bwd_ms": loop_ms(lambda: np.matmul(dA, W, out=dh), t, a.reps)}
        if mkl is not None:
            t0 = time.perf_counter()
            fwd = PackedB(mkl, WT, b)
            row["mkl_pack_ms"] = (time.perf_counter() - t0) * 1e3
            bwd = PackedB(mkl, W, b)
            row["mkl_packed_fwd_ms"] = loop_ms(lambda: fwd.matmul(x, y), t, a.reps)
            np.testing.assert_allclose(y, x @ WT, rtol=1e-3, atol=1e-3)
            row["mkl_packed_bwd_ms"] = loop_ms(lambda: bwd.matmul(dA, dh), t, a.reps)
            np.testing.assert_allclose(dh, dA @ W, rtol=1e-3, atol=1e-3)
        rows.append(row)
        cells = [f"{k[:-3]} {v:.1f} ms ({gflop / v * 1e3:.0f} GFLOP/s)" for k, v in row.items()
                 if k.endswith("_ms") and k != "mkl_pack_ms"]
        pack = f"; packing once {row['mkl_pack_ms']:.2f} ms" if "mkl_pack_ms" in row else ""
        print(f"{name} (B={b}, H={h}, G={g}, {t} steps): " + ", ".join(cells) + pack, flush=True)
    return rows


if __name__ == "__main__":
    main()
