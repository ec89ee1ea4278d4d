"""Losses: fused softmax cross-entropy and mean squared error."""
from __future__ import annotations

import numpy as np

from .. import backend, kernels
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
        # fused log-softmax: one (N, V) buffer holds exp(z - max), and in backward the
        # gradient; the logits themselves are never modified
        if kernels.native_for(z):  # the same passes in C, on every core (float64 row losses)
            e, sumexp, neg_logp = kernels.native.softmax_forward(z, t_safe)
            logp_t = -neg_logp
        else:
            zmax = z.max(axis=1, keepdims=True)
            e = xp.subtract(z, zmax)
            xp.exp(e, out=e)
            sumexp = e.sum(axis=1)
            rows = xp.arange(len(t))
            logp_t = (z[rows, t_safe] - zmax[:, 0]) - xp.log(sumexp)
        count = int(valid.sum())
        self.count = count
        all_valid = count == len(t)
        self._cache = (e, sumexp, t_safe, None if all_valid else valid, count, logits.shape)
        if count == 0:
            return 0.0
        if not all_valid:
            logp_t = logp_t * valid
        return float(-logp_t.sum() / count)

    def backward(self, dloss: float = 1.0):
        """``dlogits = (softmax(logits) - onehot(targets)) * dloss / count`` at counted rows, 0 elsewhere.

        The gradient is written over the forward's exp buffer (no second (N, V) array), so
        each forward allows one backward.
        """
        if self._cache is None:
            raise RuntimeError("backward called before forward (or twice for one forward)")
        e, sumexp, t_safe, valid, count, shape = self._cache
        self._cache = None
        xp = backend.get_array_module(e)
        scale = dloss / max(count, 1)
        # softmax * scale in one pass over (N, V): each row of exp(z - max) times scale / sum
        row_scale = scale / sumexp
        if valid is not None:
            row_scale = row_scale * valid
        target_scale = scale if valid is None else (valid * scale).astype(e.dtype)
        if kernels.native_for(e):
            kernels.native.softmax_backward(e, t_safe, row_scale, xp.broadcast_to(target_scale, sumexp.shape))
        else:
            e *= row_scale.astype(e.dtype)[:, None]
            rows = xp.arange(len(t_safe))
            e[rows, t_safe] -= target_scale
        return e.reshape(shape)


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
