"""The shared trainer: exact resume (epoch end, mid-epoch, after SIGKILL), divergence, schedules, logs."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rnnkit import optim
from rnnkit.checkpoint import CheckpointManager
from rnnkit.data.text import load_corpus
from rnnkit.layers import Linear, MSELoss
from rnnkit.models import LanguageModel
from rnnkit.models.base import Model
from rnnkit.tasks.lm import LanguageModelTask, LMTaskConfig
from rnnkit.train import DivergenceError, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def single_threaded_blas():
    """Tiny matrices gain nothing from BLAS threads, and on a busy machine OpenBLAS's spinning
    threads make these tests ~10x slower; threadpoolctl comes with the dev extras (scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@functools.lru_cache(maxsize=1)
def shakespeare():
    return load_corpus("tinyshakespeare", level="char")


def tiny_lm_task(chars=6_000, **overrides):
    """A character LSTM small enough to train an epoch in well under a second."""
    cfg = LMTaskConfig(corpus="tinyshakespeare", level="char", hidden_size=24, embedding_size=12, batch_size=8,
                       bptt=16, max_eval_tokens=1_000, **overrides)
    corpus = dataclasses.replace(shakespeare(), train=shakespeare().train[:chars])
    return cfg, LanguageModelTask(cfg, corpus, seed=0)


def train(run_dir, resume=False, task_overrides=None, **train_overrides):
    cfg, task = tiny_lm_task(**(task_overrides or {"embedding_dropout": 0.1, "output_dropout": 0.3}))
    options = dict(epochs=2, lr=3e-3, run_dir=str(run_dir), progress=False, eval_test=False, schedule="step",
                   lr_factor=0.5, log_every=5, plot=False)
    tc = TrainConfig(**{**options, **train_overrides})
    trainer = Trainer(task, tc, cfg)
    return trainer.fit(resume=resume), trainer


def epoch_rows(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "epoch" and r["complete"]]


def assert_same_run(a_dir, b_dir):
    """Same per-epoch metrics (train and validation) and the same final weights."""
    a, b = epoch_rows(a_dir), epoch_rows(b_dir)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "lr", "step"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), (key, ra, rb)
    wa = LanguageModel.load(Path(a_dir) / "checkpoints" / "best.safetensors").state_dict()
    wb = LanguageModel.load(Path(b_dir) / "checkpoints" / "best.safetensors").state_dict()
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted two-epoch run (with dropout, a step schedule and carried state)."""
    run_dir = tmp_path_factory.mktemp("straight")
    result, _ = train(run_dir)
    return run_dir, result


def test_resume_at_an_epoch_end_matches_an_uninterrupted_run(straight, tmp_path):
    train(tmp_path, epochs=1)
    result, trainer = train(tmp_path, resume=True)
    assert trainer.epoch == 2 and result["best_val_loss"] == pytest.approx(straight[1]["best_val_loss"], rel=1e-6)
    assert_same_run(straight[0], tmp_path)


def test_resume_mid_epoch_restores_carried_state_rng_and_running_loss(straight, tmp_path):
    first, trainer = train(tmp_path, max_steps=30)  # stops 30 batches into epoch 1 (47 batches)
    assert trainer.epoch == 0 and trainer.batch_index == 30 and trainer.task.num_train_batches() == 47
    assert first["steps"] == 30
    result, trainer = train(tmp_path, resume=True)
    assert trainer.step == 2 * 47 and result["best_val_loss"] == pytest.approx(straight[1]["best_val_loss"], rel=1e-6)
    assert_same_run(straight[0], tmp_path)
    # the log reads as one run: no row twice, the partial evaluation dropped
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 90 and len(steps) == 18


def test_resume_from_periodic_checkpoints(straight, tmp_path):
    train(tmp_path, epochs=2, checkpoint_every=7, max_steps=60)
    result, _ = train(tmp_path, resume=True, checkpoint_every=7)
    assert_same_run(straight[0], tmp_path)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_trainer import train
    train({run_dir!r}, resume=True, checkpoint_every=3)
""")


def test_sigkill_at_random_moments_then_resume_matches(tmp_path):
    """Kill -9 the training process (often while it writes a checkpoint), twice; resume each time."""
    straight_dir = tmp_path / "straight"
    train(straight_dir, checkpoint_every=3)
    run_dir = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), run_dir=str(run_dir))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        latest = run_dir / "checkpoints" / "latest"
        deadline = time.monotonic() + 60
        before = latest.read_text() if latest.exists() else None
        # the whole run takes ~0.25 s on a fast machine (~30 checkpoints): kill after the first
        # to fifth checkpoint this process writes is seen, within a few milliseconds of it
        wanted, seen = int(rng.integers(1, 6)), 0
        while proc.poll() is None and time.monotonic() < deadline and seen < wanted:
            now = latest.read_text() if latest.exists() else None
            if now != before:
                before, seen = now, seen + 1  # this process has written a checkpoint
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.005))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(proc.stderr.read().decode())
        proc.stderr.close()
        if proc.returncode == 0:
            break
        # every kill leaves a loadable last checkpoint
        LanguageModel.load(CheckpointManager(run_dir / "checkpoints").latest())
    assert kills >= 1
    train(run_dir, resume=True, checkpoint_every=3)
    assert_same_run(straight_dir, run_dir)


def test_eval_every_logs_validation_inside_epochs_without_disturbing_training(tmp_path, straight):
    """Mid-epoch evaluations (dropout, carried state, a step schedule) leave the run exactly as it was."""
    result, trainer = train(tmp_path / "evals", eval_every=7)
    assert_same_run(straight[0], tmp_path / "evals")
    rows = [json.loads(line) for line in (tmp_path / "evals" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == list(range(7, trainer.step + 1, 7))
    assert all(math.isfinite(r["val_loss"]) and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)
    # an evaluation at an epoch's last step sees the same weights as that epoch's own evaluation:
    # every epoch_steps-th step is an epoch's last (epochs of 47 steps meet no multiple of 7)
    epoch_steps = trainer.step // result["epochs"]
    train(tmp_path / "at_ends", eval_every=epoch_steps)
    rows = [json.loads(line) for line in (tmp_path / "at_ends" / "metrics.jsonl").read_text().splitlines()]
    ends = {r["step"]: r["val_loss"] for r in rows if r["split"] == "epoch"}
    at_ends = [r for r in rows if r["split"] == "eval" and r["step"] in ends]
    assert len(at_ends) == result["epochs"] >= 2
    for r in at_ends:
        assert r["val_loss"] == pytest.approx(ends[r["step"]], rel=1e-12)
    with pytest.raises(ValueError, match="eval_every -1"):
        TrainConfig(eval_every=-1)


# ----------------------------------------------------------------------------------- divergence
def test_nan_gradient_stops_the_step_naming_the_parameter_and_step(tmp_path):
    cfg, task = tiny_lm_task()
    original = task.backward

    def poisoned_backward():
        original()
        task.model.rnn.grads["weight_hh_l0"][0, 0] = np.nan

    task.backward = poisoned_backward
    weights = {n: p.copy() for n, p, _ in task.model.named_parameters()}
    tc = TrainConfig(epochs=1, run_dir=str(tmp_path), progress=False, plot=False)
    with pytest.raises(DivergenceError, match=r"step 1 \(epoch 1, batch 1\): non-finite gradient in rnn.weight_hh_l0"):
        Trainer(task, tc, cfg).fit()
    for name, p, _ in task.model.named_parameters():
        np.testing.assert_array_equal(p, weights[name], err_msg=name)  # nothing written


def test_nan_loss_names_the_non_finite_weights(tmp_path):
    cfg, task = tiny_lm_task()
    task.model.decoder.params["bias"][3] = np.inf
    with pytest.raises(DivergenceError, match=r"step 1 .*loss is (nan|inf) \(non-finite weights in decoder.bias\)"):
        Trainer(task, TrainConfig(epochs=1, run_dir=str(tmp_path), progress=False, plot=False), cfg).fit()


def test_rollback_reloads_the_last_checkpoint_and_halves_lr(tmp_path, capsys):
    cfg, task = tiny_lm_task()
    original, calls = task.backward, []

    def backward_with_one_blowup():
        original()
        calls.append(1)
        if len(calls) == 12:
            task.model.rnn.grads["weight_ih_l0"][...] = np.inf

    task.backward = backward_with_one_blowup
    tc = TrainConfig(epochs=1, lr=2e-3, run_dir=str(tmp_path), progress=False, plot=False, eval_test=False, checkpoint_every=5,
                     on_divergence="rollback")
    trainer = Trainer(task, tc, cfg)
    trainer.fit()
    assert "rolled back to ckpt-10.safetensors" in capsys.readouterr().out
    assert trainer.rollbacks == 1 and trainer.optimizer.lr == pytest.approx(1e-3)
    assert all(np.isfinite(p).all() for _, p, _ in task.model.named_parameters())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "rollback"] == [11]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_rollback_halves_the_schedules_rates_too(tmp_path, schedule):
    """A schedule that sets lr from its base rate must not undo the rollback's halving at its next step."""
    cfg, task = tiny_lm_task()
    original, calls, lrs = task.backward, [], []

    def backward_with_one_blowup():
        original()
        calls.append(1)
        lrs.append(trainer.optimizer.lr)
        if len(calls) == 12:
            task.model.rnn.grads["weight_ih_l0"][...] = np.inf

    task.backward = backward_with_one_blowup
    tc = TrainConfig(epochs=2, lr=2e-3, run_dir=str(tmp_path), progress=False, plot=False, eval_test=False,
                     checkpoint_every=5, on_divergence="rollback", schedule=schedule, lr_step_size=100, lr_factor=0.5)
    trainer = Trainer(task, tc, cfg)
    trainer.fit()
    assert trainer.rollbacks == 1
    n = len(lrs)
    if schedule == "step":  # steps at epoch ends, but never reaches a decay: its rate stays the halved base
        assert lrs[:12] == pytest.approx([2e-3] * 12)
        assert lrs[12:] == pytest.approx([1e-3] * (n - 12))
    else:  # cosine: half of the undisturbed schedule (call 12's step failed, so call k >= 13 ran after k - 2 steps)
        undisturbed = optim.CosineLR(optim.SGD(task.model, lr=2e-3), total_steps=trainer.schedule.total_steps)
        expected = [2e-3] + [undisturbed.step() for _ in range(n)]
        assert lrs[:12] == pytest.approx(expected[:12])
        assert lrs[12:] == pytest.approx([0.5 * e for e in expected[11 : n - 1]])


def test_rollback_without_a_checkpoint_stops(tmp_path):
    cfg, task = tiny_lm_task()
    task.model.decoder.params["bias"][0] = np.nan
    tc = TrainConfig(epochs=1, run_dir=str(tmp_path), progress=False, plot=False, on_divergence="rollback")
    with pytest.raises(DivergenceError):
        Trainer(task, tc, cfg).fit()


# ----------------------------------------------------------------------------------- files, schedules
def test_run_dir_files(tmp_path):
    result, _ = train(tmp_path, epochs=1, eval_test=True, plot=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["lr"] == 3e-3 and config["task"]["name"] == "lm" and config["task"]["bptt"] == 16
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(5, 46, 5))
    assert {"loss", "grad_norm", "lr", "tok_per_s"} <= set(train_rows[0])
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "val_loss", "val_ppl", "tok_per_s"} <= set(header)
    assert json.loads((tmp_path / "result.json").read_text())["best_val_loss"] == result["best_val_loss"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_with_other_data_is_refused(tmp_path):
    train(tmp_path, epochs=1, max_steps=2)
    cfg, task = tiny_lm_task()
    other = dataclasses.replace(task.corpus, vocab=type(task.corpus.vocab)(list(reversed(task.corpus.vocab.itos))))
    task = LanguageModelTask(cfg, other, seed=0)
    with pytest.raises(ValueError, match="the checkpoint's vocab differ"):
        Trainer(task, TrainConfig(epochs=2, run_dir=str(tmp_path), progress=False, plot=False)).fit(resume=True)


def test_fresh_run_refuses_to_mix_into_an_old_one(tmp_path):
    train(tmp_path, epochs=1, max_steps=2)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train(tmp_path, epochs=1, max_steps=2)
    train(tmp_path, epochs=1, max_steps=2, overwrite=True)


@dataclass
class ToyConfig:
    size: int = 3


class ToyModel(Model):
    config_class = ToyConfig

    def __init__(self, config, seed=0):
        super().__init__(config)
        self.linear = Linear(config.size, 1, rng=np.random.default_rng(seed))
        self.criterion = MSELoss()

    def loss(self, x, y):
        return self.criterion.forward(self.linear.forward(x), y)

    def backward(self):
        self.linear.backward(self.criterion.backward())


class ToyTask:
    """Validation losses are scripted, to drive the schedule and early stopping."""

    name, main_metric = "toy", "val_loss"

    def __init__(self, val_losses):
        self.model, self.val_losses, self.evaluated = ToyModel(ToyConfig()), list(val_losses), 0

    def start_epoch(self, epoch):
        pass

    def train_batches(self, epoch):
        rng = np.random.default_rng([0, epoch])
        for _ in range(3):
            x = rng.normal(size=(4, 3)).astype(np.float32)
            yield x, x.sum(1, keepdims=True)

    def num_train_batches(self):
        return 3

    def train_loss(self, batch):
        return self.model.loss(*batch), len(batch[0])

    def backward(self):
        self.model.backward()

    def evaluate(self, split):
        if split != "valid":
            return {}
        self.evaluated += 1
        return {"loss": self.val_losses[self.evaluated - 1]}


def test_plateau_schedule_and_early_stopping(tmp_path):
    task = ToyTask([1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    tc = TrainConfig(epochs=6, optimizer="sgd", lr=0.1, schedule="plateau", lr_factor=0.5, early_stopping=2, plot=False,
                     run_dir=str(tmp_path), progress=False)
    result = Trainer(task, tc).fit()
    rows = epoch_rows(tmp_path)
    assert result["epochs"] == 4 and result["best_val_loss"] == 0.5  # stopped after 2 epochs without progress
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0.05])  # lr used in that epoch
    assert trainer_lr_after(tmp_path) == pytest.approx(0.025)


def trainer_lr_after(run_dir):
    from rnnkit.checkpoint import load_checkpoint

    _, meta = load_checkpoint(CheckpointManager(Path(run_dir) / "checkpoints").latest())
    return meta["trainer"]["optimizer"]["lr"]


def test_cosine_schedule_and_max_steps(tmp_path):
    tc = TrainConfig(epochs=5, optimizer="sgd", lr=0.1, schedule="cosine", max_steps=7, plot=False, run_dir=str(tmp_path),
                     progress=False)
    trainer = Trainer(ToyTask([1.0] * 5), tc)
    result = trainer.fit()
    assert result["steps"] == 7 and trainer.optimizer.lr == pytest.approx(0.0, abs=1e-12)  # schedule over 7 steps
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["complete"] for r in rows if r["split"] == "epoch"] == [True, True, False]


def test_config_errors():
    with pytest.raises(ValueError, match="optimizer 'rmsprop'; expected one of sgd, adam, adamw"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="on_divergence 'ignore'"):
        TrainConfig(on_divergence="ignore")
    with pytest.raises(ValueError, match="epochs 0"):
        TrainConfig(epochs=0)


# ----------------------------------------------------------------------------------- weight averaging
class RecordWeights:
    """on_step (log_every=1): the raw weights after every optimizer step."""

    def __init__(self):
        self.steps = []

    def on_step(self, trainer, row):
        self.steps.append({n: p.astype(np.float64) for n, p, _ in trainer.model.named_parameters()})


def test_ema_weights_are_what_is_validated_saved_and_tested(tmp_path):
    from rnnkit.checkpoint import load_checkpoint
    from rnnkit.train.trainer import RAW_PREFIX

    decay, record = 0.9, RecordWeights()
    cfg, task = tiny_lm_task(embedding_dropout=0.1)
    tc = TrainConfig(epochs=2, lr=3e-3, run_dir=str(tmp_path), progress=False, plot=False, log_every=1,
                     ema_decay=decay)
    trainer = Trainer(task, tc, cfg, callbacks=[record])
    result = trainer.fit()
    final = {n: p.copy() for n, p, _ in trainer.model.named_parameters()}  # the run ends on the weights it tests
    # the average of every step's weights, weighted decay**(t-i) and normalised
    t = len(record.steps)
    w = decay ** np.arange(t - 1, -1, -1)
    expected = {n: sum(wi * s[n] for wi, s in zip(w, record.steps)) / w.sum() for n in record.steps[0]}
    tensors, meta = load_checkpoint(CheckpointManager(tmp_path / "checkpoints").latest())
    assert meta["trainer"]["ema_count"] == t == 2 * 47
    for name, value in expected.items():
        np.testing.assert_allclose(tensors[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(tensors[RAW_PREFIX + name], record.steps[-1][name].astype(np.float32))
        assert not np.allclose(tensors[name], tensors[RAW_PREFIX + name], rtol=1e-3, atol=1e-4), name
    # validation was of the averaged weights: the logged val_loss is theirs, not the raw weights'
    model = LanguageModel.load(CheckpointManager(tmp_path / "checkpoints").latest())
    task.model.load_state_dict(model.state_dict())
    assert task.evaluate("valid")["loss"] == pytest.approx(epoch_rows(tmp_path)[-1]["val_loss"], rel=1e-6)
    task.model.load_state_dict({n: v for n, v in tensors.items() if n.startswith(RAW_PREFIX)
                                for n in [n[len(RAW_PREFIX):]]})
    assert task.evaluate("valid")["loss"] != pytest.approx(epoch_rows(tmp_path)[-1]["val_loss"], rel=1e-4)
    # best.safetensors holds averaged weights (not its raw ones), and they are what the run ends on (to test)
    best, meta = load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    assert meta["trainer"]["step"] == meta["trainer"]["ema_count"] > 0 and result["best_val_loss"] < math.inf
    for name, value in final.items():
        np.testing.assert_array_equal(value, best[name], err_msg=name)
        assert not np.allclose(best[name], best[RAW_PREFIX + name], rtol=1e-3, atol=1e-4), name


def test_resume_mid_epoch_with_ema_matches_an_uninterrupted_run(tmp_path):
    train(tmp_path / "straight", ema_decay=0.95)
    train(tmp_path / "resumed", ema_decay=0.95, max_steps=30)
    _, trainer = train(tmp_path / "resumed", resume=True, ema_decay=0.95)
    assert trainer.average.count == 2 * 47
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    with pytest.raises(ValueError, match="written by a run with weight averaging; this one has ema_decay 0.0"):
        train(tmp_path / "resumed", resume=True, epochs=3)
    train(tmp_path / "plain", epochs=1)
    with pytest.raises(ValueError, match="written by a run without weight averaging; this one has ema_decay 0.9"):
        train(tmp_path / "plain", resume=True, epochs=2, ema_decay=0.9)


def test_ema_config_errors():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"ema_decay {bad}; expected 0 <= ema_decay < 1"):
            TrainConfig(ema_decay=bad)


def test_ring_batching_carries_state_across_epochs_and_resumes_exactly(tmp_path):
    """batching="ring": no reset at the epoch start, and the carry is in the epoch-end checkpoint."""
    ring = {"embedding_dropout": 0.1, "batching": "ring"}
    straight_dir = tmp_path / "straight"
    _, trainer = train(straight_dir, task_overrides=ring)
    model = trainer.model
    carry = model.carried_state()
    assert carry and np.abs(carry["h"]).max() > 0
    trainer.task.start_epoch(2)  # a ring epoch starts from where the last stopped
    np.testing.assert_array_equal(model.carried_state()["h"], carry["h"])
    stopped = tmp_path / "stopped"
    train(stopped, epochs=1, task_overrides=ring)
    from rnnkit.checkpoint import load_checkpoint
    tensors, _ = load_checkpoint(sorted((stopped / "checkpoints").glob("ckpt-*.safetensors"))[-1])
    assert any(k.endswith("carry.h") for k in tensors)  # saved at the epoch end, not only mid-epoch
    train(stopped, resume=True, task_overrides=ring)
    assert_same_run(straight_dir, stopped)
    # and the ring run is a different run from the reset one (the state and the chunks differ)
    reset_dir = tmp_path / "reset"
    train(reset_dir, task_overrides={"embedding_dropout": 0.1})
    assert epoch_rows(reset_dir)[1]["train_loss"] != pytest.approx(epoch_rows(straight_dir)[1]["train_loss"], rel=1e-9)


def test_device_choice_is_checked_before_anything_is_built(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="device 'tpu'; expected one of cpu, cuda"):
        TrainConfig(device="tpu")
    cfg, task = tiny_lm_task()
    task.supports_cuda = False  # as a task whose batches are built on the host only
    task.name = "custom"
    with pytest.raises(ValueError, match="device 'cuda' with the 'custom' task, which builds its batches on the host"):
        Trainer(task, TrainConfig(device="cuda", run_dir=str(tmp_path), progress=False, plot=False), cfg)
    cfg, task = tiny_lm_task()
    monkeypatch.setattr("rnnkit.backend.gpu_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(ValueError, match="device 'cuda': CuPy is not installed or sees no CUDA device"):
        Trainer(task, TrainConfig(device="cuda", run_dir=str(tmp_path), progress=False, plot=False), cfg)
    assert not (tmp_path / "checkpoints").exists()
    assert backend_of(task.model) == "numpy"  # nothing moved


def backend_of(model) -> str:
    from rnnkit import backend

    return backend.get_array_module(next(iter(model.named_parameters()))[1]).__name__


class NoValidationToyTask(ToyTask):
    """A task without a validation part: evaluate("valid") is {}."""

    def evaluate(self, split):
        return {}


def test_without_a_validation_part_the_train_loss_is_monitored_and_said(tmp_path, capsys):
    tc = TrainConfig(epochs=3, optimizer="sgd", lr=0.1, plot=False, run_dir=str(tmp_path / "none"), progress=False)
    result = Trainer(NoValidationToyTask([]), tc).fit()
    out = capsys.readouterr().out
    assert out.count("note: the task has no validation part") == 1
    assert "follow the training loss" in out
    rows = epoch_rows(tmp_path / "none")
    assert result["monitor"] == "train_loss" and result["best_val_loss"] == min(r["train_loss"] for r in rows)
    assert json.loads((tmp_path / "none" / "result.json").read_text())["monitor"] == "train_loss"
    assert Trainer(NoValidationToyTask([]), tc).fit(resume=True)["monitor"] == "train_loss"  # nothing left to run
    # with a validation part: the validation loss, and no note
    tc = dataclasses.replace(tc, run_dir=str(tmp_path / "valid"))
    result = Trainer(ToyTask([1.0, 0.5, 0.6]), tc).fit()
    assert result["monitor"] == "val_loss" and result["best_val_loss"] == 0.5
    assert "no validation part" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------- resume with other settings
class StopAt:
    """on_step (log_every=1): interrupt the run after ``step`` (as a kill would, after its checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, row):
        if row["step"] == self.step + 1:
            raise KeyboardInterrupt


def toy_lrs(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in rows if r["split"] == "train"]


def test_resume_with_the_same_cosine_config_is_exact_and_quiet(tmp_path, capsys):
    opts = dict(epochs=4, optimizer="sgd", lr=0.1, schedule="cosine", warmup_steps=2, min_lr=0.01, log_every=1,
                checkpoint_every=1, plot=False, progress=False, eval_test=False)
    Trainer(ToyTask([1.0] * 4), TrainConfig(run_dir=str(tmp_path / "straight"), **opts)).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(ToyTask([1.0] * 4), TrainConfig(run_dir=str(tmp_path / "res"), **opts), callbacks=[StopAt(5)]).fit()
    task = ToyTask([1.0] * 4)
    task.evaluated = 1  # the first epoch was evaluated before the interruption
    capsys.readouterr()
    Trainer(task, TrainConfig(run_dir=str(tmp_path / "res"), **opts)).fit(resume=True)
    assert "note:" not in capsys.readouterr().out
    assert toy_lrs(tmp_path / "res") == toy_lrs(tmp_path / "straight")  # bit-identical


def test_resume_extending_a_cosine_run_recomputes_it_over_the_new_total(tmp_path, capsys):
    """More epochs on resume: the cosine goes on over the new total (it used to stay at lr 0)."""
    opts = dict(optimizer="sgd", lr=0.1, schedule="cosine", log_every=1, plot=False, progress=False,
                run_dir=str(tmp_path), eval_test=False)
    Trainer(ToyTask([1.0] * 2), TrainConfig(epochs=2, **opts)).fit()  # 6 steps, ending at lr 0
    assert toy_lrs(tmp_path)[-1] == pytest.approx(0.0, abs=1e-12)
    trainer = Trainer(ToyTask([1.0] * 2), TrainConfig(epochs=4, **opts))
    trainer.fit(resume=True)
    out = capsys.readouterr().out
    assert "note: the cosine schedule's parameters differ from the checkpoint's (total_steps 6 -> 12)" in out
    assert "lr 0 -> 0.05" in out  # it jumps up to the 12-step curve's value at step 6
    curve = optim.CosineLR(optim.SGD(ToyModel(ToyConfig()), lr=0.1), total_steps=12)
    expected = [curve.step() for _ in range(12)]
    assert toy_lrs(tmp_path)[6:] == pytest.approx(expected[6:], abs=1e-12)
    assert trainer.schedule.total_steps == 12 and trainer.optimizer.lr == pytest.approx(0.0, abs=1e-12)


def test_resume_takes_the_plateau_and_step_parameters_from_the_config(tmp_path, capsys):
    opts = dict(optimizer="sgd", lr=0.1, plot=False, progress=False, eval_test=False)
    run = str(tmp_path / "plateau")
    Trainer(ToyTask([1.0, 0.5]), TrainConfig(epochs=2, schedule="plateau", lr_factor=0.5, run_dir=run, **opts)).fit()
    trainer = Trainer(ToyTask([0.6, 0.7]), TrainConfig(epochs=4, schedule="plateau", lr_factor=0.1, run_dir=run, **opts))
    trainer.fit(resume=True)
    assert "factor 0.5 -> 0.1" in capsys.readouterr().out
    assert trainer.schedule.factor == 0.1 and trainer.optimizer.lr == pytest.approx(0.1 * 0.1 * 0.1)
    assert trainer.schedule.best == 0.5  # the progress came from the checkpoint
    run = str(tmp_path / "step")
    Trainer(ToyTask([1.0] * 4), TrainConfig(epochs=1, schedule="step", lr_factor=0.5, run_dir=run, **opts)).fit()
    trainer = Trainer(ToyTask([1.0] * 4), TrainConfig(epochs=3, schedule="step", lr_factor=0.2, run_dir=run, **opts))
    trainer.fit(resume=True)
    assert "gamma 0.5 -> 0.2" in capsys.readouterr().out
    assert [r["lr"] for r in epoch_rows(run)] == pytest.approx([0.1, 0.02, 0.004])  # the new gamma at once


def test_resume_from_a_checkpoint_with_the_old_full_schedule_state(tmp_path, capsys):
    """Checkpoints written before the state was progress-only: read their progress, keep the config's parameters."""
    from rnnkit.checkpoint import load_checkpoint, save_checkpoint

    opts = dict(optimizer="sgd", lr=0.1, schedule="cosine", log_every=1, plot=False, progress=False,
                run_dir=str(tmp_path), eval_test=False)
    Trainer(ToyTask([1.0] * 2), TrainConfig(epochs=2, **opts)).fit()
    path = CheckpointManager(tmp_path / "checkpoints").latest()
    tensors, meta = load_checkpoint(path)
    t = meta["trainer"]
    t["schedule"] = {"base_lr": 0.1, "last_step": 6, "total_steps": 6, "warmup_steps": 0, "min_lr": 0.0}
    del t["schedule_params"]
    save_checkpoint(path, tensors, meta)
    trainer = Trainer(ToyTask([1.0] * 2), TrainConfig(epochs=4, **opts))
    trainer.fit(resume=True)
    assert "total_steps 6 -> 12" in capsys.readouterr().out
    assert trainer.schedule.total_steps == 12 and trainer.schedule.last_step == 12
    curve = optim.CosineLR(optim.SGD(ToyModel(ToyConfig()), lr=0.1), total_steps=12)
    assert toy_lrs(tmp_path)[6:] == pytest.approx([curve.step() for _ in range(12)][6:], abs=1e-12)


def test_a_run_early_stopping_ended_stays_ended_on_resume(tmp_path, capsys):
    tc = TrainConfig(epochs=6, optimizer="sgd", lr=0.1, early_stopping=2, plot=False, run_dir=str(tmp_path),
                     progress=False)
    assert Trainer(ToyTask([1.0, 0.5, 0.6, 0.7, 0.8, 0.9]), tc).fit()["epochs"] == 4
    capsys.readouterr()
    task = ToyTask([0.8, 0.9])
    result = Trainer(task, tc).fit(resume=True)
    assert result["epochs"] == 4 and task.evaluated == 0  # as the uninterrupted run: no fifth epoch
    assert "stopped: no improvement of val_loss for 2 epochs" in capsys.readouterr().out
    result = Trainer(task, dataclasses.replace(tc, early_stopping=3)).fit(resume=True)  # more patience: goes on
    assert result["epochs"] == 5 and task.evaluated == 1


@pytest.mark.parametrize("name", ["config.json", "result.json", "metrics.csv", "metrics.jsonl", "loss.png",
                                  "checkpoints/notes.txt"])
def test_fresh_run_refuses_a_run_dir_with_any_of_a_runs_files(tmp_path, name):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text("the user's\n")
    tc = TrainConfig(epochs=1, optimizer="sgd", lr=0.1, plot=False, run_dir=str(tmp_path), progress=False)
    with pytest.raises(FileExistsError, match=f"already holds .*{Path(name).name}"):
        Trainer(ToyTask([1.0]), tc).fit()
    assert (tmp_path / name).read_text() == "the user's\n"
    Trainer(ToyTask([1.0]), dataclasses.replace(tc, overwrite=True)).fit()


def test_resume_without_a_checkpoint_starts_afresh_over_the_runs_own_logs(tmp_path, capsys):
    """A run killed before its first checkpoint leaves config.json and metrics.jsonl: resume may replace them."""
    tc = TrainConfig(epochs=1, optimizer="sgd", lr=0.1, plot=False, run_dir=str(tmp_path), progress=False)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "epoch": 0, "step": 1, "loss": 9.0}\n')
    Trainer(ToyTask([1.0]), tc).fit(resume=True)
    assert "starting fresh" in capsys.readouterr().out
    assert '"loss": 9.0' not in (tmp_path / "metrics.jsonl").read_text()


def test_rollback_with_ring_batching_goes_on_from_the_live_state(tmp_path):
    """After a rollback the next epoch starts from the state the epoch ended with, not the checkpoint's."""
    cfg, task = tiny_lm_task(batching="ring")
    original_backward, original_loss, calls, seen = task.backward, task.train_loss, [], {}

    def backward_with_one_blowup():
        original_backward()
        calls.append(1)
        if len(calls) == 12:
            task.model.rnn.grads["weight_ih_l0"][...] = np.inf

    def loss_recording_the_state(batch):
        if trainer.epoch == 1 and trainer.batch_index == 1 and "start" not in seen:
            seen["start"] = {k: np.array(v) for k, v in task.model.carried_state().items()}
        return original_loss(batch)

    class EpochEnd:
        def on_epoch_end(self, trainer, row):
            seen.setdefault("end", {k: np.array(v) for k, v in task.model.carried_state().items()})

    task.backward, task.train_loss = backward_with_one_blowup, loss_recording_the_state
    tc = TrainConfig(epochs=2, lr=2e-3, run_dir=str(tmp_path), progress=False, plot=False, eval_test=False,
                     checkpoint_every=5, on_divergence="rollback")
    trainer = Trainer(task, tc, cfg, callbacks=[EpochEnd()])
    trainer.fit()
    assert trainer.rollbacks == 1 and seen["end"]
    for key, value in seen["end"].items():
        np.testing.assert_array_equal(seen["start"][key], value, err_msg=key)


def test_config_errors_name_the_field_and_value():
    for kwargs, message in [
        (dict(schedule="step", lr_factor=-1.0), "lr_factor -1.0; expected > 0"),
        (dict(lr_factor=0.0), "lr_factor 0.0; expected > 0"),
        (dict(schedule="plateau", lr_factor=1.5), "lr_factor 1.5 with schedule 'plateau'; expected 0 < lr_factor < 1"),
        (dict(time_budget=-5.0), r"time_budget -5.0; expected a finite number of seconds >= 0 \(0: no limit\)"),
        (dict(time_budget=math.nan), "time_budget nan"),
        (dict(time_budget=math.inf), "time_budget inf"),
        (dict(clip=-1.0), r"clip -1.0; expected >= 0 \(0: no clipping\)"),
        (dict(clip=math.nan), "clip nan"),
        (dict(min_lr=-1e-4), "min_lr -0.0001; expected >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)
    TrainConfig(schedule="step", lr_factor=2.0, time_budget=0.0, clip=0.0, min_lr=0.0)  # all still allowed


def test_resume_without_a_checkpoint_after_a_kill_in_the_first_save(tmp_path):
    """A kill while the first checkpoint was written leaves only a temp file in checkpoints/."""
    tc = TrainConfig(epochs=1, optimizer="sgd", lr=0.1, plot=False, run_dir=str(tmp_path), progress=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".ckpt-3.safetensors.tmp").write_bytes(b"cut")
    (tmp_path / "config.json").write_text("{}")
    assert Trainer(ToyTask([1.0]), tc).fit(resume=True)["epochs"] == 1


# ----------------------------------------------------------------------------------- resume keeps the model
def lm_run(run_dir, resume=False, callbacks=(), task_overrides=None, **train_overrides):
    """A tiny LM run with hidden = embedding size (so tie_weights is possible); returns (result, trainer)."""
    cfg, task = tiny_lm_task()
    cfg = dataclasses.replace(cfg, embedding_size=24, **(task_overrides or {}))
    task = LanguageModelTask(cfg, task.corpus, seed=train_overrides.pop("task_seed", 0))
    options = dict(epochs=1, lr=3e-3, run_dir=str(run_dir), progress=False, eval_test=False, log_every=1, plot=False)
    trainer = Trainer(task, TrainConfig(**{**options, **train_overrides}), cfg, callbacks=callbacks)
    return trainer.fit(resume=resume), trainer


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_with_another_model_is_refused_naming_every_field(tmp_path, optimizer):
    lm_run(tmp_path, optimizer=optimizer, max_steps=3, task_overrides={"num_layers": 2})
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"num_layers 1 differs from the run's 2: a resumed run keeps its model; "
                                         r"start a new run_dir to change it"):
        lm_run(tmp_path, resume=True, optimizer=optimizer, task_overrides={"num_layers": 1})
    with pytest.raises(ValueError) as info:
        lm_run(tmp_path, resume=True, optimizer=optimizer,
               task_overrides={"num_layers": 2, "bias_hh": False, "tie_weights": True})
    assert "bias_hh False differs from the run's True" in str(info.value)
    assert "tie_weights True differs from the run's False" in str(info.value)
    assert (tmp_path / "config.json").read_text() == before  # a refused resume leaves the run's config
    _, trainer = lm_run(tmp_path, resume=True, optimizer=optimizer, max_steps=5, epochs=2,
                        task_overrides={"num_layers": 2})  # the same model still resumes
    assert trainer.step == 5 and trainer.model.config.num_layers == 2


def test_resume_refuses_a_checkpoint_whose_weights_do_not_fit_the_model(tmp_path):
    """Same model config, other weights (a layer added behind the config's back): not silently dropped."""
    tc = TrainConfig(epochs=1, optimizer="sgd", lr=0.1, plot=False, run_dir=str(tmp_path), progress=False)
    Trainer(ToyTask([1.0]), tc).fit()
    task = ToyTask([1.0, 1.0])
    task.model.extra = Linear(3, 1, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"weights do not fit this run's model \(missing \['extra\."):
        Trainer(task, dataclasses.replace(tc, epochs=2)).fit(resume=True)


def test_resume_mid_epoch_refuses_other_batching_and_allows_it_at_an_epoch_end(tmp_path, capsys):
    lm_run(tmp_path, max_steps=3, task_overrides={"batching": "reset"})  # stops mid-epoch, batch 3
    before = (tmp_path / "config.json").read_text()
    for overrides, field_text in [({"batch_size": 4}, "batch_size 4 differs from the run's 8"),
                                  ({"bptt": 8}, "bptt 8 differs from the run's 16"),
                                  ({"batching": "ring"}, "batching 'ring' differs from the run's 'reset'"),
                                  ({"task_seed": 3}, "seed 3 differs from the run's 0")]:
        task_overrides = {k: v for k, v in overrides.items() if k != "task_seed"}
        seed = {"task_seed": overrides["task_seed"]} if "task_seed" in overrides else {}
        with pytest.raises(ValueError, match=field_text + r": the run stopped mid-epoch \(epoch 1, batch 3\)"):
            lm_run(tmp_path, resume=True, task_overrides=task_overrides, **seed)
    assert (tmp_path / "config.json").read_text() == before  # config.json is written after the checks only
    lm_run(tmp_path, resume=True)  # the run's own values go on to the epoch end
    capsys.readouterr()
    _, trainer = lm_run(tmp_path, resume=True, epochs=2, max_steps=trainer_steps(tmp_path) + 2, task_seed=3)
    assert "note: seed 3 differs from the run's 0; the run resumes at an epoch end" in capsys.readouterr().out
    assert trainer.epoch == 1 and trainer.batch_index == 2


def trainer_steps(run_dir) -> int:
    from rnnkit.checkpoint import load_checkpoint
    _, meta = load_checkpoint(CheckpointManager(Path(run_dir) / "checkpoints").latest())
    return int(meta["trainer"]["step"])


def test_ring_batching_refuses_other_batching_even_at_an_epoch_end(tmp_path):
    lm_run(tmp_path, task_overrides={"batching": "ring"})  # one whole epoch; the carry is in the checkpoint
    with pytest.raises(ValueError, match="batch_size 4 differs from the run's 8: the checkpoint holds the recurrent "
                                         "state carried across epochs"):
        lm_run(tmp_path, resume=True, epochs=2, task_overrides={"batching": "ring", "batch_size": 4})


def test_non_finite_or_negative_rates_are_refused_naming_the_field():
    for kwargs, message in [
        (dict(lr=math.inf), "lr inf; expected > 0 and finite"),
        (dict(lr=math.nan), "lr nan"),
        (dict(lr=0.0), "lr 0.0; expected > 0"),
        (dict(momentum=math.nan), r"momentum nan; expected 0 <= momentum < 1"),
        (dict(momentum=-1.0), r"momentum -1.0; expected 0 <= momentum < 1"),
        (dict(momentum=1.0), r"momentum 1.0; expected 0 <= momentum < 1"),
        (dict(weight_decay=-5.0), "weight_decay -5.0; expected >= 0 and finite"),
        (dict(weight_decay=math.inf), "weight_decay inf"),
        (dict(weight_decay=math.nan), "weight_decay nan"),
        (dict(min_lr=math.inf), "min_lr inf; expected >= 0 and finite"),
        (dict(min_lr=math.nan), "min_lr nan"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)
    TrainConfig(optimizer="sgd", lr=1e-4, momentum=0.99, nesterov=True, weight_decay=0.0, min_lr=0.0)
    TrainConfig(lr=10.0, momentum=0.0, weight_decay=1e-2, min_lr=1e-6)
