"""Bad input gets a ValueError that names the value and what was expected."""
from __future__ import annotations

import types

import numpy as np
import pytest

import rnnkit
from rnnkit.layers import GRU, LSTM, RNN, Embedding, GRUCell, Linear, LSTMCell, SoftmaxCrossEntropy


@pytest.fixture(params=[RNN, LSTM, GRU])
def layer(request):
    return request.param(4, 6, num_layers=2)


def test_wrong_rank(layer):
    with pytest.raises(ValueError, match=r"x has shape \(3, 4\) \(2-d\); expected 3-d"):
        layer.forward(np.zeros((3, 4), np.float32))


def test_wrong_feature_size(layer):
    with pytest.raises(ValueError, match=r"last dimension 5 .*expected 4"):
        layer.forward(np.zeros((2, 3, 5), np.float32))


def test_wrong_dtype(layer):
    with pytest.raises(ValueError, match=r"dtype float64; expected float32"):
        layer.forward(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"dtype int64; expected a float array"):
        layer.forward(np.zeros((2, 3, 4), dtype=np.int64))
    for dtype in (bool, np.complex64):
        with pytest.raises(ValueError, match=r"expected a float array"):
            layer.forward(np.zeros((2, 3, 4), dtype=dtype))
    foreign = types.SimpleNamespace(shape=(2, 3, 4), ndim=3, dtype="torch.float32")  # a dtype NumPy does not know
    with pytest.raises(ValueError, match=r"dtype torch.float32; expected a float array"):
        layer.forward(foreign)


def test_empty_sequence(layer):
    with pytest.raises(ValueError, match=r"shape \(2, 0, 4\) with an empty dimension"):
        layer.forward(np.zeros((2, 0, 4), np.float32))


def test_nan_input(layer):
    x = np.zeros((2, 3, 4), np.float32)
    x[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"x contains 1 NaN/inf value\(s\); expected finite values"):
        layer.forward(x)


def test_state_of_wrong_size(layer):
    x = np.zeros((2, 3, 4), np.float32)
    bad = np.zeros((2, 2, 7), np.float32)
    state = (bad, bad) if isinstance(layer, LSTM) else bad
    with pytest.raises(ValueError, match=r"initial state h has shape \(2, 2, 7\); expected \(2, 2, 6\)"):
        layer.forward(x, state)


def test_a_state_fed_back_is_not_checked_again_but_a_callers_is(layer, monkeypatch):
    from rnnkit.layers import recurrent
    x = np.zeros((2, 3, 4), np.float32)
    _, state = layer.forward(x)
    checked = []
    real = recurrent.check_float_input
    monkeypatch.setattr(recurrent, "check_float_input", lambda v, name, *a, **k: checked.append(name) or real(v, name, *a, **k))
    _, state = layer.forward(x, state)  # the state the last call returned (a generation loop)
    assert checked == ["x"]
    parts = state if isinstance(layer, LSTM) else (state,)
    copies = [p.copy() for p in parts]
    copies[0][1, 0, 2] = np.nan
    with pytest.raises(ValueError, match=r"initial state h contains 1 NaN/inf value\(s\)"):
        layer.forward(x, tuple(copies) if isinstance(layer, LSTM) else copies[0])
    _, state = layer.forward(x)
    with pytest.raises(ValueError, match=r"initial state h has shape \(2, 2, 6\); expected \(2, 3, 6\)"):
        layer.forward(np.zeros((3, 3, 4), np.float32), state)  # fed back, but for another batch


def test_lstm_state_must_be_pair():
    with pytest.raises(ValueError, match="expected a tuple"):
        LSTM(4, 6).forward(np.zeros((2, 3, 4), np.float32), np.zeros((1, 2, 6), np.float32))


def test_bad_lengths_and_mask(layer):
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"lengths range 0..3; expected 1 <= length <= T=3"):
        layer.forward(x, lengths=np.array([0, 3]))
    with pytest.raises(ValueError, match=r"mask has shape \(3, 2\); expected \(B, T\) = \(2, 3\)"):
        layer.forward(x, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="either mask or lengths"):
        layer.forward(x, mask=np.ones((2, 3), bool), lengths=np.array([3, 3]))


def test_stateful_batch_change_is_explained():
    layer = LSTM(4, 6, stateful=True)
    layer.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"carries a state for batch 2; got batch 5: call reset_state"):
        layer.forward(np.zeros((5, 3, 4), np.float32))
    layer.reset_state()
    layer.forward(np.zeros((5, 3, 4), np.float32))


def test_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size 0; expected an integer >= 1"):
        LSTM(4, 0)
    with pytest.raises(ValueError, match="dropout 1.5"):
        GRU(4, 4, dropout=1.5)
    with pytest.raises(ValueError, match="nonlinearity 'sigmoid'"):
        RNN(4, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="stateful=True with bidirectional=True"):
        LSTM(4, 4, stateful=True, bidirectional=True)


def test_cells_check_inputs():
    with pytest.raises(ValueError, match=r"last dimension 3 .*expected 4"):
        GRUCell(4, 5).forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="expected a tuple"):
        LSTMCell(4, 5).forward(np.zeros((2, 4), np.float32), np.zeros((2, 5), np.float32))
    with pytest.raises(RuntimeError, match="more times than forward"):
        GRUCell(4, 5).backward(np.zeros((2, 5), np.float32))


def test_embedding_ids():
    emb = Embedding(10, 3)
    with pytest.raises(ValueError, match=r"contains id 10; expected ids in \[0, 9\]"):
        emb.forward(np.array([[1, 10]]))
    with pytest.raises(ValueError, match=r"contains id -1"):
        emb.forward(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="dtype float64; expected an integer array"):
        emb.forward(np.array([[1.0]]))
    for bad in (np.array([[True]]), [[1, 2]], types.SimpleNamespace(shape=(1, 1), dtype="torch.int64")):
        with pytest.raises(ValueError, match="expected an integer array"):
            emb.forward(bad)


def test_linear_and_loss_shapes():
    with pytest.raises(ValueError, match=r"last dimension 2 .*expected 3"):
        Linear(3, 4).forward(np.zeros((5, 2), np.float32))
    ce = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"targets have shape \(2, 4\); expected \(2, 3\)"):
        ce.forward(np.zeros((2, 3, 5), np.float32), np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match=r"target id 7; expected ids in \[0, 4\]"):
        ce.forward(np.zeros((2, 3, 5), np.float32), np.full((2, 3), 7))


def test_load_state_dict_shape_and_keys():
    layer = LSTM(4, 6)
    sd = {k: v.copy() for k, v in layer.state_dict().items()}
    sd["weight_hh_l0"] = np.zeros((24, 5), np.float32)
    with pytest.raises(ValueError, match=r"'weight_hh_l0' has shape \(24, 5\); expected \(24, 6\)"):
        layer.load_state_dict(sd)
    with pytest.raises(KeyError, match="missing"):
        layer.load_state_dict({})


def test_repr_and_default_dtype():
    assert repr(rnnkit.LSTM(10, 20)) == "LSTM(10, 20)"
    assert "bidirectional=True" in repr(rnnkit.GRU(3, 4, num_layers=2, bidirectional=True))
    assert rnnkit.LSTM(10, 20).params["weight_ih_l0"].dtype == np.float32
