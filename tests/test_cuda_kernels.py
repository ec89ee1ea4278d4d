"""The CUDA cell kernels (``kernels/cuda_cells.cu`` and their wrappers ``kernels.cuda``), without a GPU.

- The ``.cu`` text compiled for the CPU (``cuda_emulator``: every thread of the grid run
  in turn) and launched through the real wrappers, against the NumPy reference, kernel by
  kernel and through whole recurrent layers (forward and BPTT), float64 and float32.
- The same text through nvcc for the GPU (PTX for sm_90, both dtypes), where nvcc exists.
- The wrappers' contract: the reference's signatures, shape errors before any launch,
  arrays a kernel cannot take handed to ``fused``.

On a GPU, ``tests/test_gpu.py`` runs the compiled kernels themselves against NumPy.
"""
from __future__ import annotations

import inspect
import re
import shutil
import subprocess

import numpy as np
import pytest

import rnnkit
from rnnkit import kernels
from rnnkit.kernels import cuda, fused, pointwise

from cuda_emulator import SIGNATURES, Emulators, compiler, kernel_params

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler to run the kernels on the CPU")

DTYPES = [np.float64, np.float32]
# float64: the same formulas, so only the last bits differ; float32: tanhf against NumPy's tanh
TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-6, atol=2e-7)}
SHAPES = [(1, 1), (3, 5), (2, 33), (4, 70)]  # (B, H): one thread; tails of a block; several blocks


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    return Emulators(tmp_path_factory.mktemp("cuda_cpu"))


@pytest.fixture
def emulated(emulators, monkeypatch):
    """The wrappers in ``kernels.cuda`` launching the CPU build of the kernels."""
    monkeypatch.setattr(cuda, "_kernel", emulators.lookup)
    before = len(emulators.launches)
    yield lambda: emulators.launches[before:]


def _rand(rng, shape, dtype, scale=1.5):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _close(got, want, dtype):
    np.testing.assert_allclose(got, want, **TOL[dtype])


# ----------------------------------------------------------------- kernel by kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", SHAPES)
def test_lstm_forward_matches_reference(emulated, dtype, B, H):
    rng = np.random.default_rng(B * 100 + H)
    A, c_prev = _rand(rng, (B, 4 * H), dtype), _rand(rng, (B, H), dtype)
    A_ref = A.copy()
    got = [np.full((B, H), np.nan, dtype) for _ in range(3)]
    want = [np.empty((B, H), dtype) for _ in range(3)]
    cuda.lstm_forward(A, c_prev, *got)
    pointwise.lstm_forward(A_ref, c_prev, *want)
    _close(A, A_ref, dtype)  # the activated gates, written in place
    for g, w in zip(got, want):
        _close(g, w, dtype)
    assert [name for name, _, _ in emulated()] == ["rk_lstm_forward"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", SHAPES)
@pytest.mark.parametrize("with_dc", [True, False])
@pytest.mark.parametrize("in_place", [True, False])
def test_lstm_backward_matches_reference(emulated, dtype, B, H, with_dc, in_place):
    rng = np.random.default_rng(B * 100 + H + 7)
    A = _rand(rng, (B, 4 * H), dtype)
    gates = np.empty_like(A)
    pointwise.lstm_forward(A, _rand(rng, (B, H), dtype), np.empty((B, H), dtype), np.empty((B, H), dtype),
                           np.empty((B, H), dtype))
    gates[...] = A
    c_prev, dh = _rand(rng, (B, H), dtype), _rand(rng, (B, H), dtype)
    tanh_c = np.tanh(_rand(rng, (B, H), dtype))
    dc = _rand(rng, (B, H), dtype) if with_dc else None
    want_dA, want_dc = np.empty_like(gates), np.empty((B, H), dtype)
    pointwise.lstm_backward(gates.copy(), c_prev, tanh_c, dh, None if dc is None else dc.copy(), want_dA, want_dc)
    g = gates.copy()
    dA = g if in_place else np.full_like(gates, np.nan)
    dc_prev = np.full((B, H), np.nan, dtype)
    cuda.lstm_backward(g, c_prev, tanh_c, dh, dc, dA, dc_prev)
    _close(dA, want_dA, dtype)
    _close(dc_prev, want_dc, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", SHAPES)
def test_gru_forward_and_backward_match_reference(emulated, dtype, B, H):
    rng = np.random.default_rng(B * 100 + H + 11)
    xw, hw, h_prev = _rand(rng, (B, 3 * H), dtype), _rand(rng, (B, 3 * H), dtype), _rand(rng, (B, H), dtype)
    gates, h = np.full((B, 3 * H), np.nan, dtype), np.full((B, H), np.nan, dtype)
    want_gates, want_h = np.empty_like(gates), np.empty_like(h)
    cuda.gru_forward(xw, hw, h_prev, gates, h)
    pointwise.gru_forward(xw, hw, h_prev, want_gates, want_h)
    _close(gates, want_gates, dtype)
    _close(h, want_h, dtype)

    dh = _rand(rng, (B, H), dtype)
    hw_n = np.ascontiguousarray(hw[:, 2 * H :])
    dxw, dhw = np.full_like(gates, np.nan), np.full_like(gates, np.nan)
    want_dxw, want_dhw = np.empty_like(gates), np.empty_like(gates)
    cuda.gru_backward(want_gates, hw_n, h_prev, dh, dxw, dhw)
    pointwise.gru_backward(want_gates, hw_n, h_prev, dh, want_dxw, want_dhw)
    _close(dxw, want_dxw, dtype)
    _close(dhw, want_dhw, dtype)
    assert [name for name, _, _ in emulated()] == ["rk_gru_forward", "rk_gru_backward"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("B,H", SHAPES)
def test_rnn_forward_and_backward_match_reference(emulated, dtype, nonlinearity, B, H):
    rng = np.random.default_rng(B * 100 + H + 13)
    a = _rand(rng, (B, H), dtype)
    h, want_h = np.full_like(a, np.nan), np.empty_like(a)
    cuda.rnn_forward(a, nonlinearity, h)
    pointwise.rnn_forward(a, nonlinearity, want_h)
    _close(h, want_h, dtype)
    dh = _rand(rng, (B, H), dtype)
    da, want_da = np.full_like(a, np.nan), np.empty_like(a)
    cuda.rnn_backward(want_h, dh, nonlinearity, da)
    pointwise.rnn_backward(want_h, dh, nonlinearity, want_da)
    _close(da, want_da, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 5, 32, 77])
@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize("grad", [True, False])
def test_softmax_xent_rows_match_the_reference(emulated, monkeypatch, dtype, V, with_valid, grad):
    """One block per row: the loss of each row and, in place, scale * (softmax - onehot),
    zero in rows not counted; against the NumPy passes of linear_cross_entropy."""
    from rnnkit.layers.losses import _softmax_grad_rows, _softmax_rows

    monkeypatch.setattr(cuda, "ROWS_BLOCK", 16)  # rows longer than a block, and a block longer than a row
    monkeypatch.setattr(cuda, "ROWS_GRID", 3)  # fewer blocks than rows: the grid-stride loop over rows
    rng = np.random.default_rng(V)
    N = 7
    z = (4 * rng.standard_normal((N, V))).astype(dtype)
    z[2, 0] = 60.0  # a logit exp() of which would overflow without the row max
    t = rng.integers(0, V, N).astype(np.int64)
    valid = np.array([1, 0, 1, 1, 0, 1, 1], dtype=bool) if with_valid else None
    want_z = z.copy()
    with kernels.using("fused"):
        sumexp, want_loss = _softmax_rows(want_z, t, want_z)
        if grad:
            _softmax_grad_rows(want_z, t, sumexp, valid, 0.37)
    got_z = z.copy()
    got_loss = cuda.softmax_xent_rows(got_z, t, valid, 0.37, grad)
    _close(got_loss, want_loss, dtype)
    _close(got_z, want_z if grad else z, dtype)
    assert [name for name, _, _ in emulated()] == ["rk_softmax_xent_rows"]


def test_softmax_xent_rows_refuse_mismatched_targets(emulated):
    with pytest.raises(ValueError, match=r"targets \(3,\) / valid None; expected \(2,\) for logits \(2, 4\)"):
        cuda.softmax_xent_rows(np.zeros((2, 4), np.float32), np.zeros(3, np.int64), None, 1.0, True)
    assert not cuda.softmax_xent_takes(np.zeros((2, 4), np.float32), np.zeros(2, np.int32), None)  # int32 ids
    assert emulated() == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_steps_match_their_array_formulas(emulated, dtype):
    rng = np.random.default_rng(4)
    p, g = _rand(rng, (13, 7), dtype), _rand(rng, (13, 7), dtype)
    want = p - dtype(0.3) * g
    assert cuda.sgd_step(p, g, 0.3)
    _close(p, want, dtype)
    m, v = _rand(rng, (13, 7), dtype), np.abs(_rand(rng, (13, 7), dtype))
    b1, b2, eps, bias2, step = 0.9, 0.999, 1e-8, 1 - 0.999**3, 1e-3 / (1 - 0.9**3)
    want_m = m * dtype(b1) + dtype(1 - b1) * g
    want_v = v * dtype(b2) + dtype(1 - b2) * (g * g)
    want_p = p - dtype(step) * (want_m / (np.sqrt(want_v / dtype(bias2)) + dtype(eps)))
    assert cuda.adam_step(p, g, m, v, b1, b2, eps, bias2, step)
    for got, w in ((m, want_m), (v, want_v), (p, want_p)):
        _close(got, w, dtype)
    assert not cuda.sgd_step(p, g[:, ::2], 0.1) and not cuda.adam_step(p, g.T, m, v, b1, b2, eps, bias2, step)
    assert [name for name, _, _ in emulated()] == ["rk_sgd_step", "rk_adam_step"]


def test_sum_squares_over_tensors_in_float64(emulated, monkeypatch):
    """Several tensors, several blocks each, one total accumulated in float64."""
    monkeypatch.setattr(cuda, "SUMSQ_GRID", 3)
    monkeypatch.setattr(cuda, "SUMSQ_BLOCK", 4)
    rng = np.random.default_rng(5)
    arrays = [_rand(rng, shape, np.float32) for shape in ((1,), (5, 3), (100,), (7, 9, 2))]
    want = sum(float(np.dot(a.ravel().astype(np.float64), a.ravel().astype(np.float64))) for a in arrays)
    got = cuda.sum_squares(arrays)
    assert float(got) == pytest.approx(want, rel=1e-12)
    assert [name for name, _, _ in emulated()] == ["rk_sumsq"] * 4
    assert cuda.sum_squares([arrays[0], arrays[1].astype(np.float64)]) is None  # mixed dtypes: not taken


def test_grid_stride_loop_covers_every_element_with_few_threads(emulated, monkeypatch):
    """With 3 threads a block and at most 2 blocks, each thread walks many elements."""
    monkeypatch.setattr(cuda, "BLOCK", 3)
    monkeypatch.setattr(cuda, "MAX_GRID", 2)
    rng = np.random.default_rng(5)
    B, H = 4, 9
    A, c_prev = _rand(rng, (B, 4 * H), np.float64), _rand(rng, (B, H), np.float64)
    A_ref = A.copy()
    got = [np.full((B, H), np.nan) for _ in range(3)]
    want = [np.empty((B, H)) for _ in range(3)]
    cuda.lstm_forward(A, c_prev, *got)
    pointwise.lstm_forward(A_ref, c_prev, *want)
    _close(A, A_ref, np.float64)
    for g, w in zip(got, want):
        _close(g, w, np.float64)
    assert emulated() == [("rk_lstm_forward", 2, 3)]


def test_launch_shape_follows_the_size(emulated, monkeypatch):
    """One block per BLOCK elements, at most MAX_GRID blocks (the grid-stride loop takes the rest)."""
    a = np.zeros((3, 100), np.float32)
    cuda.rnn_forward(a, "tanh", np.empty_like(a))
    monkeypatch.setattr(cuda, "MAX_GRID", 1)
    cuda.rnn_forward(a, "tanh", np.empty_like(a))
    assert emulated() == [("rk_rnn_forward", 2, cuda.BLOCK), ("rk_rnn_forward", 1, cuda.BLOCK)]


# ------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
                                  "rnn_forward", "rnn_backward"])
def test_signatures_are_the_references(name):
    assert inspect.signature(getattr(cuda, name)) == inspect.signature(getattr(pointwise, name))


def test_wrong_shapes_raise_before_any_launch(emulated):
    B, H = 2, 3
    h = np.zeros((B, H), np.float32)
    with pytest.raises(ValueError, match=r"A has shape \(2, 9\); expected \(2, 12\)"):
        cuda.lstm_forward(np.zeros((B, 3 * H), np.float32), h, h.copy(), h.copy(), h.copy())
    with pytest.raises(ValueError, match=r"dc has shape \(2, 4\); expected \(2, 3\)"):
        cuda.lstm_backward(np.zeros((B, 4 * H), np.float32), h, h, h, np.zeros((B, 4), np.float32),
                           np.zeros((B, 4 * H), np.float32), h.copy())
    with pytest.raises(ValueError, match=r"hw has shape \(2, 3\); expected \(2, 9\)"):
        cuda.gru_forward(np.zeros((B, 3 * H), np.float32), h, h, np.zeros((B, 3 * H), np.float32), h.copy())
    with pytest.raises(ValueError, match=r"dhw_out has shape"):
        cuda.gru_backward(np.zeros((B, 3 * H), np.float32), h, h, h, np.zeros((B, 3 * H), np.float32), h.copy())
    with pytest.raises(ValueError, match=r"out has shape \(3, 2\); expected \(2, 3\)"):
        cuda.rnn_forward(h, "tanh", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"nonlinearity 'sigmoid'"):
        cuda.rnn_backward(h, h, "sigmoid", h.copy())
    assert emulated() == []


def test_arrays_a_kernel_cannot_take_go_to_fused(emulated):
    """A strided gate block or mixed dtypes: no launch, the fused path's result."""
    rng = np.random.default_rng(9)
    B, H = 3, 4
    wide = _rand(rng, (B, 8 * H), np.float32)
    A = wide[:, ::2]  # (B, 4H), not C-contiguous
    A_ref = np.ascontiguousarray(A)
    c_prev = _rand(rng, (B, H), np.float32)
    got = [np.empty((B, H), np.float32) for _ in range(3)]
    want = [np.empty((B, H), np.float32) for _ in range(3)]
    cuda.lstm_forward(A, c_prev, *got)
    fused.lstm_forward(A_ref, c_prev, *want)
    for g, w in zip([A] + got, [A_ref] + want):
        np.testing.assert_array_equal(g, w)
    h16 = np.zeros((B, H), np.float16)
    out = np.empty_like(h16)
    cuda.rnn_forward(h16, "tanh", out)  # float16: no kernel is built for it
    assert emulated() == []


def test_kernels_that_do_not_build_leave_the_fused_path_and_say_so(monkeypatch):
    """An NVRTC or driver failure is not the user's end: one RuntimeWarning, the failure in
    cuda.failures(), and the CuPy-array path (fused) computes the same from then on."""
    monkeypatch.setattr(cuda, "_failures", {})  # this test's own record, dropped after it

    def broken(name, dtype):
        raise RuntimeError("NVRTC_ERROR_COMPILATION (test)")

    monkeypatch.setattr(cuda, "_kernel", broken)
    rng = np.random.default_rng(2)
    A, c_prev = _rand(rng, (3, 20), np.float32), _rand(rng, (3, 5), np.float32)
    A_ref = A.copy()
    got = [np.empty((3, 5), np.float32) for _ in range(3)]
    want = [np.empty((3, 5), np.float32) for _ in range(3)]
    with pytest.warns(RuntimeWarning, match=r"\(cells, float32\) failed here \(RuntimeError: NVRTC_ERROR"):
        cuda.lstm_forward(A, c_prev, *got)
    fused.lstm_forward(A_ref, c_prev, *want)
    for g, w in zip([A] + got, [A_ref] + want):
        np.testing.assert_array_equal(g, w)
    cuda.rnn_forward(got[0], "tanh", got[1])  # said once: no second warning (pytest would fail on an error)
    assert cuda.failures() == {("cells", "float32"): "RuntimeError: NVRTC_ERROR_COMPILATION (test)"}


def test_pointwise_for_picks_cuda_only_off_numpy():
    class FakeCupy:  # any array module that is not NumPy stands for CuPy here
        pass

    assert kernels.pointwise_for(np) is kernels.active()
    assert kernels.pointwise_for(FakeCupy) is cuda
    with kernels.using("reference"):
        assert kernels.pointwise_for(FakeCupy) is pointwise
        assert kernels.pointwise_for(np) is pointwise


# -------------------------------------------------------- whole layers, forward + BPTT
def _layer_case(mode, nonlinearity, bidirectional, masked, seed):
    cls = {"lstm": rnnkit.layers.LSTM, "gru": rnnkit.layers.GRU, "rnn": rnnkit.layers.RNN}[mode]
    kw = {"nonlinearity": nonlinearity} if mode == "rnn" else {}
    layer = cls(5, 6, num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    B, T = 3, 7
    x = rng.standard_normal((B, T, 5))
    lengths = np.array([7, 4, 2]) if masked else None
    dy = rng.standard_normal((B, T, 6 * (2 if bidirectional else 1)))
    return layer, x, lengths, dy


def _run_layer(layer, x, lengths, dy):
    layer.zero_grad()
    y, state = layer.forward(x, lengths=lengths)
    dstate = (state[0] * 0.5, state[1] * 0.25) if isinstance(state, tuple) else state * 0.5
    dx = layer.backward(dy, dstate)
    return y, dx, {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("mode,nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_whole_layer_through_the_kernels_matches_the_numpy_loop(emulated, monkeypatch, mode, nonlinearity,
                                                                bidirectional, masked):
    """The time loop with its pointwise math from ``kernels.cuda`` (as on CuPy arrays),
    stacked, reversed directions, padded steps: outputs, input gradients and every weight
    gradient equal the NumPy loop's."""
    layer, x, lengths, dy = _layer_case(mode, nonlinearity, bidirectional, masked, seed=21)
    with kernels.using("fused"):
        want = _run_layer(layer, x, lengths, dy)
        monkeypatch.setattr(kernels, "pointwise_for", lambda xp: cuda)
        got = _run_layer(layer, x, lengths, dy)
    _close(got[0], want[0], np.float64)
    _close(got[1], want[1], np.float64)
    for name in want[2]:
        _close(got[2][name], want[2][name], np.float64)
    launched = {name for name, _, _ in emulated()}
    assert launched == {f"rk_{mode}_forward", f"rk_{mode}_backward"}


# ------------------------------------------------------------------------ nvcc
def _nvcc_ptx(tmp_path, real):
    out = tmp_path / f"cells_{real}.ptx"
    subprocess.run(["nvcc", "-arch=compute_90", "--ptx", "-std=c++14", f"-DREAL={real}", "-x", "cu",
                    str(cuda.SOURCE_PATH), "-o", str(out)], check=True, capture_output=True, text=True)
    return out.read_text()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on the PATH")
@pytest.mark.parametrize("real", ["float", "double"])
def test_nvcc_compiles_every_kernel(tmp_path, real):
    ptx = _nvcc_ptx(tmp_path, real)
    bodies = dict(re.findall(r"\.entry\s+(\w+)\((.*?)\n}", ptx, re.S))
    assert set(bodies) == set(SIGNATURES)
    if real == "float":  # single precision throughout, but for the norm's float64 sums
        assert [name for name, body in bodies.items() if ".f64" in body] == ["rk_sumsq"]


def test_emulator_signatures_match_the_source():
    """The emulator's argument kinds are read off the .cu text, so the two cannot drift."""
    kinds = {"REAL*": "p", "unsignedint*": "u", "longlong*": "q", "unsignedchar*": "b", "double*": "d",
             "rk_index": "l", "int": "i", "REAL": "r"}
    found = {name: "".join(kinds[re.sub(r"\bconst\s+", "", ctype).replace(" ", "")] for ctype, _ in params)
             for name, params in kernel_params(cuda.source()).items()}
    assert found == SIGNATURES
