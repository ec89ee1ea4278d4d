"""Pooling over time: one vector per sequence from a (B, T, D) sequence of outputs.

Only valid steps count (``mask`` True), so a padded sequence pools to exactly what it
would pool to alone:

- ``last``: the output at each sequence's last valid step (``y[b, L_b - 1]`` for right
  padding). For a bidirectional output ``[forward | reverse]`` the reverse half is taken
  at the first valid step, where the reverse direction has read the whole sequence: the
  pooled vector is the final state of both directions.
- ``mean``: ``sum_t m[b, t] y[b, t] / L_b``.
- ``max``: ``max_{t: m[b, t]} y[b, t, d]`` per feature; the gradient goes to the argmax step.
- ``max+mean``: ``[max | mean]`` concatenated ("concat pooling", as in ULMFiT), width ``2 D``;
  the gradient is the sum of the two poolings' gradients.
"""
from __future__ import annotations

from .. import backend
from ._checks import check_float_input
from .base import Layer

POOLING_MODES = ("last", "mean", "max", "max+mean")


class SequencePooling(Layer):
    """``(B, T, D)`` outputs and a ``(B, T)`` bool mask -> ``(B, D)`` (``(B, 2 D)`` for "max+mean"); no parameters.

    mode: "last" | "mean" | "max" | "max+mean". num_directions: 2 when the input is a bidirectional
    output ``[forward H | reverse H]`` (matters for "last" only).
    """

    def __init__(self, mode: str = "last", num_directions: int = 1):
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling mode {mode!r}; expected one of {POOLING_MODES}")
        if num_directions not in (1, 2):
            raise ValueError(f"num_directions {num_directions!r}; expected 1 or 2")
        self.mode, self.num_directions = mode, num_directions
        self._cache = None

    def output_size(self, input_size: int) -> int:
        """Width of the pooled vector for ``input_size`` features per step."""
        return 2 * input_size if self.mode == "max+mean" else input_size

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (", bidirectional" if self.num_directions == 2 else "")

    def forward(self, y, mask=None):
        """y (B, T, D); mask (B, T) bool, True at valid steps (None: all valid). Returns (B, D), (B, 2 D) for "max+mean"."""
        check_float_input(y, "y", 3, None, y.dtype, check_finite=False)
        xp = backend.get_array_module(y)
        B, T, D = y.shape
        if mask is None:
            mask = xp.ones((B, T), dtype=bool)
        else:
            mask = xp.asarray(mask)
            if tuple(mask.shape) != (B, T) or mask.dtype != bool:
                raise ValueError(f"mask has shape {tuple(mask.shape)} dtype {mask.dtype}; expected ({B}, {T}) bool")
        lengths = mask.sum(axis=1)
        if int(lengths.min()) < 1:
            raise ValueError(f"sequence {int(xp.argmin(lengths))} has no valid step; need length >= 1")
        rows = xp.arange(B)
        if self.mode == "last":
            H = D // self.num_directions
            last = T - 1 - mask[:, ::-1].argmax(axis=1)  # last valid step (L - 1 for right padding)
            first = mask.argmax(axis=1)  # where the reverse direction has read everything
            out = y[rows, last].copy()
            if self.num_directions == 2:
                out[:, H:] = y[rows, first, H:]
            self._cache = (y.shape, (last, first))
        else:
            w = arg = None
            if self.mode in ("mean", "max+mean"):
                w = (mask / lengths[:, None]).astype(y.dtype)  # (B, T)
                out = xp.einsum("bt,btd->bd", w, y)
            if self.mode in ("max", "max+mean"):
                masked = xp.where(mask[:, :, None], y, -xp.inf)
                arg = masked.argmax(axis=1)  # (B, D)
                top = xp.take_along_axis(y, arg[:, None, :], axis=1)[:, 0]
                out = top if w is None else xp.concatenate([top, out], axis=1)  # [max | mean]
            self._cache = (y.shape, (w, arg))
        return out

    def backward(self, dout):
        """dout (B, D) ((B, 2 D) for "max+mean") -> dy (B, T, D); padded steps get exactly zero."""
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        shape, aux = self._cache
        xp = backend.get_array_module(dout)
        B, T, D = shape
        rows = xp.arange(B)
        if self.mode == "last":
            dy = xp.zeros(shape, dtype=dout.dtype)
            H = D // self.num_directions
            last, first = aux
            if self.num_directions == 2:
                dy[rows, last, :H] = dout[:, :H]
                dy[rows, first, H:] += dout[:, H:]
            else:
                dy[rows, last] = dout
        else:
            w, arg = aux
            dmax, dmean = (dout[:, :D], dout[:, D:]) if self.mode == "max+mean" else (dout, dout)
            # each feature's argmax step, as fancy indices (CuPy 13 has no put_along_axis)
            at = (rows[:, None], arg, xp.arange(D)[None, :]) if arg is not None else None
            if w is None:
                dy = xp.zeros(shape, dtype=dout.dtype)
                dy[at] = dmax
                return dy
            dy = w[:, :, None] * dmean[:, None, :]
            if arg is not None:
                dy[at] += dmax  # one step per (b, d): no repeated indices
        return dy


__all__ = ["SequencePooling", "POOLING_MODES"]
