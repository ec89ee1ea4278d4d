"""Gradient flow through time: the BPTT-measured dL_T/dh_t, dL_T/dx_t and step Jacobians
equal finite differences on tiny float64 models; the sigmoid/tanh/relu analysis RNN passes
the gradient check and agrees with rnnkit's RNN where both exist."""
from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit.analysis import gradflow as gf
from rnnkit.layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

F64 = np.float64
B, T, D, H = 2, 5, 3, 4
EPS = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- ActivationRNN
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
def test_activation_rnn_gradcheck(act):
    layer = gf.ActivationRNN(D, H, act, dtype=F64, seed=1)
    x, h0 = _rng(2).standard_normal((B, T, D)), _rng(3).standard_normal((1, B, H))
    report = rnnkit.gradcheck(layer, (x, h0))
    assert report.passed(1e-6), str(report)
    assert {"input.0", "input.1", "weight_hh_l0", "bias_ih_l0"} <= set(report.errors)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
def test_activation_rnn_cell_gradcheck(act):
    cell = gf.ActivationRNNCell(D, H, act, dtype=F64, seed=1)
    report = rnnkit.gradcheck(cell, (_rng(2).standard_normal((B, D)), _rng(3).standard_normal((B, H))))
    assert report.passed(1e-6), str(report)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_activation_rnn_matches_rnn_layer(act):
    ours, ref = gf.ActivationRNN(D, H, act, dtype=F64, seed=1), RNN(D, H, nonlinearity=act, dtype=F64, seed=5)
    ref.load_state_dict(ours.state_dict())
    x, dy = _rng(2).standard_normal((B, T, D)), _rng(3).standard_normal((B, T, H))
    y1, h1 = ours.forward(x)
    y2, h2 = ref.forward(x)
    np.testing.assert_allclose(y1, y2, atol=1e-12)
    np.testing.assert_allclose(h1, h2, atol=1e-12)
    np.testing.assert_allclose(ours.backward(dy), ref.backward(dy), atol=1e-12)
    for name in ref.grads:
        np.testing.assert_allclose(ours.grads[name], ref.grads[name], atol=1e-12)


def test_activation_rnn_rejects_unknown_activation():
    with pytest.raises(ValueError, match="nonlinearity 'gelu'"):
        gf.ActivationRNN(D, H, "gelu")


# ----------------------------------------------------------------------------- finite differences
MODELS = {
    "rnn-tanh-L2": lambda: RNN(D, H, num_layers=2, dtype=F64, seed=3),
    "rnn-relu": lambda: RNN(D, H, nonlinearity="relu", dtype=F64, seed=3),
    "lstm-L2": lambda: LSTM(D, H, num_layers=2, dtype=F64, seed=3),
    "gru-L2": lambda: GRU(D, H, num_layers=2, dtype=F64, seed=3),
    "sigmoid": lambda: gf.ActivationRNN(D, H, "sigmoid", dtype=F64, seed=3),
}


def _loss_with_perturbation(rnn, x, u, where=None, delta=0.0):
    """L_T = <y^top_T, u>, stepping fresh cells (forward only); ``where = (kind, layer, t, b, i)``
    adds ``delta`` to h (kind "h") or c (kind "c") of that layer right after step t."""
    cells = gf.step_cells(rnn)
    lstm = isinstance(cells[0], LSTMCell)
    state = [None] * len(cells)
    for t in range(x.shape[1]):
        inp = x[:, t]
        for l, cell in enumerate(cells):
            s = cell.forward(inp, state[l])
            if lstm:
                s = (s[0].copy(), s[1].copy())
            else:
                s = s.copy()
            if where is not None and where[1:3] == (l, t):
                kind, _, _, b, i = where
                target = s if not lstm else (s[0] if kind == "h" else s[1])
                target[b, i] += delta
            state[l] = s
            inp = s[0] if lstm else s
    return float(np.sum(inp * u))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hidden_state_gradients_equal_finite_differences(name):
    rnn = MODELS[name]()
    rng = _rng(7)
    x, u = rng.standard_normal((B, T, D)), rng.standard_normal((B, H))
    flow = gf.hidden_state_gradients(rnn, x, u)
    L = flow.dh.shape[0]
    kinds = ["h", "c"] if flow.dc is not None else ["h"]
    worst = 0.0
    for kind in kinds:
        analytic = flow.dh if kind == "h" else flow.dc
        numeric = np.zeros_like(analytic)
        for l in range(L):
            for t in range(T):
                for b in range(B):
                    for i in range(H):
                        where = (kind, l, t, b, i)
                        plus = _loss_with_perturbation(rnn, x, u, where, EPS)
                        minus = _loss_with_perturbation(rnn, x, u, where, -EPS)
                        numeric[l, t, b, i] = (plus - minus) / (2 * EPS)
        worst = max(worst, np.abs(analytic - numeric).max() / np.abs(numeric).max())
    dx_numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += EPS
        xm[idx] -= EPS
        dx_numeric[idx] = (_loss_with_perturbation(rnn, xp, u) - _loss_with_perturbation(rnn, xm, u)) / (2 * EPS)
    worst = max(worst, np.abs(flow.dx.transpose(1, 0, 2) - dx_numeric).max() / np.abs(dx_numeric).max())
    assert worst < 1e-6, f"{name}: max relative error {worst:.2e}"
    # the last step's gradient is the one given; the norms are per-sequence means
    np.testing.assert_allclose(flow.dh[-1, -1], u)
    np.testing.assert_allclose(flow.norms("h")[-1], np.linalg.norm(u, axis=1).mean())


@pytest.mark.parametrize("name", ["rnn-tanh-L2", "lstm-L2", "gru-L2"])
def test_input_gradients_equal_the_layers_own_bptt(name):
    """dL_T/dx_t from the stepped cells equals the unrolled layer's backward with dy only at T."""
    rnn = MODELS[name]()
    rng = _rng(8)
    x, u = rng.standard_normal((B, T, D)), rng.standard_normal((B, H))
    flow = gf.hidden_state_gradients(rnn, x, u)
    rnn.forward(x)
    dy = np.zeros((B, T, H))
    dy[:, -1] = u
    np.testing.assert_allclose(flow.dx.transpose(1, 0, 2), rnn.backward(dy), rtol=1e-10, atol=1e-12)


def test_language_model_gradient_flow_equals_finite_differences():
    model = gf.CharModel(vocab_size=7, hidden_size=H, embedding_size=D, cell="lstm", seed=1).to(dtype=F64)
    rng = _rng(9)
    ids, targets = rng.integers(0, 7, size=(B, T)), rng.integers(0, 7, size=(B, T))
    flow = gf.language_model_gradient_flow(model, ids, targets)
    x = model.encoder.params["weight"][ids]

    def loss_T(x):  # through the real layers, not the cells
        y, _ = model.rnn.forward(x)
        logits = model.decoder.forward(y[:, -1])
        logits = logits - logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(B), targets[:, -1]].sum())

    assert flow.loss == pytest.approx(loss_T(x), rel=1e-12)
    numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += EPS
        xm[idx] -= EPS
        numeric[idx] = (loss_T(xp) - loss_T(xm)) / (2 * EPS)
    np.testing.assert_allclose(flow.dx.transpose(1, 0, 2), numeric, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- Jacobians
def _numeric_step_jacobian(cell_cls, params, x_t, state, lstm):
    """ds_t/ds_{t-1} of one step by central differences, (B, S, S)."""
    def step(s):
        cell = cell_cls(D, H, dtype=F64, seed=0)
        cell.load_state_dict(params)
        if lstm:
            h, c = cell.forward(x_t, (s[:, :H], s[:, H:]))
            return np.concatenate([h, c], axis=1)
        return cell.forward(x_t, s)

    s0 = np.concatenate(state, axis=1) if lstm else state
    S = s0.shape[1]
    J = np.zeros((s0.shape[0], S, S))
    for j in range(S):
        sp, sm = s0.copy(), s0.copy()
        sp[:, j] += EPS
        sm[:, j] -= EPS
        J[:, :, j] = (step(sp) - step(sm)) / (2 * EPS)
    return J


@pytest.mark.parametrize("cls,cell_cls", [(RNN, RNNCell), (LSTM, LSTMCell), (GRU, GRUCell)])
def test_jacobian_spectrum_equals_finite_differences(cls, cell_cls):
    rnn = cls(D, H, dtype=F64, seed=4)
    lstm = cls is LSTM
    x = _rng(10).standard_normal((B, T, D))
    spec = gf.jacobian_spectrum(rnn, x)
    params = {n[:-3]: p for n, p in rnn.params.items()}  # weight_ih_l0 -> weight_ih
    cells = gf.step_cells(rnn)
    inputs, states, _ = gf.run_cells(cells, x)
    jacobians = [_numeric_step_jacobian(cell_cls, params, inputs[0][t], states[0][t], lstm) for t in range(T)]
    numeric_sigma = np.stack([np.linalg.norm(J, ord=2, axis=(1, 2)) for J in jacobians])
    np.testing.assert_allclose(spec.step, numeric_sigma, rtol=1e-6)
    P = np.tile(np.eye(jacobians[0].shape[1]), (B, 1, 1))
    for t in range(T - 1, -1, -1):
        P = P @ jacobians[t]
        np.testing.assert_allclose(spec.product_log10[t], np.log10(np.linalg.norm(P, ord=2, axis=(1, 2))),
                                   atol=1e-6)


def test_gradient_norm_bounded_by_jacobian_product():
    """||dL/dh_{t-1}|| <= ||dL/dh_T|| * sigma_max(J_T...J_t) for a single-layer RNN."""
    rnn = RNN(D, H, dtype=F64, seed=2)
    rng = _rng(11)
    x, u = rng.standard_normal((1, 12, D)), rng.standard_normal((1, H))
    flow = gf.hidden_state_gradients(rnn, x, u)
    spec = gf.jacobian_spectrum(rnn, x)
    bound = np.linalg.norm(u) * 10.0 ** spec.product_log10[1:, 0]  # for h_0..h_{T-2} -> index t
    norms = np.linalg.norm(flow.dh[0, :-1, 0], axis=-1)
    assert np.all(norms <= bound * (1 + 1e-9))


def test_rejects_bidirectional():
    with pytest.raises(ValueError, match="bidirectional"):
        gf.hidden_state_gradients(LSTM(D, H, bidirectional=True, dtype=F64), np.zeros((1, 2, D)), np.zeros((1, H)))


# ----------------------------------------------------------------------------- command line
def command_line(tmp_path, *flags):
    """``rnnkit gradflow`` arguments for a short text, writing to tmp_path/out."""
    import argparse

    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)
    parser = argparse.ArgumentParser()
    gf.add_arguments(parser)
    return parser.parse_args(["--text", str(text), *flags, "--out", str(tmp_path / "out")])


def test_command_line_writes_csv_and_png(tmp_path):
    import csv

    pytest.importorskip("matplotlib")
    args = command_line(tmp_path, "--compare", "activations", "--seq-len", "6", "--batch", "2", "--hidden-size", "5",
                        "--train-steps", "2")
    assert gf.run(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "gradflow_activations.csv")))
    assert len(rows) == 3 * 2 * 6  # variants x stages x steps
    assert {r["variant"] for r in rows} == {"tanh", "sigmoid", "relu"}
    assert all(float(r["grad_h_norm"]) > 0 for r in rows)
    assert (tmp_path / "out" / "gradflow_activations.png").stat().st_size > 10_000


def test_command_line_without_matplotlib_writes_the_csv_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gf, "_have_matplotlib", lambda: False)
    args = command_line(tmp_path, "--compare", "cells", "--seq-len", "5", "--batch", "2", "--hidden-size", "4",
                        "--train-steps", "1")
    assert gf.run(args) == 0
    assert (tmp_path / "out" / "gradflow_cells.csv").is_file() and not (tmp_path / "out" / "gradflow_cells.png").exists()
    assert "matplotlib is not installed, so no PNG" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, message", [("--batch", "0", "--batch 0; expected an integer >= 1"),
                                                  ("--hidden-size", "-1", "--hidden-size -1; expected"),
                                                  ("--train-steps", "-3", "--train-steps -3; expected an integer >= 0")])
def test_command_line_names_a_bad_size(tmp_path, flag, value, message):
    with pytest.raises(SystemExit, match=message):
        gf.run(command_line(tmp_path, flag, value))


# ----------------------------------------------------------------------------- memory tasks
from rnnkit.analysis import memory_tasks as mt  # noqa: E402


def test_copy_problem_layout():
    b = mt.copy_problem(4, delay=5, num_symbols=2, alphabet=6, rng=_rng(0))
    assert b.x.shape == (4, 9, 8) and b.targets.shape == (4, 9)
    ids = b.x.argmax(-1)
    np.testing.assert_array_equal(ids[:, 2:6], 6)  # blanks
    np.testing.assert_array_equal(ids[:, 6], 7)  # go
    np.testing.assert_array_equal(b.targets[:, 7:], ids[:, :2])  # recall the symbols in order
    assert b.mask[:, 7:].all() and not b.mask[:, :7].any()
    d = mt.copy_problem(4, delay=5, num_symbols=1, alphabet=6, rng=_rng(0), distractors=True)
    assert d.x.shape[-1] == mt.copy_input_size(6, True) == 14
    assert (d.x.argmax(-1)[:, 1:5] >= 8).all()  # distractors come from the second alphabet


def test_adding_problem_target_is_the_sum_of_the_marked_values():
    x, y = mt.adding_problem(16, 10, rng=_rng(1))
    assert x.shape == (16, 10, 2) and y.shape == (16, 1)
    marked = x[..., 1] == 1
    assert (marked.sum(1) == 2).all() and marked[:, :5].any(1).all() and marked[:, 5:].any(1).all()
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * marked).sum(1), rtol=1e-6)


@pytest.mark.parametrize("task,cell", [("copy", "lstm"), ("adding", "gru"), ("adding", "rnn-relu")])
def test_memory_model_gradients_equal_finite_differences(task, cell):
    in_size = 10 if task == "copy" else 2
    model = mt.MemoryModel(task, cell, in_size, 4, 8 if task == "copy" else 1, seed=2).to(dtype=F64)
    if task == "copy":
        b = mt.copy_problem(3, 4, 1, 8, _rng(3), dtype=F64)
        args = (b.x, b.targets, b.mask)
    else:
        args = mt.adding_problem(3, 6, _rng(3), dtype=F64)
    model.zero_grad()
    model.loss(*args)
    model.backward()
    rng = _rng(4)
    for name, p, g in model.named_parameters():
        flat, grad = p.reshape(-1), g.reshape(-1)
        for i in rng.choice(flat.size, size=min(5, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + EPS
            plus = model.loss(*args)
            flat[i] = old - EPS
            minus = model.loss(*args)
            flat[i] = old
            assert grad[i] == pytest.approx((plus - minus) / (2 * EPS), rel=1e-5, abs=1e-9), name


def test_gru_learns_the_adding_problem():
    run = mt.train_memory_task("adding", "gru", 10, steps=800, hidden_size=16, eval_every=50, seed=0)
    assert run.solved_at is not None, run.history[-3:]
    assert run.final_metric <= 0.01 < mt.ADDING_BASELINE_MSE


def test_clipping_keeps_an_exploding_rnn_finite():
    kw = dict(steps=15, optimizer="sgd", lr=0.01, recurrent_scale=2.0, hidden_size=16, eval_every=15,
              stop_when_solved=False)
    wild = mt.train_memory_task("adding", "rnn-relu", 40, clip=None, **kw)
    tame = mt.train_memory_task("adding", "rnn-relu", 40, clip=1.0, **kw)
    assert wild.nonfinite_steps > 0 and wild.max_grad_norm > 1e6
    assert tame.nonfinite_steps == 0 and np.isfinite(tame.final_metric)


def _saved_language_model(tmp_path, cell="gru"):
    from rnnkit.data import Vocab
    from rnnkit.models.language_model import LanguageModel, LanguageModelConfig

    text = "To be, or not to be, that is the question.\n" * 20
    vocab = Vocab.build(text, specials=())
    config = LanguageModelConfig(vocab_size=len(vocab), cell=cell, embedding_size=6, hidden_size=8, num_layers=2)
    model = LanguageModel(config, vocab=vocab.to_dict(), seed=1)
    (tmp_path / "text.txt").write_text(text)
    return model.save(tmp_path / "lm.safetensors"), tmp_path / "text.txt", model


def test_command_line_on_a_language_model_checkpoint(tmp_path):
    import argparse
    import csv

    pytest.importorskip("matplotlib")
    path, text, model = _saved_language_model(tmp_path)
    parser = argparse.ArgumentParser()
    gf.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(path), "--text", str(text), "--seq-len", "12", "--batch", "3",
                              "--out", str(tmp_path / "out")])
    assert gf.run(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "gradflow_lm.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert (tmp_path / "out" / "gradflow_lm.png").exists()
    # the same numbers straight from the API, on the loaded model's own LM head
    ids = np.zeros((1, 12), dtype=np.int64)
    flow = gf.language_model_gradient_flow(model, ids, ids)
    assert flow.dh.shape == (2, 12, 1, 8) and flow.dc is None


def test_language_model_flow_matches_its_backward(tmp_path):
    """For a real LanguageModel, dL_T/dx from gradflow equals the model's own BPTT of the last step's loss."""
    _, _, model = _saved_language_model(tmp_path, cell="lstm")
    model.to(dtype=F64)
    rng = _rng(12)
    ids, targets = rng.integers(0, model.config.vocab_size, size=(2, 7)), rng.integers(0, 5, size=(2, 7))
    flow = gf.language_model_gradient_flow(model, ids, targets)
    model.reset_state()
    model.zero_grad()
    x = model.encoder.forward(ids)
    y, _ = model.rnn.forward(x)
    logits = model.decoder.forward(y)
    mask = np.zeros((2, 7), dtype=bool)
    mask[:, -1] = True
    loss = model.criterion.forward(logits, targets, mask)  # mean over the 2 counted targets
    assert flow.loss == pytest.approx(2 * loss, rel=1e-10)
    dx = model.rnn.backward(model.decoder.backward(model.criterion.backward(2.0)))
    np.testing.assert_allclose(flow.dx.transpose(1, 0, 2), dx, rtol=1e-8, atol=1e-12)
