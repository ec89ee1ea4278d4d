"""Tasks: what ``rnnkit train --task NAME`` trains. Each couples a model, its data and metrics.

The registry maps a name to ``"module:Class"`` and imports lazily: importing rnnkit never
imports every task, and a task whose module is missing fails only when asked for.

The contract a task class meets (the trainer, ``rnnkit.train.Trainer``, and the command
line, ``rnnkit.cli``, rely on exactly this):

Class attributes
    ``name``          the registry name (``"lm"``), stored in checkpoints as ``task``.
    ``config_class``  a dataclass of the data and model hyper-parameters. The CLI makes a
                      ``--flag`` of every field (``hidden_size`` -> ``--hidden-size``; bool
                      fields get ``--x/--no-x``), with ``field(metadata={"help": ...})`` as
                      its help; config files and presets fill its ``[task]`` section; unknown
                      keys are errors.
    ``main_metric``   the key the trainer minimises for plateau decay, early stopping and the
                      best checkpoint: ``"val_" + a key of evaluate("valid")`` (``"val_loss"``).
    optional          ``reports_perplexity = True`` (the progress bar shows exp(loss));
                      ``unit = "tok"`` (what ``train_loss`` counts; the bar shows unit/s).

Constructors
    ``from_config(config, seed: int) -> task``   build data and an untrained model.
    ``from_checkpoint(path) -> task``            for ``rnnkit evaluate``: the model from the
                      file, the data rebuilt from the task config stored in it (so
                      ``extra_meta`` must store ``task``, ``task_config`` and ``seed``).

Instance
    ``model``  an :class:`rnnkit.models.base.Model`; and the methods of
    :class:`rnnkit.train.task.Task`: ``start_epoch(epoch)``, ``train_batches(epoch)``,
    ``num_train_batches()``, ``train_loss(batch) -> (mean loss, count)``, ``backward()``,
    ``evaluate(split) -> {metric: value}`` (``{}`` when the split does not exist),
    ``extra_meta() -> dict`` (JSON-able, stored in every checkpoint).

Exact resume needs ``train_batches(epoch)`` to depend only on the task's seed and the
epoch (e.g. ``numpy.random.default_rng([seed, epoch])``), never on a shared stream, so
that a resumed run can skip the batches done before a mid-epoch checkpoint. Random
streams used in training (dropout) live in the model's layers as ``rng`` Generators (or
in ``task.rng``): the trainer saves and restores every one. A model that carries state
across batches (a stateful language model) provides ``carried_state() -> {name: array}``
and ``set_carried_state(arrays)`` so mid-epoch checkpoints keep it.
"""
from __future__ import annotations

import importlib

TASKS = {
    "lm": "rnnkit.tasks.lm:LanguageModelTask",
    "seq2seq": "rnnkit.tasks.seq2seq:Seq2SeqTask",
    "classify": "rnnkit.tasks.classify:ClassifyTask",
    "caption": "rnnkit.tasks.caption:CaptionTask",
    "forecast": "rnnkit.tasks.forecast:ForecastTask",
}


def get_task(name: str):
    """The task class registered under ``name`` (imports its module now)."""
    if name not in TASKS:
        raise ValueError(f"task {name!r}; expected one of {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["TASKS", "get_task"]
