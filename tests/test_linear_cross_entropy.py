"""``linear_cross_entropy``: the output layer and its loss fused, block by block of rows.

Its contract is "the same as ``SoftmaxCrossEntropy(Linear(x))`` and their backward": checked
against that composition (every block size, masks, ``ignore_index``, ``dloss``, both kernel
paths), against central differences in float64, and against PyTorch in
``test_torch_parity.py`` (stored fixtures ``linear_cross_entropy_*``, and live).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import rnnkit
from rnnkit import kernels
from rnnkit.layers import Layer, Linear, SoftmaxCrossEntropy, linear_cross_entropy
from rnnkit.layers.losses import CHUNK_BYTES
from rnnkit.models import LanguageModel, LanguageModelConfig

KERNELS = ["fused"] + (["native"] if kernels.native.available() else [])


def _unfused(linear, x, targets, mask=None, ignore_index=None, dloss=1.0):
    ce = SoftmaxCrossEntropy(ignore_index=ignore_index)
    loss = ce.forward(linear.forward(x), targets, mask)
    return loss, ce.count, linear.backward(ce.backward(dloss))


def _case(seed, B, T, H, V, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((B, T, H)) * 2).astype(dtype)
    targets = rng.integers(0, V, size=(B, T))
    return Linear(H, V, dtype=dtype, seed=seed), x, targets, rng


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,T,H,V", [(3, 5, 8, 11), (4, 7, 16, 3001), (20, 35, 24, 2000)])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_the_unfused_layers_for_every_block_size(kernel, dtype, B, T, H, V, masked):
    linear, x, targets, rng = _case(1, B, T, H, V, dtype)
    mask = rng.random((B, T)) > 0.3 if masked else None
    with kernels.using(kernel):
        want_loss, want_count, want_dx = _unfused(linear, x, targets, mask, dloss=0.7)
        want = {k: g.copy() for k, g in linear.grads.items()}
        row = V * np.dtype(dtype).itemsize
        for chunk_bytes in (1, 2 * row, 7 * row, CHUNK_BYTES, 1 << 40):  # 1 row .. all rows a block
            linear.zero_grad()
            got = linear_cross_entropy(linear, x, targets, mask, dloss=0.7, chunk_bytes=chunk_bytes)
            tol = 1e-5 if dtype == np.float32 else 1e-12
            assert got.count == want_count
            assert got.loss == pytest.approx(want_loss, rel=tol)
            np.testing.assert_allclose(got.dx, want_dx, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=tol)
            for name, g in want.items():
                np.testing.assert_allclose(linear.grads[name], g, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                           atol=tol, err_msg=f"{name} with blocks of {chunk_bytes} bytes")


def test_ignore_index_extreme_logits_and_no_counted_position():
    linear, x, targets, _ = _case(2, 3, 4, 5, 7, np.float64)
    x *= 300  # exp would overflow without the max subtracted
    targets[0] = 3
    want_loss, _, want_dx = _unfused(linear, x, targets, ignore_index=3)
    want_grad = linear.grads["weight"].copy()
    linear.zero_grad()
    got = linear_cross_entropy(linear, x, targets, ignore_index=3, chunk_bytes=1)
    assert np.isfinite(got.loss) and got.loss == pytest.approx(want_loss, rel=1e-12)
    assert got.count == int((targets != 3).sum())
    np.testing.assert_allclose(got.dx, want_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(linear.grads["weight"], want_grad, rtol=1e-10, atol=1e-12)
    assert not got.dx[0].any()  # ignored positions get no gradient
    linear.zero_grad()
    none = linear_cross_entropy(linear, x, np.full_like(targets, 3), ignore_index=3)
    assert none.loss == 0.0 and none.count == 0 and not none.dx.any() and not linear.grads["weight"].any()


def test_gradients_accumulate_and_grad_false_leaves_them_alone():
    linear, x, targets, _ = _case(3, 2, 3, 4, 6, np.float64)
    first = linear_cross_entropy(linear, x, targets)
    once = linear.grads["weight"].copy()
    assert once.any()
    linear_cross_entropy(linear, x, targets)
    np.testing.assert_allclose(linear.grads["weight"], 2 * once, rtol=1e-12)
    evaluated = linear_cross_entropy(linear, x, targets, grad=False, chunk_bytes=1)
    assert evaluated.dx is None and evaluated.loss == pytest.approx(first.loss, rel=1e-12)
    np.testing.assert_allclose(linear.grads["weight"], 2 * once, rtol=1e-12)


class _Fused(Layer):
    """The fused function as a forward/backward pair, for the finite-difference check."""

    def __init__(self, linear, chunk_bytes):
        super().__init__()
        self.linear, self.chunk_bytes = linear, chunk_bytes

    def forward(self, x, targets, mask=None):
        self._args = (x, targets, mask)
        return linear_cross_entropy(self.linear, x, targets, mask, grad=False, chunk_bytes=self.chunk_bytes).loss

    def backward(self, dloss=1.0):
        x, targets, mask = self._args
        return linear_cross_entropy(self.linear, x, targets, mask, dloss=dloss, chunk_bytes=self.chunk_bytes).dx


@pytest.mark.parametrize("masked", [False, True])
def test_finite_differences(masked):
    linear, x, targets, rng = _case(4, 3, 5, 4, 6, np.float64)
    kwargs = {"mask": rng.random((3, 5)) > 0.3} if masked else {}
    report = rnnkit.gradcheck(_Fused(linear, chunk_bytes=2 * 6 * 8), (x, targets), forward_kwargs=kwargs)
    assert report.passed(1e-6), str(report)


def test_bad_input_names_the_value():
    linear, x, targets, _ = _case(5, 2, 3, 4, 6, np.float32)
    with pytest.raises(TypeError, match="expected an rnnkit Linear"):
        linear_cross_entropy(SoftmaxCrossEntropy(), x, targets)
    with pytest.raises(ValueError, match="chunk_bytes 0"):
        linear_cross_entropy(linear, x, targets, chunk_bytes=0)
    with pytest.raises(ValueError, match="last dimension 3"):
        linear_cross_entropy(linear, x[..., :3], targets)
    with pytest.raises(ValueError, match=r"targets have shape \(2, 2\); expected \(2, 3\)"):
        linear_cross_entropy(linear, x, targets[:, :2])
    bad = targets.copy()
    bad[1, 2] = 6
    with pytest.raises(ValueError, match=r"target id 6; expected ids in \[0, 5\]"):
        linear_cross_entropy(linear, x, bad)
    with pytest.raises(ValueError, match="dtype float64"):
        linear_cross_entropy(linear, x.astype(np.float64), targets)
    assert not linear.grads["weight"].any()  # nothing was accumulated by the refused calls


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_language_model_loss_and_backward_equals_loss_then_backward(cell, tie):
    config = LanguageModelConfig(vocab_size=29, cell=cell, embedding_size=12, hidden_size=12, num_layers=2,
                                 dropout=0.2, output_dropout=0.3, tie_weights=tie)
    model = LanguageModel(config, seed=3, dtype=np.float64)
    model.train()
    twin = copy.deepcopy(model)  # same weights and the same dropout streams
    rng = np.random.default_rng(0)
    for _ in range(2):  # the second chunk starts from the carried state
        ids, targets = rng.integers(0, 29, size=(4, 6)), rng.integers(0, 29, size=(4, 6))
        model.zero_grad()
        twin.zero_grad()
        want = model.loss(ids, targets)
        model.backward()
        got = twin.loss_and_backward(ids, targets)
        assert got == pytest.approx(want, rel=1e-12)
        assert twin.last_logits is None
        for (name, _, g_want), (_, _, g_got) in zip(model.named_parameters(), twin.named_parameters()):
            np.testing.assert_allclose(g_got, g_want, rtol=1e-9, atol=1e-13, err_msg=name)


def test_language_model_predict_loss_equals_the_loss_of_predict():
    config = LanguageModelConfig(vocab_size=31, cell="lstm", embedding_size=8, hidden_size=10, dropout=0.5)
    model = LanguageModel(config, seed=4, dtype=np.float64)
    model.train()
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 31, size=(3, 7)), rng.integers(0, 31, size=(3, 7))
    model.loss(ids, targets)  # leaves a training carry that neither call may use or change
    carried = model.carried_state()["h"].copy()
    logits, state = model.predict(ids)
    want = SoftmaxCrossEntropy().forward(logits, targets)
    loss, count, state2 = model.predict_loss(ids, targets)
    assert loss == pytest.approx(want, rel=1e-12) and count == targets.size
    np.testing.assert_array_equal(state2[0], state[0])
    np.testing.assert_array_equal(model.carried_state()["h"], carried)
    assert model.training


@pytest.mark.parametrize("vocab", [9, 29], ids=["lookup", "plain"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_language_model_loss_and_backward_time_major_equals_loss_then_backward(cell, vocab):
    """Without embedding or output dropout, loss_and_backward runs the stack time-major (no
    transposes); a mask and the recurrent dropout between layers included."""
    config = LanguageModelConfig(vocab_size=vocab, cell=cell, embedding_size=12, hidden_size=10, num_layers=2,
                                 dropout=0.3, embedding_dropout=0.0, output_dropout=0.0)
    model = LanguageModel(config, seed=5, dtype=np.float64)
    model.train()
    twin = copy.deepcopy(model)
    rng = np.random.default_rng(2)
    for _ in range(2):
        ids, targets = rng.integers(0, vocab, size=(5, 8)), rng.integers(0, vocab, size=(5, 8))
        mask = rng.random((5, 8)) < 0.8
        model.zero_grad()
        twin.zero_grad()
        want = model.loss(ids, targets, mask)
        model.backward()
        got = twin.loss_and_backward(ids, targets, mask)
        assert got == pytest.approx(want, rel=1e-12)
        for (name, _, g_want), (_, _, g_got) in zip(model.named_parameters(), twin.named_parameters()):
            np.testing.assert_allclose(g_got, g_want, rtol=1e-9, atol=1e-13, err_msg=name)
    with pytest.raises(ValueError, match=r"targets have shape \(8, 5\); expected \(5, 8\), as ids"):
        twin.loss_and_backward(ids, targets.T.copy())
