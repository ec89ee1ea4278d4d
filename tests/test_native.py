"""The native CPU kernels (``rnnkit.kernels.native``) against the NumPy reference.

The reference (``kernels.use("reference")``) is the oracle: it is gradient-checked in
float64 and compared with PyTorch elsewhere. The native kernels are float32 with their
own tanh polynomial, so the comparison is to float32 rounding, never bit for bit; the
exceptions are the claims the native code makes about itself (the same result for any
thread count, NumPy's exact roundings in the elementwise passes), which are tested
exactly. Skipped where the kernels are not built or the CPU lacks AVX2.
"""
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from rnnkit import GRU, LSTM, RNN, SoftmaxCrossEntropy, kernels
from rnnkit.kernels import native
from native_helpers import native_settings, run_in_two_threads

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.why_unavailable()}")

CASES = [  # (B, T, D, H): H not a multiple of any vector width, B past a tile's rows, B = 1, H = 1
    (4, 9, 5, 7), (13, 6, 3, 40), (1, 5, 2, 17), (20, 12, 16, 100), (33, 4, 8, 33), (3, 4, 2, 1), (5, 3, 4, 32),
]
LAYERS = [(LSTM, {}), (GRU, {}), (RNN, {}), (RNN, {"nonlinearity": "relu"})]
ISAS = ["avx512", "avx2"] if native.isa() == "avx512" else [native.isa()]


def run_layer(kernel, cls, kw, B, T, D, H, mask=None, bidirectional=False, num_layers=2, threads=None,
              isa=None, x_scale=3.0, seed=3):
    """Forward + backward of a fresh layer; returns [y, dx, h_n (, c_n), every grad]."""
    with native_settings(threads, isa if kernel == "native" else None):
        with kernels.using(kernel):
            rng = np.random.default_rng(seed)
            layer = cls(D, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float32, seed=1, **kw)
            x = (rng.standard_normal((B, T, D)) * x_scale).astype(np.float32)
            y, state = layer.forward(x, mask=mask)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            dstate = tuple(rng.standard_normal(s.shape).astype(np.float32) for s in state) \
                if isinstance(state, tuple) else rng.standard_normal(state.shape).astype(np.float32)
            dx = layer.backward(dy, dstate)
            states = list(state) if isinstance(state, tuple) else [state]
            d0 = layer.dstate0 if isinstance(layer.dstate0, tuple) else (layer.dstate0,)
            return [y, dx] + states + list(d0) + [g.copy() for _, _, g in layer.named_parameters()]


def assert_close(got, want, rtol=2e-5):
    for i, (a, b) in enumerate(zip(got, want)):
        scale = max(float(np.abs(b).max()), 1e-3)
        err = float(np.abs(a.astype(np.float64) - b).max()) / scale
        assert err < rtol, f"output {i}: max error {err:.2e} of its largest value"


def padding_mask(B, T):
    mask = np.ones((B, T), dtype=bool)
    mask[B // 2, T // 2 :] = False
    mask[-1, 1:] = False
    return mask


@pytest.mark.parametrize("cls,kw", LAYERS, ids=["lstm", "gru", "rnn", "rnn-relu"])
@pytest.mark.parametrize("B,T,D,H", CASES)
@pytest.mark.parametrize("isa", ISAS)
def test_layers_match_the_reference(cls, kw, B, T, D, H, isa):
    assert_close(run_layer("native", cls, kw, B, T, D, H, isa=isa), run_layer("reference", cls, kw, B, T, D, H))


@pytest.mark.parametrize("cls,kw", LAYERS, ids=["lstm", "gru", "rnn", "rnn-relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_masks_and_both_directions_match_the_reference(cls, kw, bidirectional):
    B, T, D, H = 6, 10, 4, 21
    mask = padding_mask(B, T)
    got = run_layer("native", cls, kw, B, T, D, H, mask=mask, bidirectional=bidirectional)
    assert_close(got, run_layer("reference", cls, kw, B, T, D, H, mask=mask, bidirectional=bidirectional))
    y = got[0]
    assert not y[mask == False].any()  # noqa: E712 - padded steps output exactly 0


@pytest.mark.parametrize("cls,kw", LAYERS, ids=["lstm", "gru", "rnn", "rnn-relu"])
def test_saturated_inputs_match_the_reference(cls, kw):
    """Pre-activations far in both tails, where sigma and tanh round to 0 and +-1."""
    args = (cls, kw, 5, 6, 4, 19)
    assert_close(run_layer("native", *args, x_scale=300.0), run_layer("reference", *args, x_scale=300.0))


@pytest.mark.parametrize("cls,kw", LAYERS, ids=["lstm", "gru", "rnn", "rnn-relu"])
def test_the_result_does_not_depend_on_the_thread_count(cls, kw):
    """Each unit's arithmetic is the same whichever thread owns it: bit-identical results."""
    for B, T, D, H in ((9, 7, 5, 70), (4, 3, 2, 7)):  # H = 7: one chunk of units, idle threads
        args = (cls, kw, B, T, D, H)
        one = run_layer("native", *args, threads=1)
        for threads in (2, 3, 5):
            for a, b in zip(run_layer("native", *args, threads=threads), one):
                np.testing.assert_array_equal(a, b)


def test_native_and_numpy_loops_share_one_cache():
    """A native forward with the NumPy backward (and the reverse) equals either alone."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8, 6)).astype(np.float32)
    dy = rng.standard_normal((5, 8, 2 * 11)).astype(np.float32)
    results = {}
    for fwd, bwd in (("native", "native"), ("native", "reference"), ("reference", "native"), ("reference", "reference")):
        layer = LSTM(6, 11, num_layers=2, bidirectional=True, dtype=np.float32, seed=4)
        with kernels.using(fwd):
            y, _ = layer.forward(x)
        with kernels.using(bwd):
            dx = layer.backward(dy)
        results[fwd, bwd] = [y, dx] + [g.copy() for _, _, g in layer.named_parameters()]
    for key, value in results.items():
        assert_close(value, results["reference", "reference"])


def test_nan_propagates_instead_of_being_swallowed():
    """A NaN weight must reach the output (the trainer's divergence check depends on it):
    no clamp or max in the native math may turn it into a number."""
    for cls, kw in LAYERS:
        layer = cls(3, 20, dtype=np.float32, seed=0, **kw)
        layer.params["weight_ih_l0"][0, 0] = np.nan  # the first gate of unit 0
        x = np.ones((2, 4, 3), dtype=np.float32)
        with kernels.using("native"):
            y, _ = layer.forward(x)
        assert np.isnan(y[:, 0, 0]).all() and np.isnan(y[:, -1]).all(), cls.__name__


def test_two_python_threads_at_once_are_both_right():
    """The pool serves one caller; a second, concurrent one runs alone and is still right."""
    want = run_layer("reference", LSTM, {}, 8, 16, 8, 64, num_layers=1)
    results = run_in_two_threads(lambda: run_layer("native", LSTM, {}, 8, 16, 8, 64, num_layers=1), repeats=3)
    for got in results:
        assert_close(got, want)


def _forward_in_child(queue):
    os.environ["RNNKIT_NUM_THREADS"] = "2"
    y = run_layer("native", GRU, {}, 4, 6, 3, 40, num_layers=1)[0]
    queue.put(float(np.abs(y).sum()))


def test_a_forked_child_starts_its_own_pool():
    """After fork the parent's workers do not exist in the child: it must not wait for them."""
    run_layer("native", GRU, {}, 4, 6, 3, 40, num_layers=1, threads=2)  # the parent's pool has a worker
    want = float(np.abs(run_layer("native", GRU, {}, 4, 6, 3, 40, num_layers=1)[0]).sum())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forward_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in the native kernels")
    assert child.exitcode == 0 and queue.get(timeout=5) == want


# ---------------------------------------------------------------- loss and elementwise passes
def test_softmax_cross_entropy_matches_numpy():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((3, 17, 1003)) * 4).astype(np.float32)  # past kernels.NATIVE_MIN_SIZE
    assert logits.size >= kernels.NATIVE_MIN_SIZE
    logits[0, 0, :] += 80.0  # large logits: log-sum-exp must not overflow
    targets = rng.integers(0, 1003, size=(3, 17))
    targets[1, 2] = -100
    mask = np.ones((3, 17), dtype=bool)
    mask[2, 5:] = False
    out = {}
    for name in ("native", "fused"):
        with kernels.using(name):
            layer = SoftmaxCrossEntropy(ignore_index=-100)
            loss = layer.forward(logits, targets, mask=mask)
            out[name] = (loss, layer.backward(0.5))
    assert out["native"][0] == pytest.approx(out["fused"][0], rel=1e-6)
    np.testing.assert_allclose(out["native"][1], out["fused"][1], rtol=1e-5, atol=1e-9)
    assert not out["native"][1][2, 5:].any()  # masked rows get no gradient


def test_elementwise_passes_round_exactly_as_numpy():
    rng = np.random.default_rng(2)
    p = rng.standard_normal(300_001).astype(np.float32)
    g = rng.standard_normal(300_001).astype(np.float32)
    want = p.copy()
    want -= 0.37 * g
    got = p.copy()
    native.sub_scaled(got, 0.37, g)
    np.testing.assert_array_equal(got, want)
    native.scale(got, 0.61)
    want *= 0.61
    np.testing.assert_array_equal(got, want)
    y = rng.standard_normal((700, 1001)).astype(np.float32)
    b = rng.standard_normal(1001).astype(np.float32)
    want = y + b
    native.add_rows(y, b)
    np.testing.assert_array_equal(y, want)


def test_sum_of_squares_is_the_float64_sum_for_any_thread_count():
    x = np.random.default_rng(3).standard_normal(1_000_003).astype(np.float32)
    exact = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    sums = []
    for threads in ("1", "2", "5"):
        with native_settings(threads):
            sums.append(native.sum_squares(x))
    assert sums[0] == pytest.approx(exact, rel=1e-12)
    assert sums[0] == sums[1] == sums[2]


def test_elementwise_passes_refuse_wrong_arrays():
    with pytest.raises(ValueError, match="expected C-contiguous float32"):
        native.scale(np.zeros(10), 2.0)
    with pytest.raises(ValueError, match=r"x has shape \(3,\); expected \(4,\)"):
        native.sub_scaled(np.zeros(4, np.float32), 1.0, np.zeros(3, np.float32))


# ---------------------------------------------------------------- threads and switches
def test_openblas_threads_do_not_spin_after_a_gemm():
    """With the pool handed to OpenBLAS, nothing spins for long after a GEMM (OpenBLAS's own
    workers spin ~0.1 s, taking a core from whatever runs next)."""
    code = (
        "import time, numpy as np\n"
        "from threadpoolctl import threadpool_limits\n"
        "from rnnkit.kernels import native\n"
        "native.num_threads()\n"  # hands OpenBLAS the pool
        "a = np.ones((700, 100), np.float32); w = np.ones((100, 10000), np.float32)\n"
        "with threadpool_limits(2, user_api='blas'):\n"
        "    a @ w; time.sleep(0.3)\n"  # OpenBLAS starts its own workers once; they spin ~0.1 s, then sleep
        "    c = a @ w; assert float(c[0, 0]) == 100.0\n"
        "    c0 = time.process_time(); time.sleep(0.3); print(time.process_time() - c0)\n"
    )
    pytest.importorskip("threadpoolctl")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 0.03  # the pool spins 0.5 ms before it sleeps


def test_rnnkit_native_0_switches_the_kernels_off():
    code = ("from rnnkit import kernels; n = kernels.native.num_threads(); "
            "print(kernels.native.available(), kernels.selected(), n >= 1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RNNKIT_NATIVE": "0"})
    assert out.stdout.split() == ["False", "fused", "True"], out.stderr


def test_force_isa_refuses_what_the_cpu_lacks():
    with pytest.raises(ValueError, match="isa 'sse9'"):
        native.force_isa("sse9")


def test_single_steps_and_float64_keep_numpy():
    """Where the native loop would not pay (T = 1) or cannot serve (float64), NumPy runs."""
    from rnnkit.layers import unroll

    assert unroll._native_mode("lstm", "tanh", np, np.float32, 1) is None
    assert unroll._native_mode("lstm", "tanh", np, np.float64, 50) is None
    with kernels.using("native"):
        assert unroll._native_mode("gru", "tanh", np, np.float32, 2) == native.MODES["gru"]
    with kernels.using("fused"):
        assert unroll._native_mode("gru", "tanh", np, np.float32, 50) is None


def test_time_is_spent_in_the_native_loop():
    """Not a speed target, a wiring check: the native loop really runs (the NumPy loop's
    per-step matmul is never called) when the kernels are selected."""
    from rnnkit.layers import unroll

    calls = []
    real = unroll._forward_loop
    unroll._forward_loop = lambda *a: calls.append(1) or real(*a)
    try:
        with kernels.using("native"):
            LSTM(4, 8, dtype=np.float32).forward(np.ones((2, 5, 4), np.float32))
        assert calls == []
        with kernels.using("fused"):
            LSTM(4, 8, dtype=np.float32).forward(np.ones((2, 5, 4), np.float32))
        assert calls == [1]
    finally:
        unroll._forward_loop = real


@pytest.mark.parametrize("weight_decay,cls", [(0.0, "Adam"), (0.01, "Adam"), (0.01, "AdamW")])
def test_adam_step_rounds_exactly_as_numpy(weight_decay, cls):
    """Three steps of optim.Adam with the native pass and with NumPy's lines: bit-identical."""
    from rnnkit import optim
    from rnnkit.layers import Layer

    rng = np.random.default_rng(5)
    start = {"w": rng.standard_normal((300, 701)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()} for _ in range(3)]

    def train(kernel):
        model = Layer()
        for k, v in start.items():
            model.add_param(k, v.copy())
        with kernels.using(kernel):
            opt = getattr(optim, cls)(model, lr=3e-3, weight_decay=weight_decay)
            for g in grads:
                for k in model.grads:
                    model.grads[k][...] = g[k]
                opt.step()
        return model.params, opt.state_dict()["tensors"]

    (p_native, s_native), (p_numpy, s_numpy) = train("native"), train("fused")
    for k in start:
        np.testing.assert_array_equal(p_native[k], p_numpy[k])
    assert set(s_native) == set(s_numpy)
    for k in s_native:
        np.testing.assert_array_equal(s_native[k], s_numpy[k])


def test_softmax_forward_in_place_equals_out_of_place():
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((50, 997)) * 5).astype(np.float32)
    targets = rng.integers(0, 997, size=50)
    probs, sumexp, row_loss = native.softmax_forward(z, targets)
    inplace = z.copy()
    _, sumexp2, row_loss2 = native.softmax_forward(inplace, targets, out=inplace)
    np.testing.assert_array_equal(inplace, probs)  # the target logit was read before it was overwritten
    np.testing.assert_array_equal(sumexp2, sumexp)
    np.testing.assert_array_equal(row_loss2, row_loss)
    with pytest.raises(ValueError, match="out has shape"):
        native.softmax_forward(z, targets, out=np.empty((50, 996), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_accumulate_adds_the_product_for_every_layout(dtype, ta, tb):
    rng = np.random.default_rng(8)
    M, K, N = 37, 19, 53
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    a, b = (a.T if ta else a), (b.T if tb else b)
    out = rng.standard_normal((M, N)).astype(dtype)
    want = out.astype(np.float64) + 0.5 * (a.astype(np.float64) @ b.astype(np.float64))
    if native._blas_gemm(dtype) is None:
        pytest.skip("NumPy's BLAS exports no CBLAS gemm here")
    assert native.gemm_accumulate(out, a, b, alpha=0.5)
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    rows = rng.standard_normal((2 * M, K)).astype(dtype)[::2]  # every other row: a leading dimension of 2K
    before = out.copy()
    assert native.gemm_accumulate(out, rows, b)
    np.testing.assert_allclose(out, before + rows @ b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    columns = rng.standard_normal((M, 2 * K)).astype(dtype)[:, ::2]  # strided columns: no BLAS layout
    assert not native.gemm_accumulate(out, columns, b)


def test_gemm_accumulate_refuses_what_it_cannot_do_and_changes_nothing():
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 5), np.float32)
    out = np.zeros((4, 5), np.float32)
    assert not native.gemm_accumulate(out, a.astype(np.float64), b)  # mixed dtypes
    assert not native.gemm_accumulate(np.zeros((5, 4), np.float32).T, a, b)  # out not C-contiguous
    big = np.zeros((4, 5), np.float32)
    assert not native.gemm_accumulate(big, big[:, :3], b)  # out aliases an operand
    assert not out.any()
    with pytest.raises(ValueError, match=r"out \(4, 5\) \+= a \(4, 3\) @ b \(4, 5\)"):
        native.gemm_accumulate(out, a, np.ones((4, 5), np.float32))


def _kernel_case(mode, T=7, B=9, H=19, V=5, seed=0):
    """A direct call's arrays: the projected table, ids (with repeats), W_hh, states, dy."""
    rng = np.random.default_rng(seed)
    G = {2: 4, 3: 3}.get(mode, 1) * H
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    case = {"table": f32(V, G), "ids": rng.integers(0, V, size=(T, B)).astype(np.int64), "W_hh": f32(G, H) * 0.3,
            "b_x": f32(G), "b_hh": f32(G) if mode == 3 else None, "h0": f32(B, H), "c0": f32(B, H),
            "dy": f32(T, B, H), "dh": f32(B, H), "dc": f32(B, H)}
    mask = np.ones((T, B), dtype=np.uint8)
    mask[T // 2 :, 1] = 0
    mask[1:, -1] = 0
    case["mask"] = mask
    return case


def _kernel_run(mode, case, lookup):
    """Forward and backward through the kernels; the lookup fed either as table + ids or as
    the gathered rows. Returns (gates, Hs, Cs, aux, dA, dh0, dc0, dbias, S)."""
    T, B = case["ids"].shape
    H = case["W_hh"].shape[1]
    xw = np.ascontiguousarray(case["table"][case["ids"]])
    if lookup:
        xw = np.full_like(xw, np.nan)  # the kernel must not read it
    Hs = np.empty((T + 1, B, H), np.float32)
    Hs[0] = case["h0"]
    Cs = aux = None
    if mode == 2:
        Cs = np.empty((T + 1, B, H), np.float32)
        Cs[0] = case["c0"]
    if mode in (2, 3):
        aux = np.empty((T, B, H), np.float32)
    table, ids = (case["table"], case["ids"]) if lookup else (None, None)
    native.cell_forward(mode, xw, case["W_hh"], case["b_x"], case["b_hh"], Hs, Cs, aux, case["mask"], table, ids)
    gates = xw.copy()
    dh, dc = case["dh"].copy(), case["dc"].copy()
    S = np.zeros_like(case["table"]) if lookup else None
    dbias = native.cell_backward(mode, xw, case["W_hh"], Hs, Cs, None if aux is None else aux.copy(), case["dy"],
                                 dh, dc if mode == 2 else None, case["mask"], ids=case["ids"] if lookup else None,
                                 S=S)
    if not lookup:  # what the fused sum must equal: each token's dA rows summed
        S = np.zeros_like(case["table"], dtype=np.float64)
        np.add.at(S, case["ids"].reshape(-1), xw.reshape(-1, xw.shape[2]).astype(np.float64))
    return gates, Hs, Cs, aux, xw, dh, dc, dbias, S


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["rnn", "rnn-relu", "lstm", "gru"])
@pytest.mark.parametrize("isa", ISAS)
def test_a_lookup_input_equals_its_gathered_rows(mode, isa):
    """table + ids in the loop: the forward reads the same numbers (bit for bit), the
    backward's dA is unchanged and S is each token's dA rows summed."""
    case = _kernel_case(mode)
    with native_settings(2, isa):
        got = _kernel_run(mode, case, lookup=True)
        want = _kernel_run(mode, case, lookup=False)
    names = ["gates", "Hs", "Cs", "aux", "dA", "dh0", "dc0", "dbias"]
    for name, a, b in zip(names, got[:-1], want[:-1]):
        if b is None or (name == "gates" and mode in (0, 1)):  # the RNN's xw only receives the gates
            continue
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_allclose(got[-1], want[-1], rtol=1e-5, atol=1e-5 * float(np.abs(want[-1]).max()))
    assert (np.abs(got[-1]).max(axis=1) > 0).all()  # every token of the table occurred and got rows


def test_a_lookup_input_refuses_bad_ids():
    case = _kernel_case(2, T=3, B=4, H=5, V=6)
    T, B = case["ids"].shape
    xw = np.empty((T, B, 20), np.float32)
    Hs, Cs, aux = np.zeros((T + 1, B, 5), np.float32), np.zeros((T + 1, B, 5), np.float32), np.zeros((T, B, 5), np.float32)

    def forward(table, ids):
        native.cell_forward(2, xw, case["W_hh"], None, None, Hs, Cs, aux, None, table, ids)

    bad = case["ids"].copy()
    bad[1, 2] = 6
    with pytest.raises(ValueError, match=r"ids range over \[\d+, 6\]; expected \[0, 6\)"):
        forward(case["table"], bad)
    bad[1, 2] = -1
    with pytest.raises(ValueError, match=r"expected \[0, 6\)"):
        forward(case["table"], bad)
    with pytest.raises(ValueError, match="expected C-contiguous int64 of shape"):
        forward(case["table"], case["ids"].astype(np.int32))
    with pytest.raises(ValueError, match="expected C-contiguous int64 of shape"):
        forward(case["table"], np.ascontiguousarray(case["ids"].T))
    with pytest.raises(ValueError, match="table and ids go together"):
        forward(case["table"], None)
    with pytest.raises(ValueError, match=r"table has shape \(6, 19\); expected \(V, 20\)"):
        forward(np.zeros((6, 19), np.float32), case["ids"])
    with pytest.raises(ValueError, match="S and ids go together"):
        native.cell_backward(2, xw, case["W_hh"], Hs, Cs, aux, None, case["dh"][:, :5].copy(), None, None,
                             ids=case["ids"])
    assert not Hs[1:].any()  # refused before the kernel ran


@pytest.mark.parametrize("abi", [None, native.ABI - 1])
def test_a_stale_build_is_refused_with_the_reason(monkeypatch, abi):
    """A library built from older sources takes other arguments: calling it would corrupt
    memory, so the loader refuses it, names the fix, and the NumPy kernels carry on."""
    class Stale:  # stands for the CDLL of an old build: every symbol but rk_abi (or an old one)
        def __init__(self, path):
            if abi is not None:
                self.rk_abi = lambda: abi

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_load_error", None)
    monkeypatch.setattr(native.ctypes, "CDLL", Stale)
    assert not native.available()
    reason = native.why_unavailable()
    assert f"stale build (ABI {abi or 1}; this rnnkit needs {native.ABI})" in reason
    assert "build_ext --inplace" in reason
