"""Inverted dropout: scale kept units by 1/(1-p) in training so eval needs no rescaling."""
from __future__ import annotations

from .. import backend
from .base import Layer


class Dropout(Layer):
    """``y = x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` per element in training; identity in eval."""

    def __init__(self, p: float = 0.5, rng=None, seed=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p {p!r}; expected 0 <= p < 1")
        self.p = float(p)
        self.rng = rng if rng is not None else backend.default_rng(seed)
        self._mask = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        xp = backend.get_array_module(x)
        keep = 1.0 - self.p
        mask = (self.rng.random(x.shape, dtype=x.dtype if x.dtype.itemsize >= 4 else "float32") < keep)
        self._mask = xp.asarray(mask.astype(x.dtype) / x.dtype.type(keep))
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask
