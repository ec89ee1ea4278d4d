"""The time loop: one direction of one recurrent layer, forward and BPTT backward.

Everything here is time-major: ``X`` is (T, B, D) so each step's slice is contiguous.
The speed tricks of DESIGN.md live here, in one place for all three cells:

- the input projection of all T steps is one GEMM (``X W_ih^T``), before the loop;
- per step only ``h_{t-1} W_hh^T`` and the fused pointwise kernel run, into buffers
  allocated once per call (nothing is allocated per step on the forward path);
- the weight gradients are one GEMM each after the backward loop
  (``dW_hh = dA^T H_{0..T-1}``, ``dW_ih = dA^T X``), not T small ones.

A reverse direction runs the same loop over reversed *views* of its inputs.

Two implementations of the loop, one contract: the array-module loop below (NumPy or
CuPy; its pointwise math from ``kernels.pointwise_for``: ``fused`` on NumPy, the CUDA
kernels of ``kernels.cuda`` on CuPy, one launch a step), and, for float32 NumPy
sequences of two or more steps, the native one (``kernels.native``: the loop, its GEMMs
and the cell math in C, threaded).
Both leave the same cache, so either backward follows either forward.

Masks: at a step where ``mask`` is False the state is carried unchanged
(``h_t = h_{t-1}``, ``c_t = c_{t-1}``), the output is 0, and no gradient reaches the
cell there, so padded steps neither change the state nor receive gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import kernels

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NATIVE_MIN_STEPS = 2  # one step (cells, generation) keeps NumPy: packing W_hh would cost more than the step


def _native_mode(mode, nonlinearity, xp, dtype, T):
    """The native kernels' code for this loop, or None where the NumPy loop runs."""
    if xp is not np or dtype != np.float32 or T < NATIVE_MIN_STEPS or not kernels.native_active():
        return None
    return kernels.native.MODES[(mode, nonlinearity)] if mode == "rnn" else kernels.native.MODES[mode]


@dataclass
class Lookup:
    """A layer input that is an embedding lookup, ``X = table[ids]``, left unmade.

    Its input projection is a lookup too, ``X W_ih^T = (table W_ih^T)[ids]``: (V, D) x (D, G)
    instead of (T*B, D) x (D, G), a win when the vocabulary is small against T*B (a
    character model). In the backward, with ``S = onehot(ids)^T dXW`` (V, G), the sum of each
    token's rows: ``dW_ih += S^T table`` and the table's gradient ``S W_ih``, instead of two
    (T*B)-row GEMMs. The native loops go one further: the forward reads each step's row of
    the projected table in place of a gathered (T, B, G) copy, and the backward adds each
    row's dXW into S as it makes it, so neither the gather nor the one-hot GEMM runs.
    table (V, D); ids (T, B) int, time-major; grad (V, D), the table's gradient, accumulated
    (``padding_idx``'s row excluded) or None.
    """
    table: np.ndarray
    ids: np.ndarray
    grad: np.ndarray | None = None
    padding_idx: int | None = None

    @property
    def shape(self):
        return (*self.ids.shape, self.table.shape[1])

    @property
    def dtype(self):
        return self.table.dtype


def _input_projection(X, W_ih):
    """``X W_ih^T`` (T, B, G) for every step at once: one GEMM, or for a ``Lookup`` one lookup
    into the projected table."""
    T, B, D = X.shape
    if isinstance(X, Lookup):
        return (X.table @ W_ih.T)[X.ids]
    xp = backend.get_array_module(X)
    out = backend.empty_aligned(xp, (T * B, W_ih.shape[0]), X.dtype)  # the native loops' vectors: whole lines
    xp.matmul(X.reshape(T * B, D), W_ih.T, out=out)
    return out.reshape(T, B, -1)


def _lookup_backward(X: Lookup, dXW2, W_ih, grad_w_ih, S=None) -> None:
    """The backward of ``_input_projection`` for a ``Lookup``: dXW2 (T*B, G), original order,
    or ``S`` (V, G), its rows already summed per token (the native loop sums them on the way)."""
    if S is None:
        xp = backend.get_array_module(dXW2)
        N, V = dXW2.shape[0], X.table.shape[0]
        onehot = xp.zeros((N, V), dtype=dXW2.dtype)
        onehot[xp.arange(N), X.ids.reshape(-1)] = 1
        S = onehot.T @ dXW2  # (V, G): the rows of each token summed (a GEMM: scatter-adds of rows are slow)
    kernels.accumulate_matmul(grad_w_ih, S.T, X.table)
    if X.grad is not None:
        d_table = S @ W_ih
        if X.padding_idx is not None:
            d_table[X.padding_idx] = 0
        X.grad += d_table


@dataclass
class UnrollCache:
    mode: str
    nonlinearity: str
    reverse: bool
    X: np.ndarray | Lookup  # (T, B, D) original time order
    W_ih: np.ndarray
    W_hh: np.ndarray
    has_bias: bool
    mask: np.ndarray | None  # (T, B, 1) bool, processing order
    Hs: np.ndarray  # (T+1, B, H) carried hidden states, processing order; Hs[0] = h0
    gates: np.ndarray  # LSTM (T,B,4H) activated gates; GRU (T,B,3H) [r,z,n]; RNN unused
    Cs: np.ndarray | None = None  # LSTM (T+1, B, H) cell states
    tanh_c: np.ndarray | None = None  # LSTM (T, B, H)
    hw_n: np.ndarray | None = None  # GRU (T, B, H): h_{t-1} W_hn^T + b_hn


def _processing_ids(X: Lookup, reverse: bool):
    """A Lookup's ids (T, B) as the native loops take them: int64, C-contiguous, in processing order."""
    return np.ascontiguousarray(X.ids[::-1] if reverse else X.ids, dtype=np.int64)


def _transposed_copy(W, block: int = 64):
    """Contiguous ``W.T``, copied in row blocks: the strided one-shot copy is ~3x slower
    (every read of a column misses the cache)."""
    xp = backend.get_array_module(W)
    if xp is not np:
        return xp.ascontiguousarray(W.T)
    out = np.empty(W.shape[::-1], dtype=W.dtype)
    for start in range(0, W.shape[0], block):
        out[:, start : start + block] = W[start : start + block].T
    return out


def unroll_forward(mode, X, W_ih, W_hh, b_ih, b_hh, h0, c0=None, mask=None, reverse=False,
                   nonlinearity="tanh"):
    """Run one direction over all steps.

    X (T, B, D), or a ``Lookup`` of (T, B) ids; W_ih (G*H, D); W_hh (G*H, H); b_ih, b_hh (G*H,) or None;
    h0, c0 (B, H); mask (T, B) bool or None, original time order.
    Returns (y (T, B, H) in original order, zero at masked steps; h_T; c_T or None; cache).
    """
    xp = backend.get_array_module(X.table if isinstance(X, Lookup) else X)
    T, B, D = X.shape
    H = W_hh.shape[1]
    if mode not in GATES:
        raise ValueError(f"mode {mode!r}; expected one of {sorted(GATES)}")
    native_mode = _native_mode(mode, nonlinearity, xp, X.dtype, T)
    table = ids = None  # a lookup the native loop makes itself: the projected table and the step's ids
    if native_mode is not None and isinstance(X, Lookup):
        table = np.ascontiguousarray(X.table @ W_ih.T)  # (V, G)
        ids = _processing_ids(X, reverse)
        xw = backend.empty_aligned(np, (T, B, table.shape[1]), X.dtype)  # receives the gates only
    else:  # input projection of every step at once: (T*B, D) @ (D, G), or a lookup
        xw = _input_projection(X, W_ih)
    b_x = None  # the bias added to xw: GRU keeps b_hn inside r * (.); bias_hh=False has no b_hh
    if b_ih is not None:
        b_x = b_ih if mode == "gru" or b_hh is None else b_ih + b_hh
    if b_x is not None and native_mode is None:  # the native loop adds it on the way
        xw += b_x
    m = None
    if mask is not None:
        m = mask.reshape(T, B, 1)
    if reverse:
        xw = xw[::-1] if table is None else xw  # the native lookup's buffer is in processing order already
        m = m[::-1] if m is not None else None
    Hs = backend.empty_aligned(xp, (T + 1, B, H), X.dtype)
    Hs[0] = h0
    cache = UnrollCache(mode, nonlinearity, reverse, X, W_ih, W_hh, b_ih is not None, m, Hs, xw)
    if mode == "lstm":
        cache.Cs = backend.empty_aligned(xp, (T + 1, B, H), X.dtype)
        cache.Cs[0] = c0
        cache.tanh_c = backend.empty_aligned(xp, (T, B, H), X.dtype)
    elif mode == "gru":
        cache.hw_n = backend.empty_aligned(xp, (T, B, H), X.dtype)

    if native_mode is not None:
        cache.gates = backend.ascontiguous_aligned(xw)  # a copy only for a reverse direction's view
        mask_u8 = None if m is None else np.ascontiguousarray(m.reshape(T, B)).view(np.uint8)
        aux = cache.tanh_c if mode == "lstm" else cache.hw_n
        kernels.native.cell_forward(native_mode, cache.gates, np.ascontiguousarray(W_hh), b_x,
                                    b_hh if mode == "gru" else None, Hs, cache.Cs, aux, mask_u8, table, ids)
    elif xp is not np and kernels.selected() != "reference" and kernels.cuda.loop_takes(cache, xw):
        kernels.cuda.forward_loop(cache, xw, b_hh)  # GPU: one GEMM and one kernel a step
    else:
        _forward_loop(cache, xw, b_hh)

    y = Hs[1:] if m is None else Hs[1:] * m
    if reverse:
        y = y[::-1]
    c_T = cache.Cs[T] if mode == "lstm" else None
    return y, Hs[T], c_T, cache


def _forward_loop(c: UnrollCache, xw, b_hh) -> None:
    """The NumPy time loop: per step one ``h_{t-1} W_hh^T`` GEMM and the pointwise kernel."""
    xp = backend.get_array_module(xw)
    K = kernels.pointwise_for(xp)
    T, B, G = xw.shape
    H = c.W_hh.shape[1]
    Hs, m = c.Hs, c.mask
    # h (B, H) @ W_hh^T runs T times on a (B, H) @ (H, G) GEMM; a contiguous copy of W_hh^T
    # makes that GEMM 1.5-2.5x faster than the transposed view (OpenBLAS, small B), and
    # costs one copy per call; a single step (cells, generation) keeps the view
    W_hhT = _transposed_copy(c.W_hh) if T > 1 else c.W_hh.T
    if c.mode == "lstm":
        Cs, tanh_c = c.Cs, c.tanh_c
        tmp = xp.empty((B, G), dtype=xw.dtype)
        for t in range(T):
            A = xw[t]  # becomes the activated gates, kept for backward
            xp.matmul(Hs[t], W_hhT, out=tmp)
            A += tmp
            K.lstm_forward(A, Cs[t], Cs[t + 1], tanh_c[t], Hs[t + 1])
            if m is not None:
                keep = ~m[t]
                xp.copyto(Hs[t + 1], Hs[t], where=keep)
                xp.copyto(Cs[t + 1], Cs[t], where=keep)
    elif c.mode == "gru":
        gates = xp.empty((T, B, G), dtype=xw.dtype)
        hw = xp.empty((B, G), dtype=xw.dtype)
        for t in range(T):
            xp.matmul(Hs[t], W_hhT, out=hw)
            if b_hh is not None:
                hw += b_hh
            c.hw_n[t] = hw[:, 2 * H :]
            K.gru_forward(xw[t], hw, Hs[t], gates[t], Hs[t + 1])
            if m is not None:
                xp.copyto(Hs[t + 1], Hs[t], where=~m[t])
        c.gates = gates
    else:
        tmp = xp.empty((B, G), dtype=xw.dtype)
        for t in range(T):
            A = xw[t]
            xp.matmul(Hs[t], W_hhT, out=tmp)
            A += tmp
            K.rnn_forward(A, c.nonlinearity, out=Hs[t + 1])
            if m is not None:
                xp.copyto(Hs[t + 1], Hs[t], where=~m[t])


def unroll_backward(cache: UnrollCache, dy, dh_T, dc_T, grads: dict, names: tuple[str, str, str, str]):
    """BPTT through one direction.

    dy (T, B, H) gradient of the outputs in original order (or None); dh_T, dc_T (B, H)
    gradients of the final state (or None). Accumulates into ``grads[names[i]]`` for
    (weight_ih, weight_hh, bias_ih, bias_hh). Returns (dX (T, B, D), dh0, dc0 or None); for a
    ``Lookup`` input dX is None and the table's gradient is accumulated into ``Lookup.grad``.
    """
    c = cache
    if c.gates is None:
        raise RuntimeError("backward called twice for one forward: the cache is consumed by the first")
    xp = backend.get_array_module(c.Hs)
    T, B, D = c.X.shape
    H = c.W_hh.shape[1]
    G = GATES[c.mode] * H
    if dy is not None and c.reverse:
        dy = dy[::-1]
    dh = xp.zeros((B, H), dtype=c.X.dtype)
    if dh_T is not None:
        dh += dh_T
    dc = None
    if c.mode == "lstm":
        dc = xp.zeros((B, H), dtype=c.X.dtype)
        if dc_T is not None:
            dc += dc_T
    # dXW, the gradient of x W_ih^T + b_ih, is written over the cached (T, B, G) buffer the
    # backward consumes (LSTM: the gates, read at step t before dA_t replaces them; GRU:
    # the gates; RNN: the unused pre-activations), so BPTT allocates no second (T, B, G)
    # array. dHW, that of h W_hh^T + b_hh, is dXW itself except the GRU's n block, which
    # is kept over the consumed hw_n (T, B, H).
    dXW, c.gates = c.gates, None  # consumed: one backward per forward
    dHW_n, c.hw_n = c.hw_n, None
    native_mode = _native_mode(c.mode, c.nonlinearity, xp, dXW.dtype, T)
    dbias = None  # the bias gradients, when the native loop summed them on the way
    S = None  # a Lookup's dXW rows summed per token, when the native loop summed them on the way
    if native_mode is not None and dXW.flags.c_contiguous:
        dy_c = None if dy is None else backend.ascontiguous_aligned(dy, dXW.dtype)
        mask_u8 = None if c.mask is None else np.ascontiguousarray(c.mask.reshape(T, B)).view(np.uint8)
        aux = c.tanh_c if c.mode == "lstm" else dHW_n
        ids = None
        if isinstance(c.X, Lookup):
            ids = _processing_ids(c.X, c.reverse)
            S = np.zeros((c.X.table.shape[0], G), dtype=dXW.dtype)
        dbias = kernels.native.cell_backward(native_mode, dXW, np.ascontiguousarray(c.W_hh), c.Hs, c.Cs, aux,
                                             dy_c, dh, dc, mask_u8, bias_grad=c.has_bias, ids=ids, S=S)
    elif xp is not np and kernels.selected() != "reference" and kernels.cuda.loop_takes(c, dXW):
        dh, dc = kernels.cuda.backward_loop(c, dXW, dHW_n, dy, dh, dc)
    else:
        dh, dc = _backward_loop(c, dXW, dHW_n, dy, dh, dc)

    # weight gradients: one GEMM each over all steps, accumulated in place (beta = 1)
    w_ih, w_hh, b_ih, b_hh = names
    H_prev = c.Hs[:-1].reshape(T * B, H)
    if c.mode == "gru":  # [r, z] rows from dXW, n rows from dHW_n
        dXW_rz = dXW.reshape(T * B, G)[:, : 2 * H]
        kernels.accumulate_matmul(grads[w_hh][: 2 * H], dXW_rz.T, H_prev)
        kernels.accumulate_matmul(grads[w_hh][2 * H :], dHW_n.reshape(T * B, H).T, H_prev)
        if c.has_bias:
            grads[b_hh][: 2 * H] += dXW_rz.sum(axis=0) if dbias is None else dbias[: 2 * H]
            grads[b_hh][2 * H :] += dHW_n.sum(axis=(0, 1)) if dbias is None else dbias[G:]
    else:
        kernels.accumulate_matmul(grads[w_hh], dXW.reshape(T * B, G).T, H_prev)
    if c.has_bias:
        db = dXW.sum(axis=(0, 1)) if dbias is None else dbias[:G].astype(dXW.dtype)
        grads[b_ih] += db
        if c.mode != "gru" and b_hh in grads:  # the same sum: both biases enter the same pre-activation
            grads[b_hh] += db
    if S is not None:
        _lookup_backward(c.X, None, c.W_ih, grads[w_ih], S=S)
        return None, dh, dc
    if c.reverse:
        dXW = xp.ascontiguousarray(dXW[::-1])
    dXW2 = dXW.reshape(T * B, G)
    if isinstance(c.X, Lookup):
        _lookup_backward(c.X, dXW2, c.W_ih, grads[w_ih])
        return None, dh, dc
    kernels.accumulate_matmul(grads[w_ih], dXW2.T, c.X.reshape(T * B, D))
    dX = (dXW2 @ c.W_ih).reshape(T, B, D)
    return dX, dh, dc


def _backward_loop(c: UnrollCache, dXW, dHW_n, dy, dh, dc):
    """The NumPy BPTT loop; writes dXW (and the GRU's dHW_n) in place, returns (dh0, dc0)."""
    xp = backend.get_array_module(dXW)
    K = kernels.pointwise_for(xp)
    T, B, G = dXW.shape
    H = c.W_hh.shape[1]
    m = c.mask
    if c.mode == "lstm":
        dc_prev = xp.empty((B, H), dtype=dXW.dtype)
        work = xp.empty((2, B, G), dtype=dXW.dtype)  # kernel scratch, reused every step
    if c.mode == "gru":
        gate_t = xp.empty((B, G), dtype=dXW.dtype)
        dhw_t = xp.empty((B, G), dtype=dXW.dtype)
    g = xp.empty((B, H), dtype=dXW.dtype)  # gradient reaching the cell's new h
    rec = xp.empty((B, H), dtype=dXW.dtype) if m is not None else None

    for t in range(T - 1, -1, -1):
        # dh holds the gradient reaching h_t from step t+1 (and dh_T at the start)
        if dy is not None:
            xp.add(dh, dy[t], out=g)
        else:
            g[...] = dh
        if m is not None:
            valid = m[t]
            g *= valid
            dh *= ~valid  # what passes straight through a padded step to h_{t-1}
            if dc is not None:
                dc_pass = dc * ~valid
                dc *= valid
        if c.mode == "lstm":
            K.lstm_backward(dXW[t], c.Cs[t], c.tanh_c[t], g, dc, dXW[t], dc_prev, work)
            dc, dc_prev = dc_prev, dc
            if m is not None:
                dc += dc_pass
        elif c.mode == "gru":
            gate_t[...] = dXW[t]
            K.gru_backward(gate_t, dHW_n[t], c.Hs[t], g, dXW[t], dhw_t)
            dHW_n[t] = dhw_t[:, 2 * H :]
        else:
            K.rnn_backward(c.Hs[t + 1], g, c.nonlinearity, out=dXW[t])
        # gradient reaching h_{t-1}: through W_hh (written straight into dh when nothing
        # passes through), plus the GRU's direct path h_t = ... + z * h_{t-1}
        dhw = dhw_t if c.mode == "gru" else dXW[t]
        if m is None:
            xp.matmul(dhw, c.W_hh, out=dh)
        else:
            xp.matmul(dhw, c.W_hh, out=rec)
            dh += rec
        if c.mode == "gru":
            dh += g * gate_t[:, H : 2 * H]
    return dh, dc
