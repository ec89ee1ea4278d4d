"""Long-range memory tasks: does a cell *learn* to carry information across a delay?

Gradient norms (``gradflow``) say how much signal reaches an earlier step; these tasks
say whether training actually uses it.

- **Copy problem** (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): the first
  ``num_symbols`` steps show symbols from an alphabet of ``alphabet``; then ``delay``
  blank steps, the last of them a "go" marker; then the model must output the symbols
  in order. Inputs one-hot, ``T = num_symbols + delay + num_symbols``; the loss (cross-
  entropy) counts only the recall steps. Chance accuracy is ``1 / alphabet``.
- **Adding problem** (Hochreiter & Schmidhuber 1997; Le et al. 2015): two channels, a
  random value in [0, 1) and a marker that is 1 at two steps (one in each half); the
  target at the last step is the sum of the two marked values. Predicting 1.0 always
  gives MSE 1/6 ≈ 0.167.

:func:`train_memory_task` trains a recurrent layer + linear read-out on freshly sampled
batches, evaluates on a fixed held-out batch, and reports when (if) it was solved.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..layers import GRU, LSTM, RNN, Linear, MSELoss, SoftmaxCrossEntropy
from ..layers.base import Layer
from ..optim import SGD, Adam, clip_grad_norm

ADDING_BASELINE_MSE = 1.0 / 6.0


# ----------------------------------------------------------------------------- data
@dataclass
class CopyBatch:
    x: np.ndarray  # (B, T, alphabet + 2) one-hot: symbols 0..A-1, blank A, go A+1
    targets: np.ndarray  # (B, T) symbol ids (0 where not counted)
    mask: np.ndarray  # (B, T) bool, True at the recall steps


def copy_problem(batch: int, delay: int, num_symbols: int = 3, alphabet: int = 8, rng=None,
                 dtype=np.float32, distractors: bool = False) -> CopyBatch:
    """A batch of the copy problem with ``delay`` steps between the last symbol shown and the first recalled.

    Steps ``0..K-1`` show the symbols, ``K..K+delay-1`` are blank except the last ("go"),
    steps ``K+delay..2K+delay-1`` are blank inputs where the symbols must be output.
    ``distractors``: the delay steps show random symbols of a second alphabet instead of
    blanks (inputs ``2 * alphabet + 2`` wide), so the memory must also ignore what it sees.
    """
    if delay < 1 or num_symbols < 1 or alphabet < 2:
        raise ValueError(f"delay {delay}, num_symbols {num_symbols}, alphabet {alphabet}; "
                         "need delay >= 1, num_symbols >= 1, alphabet >= 2")
    rng = rng if rng is not None else np.random.default_rng()
    K, A = num_symbols, alphabet
    T = 2 * K + delay
    symbols = rng.integers(0, A, size=(batch, K))
    ids = np.full((batch, T), A)  # blank
    ids[:, :K] = symbols
    ids[:, K + delay - 1] = A + 1  # go
    width = A + 2
    if distractors:
        width += A
        noise = A + 2 + rng.integers(0, A, size=(batch, delay - 1))
        ids[:, K : K + delay - 1] = noise
    x = np.eye(width, dtype=dtype)[ids]
    targets = np.zeros((batch, T), dtype=np.int64)
    targets[:, K + delay :] = symbols
    mask = np.zeros((batch, T), dtype=bool)
    mask[:, K + delay :] = True
    return CopyBatch(x, targets, mask)


def copy_input_size(alphabet: int, distractors: bool = False) -> int:
    return 2 * alphabet + 2 if distractors else alphabet + 2


def adding_problem(batch: int, length: int, rng=None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """x (B, T, 2): [value in [0, 1), marker]; y (B, 1): the sum of the two marked values.

    One marker in the first half, one in the second, so the first must be held about T/2 steps.
    """
    if length < 2:
        raise ValueError(f"length {length}; need T >= 2")
    rng = rng if rng is not None else np.random.default_rng()
    values = rng.random((batch, length))
    first = rng.integers(0, length // 2, size=batch)
    second = rng.integers(length // 2, length, size=batch)
    marker = np.zeros((batch, length))
    rows = np.arange(batch)
    marker[rows, first] = marker[rows, second] = 1.0
    x = np.stack([values, marker], axis=-1).astype(dtype)
    y = (values[rows, first] + values[rows, second])[:, None].astype(dtype)
    return x, y


# ----------------------------------------------------------------------------- model
class MemoryModel(Layer):
    """A recurrent layer and a linear read-out.

    task "copy": logits at every step, cross-entropy on the recall steps;
    task "adding": one number from the last step's hidden state, MSE.
    cell: "rnn" (tanh), "rnn-relu", "lstm", "gru". ``recurrent_scale``: if set, ``weight_hh``
    becomes ``scale * orthogonal`` (spectral radius = scale), to make a vanilla RNN explode.
    """

    def __init__(self, task: str, cell: str, input_size: int, hidden_size: int, output_size: int, seed: int = 0,
                 recurrent_scale: float | None = None):
        super().__init__()
        rng = np.random.default_rng(seed)
        if cell in ("rnn", "rnn-relu"):
            self.rnn = RNN(input_size, hidden_size, nonlinearity="relu" if cell == "rnn-relu" else "tanh", rng=rng)
        elif cell in ("lstm", "gru"):
            self.rnn = {"lstm": LSTM, "gru": GRU}[cell](input_size, hidden_size, rng=rng)
        else:
            raise ValueError(f"cell {cell!r}; expected 'rnn', 'rnn-relu', 'lstm' or 'gru'")
        if task not in ("copy", "adding"):
            raise ValueError(f"task {task!r}; expected 'copy' or 'adding'")
        if recurrent_scale is not None:
            w = self.rnn.params["weight_hh_l0"]
            blocks = w.shape[0] // hidden_size
            for k in range(blocks):
                q, _ = np.linalg.qr(rng.standard_normal((hidden_size, hidden_size)))
                w[k * hidden_size : (k + 1) * hidden_size] = recurrent_scale * q
        self.task = task
        self.head = Linear(hidden_size, output_size, rng=rng)
        self.criterion = SoftmaxCrossEntropy() if task == "copy" else MSELoss()
        self._shape = None

    def predict(self, x):
        y, _ = self.rnn.forward(x)
        if self.task == "adding":
            self._shape = y.shape
            return self.head.forward(y[:, -1])
        return self.head.forward(y)

    def loss(self, x, targets, mask=None) -> float:
        out = self.predict(x)
        return self.criterion.forward(out, targets, mask)

    def backward(self) -> None:
        dout = self.head.backward(self.criterion.backward())
        if self.task == "adding":
            dy = np.zeros(self._shape, dtype=dout.dtype)
            dy[:, -1] = dout
            dout = dy
        self.rnn.backward(dout)


# ----------------------------------------------------------------------------- training
@dataclass
class MemoryRun:
    task: str
    cell: str
    delay: int
    steps: int  # steps run
    solved_at: int | None  # first evaluation step meeting the criterion, or None
    final_metric: float  # recall accuracy (copy) or held-out MSE (adding)
    best_metric: float
    wall_s: float
    nonfinite_steps: int = 0  # steps whose loss or gradient norm was NaN/inf
    max_grad_norm: float = 0.0
    history: list = field(default_factory=list)  # (step, mean train loss since last, held-out metric)
    losses: list = field(default_factory=list)  # every step's training loss
    grad_norms: list = field(default_factory=list)  # every step's gradient norm before clipping


def _evaluate(model, task, held_out) -> float:
    if task == "copy":
        logits = model.predict(held_out.x)
        correct = (logits.argmax(-1) == held_out.targets) & held_out.mask
        return float(correct.sum() / held_out.mask.sum())
    x, y = held_out
    pred = model.predict(x)
    return float(np.mean((pred - y) ** 2))


def _solved(task, metric, target) -> bool:
    return metric >= target if task == "copy" else metric <= target


def train_memory_task(task: str, cell: str, delay: int, steps: int = 1000, batch: int = 32, hidden_size: int = 32,
                      lr: float = 1e-2, optimizer: str = "adam", clip: float | None = 1.0, num_symbols: int = 3,
                      alphabet: int = 8, target: float | None = None, eval_every: int = 50, stop_when_solved: bool = True,
                      recurrent_scale: float | None = None, distractors: bool = False, seed: int = 0) -> MemoryRun:
    """Train a fresh :class:`MemoryModel` on ``task`` with ``delay`` for at most ``steps`` steps.

    copy: ``delay`` blank steps; solved when held-out recall accuracy >= ``target`` (0.95).
    adding: sequence length ``delay``; solved when held-out MSE <= ``target`` (0.01, 6% of
    the 1/6 baseline). ``clip``: gradient-norm clipping (None: none). A run whose loss or
    gradient turns NaN/inf skips that update and counts it in ``nonfinite_steps``.
    """
    rng = np.random.default_rng(seed + 1)
    if task == "copy":
        make = lambda n: copy_problem(n, delay, num_symbols, alphabet, rng, distractors=distractors)  # noqa: E731
        model = MemoryModel(task, cell, copy_input_size(alphabet, distractors), hidden_size, alphabet, seed,
                            recurrent_scale)
        target = 0.95 if target is None else target
    else:
        make = lambda n: adding_problem(n, delay, rng)  # noqa: E731
        model = MemoryModel(task, cell, 2, hidden_size, 1, seed, recurrent_scale)
        target = 0.01 if target is None else target
    held_out = make(256)
    opt = Adam(model, lr=lr) if optimizer == "adam" else SGD(model, lr=lr)
    run = MemoryRun(task, cell, delay, 0, None, float("nan"), -math.inf if task == "copy" else math.inf, 0.0)
    t0 = time.perf_counter()
    losses = run.losses
    for step in range(1, steps + 1):
        data = make(batch)
        opt.zero_grad()
        with np.errstate(all="ignore"):  # an exploding run is part of the experiment
            loss = model.loss(data.x, data.targets, data.mask) if task == "copy" else model.loss(*data)
            model.backward()
            norm = clip_grad_norm(model, clip) if clip else clip_grad_norm(model, math.inf)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            run.nonfinite_steps += 1
        else:
            opt.step()
            run.max_grad_norm = max(run.max_grad_norm, norm)
        losses.append(float(loss))
        run.grad_norms.append(float(norm))
        run.steps = step
        if step % eval_every == 0 or step == steps:
            with np.errstate(all="ignore"):
                metric = _evaluate(model, task, held_out)
            run.history.append((step, float(np.mean(losses[-eval_every:])), metric))
            run.final_metric = metric
            if math.isfinite(metric):
                run.best_metric = max(run.best_metric, metric) if task == "copy" else min(run.best_metric, metric)
            if run.solved_at is None and _solved(task, metric, target):
                run.solved_at = step
                if stop_when_solved:
                    break
    run.wall_s = time.perf_counter() - t0
    return run
