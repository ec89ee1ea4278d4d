"""``bias_hh=False``: one recurrent bias (the textbooks' and Keras's form) instead of PyTorch's two.

The function is the same family (PyTorch only ever adds ``b_ih + b_hh``), the training is
not: two biases that get the same gradient move their sum at twice the SGD rate. These
tests check the layer's gradients, that it computes what a two-bias layer with a zero
``b_hh`` computes, the twice-the-rate fact itself, the refusals, the PyTorch export and
the language model's option (the ``ptb-small`` preset uses it, as the book does).
"""
from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit.layers import GRU, LSTM, RNN
from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
from rnnkit.optim import SGD

F64 = np.float64
B, T, D, H = 3, 5, 4, 6


def _pair(cls, layers=2, bidir=True, **kw):
    """A one-bias layer and a two-bias layer holding the same weights, b_hh = 0."""
    one = cls(D, H, num_layers=layers, bidirectional=bidir, bias_hh=False, dtype=F64, seed=3, **kw)
    two = cls(D, H, num_layers=layers, bidirectional=bidir, dtype=F64, seed=4, **kw)
    own = dict((n, p) for n, p, _ in one.named_parameters())
    two.load_state_dict({n: own[n] if n in own else np.zeros_like(p) for n, p, _ in two.named_parameters()})
    return one, two


@pytest.mark.parametrize("cls,kw", [(RNN, {}), (RNN, {"nonlinearity": "relu"}), (LSTM, {})])
@pytest.mark.parametrize("variant", ["plain", "mask"])
def test_gradcheck_one_bias(cls, kw, variant):
    layer = cls(D, H, num_layers=2, bidirectional=True, bias_hh=False, dtype=F64, seed=3, **kw)
    names = [n for n, _, _ in layer.named_parameters()]
    assert not any(n.startswith("bias_hh") for n in names) and sum(n.startswith("bias_ih") for n in names) == 4
    x = np.random.default_rng(2).standard_normal((B, T, D))
    kwargs = {}
    if variant == "mask":
        mask = np.ones((B, T), dtype=bool)
        mask[0, 1] = mask[1, 3:] = False
        kwargs = {"mask": mask}
    report = rnnkit.gradcheck(layer, (x,), forward_kwargs=kwargs)
    assert report.passed(1e-6), str(report)
    assert set(report.errors) == set(names) | {"input.0"} and not report.unchecked, str(report)


@pytest.mark.parametrize("cls", [RNN, LSTM])
def test_one_bias_is_two_biases_with_zero_b_hh(cls):
    one, two = _pair(cls)
    x = np.random.default_rng(0).standard_normal((B, T, D))
    y1, s1 = one(x)
    y2, s2 = two(x)
    np.testing.assert_allclose(y1, y2, rtol=0, atol=1e-12)
    dy = np.random.default_rng(1).standard_normal(y1.shape)
    one.zero_grad(), two.zero_grad()
    np.testing.assert_allclose(one.backward(dy), two.backward(dy), rtol=0, atol=1e-12)
    g1 = {n: g for n, _, g in one.named_parameters()}
    g2 = {n: g for n, _, g in two.named_parameters()}
    for name, g in g1.items():
        np.testing.assert_allclose(g, g2[name], rtol=0, atol=1e-12)
        if name.startswith("bias_ih"):  # the two-bias layer's b_hh gets exactly the same gradient
            np.testing.assert_allclose(g2[name.replace("bias_ih", "bias_hh")], g, rtol=0, atol=1e-12)


def test_two_biases_move_their_sum_twice_as_fast_under_sgd():
    one, two = _pair(LSTM, layers=1, bidir=False)
    x = np.random.default_rng(0).standard_normal((B, T, D))
    start = one.params["bias_ih_l0"].copy()  # the sum the gates see, the same in both layers
    for layer in (one, two):
        y, _ = layer(x)
        layer.zero_grad()
        layer.backward(np.ones_like(y))
        SGD(layer, lr=0.5).step()
    step_one = one.params["bias_ih_l0"] - start
    step_two = two.params["bias_ih_l0"] + two.params["bias_hh_l0"] - start
    assert np.abs(step_one).max() > 1e-3
    np.testing.assert_allclose(step_two, 2 * step_one, rtol=1e-12, atol=0)


def test_gru_and_bad_configs_are_refused():
    with pytest.raises(ValueError, match="b_hn"):
        GRU(D, H, bias_hh=False)
    with pytest.raises(ValueError, match="gru"):
        LanguageModelConfig(vocab_size=5, cell="gru", bias_hh=False)
    layer = LSTM(D, H, bias=False, bias_hh=False)  # no bias at all: nothing to refuse
    assert not any("bias" in n for n, _, _ in layer.named_parameters())
    assert "bias_hh=False" in repr(LSTM(D, H, bias_hh=False))


def test_language_model_option_and_ptb_small_preset():
    cfg = LanguageModelConfig(vocab_size=11, cell="lstm", embedding_size=6, hidden_size=6, bias_hh=False, init="normal")
    model = LanguageModel(cfg, seed=0)
    names = [n for n, _ in model.state_dict().items()]
    assert "rnn.bias_ih_l0" in names and "rnn.bias_hh_l0" not in names
    from rnnkit.cli import _preset  # the book's recipe: one bias
    assert _preset("ptb-small")["task"]["bias_hh"] is False


def test_torch_export_fills_b_hh_with_zeros():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: live export check skipped")
    from rnnkit.interop import to_torch, torch_state_dict

    one, _ = _pair(LSTM)
    state = torch_state_dict(one)
    assert all(not state[n].any() for n in state if n.startswith("bias_hh"))
    module = to_torch(one)
    x = np.random.default_rng(0).standard_normal((B, T, D))
    with torch.no_grad():
        y_ref, _ = module(torch.from_numpy(x))
    np.testing.assert_allclose(one(x)[0], y_ref.numpy(), rtol=1e-10, atol=1e-12)
    cfg = LanguageModelConfig(vocab_size=11, cell="rnn", embedding_size=6, hidden_size=6, bias_hh=False)
    lm = LanguageModel(cfg, seed=0, dtype=F64)
    ids = np.random.default_rng(1).integers(0, 11, (2, 7))
    with torch.no_grad():
        ref = to_torch(lm).eval()(torch.from_numpy(ids))
    ref = ref[0] if isinstance(ref, tuple) else ref
    lm.eval()
    logits, _ = lm.predict(ids)
    np.testing.assert_allclose(logits, ref.numpy().reshape(logits.shape), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cls", [RNN, LSTM])
def test_analysis_tools_step_a_one_bias_layer(cls):
    """gradflow's and inspect's step cells rebuild a one-bias stack exactly (b_hh = 0 in the cells)."""
    from rnnkit.analysis.gradflow import run_cells, step_cells

    layer = cls(D, H, num_layers=2, bias_hh=False, dtype=F64, seed=5)
    x = np.random.default_rng(3).standard_normal((B, T, D))
    y, _ = layer(x)
    cells = step_cells(layer)
    assert all(not c.params["bias_hh"].any() for c in cells)
    _, _, y_T = run_cells(cells, x)
    np.testing.assert_allclose(y_T, y[:, -1], rtol=1e-12, atol=1e-12)
