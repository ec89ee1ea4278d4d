"""The training loop, shared by every task.

Reads top to bottom: for each epoch, for each batch: forward (``task.train_loss``),
backward, check for divergence, clip, step, log; then evaluate, schedule, checkpoint,
early-stop. It knows nothing of language models or seq2seq: the :class:`Task` does.

Checkpoints (``run_dir/checkpoints``) hold the weights, the optimizer and schedule state,
the epoch, the best metric and every random stream (data order, dropout), written
atomically at each epoch end, so ``resume=True`` continues exactly as an uninterrupted
run would have.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backend, optim
from ..checkpoint import CheckpointManager, load_checkpoint, write_json_atomic
from ..models.base import TRAINER_PREFIX


class DivergenceError(RuntimeError):
    """The loss or a gradient became NaN/inf."""


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata={"help": "passes over the training data"})
    optimizer: str = field(default="adam", metadata={"help": "sgd | adam | adamw"})
    lr: float = field(default=2e-3, metadata={"help": "learning rate"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum (SGD)"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 (sgd, adam) or decoupled (adamw) weight decay"})
    clip: float = field(default=5.0, metadata={"help": "clip the global gradient norm to this (0: off)"})
    schedule: str = field(default="none", metadata={"help": "none | plateau | step | cosine"})
    lr_factor: float = field(default=0.25, metadata={"help": "plateau: multiply lr by this when valid stalls; step: gamma"})
    lr_patience: int = field(default=0, metadata={"help": "plateau: epochs without improvement before decay"})
    lr_step_size: int = field(default=1, metadata={"help": "step: epochs between decays"})
    warmup_steps: int = field(default=0, metadata={"help": "cosine: linear warm-up steps"})
    min_lr: float = field(default=0.0, metadata={"help": "floor of the learning rate"})
    early_stopping: int = field(default=0, metadata={"help": "stop after this many epochs without improvement (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of every random stream (init, data order, dropout)"})
    run_dir: str = field(default="runs/latest", metadata={"help": "where checkpoints, metrics and figures go"})
    keep_checkpoints: int = field(default=2, metadata={"help": "epoch checkpoints to keep (plus best)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: no limit)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop training after this many seconds (0: no limit)"})
    log_every: int = field(default=50, metadata={"help": "write a train metrics line every this many steps"})
    on_divergence: str = field(default="stop", metadata={"help": "stop | rollback (to the last checkpoint, halving lr)"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    eval_test: bool = field(default=True, metadata={"help": "evaluate the best weights on the test split at the end"})
    overwrite: bool = field(default=False, metadata={"help": "start afresh even if run_dir holds an earlier run's checkpoints"})

    def __post_init__(self):
        choices = {"optimizer": ("sgd", "adam", "adamw"), "schedule": ("none", "plateau", "step", "cosine"),
                   "on_divergence": ("stop", "rollback")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if self.epochs < 1:
            raise ValueError(f"epochs {self.epochs}; expected >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr {self.lr}; expected > 0")


def make_optimizer(model, config: TrainConfig):
    if config.optimizer == "sgd":
        return optim.SGD(model, config.lr, momentum=config.momentum, nesterov=config.nesterov,
                         weight_decay=config.weight_decay)
    cls = optim.Adam if config.optimizer == "adam" else optim.AdamW
    return cls(model, config.lr, weight_decay=config.weight_decay)


def make_schedule(opt, config: TrainConfig, steps_per_epoch: int):
    if config.schedule == "plateau":
        return optim.ReduceLROnPlateau(opt, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr)
    if config.schedule == "step":
        return optim.StepLR(opt, step_size=config.lr_step_size, gamma=config.lr_factor)
    if config.schedule == "cosine":
        return optim.CosineLR(opt, total_steps=max(1, config.epochs * steps_per_epoch),
                              warmup_steps=config.warmup_steps, min_lr=config.min_lr)
    return None


def random_streams(task) -> list[np.random.Generator]:
    """Every Generator a run draws from: the task's (data order) and each layer's (dropout), in a fixed order."""
    streams = [g for g in (getattr(task, "rng", None),) if isinstance(g, np.random.Generator)]
    seen = {id(g) for g in streams}
    for module in task.model.modules():
        g = getattr(module, "rng", None)
        if isinstance(g, np.random.Generator) and id(g) not in seen:
            streams.append(g)
            seen.add(id(g))
    return streams


class Trainer:
    """Train ``task.model`` on ``task`` with ``config``; ``fit()`` returns the final metrics."""

    def __init__(self, task, config: TrainConfig, task_config=None):
        self.task, self.config, self.task_config = task, config, task_config
        self.model = task.model
        self.run_dir = Path(config.run_dir)
        self.optimizer = make_optimizer(self.model, config)
        self.schedule = make_schedule(self.optimizer, config, task.num_train_batches())
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep=config.keep_checkpoints)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.best = math.inf
        self.bad_epochs = 0
        self.rollbacks = 0
        self.history: list[dict] = []

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg, task = self.config, self.task
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        else:
            self._start_fresh()
        self._write_config()
        start = time.perf_counter()
        stop_reason = None
        while self.epoch < cfg.epochs and stop_reason is None:
            epoch = self.epoch
            task.start_epoch(epoch)
            self.model.train()
            bar = self._progress(epoch)
            sum_loss = sum_count = 0.0
            t0, tokens = time.perf_counter(), 0
            for batch in task.train_batches(epoch):
                self.model.zero_grad()
                loss, count = task.train_loss(batch)
                task.backward()
                try:
                    norm = self._check_step(loss)
                except DivergenceError as exc:
                    if cfg.on_divergence == "stop" or not self._rollback(exc):
                        raise
                    continue
                self.optimizer.step()
                if self.schedule is not None and cfg.schedule == "cosine":
                    self.schedule.step()
                self.step += 1
                sum_loss, sum_count, tokens = sum_loss + loss * count, sum_count + count, tokens + count
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(self._postfix(loss, rate, norm), refresh=False)
                if self.step % cfg.log_every == 0:
                    self._log({"split": "train", "epoch": epoch, "step": self.step, "loss": loss,
                               "grad_norm": norm, "lr": self.optimizer.lr, "items_per_s": rate})
                if cfg.max_steps and self.step >= cfg.max_steps:
                    stop_reason = f"max_steps {cfg.max_steps} reached"
                elif cfg.time_budget and time.perf_counter() - start > cfg.time_budget:
                    stop_reason = f"time budget {cfg.time_budget:g}s reached"
                if stop_reason:
                    break
            if bar is not None:
                bar.close()
            train_loss = sum_loss / max(sum_count, 1)
            metrics = {f"val_{k}": v for k, v in task.evaluate("valid").items()}
            row = {"split": "epoch", "epoch": epoch, "step": self.step, "train_loss": train_loss,
                   "lr": self.optimizer.lr, "seconds": time.perf_counter() - t0,
                   "items_per_s": tokens / max(time.perf_counter() - t0, 1e-9), **metrics}
            self._log(row)
            self._print_epoch(row)
            if self.schedule is not None and cfg.schedule in ("plateau", "step"):
                self.schedule.step(metrics.get(task.main_metric, train_loss))
            current = metrics.get(task.main_metric, train_loss)
            improved = current < self.best
            if improved:
                self.best, self.bad_epochs = current, 0
            else:
                self.bad_epochs += 1
            self.epoch += 1
            self.save(best=improved)
            self._plot()
            if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
                stop_reason = f"no improvement of {task.main_metric} for {self.bad_epochs} epochs"
        if stop_reason:
            print(f"stopped: {stop_reason}")
        result = {"best_" + task.main_metric: self.best, "epochs": self.epoch, "steps": self.step}
        if cfg.eval_test:
            best = self.checkpoints.best()
            if best is not None:
                self._load_weights(best)
            test = task.evaluate("test")
            if test:
                row = {"split": "test", "epoch": self.epoch, "step": self.step, **{f"test_{k}": v for k, v in test.items()}}
                self._log(row)
                result.update(row)
                print("test: " + ", ".join(f"{k} {v:.4g}" for k, v in test.items()))
        write_json_atomic(self.run_dir / "result.json", result)
        return result

    # -- one step's checks ---------------------------------------------------------------------
    def _check_step(self, loss: float) -> float:
        """Clip, and stop the step if the loss or any gradient is NaN/inf (naming the parameter)."""
        if not math.isfinite(loss):
            raise DivergenceError(f"step {self.step + 1} (epoch {self.epoch}): loss is {loss}")
        norm = optim.clip_grad_norm(self.model, self.config.clip or None)
        if not math.isfinite(norm):
            bad = [name for name, _, g in self.model.named_parameters()
                   if not bool(backend.get_array_module(g).isfinite(g).all())]
            raise DivergenceError(f"step {self.step + 1} (epoch {self.epoch}): non-finite gradient in "
                                  f"{', '.join(bad[:5])}; weights left unchanged")
        return norm

    def _rollback(self, exc: DivergenceError) -> bool:
        """Restore the last good checkpoint and halve the learning rate (at most 3 times)."""
        path = self.checkpoints.latest()
        if path is None or self.rollbacks >= 3:
            return False
        self.rollbacks += 1
        lr = self.optimizer.lr * 0.5
        self._load_weights(path, with_optimizer=True)
        self.optimizer.lr = lr
        print(f"{exc}; rolled back to {path.name}, lr -> {lr:g}")
        return True

    # -- checkpoints ---------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        state = {"epoch": self.epoch, "step": self.step, "best": self.best, "bad_epochs": self.bad_epochs,
                 "rollbacks": self.rollbacks, "optimizer": self.optimizer.state_dict()["scalars"],
                 "schedule": self.schedule.state_dict() if self.schedule is not None else None,
                 "rng": [g.bit_generator.state for g in random_streams(self.task)]}
        return state

    def save(self, best: bool = False):
        extra = self.task.extra_meta() if hasattr(self.task, "extra_meta") else {}
        meta = {**extra, "train_config": dataclasses.asdict(self.config), "trainer": self._trainer_state()}
        tensors, payload = self.model.checkpoint_payload(meta)
        for key, value in self.optimizer.state_dict()["tensors"].items():
            tensors[TRAINER_PREFIX + key] = backend.to_numpy(value)
        return self.checkpoints.save(self.epoch, tensors, payload, best=best)

    def _load_weights(self, path, with_optimizer: bool = False) -> dict:
        tensors, meta = load_checkpoint(path)
        own = {n for n, _, _ in self.model.named_parameters()}
        self.model.load_state_dict({n: v for n, v in tensors.items() if n in own})
        if with_optimizer:
            trainer = meta["trainer"]
            opt_tensors = {n[len(TRAINER_PREFIX):]: v for n, v in tensors.items() if n.startswith(TRAINER_PREFIX)}
            self.optimizer.load_state_dict({"scalars": trainer["optimizer"], "tensors": opt_tensors})
        return meta

    def _start_fresh(self) -> None:
        """Refuse to mix a new run into an old one's files unless asked to overwrite them."""
        old = self.checkpoints.checkpoints() + [p for p in (self.checkpoints.best(),) if p is not None]
        if old and not self.config.overwrite:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints of a run ({old[-1].name}); "
                                  "pass resume to continue it, overwrite to start afresh, or another run_dir")
        for path in old:
            path.unlink()
        (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)

    def resume(self) -> bool:
        """Continue from the latest checkpoint in run_dir (weights, optimizer, schedule, RNG, counters)."""
        path = self.checkpoints.latest()
        if path is None:
            print(f"no checkpoint in {self.run_dir / 'checkpoints'}; starting fresh")
            return False
        meta = self._load_weights(path, with_optimizer=True)
        t = meta["trainer"]
        self.epoch, self.step, self.best = int(t["epoch"]), int(t["step"]), float(t["best"])
        self.bad_epochs, self.rollbacks = int(t["bad_epochs"]), int(t["rollbacks"])
        if self.schedule is not None and t.get("schedule"):
            self.schedule.load_state_dict(t["schedule"])
        streams = random_streams(self.task)
        if len(streams) != len(t["rng"]):
            raise ValueError(f"{path}: {len(t['rng'])} saved random streams; this run has {len(streams)}")
        for g, s in zip(streams, t["rng"]):
            g.bit_generator.state = s
        self.history = self._read_history()
        print(f"resumed from {path.name}: epoch {self.epoch}, step {self.step}")
        return True

    # -- logs and figures ----------------------------------------------------------------------
    def _write_config(self) -> None:
        config = {"train": dataclasses.asdict(self.config)}
        if self.task_config is not None:
            config["task"] = {"name": getattr(self.task, "name", ""), **dataclasses.asdict(self.task_config)}
        write_json_atomic(self.run_dir / "config.json", config)

    def _log(self, row: dict) -> None:
        row = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in row.items()}
        self.history.append(row)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if row["split"] == "epoch":
            rows = [r for r in self.history if r["split"] == "epoch"]
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with open(self.run_dir / "metrics.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)

    def _read_history(self) -> list[dict]:
        """Metrics lines of the epochs already done (lines past the checkpoint are dropped)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("epoch", 0) < self.epoch and r["split"] != "test"]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def _progress(self, epoch: int):
        if not self.config.progress:
            return None
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(total=self.task.num_train_batches(), desc=f"epoch {epoch + 1}/{self.config.epochs}",
                    unit="batch", dynamic_ncols=True, leave=True)

    def _postfix(self, loss: float, rate: float, norm: float) -> dict:
        post = {"loss": f"{loss:.3f}"}
        if getattr(self.task, "reports_perplexity", False):
            post["ppl"] = f"{math.exp(min(loss, 50)):.1f}"
        post["items/s"] = f"{rate:,.0f}"
        post["|g|"] = f"{norm:.2f}"
        return post

    def _print_epoch(self, row: dict) -> None:
        keys = [k for k in row if k.startswith("val_") or k == "train_loss"]
        print(f"epoch {row['epoch'] + 1}: " + ", ".join(f"{k} {row[k]:.4g}" for k in keys)
              + f", lr {row['lr']:.3g}, {row['items_per_s']:,.0f} items/s")

    def _plot(self) -> None:
        """loss.png: train loss per logged step and validation per epoch (needs matplotlib)."""
        try:
            import matplotlib  # noqa: PLC0415

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: PLC0415
        except ImportError:
            return
        train = [r for r in self.history if r["split"] == "train"]
        epochs = [r for r in self.history if r["split"] == "epoch"]
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label="train (per step)")
        if epochs:
            ax.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train (epoch mean)")
            if "val_loss" in epochs[0]:
                ax.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "s-", label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(f"{getattr(self.task, 'name', 'task')}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.run_dir / "loss.png", dpi=110)
        plt.close(fig)
