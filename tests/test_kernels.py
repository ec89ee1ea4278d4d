"""Fast paths against their plain references.

- ``kernels.fused`` against ``kernels.pointwise`` (the readable reference): bit-identical
  in float64 and float32, on ordinary and saturated pre-activations;
- whole layers run with ``kernels.use("fused")`` against ``kernels.use("reference")``,
  with masks and both directions;
- the fused softmax cross-entropy, Linear over (B, T, in) and the chunked float64 norm of
  ``clip_grad_norm`` against the textbook formulas written out here.
"""
import numpy as np
import pytest

from rnnkit import GRU, LSTM, RNN, Linear, SoftmaxCrossEntropy, kernels, optim
from rnnkit.kernels import fused, pointwise
from rnnkit.layers import Layer
from script_helpers import load_script

DTYPES = [np.float64, np.float32]


def _preacts(rng, shape, dtype, saturated):
    a = rng.standard_normal(shape) * (40.0 if saturated else 1.5)
    if saturated:  # some entries far in both tails, where sigma and tanh round to 0 or +-1
        a.flat[:: 7] = 1e4
        a.flat[3:: 11] = -1e4
    return a.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("saturated", [False, True])
@pytest.mark.parametrize("B,H", [(3, 5), (1, 16), (8, 33)])
def test_lstm_kernels_match_reference(dtype, saturated, B, H):
    rng = np.random.default_rng(B * 100 + H)
    A = _preacts(rng, (B, 4 * H), dtype, saturated)
    c_prev = rng.standard_normal((B, H)).astype(dtype)
    outs = {}
    for name, K in (("ref", pointwise), ("fast", fused)):
        gates, c, tc, h = A.copy(), np.empty_like(c_prev), np.empty_like(c_prev), np.empty_like(c_prev)
        K.lstm_forward(gates, c_prev, c, tc, h)
        outs[name] = (gates, c, tc, h)
    for ref, fast in zip(outs["ref"], outs["fast"]):
        np.testing.assert_array_equal(fast, ref)  # same operations, same roundings
    gates, _, tc, _ = outs["ref"]
    dh = rng.standard_normal((B, H)).astype(dtype)
    for dc in (None, rng.standard_normal((B, H)).astype(dtype)):
        res = {}
        for name, K in (("ref", pointwise), ("fast", fused)):
            dA, dcp = np.empty_like(A), np.empty_like(c_prev)
            K.lstm_backward(gates, c_prev, tc, dh, dc, dA, dcp, np.empty((2,) + A.shape, dtype=dtype))
            res[name] = (dA, dcp)
        np.testing.assert_array_equal(res["fast"][0], res["ref"][0])
        np.testing.assert_array_equal(res["fast"][1], res["ref"][1])
    assert np.isfinite(outs["fast"][0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_helpers_are_sigmoid_and_tanh(dtype):
    rng = np.random.default_rng(0)
    H = 6
    A = _preacts(rng, (4, 4 * H), dtype, saturated=True)
    Y = fused.activate(A.copy(), "ifgo")
    a64 = A.astype(np.float64)
    with np.errstate(over="ignore"):
        expected = np.concatenate([1 / (1 + np.exp(-a64[:, : 2 * H])), np.tanh(a64[:, 2 * H : 3 * H]),
                                   1 / (1 + np.exp(-a64[:, 3 * H :]))], axis=1)
    tol = 1e-14 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(Y, expected, rtol=0, atol=tol)
    D = fused.activation_grad(Y, "ifgo", np.empty_like(Y))
    sig = np.concatenate([Y[:, : 2 * H], Y[:, 3 * H :]], axis=1)
    np.testing.assert_array_equal(np.concatenate([D[:, : 2 * H], D[:, 3 * H :]], axis=1), sig * (1 - sig))
    np.testing.assert_array_equal(D[:, 2 * H : 3 * H], 1 - Y[:, 2 * H : 3 * H] ** 2)


def _run_layer(layer_class, kernel, dtype, mask, bidirectional, **kw):
    with kernels.using(kernel):
        rng = np.random.default_rng(3)
        layer = layer_class(5, 7, num_layers=2, bidirectional=bidirectional, dtype=dtype, seed=1, **kw)
        x = (rng.standard_normal((4, 9, 5)) * 3).astype(dtype)
        y, state = layer.forward(x, mask=mask)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = layer.backward(dy)
        return [y, dx] + [g.copy() for _, _, g in layer.named_parameters()]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer_class", [LSTM, GRU, RNN])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layers_fused_equal_reference(dtype, layer_class, masked, bidirectional):
    mask = None
    if masked:
        mask = np.ones((4, 9), dtype=bool)
        mask[1, 6:] = False
        mask[3, 2:] = False
    fast = _run_layer(layer_class, "fused", dtype, mask, bidirectional)
    ref = _run_layer(layer_class, "reference", dtype, mask, bidirectional)
    for a, b in zip(fast, ref):
        np.testing.assert_array_equal(a, b)


def test_use_rejects_unknown_kernels():
    before = kernels.selected()
    with pytest.raises(ValueError, match="kernels 'cuda'"):
        kernels.use("cuda")
    assert kernels.selected() == before and kernels.active() is fused


# ---------------------------------------------------------------- loss, linear, clip
def _textbook_ce(logits, targets, valid, dloss=1.0):
    z = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    t = targets.reshape(-1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    v = valid.reshape(-1)
    count = max(int(v.sum()), 1)
    zt = z[np.arange(len(t)), np.where(v, t, 0)]
    logp = zt - z.max(axis=1) - np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))
    loss = -logp[v].sum() / count
    d = p.copy()
    d[np.arange(len(t)), np.where(v, t, 0)] -= 1
    d *= (v * dloss / count)[:, None]
    return loss, d.reshape(logits.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["plain", "ignore", "mask", "saturated"])
def test_softmax_cross_entropy_matches_textbook(dtype, case):
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((3, 5, 11)) * (300.0 if case == "saturated" else 2.0)
    targets = rng.integers(0, 11, size=(3, 5))
    valid = np.ones((3, 5), dtype=bool)
    ce = SoftmaxCrossEntropy(ignore_index=4 if case == "ignore" else None)
    mask = None
    if case == "ignore":
        targets[0, :3] = 4
        valid = targets != 4
    if case == "mask":
        mask = rng.random((3, 5)) < 0.6
        valid = mask
    logits = logits.astype(dtype)
    before = logits.copy()
    loss = ce.forward(logits, targets, mask=mask)
    dlogits = ce.backward(0.5)
    with pytest.raises(RuntimeError, match="twice"):  # the gradient reused the forward's buffer
        ce.backward(0.5)
    exp_loss, exp_d = _textbook_ce(logits, targets, valid, 0.5)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    assert loss == pytest.approx(exp_loss, rel=rtol, abs=rtol)
    np.testing.assert_allclose(dlogits, exp_d, rtol=rtol, atol=1e-12 if dtype == np.float64 else 1e-7)
    np.testing.assert_array_equal(logits, before)  # logits are never modified
    assert dlogits.dtype == dtype and ce.count == int(valid.sum())
    assert np.all(dlogits[~valid] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_over_batch_and_time_is_one_affine_map(dtype):
    rng = np.random.default_rng(2)
    lin = Linear(6, 4, dtype=dtype, seed=0)
    x = rng.standard_normal((3, 5, 6)).astype(dtype)
    y = lin.forward(x)
    W, b = lin.params["weight"], lin.params["bias"]
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, np.einsum("btd,od->bto", x, W) + b, rtol=tol, atol=tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = lin.backward(dy)
    np.testing.assert_allclose(dx, np.einsum("bto,od->btd", dy, W), rtol=tol, atol=tol)
    np.testing.assert_allclose(lin.grads["weight"], np.einsum("bto,btd->od", dy, x), rtol=tol, atol=tol)
    np.testing.assert_allclose(lin.grads["bias"], dy.sum(axis=(0, 1)), rtol=tol, atol=tol)
    assert lin.forward(x[0, 0]).shape == (4,)


class _Params(Layer):
    def __init__(self, grads):
        super().__init__()
        for k, g in enumerate(grads):
            self.add_param(f"p{k}", np.zeros_like(g))
            self.grads[f"p{k}"][...] = g


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_is_the_float64_norm(dtype):
    rng = np.random.default_rng(5)
    # one tensor bigger than a chunk, one odd-sized, one scalar-like
    grads = [rng.standard_normal(size).astype(dtype) * 3 for size in ((300, 250), (7,), (1,))]
    expected = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    model = _Params(grads)
    assert optim.clip_grad_norm(model, 1e9) == pytest.approx(expected, rel=1e-13)
    assert optim.clip_grad_norm(model, 1.0) == pytest.approx(expected, rel=1e-13)
    clipped = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for _, _, g in model.named_parameters()))
    assert clipped == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------- the benchmark's yardstick
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_textbook_reference_computes_the_same_gradients(cell):
    """benchmarks/reference_dl2.py (per-step objects) agrees with rnnkit's layers in float64."""
    from pathlib import Path

    from rnnkit import Embedding

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_dl2.py"
    ref = load_script(path)
    V, D, H, L, B, T = 13, 5, 6, 2, 3, 4
    lm = ref.LanguageModel(cell, V, D, H, L, seed=1, dtype=np.float64)
    rng = np.random.default_rng(2)
    for rnn in lm.rnns:  # non-zero biases, so the bias plumbing is checked too
        rnn.params[2][...] = rng.standard_normal(rnn.params[2].shape)
    ids, targets = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
    lm.forward(ids, targets)
    lm.backward()

    emb = Embedding(V, D, dtype=np.float64)
    rnn = {"lstm": LSTM, "gru": GRU, "rnn": RNN}[cell](D, H, num_layers=L, dtype=np.float64)
    out = Linear(H, V, dtype=np.float64)
    emb.params["weight"][...] = lm.embed.params[0]
    for k, step in enumerate(lm.rnns):
        Wx, Wh, b = step.params
        rnn.params[f"weight_ih_l{k}"][...] = Wx.T
        rnn.params[f"weight_hh_l{k}"][...] = Wh.T
        G = Wx.shape[1]
        rnn.params[f"bias_ih_l{k}"][...] = b[:G]
        rnn.params[f"bias_hh_l{k}"][...] = 0
        if cell == "gru":
            rnn.params[f"bias_hh_l{k}"][2 * H :] = b[G:]
    out.params["weight"][...] = lm.affine.params[0].T
    out.params["bias"][...] = lm.affine.params[1]
    ce = SoftmaxCrossEntropy()
    y, _ = rnn.forward(emb.forward(ids))
    ce.forward(out.forward(y), targets)
    emb.backward(rnn.backward(out.backward(ce.backward())))

    np.testing.assert_allclose(emb.grads["weight"], lm.embed.grads[0], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out.grads["weight"], lm.affine.grads[0].T, rtol=1e-10, atol=1e-13)
    for k, step in enumerate(lm.rnns):
        dWx, dWh, db = step.grads
        np.testing.assert_allclose(rnn.grads[f"weight_ih_l{k}"], dWx.T, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(rnn.grads[f"weight_hh_l{k}"], dWh.T, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(rnn.grads[f"bias_ih_l{k}"], db[: dWx.shape[1]], rtol=1e-10, atol=1e-13)


def test_one_bias_language_model_trains_step_for_step_like_the_textbook_reference():
    """The DL2 recipe (one bias, SGD lr 20, global-norm clip 0.25, state carried across chunks)
    run by rnnkit's LanguageModel, SGD and clip_grad_norm follows the textbook reference's
    trajectory: the same loss (exact -log softmax in both) and gradient norm at every step."""
    from pathlib import Path

    from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
    from rnnkit.optim import SGD, clip_grad_norm

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_dl2.py"
    ref = load_script(path)
    V, D, H, B, T = 17, 6, 8, 3, 5
    lm = ref.LanguageModel("lstm", V, D, H, seed=1, dtype=np.float64)
    ours = LanguageModel(LanguageModelConfig(vocab_size=V, level="word", embedding_size=D, hidden_size=H,
                                             init="normal", bias_hh=False), seed=0, dtype=np.float64)
    Wx, Wh, b = lm.rnns[0].params
    ours.load_state_dict({"encoder.weight": lm.embed.params[0], "rnn.weight_ih_l0": Wx.T, "rnn.weight_hh_l0": Wh.T,
                          "rnn.bias_ih_l0": b, "decoder.weight": lm.affine.params[0].T,
                          "decoder.bias": lm.affine.params[1]})
    sgd, ref_sgd = SGD(ours, lr=20.0), ref.SGD(20.0)
    stream = np.random.default_rng(3).integers(0, V, size=B * T * 6 + 1)
    xs, ts = stream[:-1].reshape(B, -1), stream[1:].reshape(B, -1)
    clipped = 0
    for k in range(6):
        x, t = xs[:, k * T:(k + 1) * T], ts[:, k * T:(k + 1) * T]
        ref_loss = lm.forward(x, t)
        lm.backward()
        ref_norm = ref.clip_grads(lm.grads, 0.25)
        ref_sgd.update(lm.params, lm.grads)
        ours.zero_grad()
        loss = ours.loss(x, t)
        ours.backward()
        norm = clip_grad_norm(ours, 0.25)
        sgd.step()
        assert loss == pytest.approx(ref_loss, rel=1e-9), k
        assert norm == pytest.approx(ref_norm, rel=1e-7), k
        clipped += norm > 0.25
    assert clipped >= 3  # the clipping path was exercised, not only the plain step
    np.testing.assert_allclose(ours.state_dict()["rnn.bias_ih_l0"], lm.rnns[0].params[2], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("selected", ["native", "fused"])
def test_accumulate_matmul_adds_the_product_both_ways(selected, monkeypatch):
    """Weight gradients: one beta = 1 GEMM under the native kernels, scratch blocks of rows
    otherwise (forced here to several blocks); the same sums either way."""
    if selected == "native" and not kernels.native.available():
        pytest.skip(f"native kernels unavailable: {kernels.native.why_unavailable()}")
    monkeypatch.setattr(kernels, "_ROW_BLOCK_BYTES", 7 * 13 * 8)  # 7 rows a block
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((40, 17)), rng.standard_normal((17, 13))
    out = rng.standard_normal((40, 13))
    want = out + a @ b
    with kernels.using(selected):
        kernels.accumulate_matmul(out, a, b)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        kernels.accumulate_matmul(out, a.T.copy().T, b)  # a transposed (Fortran-order) operand
    np.testing.assert_allclose(out, want + a @ b, rtol=1e-12, atol=1e-12)
