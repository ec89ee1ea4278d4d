"""The training loop, shared by every task.

``Trainer.fit`` reads top to bottom. A fresh run first calls ``task.before_fit(trainer)``
if the task has one (e.g. pretraining). For each epoch: ``task.start_epoch`` (a language
model resets its carried state), then for each batch: forward (``task.train_loss``),
backward, check for NaN/inf, clip (the norm before clipping is logged), optimizer step,
log (and every ``eval_every`` steps a validation row); then evaluate the validation split,
step the learning-rate schedule on the main metric, checkpoint (last + best), early-stop. At the end the best weights are evaluated
on the test split. The trainer knows nothing of language models or seq2seq: the task does
(:mod:`rnnkit.train.task`).

Exact resume. A checkpoint (``run_dir/checkpoints/ckpt-<step>.safetensors``, written
atomically) holds the weights, the optimizer's and schedule's state, the counters (epoch,
batches done in it, step, the epoch's running loss sums, best metric, patience), every
random stream (``numpy.random.Generator`` state of the task and of every layer, e.g.
dropout) and, mid-epoch (always, for a task with ``carries_state_across_epochs``), the
model's carried recurrent state (``model.carried_state()``).
``fit(resume=True)`` restores all of it and skips the batches of the current epoch that
were already done, so the run continues as if never stopped: the same data order, random
draws and learning rates, hence the same metrics (and a run early stopping ended stays ended). This needs
``task.train_batches(epoch)`` to depend only on the seed and the epoch (all rnnkit tasks draw
their order from ``default_rng([seed, epoch])``). Checkpoints are written at each epoch end, every
``checkpoint_every`` steps, and when a step or time budget stops the run (mid-epoch: the
run is evaluated and may update ``best.safetensors``, but the schedule and the early-stopping
patience move only at complete epochs, so a resumed run's still match). The schedule's state is
its progress only; its parameters come from the resumed run's config, and a note names those that
changed (e.g. a cosine's total_steps after more ``epochs``: see :class:`rnnkit.optim.CosineLR`).

What a resume may change. A resumed run keeps its model: before anything is loaded, every field
of the model's config class (``type(model).config_class``, e.g. ``LanguageModelConfig``: the
layers, sizes, cell, biases, tied weights, dropout) is compared with the checkpoint's, and the
checkpoint's weight names and shapes with the model's; any difference is a ValueError naming each
field and both values (start a new run_dir to change them). The data's batching stays too when
the checkpoint was written mid-epoch (or holds a carried state, ``batching="ring"``): a changed
``seed``, ``batch_size``, ``bptt`` or ``batching`` is refused, as it changes which batches the
resumed epoch skips. At an epoch end without a carried state they may change: the following
epochs are batched and ordered by the new values (``default_rng([seed, epoch])`` with the new
seed), while every random stream (dropout, ...) goes on from the checkpoint's state; a note says
so. The trainer's own settings may change freely (``epochs``, ``max_steps``, ``time_budget``, the
schedule's parameters (with a note), ``early_stopping``, ``log_every``, ``eval_every``,
``progress``, ``plot``, ...). ``config.json`` is rewritten only once these checks have passed.

Divergence. A non-finite loss or gradient stops the step before the weights change, with
a :class:`DivergenceError` naming the step and the parameters involved;
``on_divergence="rollback"`` instead reloads the last checkpoint's weights and optimizer
state, halves the learning rate, resets the carried state and goes on with the next batch
(at most ``max_rollbacks`` times).

Weight averaging. ``ema_decay`` > 0 keeps an exponential moving average of the weights,
updated after every optimizer step (:class:`WeightAverage`). The averaged weights are the
model: they are validated (so early stopping and ``best.safetensors`` follow them), saved
as the model's weights in every checkpoint and tested; the raw weights that training goes
on from are saved beside them (``optim.raw.*``) for resume and rollback.

Files in ``run_dir``: ``config.json`` (resolved config), ``metrics.jsonl`` (every logged
row), ``metrics.csv`` (one row per epoch), ``loss.png`` (needs matplotlib), ``result.json`` (``best_<main
metric>``, ``monitor``: the loss it follows, which is ``train_loss`` when the task has no validation part, and
the test metrics).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backend, optim
from ..checkpoint import CheckpointManager, load_checkpoint, write_bytes_atomic, write_json_atomic, write_text_atomic
from ..models.base import TRAINER_PREFIX

CARRY_PREFIX = TRAINER_PREFIX + "carry."  # the model's carried state inside a mid-epoch checkpoint
RAW_PREFIX = TRAINER_PREFIX + "raw."  # the raw (not averaged) weights, when the run averages its weights


class DivergenceError(RuntimeError):
    """The loss or a gradient became NaN/inf; the weights were left as they were."""


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata={"help": "passes over the training data"})
    optimizer: str = field(default="adam", metadata={"help": "sgd | adam | adamw"})
    lr: float = field(default=2e-3, metadata={"help": "learning rate"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum (SGD)"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 (sgd, adam) or decoupled (adamw) weight decay"})
    clip: float = field(default=5.0, metadata={"help": "clip the global gradient norm to this (0: off)"})
    schedule: str = field(default="none", metadata={
        "help": "learning-rate schedule: none | plateau | step | cosine (over epochs x batches, or max_steps). "
                "A resumed run keeps the schedule's progress and takes its parameters from this config: a cosine "
                "extended with more epochs/max_steps is recomputed over the new total from the step reached, so "
                "its lr jumps up to the longer curve's value there (a note says so)"})
    lr_factor: float = field(default=0.25, metadata={"help": "plateau: multiply lr by this (0 < f < 1) when "
                                                             "validation stalls; step: multiply every lr_step_size "
                                                             "epochs (> 0)"})
    lr_patience: int = field(default=0, metadata={"help": "plateau: epochs without improvement before a decay"})
    lr_step_size: int = field(default=1, metadata={"help": "step: epochs between decays"})
    warmup_steps: int = field(default=0, metadata={"help": "cosine: linear warm-up steps"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the learning rate (plateau, cosine)"})
    early_stopping: int = field(default=0, metadata={"help": "stop after this many epochs without improvement (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of every random stream (init, data order, dropout)"})
    device: str = field(default="cpu", metadata={
        "help": "cpu | cuda: where the model trains (cuda needs CuPy and a GPU; checkpoints hold host "
                "arrays either way)"})
    run_dir: str = field(default="runs/latest", metadata={"help": "where checkpoints, metrics and figures go"})
    keep_checkpoints: int = field(default=2, metadata={"help": "numbered checkpoints to keep (plus best)"})
    checkpoint_every: int = field(default=0, metadata={"help": "also checkpoint every this many steps (0: epoch ends only)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps in all (0: no limit)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop training after this many seconds (0: no limit)"})
    log_every: int = field(default=50, metadata={"help": "write a train metrics row every this many steps"})
    on_divergence: str = field(default="stop", metadata={"help": "NaN/inf loss or gradient: stop | rollback (to the "
                                                                 "last checkpoint, halving lr)"})
    max_rollbacks: int = field(default=3, metadata={"help": "rollback: give up after this many"})
    eval_every: int = field(default=0, metadata={
        "help": "also evaluate on the validation split every this many optimizer steps (0: at epoch ends only); "
                "logged and plotted, while the best checkpoint, early stopping and the plateau schedule follow "
                "the epoch-end evaluations"})
    ema_decay: float = field(default=0.0, metadata={
        "help": "average the weights: an exponential moving average with this decay per optimizer step (0: off; "
                "0.998 averages over roughly the last 500 steps), bias-corrected so it starts at the first step's "
                "weights. The averaged weights are validated, early-stopped on, saved as the model and tested"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    plot: bool = field(default=True, metadata={"help": "draw run_dir/loss.png (needs matplotlib)"})
    eval_test: bool = field(default=True, metadata={"help": "evaluate the best weights on the test split at the end"})
    overwrite: bool = field(default=False, metadata={"help": "start afresh even if run_dir holds an earlier run's "
                                                             "files (checkpoints/, config.json, metrics.jsonl, "
                                                             "metrics.csv, result.json, loss.png: they are replaced)"})

    def __post_init__(self):
        choices = {"optimizer": ("sgd", "adam", "adamw"), "schedule": ("none", "plateau", "step", "cosine"),
                   "on_divergence": ("stop", "rollback"), "device": ("cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if self.epochs < 1:
            raise ValueError(f"epochs {self.epochs}; expected >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr {self.lr!r}; expected > 0 and finite")
        if not 0.0 <= self.momentum < 1.0:  # also refuses NaN
            raise ValueError(f"momentum {self.momentum!r}; expected 0 <= momentum < 1 (0: none)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay {self.weight_decay!r}; expected >= 0 and finite (0: none)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay}; expected 0 <= ema_decay < 1 (0: no weight averaging)")
        for name in ("max_steps", "checkpoint_every", "eval_every", "early_stopping", "max_rollbacks", "lr_patience",
                     "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}; expected >= 0")
        for name in ("keep_checkpoints", "log_every", "lr_step_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}; expected >= 1")
        if not (math.isfinite(self.time_budget) and self.time_budget >= 0):
            raise ValueError(f"time_budget {self.time_budget!r}; expected a finite number of seconds >= 0 (0: no limit)")
        if not self.clip >= 0:  # also refuses NaN
            raise ValueError(f"clip {self.clip!r}; expected >= 0 (0: no clipping)")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise ValueError(f"min_lr {self.min_lr!r}; expected >= 0 and finite")
        if not 0 < self.lr_factor < math.inf:
            raise ValueError(f"lr_factor {self.lr_factor!r}; expected > 0 (the lr is multiplied by it)")
        if self.schedule == "plateau" and not self.lr_factor < 1:
            raise ValueError(f"lr_factor {self.lr_factor!r} with schedule 'plateau'; expected 0 < lr_factor < 1 "
                             "(a plateau decays the lr)")


def _plain_json(value):
    """``value`` as JSON would give it back (tuples -> lists), for comparing with a checkpoint's header."""
    return json.loads(json.dumps(value))


def _show(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def make_optimizer(model, config: TrainConfig):
    if config.optimizer == "sgd":
        return optim.SGD(model, config.lr, momentum=config.momentum, nesterov=config.nesterov,
                         weight_decay=config.weight_decay)
    cls = optim.Adam if config.optimizer == "adam" else optim.AdamW
    return cls(model, config.lr, weight_decay=config.weight_decay)


def make_schedule(opt, config: TrainConfig, steps_per_epoch: int):
    """None, or a schedule stepped per epoch (plateau, step) or per optimizer step (cosine)."""
    if config.schedule == "plateau":
        return optim.ReduceLROnPlateau(opt, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr)
    if config.schedule == "step":
        return optim.StepLR(opt, step_size=config.lr_step_size, gamma=config.lr_factor)
    if config.schedule == "cosine":
        total = config.max_steps or config.epochs * steps_per_epoch
        return optim.CosineLR(opt, total_steps=max(1, total), warmup_steps=config.warmup_steps, min_lr=config.min_lr)
    return None


class WeightAverage:
    """Bias-corrected exponential moving average of a model's parameters.

    After step t: ``avg_t = avg_{t-1} + (1 - d) / (1 - d**t) * (p_t - avg_{t-1})``, which is
    ``sum_i d**(t-i) p_i / sum_i d**(t-i)``: the EMA normalised by its weights, so it neither
    starts from zero nor leans on the initial weights (``avg_1 = p_1``).
    """

    def __init__(self, model, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay {decay}; expected 0 < decay < 1")
        self.model, self.decay, self.count = model, float(decay), 0
        self.weights = {name: p.copy() for name, p, _ in model.named_parameters()}

    def update(self) -> None:
        """Fold the model's current weights in (after an optimizer step)."""
        self.count += 1
        rate = (1.0 - self.decay) / (1.0 - self.decay ** self.count)
        for name, p, _ in self.model.named_parameters():
            avg = self.weights[name]
            avg += rate * (p - avg)

    def load(self, weights: dict, count: int) -> None:
        """Restore a saved average (``weights``: name -> array) after ``count`` updates."""
        for name, avg in self.weights.items():
            avg[...] = backend.get_array_module(avg).asarray(weights[name], dtype=avg.dtype)
        self.count = int(count)

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; its own come back after."""
        own = {name: p.copy() for name, p, _ in self.model.named_parameters()}
        self.model.load_state_dict(self.weights)
        try:
            yield
        finally:
            self.model.load_state_dict(own)


def _to_gpu(task) -> None:
    """Move the task's model to the GPU, or say why it cannot go (before anything is built on it)."""
    if not getattr(task, "supports_cuda", False):  # a task must put its batches where its model is
        raise ValueError(f"device 'cuda' with the {getattr(task, 'name', type(task).__name__)!r} task, which "
                         "builds its batches on the host only (no supports_cuda): use device 'cpu'")
    if not backend.gpu_available():
        raise ValueError("device 'cuda': CuPy is not installed or sees no CUDA device "
                         "(pip install 'rnnkit[gpu]' on a machine with a GPU); use device 'cpu'")
    task.model.to(device="cuda")


def random_streams(task) -> list[np.random.Generator]:
    """Every Generator a run draws from: the task's (``task.rng``) and each layer's (dropout), in a fixed order."""
    streams = [g for g in (getattr(task, "rng", None),) if isinstance(g, np.random.Generator)]
    seen = {id(g) for g in streams}
    for module in task.model.modules():
        g = getattr(module, "rng", None)
        if isinstance(g, np.random.Generator) and id(g) not in seen:
            streams.append(g)
            seen.add(id(g))
    return streams


class Trainer:
    """Train ``task.model`` on ``task`` with ``config``; ``fit()`` returns the final metrics.

    ``task_config`` (the task's dataclass) is only recorded in ``config.json``.
    ``callbacks``: objects with optional ``on_step(trainer, row)`` (after each logged train
    row) and ``on_epoch_end(trainer, row)`` methods.
    """

    def __init__(self, task, config: TrainConfig, task_config=None, callbacks=()):
        self.task, self.config, self.task_config = task, config, task_config
        self.callbacks = list(callbacks)
        self.model = task.model
        if config.device == "cuda":
            _to_gpu(task)
        self.run_dir = Path(config.run_dir)
        self.optimizer = make_optimizer(self.model, config)
        self.schedule = make_schedule(self.optimizer, config, task.num_train_batches())
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep=config.keep_checkpoints)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.unit = getattr(task, "unit", "items")  # what train_loss counts: "tok" for a language model
        # counters; all of them go into every checkpoint
        self.epoch = 0  # the epoch in progress (= epochs completed, between epochs)
        self.batch_index = 0  # batches of the current epoch already done
        self.step = 0  # optimizer steps taken
        self.sum_loss = self.sum_count = 0.0  # running sums of the current epoch's train loss
        self.best = math.inf  # best main metric of any evaluation (best.safetensors holds those weights)
        self.best_complete = math.inf  # best of complete epochs only: early stopping counts against it
        self.bad_epochs = 0
        self.rollbacks = 0
        self.history: list[dict] = []
        self._carry = None  # carried state to restore once the resumed epoch has started
        self._started = self._plotted = time.perf_counter()

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg, task = self.config, self.task
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and self.resume()):
            self._start_fresh(resuming=resume)
            if hasattr(task, "before_fit"):  # e.g. the classifier's biLM pretraining; not redone on resume
                task.before_fit(self)
        self._write_config()
        self._started = time.perf_counter()
        stop_reason = self._patience_spent() or self._budget_spent()  # a resumed run that had stopped stays stopped
        noted = False  # the note that the training loss stands in for a missing validation part, once per fit
        while self.epoch < cfg.epochs and stop_reason is None:
            epoch, skip = self.epoch, self.batch_index
            task.start_epoch(epoch)
            self._restore_carry()
            self.model.train()
            bar = self._progress(epoch, skip)
            t0, items = time.perf_counter(), 0
            for index, batch in enumerate(task.train_batches(epoch)):
                if index < skip:  # resumed mid-epoch: done before the checkpoint
                    continue
                stop_reason = self._budget_spent()
                if stop_reason:
                    break
                self.batch_index = index + 1
                self.model.zero_grad()
                loss, count = task.train_loss(batch)
                task.backward()
                try:
                    norm = self._check_and_clip(loss)
                except DivergenceError as exc:
                    if cfg.on_divergence == "stop" or not self._rollback(exc):
                        raise
                    continue
                self.optimizer.step()
                if self.average is not None:
                    self.average.update()
                if cfg.schedule == "cosine":
                    self.schedule.step()
                self.step += 1
                self.sum_loss, self.sum_count = self.sum_loss + loss * count, self.sum_count + count
                items += count
                rate = items / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(self._postfix(loss, rate, norm), refresh=False)
                if self.step % cfg.log_every == 0:
                    self._log({"split": "train", "epoch": epoch, "step": self.step, "loss": loss,
                               "grad_norm": norm, "lr": self.optimizer.lr, f"{self.unit}_per_s": rate},
                              hook="on_step")
                if cfg.eval_every and self.step % cfg.eval_every == 0:  # before the checkpoint: see _read_history
                    self._evaluate_mid_epoch(epoch, bar)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
            if bar is not None:
                bar.close()
            complete = stop_reason is None
            seconds = time.perf_counter() - t0
            with self._averaged():
                metrics = {f"val_{k}": v for k, v in task.evaluate("valid").items()}
            current = metrics.get(task.main_metric)
            if current is None:  # no validation part (evaluate("valid") is {}): the training loss stands in
                current = self.sum_loss / max(self.sum_count, 1)
                if not noted:
                    print(f"note: the task has no validation part (no {task.main_metric}): the best checkpoint, "
                          "early stopping and the lr schedule follow the training loss "
                          "(result.json: monitor 'train_loss')", flush=True)
                    noted = True
            row = {"split": "epoch", "epoch": epoch, "step": self.step, "complete": complete,
                   "train_loss": self.sum_loss / max(self.sum_count, 1), "lr": self.optimizer.lr,
                   "seconds": seconds, f"{self.unit}_per_s": items / max(seconds, 1e-9), **metrics}
            self._log(row, hook="on_epoch_end")
            self._print_epoch(row)
            improved = current < self.best
            self.best = min(self.best, current)
            if complete:  # a stop mid-epoch leaves the schedule and the patience to the resumed run
                if cfg.schedule in ("plateau", "step"):
                    self.schedule.step(current)
                self.bad_epochs = 0 if current < self.best_complete else self.bad_epochs + 1
                self.best_complete = min(self.best_complete, current)
                self.epoch, self.batch_index, self.sum_loss, self.sum_count = epoch + 1, 0, 0.0, 0.0
            self.save(best=improved)
            if time.perf_counter() - self._plotted > 30:  # a figure costs ~0.5 s: not after every short epoch
                self._plot()
            if complete and (spent := self._patience_spent()):
                stop_reason = spent
            elif complete and self.epoch < cfg.epochs:
                stop_reason = self._budget_spent()
        if stop_reason:
            print(f"stopped: {stop_reason}")
        self._plot()
        return self._finish()

    def _finish(self) -> dict:
        """Test metrics of the best weights; result.json."""
        result = {"best_" + self.task.main_metric: self.best, "monitor": self._monitor(), "epochs": self.epoch,
                  "steps": self.step}
        if self.config.eval_test:
            best = self.checkpoints.best()
            if best is not None:
                self._load_weights(best)
            test = self.task.evaluate("test")
            if test:
                row = {"split": "test", "epoch": self.epoch, "step": self.step,
                       **{f"test_{k}": v for k, v in test.items()}}
                self._log(row)
                result.update(row)
                print("test: " + ", ".join(f"{k} {_show(v)}" for k, v in test.items()))
        write_json_atomic(self.run_dir / "result.json", result)
        return result

    def _monitor(self) -> str:
        """The loss that ``best`` follows: the main metric, or "train_loss" when the epochs were not validated."""
        epochs = [r for r in self.history if r["split"] == "epoch"]
        main = self.task.main_metric
        return main if not epochs or main in epochs[-1] else "train_loss"

    def _evaluate_mid_epoch(self, epoch: int, bar) -> None:
        """A logged validation row inside an epoch (``eval_every``); training goes on undisturbed:
        the tasks evaluate in eval mode with their own state (the carry is left alone) and draw
        no random numbers; train mode is restored here."""
        with self._averaged():
            metrics = {f"val_{k}": v for k, v in self.task.evaluate("valid").items()}
        self.model.train()
        self._log({"split": "eval", "epoch": epoch, "step": self.step, **metrics}, hook="on_eval")
        line = f"step {self.step} (epoch {epoch + 1}): " + ", ".join(f"{k} {_show(v)}" for k, v in metrics.items())
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)

    def _averaged(self):
        """A context in which the model holds the averaged weights (none: its own)."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def _patience_spent(self) -> str | None:
        """Early stopping's reason to stop, if the patience is used up (a larger early_stopping
        on resume lets a stopped run go on)."""
        cfg = self.config
        if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
            return f"no improvement of {self.task.main_metric} for {self.bad_epochs} epochs"
        return None

    def _budget_spent(self) -> str | None:
        cfg = self.config
        if cfg.max_steps and self.step >= cfg.max_steps:
            return f"max_steps {cfg.max_steps} reached"
        if cfg.time_budget and time.perf_counter() - self._started > cfg.time_budget:
            return f"time budget {cfg.time_budget:g}s reached"
        return None

    # -- one step's checks ---------------------------------------------------------------------
    def _where(self) -> str:
        return f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.batch_index})"

    def _non_finite(self, which: str) -> list[str]:
        """Names of parameters (which="param") or gradients (which="grad") holding NaN/inf."""
        bad = []
        for name, p, g in self.model.named_parameters():
            a = p if which == "param" else g
            if not bool(backend.get_array_module(a).isfinite(a).all()):
                bad.append(name)
        return bad

    def _check_and_clip(self, loss: float) -> float:
        """Clip; stop the step (DivergenceError) if the loss or any gradient is NaN/inf."""
        if not math.isfinite(loss):
            bad = self._non_finite("param")
            cause = f"non-finite weights in {', '.join(bad[:5])}" if bad else "weights finite: the forward overflowed"
            raise DivergenceError(f"{self._where()}: loss is {loss} ({cause}); weights left unchanged")
        norm = optim.clip_grad_norm(self.model, self.config.clip or None)
        if not math.isfinite(norm):
            bad = self._non_finite("grad")
            raise DivergenceError(f"{self._where()}: non-finite gradient in {', '.join(bad[:5]) or '?'} "
                                  f"(norm {norm}); weights left unchanged")
        return norm

    def _rollback(self, exc: DivergenceError) -> bool:
        """Reload the last checkpoint's weights and optimizer, halve lr, reset the carried state."""
        path = self.checkpoints.latest()
        if path is None or self.rollbacks >= self.config.max_rollbacks:
            print(f"{exc}; cannot roll back ({'no checkpoint yet' if path is None else 'too many rollbacks'})")
            return False
        self.rollbacks += 1
        lr = self.optimizer.lr * 0.5
        self._load_weights(path, with_optimizer=True)
        # The checkpoint's carried state is not the one to go on from: training goes on with the next
        # batch, not from the checkpoint's place in the data, and that state belongs to the checkpoint's
        # place. Like the live (perhaps non-finite) state it is dropped: the model starts again from a
        # reset state below, also across the next epoch start (batching="ring").
        self._carry = None
        self.optimizer.lr = lr
        if self.schedule is not None:  # else a cosine or step schedule sets the old rate at its next step
            self.schedule.scale(0.5)
        if hasattr(self.model, "reset_state"):
            self.model.reset_state()  # the carried state may hold the NaNs
        print(f"{exc}; rolled back to {path.name} ({self.rollbacks}/{self.config.max_rollbacks}), lr -> {lr:g}")
        self._log({"split": "rollback", "epoch": self.epoch, "step": self.step, "lr": lr, "message": str(exc)})
        return True

    # -- checkpoints ---------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "step": self.step,
                "sum_loss": self.sum_loss, "sum_count": self.sum_count, "best": self.best,
                "best_complete": self.best_complete,
                "bad_epochs": self.bad_epochs, "rollbacks": self.rollbacks,
                "ema_count": self.average.count if self.average is not None else None,
                "optimizer": self.optimizer.state_dict()["scalars"],
                "schedule": self.schedule.state_dict() if self.schedule is not None else None,
                "schedule_params": self.schedule.params() if self.schedule is not None else None,
                "rng": [g.bit_generator.state for g in random_streams(self.task)]}

    def save(self, best: bool = False):
        """Write ``ckpt-<step>.safetensors`` (and ``best.safetensors``) with everything resume needs."""
        extra = self.task.extra_meta() if hasattr(self.task, "extra_meta") else {}
        meta = {**extra, "train_config": dataclasses.asdict(self.config), "trainer": self._trainer_state()}
        tensors, payload = self.model.checkpoint_payload(meta)
        if self.average is not None:  # the file's model is the averaged one; training goes on from the raw weights
            for name, avg in self.average.weights.items():
                tensors[RAW_PREFIX + name], tensors[name] = tensors[name], backend.to_numpy(avg)
        for key, value in self.optimizer.state_dict()["tensors"].items():
            tensors[TRAINER_PREFIX + key] = backend.to_numpy(value)
        if self._keeps_carry() and hasattr(self.model, "carried_state"):
            for key, value in self.model.carried_state().items():
                tensors[CARRY_PREFIX + key] = backend.to_numpy(value)
        return self.checkpoints.save(self.step, tensors, payload, best=best)

    def _load_weights(self, path, with_optimizer: bool = False) -> dict:
        tensors, meta = load_checkpoint(path)
        own = {n for n, _, _ in self.model.named_parameters()}
        self.model.load_state_dict({n: v for n, v in tensors.items() if n in own})
        if with_optimizer:
            raw = {n[len(RAW_PREFIX):]: v for n, v in tensors.items() if n.startswith(RAW_PREFIX)}
            if bool(raw) != (self.average is not None):
                raise ValueError(f"{path}: written by a run {'with' if raw else 'without'} weight averaging; "
                                 f"this one has ema_decay {self.config.ema_decay}: continue it with the ema_decay "
                                 "it was written with")
            if self.average is not None:  # the file's model weights are the average
                self.average.load({n: v for n, v in tensors.items() if n in own}, meta["trainer"]["ema_count"])
                self.model.load_state_dict(raw)
            opt_tensors = {n[len(TRAINER_PREFIX):]: v for n, v in tensors.items() if n.startswith(TRAINER_PREFIX)
                           and not n.startswith(CARRY_PREFIX) and not n.startswith(RAW_PREFIX)}
            self.optimizer.load_state_dict({"scalars": meta["trainer"]["optimizer"], "tensors": opt_tensors})
            self._carry = {n[len(CARRY_PREFIX):]: v for n, v in tensors.items() if n.startswith(CARRY_PREFIX)}
        return meta

    def _keeps_carry(self) -> bool:
        """Does the model's carried state belong in a checkpoint now? Mid-epoch, or always when the
        task carries it across epochs (an LM with ``batching="ring"``)."""
        return bool(self.batch_index) or getattr(self.task, "carries_state_across_epochs", False)

    def _restore_carry(self) -> None:
        if self._carry and self._keeps_carry() and hasattr(self.model, "set_carried_state"):
            self.model.set_carried_state(self._carry)
        self._carry = None

    def _resume_schedule(self, t: dict, saved_kind: str) -> str | None:
        """The schedule's progress from the checkpoint; its parameters stay this config's. Returns a
        note naming those that differ from the checkpoint's (the lr then follows the new ones at once)."""
        name = self.config.schedule
        if saved_kind != name:
            return f"note: the checkpoint's schedule is {saved_kind!r}; this run's {name!r} starts from its beginning"
        self.schedule.load_state_dict(t["schedule"])
        now = _plain_json(self.schedule.params())
        saved = t.get("schedule_params") or {k: v for k, v in t["schedule"].items() if k in now}  # older: full state
        changed = [f"{k} {_show(saved[k])} -> {_show(v)}" for k, v in now.items() if k in saved and saved[k] != v]
        if not changed:
            return None
        lr = self.optimizer.lr
        self.optimizer.lr = self.schedule.rate()
        return (f"note: the {name} schedule's parameters differ from the checkpoint's ({', '.join(changed)}); it goes "
                f"on from its step {self.schedule.last_step} with this run's, lr {lr:.3g} -> {self.optimizer.lr:.3g}")

    RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "result.json", "loss.png")

    def _start_fresh(self, resuming: bool = False) -> None:
        """Refuse to mix a new run into an old one's files (checkpoints/ or any of ``RUN_FILES``) unless
        asked to overwrite them; ``resuming`` (no checkpoint to resume from) may replace the run's own logs."""
        ckpt_dir = self.checkpoints.directory
        old = self.checkpoints.checkpoints() + [p for p in (self.checkpoints.best(),) if p is not None]
        files = [name for name in self.RUN_FILES if (self.run_dir / name).exists()]
        if not self.config.overwrite:
            others = sorted(p.name for p in ckpt_dir.iterdir()) if ckpt_dir.is_dir() and not resuming else []
            if old or others:
                raise FileExistsError(f"{self.run_dir} already holds checkpoints of a run "
                                      f"({old[-1].name if old else ', '.join(others[:3])}); resume to continue it, "
                                      "overwrite to start afresh, or choose another run_dir")
            if files and not resuming:
                raise FileExistsError(f"{self.run_dir} already holds files of a run ({', '.join(files)}); "
                                      "overwrite to replace them, or choose another run_dir")
        for path in old + [ckpt_dir / CheckpointManager.LATEST]:
            path.unlink(missing_ok=True)
        for name in files:
            if name != "config.json":  # rewritten next, and meanwhile still says whose dir this is
                (self.run_dir / name).unlink(missing_ok=True)

    def _check_same_model(self, path, tensors: dict, meta: dict) -> None:
        """Refuse a checkpoint whose model is not this run's: every field of the model's config
        class (its architecture; from the checkpoint's model config, else the task config's fields
        of that class) must be the same, and so must the weights' names and shapes."""
        saved_class, own_class = meta.get("model"), type(self.model).__name__
        if isinstance(saved_class, str) and saved_class != own_class:
            raise ValueError(f"{path}: holds a {saved_class} model; this run's is a {own_class}: a resumed run keeps "
                             "its model; start a new run_dir to change it")
        cls = getattr(self.model, "config_class", None)
        now = self.model.config
        if dataclasses.is_dataclass(now) and not isinstance(now, type):
            now = _plain_json(dataclasses.asdict(now))
            saved = meta.get("config")
            if not isinstance(saved, dict):
                task_config = meta.get("task_config")
                names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(now)
                saved = {k: v for k, v in task_config.items() if k in names} if isinstance(task_config, dict) else {}
            saved = _plain_json(saved)
            # a field the checkpoint lacks (written before the field existed) is not compared
            changed = [f"{k} {now[k]!r} differs from the run's {saved[k]!r}" for k in now
                       if k in saved and saved[k] != now[k]]
            if changed:
                raise ValueError(f"{path}: {', '.join(changed)}: a resumed run keeps its model; start a new run_dir "
                                 "to change it")
        own = {n: p.shape for n, p, _ in self.model.named_parameters()}
        theirs = {n: v.shape for n, v in tensors.items() if not n.startswith(TRAINER_PREFIX)}
        missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
        if missing or unexpected:
            raise ValueError(f"{path}: the checkpoint's weights do not fit this run's model (missing "
                             f"{missing or 'none'}, unexpected {unexpected or 'none'}): a resumed run keeps its model; "
                             "start a new run_dir to change it")
        shapes = [f"{n} {tuple(theirs[n])} (this model: {tuple(shape)})" for n, shape in own.items()
                  if tuple(theirs[n]) != tuple(shape)]
        if shapes:
            raise ValueError(f"{path}: the checkpoint's weights have other shapes: {', '.join(shapes[:5])}: a resumed "
                             "run keeps its model; start a new run_dir to change it")

    BATCH_FIELDS = ("seed", "batch_size", "bptt", "batching")  # they decide an epoch's batches

    def _check_same_batches(self, path, tensors: dict, meta: dict) -> None:
        """Mid-epoch (or with a carried state saved at the epoch end: ``batching="ring"``) the run's
        seed, batch_size, bptt and batching must stay: they decide which batches the resumed epoch
        skips and what the carried state belongs to. At an epoch end they may change (a note says so)."""
        t = meta.get("trainer", {})
        task_config = self.task_config if self.task_config is not None else getattr(self.task, "config", None)
        now = dataclasses.asdict(task_config) if dataclasses.is_dataclass(task_config) else {}
        saved = dict(meta.get("task_config") or {})
        now["seed"] = getattr(self.task, "seed", self.config.seed)
        saved_seed = meta.get("seed", (meta.get("train_config") or {}).get("seed"))
        if saved_seed is not None:
            saved["seed"] = saved_seed
        changed = [(k, now[k], saved[k]) for k in self.BATCH_FIELDS
                   if k in now and k in saved and _plain_json(now[k]) != _plain_json(saved[k])]
        if not changed:
            return
        what = ", ".join(f"{k} {a!r} differs from the run's {b!r}" for k, a, b in changed)
        batch_index = int(t.get("batch_index", 0) or 0)
        if batch_index:
            raise ValueError(f"{path}: {what}: the run stopped mid-epoch (epoch {int(t.get('epoch', 0)) + 1}, batch "
                             f"{batch_index}) and these decide which batches the resumed epoch skips; resume with "
                             "the run's values (or change them at an epoch end)")
        if any(n.startswith(CARRY_PREFIX) for n in tensors):
            raise ValueError(f"{path}: {what}: the checkpoint holds the recurrent state carried across epochs "
                             "(batching 'ring'), which belongs to the run's batches; resume with the run's values")
        print(f"note: {what}; the run resumes at an epoch end, so the epochs from here on are batched (and "
              "ordered) by this run's values, while the random streams (dropout, ...) go on from the checkpoint's "
              "state", flush=True)

    def resume(self) -> bool:
        """Load the latest checkpoint in run_dir: weights, optimizer, schedule, counters, RNG, carry."""
        path = self.checkpoints.latest()
        if path is None:
            print(f"no checkpoint in {self.run_dir / 'checkpoints'}; starting fresh")
            return False
        tensors, meta = load_checkpoint(path)
        if _plain_json(meta.get("extra", {})) != _plain_json(self.model.extra_state()):
            keys = ", ".join(sorted(meta.get("extra", {}))) or "extra state"
            raise ValueError(f"{path}: the checkpoint's {keys} differ(s) from this run's (other data?); resume with "
                             "the data the run started with, or start a new run_dir")
        self._check_same_model(path, tensors, meta)
        self._check_same_batches(path, tensors, meta)
        del tensors
        meta = self._load_weights(path, with_optimizer=True)
        t = meta["trainer"]
        self.epoch, self.batch_index, self.step = int(t["epoch"]), int(t["batch_index"]), int(t["step"])
        self.sum_loss, self.sum_count = float(t["sum_loss"]), float(t["sum_count"])
        self.best, self.best_complete = float(t["best"]), float(t["best_complete"])
        self.bad_epochs, self.rollbacks = int(t["bad_epochs"]), int(t["rollbacks"])
        note = None
        if self.schedule is not None and t.get("schedule"):
            note = self._resume_schedule(t, meta.get("train_config", {}).get("schedule", self.config.schedule))
        streams = random_streams(self.task)
        if len(streams) != len(t["rng"]):
            raise ValueError(f"{path}: {len(t['rng'])} saved random streams; this run has {len(streams)} "
                             "(was the model or task configured differently?)")
        for g, s in zip(streams, t["rng"]):
            g.bit_generator.state = s
        self.history = self._read_history()
        where = f"epoch {self.epoch + 1}, batch {self.batch_index}" if self.batch_index else f"end of epoch {self.epoch}"
        print(f"resumed from {path.name}: {where}, step {self.step}")
        if note:
            print(note, flush=True)
        return True

    # -- logs and figures ----------------------------------------------------------------------
    def _write_config(self) -> None:
        config = {"train": dataclasses.asdict(self.config)}
        if self.task_config is not None:
            config["task"] = {"name": getattr(self.task, "name", ""), **dataclasses.asdict(self.task_config)}
        write_json_atomic(self.run_dir / "config.json", config)

    def _log(self, row: dict, hook: str | None = None) -> None:
        row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        self.history.append(row)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if row["split"] == "epoch":
            self._write_csv()
        for callback in self.callbacks:
            if hook and hasattr(callback, hook):
                getattr(callback, hook)(self, row)

    def _write_csv(self) -> None:
        rows = [r for r in self.history if r["split"] == "epoch"]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.run_dir / "metrics.csv", buffer.getvalue())

    def _read_history(self) -> list[dict]:
        """The metrics rows up to the checkpoint resumed from; later rows (and a line cut by a
        kill) are dropped, so the resumed run's log reads as an uninterrupted one."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        rows = [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= self.step
                and r.get("split") not in ("test", None)
                and not (r["split"] == "epoch" and r.get("epoch", 0) >= self.epoch)]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def _progress(self, epoch: int, done: int):
        if not self.config.progress:
            return None
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(total=self.task.num_train_batches(), initial=done, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                    unit="batch", dynamic_ncols=True, leave=True)

    def _postfix(self, loss: float, rate: float, norm: float) -> dict:
        post = {"loss": f"{loss:.3f}"}
        if getattr(self.task, "reports_perplexity", False):
            post["ppl"] = f"{math.exp(min(loss, 50)):.1f}"
        post[f"{self.unit}/s"] = f"{rate:,.0f}"
        post["|g|"] = f"{norm:.2f}"
        return post

    def _print_epoch(self, row: dict) -> None:
        keys = [k for k in row if k.startswith("val_") or k == "train_loss"]
        part = "" if row["complete"] else " (stopped mid-epoch)"
        print(f"epoch {row['epoch'] + 1}{part}: " + ", ".join(f"{k} {_show(row[k])}" for k in keys)
              + f", lr {row['lr']:.3g}, {row[f'{self.unit}_per_s']:,.0f} {self.unit}/s", flush=True)

    def _plot(self) -> None:
        """loss.png: train loss per logged step and per epoch, validation per epoch and ``eval_every`` (needs matplotlib)."""
        if not self.config.plot:
            return
        try:
            import matplotlib  # noqa: PLC0415

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: PLC0415
        except ImportError:
            if not getattr(self, "_plot_note", False):
                print("note: matplotlib is not installed; no loss.png (pip install matplotlib)")
                self._plot_note = True
            return
        train = [r for r in self.history if r["split"] == "train"]
        epochs = [r for r in self.history if r["split"] == "epoch"]
        valid = sorted((r for r in self.history if r["split"] in ("epoch", "eval") and "val_loss" in r),
                       key=lambda r: r["step"])
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.7, label="train (logged steps)")
        if epochs:
            ax.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train (epoch mean)")
        if valid:
            ax.plot([r["step"] for r in valid], [r["val_loss"] for r in valid], "s-", ms=4 if len(valid) > 30 else 6,
                    label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats per item)" if self.unit == "items" else f"loss (nats per {self.unit})")
        ax.set_title(f"{getattr(self.task, 'name', 'task')}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        self._plotted = time.perf_counter()
        write_bytes_atomic(self.run_dir / "loss.png", buffer.getvalue())
