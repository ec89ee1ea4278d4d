"""Tasks: what ``rnnkit train --task NAME`` trains. Each couples a model, its data and metrics.

The registry is lazy (``"module:Class"``) so importing rnnkit never imports every task.
A task class has:

- ``name``; ``config_class``: a dataclass of data and model hyper-parameters (the CLI
  makes a ``--flag`` of every field; ``metadata={"help": ...}`` is its help);
- ``main_metric``: the validation metric the trainer minimises (e.g. ``"val_loss"``);
- ``from_config(config, seed)`` and ``from_checkpoint(path)`` constructors;
- the methods of :class:`rnnkit.train.task.Task`: ``start_epoch``, ``train_batches``,
  ``num_train_batches``, ``train_loss``, ``backward``, ``evaluate``, ``extra_meta``.
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
    """The task class registered under ``name``."""
    if name not in TASKS:
        raise ValueError(f"task {name!r}; expected one of {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["TASKS", "get_task"]
