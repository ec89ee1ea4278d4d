"""The native fused output layer + softmax cross-entropy (``native.linear_xent``).

Oracle: the same quantities in float64 NumPy, written out here from the definition
(logits ``x W^T + b``, ``-log softmax`` at the target, the gradient ``row_scale * softmax -
target_scale * onehot`` pushed through the affine map). The kernel is float32 with its own
exp polynomial and its own GEMM tiles, so the comparison is to float32 rounding. The cases
put every tail in play: H not a multiple of the vector width (1, 15, 17, 100, 130) or a
multiple (16, 64), vocabularies that end inside a 64-column panel or leave a thread
without a panel, rows that end inside a 6-row tile or a block, every block size, 1-3
threads, both instruction sets. ``linear_cross_entropy`` itself (which selects this
kernel for float32 and big vocabularies) is checked against the unfused layers in
``test_linear_cross_entropy.py``.
"""

import numpy as np
import pytest

from rnnkit import kernels
from rnnkit.kernels import native
from rnnkit.layers import Linear, linear_cross_entropy
from rnnkit.layers import losses
from native_helpers import native_settings, run_in_two_threads

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.why_unavailable()}")

ISAS = ["avx512", "avx2"] if native.isa() == "avx512" else [native.isa()]


def _reference(x, W, b, t, row_scale, target_scale):
    x, W = x.astype(np.float64), W.astype(np.float64)
    z = x @ W.T + (0.0 if b is None else b.astype(np.float64))
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(t))
    loss = np.log(s[:, 0]) + zmax[:, 0] - z[rows, t]
    g = e / s * row_scale[:, None]
    g[rows, t] -= target_scale
    return loss, g @ W, g.T @ x, g.sum(axis=0)


def _case(N, H, V, seed=0, bias=True, scale_x=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, H)) * scale_x).astype(np.float32)
    W = (rng.standard_normal((V, H)) / np.sqrt(H)).astype(np.float32)
    b = (rng.standard_normal(V) * 0.5).astype(np.float32) if bias else None
    t = rng.integers(0, V, N)
    row_scale = (rng.random(N) * (rng.random(N) > 0.2)).astype(np.float32)  # some rows not counted
    target_scale = row_scale.copy()
    return rng, x, W, b, t, row_scale, target_scale


def _run(x, W, b, t, row_scale, target_scale, rows=0, threads=None, isa=None, dW0=None, db0=None):
    with native_settings(threads, isa):
        dx = np.full_like(x, np.nan)  # written, never read
        dW = np.zeros_like(W) if dW0 is None else dW0.copy()
        db = None if b is None else (np.zeros_like(b) if db0 is None else db0.copy())
        loss = native.linear_xent(x, W, b, t, row_scale, target_scale, dx, dW, db, rows=rows)
        return loss, dx, dW, db


def _assert_close(got, want, name):
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * scale, err_msg=name)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("N,H,V", [
    (1, 1, 1), (5, 15, 63), (7, 16, 64), (13, 17, 65), (97, 100, 1031), (200, 130, 3001), (6, 64, 200),
])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_float64_for_every_tail(isa, N, H, V, threads):
    _, x, W, b, t, rs, ts = _case(N, H, V, seed=N + H)
    want = _reference(x, W, b, t, rs, ts)
    got = _run(x, W, b, t, rs, ts, threads=threads, isa=isa)
    for name, g, w in zip(("loss", "dx", "dW", "db"), got, want):
        _assert_close(g, w, f"{name}, N {N} H {H} V {V}, {threads} threads, {isa}")


@pytest.mark.parametrize("rows", [16, 32, 48, 128, 1024, 7])
def test_every_block_size_gives_the_same_result(rows):
    _, x, W, b, t, rs, ts = _case(101, 37, 1500, seed=4)
    want = _run(x, W, b, t, rs, ts)
    got = _run(x, W, b, t, rs, ts, rows=rows)  # 7 is rounded up to 16
    for name, g, w in zip(("loss", "dx", "dW", "db"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7 * max(1.0, float(np.abs(w).max())), err_msg=name)


def test_a_weight_over_8_mib_is_taken_in_blocks_of_256_rows():
    # dW is read and written once a block: the kernel chooses 256 rows (not 128) for a big W
    _, x, W, b, t, rs, ts = _case(600, 300, 7100, seed=6)  # W 8.1 MiB
    want = _reference(x, W, b, t, rs, ts)
    got = _run(x, W, b, t, rs, ts, threads=2)
    for name, g, w in zip(("loss", "dx", "dW", "db"), got, want):
        _assert_close(g, w, f"{name}, default block")
    # the bias gradient sums each block's tokens first, so its last bits tell the block size
    assert got[3].tobytes() == _run(x, W, b, t, rs, ts, rows=256, threads=2)[3].tobytes()
    assert got[3].tobytes() != _run(x, W, b, t, rs, ts, rows=128, threads=2)[3].tobytes()
    small = _case(600, 300, 6900, seed=6)[1:]  # W 7.9 MiB: 128 rows
    assert _run(*small, threads=2)[3].tobytes() == _run(*small, rows=128, threads=2)[3].tobytes()
    assert _run(*small, threads=2)[3].tobytes() != _run(*small, rows=256, threads=2)[3].tobytes()


def test_gradients_accumulate_into_what_is_there_and_no_bias_works():
    rng, x, W, b, t, rs, ts = _case(40, 24, 1100, seed=5)
    dW0 = rng.standard_normal(W.shape).astype(np.float32)
    db0 = rng.standard_normal(b.shape).astype(np.float32)
    _, _, want_dW, want_db = _reference(x, W, b, t, rs, ts)
    _, _, dW, db = _run(x, W, b, t, rs, ts, dW0=dW0, db0=db0)
    _assert_close(dW, dW0 + want_dW, "dW")
    _assert_close(db, db0 + want_db, "db")
    want = _reference(x, W, None, t, rs, ts)
    got = _run(x, W, None, t, rs, ts)
    assert got[3] is None
    for name, g, w in zip(("loss", "dx", "dW"), got[:3], want[:3]):
        _assert_close(g, w, f"{name} without a bias")


def test_loss_only_touches_nothing_else_and_equals_the_gradient_run():
    _, x, W, b, t, rs, ts = _case(30, 20, 1200, seed=6)
    loss = native.linear_xent(x, W, b, t)
    _assert_close(loss, _reference(x, W, b, t, rs, ts)[0], "loss")
    np.testing.assert_allclose(loss, _run(x, W, b, t, rs, ts)[0], rtol=1e-6)


def test_extreme_logits_stay_finite_and_nan_stays_in_its_row():
    _, x, W, b, t, rs, ts = _case(20, 16, 1500, seed=7, scale_x=300.0)  # exp overflows without the max
    loss, dx, dW, db = _run(x, W, b, t, rs, ts)
    assert np.isfinite(loss).all() and np.isfinite(dx).all() and np.isfinite(dW).all()
    want = _reference(x, W, b, t, rs, ts)
    np.testing.assert_allclose(loss, want[0], rtol=1e-4, atol=1e-2)
    x[3, 5] = np.nan
    loss = native.linear_xent(x, W, b, t)
    assert np.isnan(loss[3]) and np.isfinite(np.delete(loss, 3)).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("lo, hi", [(0, 1000), (1000, 2000), (0, 1100), (0, 600)])
def test_forbidden_tokens_at_minus_inf_give_finite_gradients(isa, threads, lo, hi):
    """A -inf bias (forbidden tokens) can fill one thread's whole slice of the vocabulary: its
    local max is then -inf, and the exponentials once came out NaN (-inf - -inf) into dx and dW."""
    _, x, W, b, _, rs, ts = _case(10, 8, 2000, seed=3)
    b[lo:hi] = -np.inf
    allowed = np.setdiff1d(np.arange(2000), np.arange(lo, hi))
    t = np.random.default_rng(4).choice(allowed, 10)
    loss, dx, dW, db = _run(x, W, b, t, rs, ts, threads=threads, isa=isa)
    keep = allowed
    want = _reference(x, W[keep], b[keep], np.searchsorted(keep, t), rs, ts)  # the allowed tokens alone
    for name, g in (("dx", dx), ("dW", dW), ("db", db)):
        assert np.isfinite(g).all(), name
    _assert_close(loss, want[0], "loss")
    _assert_close(dx, want[1], "dx")
    _assert_close(dW[keep], want[2], "dW")
    assert not dW[lo:hi].any() and not db[lo:hi].any()  # forbidden tokens get no gradient
    _assert_close(db[keep], want[3], "db")


def test_refuses_wrong_arrays():
    _, x, W, b, t, rs, ts = _case(4, 8, 100, seed=8)
    with pytest.raises(ValueError, match="float32"):
        native.linear_xent(x.astype(np.float64), W, b, t)
    with pytest.raises(ValueError, match="expected"):
        native.linear_xent(x, W[:, :7].copy(), b, t)
    with pytest.raises(ValueError, match="expected"):
        native.linear_xent(x, W, b, t, rs, ts, np.empty((4, 9), np.float32), np.zeros_like(W), np.zeros_like(b))


def test_linear_cross_entropy_takes_the_kernel_where_it_should():
    """float32, vocabulary >= NATIVE_MIN_VOCAB, within the hidden size and row bounds:
    the kernel; otherwise the row blocks through the BLAS. Both give the unfused layers' figures
    (``test_linear_cross_entropy.py``); here: which one runs."""
    calls = []
    real = native.linear_xent

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    rng = np.random.default_rng(9)
    many = losses.NATIVE_MAX_ROWS + 1
    cases = [((2000, 32, 15), np.float32, True), ((500, 32, 15), np.float32, False),
             ((2000, 32, 15), np.float64, False), ((1024, losses.NATIVE_MAX_HIDDEN + 1, 15), np.float32, False),
             ((1024, 650, 15), np.float32, True), ((1024, losses.NATIVE_ANY_ROWS_HIDDEN, many), np.float32, True),
             ((1024, losses.NATIVE_ANY_ROWS_HIDDEN + 1, many), np.float32, False),
             # many rows above NATIVE_ANY_ROWS_HIDDEN: where W is over NATIVE_BIG_W_BYTES, up to NATIVE_BIG_W_HIDDEN
             ((losses.NATIVE_BIG_W_BYTES // (4 * 300) + 1, 300, many), np.float32, True),
             ((losses.NATIVE_BIG_W_BYTES // (4 * 300), 300, many), np.float32, False),
             ((3000, losses.NATIVE_BIG_W_HIDDEN + 1, many), np.float32, False)]
    try:
        native.linear_xent = spy
        for (V, H, N), dtype, expected in cases:
            linear = Linear(H, V, dtype=dtype, seed=1)
            x = rng.standard_normal((N, H)).astype(dtype)
            calls.clear()
            with kernels.using("native"):
                linear_cross_entropy(linear, x, rng.integers(0, V, N))
            assert bool(calls) == expected, (V, H, N, dtype)
    finally:
        native.linear_xent = real


@pytest.mark.parametrize("tie", [False, True])
def test_language_model_step_matches_the_numpy_kernels(tie):
    """The LM's fused loss and backward on the native kernel (a float32 vocabulary of 1100,
    tied or not) against the same model on the NumPy kernels."""
    import copy

    from rnnkit.models import LanguageModel, LanguageModelConfig

    config = LanguageModelConfig(vocab_size=1100, cell="lstm", embedding_size=24, hidden_size=24, num_layers=1,
                                 tie_weights=tie)
    model = LanguageModel(config, seed=3, dtype=np.float32)
    twin = copy.deepcopy(model)
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 1100, size=(5, 9)), rng.integers(0, 1100, size=(5, 9))
    with kernels.using("fused"):
        want = model.loss_and_backward(ids, targets)
    calls = []
    real = native.linear_xent
    try:
        native.linear_xent = lambda *a, **k: calls.append(1) or real(*a, **k)
        with kernels.using("native"):
            got = twin.loss_and_backward(ids, targets)
    finally:
        native.linear_xent = real
    assert calls, "the native kernel was not used"
    assert got == pytest.approx(want, rel=1e-5)
    for (name, _, g_want), (_, _, g_got) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(g_got, g_want, rtol=1e-3, atol=1e-6 * float(np.abs(g_want).max()), err_msg=name)


def test_two_python_threads_at_once_are_both_right():
    """The pool serves one caller; a concurrent second one runs alone, with its own scratch."""
    _, x, W, b, t, rs, ts = _case(300, 100, 4000, seed=10)
    want = _reference(x, W, b, t, rs, ts)
    for got in run_in_two_threads(lambda: _run(x, W, b, t, rs, ts), repeats=4):
        for name, g, w in zip(("loss", "dx", "dW", "db"), got, want):
            _assert_close(g, w, name)
