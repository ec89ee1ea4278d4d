"""The cells' pointwise math on the GPU: one CUDA kernel per step (``cuda_cells.cu``).

Two ways in, the same kernels:

- ``lstm_forward`` ... ``rnn_backward``: the functions, arguments and results of
  ``pointwise`` (the reference) and ``fused``, for CuPy arrays; the generic time loop of
  ``layers.unroll`` calls them on the GPU (``kernels.pointwise_for``) where a direction
  has padded steps. Where the reference spends 10-20 array passes on a step, each of
  these is one launch.
- ``forward_loop`` / ``backward_loop``: the whole unmasked time loop of one direction,
  which ``layers.unroll`` runs instead on the GPU: per step one cuBLAS GEMM, written or
  added (beta = 1) straight into the buffer the next kernel reads, and one kernel that
  also does the small passes around it (adding ``dy_t``, the GRU's ``b_hh``, ``hw_n`` and
  direct path). Two launches a step and direction, forward and backward.
- opt-in (``use_persistent`` / ``persistent()``): the same loops as one cooperative
  kernel a direction each way (``rk_<cell>_persistent_*``), W_hh kept in shared memory
  across the steps, one grid barrier a step.

Everything is queued on CuPy's current stream, so the time loop never waits for the
device.

The kernels are compiled on first use, once per dtype (float32, float64), by NVRTC
through ``cupy.RawModule``. Arrays a kernel cannot take as they are (not C-contiguous,
mixed dtypes) go to ``fused`` instead, which is the same math in CuPy array calls; so does
everything where the kernels fail to build, and the persistent loops fall back to the GEMM
loop where they fail to build or launch: each failure is said once (a RuntimeWarning) and
kept in :func:`failures`.

The source is checked without a GPU too: ``tests/test_cuda_kernels.py`` runs these
wrappers over the same ``.cu`` text compiled for the CPU (``tests/cuda_emulator.py``: the
grid thread after thread, the cooperative kernels as concurrent threads with per-block
shared memory and barriers) against the reference, and compiles it with nvcc where nvcc
is installed; ``tests/test_gpu_emulated.py`` runs every GPU test that way.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import backend
from . import fused
from .native import env_flag

SOURCE_PATH = Path(__file__).with_name("cuda_cells.cu")
BLOCK = 256  # threads per block
MAX_GRID = 4096  # blocks at most; the kernels' grid-stride loops cover any size
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_modules: dict = {}
_functions: dict = {}  # (name, dtype) -> compiled function: no lookup in the module per launch


def source() -> str:
    """The CUDA C++ text of the kernels (``REAL`` is defined at compile time)."""
    return SOURCE_PATH.read_text()


def _kernel(name: str, dtype):
    """The compiled kernel ``name`` for ``dtype`` (compiled on first use, then cached)."""
    key = (name, np.dtype(dtype))
    function = _functions.get(key)
    if function is None:
        module = _modules.get(key[1])
        if module is None:
            cp = backend._import_cupy()
            module = cp.RawModule(code=source(), options=("-std=c++14", f"-DREAL={_CTYPES[key[1]]}"))
            _modules[key[1]] = module
        function = _functions[key] = module.get_function(name)
    return function


def _launch(name: str, n: int, dtype, args: tuple) -> None:
    grid = max(1, min(MAX_GRID, -(-n // BLOCK)))
    _kernel(name, dtype)((grid,), (BLOCK,), args)


_OFF = np.int32(0)
_failures: dict = {}  # what did not build or launch here: (what, dtype name) -> the error, once


def failures() -> dict:
    """What failed to build or launch on this machine (then the slower path ran instead):
    ``{(what, dtype): "ErrorType: message"}``; empty when everything ran as designed."""
    return dict(_failures)


def _note_failure(key, exc, instead: str) -> None:
    if key not in _failures:
        _failures[key] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"rnnkit's CUDA kernels ({key[0]}, {key[1]}) failed here ({_failures[key]}); "
                      f"running {instead} instead", RuntimeWarning, stacklevel=3)


def _ready(dtype) -> bool:
    """True when the cell kernels for ``dtype`` are built (NVRTC, on first use). A build that
    fails is said once, as a warning, and the CuPy-array path (``fused``) runs from then on:
    slower, the same results."""
    key = ("cells", np.dtype(dtype).name)
    if key in _failures:
        return False
    try:
        _kernel("rk_rnn_forward", dtype)
    except Exception as exc:  # noqa: BLE001 - NVRTC, driver or CuPy trouble: fall back, say why
        _note_failure(key, exc, "the CuPy-array path (kernels.fused)")
        return False
    return True


def _flag(on: bool):
    return np.int32(1 if on else 0)


def _takes(*arrays) -> bool:
    """True when one kernel call takes these arrays as they are: one float dtype the
    kernels are built for, every array C-contiguous."""
    dtype = arrays[0].dtype
    if np.dtype(dtype) not in _CTYPES:
        return False
    return all(a.dtype == dtype and a.flags.c_contiguous for a in arrays) and _ready(dtype)


def _sizes(h, **shapes):
    """(n, H) for the kernels, from the (B, H) array ``h``, after checking the other
    arrays' shapes: a kernel indexes its arrays from B and H alone, so a wrong shape
    would read or write outside an array instead of raising."""
    B, H = h.shape
    for name, (array, gates) in shapes.items():
        expected = (B, gates * H)
        if tuple(array.shape) != expected:
            raise ValueError(f"{name} has shape {tuple(array.shape)}; expected {expected}")
    return np.int64(B * H), np.int64(H)


# -------------------------------------------------------------------------- LSTM
def lstm_forward(A, c_prev, c_out, tanh_c_out, h_out):
    """Activate the gates in place and advance the cell (contract of ``pointwise.lstm_forward``)."""
    if not _takes(A, c_prev, c_out, tanh_c_out, h_out):
        return fused.lstm_forward(A, c_prev, c_out, tanh_c_out, h_out)
    n, H = _sizes(h_out, A=(A, 4), c_prev=(c_prev, 1), c_out=(c_out, 1), tanh_c_out=(tanh_c_out, 1))
    _launch("rk_lstm_forward", int(n), A.dtype, (A, c_prev, c_out, tanh_c_out, h_out, n, H))
    return h_out


def lstm_backward(gates, c_prev, tanh_c, dh, dc, dA_out, dc_prev_out, work=None):
    """Gradients of one LSTM step (contract of ``pointwise.lstm_backward``); ``dA_out``
    may be ``gates``; ``work`` is unused."""
    arrays = (gates, c_prev, tanh_c, dh, dA_out, dc_prev_out) + (() if dc is None else (dc,))
    if not _takes(*arrays):
        return fused.lstm_backward(gates, c_prev, tanh_c, dh, dc, dA_out, dc_prev_out, work)
    n, H = _sizes(dh, gates=(gates, 4), c_prev=(c_prev, 1), tanh_c=(tanh_c, 1), dA_out=(dA_out, 4),
                  dc_prev_out=(dc_prev_out, 1), **({} if dc is None else {"dc": (dc, 1)}))
    dc_arg = dh if dc is None else dc  # never read when its flag is 0
    _launch("rk_lstm_backward", int(n), gates.dtype,
            (gates, c_prev, tanh_c, dh, dh, _OFF, dc_arg, _flag(dc is not None), dA_out, dc_prev_out, n, H))
    return dA_out, dc_prev_out


# --------------------------------------------------------------------------- GRU
def gru_forward(xw, hw, h_prev, gates_out, h_out):
    """One GRU step (contract of ``pointwise.gru_forward``)."""
    if not _takes(xw, hw, h_prev, gates_out, h_out):
        return fused.gru_forward(xw, hw, h_prev, gates_out, h_out)
    n, H = _sizes(h_out, xw=(xw, 3), hw=(hw, 3), h_prev=(h_prev, 1), gates_out=(gates_out, 3))
    _launch("rk_gru_forward", int(n), xw.dtype, (xw, hw, hw, _OFF, h_prev, gates_out, h_out, h_out, _OFF, n, H))
    return h_out


def gru_backward(gates, hw_n, h_prev, dh, dxw_out, dhw_out):
    """Gradients of one GRU step (contract of ``pointwise.gru_backward``)."""
    if not _takes(gates, hw_n, h_prev, dh, dxw_out, dhw_out):
        return fused.gru_backward(gates, hw_n, h_prev, dh, dxw_out, dhw_out)
    n, H = _sizes(dh, gates=(gates, 3), hw_n=(hw_n, 1), h_prev=(h_prev, 1), dxw_out=(dxw_out, 3),
                  dhw_out=(dhw_out, 3))
    # step 0: dh is only read (the kernel writes it only for the GPU time loop)
    _launch("rk_gru_backward", int(n), gates.dtype,
            (gates, hw_n, h_prev, dh, dh, _OFF, dxw_out, dhw_out, dhw_out, _OFF, n, H))
    return dxw_out, dhw_out


# --------------------------------------------------------------------------- RNN
def _relu_flag(nonlinearity: str):
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
    return np.int32(nonlinearity == "relu")


def rnn_forward(a, nonlinearity: str, out):
    """h = act(a) (contract of ``pointwise.rnn_forward``)."""
    relu = _relu_flag(nonlinearity)
    if not _takes(a, out):
        return fused.rnn_forward(a, nonlinearity, out)
    if a.shape != out.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {tuple(a.shape)} (that of a)")
    _launch("rk_rnn_forward", a.size, a.dtype, (a, out, relu, np.int64(a.size)))
    return out


def rnn_backward(h, dh, nonlinearity: str, out):
    """da = dh * act'(a), from the output h (contract of ``pointwise.rnn_backward``)."""
    relu = _relu_flag(nonlinearity)
    if not _takes(h, dh, out):
        return fused.rnn_backward(h, dh, nonlinearity, out)
    for name, array in (("dh", dh), ("out", out)):
        if array.shape != h.shape:
            raise ValueError(f"{name} has shape {tuple(array.shape)}; expected {tuple(h.shape)} (that of h)")
    _launch("rk_rnn_backward", h.size, h.dtype, (h, dh, dh, _OFF, out, relu, np.int64(h.size)))
    return out


# ------------------------------------------------------- softmax cross-entropy rows
ROWS_BLOCK = 256  # threads per row of the softmax kernel (a power of two)
ROWS_GRID = 4096  # blocks at most (each then takes every ROWS_GRID-th row)


def softmax_xent_takes(z, t, valid) -> bool:
    """True when :func:`softmax_xent_rows` takes these arrays: C-contiguous float logits,
    int64 targets, bool (or no) row weights."""
    return (np.dtype(z.dtype) in _CTYPES and z.ndim == 2 and z.flags.c_contiguous and t.dtype == np.int64
            and t.flags.c_contiguous and (valid is None or (valid.dtype == np.bool_ and valid.flags.c_contiguous))
            and _ready(z.dtype))


def softmax_xent_rows(z, t, valid, scale: float, grad: bool):
    """The loss of each row of ``z`` (N, V) and, where ``grad``, its gradient over ``z`` in
    place: ``scale * (softmax(z) - onehot(t))``, zero in rows where ``valid`` is False. One
    launch (a block per row) where the NumPy-style path takes ~13 array passes. Returns
    ``-log softmax(z)[t]`` (N,), on the device; the targets of uncounted rows must be valid
    ids (``_counted_targets`` makes them 0)."""
    xp = backend.get_array_module(z)
    N, V = z.shape
    if t.shape != (N,) or (valid is not None and valid.shape != (N,)):
        raise ValueError(f"targets {tuple(t.shape)} / valid {None if valid is None else tuple(valid.shape)}; "
                         f"expected ({N},) for logits {tuple(z.shape)}")
    neg_logp = xp.empty(N, dtype=z.dtype)
    real = z.dtype.type
    block = ROWS_BLOCK
    _kernel("rk_softmax_xent_rows", z.dtype)(
        (max(1, min(N, ROWS_GRID)),), (block,),
        (z, t, t.view(np.bool_) if valid is None else valid,  # a stand-in never read without its flag
         _flag(valid is not None), real(scale), _flag(grad), neg_logp,
         np.int64(N), np.int64(V)), shared_mem=block * z.itemsize)
    return neg_logp


# ------------------------------------------------------------------ optimizer steps
SUMSQ_GRID = 64  # blocks per tensor for the sums of squares (a fixed partition: the same sum each time)
SUMSQ_BLOCK = 256  # threads per block there (a power of two)


def sgd_step(p, g, lr: float) -> bool:
    """``p -= lr * g`` in one launch; False (nothing done) where the kernel cannot take them."""
    if not (_takes(p, g) and p.shape == g.shape):
        return False
    _launch("rk_sgd_step", p.size, p.dtype, (p, g, p.dtype.type(lr), np.int64(p.size)))
    return True


def adam_step(p, g, m, v, b1, b2, eps, bias2, step) -> bool:
    """One Adam update of ``p`` and its moments ``m``, ``v`` in one launch (the formulas of
    ``optim.Adam``); False (nothing done) where the kernel cannot take the arrays."""
    if not (_takes(p, g, m, v) and p.shape == g.shape == m.shape == v.shape):
        return False
    real = p.dtype.type
    _launch("rk_adam_step", p.size, p.dtype, (p, g, m, v, real(b1), real(b2), real(eps), real(bias2), real(step),
                                             np.int64(p.size)))
    return True


def sum_squares(arrays):
    """``sum(a**2)`` over all ``arrays``, accumulated in float64, as a 0-d device array (read it
    with float(): one wait for the device), or None where the kernel cannot take them. One
    launch per array and one final sum, no float64 copy of any array."""
    if not arrays or not all(_takes(a) and a.dtype == arrays[0].dtype for a in arrays):
        return None
    xp = backend.get_array_module(arrays[0])
    grid, block = SUMSQ_GRID, SUMSQ_BLOCK
    partials = xp.zeros(len(arrays) * grid, dtype=np.float64)
    kernel = _kernel("rk_sumsq", arrays[0].dtype)
    for i, a in enumerate(arrays):
        blocks = max(1, min(grid, -(-a.size // block)))
        kernel((blocks,), (block,), (a, np.int64(a.size), partials[i * grid :]), shared_mem=block * 8)
    return partials.sum()


# --------------------------------------------------------------- the GPU time loop
def gemm(a, b, out, *, transpose_b: bool = False, beta: float = 0.0) -> None:
    """``out = a @ b (or a @ b.T) + beta * out`` in one cuBLAS call (``cupy.cublas.gemm``):
    the recurrent GEMM adds into the buffer it feeds, so no separate add is launched."""
    cp = backend._import_cupy()
    cp.cublas.gemm("N", "T" if transpose_b else "N", a, b, out=out, beta=beta)


def loop_takes(cache, xw) -> bool:
    """True when :func:`forward_loop` / :func:`backward_loop` run this direction: unmasked
    (padded steps keep the generic loop), one float dtype, C-contiguous weights."""
    return (cache.mask is None and np.dtype(xw.dtype) in _CTYPES and cache.W_hh.dtype == xw.dtype
            and cache.W_hh.flags.c_contiguous and _ready(xw.dtype))


# ------------------------------------------------------- the persistent loops (opt-in)
_PERSISTENT = [env_flag("RNNKIT_CUDA_PERSISTENT", False)]  # 1/true/on/yes; a bad value is refused
TILE_BYTES = 16 * 1024  # the backward's tile of dA_t in shared memory
_cooperative: dict = {}
_limits: list = []  # per device id: (multiprocessors, opt-in shared bytes), read once


def use_persistent(on: bool = True) -> None:
    """Run unmasked directions (RNN, LSTM, GRU) as one persistent kernel each way
    (``rk_<cell>_persistent_*``: W_hh on chip for all steps, one grid barrier a step, one
    launch a sequence) where the shapes fit (:func:`persistent_plan`); else the GEMM loop.
    Off by default until it has been measured on a GPU; ``RNNKIT_CUDA_PERSISTENT=1`` turns it
    on for a process."""
    _PERSISTENT[0] = bool(on)


def persistent_enabled() -> bool:
    return _PERSISTENT[0]


@contextmanager
def persistent(on: bool = True):
    """``with cuda.persistent():`` the persistent kernels for a block, then as before."""
    before = _PERSISTENT[0]
    use_persistent(on)
    try:
        yield
    finally:
        use_persistent(before)


class PersistentPlan(NamedTuple):
    units: int  # hidden units per block (u)
    grid: int  # blocks: ceil(H / u), at most one per multiprocessor
    block: int  # threads per block: one per (row, unit) of the block, a multiple of 32
    forward_shared: int  # bytes: W_hh's rows of the block's units (gates x u x Hp) and h_{t-1} (B x Hp)
    backward_shared: int  # bytes: W_hh's columns of the block's units (u x Gp) and a tile of dA_t (B x Rp)
    chunk: int  # R: the columns of dA_t a backward tile holds (about 16 KiB)


def _device_limits() -> tuple[int, int]:
    """(multiprocessors, opt-in shared memory bytes per block) of the current device."""
    cp = backend._import_cupy()
    device = cp.cuda.Device().id
    if device >= len(_limits) or _limits[device] is None:
        rt = cp.cuda.runtime
        _limits.extend([None] * (device + 1 - len(_limits)))
        _limits[device] = (int(rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, device)),
                           int(rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, device)))
    return _limits[device]


def persistent_plan(B: int, H: int, itemsize: int, gates: int = 4) -> PersistentPlan | None:
    """How the persistent kernels split (B, H) over the device for a cell of ``gates`` gate
    blocks (LSTM 4, GRU 3, RNN 1), or None where they do not fit (more shared memory than a
    block may have, or a block over 1024 threads)."""
    sms, shared_max = _device_limits()
    u = -(-H // sms)
    grid = -(-H // u)
    G = gates * H
    Hp, Gp = H | 1, G | 1
    block = 32 * -(-(B * u) // 32)
    chunk = min(G, max(32, (TILE_BYTES // (B * itemsize)) // 32 * 32))
    fwd = (gates * u * Hp + B * Hp) * itemsize
    bwd = (u * Gp + B * (chunk | 1)) * itemsize
    if block > 1024 or max(fwd, bwd) > shared_max:
        return None
    return PersistentPlan(u, grid, block, fwd, bwd, chunk)


def _cooperative_kernel(name: str, dtype):
    """A kernel launched cooperatively (``cuLaunchCooperativeKernel``: all its blocks resident
    at once, or the launch fails; never a deadlock at the grid barrier)."""
    key = (name, np.dtype(dtype))
    kernel = _cooperative.get(key)
    if kernel is None:
        cp = backend._import_cupy()
        kernel = cp.RawKernel(source(), name, options=("-std=c++14", f"-DREAL={_CTYPES[key[1]]}"),
                              enable_cooperative_groups=True)
        _cooperative[key] = kernel
    return kernel


def _launch_cooperative(name: str, dtype, grid: int, block: int, shared: int, args: tuple) -> bool:
    """Launch; False (said once, as a warning) where the kernel does not build or launch here,
    and the caller runs the GEMM loop instead. Nothing is written before a launch starts, so
    that fallback is safe."""
    key = (name, np.dtype(dtype).name)
    if key in _failures:
        return False
    try:
        kernel = _cooperative_kernel(name, dtype)
        if shared > 48 * 1024 and getattr(kernel, "max_dynamic_shared_size_bytes", shared) < shared:
            kernel.max_dynamic_shared_size_bytes = shared  # beyond the default 48 KiB: opt in
        with warnings.catch_warnings():
            # CuPy shrinks a cooperative grid larger than the device holds at once, with only
            # a warning, before it launches; here each block owns its units, so a smaller grid
            # would leave some never computed. As an error, the GEMM loop runs instead.
            warnings.filterwarnings("error", message="The grid size will be reduced")
            kernel((grid,), (block,), args, shared_mem=shared)
    except Exception as exc:  # noqa: BLE001 - build or launch refused (resources, cooperative limits)
        _note_failure(key, exc, "the GEMM time loop")
        return False
    return True


_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _persistent_plan_for(c, dtype):
    if not _PERSISTENT[0]:
        return None
    B, H = c.Hs.shape[1], c.Hs.shape[2]
    return persistent_plan(B, H, np.dtype(dtype).itemsize, _GATES[c.mode])


def _step_stride(a) -> np.int64:
    """Elements from step t to step t + 1 of a (T, ...) array or reversed view (negative)."""
    return np.int64(a.strides[0] // a.itemsize)


def forward_loop(c, xw, b_hh) -> None:
    """The unmasked time loop of ``layers.unroll`` on the GPU: per step one cuBLAS GEMM
    (``h_{t-1} W_hh^T``, added straight into the step's pre-activations, or into ``hw``
    for the GRU) and one kernel, which leaves the same cache as the generic loop."""
    T, B, G = xw.shape
    H = c.W_hh.shape[1]
    n, Hn = np.int64(B * H), np.int64(H)
    Hs, W_hh, dtype = c.Hs, c.W_hh, xw.dtype
    plan = _persistent_plan_for(c, dtype)
    if plan is not None:  # the whole loop in one launch
        xp = backend.get_array_module(xw)
        bar = xp.zeros(2, dtype=np.uint32)
        gates = xp.empty((T, B, G), dtype=dtype) if c.mode == "gru" else Hs  # Hs: never written there
        aux = c.tanh_c if c.mode == "lstm" else c.hw_n if c.mode == "gru" else Hs
        Cs = c.Cs if c.mode == "lstm" else Hs
        has_bhh = c.mode == "gru" and b_hh is not None  # the others' b_hh is in xw already
        relu = _relu_flag(c.nonlinearity) if c.mode == "rnn" else _OFF
        if _launch_cooperative(f"rk_{c.mode}_persistent_forward", dtype, plan.grid, plan.block,
                               plan.forward_shared,
                               (xw, _step_stride(xw), W_hh, b_hh if has_bhh else Hs, _flag(has_bhh), relu, gates,
                                Hs, Cs, aux, bar, np.int64(T), np.int64(B), Hn, np.int64(plan.units))):
            if c.mode == "gru":
                c.gates = gates
            return
    if c.mode == "lstm":
        for t in range(T):
            A = xw[t]  # x W_ih^T + bias; + h W_hh^T; then the activated gates
            gemm(Hs[t], W_hh, A, transpose_b=True, beta=1.0)
            _launch("rk_lstm_forward", int(n), dtype, (A, c.Cs[t], c.Cs[t + 1], c.tanh_c[t], Hs[t + 1], n, Hn))
    elif c.mode == "gru":
        xp = backend.get_array_module(xw)
        gates = xp.empty((T, B, G), dtype=dtype)
        hw = xp.empty((B, G), dtype=dtype)
        bias = b_hh if b_hh is not None else hw  # never read without its flag
        for t in range(T):
            gemm(Hs[t], W_hh, hw, transpose_b=True)
            _launch("rk_gru_forward", int(n), dtype, (xw[t], hw, bias, _flag(b_hh is not None), Hs[t], gates[t],
                                                      Hs[t + 1], c.hw_n[t], _flag(True), n, Hn))
        c.gates = gates
    else:
        relu = _relu_flag(c.nonlinearity)
        for t in range(T):
            A = xw[t]
            gemm(Hs[t], W_hh, A, transpose_b=True, beta=1.0)
            _launch("rk_rnn_forward", int(n), dtype, (A, Hs[t + 1], relu, n))


def backward_loop(c, dXW, dHW_n, dy, dh, dc):
    """The unmasked BPTT loop on the GPU (contract of ``unroll._backward_loop``): per step
    one kernel (which also adds ``dy_t`` to the gradient reaching ``h_t``) and one GEMM
    into ``dh``; writes dXW (and the GRU's dHW_n) in place, returns (dh0, dc0)."""
    xp = backend.get_array_module(dXW)
    T, B, G = dXW.shape
    H = c.W_hh.shape[1]
    n, Hn = np.int64(B * H), np.int64(H)
    W_hh, dtype = c.W_hh, dXW.dtype
    has_dy = _flag(dy is not None)
    if dy is not None:
        dy = xp.ascontiguousarray(dy)  # a bidirectional layer's dy is a strided slice
    dy_t = (lambda t: dy[t]) if dy is not None else (lambda t: dh)  # never read without its flag
    plan = _persistent_plan_for(c, dtype)
    if plan is not None and dh.flags.c_contiguous and (dc is None or dc.flags.c_contiguous):
        bar = xp.zeros(2, dtype=np.uint32)
        relu = _relu_flag(c.nonlinearity) if c.mode == "rnn" else _OFF
        dummy = c.Hs  # for the pointers a cell does not use: never read or written there
        if _launch_cooperative(f"rk_{c.mode}_persistent_backward", dtype, plan.grid, plan.block,
                               plan.backward_shared,
                               (dXW, _step_stride(dXW), dHW_n if c.mode == "gru" else dummy, c.Hs,
                                c.Cs if c.mode == "lstm" else dummy, c.tanh_c if c.mode == "lstm" else dummy, W_hh,
                                dh if dy is None else dy, has_dy, relu, dh, dc if dc is not None else dh, bar,
                                np.int64(T), np.int64(B), Hn, np.int64(plan.units), np.int64(plan.chunk))):
            return dh, dc
    if c.mode == "lstm":
        dc_prev = xp.empty((B, H), dtype=dtype)
        for t in range(T - 1, -1, -1):
            _launch("rk_lstm_backward", int(n), dtype, (dXW[t], c.Cs[t], c.tanh_c[t], dh, dy_t(t), has_dy, dc,
                                                        _flag(True), dXW[t], dc_prev, n, Hn))
            dc, dc_prev = dc_prev, dc
            gemm(dXW[t], W_hh, dh)  # the gradient reaching h_{t-1}
    elif c.mode == "gru":
        dhw = xp.empty((B, G), dtype=dtype)
        for t in range(T - 1, -1, -1):
            # the kernel leaves g * z (the direct path to h_{t-1}) in dh; the GEMM adds dhw W_hh
            _launch("rk_gru_backward", int(n), dtype, (dXW[t], dHW_n[t], c.Hs[t], dh, dy_t(t), has_dy, dXW[t], dhw,
                                                       dHW_n[t], _flag(True), n, Hn))
            gemm(dhw, W_hh, dh, beta=1.0)
    else:
        relu = _relu_flag(c.nonlinearity)
        for t in range(T - 1, -1, -1):
            _launch("rk_rnn_backward", int(n), dtype, (c.Hs[t + 1], dh, dy_t(t), has_dy, dXW[t], relu, n))
            gemm(dXW[t], W_hh, dh)
    return dh, dc


def available() -> bool:
    """True when CuPy sees a CUDA device (the kernels compile on first use)."""
    return backend.gpu_available()


__all__ = ["PersistentPlan", "available", "backward_loop", "failures", "forward_loop", "gemm", "gru_backward",
           "gru_forward", "loop_takes", "lstm_backward", "lstm_forward", "persistent", "persistent_enabled",
           "persistent_plan", "rnn_backward", "rnn_forward", "sgd_step", "adam_step", "softmax_xent_rows",
           "softmax_xent_takes", "source", "sum_squares", "use_persistent"]
