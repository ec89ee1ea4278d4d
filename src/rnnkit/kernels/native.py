"""The native CPU kernels (``csrc/native.c``) behind a small NumPy-facing API.

What they do that NumPy cannot: run a recurrent layer's whole time loop in one call,
with ``W_hh`` packed once per sequence instead of once per step (OpenBLAS packs it again
at every ``h @ W_hh.T``), each of the threads computing every gate of its own hidden
units, and the pointwise cell math fused into the GEMM tile that produced it. The
memory-bound passes NumPy runs on one core run here on all of them: softmax
cross-entropy over the (N, V) logits, the clip norm's float64 sum of squares, the SGD and
Adam updates, a bias add (the elementwise ones rounded exactly as NumPy rounds them).
:func:`linear_xent` is the output layer and its loss in one pass, with GEMM tiles of its
own, for vocabularies big against the hidden size (where OpenBLAS's GEMMs with one side of
100 run at ~65 % of its rate and the logits go through memory three times).
:func:`gemm_accumulate` is not this library's code: it calls NumPy's own OpenBLAS
``cblas_sgemm`` with beta = 1, for weight gradients that accumulate without a temporary.

The library is optional. It is built with the package when a C compiler is there
(``pip install -e .``); :func:`available` is False when it was not built, when the CPU
has neither AVX-512 nor AVX2 + FMA, or when ``RNNKIT_NATIVE=0`` is set. Callers then keep
the NumPy kernels, which are also the tests' reference for these (float32 only:
float64, for gradient checks, always runs the NumPy path).

Threads: as many as NumPy's OpenBLAS is set to use (so ``threadpoolctl`` limits apply),
or ``RNNKIT_NUM_THREADS``. The first use hands OpenBLAS this library's thread pool
through ``openblas_set_threads_callback_function`` (OpenBLAS >= 0.3.27), so that a
GEMM's threads and the time loop's are the same threads: OpenBLAS's own workers spin for
about 0.1 s after each call (measured), and two pools spinning on two cores would take
turns on them. ``RNNKIT_OPENBLAS_HOOK=0`` leaves OpenBLAS alone. An idle worker of the pool
spins ``RNNKIT_SPIN_US`` (500) microseconds before it sleeps.

Memory: the first use also asks glibc's malloc (``mallopt``) to keep freed memory for
reuse instead of unmapping every big block: a training step frees and allocates the same
tens of MiB each time, and with glibc's defaults each of those arrays came back as fresh
pages, faulted in and zeroed by the kernel (measured: ~2,000 page faults and 16-24 ms of
system time per step of the benchmark's models, 27 % of the S step). The resident set
then stays at the run's high-water mark. ``RNNKIT_MALLOC_TUNING=0`` keeps glibc's defaults.

Environment variables, read when rnnkit is imported (``RNNKIT_NUM_THREADS`` also at each call,
so it may change in between). A bad value is a ValueError naming the variable, raised at import:
``RNNKIT_NATIVE``, ``RNNKIT_OPENBLAS_HOOK``, ``RNNKIT_MALLOC_TUNING`` (default on) and
``RNNKIT_CUDA_PERSISTENT`` (default off) are switches: ``1 true on yes`` / ``0 false off no``, in
any case, spaces around ignored, empty meaning the default. ``RNNKIT_NUM_THREADS`` is an integer
>= 1 (0 or a negative number is refused, not read as 1); empty or unset: OpenBLAS's count.
``RNNKIT_SPIN_US`` is an integer number of microseconds, clamped to 0 .. 100,000 (0.1 s, as long as
OpenBLAS's own workers spin).
"""
from __future__ import annotations

import ctypes
import importlib.util
import os

import numpy as np

MODES = {("rnn", "tanh"): 0, ("rnn", "relu"): 1, "lstm": 2, "gru": 3}
ISA_NAMES = {0: "none", 1: "avx2", 2: "avx512"}

ABI = 2  # rk_abi() of the C library this module's signatures are for (native.c's RK_ABI)
SPIN_US = 500  # how long an idle worker of the pool spins before it sleeps, microseconds
_lib = None
_load_error: str | None = None
_blas_threads = None  # ctypes function: OpenBLAS's current thread count
_hooked = False


SPIN_US_RANGE = (0, 100_000)  # RNNKIT_SPIN_US is clamped to this
_SWITCH = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


def env_flag(name: str, default: bool) -> bool:
    """The switch in environment variable ``name``: 1/true/on/yes or 0/false/off/no (any case,
    stripped); unset or empty: ``default``. Anything else is a ValueError naming the variable."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    flag = _SWITCH.get(value.strip().lower())
    if flag is None:
        raise ValueError(f"environment variable {name}={value!r}; expected 1/true/on/yes or 0/false/off/no "
                         f"(unset: {'on' if default else 'off'})")
    return flag


def _env_int(name: str, value: str, expected: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}; expected {expected}") from None


def spin_us() -> int:
    """``RNNKIT_SPIN_US`` (default :data:`SPIN_US`), clamped to :data:`SPIN_US_RANGE`."""
    value = os.environ.get("RNNKIT_SPIN_US", "")
    if not value.strip():
        return SPIN_US
    low, high = SPIN_US_RANGE
    us = _env_int("RNNKIT_SPIN_US", value, f"an integer number of microseconds ({low} to {high:,}; default {SPIN_US})")
    return min(max(us, low), high)


_threads_parsed: dict[str, int | None] = {}  # RNNKIT_NUM_THREADS value -> count (None: not set)


def _env_threads() -> int | None:
    """``RNNKIT_NUM_THREADS`` as a count >= 1, or None when unset or empty; else a ValueError."""
    value = os.environ.get("RNNKIT_NUM_THREADS", "")
    count = _threads_parsed.get(value, -1)
    if count != -1:
        return count
    if not value.strip():
        count = None
    else:
        count = _env_int("RNNKIT_NUM_THREADS", value, "an integer number of threads >= 1")
        if count < 1:
            raise ValueError(f"environment variable RNNKIT_NUM_THREADS={value!r}; expected an integer number of "
                             "threads >= 1 (unset: OpenBLAS's count)")
    _threads_parsed[value] = count
    return count


def check_environment() -> None:
    """Read every RNNKIT_* variable of the CPU kernels once, so a bad value is refused up front."""
    env_flag("RNNKIT_NATIVE", True)
    env_flag("RNNKIT_OPENBLAS_HOOK", True)
    env_flag("RNNKIT_MALLOC_TUNING", True)
    spin_us()
    _env_threads()


def _library_path() -> str | None:
    spec = importlib.util.find_spec("rnnkit.kernels._native")
    return spec.origin if spec is not None else None


def _load():
    global _lib, _load_error
    if _lib is not None or _load_error is not None:
        return _lib
    check_environment()
    if not env_flag("RNNKIT_NATIVE", True):
        _load_error = f"disabled by RNNKIT_NATIVE={os.environ['RNNKIT_NATIVE'].strip()}"
        return None
    path = _library_path()
    if path is None:
        _load_error = "rnnkit.kernels._native was not built (no C compiler at install time?)"
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        _load_error = f"cannot load {os.path.basename(path)}: {exc}"
        return None
    vp, i, l = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    abi = lib.rk_abi() if hasattr(lib, "rk_abi") else 1
    if abi != ABI:  # a build left from older sources: its functions take other arguments
        _load_error = (f"{os.path.basename(path)} is a stale build (ABI {abi}; this rnnkit needs {ABI}): "
                       "rebuild it (pip install -e ., or python setup.py build_ext --inplace)")
        return None
    lib.rk_isa.restype = i
    lib.rk_force_isa.argtypes = [i]
    lib.rk_force_isa.restype = i
    lib.rk_set_spin_us.argtypes = [i]
    f, d = ctypes.c_float, ctypes.c_double
    lib.rk_cell_forward.argtypes = [i, i, i, i, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, i]
    lib.rk_cell_forward.restype = i
    lib.rk_cell_backward.argtypes = [i, i, i, i, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, i]
    lib.rk_cell_backward.restype = i
    lib.rk_sub_scaled.argtypes = [vp, f, vp, l, i]
    lib.rk_sub_scaled.restype = i
    lib.rk_scale.argtypes = [vp, f, l, i]
    lib.rk_scale.restype = i
    lib.rk_add_rows.argtypes = [vp, vp, l, l, i]
    lib.rk_add_rows.restype = i
    lib.rk_sum_squares.argtypes = [vp, l, i]
    lib.rk_sum_squares.restype = d
    lib.rk_adam.argtypes = [vp, vp, vp, vp, l, vp, i]
    lib.rk_adam.restype = i
    lib.rk_softmax_forward.argtypes = [vp, l, l, vp, vp, vp, vp, i]
    lib.rk_softmax_forward.restype = i
    lib.rk_softmax_backward.argtypes = [vp, l, l, vp, vp, vp, i]
    lib.rk_softmax_backward.restype = i
    lib.rk_linear_xent.argtypes = [l, i, i, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, i, i]
    lib.rk_linear_xent.restype = i
    if lib.rk_isa() == 0:
        _load_error = "this CPU has neither AVX-512 nor AVX2 + FMA"
        return None
    lib.rk_set_spin_us(spin_us())
    _lib = lib
    return lib


def available() -> bool:
    """True when the native kernels are built, loadable and supported by this CPU."""
    return _load() is not None


def why_unavailable() -> str | None:
    """The reason :func:`available` is False, or None."""
    _load()
    return _load_error


def isa() -> str:
    """The instruction set the kernels run: "avx512", "avx2" or "none"."""
    lib = _load()
    return ISA_NAMES[lib.rk_isa()] if lib is not None else "none"


def force_isa(name: str | None) -> None:
    """Run a lower instruction set than the CPU's ("avx2"), or the CPU's own (None). For tests."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_load_error}")
    level = -1 if name is None else {v: k for k, v in ISA_NAMES.items()}.get(name)
    if level is None or lib.rk_force_isa(level) != 0:
        raise ValueError(f"isa {name!r}; expected None or one this CPU supports (it has {ISA_NAMES[lib.rk_isa()]})")


# ---------------------------------------------------------------------- threads
def _find_openblas():
    """NumPy's OpenBLAS, already loaded in this process (found in /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _symbol(lib, stem: str):
    for name in (f"scipy_{stem}64_", f"{stem}64_", stem, f"scipy_{stem}"):
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def _tune_malloc() -> bool:
    """Big blocks from the heap, kept after free (glibc only; elsewhere nothing changes)."""
    if not env_flag("RNNKIT_MALLOC_TUNING", True):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # no mmap for big blocks (glibc still maps one when the heap cannot grow), no trimming
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _setup_threads() -> None:
    global _blas_threads, _hooked
    if _hooked:
        return
    _hooked = True
    if _load() is None:  # nothing of ours will run: leave malloc and OpenBLAS as they are
        return
    _tune_malloc()
    blas = _find_openblas()
    if blas is None:
        return
    get = _symbol(blas, "openblas_get_num_threads")
    if get is not None:
        get.restype = ctypes.c_int
        _blas_threads = get
    if env_flag("RNNKIT_OPENBLAS_HOOK", True):
        hook = _symbol(blas, "openblas_set_threads_callback_function")
        if hook is not None:
            hook.argtypes = [ctypes.c_void_p]
            hook(ctypes.cast(_lib.rk_openblas_callback, ctypes.c_void_p))


def num_threads() -> int:
    """Threads the kernels use: ``RNNKIT_NUM_THREADS``, else OpenBLAS's count, else the CPUs."""
    env = _env_threads()
    if env is not None:
        return env
    _setup_threads()
    if _blas_threads is not None:
        return max(1, int(_blas_threads()))
    return os.cpu_count() or 1


def _ptr(a) -> int | None:
    return None if a is None else a.ctypes.data


def _check(arrays) -> None:
    for name, a in arrays.items():
        if a is not None and (a.dtype != np.float32 or not a.flags.c_contiguous):
            raise ValueError(f"{name}: dtype {a.dtype}, contiguous={a.flags.c_contiguous}; expected C-contiguous float32")


def _raise(rc: int, what: str) -> None:
    if rc == -1:
        raise MemoryError(f"native {what}: out of memory (for the packed weights, or to start its threads)")
    if rc != 0:
        raise RuntimeError(f"native {what} failed (code {rc}): {_load_error or 'unsupported CPU'}")


# ---------------------------------------------------------------------- kernels
def _check_ids(ids, T: int, B: int, V: int) -> None:
    if ids.dtype != np.int64 or not ids.flags.c_contiguous or ids.shape != (T, B):
        raise ValueError(f"ids: dtype {ids.dtype}, shape {ids.shape}, contiguous={ids.flags.c_contiguous}; "
                         f"expected C-contiguous int64 of shape {(T, B)}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):  # the kernels index rows with them
        raise ValueError(f"ids range over [{int(ids.min())}, {int(ids.max())}]; expected [0, {V})")


def cell_forward(mode: int, xw, W_hh, b_x, b_hh, Hs, Cs, aux, mask, table=None, ids=None) -> None:
    """All T steps of one direction, in place.

    xw (T, B, G): input projections ``x W_ih^T``, replaced by the activated gates (LSTM
    i f g o, GRU r z n); b_x (G,) or None is added to them first (LSTM/RNN: b_ih + b_hh,
    GRU: b_ih). W_hh (G, H); b_hh (G,) for the GRU only (it sits inside ``r * (.)``).
    Hs (T+1, B, H) with Hs[0] = h0 receives h_1..h_T; LSTM: Cs likewise, aux (T, B, H)
    receives tanh(c_t); GRU: aux receives h_{t-1} W_hn^T + b_hn. mask (T, B) uint8 or None.
    A lookup input: ``table`` (V, G) and ``ids`` (T, B) int64 in processing order; step t's
    row b then reads its projection from ``table[ids[t, b]]``, and xw's contents are not read
    (it only receives the gates; the RNN's is left as it was).
    """
    lib = _load()
    T, B, _ = xw.shape
    H = W_hh.shape[1]
    _check({"xw": xw, "W_hh": W_hh, "b_x": b_x, "b_hh": b_hh, "Hs": Hs, "Cs": Cs, "aux": aux, "table": table})
    if (table is None) != (ids is None):
        raise ValueError("table and ids go together: pass both or neither")
    if table is not None:
        if table.ndim != 2 or table.shape[1] != xw.shape[2]:
            raise ValueError(f"table has shape {table.shape}; expected (V, {xw.shape[2]})")
        _check_ids(ids, T, B, table.shape[0])
    rc = lib.rk_cell_forward(mode, T, B, H, _ptr(xw), _ptr(W_hh), _ptr(b_x), _ptr(b_hh), _ptr(Hs), _ptr(Cs),
                             _ptr(aux), _ptr(mask), _ptr(table), _ptr(ids), num_threads())
    _raise(rc, "forward")


def cell_backward(mode: int, gates, W_hh, Hs, Cs, aux, dy, dh, dc, mask, bias_grad: bool = True,
                  ids=None, S=None):
    """BPTT over all T steps of one direction, in place.

    gates (T, B, G) from :func:`cell_forward`, replaced by dA (the gradient of the
    pre-activations; GRU: of ``x W_ih^T + b_ih``); GRU: aux (hw_n) replaced by the
    gradient of ``h W_hn^T + b_hn``. dy (T, B, H) or None. dh, dc (B, H): the gradient of
    the final state on entry, of the initial state on return. Returns the bias gradients
    summed in float64 while dA is made (G,) (GRU: (G + H,), the n block's b_hn last), or
    None when ``bias_grad`` is False. A lookup input: ``ids`` (T, B) int64 in processing order
    and ``S`` (V, G); ``S[ids[t, b]] += dXW[t, b]`` on the way (each token's rows summed).
    """
    lib = _load()
    T, B, G = gates.shape
    H = W_hh.shape[1]
    _check({"gates": gates, "W_hh": W_hh, "Hs": Hs, "Cs": Cs, "aux": aux, "dy": dy, "dh": dh, "dc": dc, "S": S})
    if (S is None) != (ids is None):
        raise ValueError("S and ids go together: pass both or neither")
    if S is not None:
        if S.ndim != 2 or S.shape[1] != G:
            raise ValueError(f"S has shape {S.shape}; expected (V, {G})")
        _check_ids(ids, T, B, S.shape[0])
    gru = mode == MODES["gru"]
    dhw = np.empty((2, B, G), dtype=np.float32) if gru else None
    extra = np.empty((B, H), dtype=np.float32)
    dbias = np.zeros(G + (H if gru else 0), dtype=np.float64) if bias_grad else None
    rc = lib.rk_cell_backward(mode, T, B, H, _ptr(gates), _ptr(W_hh), _ptr(Hs), _ptr(Cs), _ptr(aux), _ptr(dy),
                              _ptr(dh), _ptr(dc), _ptr(dhw), _ptr(extra), _ptr(dbias), _ptr(mask), _ptr(ids), _ptr(S),
                              num_threads())
    _raise(rc, "backward")
    return dbias


# ---------------------------------------------------------------------- elementwise
def _flat(a, name):
    _check({name: a})
    return a.size


def sub_scaled(y, a: float, x) -> None:
    """``y -= a * x`` in place (float32, rounded as NumPy's ``y -= a * x``)."""
    n = _flat(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x has shape {x.shape}; expected {y.shape}")
    _flat(x, "x")
    _raise(_load().rk_sub_scaled(_ptr(y), a, _ptr(x), n, num_threads()), "sub_scaled")


def scale(y, a: float) -> None:
    """``y *= a`` in place."""
    _raise(_load().rk_scale(_ptr(y), a, _flat(y, "y"), num_threads()), "scale")


def add_rows(y, b) -> None:
    """``y += b`` for y (N, V) and b (V,), in place."""
    _flat(y, "y")
    _flat(b, "b")
    N, V = y.shape
    if b.shape != (V,):
        raise ValueError(f"b has shape {b.shape}; expected ({V},)")
    _raise(_load().rk_add_rows(_ptr(y), _ptr(b), N, V, num_threads()), "add_rows")


def adam_step(p, g, m, v, b1: float, b2: float, eps: float, bias_correction2: float, step: float) -> None:
    """One Adam update in place, rounded exactly as ``optim.Adam``'s NumPy lines:
    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``p -= step * m / (sqrt(v / bc2) + eps)``
    (every constant rounded to float32 first, as NumPy does with a Python float)."""
    n = _flat(p, "p")
    for name, a in (("g", g), ("m", m), ("v", v)):
        _flat(a, name)
        if a.shape != p.shape:
            raise ValueError(f"{name} has shape {a.shape}; expected {p.shape}")
    k = np.array([b1, 1 - b1, b2, 1 - b2, bias_correction2, eps, step], dtype=np.float32)
    _raise(_load().rk_adam(_ptr(p), _ptr(g), _ptr(m), _ptr(v), n, _ptr(k), num_threads()), "adam")


def sum_squares(x) -> float:
    """``sum(x**2)`` accumulated in float64 (fixed chunk order: the same for any thread count)."""
    total = _load().rk_sum_squares(_ptr(x), _flat(x, "x"), num_threads())
    if total < 0:
        raise MemoryError("native sum_squares: out of memory")
    return float(total)


def softmax_forward(z, targets, out=None):
    """Rows of z (N, V) float32: (exp(z - rowmax), sumexp (N,), -log softmax(z)[target] (N,) float64).

    ``out`` (N, V) float32 receives the exponentials; it may be ``z`` itself (in place).
    """
    lib = _load()
    N, V = z.shape
    if out is None:
        probs = np.empty_like(z)
    else:
        _check({"out": out})
        if out.shape != z.shape:
            raise ValueError(f"out has shape {out.shape}; expected {z.shape}")
        probs = out
    sumexp = np.empty(N, dtype=np.float32)
    row_loss = np.empty(N, dtype=np.float64)
    t = np.ascontiguousarray(targets, dtype=np.int64)
    rc = lib.rk_softmax_forward(_ptr(z), N, V, _ptr(t), _ptr(probs), _ptr(sumexp), _ptr(row_loss), num_threads())
    _raise(rc, "softmax forward")
    return probs, sumexp, row_loss


def softmax_backward(probs, targets, row_scale, target_scale) -> None:
    """In place: probs[r] *= row_scale[r]; probs[r, targets[r]] -= target_scale[r]."""
    lib = _load()
    N, V = probs.shape
    t = np.ascontiguousarray(targets, dtype=np.int64)
    rs = np.ascontiguousarray(row_scale, dtype=np.float32)
    ts = np.ascontiguousarray(target_scale, dtype=np.float32)
    rc = lib.rk_softmax_backward(_ptr(probs), N, V, _ptr(t), _ptr(rs), _ptr(ts), num_threads())
    _raise(rc, "softmax backward")


def linear_xent(x, W, bias, targets, row_scale=None, target_scale=None, dx=None, dW=None, db=None,
                rows: int = 0):
    """The output layer and softmax cross-entropy in one pass: ``-log softmax(x W^T + b)[t]``
    per row (N,) float64, returned. With ``dx`` (N, H): ``dx`` is written and ``dW`` (V, H),
    ``db`` (V,) (None without a bias) are *added to*, for the logits' gradient
    ``row_scale[r] * softmax(z_r) - target_scale[r] * onehot(t_r)``. The (N, V) logits are
    never stored: the threads split the vocabulary and take the rows in blocks of ``rows``
    tokens (a multiple of 16; 0 chooses: 128, or 256 where dW is over 8 MiB, fewer where a
    block's logits would exceed 16 MiB a thread). W, x, dW and dx are read and written in
    place (no copy of W).
    The result depends on the thread count in the last bits (the threads' partial sums).
    targets must be in [0, V) (the caller checks)."""
    lib = _load()
    N, H = x.shape
    V = W.shape[0]
    grad = dx is not None
    _check({"x": x, "W": W, "bias": bias, "dx": dx, "dW": dW, "db": db})
    if W.shape != (V, H) or (bias is not None and bias.shape != (V,)):
        raise ValueError(f"W {W.shape}, bias {None if bias is None else bias.shape}; expected ({V}, {H}) and ({V},)")
    if grad and (dx.shape != (N, H) or dW is None or dW.shape != (V, H) or (db is not None and db.shape != (V,))):
        raise ValueError(f"dx {dx.shape}, dW {None if dW is None else dW.shape}; expected ({N}, {H}), ({V}, {H})")
    t = np.ascontiguousarray(targets, dtype=np.int64)
    rs = ts = None
    if grad:
        rs = np.ascontiguousarray(row_scale, dtype=np.float32)
        ts = np.ascontiguousarray(target_scale, dtype=np.float32)
    row_loss = np.empty(N, dtype=np.float64)
    rc = lib.rk_linear_xent(N, H, V, _ptr(x), _ptr(W), _ptr(bias), _ptr(t), _ptr(rs), _ptr(ts), _ptr(row_loss),
                            _ptr(dx), _ptr(dW), _ptr(db), int(rows), num_threads())
    _raise(rc, "linear_xent")
    return row_loss


# ---------------------------------------------------------------------- BLAS
_gemm = {}  # dtype char -> the ctypes gemm function, or None where NumPy's BLAS has none
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _blas_gemm(dtype):
    """``cblas_sgemm``/``cblas_dgemm`` of NumPy's own OpenBLAS (found in this process), or None."""
    key = np.dtype(dtype).char
    if key not in _gemm:
        _gemm[key] = None
        blas = _find_openblas() if key in "fd" else None
        stem = "cblas_sgemm" if key == "f" else "cblas_dgemm"
        for name, int_t in ((f"scipy_{stem}64_", ctypes.c_int64), (f"{stem}64_", ctypes.c_int64),
                            (stem, ctypes.c_int), (f"scipy_{stem}", ctypes.c_int)):
            fn = getattr(blas, name, None) if blas is not None else None
            if fn is not None:
                real = ctypes.c_float if key == "f" else ctypes.c_double
                vp, e = ctypes.c_void_p, ctypes.c_int
                fn.argtypes = [e, e, e, int_t, int_t, int_t, real, vp, int_t, vp, int_t, real, vp, int_t]
                fn.restype = None
                _gemm[key] = fn
                break
    return _gemm[key]


def _operand(a):
    """(transpose flag, leading dimension) of a 2-D operand for a row-major GEMM, or None."""
    if a.strides[1] == a.itemsize and a.strides[0] >= a.itemsize * max(1, a.shape[1]) and a.strides[0] % a.itemsize == 0:
        return _NO_TRANS, a.strides[0] // a.itemsize
    if a.strides[0] == a.itemsize and a.strides[1] >= a.itemsize * max(1, a.shape[0]) and a.strides[1] % a.itemsize == 0:
        return _TRANS, a.strides[1] // a.itemsize
    if a.flags.c_contiguous:  # a single row or column: any stride on its length-1 axis
        return _NO_TRANS, max(1, a.shape[1])
    return None


def gemm_accumulate(out, a, b, alpha: float = 1.0) -> bool:
    """``out += alpha * (a @ b)`` in one BLAS call (beta = 1: no temporary, no second pass).

    ``a`` (M, K) and ``b`` (K, N) may be row-major or transposed views; ``out`` (M, N)
    C-contiguous, all float32 or all float64 NumPy arrays. Returns False, doing nothing,
    where that is not possible (another dtype or layout, or no CBLAS found in NumPy's
    OpenBLAS); the caller then does it in NumPy.
    """
    if not all(type(x) is np.ndarray and x.ndim == 2 for x in (out, a, b)):  # NumPy's own arrays only
        return False
    if not (out.dtype == a.dtype == b.dtype) or not out.flags.c_contiguous or not out.flags.writeable:
        return False
    M, K = a.shape
    if b.shape[0] != K or out.shape != (M, b.shape[1]):
        raise ValueError(f"gemm_accumulate: out {out.shape} += a {a.shape} @ b {b.shape}; the shapes do not chain")
    N = b.shape[1]
    if M == 0 or N == 0 or K == 0:
        return True
    if np.shares_memory(out, a) or np.shares_memory(out, b):
        return False
    gemm = _blas_gemm(out.dtype)
    oa, ob = _operand(a), _operand(b)
    if gemm is None or oa is None or ob is None:
        return False
    _setup_threads()  # OpenBLAS's threads are this pool's (see the module docstring)
    gemm(_ROW_MAJOR, oa[0], ob[0], M, N, K, alpha, a.ctypes.data, oa[1], b.ctypes.data, ob[1], 1.0,
         out.ctypes.data, N)
    return True
