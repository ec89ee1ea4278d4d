"""What every model shares: a config dataclass, named parameters, and safe save/load.

A model is a Layer container with a typed ``config`` (a dataclass). ``save`` writes one
safetensors file: the weights under their dotted names, and in the header the model's
class name, its resolved config and whatever ``extra_state()`` returns (vocabularies,
label names, scalers) as JSON. ``load`` rebuilds the model from that file alone, and
never unpickles anything.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np

from .. import backend
from ..layers.base import Layer

MODEL_REGISTRY: dict[str, type["Model"]] = {}
_NOT_LAYER_STATE = frozenset({"params", "grads", "_eval_blocks"})
TRAINER_PREFIX = "optim."  # tensors of the trainer's state inside a training checkpoint


class Model(Layer):
    """Base class of rnnkit models. Subclasses set ``config_class`` and implement

    ``__init__(self, config, **extra)`` (``extra`` = what ``extra_state()`` returned),
    ``loss(...) -> float`` (training forward; caches), ``backward()`` (fills grads).
    """

    config_class: type = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODEL_REGISTRY[cls.__name__] = cls

    def __init__(self, config):
        super().__init__()
        self.config = config
        self._eval_blocks = 0  # evaluating() blocks open (LanguageModel.step then leaves the mode alone)

    @contextlib.contextmanager
    def evaluating(self):
        """A block of inference calls: eval mode inside, and on leaving it the model as it was.

        On leaving, the mode is the one before, and every layer's caches and carried state are
        put back too. So a ``predict`` or a decode between a training ``loss()`` and its
        ``backward()`` leaves that backward's gradients exact. Every ``predict`` / decode method
        runs inside one of these. Open one yourself around a loop of one-token calls:
        ``LanguageModel.predict`` / ``step`` inside a block skip their own switch and
        snapshot, a walk over every layer twice a call (at one token a call on an S-sized
        model, ~25 of ~90 us). Blocks nest."""
        saved = [(layer, _layer_state(layer)) for layer in self.modules()]  # each layer's mode too
        for layer, _ in saved:  # eval(), without walking the layers again
            layer.training = False
        self._eval_blocks += 1
        try:
            yield self
        finally:
            self._eval_blocks -= 1
            for layer, state in saved:
                layer.__dict__.update(state)

    def extra_state(self) -> dict:
        """JSON-able constructor extras saved with the weights (e.g. ``{"vocab": vocab.to_dict()}``)."""
        return {}

    @classmethod
    def from_extra_state(cls, config, extra: dict) -> "Model":
        """Rebuild an untrained model from its config and ``extra_state()``; override if needed."""
        return cls(config, **extra)

    def checkpoint_payload(self, meta: dict | None = None):
        tensors = {name: backend.to_numpy(p) for name, p, _ in self.named_parameters()}
        payload = {
            "model": type(self).__name__,
            "config": dataclasses.asdict(self.config),
            "extra": self.extra_state(),
        }
        payload.update(meta or {})
        return tensors, payload

    def save(self, path, meta: dict | None = None) -> Path:
        """Write weights + config + extras to one file, atomically (temp file, fsync, rename)."""
        from ..checkpoint import save_checkpoint

        tensors, payload = self.checkpoint_payload(meta)
        return save_checkpoint(path, tensors, payload)

    @classmethod
    def load(cls, path, dtype=None) -> "Model":
        """Rebuild a saved model. ``Model.load`` dispatches on the class name in the file.

        ``dtype``: cast the weights to it; None keeps the file's own (a float64 model comes
        back float64)."""
        from ..checkpoint import CheckpointError, load_checkpoint
        from ..config import from_dict

        tensors, meta = load_checkpoint(path)
        # a training checkpoint also holds optimizer state ("optim.*"): not the model's
        tensors = {n: v for n, v in tensors.items() if not n.startswith(TRAINER_PREFIX)}
        name = meta.get("model")
        target = MODEL_REGISTRY.get(name) if cls is Model and isinstance(name, str) else cls
        if target is None or name != target.__name__:
            raise CheckpointError(f"{path}: holds a {name!r} model; expected {cls.__name__}")
        config, extra = meta.get("config", {}), meta.get("extra", {})
        for key, value in (("config", config), ("extra", extra)):
            if not isinstance(value, dict):
                raise CheckpointError(f"{path}: its {key!r} is a {type(value).__name__}; expected an object")
        try:
            model = target.from_extra_state(from_dict(target.config_class, config), extra)
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # a file's content, not a bug here
            raise CheckpointError(f"{path}: cannot rebuild the {name} it holds ({type(e).__name__}: {e})") from None
        if dtype is None:  # the file's own float32 or float64
            floats = {v.dtype for v in tensors.values() if v.dtype.kind == "f"}
            dtype = floats.pop() if len(floats) == 1 and floats <= {np.dtype(np.float32), np.dtype(np.float64)} else None
        expected = {n: p for n, p, _ in model.named_parameters()}
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{path}: weights do not fit {name}: missing {missing}, unexpected {unexpected}")
        for n, value in tensors.items():
            if value.shape != expected[n].shape:
                raise CheckpointError(f"{path}: tensor {n!r} has shape {value.shape}; expected {expected[n].shape}")
        if dtype is not None and np.dtype(dtype) != model.dtype:
            model.to(dtype=dtype)
        model.load_state_dict({n: np.asarray(v) for n, v in tensors.items() if n in expected})
        return model


def _layer_state(layer: Layer) -> dict:
    """What a layer holds besides its parameters: its mode, the caches its ``backward`` reads
    (a reference to the embedding that backward hands dx, too) and its carried state. Lists
    and dicts (a cell's stack of step caches) are copied one level, since a forward appends
    to them in place."""
    state = {name: value for name, value in vars(layer).items() if name not in _NOT_LAYER_STATE}
    for name, value in state.items():
        if type(value) is list or type(value) is dict:
            state[name] = value.copy()
    return state
