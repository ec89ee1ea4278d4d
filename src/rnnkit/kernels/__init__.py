"""Pointwise cell kernels, two interchangeable implementations of one contract.

- ``pointwise``: the NumPy reference, written for reading; the tests' oracle.
- ``fused``: the fast path (fewer, whole-block array passes), checked against it.

The time loop asks :func:`active` for the module at every call, so
``rnnkit.kernels.use("reference")`` switches every layer to the reference (for
debugging, or to time the difference).
"""
from . import fused, pointwise

_KERNELS = {"fused": fused, "reference": pointwise}
_active = fused


def use(name: str) -> None:
    """Select the kernels every recurrent layer runs: ``"fused"`` (default) or ``"reference"``."""
    global _active
    if name not in _KERNELS:
        raise ValueError(f"kernels {name!r}; expected one of {sorted(_KERNELS)}")
    _active = _KERNELS[name]


def active():
    """The kernel module in use (``fused`` or ``pointwise``)."""
    return _active


__all__ = ["active", "fused", "pointwise", "use"]
