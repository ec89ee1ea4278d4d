"""The GPU path (CuPy arrays, the CUDA cell kernels) against the NumPy path, on a CUDA device.

Every test here skips without CuPy and a GPU (CI has neither); ``benchmarks/device_check.sh``
runs this file on a device machine. What it checks:

- each CUDA kernel (``kernels/cuda_cells.cu``, compiled by NVRTC) against the NumPy reference;
- every recurrent layer (RNN tanh/relu, LSTM, GRU; stacked, bidirectional, padded, stateful
  across chunks) forward and BPTT on the GPU against the same layer on the CPU, float64 and
  float32: outputs, input and state gradients, every weight gradient;
- the time loop queues its work and never waits for the device (``cupyx.allow_synchronize``);
- one launch per step and direction for the cell math, and the GPU time loop (one GEMM
  and one kernel a step) for every unpadded direction;
- a language model's training steps (embedding, recurrent stack, fused output layer and
  loss, clipping, Adam) on the GPU against the CPU, and the trainer with ``device="cuda"``:
  it learns, and its checkpoints hold host arrays that load on the CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings

import numpy as np
import pytest

import rnnkit
from rnnkit import backend, optim
from rnnkit.kernels import cuda, pointwise
from rnnkit.layers.unroll import unroll_backward, unroll_forward
from rnnkit.models import LanguageModel, LanguageModelConfig

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA device")]

if backend.gpu_available():
    import cupy as cp
    import cupyx
else:  # pragma: no cover - the module is skipped
    cp = cupyx = None

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-4, atol=2e-5)}


@pytest.fixture(autouse=True)
def no_silent_fallback():
    """A kernel that failed to build or launch falls back to a slower path with the same
    results (a RuntimeWarning): here that is a failure, whatever the test compared."""
    yield
    assert cuda.failures() == {}, f"CUDA kernels failed and their fallback ran: {cuda.failures()}"


def _host(a):
    return backend.to_numpy(a)


def _close(got, want, dtype):
    np.testing.assert_allclose(_host(got), _host(want), **TOL[dtype])


# ------------------------------------------------------------------ kernels on the device
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,H", [(1, 1), (3, 5), (20, 100), (32, 512), (7, 1031)])
def test_device_kernels_match_the_reference(dtype, B, H):
    rng = np.random.default_rng(B + H)
    r = lambda *shape: (1.5 * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
    d = cp.asarray

    # LSTM forward, then backward with the dA written over the gates
    A, c_prev = r(B, 4 * H), r(B, H)
    want = [A.copy()] + [np.empty((B, H), dtype) for _ in range(3)]
    pointwise.lstm_forward(want[0], c_prev, *want[1:])
    got = [d(A)] + [cp.empty((B, H), dtype) for _ in range(3)]
    cuda.lstm_forward(got[0], d(c_prev), *got[1:])
    for g, w in zip(got, want):
        _close(g, w, dtype)
    gates, tanh_c, dh, dc = want[0], want[2], r(B, H), r(B, H)
    want_dA, want_dc = np.empty_like(gates), np.empty((B, H), dtype)
    pointwise.lstm_backward(gates.copy(), c_prev, tanh_c, dh, dc.copy(), want_dA, want_dc)
    g_gates, g_dc = d(gates), cp.empty((B, H), dtype)
    cuda.lstm_backward(g_gates, d(c_prev), d(tanh_c), d(dh), d(dc), g_gates, g_dc)
    _close(g_gates, want_dA, dtype)
    _close(g_dc, want_dc, dtype)

    # GRU forward and backward
    xw, hw, h_prev = r(B, 3 * H), r(B, 3 * H), r(B, H)
    w_gates, w_h = np.empty((B, 3 * H), dtype), np.empty((B, H), dtype)
    pointwise.gru_forward(xw, hw, h_prev, w_gates, w_h)
    g_gates, g_h = cp.empty((B, 3 * H), dtype), cp.empty((B, H), dtype)
    cuda.gru_forward(d(xw), d(hw), d(h_prev), g_gates, g_h)
    _close(g_gates, w_gates, dtype)
    _close(g_h, w_h, dtype)
    hw_n = np.ascontiguousarray(hw[:, 2 * H :])
    w_dxw, w_dhw = np.empty_like(w_gates), np.empty_like(w_gates)
    pointwise.gru_backward(w_gates, hw_n, h_prev, dh, w_dxw, w_dhw)
    g_dxw, g_dhw = cp.empty((B, 3 * H), dtype), cp.empty((B, 3 * H), dtype)
    cuda.gru_backward(d(w_gates), d(hw_n), d(h_prev), d(dh), g_dxw, g_dhw)
    _close(g_dxw, w_dxw, dtype)
    _close(g_dhw, w_dhw, dtype)

    # RNN, both nonlinearities
    for nl in ("tanh", "relu"):
        a = r(B, H)
        w_out, w_da = np.empty_like(a), np.empty_like(a)
        pointwise.rnn_forward(a, nl, w_out)
        pointwise.rnn_backward(w_out, dh, nl, w_da)
        g_out, g_da = cp.empty((B, H), dtype), cp.empty((B, H), dtype)
        cuda.rnn_forward(d(a), nl, g_out)
        cuda.rnn_backward(d(w_out), d(dh), nl, g_da)
        _close(g_out, w_out, dtype)
        _close(g_da, w_da, dtype)


# ------------------------------------------------------------- every other layer
def _flat(values):
    out = []
    for v in values:
        if isinstance(v, (tuple, list)):
            out += _flat(v)
        elif v is not None:
            out.append(v)
    return out


def _case(name, dtype):
    """(layer, run) for one layer: ``run(layer, xp)`` does a forward and a backward on inputs
    moved to ``xp`` and returns every output and input gradient."""
    L = rnnkit.layers
    rng = np.random.default_rng(7)
    r = lambda *shape: rng.standard_normal(shape).astype(dtype)  # noqa: E731
    B, T, D, H = 3, 5, 6, 4
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=bool)
    ids = rng.integers(0, 9, (B, T))
    if name == "linear":
        x, dy = r(B, T, D), r(B, T, H)
        return L.Linear(D, H, dtype=dtype, seed=1), lambda m, xp: [m.forward(xp.asarray(x)), m.backward(xp.asarray(dy))]
    if name == "embedding":
        dy = r(B, T, D)
        return L.Embedding(9, D, padding_idx=0, dtype=dtype, seed=1), \
            lambda m, xp: [m.forward(xp.asarray(ids)), m.backward(xp.asarray(dy))]
    if name == "dropout":  # the same seed draws the same mask on either device
        x, dy = r(B, T, D), r(B, T, D)
        return L.Dropout(0.4, seed=3), lambda m, xp: [m.forward(xp.asarray(x)), m.backward(xp.asarray(dy))]
    if name.startswith("attention"):
        score, steps = name.split("-")[1:]
        q = r(B, T, D) if steps == "3d" else r(B, D)
        mem, dctx = r(B, 7, D), r(*q.shape)
        mmask = np.ones((B, 7), dtype=bool)
        mmask[1, 4:] = False
        layer = L.Attention(D, D, score=score, attention_size=5, dtype=dtype, seed=1)
        dw = r(B, T, 7) if steps == "3d" else r(B, 7)
        return layer, lambda m, xp: [m.forward(xp.asarray(q), xp.asarray(mem), xp.asarray(mmask)),
                                     m.backward(xp.asarray(dctx), xp.asarray(dw))]
    if name.startswith("pooling"):
        mode = name.split("-", 1)[1]
        y = r(B, T, 2 * H)
        pool = L.SequencePooling(mode, num_directions=2)
        dout = r(B, pool.output_size(2 * H))
        return pool, lambda m, xp: [m.forward(xp.asarray(y), xp.asarray(mask)), m.backward(xp.asarray(dout))]
    if name == "softmax_ce":
        logits, t = r(B, T, 11), rng.integers(0, 11, (B, T))
        t[0, 1] = -100
        return L.SoftmaxCrossEntropy(ignore_index=-100), \
            lambda m, xp: [np.array(m.forward(xp.asarray(logits), xp.asarray(t), xp.asarray(mask))), m.backward(0.7)]
    if name == "mse":
        pred, target = r(B, T, 2), r(B, T, 2)
        return L.MSELoss(), lambda m, xp: [np.array(m.forward(xp.asarray(pred), xp.asarray(target), xp.asarray(mask))),
                                           m.backward(1.3)]
    if name == "linear_ce":
        x, t = r(B, T, D), rng.integers(0, 11, (B, T))
        lin = L.Linear(D, 11, dtype=dtype, seed=1)

        def run(m, xp):
            res = L.linear_cross_entropy(m, xp.asarray(x), xp.asarray(t), xp.asarray(mask), dloss=0.5,
                                         chunk_bytes=4 * 11 * np.dtype(dtype).itemsize)  # several blocks
            return [np.array(res.loss), res.dx]
        return lin, run
    cell_cls = {"cell-lstm": L.LSTMCell, "cell-gru": L.GRUCell, "cell-rnn": L.RNNCell}[name]
    xs, dhs = [r(B, D) for _ in range(3)], [r(B, H) for _ in range(3)]
    cell = cell_cls(D, H, dtype=dtype, seed=1)

    def run_cell(m, xp):
        state, outs = None, []
        for x in xs:  # three steps forward, then back through them, last step first
            state = m.forward(xp.asarray(x), state)
            outs.append(state)
        dstate = None
        for dh in reversed(dhs):
            g = xp.asarray(dh)
            if dstate is not None:
                g = g + (dstate[0] if isinstance(dstate, tuple) else dstate)
            dx, dstate = m.backward((g, None if dstate is None or not isinstance(dstate, tuple) else dstate[1])
                                    if name == "cell-lstm" else g)
            outs += [dx, dstate]
        return outs
    return cell, run_cell


LAYER_CASES = ["linear", "embedding", "dropout", "attention-dot-3d", "attention-dot-2d", "attention-additive-3d",
               "attention-additive-2d", "pooling-last", "pooling-mean", "pooling-max", "pooling-max+mean",
               "softmax_ce", "mse", "linear_ce", "cell-lstm", "cell-gru", "cell-rnn"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", LAYER_CASES)
def test_each_layer_on_the_gpu_matches_the_cpu(name, dtype):
    """Every other layer, forward and backward, on the GPU against the same layer on the CPU:
    outputs, input gradients, parameter gradients."""
    cpu, run = _case(name, dtype)
    gpu = copy.deepcopy(cpu).to(device="cuda")
    want = [_host(v) for v in _flat(run(cpu, np))]
    got = [_host(v) for v in _flat(run(gpu, cp))]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        _close(g, w, dtype)
    for (pname, _, gw), (_, _, gg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        np.testing.assert_allclose(_host(gg), gw, **TOL[dtype], err_msg=pname)


def test_the_output_layer_is_one_softmax_launch_per_block(monkeypatch):
    """linear_cross_entropy on the GPU: loss, softmax and gradient in one kernel per block of
    rows, and with the default block size the whole (N, V) in one block (launches, not
    memory, are what blocks cost there)."""
    calls = []
    real = cuda.softmax_xent_rows
    monkeypatch.setattr(cuda, "softmax_xent_rows", lambda z, *a: (calls.append(z.shape), real(z, *a))[1])
    lin = rnnkit.layers.Linear(8, 8000, dtype=np.float32, seed=0).to(device="cuda")
    rng = np.random.default_rng(0)
    x, t = cp.asarray(rng.standard_normal((5, 140, 8)).astype(np.float32)), cp.asarray(rng.integers(0, 8000, (5, 140)))
    rnnkit.layers.linear_cross_entropy(lin, x, t)
    assert calls == [(700, 8000)]  # 22 MB of logits: one block (the CPU's default makes two)
    calls.clear()
    rnnkit.layers.linear_cross_entropy(lin, x, t, chunk_bytes=300 * 8000 * 4)  # asked for: 3 equal-ish blocks
    assert calls == [(234, 8000), (234, 8000), (232, 8000)]


# --------------------------------------------------------------------- whole layers
CASES = [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")]


def _layer(mode, nonlinearity, dtype, **kw):
    cls = {"lstm": rnnkit.layers.LSTM, "gru": rnnkit.layers.GRU, "rnn": rnnkit.layers.RNN}[mode]
    extra = {"nonlinearity": nonlinearity} if mode == "rnn" else {}
    return cls(7, 9, num_layers=2, dtype=dtype, seed=3, **extra, **kw)


def _run(layer, xs, dys, lengths, xp):
    """Forward and backward over the chunks ``xs`` (a stateful layer carries its state)."""
    layer.zero_grad()
    outs = []
    for x, dy in zip(xs, dys):
        y, state = layer.forward(xp.asarray(x), lengths=None if lengths is None else xp.asarray(lengths))
        dstate = (state[0] * 0.5, state[1] * 0.25) if isinstance(state, tuple) else state * 0.5
        dx = layer.backward(xp.asarray(dy), dstate)
        outs += [y, dx, layer.dstate0[0] if isinstance(layer.dstate0, tuple) else layer.dstate0]
    return [_host(o) for o in outs], {k: _host(v) for k, v in layer.grads.items()}


def _assert_gpu_matches_cpu(cpu, variant, width, dtype, seed, lengths=None, persistent=False):
    """Run ``cpu`` and its copy on the GPU over the same chunks (two for "stateful"), forward
    and backward, and compare outputs, input and state gradients, and every weight gradient.
    Returns the number of chunks run."""
    gpu = copy.deepcopy(cpu).to(device="cuda")
    rng = np.random.default_rng(seed)
    B, T, chunks = 4, 6, 2 if variant == "stateful" else 1
    xs = [rng.standard_normal((B, T, 7)).astype(dtype) for _ in range(chunks)]
    dys = [rng.standard_normal((B, T, width)).astype(dtype) for _ in range(chunks)]
    want, want_grads = _run(cpu, xs, dys, lengths, np)
    with cuda.persistent(persistent):
        got, got_grads = _run(gpu, xs, dys, lengths, cp)
    for g, w in zip(got, want):
        _close(g, w, dtype)
    assert set(got_grads) == set(want_grads)
    for name in want_grads:
        _close(got_grads[name], want_grads[name], dtype)
    return chunks


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode,nonlinearity", CASES)
@pytest.mark.parametrize("variant", ["plain", "bidirectional", "padded", "stateful"])
def test_layer_on_the_gpu_matches_the_cpu(dtype, mode, nonlinearity, variant):
    kw = {"bidirectional": variant == "bidirectional", "stateful": variant == "stateful"}
    cpu = _layer(mode, nonlinearity, dtype, **kw)
    lengths = np.array([6, 1, 4, 3]) if variant == "padded" else None
    _assert_gpu_matches_cpu(cpu, variant, 9 * (2 if kw["bidirectional"] else 1), dtype, seed=11, lengths=lengths)


@pytest.mark.parametrize("mode,nonlinearity", CASES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_time_loop_never_waits_for_the_device(mode, nonlinearity, masked, reverse):
    """Forward and BPTT of one direction queue everything: any host synchronisation raises."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[mode]
    T, B, D, H = 12, 5, 8, 16
    rng = cp.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s, dtype=cp.float32)  # noqa: E731
    X, W_ih, W_hh, b_ih, b_hh, h0, c0 = f(T, B, D), f(G * H, D), f(G * H, H), f(G * H), f(G * H), f(B, H), f(B, H)
    mask = (cp.arange(T)[:, None] < cp.asarray([12, 3, 7, 1, 12])[None, :]) if masked else None
    grads = {n: cp.zeros_like(p) for n, p in (("w_ih", W_ih), ("w_hh", W_hh), ("b_ih", b_ih), ("b_hh", b_hh))}
    cp.cuda.Device().synchronize()
    with cupyx.allow_synchronize(False):
        y, h_T, c_T, cache = unroll_forward(mode, X, W_ih, W_hh, b_ih, b_hh, h0, c0 if mode == "lstm" else None,
                                            mask=mask, reverse=reverse, nonlinearity=nonlinearity)
        unroll_backward(cache, f(T, B, H), f(B, H), f(B, H) if mode == "lstm" else None, grads,
                        ("w_ih", "w_hh", "b_ih", "b_hh"))
    cp.cuda.Device().synchronize()
    assert bool(cp.isfinite(y).all())


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_cell_math_is_one_launch_per_step(mode, monkeypatch):
    launches = []
    real = cuda._launch
    monkeypatch.setattr(cuda, "_launch", lambda name, *a: (launches.append(name), real(name, *a)))
    T, B = 9, 3
    layer = rnnkit.layers.LSTM if mode == "lstm" else rnnkit.layers.GRU if mode == "gru" else rnnkit.layers.RNN
    net = layer(4, 5, dtype=np.float32, seed=0).to(device="cuda")
    y, _ = net.forward(cp.ones((B, T, 4), cp.float32))
    net.backward(cp.ones_like(y))
    assert launches == [f"rk_{mode}_forward"] * T + [f"rk_{mode}_backward"] * T


def test_unmasked_directions_run_the_gpu_loop_and_padded_ones_the_generic(monkeypatch):
    from rnnkit.layers import unroll

    used = []

    def spy(name, fn):
        return lambda *a, **k: (used.append(name), fn(*a, **k))[1]

    for module, attr, name in ((cuda, "forward_loop", "gpu"), (cuda, "backward_loop", "gpu"),
                               (unroll, "_forward_loop", "generic"), (unroll, "_backward_loop", "generic")):
        monkeypatch.setattr(module, attr, spy(f"{name} {attr.strip('_')}", getattr(module, attr)))
    net = rnnkit.layers.GRU(4, 5, bidirectional=True, dtype=np.float32, seed=0).to(device="cuda")
    x = cp.ones((2, 6, 4), cp.float32)
    y, _ = net.forward(x)
    net.backward(cp.ones_like(y))
    assert used == ["gpu forward_loop"] * 2 + ["gpu backward_loop"] * 2
    used.clear()
    y, _ = net.forward(x, lengths=cp.asarray([6, 3]))
    net.backward(cp.ones_like(y))
    assert used == ["generic forward_loop"] * 2 + ["generic backward_loop"] * 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["plain", "bidirectional", "stateful", "wide", "no bias"])
@pytest.mark.parametrize("mode,nonlinearity", CASES)
def test_persistent_loops_match_the_cpu(mode, nonlinearity, dtype, variant, monkeypatch):
    """The opt-in persistent kernels (the whole loop of a direction in one launch each way):
    the same outputs and gradients as the CPU, reversed directions and carried state included;
    "wide" has H = 265, several units per block and a last block with fewer."""
    launched = []
    real = cuda._launch_cooperative

    def spy(name, *args):  # counts the launches that ran (a failed one falls back to the GEMM loop)
        ran = real(name, *args)
        if ran:
            launched.append(name)
        return ran

    monkeypatch.setattr(cuda, "_launch_cooperative", spy)
    kw = {"bidirectional": variant == "bidirectional", "stateful": variant == "stateful", "bias": variant != "no bias"}
    if mode == "rnn":
        kw["nonlinearity"] = nonlinearity
    H = 265 if variant == "wide" else 9
    cls = {"lstm": rnnkit.layers.LSTM, "gru": rnnkit.layers.GRU, "rnn": rnnkit.layers.RNN}[mode]
    cpu = cls(7, H, num_layers=2, dtype=dtype, seed=3, **kw)
    chunks = _assert_gpu_matches_cpu(cpu, variant, H * (2 if kw["bidirectional"] else 1), dtype, seed=12,
                                     persistent=True)
    per_chunk = 2 * (2 if kw["bidirectional"] else 1)  # layers x directions
    assert launched == ([f"rk_{mode}_persistent_forward"] * per_chunk
                        + [f"rk_{mode}_persistent_backward"] * per_chunk) * chunks
    assert not cuda.persistent_enabled()  # the context manager restored the default


def test_persistent_lstm_falls_back_where_it_does_not_fit(monkeypatch):
    monkeypatch.setattr(cuda, "_device_limits", lambda: (132, 64))  # 64 bytes of shared memory: nothing fits
    assert cuda.persistent_plan(20, 100, 4) is None and cuda.persistent_plan(2, 5, 4) is None
    launched = []
    monkeypatch.setattr(cuda, "_launch_cooperative", lambda name, *a: launched.append(name) or True)
    net = rnnkit.layers.LSTM(4, 5, dtype=np.float32, seed=0).to(device="cuda")
    with cuda.persistent():
        y, _ = net.forward(cp.ones((2, 3, 4), cp.float32))
        net.backward(cp.ones_like(y))
    assert launched == [] and bool(cp.isfinite(y).all())


def test_a_persistent_kernel_that_fails_falls_back_to_the_gemm_loop_and_says_so(monkeypatch):
    """Where a persistent kernel does not build or launch (resources, an old driver), the
    direction runs the GEMM loop instead: the same results, one RuntimeWarning, and the
    failure in cuda.failures()."""

    def refuse(name, dtype):
        raise RuntimeError("cooperative launch refused (test)")

    failures = _run_with_persistent_kernels(monkeypatch, refuse, rnnkit.layers.GRU, backward=True,
                                            match="rk_gru_persistent_(forward|backward).*GEMM time loop")
    assert set(failures) == {("rk_gru_persistent_forward", "float64"), ("rk_gru_persistent_backward", "float64")}


def _run_with_persistent_kernels(monkeypatch, cooperative_kernel, cls, backward, match):
    """A float64 layer of ``cls`` on the GPU with the persistent kernels on and
    ``cooperative_kernel(name, dtype)`` standing in for their build: its forward (and
    backward) must warn (``match``) and still give the CPU's outputs. Returns the failures
    recorded, which are then cleared (made on purpose; no_silent_fallback checks the rest)."""
    monkeypatch.setattr(cuda, "_cooperative_kernel", cooperative_kernel)
    cpu = cls(5, 6, dtype=np.float64, seed=0)
    gpu = copy.deepcopy(cpu).to(device="cuda")
    x = np.random.default_rng(0).standard_normal((2, 4, 5))
    want = cpu.forward(x)[0]
    try:
        with cuda.persistent(), pytest.warns(RuntimeWarning, match=match):
            got = gpu.forward(cp.asarray(x))[0]
            if backward:
                gpu.backward(cp.ones_like(got))
        _close(got, want, np.float64)
        return dict(cuda.failures())
    finally:
        cuda._failures.clear()


def test_a_cooperative_grid_cupy_would_shrink_is_not_launched(monkeypatch):
    """CuPy cuts a cooperative grid that does not fit on the device at once down to what
    does, with a warning, and launches that; a persistent kernel's blocks own disjoint units,
    so it would leave units uncomputed. The warning is taken as a refusal: nothing launches,
    and the GEMM loop gives the right result."""
    launched = []

    class Shrinking:  # CuPy's _launch: the warning comes before the launch
        max_dynamic_shared_size_bytes = 1 << 20

        def __call__(self, grid, block, args, shared_mem=0):
            warnings.warn(f"The grid size will be reduced from {grid[0]} to 1, as the specified grid size "
                          "exceeds the limit.", stacklevel=2)
            launched.append(grid)

    failures = _run_with_persistent_kernels(monkeypatch, lambda name, dtype: Shrinking(), rnnkit.layers.LSTM,
                                            backward=False, match="grid size will be reduced.*GEMM time loop")
    assert launched == [] and ("rk_lstm_persistent_forward", "float64") in failures


def test_persistent_plan_splits_units_over_the_multiprocessors(monkeypatch):
    monkeypatch.setattr(cuda, "_device_limits", lambda: (132, 227 * 1024))
    s = cuda.persistent_plan(20, 100, 4)  # config S
    assert (s.units, s.grid, s.block) == (1, 100, 32)
    m = cuda.persistent_plan(20, 650, 4)  # config M: 5 units a block, 130 blocks
    assert (m.units, m.grid, m.block) == (5, 130, 128)
    assert m.chunk == 192  # 20 rows x 193 x 4 bytes: the 16 KiB tile
    assert m.forward_shared == (4 * 5 * 651 + 20 * 651) * 4 and m.backward_shared == (5 * 2601 + 20 * 193) * 4
    c = cuda.persistent_plan(32, 512, 4)  # config C
    assert (c.units, c.grid, c.block, c.chunk) == (4, 128, 128, 128)
    g = cuda.persistent_plan(32, 512, 4, gates=3)  # a GRU on C: three gate blocks
    assert g.forward_shared == (3 * 4 * 513 + 32 * 513) * 4 and g.backward_shared == (4 * 1537 + 32 * 129) * 4
    assert cuda.persistent_plan(20, 650, 8) is not None  # float64 M: 208 KB, still under 227
    assert cuda.persistent_plan(64, 4096, 4) is None  # too big for shared memory


# ------------------------------------------------------------------ language model
def _tiny_lm(cell, dtype):
    cfg = LanguageModelConfig(vocab_size=1500, cell=cell, embedding_size=16, hidden_size=16, num_layers=2,
                              tie_weights=True, dropout=0.0)
    return LanguageModel(cfg, dtype=dtype, seed=2)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_lm_training_steps_on_the_gpu_match_the_cpu(cell):
    """Five steps of loss_and_backward, clipping and Adam, float64: the same losses and weights."""
    cpu = _tiny_lm(cell, np.float64)
    gpu = copy.deepcopy(cpu).to(device="cuda")
    rng = np.random.default_rng(5)
    losses = {}
    for name, model, xp in (("cpu", cpu, np), ("gpu", gpu, cp)):
        opt = optim.Adam(model, lr=3e-3)
        losses[name] = []
        for _ in range(5):
            ids = rng.integers(0, 1500, (4, 10))
            opt.zero_grad()
            losses[name].append(model.loss_and_backward(xp.asarray(ids), xp.asarray(np.roll(ids, -1, axis=1))))
            optim.clip_grad_norm(model, 0.5)
            opt.step()
        rng = np.random.default_rng(5)  # the same batches for the second model
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-10)
    for (name, p, _), (_, q, _) in zip(cpu.named_parameters(), gpu.named_parameters()):
        np.testing.assert_allclose(_host(q), p, rtol=1e-9, atol=1e-12, err_msg=name)


@functools.lru_cache(maxsize=1)
def _shakespeare():
    from rnnkit.data.text import load_corpus

    return load_corpus("tinyshakespeare", level="char")


def test_trainer_on_the_gpu_learns_and_writes_host_checkpoints(tmp_path):
    from rnnkit.tasks.lm import LanguageModelTask, LMTaskConfig, evaluate_ids
    from rnnkit.train import TrainConfig, Trainer

    cfg = LMTaskConfig(corpus="tinyshakespeare", level="char", hidden_size=96, embedding_size=32, batch_size=16,
                       bptt=32, max_eval_tokens=3000)
    corpus = dataclasses.replace(_shakespeare(), train=_shakespeare().train[:60_000])
    task = LanguageModelTask(cfg, corpus, seed=0)
    trainer = Trainer(task, TrainConfig(epochs=1, lr=5e-3, max_steps=100, run_dir=str(tmp_path / "run"),
                                        progress=False, plot=False, eval_test=False, device="cuda"), cfg)
    assert backend.get_array_module(task.model.rnn.params["weight_hh_l0"]) is cp
    result = trainer.fit()
    assert result["best_val_loss"] < 2.8, result  # chance is log(65) = 4.17 nats
    best = LanguageModel.load(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert backend.get_array_module(best.rnn.params["weight_hh_l0"]) is np
    on_cpu = evaluate_ids(best, corpus.valid, cfg.eval_batch_size, cfg.bptt, cfg.max_eval_tokens)["loss"]
    assert math.isclose(on_cpu, result["best_val_loss"], rel_tol=1e-4), (on_cpu, result)


# ------------------------------------------------------------------ every task
def _task_case(name, tmp_path):
    """(task class, config, seed) for a small instance of each ``rnnkit train --task``."""
    if name == "classify":
        from rnnkit.tasks.classify import ClassifyConfig, ClassifyTask
        from test_classifier import write_labelled_csv

        return ClassifyTask, ClassifyConfig(dataset=str(write_labelled_csv(tmp_path / "toy.csv")), embedding_dim=8,
                                            hidden_size=8, batch_size=8, val_fraction=0.2, test_fraction=0.2), 1
    if name == "seq2seq":
        from rnnkit.tasks.seq2seq import Seq2SeqTask, Seq2SeqTaskConfig

        return Seq2SeqTask, Seq2SeqTaskConfig(dataset="gen-addition", num_generated=300, hidden_size=16,
                                              embedding_dim=8, attention="dot", reverse_source=True,
                                              batch_size=32, eval_beam_size=2), 0
    if name == "caption":
        pytest.importorskip("sklearn")
        from rnnkit.tasks.caption import CaptionTask, CaptionTaskConfig

        return CaptionTask, CaptionTaskConfig(cell="gru", hidden_size=24, embedding_dim=8, num_train=200, num_val=50,
                                              num_test=50, max_digits=1, batch_size=50), 0
    from rnnkit.tasks.forecast import ForecastConfig, ForecastTask

    path = tmp_path / "s.csv"
    path.write_text("t,v\n" + "".join(f"{i},{10 + np.sin(i / 2):.5f}\n" for i in range(120)), encoding="utf-8")
    return ForecastTask, ForecastConfig(dataset=str(path), hidden_size=8, input_len=10, val_size=15, test_size=15,
                                        horizon=2, output="sequence", loss="mae"), 2


@pytest.mark.parametrize("name", ["classify", "seq2seq", "caption", "forecast"])
def test_every_task_trains_on_the_gpu_as_on_the_cpu(name, tmp_path):
    """``rnnkit train --task NAME --device cuda`` in miniature: the same metrics as on the CPU
    (float32, to rounding), and a best checkpoint that reloads on the CPU with those metrics."""
    from rnnkit.train import TrainConfig, Trainer

    results = {}
    for device in ("cpu", "cuda"):
        task_cls, cfg, seed = _task_case(name, tmp_path)
        task = task_cls.from_config(cfg, seed=seed)
        tc = TrainConfig(epochs=1, max_steps=8, lr=1e-2, seed=seed, run_dir=str(tmp_path / device), progress=False,
                         plot=False, device=device)
        results[device] = Trainer(task, tc, cfg).fit()
        if device == "cuda":
            assert backend.get_array_module(next(iter(task.model.named_parameters()))[1]) is cp
    cpu, gpu = results["cpu"], results["cuda"]
    numbers = [k for k, v in cpu.items() if isinstance(v, float) and (k.startswith("test_") or k == "best_val_loss")]
    assert numbers
    for key in numbers:
        assert gpu[key] == pytest.approx(cpu[key], rel=2e-3, abs=1e-4), key
    again = task_cls.from_checkpoint(tmp_path / "cuda" / "checkpoints" / "best.safetensors")
    assert backend.get_array_module(next(iter(again.model.named_parameters()))[1]) is np
    assert again.evaluate("test")["loss"] == pytest.approx(gpu["test_loss"], rel=1e-4)
