"""``forward_embedded``: an embedding straight into a recurrent stack, its small vocabulary's
lookup taken through the first layer's W_ih as ``(E W_ih^T)[ids]`` (``unroll.Lookup``).

It must be exactly the composition ``rnn.forward(embedding.forward(ids))`` followed by
``embedding.backward(rnn.backward(dy))``, in outputs, states and every gradient.
"""
from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import kernels
from rnnkit.layers import GRU, LSTM, RNN, Embedding, Layer
from rnnkit.layers.unroll import Lookup
from rnnkit.models import LanguageModel, LanguageModelConfig

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def build(cell, V, D, H, dtype, bidirectional=False, num_layers=2, padding_idx=None):
    rng = np.random.default_rng(1)
    emb = Embedding(V, D, rng=rng, dtype=dtype, padding_idx=padding_idx)
    rnn = CELLS[cell](D, H, num_layers=num_layers, bidirectional=bidirectional, rng=rng, dtype=dtype)
    return emb, rnn


def run_both(cell, V, D, H, B, T, dtype, *, bidirectional=False, padding_idx=None, lengths=None, lookup=True):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (B, T))
    dirs = 2 if bidirectional else 1
    dy = rng.standard_normal((B, T, dirs * H)).astype(dtype)
    dh = rng.standard_normal((2 * dirs, B, H)).astype(dtype)
    e1, r1 = build(cell, V, D, H, dtype, bidirectional, padding_idx=padding_idx)
    e2, r2 = build(cell, V, D, H, dtype, bidirectional, padding_idx=padding_idx)
    y1, s1 = r1.forward(e1.forward(ids), lengths=lengths)
    ds = (dh, dh[::-1].copy()) if cell == "lstm" else dh
    e1.backward(r1.backward(dy, ds))
    y2, s2 = r2.forward_embedded(e2, ids, lengths=lengths)
    assert isinstance(r2._cache[0][0][0].X, Lookup) == lookup  # which path ran
    assert r2.backward(dy, ds) is None
    return (y1, s1, e1, r1), (y2, s2, e2, r2)


def assert_same(a, b, rtol, atol):
    (y1, s1, e1, r1), (y2, s2, e2, r2) = a, b
    np.testing.assert_allclose(y2, y1, rtol=rtol, atol=atol)
    for x1, x2 in zip(s1 if isinstance(s1, tuple) else (s1,), s2 if isinstance(s2, tuple) else (s2,)):
        np.testing.assert_allclose(x2, x1, rtol=rtol, atol=atol)
    np.testing.assert_allclose(e2.grads["weight"], e1.grads["weight"], rtol=rtol, atol=atol)
    for name in r1.grads:
        np.testing.assert_allclose(r2.grads[name], r1.grads[name], rtol=rtol, atol=atol, err_msg=name)
    d1 = r1.dstate0 if isinstance(r1.dstate0, tuple) else (r1.dstate0,)
    d2 = r2.dstate0 if isinstance(r2.dstate0, tuple) else (r2.dstate0,)
    for x1, x2 in zip(d1, d2):
        np.testing.assert_allclose(x2, x1, rtol=rtol, atol=atol)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_lookup_is_the_composition_float64(cell, bidirectional):
    a, b = run_both(cell, V=12, D=8, H=6, B=4, T=7, dtype=np.float64, bidirectional=bidirectional)
    assert_same(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_padding_row_and_lengths(cell):
    a, b = run_both(cell, V=12, D=8, H=6, B=4, T=7, dtype=np.float64, padding_idx=3,
                    lengths=np.array([7, 3, 5, 1]))
    assert_same(a, b, rtol=1e-12, atol=1e-13)
    assert not b[2].grads["weight"][3].any()  # the padding row receives no gradient


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_big_vocabulary_takes_the_plain_composition(cell):
    a, b = run_both(cell, V=500, D=8, H=6, B=4, T=7, dtype=np.float64, lookup=False)
    assert_same(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_float32_on_both_kernel_sets(cell, native):
    if native and not kernels.native.available():
        pytest.skip("native kernels not built")
    with kernels.using("native" if native else "fused"):
        a, b = run_both(cell, V=20, D=16, H=24, B=8, T=12, dtype=np.float32)
    assert_same(a, b, rtol=2e-4, atol=2e-5)


class EmbeddedStack(Layer):
    """An embedding and a recurrent stack joined by ``forward_embedded``, for ``rnnkit.gradcheck``."""

    def __init__(self, emb, rnn):
        super().__init__()
        self.emb, self.rnn = emb, rnn

    def forward(self, ids, lengths=None):
        return self.rnn.forward_embedded(self.emb, ids, lengths=lengths)

    def backward(self, dy, dstate):
        return self.rnn.backward(dy, dstate)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradcheck_of_the_lookup_path(cell, bidirectional):
    V, D, H, B, T = 7, 4, 3, 3, 5  # 2V <= T*B and V <= 2D: the lookup
    emb, rnn = build(cell, V, D, H, np.float64, bidirectional)  # (a padding row gets no gradient by design)
    ids = np.random.default_rng(2).integers(0, V, (B, T))
    stack = EmbeddedStack(emb, rnn)
    stack.forward(ids)
    assert isinstance(rnn._cache[0][0][0].X, Lookup)
    report = rnnkit.gradcheck(stack, (ids,), forward_kwargs={"lengths": np.array([5, 2, 4])})
    assert "emb.weight" in report.errors and "rnn.weight_ih_l0" in report.errors
    assert report.passed(1e-6), str(report)


def test_bad_inputs_are_named():
    emb, rnn = build("gru", 12, 8, 6, np.float64)
    with pytest.raises(ValueError, match=r"ids have shape \(5,\)"):
        rnn.forward_embedded(emb, np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="contains id 12"):
        rnn.forward_embedded(emb, np.full((4, 7), 12))
    with pytest.raises(ValueError, match="embedding_dim 9"):
        rnn.forward_embedded(Embedding(12, 9, dtype=np.float64), np.zeros((4, 7), dtype=np.int64))
    with pytest.raises(ValueError, match="float64"):  # the fallback names the dtype mismatch
        rnn.forward_embedded(Embedding(12, 8, dtype=np.float32), np.zeros((4, 7), dtype=np.int64))


def test_a_plain_forward_after_forward_embedded_returns_dx_again():
    emb, rnn = build("rnn", 500, 8, 6, np.float64)  # the plain composition path
    ids = np.random.default_rng(0).integers(0, 500, (4, 7))
    rnn.forward_embedded(emb, ids)
    rnn.forward(emb.forward(ids))  # a plain forward: its backward returns dx, touches no embedding
    before = emb.grads["weight"].copy()
    dx = rnn.backward(np.ones((4, 7, 6)))
    assert dx.shape == (4, 7, 8)
    np.testing.assert_array_equal(emb.grads["weight"], before)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_language_model_gradients_match_the_composition(dropout):
    config = LanguageModelConfig(vocab_size=16, embedding_size=12, hidden_size=10, cell="lstm",
                                 embedding_dropout=dropout)
    rng = np.random.default_rng(4)
    ids, targets = rng.integers(0, 16, (6, 9)), rng.integers(0, 16, (6, 9))
    model = LanguageModel(config, seed=0, dtype=np.float64)
    loss = model.loss_and_backward(ids, targets)
    assert model._embedded == (dropout == 0.0)
    ref = LanguageModel(config, seed=0, dtype=np.float64)  # the same weights, by hand
    if dropout:
        return  # embedding dropout keeps the plain composition (its draws are tested with the model)
    y, _ = ref.rnn.forward(ref.encoder.forward(ids))
    logits = ref.decoder.forward(y)
    ref_loss = ref.criterion.forward(logits, targets)
    ref.encoder.backward(ref.rnn.backward(ref.decoder.backward(ref.criterion.backward())))
    assert abs(loss - ref_loss) < 1e-12
    for (name, _, g), (_, _, g_ref) in zip(model.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12, err_msg=name)
    # evaluation takes the lookup too and leaves the training carry alone
    logits_eval, _ = model.predict(ids)
    ref_logits, _ = ref.predict(ids)
    np.testing.assert_allclose(logits_eval, ref_logits, rtol=1e-12, atol=1e-12)
