"""The layer protocol every rnnkit building block follows.

A layer owns named ``params`` and same-keyed ``grads``. ``forward`` caches what
``backward`` needs; ``backward(dy)`` returns the gradient with respect to the input and
*accumulates* parameter gradients into ``grads`` (call ``zero_grad()`` between steps).
Containers hold child layers as attributes; ``named_parameters()`` walks them and yields
dotted names ("encoder.rnn.weight_hh_l0") that checkpoints, optimizers and PyTorch
interop all share.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import backend


class Layer:
    """Base class: named parameters, accumulated gradients, train/eval mode, children."""

    #: Parameters whose gradient a step writes only in part (an embedding's rows): their
    #: gradients come from ``backend.page_zeros``, so the unwritten part occupies no memory.
    sparse_grad_params: frozenset = frozenset()

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True

    # -- parameters -------------------------------------------------------------
    def add_param(self, name: str, value) -> None:
        """Register a parameter and a zeroed gradient of the same shape and dtype (float32 or float64)."""
        if value.dtype not in (np.float32, np.float64):  # float16 ran silently, int failed far from here
            raise ValueError(f"parameter {name!r} of {type(self).__name__} has dtype {value.dtype}; expected float32 "
                             "or float64")
        xp = backend.get_array_module(value)
        self.params[name] = value
        if name in self.sparse_grad_params and xp is np:
            self.grads[name] = backend.page_zeros(value.shape, value.dtype)
        else:
            self.grads[name] = xp.zeros_like(value)

    def children(self) -> Iterator[tuple[str, "Layer"]]:
        """Direct sub-layers, in attribute order (lists of layers are indexed: ``rnn.0``)."""
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def named_parameters(self, prefix: str = "", _seen: set | None = None
                         ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(dotted_name, param, grad)`` for this layer and all children.

        A parameter shared by two layers (tied weights) is yielded once, under its first
        name, so optimizers update it once and its gradients from both uses add up.
        """
        seen = set() if _seen is None else _seen
        for name, value in self.params.items():
            if id(value) in seen:
                continue
            seen.add(id(value))
            yield prefix + name, value, self.grads[name]
        for child_name, child in self.children():
            yield from child.named_parameters(prefix + child_name + ".", seen)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Dotted name -> parameter array (the arrays themselves, not copies)."""
        return {name: p for name, p, _ in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters in place; shapes must match exactly."""
        own = {name: (p, g) for name, p, g in self.named_parameters()}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        pairs = [(name, own[name][0], value) for name, value in state.items() if name in own]
        for name, param, value in pairs:  # every shape before any copy: all or nothing
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(value.shape)}; expected {tuple(param.shape)}"
                )
        for _, param, value in pairs:
            xp = backend.get_array_module(param)
            param[...] = xp.asarray(value, dtype=param.dtype)

    def num_parameters(self) -> int:
        return int(sum(p.size for _, p, _ in self.named_parameters()))

    def zero_grad(self) -> None:
        for _, _, g in self.named_parameters():
            backend.zero_(g)  # a page_zeros gradient hands its pages back instead of being written

    # -- mode -------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Layer":
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Layer":
        return self.train(False)

    # -- dtype / device ---------------------------------------------------------
    def to(self, dtype=None, device: str | None = None) -> "Layer":
        """Cast and/or move every parameter (and reset its gradient) in place."""
        modules = list(self.modules())
        for layer in modules:
            for name in list(layer.params):
                value = layer.params[name]
                if device is not None:
                    value = backend.to_device(value, device)
                if dtype is not None:
                    value = value.astype(dtype)
                layer.add_param(name, value)
        for layer in modules:  # after every parameter moved: hooks may re-link shared ones
            layer._on_to(dtype, device)
        return self

    def _on_to(self, dtype, device) -> None:
        """Hook for layers that hold state besides params (e.g. a carried hidden state)."""

    def modules(self) -> Iterator["Layer"]:
        yield self
        for _, child in self.children():
            yield from child.modules()

    def _first_param(self):
        """The first of ``named_parameters()`` (own parameters come first), or None; without
        building the generator chain where the layer has one of its own (one-token steps ask
        for dtype and xp several times a token)."""
        for p in self.params.values():
            return p
        for _, p, _ in self.named_parameters():
            return p
        return None

    @property
    def dtype(self):
        p = self._first_param()
        return np.dtype(backend.get_default_dtype()) if p is None else p.dtype

    @property
    def xp(self):
        p = self._first_param()
        return backend.xp_for() if p is None else backend.get_array_module(p)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        kids = list(self.children())
        if not kids:
            return lines[0] + ")"
        for name, child in kids:
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"
