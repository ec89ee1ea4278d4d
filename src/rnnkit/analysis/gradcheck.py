"""Numerical gradient checks: central finite differences in float64.

The check projects every output onto a fixed random direction ``R`` (so every output
element matters, with its own weight): ``L = sum_k <out_k, R_k>``. The analytic side
calls the layer's own ``backward`` with ``R`` as the upstream gradient; the numeric
side perturbs each element by ``+-eps`` and takes ``(L(+) - L(-)) / (2 eps)``.

The error of an array is ``max |analytic - numeric| / max |numeric|`` (normwise
relative; elementwise ratios blow up on entries that are ~0 by accident).

Every float input is accounted for: it is either checked (``report.errors``) or listed in
``report.unchecked`` with the reason (backward returned no gradient for it, or one of the
wrong shape, or ``check_inputs=False``). ``report.passed`` fails on an unchecked input unless
the caller allowed it (``allow_unchecked``, or ``check_inputs=False``): a gradient backward
forgets to return is a failure, never a silent omission.
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
    unchecked: dict[str, str] = field(default_factory=dict)  # float input name -> why it was not checked
    allowed: set[str] = field(default_factory=set)  # names in ``unchecked`` that do not fail ``passed``

    @property
    def max_rel_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def worst(self) -> str | None:
        return max(self.errors, key=self.errors.get) if self.errors else None

    @property
    def missing(self) -> list[str]:
        """Float inputs left unchecked that the caller did not allow: each one fails ``passed``."""
        return [n for n in self.unchecked if n not in self.allowed]

    def passed(self, tol: float = 1e-6) -> bool:
        return self.max_rel_error <= tol and not self.missing

    def __str__(self) -> str:
        width = max((len(n) for n in (*self.errors, *self.unchecked)), default=4)
        rows = [f"{n:<{width}}  {e:.2e}  ({self.checked[n]} elements)" for n, e in self.errors.items()]
        rows += [f"{n:<{width}}  unchecked: {why}{' (allowed)' if n in self.allowed else ''}"
                 for n, why in self.unchecked.items()]
        rows.append(f"max relative error {self.max_rel_error:.2e} ({self.worst})")
        if self.missing:
            rows.append(f"{len(self.missing)} float input(s) unchecked and not allowed: {', '.join(self.missing)}")
        return "\n".join(rows)


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


def _is_float_array(v) -> bool:
    return isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)


def _covers(allowed: str, name: str) -> bool:
    return name == allowed or name.startswith(allowed + ".")


def _match(inp, grad, name, found, unchecked):
    """Pair the float leaves of input ``inp`` with the same-structured gradient ``grad``:
    a matching array goes into ``found``, every other float leaf into ``unchecked`` with why."""
    if isinstance(inp, (tuple, list)):
        if isinstance(grad, (tuple, list)) and len(grad) == len(inp):
            for i, v in enumerate(inp):
                _match(v, grad[i], f"{name}.{i}", found, unchecked)
            return
        why = ("backward returned no gradient" if grad is None
               else f"backward returned {_describe(grad)} for a {type(inp).__name__} of {len(inp)}")
        for n, v in _leaves(inp, name):
            if _is_float_array(v):
                unchecked[n] = why
        return
    if not _is_float_array(inp):
        return
    if grad is None:
        unchecked[name] = "backward returned no gradient"
    elif not isinstance(grad, np.ndarray) or grad.shape != inp.shape:
        unchecked[name] = f"backward returned {_describe(grad)} for an array of shape {inp.shape}"
    else:
        found[name] = grad


def _describe(obj) -> str:
    if isinstance(obj, np.ndarray):
        return f"an array of shape {obj.shape}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    return f"a {type(obj).__name__}"


def gradcheck(layer: Layer, inputs, forward_kwargs=None, eps: float = 1e-6, seed: int = 0,
              max_elements: int | None = None, check_inputs: bool = True, method: str = "forward",
              allow_unchecked=()) -> GradcheckReport:
    """Check ``layer.backward`` against central differences, in float64.

    layer: any Layer; it is deep-copied and cast to float64 (yours is not touched).
    inputs: the positional arguments of ``forward`` (arrays, tuples of arrays, None, ints).
    The layer's ``backward`` is called with the random projection in the structure of
    ``forward``'s output (``backward(dy, dstate)`` for a recurrent layer,
    ``backward(dstate)`` for a cell, ``backward(dloss)`` for a loss or model); the input
    gradients are read from its return value, matched to the positional inputs by position
    and structure: a tuple return ``(d0, d1, ...)`` for ``inputs[0], inputs[1], ...`` (a
    cell's ``(dx, dstate)``), a single array for ``inputs[0]``; a ``dstate0`` the layer sets
    (a recurrent layer's initial-state gradient) follows as the gradient of the next input.
    Float input leaves are named ``input.<position>[.<index>...]`` (``input.1.0`` is the
    ``h0`` of an LSTM's ``(x, (h0, c0))``).
    max_elements: check at most this many random elements per array (None: all).
    check_inputs: False checks parameters only (every float input is then listed, allowed,
    in ``report.unchecked``).
    method: the forward method to call (``"loss"`` for a model whose ``loss(...)`` returns
    the scalar and whose ``backward(dloss)`` back-propagates it).
    allow_unchecked: names of float inputs that legitimately get no gradient from backward
    (a loss's target, say); a name covers the leaves below it (``"input.1"`` covers
    ``input.1.0`` and ``input.1.1``). They are still checked if backward does return a
    gradient for them; if not, they are listed in ``report.unchecked`` without failing
    ``passed``. A name matching no float input is an error (a typo would allow nothing).
    Returns a GradcheckReport with the max relative error of every parameter and checked
    input, and every float input it could not check in ``report.unchecked``; ``passed``
    fails on an unchecked input that was not allowed.
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
    if getattr(layer, "dstate0", None) is not None:
        layer.dstate0 = None  # a stale one (from a backward before the copy) must not stand in for this one
    dout = _rebuild(out, iter(projections))
    ret = layer.backward(*dout) if isinstance(out, tuple) else layer.backward(dout)
    analytic = {name: g.copy() for name, _, g in layer.named_parameters()}
    targets = [(name, p) for name, p, _ in layer.named_parameters()]

    # every float input leaf, in order; each is either checked or reported unchecked
    in_leaves = [(n, v) for n, v in _leaves(inputs, "input") if _is_float_array(v)]
    allow_unchecked = (allow_unchecked,) if isinstance(allow_unchecked, str) else tuple(allow_unchecked)
    for a in allow_unchecked:
        if not any(_covers(a, n) for n, _ in in_leaves):
            raise ValueError(f"allow_unchecked names {a!r}, which is no float input of this call "
                             f"(float inputs: {', '.join(n for n, _ in in_leaves) or 'none'})")
    report = GradcheckReport()
    if check_inputs:
        grads = list(ret) if isinstance(ret, (tuple, list)) else [ret]
        if getattr(layer, "dstate0", None) is not None:
            grads.append(layer.dstate0)
        found = {}
        for k, v in enumerate(inputs):
            _match(v, grads[k] if k < len(grads) else None, f"input.{k}", found, report.unchecked)
        for name, arr in in_leaves:
            if name in found:
                analytic[name] = found[name].copy()
                targets.append((name, arr))
    else:
        report.unchecked.update((n, "check_inputs=False") for n, _ in in_leaves)
        report.allowed.update(n for n, _ in in_leaves)
    report.allowed.update(n for n in report.unchecked if any(_covers(a, n) for a in allow_unchecked))

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
