"""Losses: fused softmax cross-entropy and mean squared error."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._checks import check_float_input
from .base import Layer


class SoftmaxCrossEntropy(Layer):
    """Mean of ``-log softmax(logits)[target]`` over counted positions.

    logits (..., V), targets (...) ints. Positions whose target equals ``ignore_index``,
    or where ``mask`` is False, are not counted. Softmax and log are fused through
    log-sum-exp (``logits - max`` first), so nothing overflows; the backward is
    ``(softmax - onehot) / count`` directly, never through the log.
    """

    def __init__(self, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.count = 0
        self._cache = None

    def forward(self, logits, targets, mask=None) -> float:
        xp = backend.get_array_module(logits)
        check_float_input(logits, "logits", logits.ndim, None, logits.dtype, check_finite=False)
        V = logits.shape[-1]
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"targets have shape {tuple(targets.shape)}; expected {tuple(logits.shape[:-1])} (logits without the class axis)")
        if not xp.issubdtype(targets.dtype, xp.integer):
            raise ValueError(f"targets have dtype {targets.dtype}; expected integer class ids")
        z = logits.reshape(-1, V)
        t = targets.reshape(-1)
        valid = xp.ones(t.shape, dtype=bool)
        if self.ignore_index is not None:
            valid &= t != self.ignore_index
        if mask is not None:
            if tuple(mask.shape) != tuple(targets.shape):
                raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(targets.shape)}")
            valid &= mask.reshape(-1).astype(bool)
        t_safe = xp.where(valid, t, 0)
        bad = valid & ((t < 0) | (t >= V))
        if bool(bad.any()):
            raise ValueError(f"target id {int(t[bad][0])}; expected ids in [0, {V - 1}]")
        shifted = z - z.max(axis=1, keepdims=True)
        lse = xp.log(xp.exp(shifted).sum(axis=1))
        logp_t = shifted[xp.arange(len(t)), t_safe] - lse
        count = int(valid.sum())
        self.count = count
        self._cache = (shifted, lse, t_safe, valid, count, logits.shape)
        if count == 0:
            return 0.0
        return float(-(logp_t * valid).sum() / count)

    def backward(self, dloss: float = 1.0):
        shifted, lse, t_safe, valid, count, shape = self._cache
        xp = backend.get_array_module(shifted)
        probs = xp.exp(shifted - lse[:, None])
        probs[xp.arange(len(t_safe)), t_safe] -= 1.0
        scale = dloss / max(count, 1)
        probs *= (valid * scale).astype(probs.dtype)[:, None]
        return probs.reshape(shape)


class MSELoss(Layer):
    """``mean((pred - target)^2)`` over counted elements (``mask`` over leading axes, broadcast)."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, pred, target, mask=None) -> float:
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}; expected equal shapes")
        xp = backend.get_array_module(pred)
        diff = pred - target
        if mask is None:
            w = None
            count = diff.size
        else:
            w = mask.reshape(mask.shape + (1,) * (pred.ndim - mask.ndim)).astype(pred.dtype)
            w = xp.broadcast_to(w, pred.shape)
            count = int(w.sum())
            diff = diff * w
        self._cache = (diff, max(count, 1))
        return float((diff * diff).sum() / max(count, 1))

    def backward(self, dloss: float = 1.0):
        diff, count = self._cache
        return diff * (2.0 * dloss / count)


__all__ = ["SoftmaxCrossEntropy", "MSELoss"]
