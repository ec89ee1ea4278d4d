"""Gradients handed to backward, constructor arguments and loss inputs: checked, with errors
that name the value and what was expected (never a silent broadcast into wrong gradients)."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.layers import (GRU, LSTM, RNN, Embedding, GRUCell, Linear, LSTMCell, MSELoss, RNNCell,
                           SoftmaxCrossEntropy, linear_cross_entropy)

B, T, D, H = 3, 4, 2, 5


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


# ----------------------------------------------------------------------------- _Recurrent.backward dstate
@pytest.mark.parametrize("cls", [RNN, GRU])
@pytest.mark.parametrize("shape", [(B, H), (1, 1, H), (1, B, 1), (1, B, H + 1), (2, B, H)])
def test_recurrent_dstate_of_wrong_shape(cls, shape):
    layer = cls(D, H, seed=0)
    layer.forward(_x())
    with pytest.raises(ValueError, match=rf"dstate has shape {re_shape(shape)}; expected \(1, {B}, {H}\) "
                                         r"\(num_layers\*num_directions, batch, hidden_size\)"):
        layer.backward(None, np.ones(shape, np.float32))


def test_recurrent_dstate_shape_counts_layers_and_directions():
    layer = GRU(D, H, num_layers=2, bidirectional=True, seed=0)
    layer.forward(_x())
    with pytest.raises(ValueError, match=rf"expected \(4, {B}, {H}\)"):
        layer.backward(None, np.ones((2, B, H), np.float32))
    with pytest.raises(ValueError, match="dstate is a list; expected an array"):
        layer.backward(None, [[0.0]])
    layer.backward(None, np.ones((4, B, H), np.float32))  # the right one still works


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_dstate_must_be_a_pair(num_layers):
    layer = LSTM(D, H, num_layers=num_layers, seed=0)
    layer.forward(_x())
    L = num_layers
    with pytest.raises(ValueError, match=rf"LSTM dstate is a ndarray; expected a tuple \(dh, dc\) of arrays "
                                         rf"\({L}, {B}, {H}\)"):
        layer.backward(None, np.ones((L, B, H), np.float32))
    with pytest.raises(ValueError, match="LSTM dstate is a tuple of length 3"):
        layer.backward(None, (None, None, None))
    with pytest.raises(ValueError, match=rf"dstate dc has shape \({B}, {H}\); expected \({L}, {B}, {H}\)"):
        layer.backward(None, (None, np.ones((B, H), np.float32)))
    with pytest.raises(ValueError, match=rf"dstate dh has shape \({L}, 1, {H}\)"):
        layer.backward(None, (np.ones((L, 1, H), np.float32), None))
    # either half may be None, as the docstring allows; a failed check leaves the cache for a retry
    layer.backward(None, (np.ones((L, B, H), np.float32), None))
    assert layer.dstate0[0].shape == (L, B, H)


def test_lstm_dstate_halves_may_be_none():
    layer = LSTM(D, H, seed=0)
    layer.forward(_x())
    layer.backward(None, (None, np.ones((1, B, H), np.float32)))
    layer.forward(_x())
    layer.backward(None, (None, None))


def test_recurrent_dstate_right_shape_gives_the_same_gradient():
    """One layer, one direction: h_n is y's last step, so a gradient given as dstate must act
    exactly like the same gradient given on y's last step."""
    x, dh = _x(), np.random.default_rng(1).standard_normal((1, B, H)).astype(np.float32)
    layer, same = GRU(D, H, seed=0), GRU(D, H, seed=0)
    layer.forward(x)
    dx = layer.backward(None, dh)
    y, _ = same.forward(x)
    dy = np.zeros_like(y)
    dy[:, -1] = dh[0]
    np.testing.assert_allclose(dx, same.backward(dy), rtol=1e-5, atol=1e-7)
    for name, g in layer.grads.items():
        np.testing.assert_allclose(g, same.grads[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.abs(dx).sum() > 0


def test_recurrent_dy_of_wrong_shape():
    layer = GRU(D, H, seed=0)
    layer.forward(_x())
    with pytest.raises(ValueError, match=rf"dy has shape \({B}, {T}, 1\); expected \({B}, {T}, {H}\)"):
        layer.backward(np.ones((B, T, 1), np.float32))
    with pytest.raises(ValueError, match="dy is a list; expected an array"):
        layer.backward([[0.0]])


def re_shape(shape):
    return "\\(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + "\\)"


# ----------------------------------------------------------------------------- _Cell.backward dstate
def test_lstm_cell_dstate_shapes():
    cell = LSTMCell(D, H, seed=0)
    cell.forward(_x()[:, 0])
    with pytest.raises(ValueError, match=rf"dstate dh has shape \(1, {H}\); expected \({B}, {H}\)"):
        cell.backward((np.ones((1, H), np.float32), None))
    with pytest.raises(ValueError, match=rf"dstate dc has shape \({B}, 1\); expected \({B}, {H}\)"):
        cell.backward(np.ones((B, H), np.float32), np.ones((B, 1), np.float32))
    with pytest.raises(ValueError, match="dc twice"):
        cell.backward((np.ones((B, H), np.float32), None), np.ones((B, H), np.float32))
    dx, (dh0, dc0) = cell.backward((np.ones((B, H), np.float32), None))  # the cached step is still there
    assert dx.shape == (B, D) and dh0.shape == dc0.shape == (B, H)


@pytest.mark.parametrize("cls", [RNNCell, GRUCell])
def test_cell_dstate_shapes(cls):
    cell = cls(D, H, seed=0)
    cell.forward(_x()[:, 0])
    with pytest.raises(ValueError, match=rf"dstate has shape \(1, {H}\); expected \({B}, {H}\)"):
        cell.backward(np.ones((1, H), np.float32))
    with pytest.raises(ValueError, match="has no cell state"):
        cell.backward(np.ones((B, H), np.float32), np.ones((B, H), np.float32))
    dx, dh0 = cell.backward(np.ones((B, H), np.float32))
    assert dx.shape == (B, D) and dh0.shape == (B, H)


# ----------------------------------------------------------------------------- losses
def test_mse_backward_before_forward():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        MSELoss().backward()


def test_mse_mask_shape():
    x = _x()
    loss = MSELoss()
    for bad in [(T,), (T, B), (B, T, D, 1)]:
        with pytest.raises(ValueError, match=rf"mask has shape {re_shape(bad)}; expected pred's leading axes"):
            loss.forward(x, x, mask=np.ones(bad, bool))
    # leading axes, of any count, still work
    assert loss.forward(x, x + 1, mask=np.ones((B, T), bool)) == pytest.approx(1.0)
    assert loss.forward(x, x + 1, mask=np.ones((B,), bool)) == pytest.approx(1.0)
    assert loss.forward(x, x + 1, mask=[[True] * T] * B) == pytest.approx(1.0)


def test_cross_entropy_accepts_array_like_targets():
    logits = _x()
    targets = np.random.default_rng(2).integers(0, D, (B, T))
    ce = SoftmaxCrossEntropy()
    want = ce.forward(logits, targets)
    assert ce.forward(logits, targets.tolist()) == pytest.approx(want)
    assert ce.forward(logits, targets.tolist(), mask=np.ones((B, T), bool).tolist()) == pytest.approx(want)
    with pytest.raises(ValueError, match=r"targets have shape \(2,\); expected \(3, 4\)"):
        ce.forward(logits, [0, 1])
    with pytest.raises(ValueError, match="targets have dtype"):
        ce.forward(logits, [[0.5] * T] * B)
    lin = Linear(D, 3, seed=0)
    res = linear_cross_entropy(lin, logits, targets.tolist())
    assert res.count == B * T


# ----------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_recurrent_constructor_types(cls):
    for bad in ("0.5", None, True, [0.1]):
        with pytest.raises(ValueError, match=r"dropout .*; expected a float with 0 <= dropout < 1"):
            cls(D, H, dropout=bad)
    for name in ("bias", "bidirectional", "stateful", "bias_hh"):
        for bad in ("False", None, 1):
            with pytest.raises(ValueError, match=rf"{name} .*; expected True or False"):
                cls(D, H, **{name: bad})
    for name, kwargs in (("input_size", {"input_size": 2.0}), ("hidden_size", {"hidden_size": True}),
                         ("num_layers", {"num_layers": 2.0}), ("num_layers", {"num_layers": "2"})):
        args = {"input_size": D, "hidden_size": H, **kwargs}
        with pytest.raises(ValueError, match=rf"{name} .*; expected an integer >= 1"):
            cls(args.pop("input_size"), args.pop("hidden_size"), **args)
    layer = cls(np.int64(D), np.int32(H), np.int64(2), dropout=np.float32(0.25), bias=np.bool_(True))
    assert type(layer.hidden_size) is int and type(layer.num_layers) is int and type(layer.bias) is bool
    assert layer.dropout == pytest.approx(0.25)


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell, GRUCell])
def test_cells_accept_numpy_integers(cls):
    cell = cls(np.int64(D), np.int64(H))
    assert (cell.input_size, cell.hidden_size) == (D, H) and type(cell.hidden_size) is int
    for bad in (2.0, True, "2"):
        with pytest.raises(ValueError, match="input_size .*; expected an integer >= 1"):
            cls(bad, H)
    with pytest.raises(ValueError, match="bias 'no'; expected True or False"):
        cls(D, H, bias="no")


def test_linear_and_embedding_accept_numpy_integers():
    lin = Linear(np.int64(D), np.int32(3))
    assert (lin.in_features, lin.out_features) == (D, 3) and type(lin.in_features) is int
    emb = Embedding(np.int64(10), np.int64(3), padding_idx=np.int64(-1))
    assert (emb.num_embeddings, emb.embedding_dim, emb.padding_idx) == (10, 3, 9)
    for bad in (2.0, True):
        with pytest.raises(ValueError, match="in_features .*; expected an integer >= 1"):
            Linear(bad, 3)
        with pytest.raises(ValueError, match="embedding_dim .*; expected an integer >= 1"):
            Embedding(10, bad)
    with pytest.raises(ValueError, match=r"padding_idx 1.5; expected an integer id in \[0, 9\]"):
        Embedding(10, 3, padding_idx=1.5)
    with pytest.raises(ValueError, match="bias 'no'; expected True or False"):
        Linear(D, 3, bias="no")


# ----------------------------------------------------------------------------- Linear / Embedding backward
def test_linear_backward_dy_shape():
    lin = Linear(D, 3, seed=0)
    lin.forward(_x())
    for bad in [(B, T, 4), (1, 1, 3), (B * T, 3)]:
        with pytest.raises(ValueError, match=rf"dy has shape {re_shape(bad)}; expected \({B}, {T}, 3\)"):
            lin.backward(np.ones(bad, np.float32))
    assert lin.backward(np.ones((B, T, 3), np.float32)).shape == (B, T, D)


def test_embedding_backward_dy_shape():
    emb = Embedding(10, 3, seed=0)
    emb.forward(np.array([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match=r"dy has shape \(2, 2, 1\); expected \(2, 2, 3\)"):
        emb.backward(np.ones((2, 2, 1), np.float32))
    emb.backward(np.ones((2, 2, 3), np.float32))


@pytest.mark.parametrize("make", [lambda: GRU(D, H, dtype=np.float16), lambda: GRU(D, H).to(dtype=np.int32),
                                  lambda: __import__("rnnkit").Linear(3, 4, dtype=np.float16)])
def test_parameters_are_float32_or_float64(make):
    """float16 ran silently (no kernel is written for it), int failed far from the cause."""
    with pytest.raises(ValueError, match="has dtype (float16|int32); expected float32 or float64"):
        make()
