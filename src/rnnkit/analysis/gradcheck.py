"""Numerical gradient checks: central finite differences in float64.

The check projects every output onto a fixed random direction ``R`` (so every output
element matters, with its own weight): ``L = sum_k <out_k, R_k>``. The analytic side
calls the layer's own ``backward`` with ``R`` as the upstream gradient; the numeric
side perturbs each element by ``+-eps`` and takes ``(L(+) - L(-)) / (2 eps)``.

The error of an array is ``max |analytic - numeric| / max |numeric|`` (normwise
relative; elementwise ratios blow up on entries that are ~0 by accident).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..layers.base import Layer


@dataclass
class GradcheckReport:
    errors: dict[str, float] = field(default_factory=dict)  # name -> max relative error
    checked: dict[str, int] = field(default_factory=dict)  # name -> elements checked

    @property
    def max_rel_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def worst(self) -> str | None:
        return max(self.errors, key=self.errors.get) if self.errors else None

    def passed(self, tol: float = 1e-6) -> bool:
        return self.max_rel_error <= tol

    def __str__(self) -> str:
        width = max((len(n) for n in self.errors), default=4)
        rows = [f"{n:<{width}}  {e:.2e}  ({self.checked[n]} elements)" for n, e in self.errors.items()]
        return "\n".join(rows + [f"max relative error {self.max_rel_error:.2e} ({self.worst})"])


def _leaves(obj, prefix="out"):
    """Flatten nested tuples/lists of arrays into [(name, array-or-None)]."""
    if isinstance(obj, (tuple, list)):
        out = []
        for i, v in enumerate(obj):
            out += _leaves(v, f"{prefix}.{i}")
        return out
    return [(prefix, obj)]


def _rebuild(obj, values):
    """Same structure as ``obj`` with leaves taken in order from the iterator ``values``."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rebuild(v, values) for v in obj)
    return next(values)


def _to64(obj):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to64(v) for v in obj)
    if isinstance(obj, np.ndarray) and np.issubdtype(obj.dtype, np.floating):
        return obj.astype(np.float64)
    return obj


def _rel_error(analytic, numeric) -> float:
    scale = max(float(np.abs(numeric).max()), float(np.abs(analytic).max()), 1e-300)
    return float(np.abs(analytic - numeric).max() / scale)


def gradcheck(layer: Layer, inputs, forward_kwargs=None, eps: float = 1e-6, seed: int = 0,
              max_elements: int | None = None, check_inputs: bool = True, method: str = "forward") -> GradcheckReport:
    """Check ``layer.backward`` against central differences, in float64.

    layer: any Layer; it is deep-copied and cast to float64 (yours is not touched).
    inputs: the positional arguments of ``forward`` (arrays, tuples of arrays, None, ints).
    The layer's ``backward`` is called with the random projection in the structure of
    ``forward``'s output (``backward(dy, dstate)`` for a recurrent layer,
    ``backward(dstate)`` for a cell, ``backward(dloss)`` for a loss or model); the input
    gradients are read from its return value (and ``dstate0`` where the layer sets it).
    max_elements: check at most this many random elements per array (None: all).
    method: the forward method to call (``"loss"`` for a model whose ``loss(...)`` returns
    the scalar and whose ``backward(dloss)`` back-propagates it).
    Returns a GradcheckReport with the max relative error of every parameter and input.
    """
    forward_kwargs = forward_kwargs or {}
    layer = copy.deepcopy(layer).to(dtype=np.float64)
    inputs = _to64(tuple(inputs))
    forward_kwargs = {k: _to64(v) for k, v in forward_kwargs.items()}
    rng = np.random.default_rng(seed)

    # Snapshot everything a forward may consume or change, so each evaluation is identical:
    # RNG streams (dropout) and carried states (stateful layers).
    modules = list(layer.modules())
    rng_states = [(m, m.rng.bit_generator.state) for m in modules if isinstance(getattr(m, "rng", None), np.random.Generator)]
    carried = [(m, copy.deepcopy(m._state)) for m in modules if hasattr(m, "_state")]

    def restore():
        for m, s in rng_states:
            m.rng.bit_generator.state = s
        for m, s in carried:
            m._state = copy.deepcopy(s)

    def run_forward():
        restore()
        return getattr(layer, method)(*inputs, **forward_kwargs)

    out = run_forward()
    out_leaves = _leaves(out)
    projections = []
    for _, v in out_leaves:
        if isinstance(v, np.ndarray):
            projections.append(rng.standard_normal(v.shape))
        elif isinstance(v, float):
            projections.append(float(rng.standard_normal()))
        else:
            projections.append(None)

    def loss_of(output) -> float:
        total = 0.0
        for (_, v), r in zip(_leaves(output), projections):
            if r is not None:
                total += float(np.sum(np.asarray(v) * r))
        return total

    layer.zero_grad()
    dout = _rebuild(out, iter(projections))
    ret = layer.backward(*dout) if isinstance(out, tuple) else layer.backward(dout)
    analytic_inputs = _leaves(ret, "in")
    if getattr(layer, "dstate0", None) is not None:
        analytic_inputs += _leaves(layer.dstate0, "state0")
    analytic = {name: g.copy() for name, _, g in layer.named_parameters()}

    # float inputs, in order, paired with the returned input gradients
    in_leaves = [(n, v) for n, v in _leaves(inputs, "input") if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)]
    targets = [(name, p) for name, p, _ in layer.named_parameters()]
    if check_inputs:
        grads_in = [g for _, g in analytic_inputs if isinstance(g, np.ndarray)]
        for (name, arr), g in zip(in_leaves, grads_in):
            analytic[name] = g
            targets.append((name, arr))

    report = GradcheckReport()
    for name, arr in targets:
        flat = arr.reshape(-1)
        idx = np.arange(flat.size)
        if max_elements is not None and flat.size > max_elements:
            idx = rng.choice(flat.size, size=max_elements, replace=False)
        numeric = np.zeros(len(idx))
        for j, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + eps
            plus = loss_of(run_forward())
            flat[i] = old - eps
            minus = loss_of(run_forward())
            flat[i] = old
            numeric[j] = (plus - minus) / (2 * eps)
        report.errors[name] = _rel_error(analytic[name].reshape(-1)[idx], numeric)
        report.checked[name] = len(idx)
    return report
