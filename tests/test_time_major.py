"""``time_major=True``: the recurrent layers take x and give y as (T, B, .), the layout of
their time loop, with the same numbers as the batch-first call."""
import numpy as np
import pytest

from rnnkit import GRU, LSTM, RNN, kernels
from rnnkit.layers import Embedding

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
KERNELS = ["reference"] + (["native"] if kernels.native.available() else [])


def _run(cls, time_major, dtype, bidirectional, with_mask, seed=0):
    B, T, D, H = 4, 7, 5, 6
    rng = np.random.default_rng(seed)
    layer = cls(D, H, num_layers=2, bidirectional=bidirectional, dropout=0.25, dtype=dtype, seed=1)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    mask = rng.random((B, T)) < 0.8 if with_mask else None
    if mask is not None:
        mask[:, 0] = True
    dy = rng.standard_normal((B, T, layer.num_directions * H)).astype(dtype)
    y, state = layer.forward(x.transpose(1, 0, 2) if time_major else x, mask=mask, time_major=time_major)
    dx = layer.backward(dy.transpose(1, 0, 2) if time_major else dy)
    if time_major:
        y, dx = y.transpose(1, 0, 2), dx.transpose(1, 0, 2)
    grads = [g.copy() for _, _, g in layer.named_parameters()]
    return [np.array(y), dx] + list(state if isinstance(state, tuple) else (state,)) + grads


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bidirectional,with_mask", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_time_major_equals_batch_first(cell, bidirectional, with_mask, kernel):
    dtype = np.float32 if kernel == "native" else np.float64
    with kernels.using(kernel):
        want = _run(CELLS[cell], False, dtype, bidirectional, with_mask)
        got = _run(CELLS[cell], True, dtype, bidirectional, with_mask)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i}")  # the same sums in the same order


@pytest.mark.parametrize("vocab", [6, 200], ids=["lookup", "plain"])
def test_forward_embedded_time_major(vocab):
    B, T, E, H = 5, 9, 8, 7
    rng = np.random.default_rng(3)
    ids = rng.integers(0, vocab, size=(B, T))
    dy = rng.standard_normal((B, T, H))
    results = []
    for time_major in (False, True):
        emb = Embedding(vocab, E, rng=np.random.default_rng(0), dtype=np.float64)
        rnn = LSTM(E, H, dtype=np.float64, seed=2)
        y, _ = rnn.forward_embedded(emb, ids, time_major=time_major)
        assert rnn.backward(dy.transpose(1, 0, 2) if time_major else dy) is None
        results.append([y.transpose(1, 0, 2) if time_major else y, emb.grads["weight"].copy()]
                       + [g.copy() for _, _, g in rnn.named_parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_the_time_major_output_is_read_only_and_dy_is_checked():
    """y is the layer's own buffer (its cached states): writing it would change the
    backward, so it is handed out read-only; dy must come in the forward's layout."""
    layer = LSTM(3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))  # (T, B, D)
    y, _ = layer.forward(x, time_major=True)
    assert y.shape == (6, 2, 4) and not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        y[0] = 0
    with pytest.raises(ValueError, match=r"dy has shape \(2, 6, 4\); expected \(6, 2, 4\)"):
        layer.backward(np.zeros((2, 6, 4)))
