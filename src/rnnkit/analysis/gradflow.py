"""Gradient flow through time: how much of the last step's loss reaches each earlier step.

For a recurrent stack and a sequence ``x_1..x_T`` take the loss of the last step only,
``L_T`` (a language model: the cross-entropy of its last prediction). Back-propagation
through time carries ``dL_T/dh_T`` back one step at a time::

    dL_T/dh_{t-1} = dL_T/dh_t · J_t,      J_t = dh_t/dh_{t-1}

so ``||dL_T/dh_t||`` shrinks (vanishing) or grows (exploding) roughly like the product
``J_T ... J_{t+1}``. This module measures both sides exactly, with rnnkit's own BPTT:

- :func:`hidden_state_gradients` steps the model's one-step cells forward over the
  sequence and back-propagates ``dL_T/dy_T`` through them in reverse order (the cells
  run the same ``unroll`` code as the layers), recording ``dL_T/dh_t`` (and ``dL_T/dc_t``
  for the LSTM) in every layer and ``dL_T/dx_t``, for every step ``t``;
- :func:`jacobian_spectrum` builds each step Jacobian ``J_t`` row by row with the same
  cell backward (one batch row per unit vector) and reports its largest singular value
  and that of the product ``ds_T/ds_t``. For the LSTM the state is ``s = (h, c)``, so
  ``J_t`` is ``2H x 2H``: the cell path ``c`` is what keeps its gradient alive.

Everything runs in float64 on a copy of the weights. The vanilla RNN's sigmoid variant,
which the RNN layer does not offer, is :class:`ActivationRNN` (tanh | sigmoid | relu,
``activation_rnn.py``), a small single-layer RNN with its own (tested) backward.

Command line: ``rnnkit gradflow`` (:func:`add_arguments`, :func:`run`).
"""
from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import backend
from ..layers import GRU, LSTM, RNN, Embedding, GRUCell, Linear, LSTMCell, RNNCell, SoftmaxCrossEntropy
from ..layers.base import Layer
from .activation_rnn import ActivationRNN, ActivationRNNCell

# ----------------------------------------------------------------------------- stepping
def step_cells(rnn) -> list:
    """One float64 step-cell per layer of a unidirectional recurrent stack, with copies of its weights.

    ``rnn``: :class:`rnnkit.RNN` / ``LSTM`` / ``GRU`` (any ``num_layers``) or :class:`ActivationRNN`.
    """
    if isinstance(rnn, ActivationRNN):
        cell = ActivationRNNCell(rnn.input_size, rnn.hidden_size, rnn.nonlinearity, rnn.bias, dtype=np.float64, seed=0)
        for name in list(cell.params):
            cell.params[name] = backend.to_numpy(rnn.params[name + "_l0"]).astype(np.float64)
        return [cell]
    if not isinstance(rnn, (RNN, LSTM, GRU)):
        raise TypeError(f"rnn is a {type(rnn).__name__}; expected rnnkit RNN, LSTM, GRU or ActivationRNN")
    if rnn.bidirectional:
        raise ValueError("bidirectional layer; gradient flow to earlier steps is defined for unidirectional stacks")
    cells = []
    for layer in range(rnn.num_layers):
        in_size = rnn.input_size if layer == 0 else rnn.hidden_size
        if rnn.mode == "rnn":
            cell = RNNCell(in_size, rnn.hidden_size, rnn.bias, rnn.nonlinearity, dtype=np.float64, seed=0)
        else:
            cell = {"lstm": LSTMCell, "gru": GRUCell}[rnn.mode](in_size, rnn.hidden_size, rnn.bias,
                                                              dtype=np.float64, seed=0)
        for name in list(cell.params):
            key = f"{name}_l{layer}"
            if key in rnn.params:
                cell.params[name] = backend.to_numpy(rnn.params[key]).astype(np.float64)
            else:  # a layer with bias_hh=False has one bias: the cell's b_hh is zero, the sum the same
                cell.params[name] = np.zeros_like(cell.params[name], dtype=np.float64)
        cells.append(cell)
    return cells


def _is_lstm(cells) -> bool:
    return isinstance(cells[0], LSTMCell)


def run_cells(cells, x):
    """Step every layer over x (B, T, D) float64 from zero states.

    Returns ``(inputs, states, y_T)``: ``inputs[l][t]`` (B, D_l) is layer l's input at step t,
    ``states[l][t]`` its state before step t (``h`` or ``(h, c)``; ``states[l][T]`` the final
    one), ``y_T`` the top layer's last output.
    """
    B, T, _ = x.shape
    lstm = _is_lstm(cells)
    zero = np.zeros((B, cells[0].hidden_size))
    state = [(zero, zero) if lstm else zero for _ in cells]
    inputs = [[None] * T for _ in cells]
    states = [[None] * (T + 1) for _ in cells]
    for t in range(T):
        inp = x[:, t]
        for l, cell in enumerate(cells):
            inputs[l][t], states[l][t] = inp, state[l]
            state[l] = cell.forward(inp, state[l])
            inp = state[l][0] if lstm else state[l]
    for l in range(len(cells)):
        states[l][T] = state[l]
    return inputs, states, inp


@dataclass
class GradientFlow:
    """Gradients of the last step's loss ``L_T`` with respect to every earlier step.

    dh: (L, T, B, H) ``dL_T/dh^l_t``, the total gradient reaching layer l's hidden state
    after step t (index t = 0..T-1 for steps 1..T). dc: the same for the LSTM cell state,
    else None. dx: (T, B, D) ``dL_T/dx_t``. loss: ``L_T`` (summed over the batch).
    """

    dh: np.ndarray
    dc: np.ndarray | None
    dx: np.ndarray
    loss: float = float("nan")

    def norms(self, which: str = "h", layer: int = -1) -> np.ndarray:
        """Mean over the batch of the per-sequence norm, (T,): which = "h" | "c" | "x"."""
        g = {"h": lambda: self.dh[layer], "c": lambda: None if self.dc is None else self.dc[layer],
             "x": lambda: self.dx}[which]()
        if g is None:
            return np.full(self.dx.shape[0], np.nan)
        return np.linalg.norm(g, axis=-1).mean(axis=1)


def hidden_state_gradients(rnn, x, dy_last) -> GradientFlow:
    """Exact ``dL_T/dh_t``, ``dL_T/dc_t`` and ``dL_T/dx_t`` for every step, by BPTT through the cells.

    rnn: a unidirectional RNN/LSTM/GRU (any depth) or ActivationRNN, started from zero state.
    x: (B, T, D) inputs. dy_last: (B, H) ``dL_T/dy_T``, the gradient of the loss with respect
    to the top layer's output at the last step (the loss depends on nothing else).
    Dropout is not applied (analysis runs the model as in eval mode).
    """
    x = np.asarray(backend.to_numpy(x), dtype=np.float64)
    if x.ndim != 3 or x.shape[1] < 1:
        raise ValueError(f"x has shape {x.shape}; expected (B, T, D) with T >= 1")
    cells = step_cells(rnn)
    lstm = _is_lstm(cells)
    B, T, D = x.shape
    L, H = len(cells), cells[0].hidden_size
    dy_last = np.asarray(backend.to_numpy(dy_last), dtype=np.float64)
    if dy_last.shape != (B, H):
        raise ValueError(f"dy_last has shape {dy_last.shape}; expected (B, H) = ({B}, {H})")
    run_cells(cells, x)
    dh_all = np.zeros((L, T, B, H))
    dc_all = np.zeros((L, T, B, H)) if lstm else None
    dx_all = np.zeros((T, B, D))
    carried = [(np.zeros((B, H)), np.zeros((B, H))) for _ in cells]  # from step t+1 into state t
    for t in range(T - 1, -1, -1):
        from_above = dy_last if t == T - 1 else np.zeros((B, H))
        for l in range(L - 1, -1, -1):
            dh = from_above + carried[l][0]
            dh_all[l, t] = dh
            if lstm:
                dc_all[l, t] = carried[l][1]
                dx, (dh_prev, dc_prev) = cells[l].backward((dh, carried[l][1]))
                carried[l] = (dh_prev, dc_prev)
            else:
                dx, dh_prev = cells[l].backward(dh)
                carried[l] = (dh_prev, None)
            from_above = dx
        dx_all[t] = from_above
    return GradientFlow(dh_all, dc_all, dx_all)


# ----------------------------------------------------------------------------- Jacobians
@dataclass
class JacobianSpectrum:
    """Largest singular values of the state Jacobians of one layer.

    step: (T, B) ``sigma_max(ds_t/ds_{t-1})`` for steps t = 1..T.
    product_log10: (T, B) ``log10 sigma_max(ds_T/ds_{t-1})`` (the product ``J_T ... J_t``),
    for t = 1..T; kept as a log so long products neither overflow nor underflow.
    The state ``s`` is ``h``, or ``(h, c)`` for the LSTM.
    """

    step: np.ndarray
    product_log10: np.ndarray


def jacobian_spectrum(rnn, x, layer: int = -1) -> JacobianSpectrum:
    """Per-step and accumulated largest singular values of ``ds_t/ds_{t-1}`` in ``layer``.

    x: (B, T, D). Each ``J_t`` (S x S, S = H or 2H) is built by the cell's own backward:
    the step is repeated S times along the batch and back-propagated with the identity's
    rows as upstream gradients, so row i of the result is ``d s_t[i] / d s_{t-1}``.
    """
    x = np.asarray(backend.to_numpy(x), dtype=np.float64)
    cells = step_cells(rnn)
    lstm = _is_lstm(cells)
    inputs, states, _ = run_cells(cells, x)
    layer = layer % len(cells)
    B, T, _ = x.shape
    H = cells[layer].hidden_size
    S = 2 * H if lstm else H
    jac_cell = step_cells(rnn)[layer]  # a fresh cell: the stepped ones hold their caches
    step = np.empty((T, B))
    jacobians = np.empty((T, B, S, S))
    eye = np.tile(np.eye(S), (B, 1))  # (B*S, S)
    for t in range(T):
        inp = np.repeat(inputs[layer][t], S, axis=0)
        if lstm:
            h, c = (np.repeat(s, S, axis=0) for s in states[layer][t])
            jac_cell.forward(inp, (h, c))
            _, (dh, dc) = jac_cell.backward((eye[:, :H].copy(), eye[:, H:].copy()))
            J = np.concatenate([dh, dc], axis=1)
        else:
            jac_cell.forward(inp, np.repeat(states[layer][t], S, axis=0))
            _, J = jac_cell.backward(eye.copy())
        jacobians[t] = J.reshape(B, S, S)
        step[t] = np.linalg.norm(jacobians[t], ord=2, axis=(1, 2))
    product_log10 = np.empty((T, B))
    P, log_scale = np.tile(np.eye(S), (B, 1, 1)), np.zeros(B)
    for t in range(T - 1, -1, -1):
        P = P @ jacobians[t]
        s = np.linalg.norm(P, ord=2, axis=(1, 2))
        safe = np.where(s > 0, s, 1.0)
        log_scale = log_scale + np.log10(np.where(s > 0, s, 1e-300))
        product_log10[t] = log_scale
        P = P / safe[:, None, None]  # renormalise; the scale lives in log_scale
    return JacobianSpectrum(step, product_log10)


# ----------------------------------------------------------------------------- language models
def language_model_gradient_flow(model, ids, targets) -> GradientFlow:
    """Gradient flow of a language model's last prediction.

    model: anything with ``encoder`` (Embedding), ``rnn`` (unidirectional recurrent stack)
    and ``decoder`` (Linear) — rnnkit's LanguageModel, PyTorch's word_language_model layout.
    ids, targets: (B, T) ints. ``L_T = sum_b CE(decoder(h^top_T[b]), targets[b, T])``, so
    ``dL_T/dy_T = (softmax(logits_T) - onehot(target_T)) W_dec``; ``dx`` is the gradient of
    the embeddings.
    """
    ids = np.asarray(backend.to_numpy(ids))
    targets = np.asarray(backend.to_numpy(targets))
    if ids.ndim != 2 or ids.shape != targets.shape:
        raise ValueError(f"ids {ids.shape} and targets {targets.shape}; expected the same (B, T)")
    x = backend.to_numpy(model.encoder.params["weight"]).astype(np.float64)[ids]
    cells = step_cells(model.rnn)
    _, _, h_T = run_cells(cells, x)
    W = backend.to_numpy(model.decoder.params["weight"]).astype(np.float64)
    logits = h_T @ W.T
    if "bias" in model.decoder.params:
        logits += backend.to_numpy(model.decoder.params["bias"]).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)  # log-sum-exp shift
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    rows = np.arange(len(ids))
    loss = float(-log_p[rows, targets[:, -1]].sum())
    dlogits = np.exp(log_p)
    dlogits[rows, targets[:, -1]] -= 1.0
    flow = hidden_state_gradients(model.rnn, x, dlogits @ W)
    flow.loss = loss
    return flow


class CharModel(Layer):
    """A small character model for the comparisons: ``encoder`` -> ``rnn`` -> ``decoder``.

    cell: "rnn" | "lstm" | "gru"; nonlinearity (vanilla RNN): "tanh" | "sigmoid" | "relu"
    (sigmoid uses :class:`ActivationRNN`). Attribute names follow rnnkit's LanguageModel.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 64, embedding_size: int = 32, cell: str = "lstm",
                 nonlinearity: str = "tanh", seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.encoder = Embedding(vocab_size, embedding_size, rng=rng)
        if cell == "rnn" and nonlinearity == "sigmoid":
            self.rnn = ActivationRNN(embedding_size, hidden_size, "sigmoid", rng=rng)
        elif cell == "rnn":
            self.rnn = RNN(embedding_size, hidden_size, nonlinearity=nonlinearity, rng=rng)
        else:
            self.rnn = {"lstm": LSTM, "gru": GRU}[cell](embedding_size, hidden_size, rng=rng)
        self.decoder = Linear(hidden_size, vocab_size, rng=rng)
        self.criterion = SoftmaxCrossEntropy()

    def loss(self, ids, targets) -> float:
        y, _ = self.rnn.forward(self.encoder.forward(ids))
        return self.criterion.forward(self.decoder.forward(y), targets)

    def backward(self) -> None:
        self.encoder.backward(self.rnn.backward(self.decoder.backward(self.criterion.backward())))


# ----------------------------------------------------------------------------- experiment
VARIANTS = {
    "cells": [("RNN (tanh)", "rnn", "tanh"), ("LSTM", "lstm", "tanh"), ("GRU", "gru", "tanh")],
    "activations": [("tanh", "rnn", "tanh"), ("sigmoid", "rnn", "sigmoid"), ("relu", "rnn", "relu")],
}
CSV_FIELDS = ["comparison", "variant", "stage", "step", "steps_before_T", "grad_h_norm", "grad_c_norm",
              "grad_x_norm", "jacobian_sigma_max", "product_log10_sigma_max", "loss_T"]


def measure(model, ids, targets) -> dict:
    """Every curve of one model on one batch: norms of dh/dc/dx, Jacobian sigma (per step and product)."""
    flow = language_model_gradient_flow(model, ids, targets)
    spectrum = jacobian_spectrum(model.rnn, backend.to_numpy(model.encoder.params["weight"])[ids])
    return {"h": flow.norms("h"), "c": flow.norms("c"), "x": flow.norms("x"), "sigma": spectrum.step.mean(axis=1),
            "product_log10": spectrum.product_log10.mean(axis=1), "loss": flow.loss / len(ids)}


def corpus_ids(text: str) -> tuple[np.ndarray, list[str]]:
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    return np.array([index[ch] for ch in text], dtype=np.int64), chars


def train_char_model(model, data: np.ndarray, steps: int, batch: int = 32, seq_len: int = 64, lr: float = 3e-3,
                     clip: float = 5.0, seed: int = 0, log=print) -> list[float]:
    """Adam on random windows of ``data``, gradient norm clipped at ``clip``; returns the losses."""
    from ..optim import Adam, clip_grad_norm

    rng = np.random.default_rng(seed)
    opt, losses = Adam(model, lr=lr), []
    for step in range(steps):
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch)
        window = np.stack([data[s : s + seq_len + 1] for s in starts])
        opt.zero_grad()
        losses.append(model.loss(window[:, :-1], window[:, 1:]))
        model.backward()
        clip_grad_norm(model, clip)
        opt.step()
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"    step {step + 1}/{steps}  loss {np.mean(losses[-20:]):.3f}")
    return losses


def compare(comparison: str, text: str, train_steps: int = 300, seq_len: int = 100, batch: int = 16,
            hidden_size: int = 64, seed: int = 0, log=print) -> list[dict]:
    """Measure every variant of ``comparison`` ("cells" | "activations") at init and after training.

    Trains each on the first 90% of ``text`` and measures on windows of the last 10%.
    Returns CSV rows (see ``CSV_FIELDS``).
    """
    data, chars = corpus_ids(text)
    split = int(0.9 * len(data))
    rng = np.random.default_rng(seed + 1)
    starts = rng.integers(split, len(data) - seq_len - 1, size=batch)
    window = np.stack([data[s : s + seq_len + 1] for s in starts])
    ids, targets = window[:, :-1], window[:, 1:]
    rows = []
    for label, cell, nonlinearity in VARIANTS[comparison]:
        model = CharModel(len(chars), hidden_size, cell=cell, nonlinearity=nonlinearity, seed=seed)
        stages = [("init", 0), ("trained", train_steps)] if train_steps else [("init", 0)]
        for stage, steps in stages:
            if steps:
                log(f"  training {label} for {steps} steps")
                t0 = time.perf_counter()
                train_char_model(model, data[:split], steps, seed=seed, log=log)
                log(f"    {time.perf_counter() - t0:.1f} s")
            m = measure(model, ids, targets)
            for t in range(seq_len):
                rows.append({"comparison": comparison, "variant": label, "stage": stage, "step": t + 1,
                             "steps_before_T": seq_len - 1 - t, "grad_h_norm": m["h"][t], "grad_c_norm": m["c"][t],
                             "grad_x_norm": m["x"][t], "jacobian_sigma_max": m["sigma"][t],
                             "product_log10_sigma_max": m["product_log10"][t], "loss_T": m["loss"]})
    return rows


def write_csv(path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot(rows: list[dict], path, title: str) -> Path:
    """One figure: rows = stages (init, trained); columns = ||dL_T/dh_t||, ||dL_T/dx_t||,
    sigma_max(J_t), sigma_max(J_T...J_t); x axis = steps before T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    panels = [("grad_h_norm", r"$\|\partial L_T/\partial h_t\|$", True),
              ("grad_x_norm", r"$\|\partial L_T/\partial x_t\|$", True),
              ("jacobian_sigma_max", r"$\sigma_{max}(\partial s_t/\partial s_{t-1})$", False),
              ("product_log10_sigma_max", r"$\log_{10}\sigma_{max}(\partial s_T/\partial s_{t-1})$", False)]
    fig, axes = plt.subplots(len(stages), len(panels), figsize=(4.2 * len(panels), 3.4 * len(stages)), squeeze=False)
    for i, stage in enumerate(stages):
        for j, (key, label, log_y) in enumerate(panels):
            ax = axes[i, j]
            for variant in variants:
                pts = [(r["steps_before_T"], r[key]) for r in rows if r["stage"] == stage and r["variant"] == variant]
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=variant)
            if log_y:
                ax.set_yscale("log")
            ax.set_title(f"{label} ({stage})", fontsize=10)
            ax.set_xlabel("steps before T  (T - t)")
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- command line
def _load_text(args) -> str:
    if args.text:
        from ..data import read_text

        return read_text(args.text)
    from ..data import bundled_text

    return bundled_text("tinyshakespeare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Norms of dL_T/dh_t and dL_T/dx_t for every step t before T (exact BPTT), and the "
                          "largest singular values of the step Jacobians; writes CSV and PNG.")
    parser.add_argument("--checkpoint", help="a saved language model (encoder/rnn/decoder); "
                        "default: compare fresh models (see --compare)")
    parser.add_argument("--compare", choices=["cells", "activations", "both"], default="both",
                        help="without --checkpoint: RNN/LSTM/GRU, or tanh/sigmoid/relu vanilla RNNs")
    parser.add_argument("--text", help="UTF-8 text file (default: the bundled tiny Shakespeare)")
    parser.add_argument("--seq-len", type=int, default=100, help="T, steps measured back from the last")
    parser.add_argument("--batch", type=int, default=16, help="sequences averaged over")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=300, help="Adam steps before the 'trained' measurement "
                        "(0: at initialisation only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gradflow", help="output directory")


def run(args) -> int:
    out = Path(args.out)
    if args.seq_len < 1:
        raise SystemExit(f"--seq-len {args.seq_len}; need T >= 1")
    for flag, value, least in (("--batch", args.batch, 1), ("--hidden-size", args.hidden_size, 1),
                               ("--train-steps", args.train_steps, 0)):
        if value < least:
            raise SystemExit(f"{flag} {value}; expected an integer >= {least}")
    if args.checkpoint:
        return _run_checkpoint(args, out)
    text = _load_text(args)
    for comparison in (["cells", "activations"] if args.compare == "both" else [args.compare]):
        print(f"gradflow: {comparison}")
        rows = compare(comparison, text, args.train_steps, args.seq_len, args.batch, args.hidden_size, args.seed)
        csv_path = write_csv(out / f"gradflow_{comparison}.csv", rows)
        title = {"cells": "Gradient flow through time: RNN vs LSTM vs GRU",
                 "activations": "Gradient flow through time: vanilla RNN, tanh vs sigmoid vs relu"}[comparison]
        _plot_beside(csv_path, rows, f"{title} (char model, H={args.hidden_size}, T={args.seq_len}, "
                     f"{args.train_steps} training steps)")
    return 0


def _plot_beside(csv_path: Path, rows: list[dict], title: str) -> None:
    """The PNG beside its CSV, and a line naming both; without matplotlib the CSV alone, said so."""
    if not _have_matplotlib():
        print(f"wrote {csv_path}; note: matplotlib is not installed, so no PNG (pip install matplotlib)")
        return
    png = plot(rows, csv_path.with_suffix(".png"), title)
    print(f"wrote {csv_path} and {png}")


def _run_checkpoint(args, out: Path) -> int:
    from ..models.base import Model

    model = Model.load(args.checkpoint)
    model.eval()
    from ..data import Vocab, tokenize

    vocab = getattr(model, "vocab", None)
    if not all(hasattr(model, n) for n in ("encoder", "rnn", "decoder")) or vocab is None:
        raise SystemExit(f"{args.checkpoint}: a {type(model).__name__} with no encoder/rnn/decoder and vocabulary; "
                         "gradflow reads language models")
    vocab = Vocab.from_dict(vocab) if isinstance(vocab, dict) else vocab

    level = getattr(getattr(model, "config", None), "level", "char")
    data = np.asarray(vocab.encode(tokenize(_load_text(args), level)), dtype=np.int64)
    if len(data) < args.seq_len + 2:
        raise SystemExit(f"text has {len(data)} tokens; need at least seq_len + 2 = {args.seq_len + 2}")
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, len(data) - args.seq_len - 1, size=args.batch)
    window = np.stack([data[s : s + args.seq_len + 1] for s in starts])
    m = measure(model, window[:, :-1], window[:, 1:])
    name = Path(args.checkpoint).stem
    rows = [{"comparison": "checkpoint", "variant": name, "stage": "checkpoint", "step": t + 1,
             "steps_before_T": args.seq_len - 1 - t, "grad_h_norm": m["h"][t], "grad_c_norm": m["c"][t],
             "grad_x_norm": m["x"][t], "jacobian_sigma_max": m["sigma"][t],
             "product_log10_sigma_max": m["product_log10"][t], "loss_T": m["loss"]} for t in range(args.seq_len)]
    _plot_beside(write_csv(out / f"gradflow_{name}.csv", rows), rows, f"Gradient flow through time: {name}")
    return 0


def main(argv=None) -> int:
    """``python -m rnnkit.analysis.gradflow``: the same as ``rnnkit gradflow``."""
    parser = argparse.ArgumentParser(prog="rnnkit gradflow")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
