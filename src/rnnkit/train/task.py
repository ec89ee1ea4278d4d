"""The seam between a model and the trainer.

The trainer knows nothing of language models or seq2seq: it drives a ``Task``, which
knows its model, its data and its metrics. Every ``rnnkit train --task NAME`` is one
Task class; the loop, progress bar, clipping, schedules, checkpoints and logs are the
trainer's, shared by all.

Optional: ``before_fit(trainer)``, called once at the start of a fresh (not resumed) run,
after the run directory is prepared and before the first epoch (the classify task runs its
biLM pretraining there).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class Task(Protocol):
    model: Any  # an rnnkit.models.base.Model

    #: metric the trainer watches for plateau decay, early stopping and "best" checkpoints
    #: (lower is better), e.g. "val_loss"
    main_metric: str

    #: True when train_batches and evaluate put their arrays where the model's live
    #: (``self.model.xp.asarray``), so ``TrainConfig(device="cuda")`` may move the model to the
    #: GPU; a task without it is refused there with an error (every bundled task has it)
    supports_cuda: bool

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (e.g. a language model resets its carried state)."""

    def train_batches(self, epoch: int) -> Iterator[Any]:
        """The epoch's training batches, in a reproducible order (seeded by the task)."""

    def num_train_batches(self) -> int:
        """Length of an epoch in batches (for the progress bar)."""

    def train_loss(self, batch) -> tuple[float, int]:
        """Forward in training mode; returns (mean loss, number of counted items).

        It may take the gradients in the same pass (the ``lm`` task does: its fused output
        layer never holds the whole logits), and ``backward`` then has nothing left to do."""

    def backward(self) -> None:
        """Backward of the last train_loss (where it did not already); accumulates into the model's grads."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``split`` ("valid" or "test") in eval mode, e.g. {"loss": ..., "ppl": ...}."""

    def extra_meta(self) -> dict:
        """JSON-able data to store in checkpoints besides the model's own (e.g. data config)."""
