"""One finite-difference gradient check harness, driven by a registry of layers.

Every entry builds a float64 layer and its inputs; the harness checks every parameter
and float input against central differences (``rnnkit.gradcheck``) at 1e-6 relative.
Adding a layer or an option means adding one entry here.
"""
from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit.layers import (GRU, LSTM, RNN, Dropout, Embedding, GRUCell, Linear, LSTMCell, MSELoss, RNNCell,
                           SequencePooling, SoftmaxCrossEntropy)
from rnnkit.layers.pooling import POOLING_MODES

F64 = np.float64
B, T, D, H = 3, 5, 4, 5
TOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _state(cls, L, batch=B, hidden=H, rng=None, scale=1.0):
    rng = rng or _rng(1)
    if cls is LSTM:
        return (rng.standard_normal((L, batch, hidden)) * scale, rng.standard_normal((L, batch, hidden)) * scale)
    return rng.standard_normal((L, batch, hidden)) * scale


def recurrent_cases():
    cases = []
    for cls in (RNN, LSTM, GRU):
        acts = ("tanh", "relu") if cls is RNN else ("tanh",)
        for act in acts:
            for layers in (1, 2):
                for bidir in (False, True):
                    for variant in ("plain", "state", "lengths", "mask", "saturated"):
                        if variant == "saturated" and (layers, bidir) != (1, False):
                            continue
                        cases.append(pytest.param(cls, act, layers, bidir, variant,
                                                  id=f"{cls.__name__}-{act}-L{layers}-{'bi' if bidir else 'uni'}-{variant}"))
    return cases


def build_recurrent(cls, act, layers, bidir, **kw):
    extra = {"nonlinearity": act} if cls is RNN else {}
    return cls(D, H, num_layers=layers, bidirectional=bidir, dtype=F64, seed=3, **extra, **kw)


@pytest.mark.parametrize("cls,act,layers,bidir,variant", recurrent_cases())
def test_recurrent_layer(cls, act, layers, bidir, variant):
    layer = build_recurrent(cls, act, layers, bidir)
    rng = _rng(2)
    x = rng.standard_normal((B, T, D))
    inputs, kwargs = (x,), {}
    L = layers * (2 if bidir else 1)
    if variant == "state":
        inputs = (x, _state(cls, L))
    elif variant == "lengths":
        inputs = (x, _state(cls, L))
        kwargs = {"lengths": np.array([T, 2, 4])}
    elif variant == "mask":
        mask = np.ones((B, T), dtype=bool)
        mask[0, 1] = mask[1, 3:] = mask[2, 0] = False  # holes too, not only padded tails
        kwargs = {"mask": mask}
    elif variant == "saturated":
        # large pre-activations: gates near 0/1, tanh near +-1 (relu: many dead units)
        inputs = (x * 6.0, _state(cls, L, scale=3.0))
    report = rnnkit.gradcheck(layer, inputs, forward_kwargs=kwargs)
    assert report.passed(TOL), str(report)
    # exactly every parameter, x and (when given) every array of the initial state were checked
    expected = {n for n, _, _ in layer.named_parameters()} | {"input.0"}
    if len(inputs) > 1:
        expected |= {"input.1.0", "input.1.1"} if cls is LSTM else {"input.1"}
    assert set(report.errors) == expected and not report.unchecked, str(report)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_dropout_between_layers(cls):
    layer = cls(D, H, num_layers=2, dropout=0.4, dtype=F64, seed=4)
    x = _rng(5).standard_normal((B, T, D))
    report = rnnkit.gradcheck(layer, (x,))
    assert report.passed(TOL), str(report)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_stateful_second_chunk(cls):
    """Truncated BPTT: the second chunk starts from the carried state, which is a constant."""
    layer = cls(D, H, num_layers=2, stateful=True, dtype=F64, seed=6)
    rng = _rng(7)
    layer.forward(rng.standard_normal((B, T, D)))  # chunk 1: state is now carried
    carried = layer.state
    report = rnnkit.gradcheck(layer, (rng.standard_normal((B, T, D)),))
    assert report.passed(TOL), str(report)
    # and the carried state really was used: a fresh layer gives different outputs
    y_carried, _ = layer.forward(np.ones((B, T, D)))
    layer.reset_state()
    y_fresh, _ = layer.forward(np.ones((B, T, D)))
    assert carried is not None and not np.allclose(y_carried, y_fresh)


@pytest.mark.parametrize("cls,act", [(RNNCell, "tanh"), (RNNCell, "relu"), (LSTMCell, None), (GRUCell, None)])
@pytest.mark.parametrize("saturated", [False, True])
def test_cells(cls, act, saturated):
    kw = {"nonlinearity": act} if act else {}
    cell = cls(D, H, dtype=F64, seed=8, **kw)
    rng = _rng(9)
    scale = 5.0 if saturated else 1.0
    x = rng.standard_normal((B, D)) * scale
    h = rng.standard_normal((B, H)) * scale
    state = (h, rng.standard_normal((B, H)) * scale) if cls is LSTMCell else h
    report = rnnkit.gradcheck(cell, (x, state))
    assert report.passed(TOL), str(report)


def test_cell_stepped_many_times_matches_layer():
    """Stepping a cell T times then back-propagating T times equals the unrolled layer."""
    rng = _rng(10)
    layer = LSTM(D, H, dtype=F64, seed=11)
    cell = LSTMCell(D, H, dtype=F64)
    cell.load_state_dict({k[: -len("_l0")]: v for k, v in layer.state_dict().items()})
    x = rng.standard_normal((B, T, D))
    dy = rng.standard_normal((B, T, H))
    y, _ = layer.forward(x)
    dx = layer.backward(dy)
    state, hs = None, []
    for t in range(T):
        state = cell.forward(x[:, t], state)
        hs.append(state[0].copy())
    np.testing.assert_allclose(np.stack(hs, 1), y, rtol=1e-12, atol=1e-12)
    dstate, dxs = (np.zeros((B, H)), np.zeros((B, H))), []
    for t in reversed(range(T)):
        dx_t, dstate = cell.backward((dstate[0] + dy[:, t], dstate[1]))
        dxs.append(dx_t)
    np.testing.assert_allclose(np.stack(dxs[::-1], 1), dx, rtol=1e-10, atol=1e-12)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        np.testing.assert_allclose(cell.grads[name], layer.grads[name + "_l0"], rtol=1e-10, atol=1e-12)


def test_linear():
    layer = Linear(D, 7, dtype=F64, seed=12)
    assert rnnkit.gradcheck(layer, (_rng(13).standard_normal((B, T, D)),)).passed(TOL)


@pytest.mark.parametrize("mode,dirs", [(m, d) for m in POOLING_MODES for d in (1, 2)])
def test_sequence_pooling(mode, dirs):
    mask = np.ones((B, T), dtype=bool)
    mask[0, 1] = mask[1, 3:] = mask[2, 0] = False  # holes too, not only padded tails
    layer = SequencePooling(mode, num_directions=dirs)
    y = _rng(15).standard_normal((B, T, 2 * H))
    report = rnnkit.gradcheck(layer, (y, mask))
    assert report.passed(TOL), str(report)
    assert layer.forward(y, mask).shape == (B, layer.output_size(2 * H))


def test_embedding():
    layer = Embedding(9, D, dtype=F64, seed=14)
    ids = np.array([[1, 2, 2, 8], [0, 1, 1, 1]])  # repeated ids must accumulate
    assert rnnkit.gradcheck(layer, (ids,)).passed(TOL)


def test_embedding_padding_row_gets_no_gradient():
    layer = Embedding(9, D, padding_idx=0, dtype=F64, seed=14)
    assert np.all(layer.params["weight"][0] == 0)
    y = layer.forward(np.array([[0, 3, 0]]))
    layer.backward(np.ones_like(y))
    assert np.all(layer.grads["weight"][0] == 0) and np.all(layer.grads["weight"][3] == 1)


@pytest.mark.parametrize("ignore", [None, 0])
def test_softmax_cross_entropy(ignore):
    rng = _rng(15)
    logits = rng.standard_normal((B, T, 6)) * 3
    targets = rng.integers(0, 6, size=(B, T))
    assert rnnkit.gradcheck(SoftmaxCrossEntropy(ignore_index=ignore), (logits, targets)).passed(TOL)


def test_softmax_cross_entropy_masked_and_extreme_logits():
    rng = _rng(16)
    logits = rng.standard_normal((B, T, 6)) * 300  # exp would overflow without log-sum-exp
    targets = rng.integers(0, 6, size=(B, T))
    mask = rng.random((B, T)) > 0.3
    loss = SoftmaxCrossEntropy()
    value = loss.forward(logits, targets, mask=mask)
    assert np.isfinite(value) and loss.count == mask.sum()
    report = rnnkit.gradcheck(SoftmaxCrossEntropy(), (logits / 100, targets), forward_kwargs={"mask": mask})
    assert report.passed(TOL), str(report)


def test_mse_loss_masked():
    rng = _rng(17)
    pred, target = rng.standard_normal((B, T, 2)), rng.standard_normal((B, T, 2))
    mask = rng.random((B, T)) > 0.5
    # the target is data: MSELoss.backward returns the gradient of the prediction only
    report = rnnkit.gradcheck(MSELoss(), (pred, target), forward_kwargs={"mask": mask}, allow_unchecked=("input.1",))
    assert report.passed(TOL) and set(report.errors) == {"input.0"} and set(report.unchecked) == {"input.1"}, str(report)


def test_dropout_is_inverted_and_checkable():
    layer = Dropout(0.3, seed=18)
    x = np.ones((200, 50))
    y = layer.forward(x)
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7])
    assert abs(y.mean() - 1.0) < 0.05  # expectation preserved
    assert rnnkit.gradcheck(Dropout(0.3, seed=19), (_rng(20).standard_normal((B, T, D)),)).passed(TOL)
    layer.eval()
    assert layer.forward(x) is x


def test_gradcheck_catches_a_wrong_backward():
    """The harness must fail on a subtly wrong gradient (here: a swapped gate)."""

    class BrokenLSTM(LSTM):
        def backward(self, dy=None, dstate=None):
            dx = super().backward(dy, dstate)
            g = self.grads["weight_hh_l0"]
            g[:H], g[H:2 * H] = g[H:2 * H].copy(), g[:H].copy()  # i <-> f
            return dx

    layer = BrokenLSTM(D, H, dtype=F64, seed=21)
    report = rnnkit.gradcheck(layer, (_rng(22).standard_normal((B, T, D)),))
    assert not report.passed(TOL) and report.worst == "weight_hh_l0"


@pytest.mark.parametrize("cls", [RNN, LSTM])
def test_gradcheck_fails_on_an_input_gradient_backward_drops(cls):
    """A float input whose gradient backward does not return is reported, and fails the check."""

    class NoStateGradient(cls):
        def backward(self, dy=None, dstate=None):
            dx = super().backward(dy, dstate)
            self.dstate0 = None  # the initial state's gradient is lost
            return dx

    layer = NoStateGradient(D, H, dtype=F64, seed=23)
    x = _rng(24).standard_normal((B, T, D))
    state = _state(cls, 1)
    state_names = {"input.1.0", "input.1.1"} if cls is LSTM else {"input.1"}
    report = rnnkit.gradcheck(layer, (x, state))
    assert report.max_rel_error < TOL and not report.passed(TOL)
    assert set(report.unchecked) == set(report.missing) == state_names and "input.0" in report.errors
    assert all(n in str(report) for n in state_names) and "not allowed" in str(report)
    # allowed by name (a prefix covers the leaves below it), the check passes but still lists them
    allowed = rnnkit.gradcheck(layer, (x, state), allow_unchecked=("input.1",))
    assert allowed.passed(TOL) and set(allowed.unchecked) == state_names and not allowed.missing
    assert "(allowed)" in str(allowed)
    with pytest.raises(ValueError, match="input.2"):
        rnnkit.gradcheck(layer, (x, state), allow_unchecked=("input.2",))  # a typo must not allow anything
    # check_inputs=False: parameters only; every float input is listed, none fails the check
    params_only = rnnkit.gradcheck(layer, (x, state), check_inputs=False)
    assert params_only.passed(TOL) and set(params_only.unchecked) == {"input.0"} | state_names
    assert not any(n.startswith("input") for n in params_only.errors)


def test_gradcheck_fails_on_an_input_gradient_of_the_wrong_shape():
    class WrongShape(Linear):
        def backward(self, dy):
            return super().backward(dy)[:, :-1]

    report = rnnkit.gradcheck(WrongShape(D, 7, dtype=F64, seed=25), (_rng(26).standard_normal((B, T, D)),))
    assert not report.passed(TOL) and set(report.unchecked) == {"input.0"} and "shape" in report.unchecked["input.0"]
