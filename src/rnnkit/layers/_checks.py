"""Input validation shared by the layers: errors name the value and what was expected."""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend


def check_float_input(x, name: str, ndim: int, last_dim: int | None, dtype, check_finite: bool = True):
    """Validate a float array ``x``; return it unchanged."""
    # cheapest tests first: a one-token generation step runs this several times a token
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} is a {type(x).__name__}; expected an array")
    if x.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(x.shape)} ({x.ndim}-d); expected {ndim}-d")
    if getattr(x.dtype, "kind", None) != "f":  # np.issubdtype(x.dtype, np.floating), without its cost
        raise ValueError(f"{name} has dtype {x.dtype}; expected a float array of dtype {np.dtype(dtype).name}")
    if x.dtype != dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype}; expected {np.dtype(dtype).name} (the layer's dtype): "
            f"cast with .astype(np.{np.dtype(dtype).name}) or move the layer with .to(dtype=...)"
        )
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name} has last dimension {x.shape[-1]} (shape {tuple(x.shape)}); expected {last_dim}")
    if x.size == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)} with an empty dimension; need every size >= 1")
    xp = backend.get_array_module(x)
    if check_finite and not bool(xp.isfinite(x).all()):
        bad = int((~xp.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); expected finite values")
    return x


def check_int_input(ids, name: str, high: int):
    """Validate integer ids in [0, high)."""
    # dtype.kind "i" / "u": np.issubdtype(dtype, np.integer), without its cost
    if getattr(getattr(ids, "dtype", None), "kind", None) not in ("i", "u"):
        dtype = getattr(ids, "dtype", type(ids).__name__)
        raise ValueError(f"{name} has dtype {dtype}; expected an integer array of token ids")
    if ids.size == 0:
        raise ValueError(f"{name} has shape {tuple(ids.shape)}; need at least one id")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= high:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains id {bad}; expected ids in [0, {high - 1}]")
    return ids


def check_size(value, name: str, low: int = 1) -> int:
    """A constructor's size argument: any integer (``int``, ``np.int64``, ...) >= ``low``,
    not a bool nor a float; returned as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} {value!r}; expected an integer >= {low}")
    return int(value)


def check_flag(value, name: str) -> bool:
    """A constructor's on/off argument: a bool (or NumPy bool), not a truthy string or int."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} {value!r}; expected True or False")
    return bool(value)


def check_probability(value, name: str) -> float:
    """A dropout probability: a real number in [0, 1) (not a bool nor a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} {value!r}; expected a float with 0 <= {name} < 1")
    return float(value)


def check_grad_shape(g, name: str, shape: tuple, what: str = ""):
    """A gradient handed to a backward: an array of exactly ``shape`` (no broadcasting).

    Only the shape is looked at (no scan of the values): it runs once per backward call."""
    got = getattr(g, "shape", None)
    if got is None:
        raise ValueError(f"{name} is a {type(g).__name__}; expected an array of shape {shape}{what}")
    if tuple(got) != shape:
        raise ValueError(f"{name} has shape {tuple(got)}; expected {shape}{what}")
    return g
