"""Pieces every task shares: reading a task's config back from a checkpoint, data paths
that survive a change of folder, and length-bucketed batching of variable-length examples."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def absolute_if_exists(value: str) -> str:
    """``value`` as an absolute path when it names an existing file or folder, else unchanged.

    Task configs keep a data file's path this way, so the config saved in a checkpoint still
    finds the data when ``rnnkit evaluate`` runs from another folder."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def find_task_meta(meta: dict, name: str) -> dict:
    """``{"config": ..., "seed": ...}`` of task ``name`` from a checkpoint's metadata.

    The trainer stores the task's ``extra_meta()`` at the top level; a section one level
    down is accepted too.
    """
    for candidate in [meta] + [v for v in meta.values() if isinstance(v, dict)]:
        if candidate.get("task") == name and "task_config" in candidate:
            return {"config": candidate["task_config"], "seed": candidate.get("seed", 0)}
    raise ValueError(f"checkpoint holds no {name!r} task config; was it written by `rnnkit train --task {name}`?")


def bucketed_batches(idx: np.ndarray, lengths, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of examples of similar length (less padding).

    Shuffle ``idx``, sort each chunk of 50 batches by ``lengths[i]``, cut it into batches,
    then shuffle the batches.
    """
    idx = rng.permutation(idx)
    batches = []
    for start in range(0, len(idx), 50 * batch_size):
        chunk = idx[start:start + 50 * batch_size]
        chunk = chunk[np.argsort([len(lengths[i]) for i in chunk], kind="stable")]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]
