"""Losses: fused softmax cross-entropy, the same fused with its affine layer, and mean squared error."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend, kernels
from ._checks import check_float_input
from .base import Layer
from .linear import Linear


def _check_targets(xp, targets, shape, against: str):
    """``targets`` as an array (a list or other array-like is converted), checked against ``shape``."""
    if not hasattr(targets, "shape") or not hasattr(targets, "dtype"):
        try:
            targets = xp.asarray(targets)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"targets are a {type(targets).__name__}; expected an integer array of shape "
                             f"{tuple(shape)}") from exc
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(f"targets have shape {tuple(targets.shape)}; expected {tuple(shape)} "
                         f"({against} without the class axis)")
    if not xp.issubdtype(targets.dtype, xp.integer):
        raise ValueError(f"targets have dtype {targets.dtype}; expected integer class ids")
    return targets


def _counted_targets(xp, targets, mask, ignore_index, V):
    """(targets flattened with uncounted ones set to 0, the counted positions (N,) bool)."""
    t = targets.reshape(-1)
    valid = xp.ones(t.shape, dtype=bool)
    if ignore_index is not None:
        valid &= t != ignore_index
    if mask is not None:
        if not hasattr(mask, "shape"):
            mask = xp.asarray(mask)
        if tuple(mask.shape) != tuple(targets.shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(targets.shape)}")
        valid &= mask.reshape(-1).astype(bool)
    bad = valid & ((t < 0) | (t >= V))
    if bool(bad.any()):
        raise ValueError(f"target id {int(t[bad][0])}; expected ids in [0, {V - 1}]")
    return xp.where(valid, t, 0), valid


def _softmax_rows(z, t, out):
    """``out = exp(z - rowmax)`` row by row (``out`` may be ``z``: in place); returns
    (sumexp, -log softmax(z)[t]) per row. In C on every core where the native kernels take
    the arrays (float64 row losses), else in NumPy."""
    if kernels.native_for(z, out):
        _, sumexp, neg_logp = kernels.native.softmax_forward(z, t, out=out)
        return sumexp, neg_logp
    xp = backend.get_array_module(z)
    z_t = z[xp.arange(len(t)), t]  # a copy, taken before ``out`` may overwrite z
    zmax = z.max(axis=1)
    xp.subtract(z, zmax[:, None], out=out)
    xp.exp(out, out=out)
    sumexp = out.sum(axis=1)
    return sumexp, xp.log(sumexp) - (z_t - zmax)


def _softmax_grad_rows(e, t, sumexp, valid, scale: float) -> None:
    """In place: rows of ``e = exp(z - max)`` become ``scale * (softmax(z) - onehot(t))``,
    zero where ``valid`` is False (None: every row counts); one pass over (N, V)."""
    xp = backend.get_array_module(e)
    row_scale = scale / sumexp
    if valid is not None:
        row_scale = row_scale * valid
    target_scale = scale if valid is None else (valid * scale).astype(e.dtype)
    if kernels.native_for(e):
        kernels.native.softmax_backward(e, t, row_scale, xp.broadcast_to(target_scale, sumexp.shape))
    else:
        e *= row_scale.astype(e.dtype)[:, None]
        e[xp.arange(len(t)), t] -= target_scale


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
        targets = _check_targets(xp, targets, logits.shape[:-1], "logits")
        z = logits.reshape(-1, V)
        t_safe, valid = _counted_targets(xp, targets, mask, self.ignore_index, V)
        # fused log-softmax: one (N, V) buffer holds exp(z - max), and in backward the
        # gradient; the logits themselves are never modified
        e = xp.empty(z.shape, dtype=z.dtype)
        sumexp, neg_logp = _softmax_rows(z, t_safe, e)
        count = int(valid.sum())
        self.count = count
        all_valid = count == len(t_safe)
        self._cache = (e, sumexp, t_safe, None if all_valid else valid, count, logits.shape)
        if count == 0:
            return 0.0
        if not all_valid:
            neg_logp = neg_logp * valid
        return float(neg_logp.sum() / count)

    def backward(self, dloss: float = 1.0):
        """``dlogits = (softmax(logits) - onehot(targets)) * dloss / count`` at counted rows, 0 elsewhere.

        The gradient is written over the forward's exp buffer (no second (N, V) array), so
        each forward allows one backward.
        """
        if self._cache is None:
            raise RuntimeError("backward called before forward (or twice for one forward)")
        e, sumexp, t_safe, valid, count, shape = self._cache
        self._cache = None
        _softmax_grad_rows(e, t_safe, sumexp, valid, dloss / max(count, 1))
        return e.reshape(shape)


CHUNK_BYTES = 16 << 20  # linear_cross_entropy's logits block; 2 blocks for the benchmark's M (700 x 10000)
GPU_CHUNK_BYTES = 256 << 20  # on a GPU (where the default is asked for): a block is launches, memory is plenty
# Where the native fused kernel (kernels.native.linear_xent) runs, from measurements on one
# 2-core machine (benchmarks/RESULTS.md, "The output layer in one native kernel"): float32
# vocabularies of at least NATIVE_MIN_VOCAB (enough rows of W to share among the threads);
# any number of rows up to H = NATIVE_ANY_ROWS_HIDDEN (0.68-0.78x the time of the BLAS
# row blocks at H 100-200); above it up to NATIVE_MAX_ROWS rows, or any number up to
# H = NATIVE_BIG_W_HIDDEN where W is over NATIVE_BIG_W_BYTES (dW is read and written once
# per block of rows: 128 rows, where at 4096 rows and H 512, V 2000 the BLAS blocks are 3-8 %
# faster; 256 for a W over 8 MiB, 0.87-0.92x at 1400-4096 rows, H 512-650; 1.03x at H 1024),
# and H = NATIVE_MAX_HIDDEN (its tiles read W's rows whole: 1.10x at H 2048).
NATIVE_ANY_ROWS_HIDDEN = 256
NATIVE_MAX_ROWS = 1024
NATIVE_BIG_W_HIDDEN = 768
NATIVE_BIG_W_BYTES = 8 << 20
NATIVE_MAX_HIDDEN = 1024
NATIVE_MIN_VOCAB = 1024


class LinearCrossEntropyResult(NamedTuple):
    loss: float  # mean over the counted positions (0.0 when none is counted)
    count: int  # counted positions
    dx: object  # d(dloss * loss)/dx, shaped like x; None when grad=False


def linear_cross_entropy(linear: Linear, x, targets, mask=None, *, ignore_index: int | None = None,
                         dloss: float = 1.0, grad: bool = True,
                         chunk_bytes: int = CHUNK_BYTES) -> LinearCrossEntropyResult:
    """``SoftmaxCrossEntropy(linear(x), targets)`` and its backward in one pass over row blocks.

    The (N, V) logits never exist at once: for each block of rows the logits are computed
    into one reused buffer of at most ``chunk_bytes`` (at least one row), turned into
    ``exp(z - max)`` in place, then (``grad=True``) into ``dloss * (softmax - onehot) /
    count`` in place; that block's ``dx`` rows and its share of the weight and bias
    gradients are taken before the next block overwrites it. With a big vocabulary this is
    most of a language model's activation memory (the benchmark's M: 2 x 27 MiB of logits
    and softmax become one 13 MiB block). The FLOPs are the unfused ones; each further
    block costs one more read and write of the weight gradient (a beta = 1 GEMM) and, in
    OpenBLAS, one more packing of the weight for the forward and ``dx`` GEMMs (measured:
    2-4 % of the benchmark's M step with two blocks, ``benchmarks/profile_step_memory.py``).

    The gradients *accumulate into* ``linear.grads`` here, in the forward: there is no
    separate backward call, so ``dloss`` (the factor the caller's backward would pass) is
    given up front. ``grad=False`` computes the loss only (evaluation), with the same
    memory bound. ``mask`` and ``ignore_index`` count positions as in
    :class:`SoftmaxCrossEntropy`. Returns ``(loss, count, dx)``.

    With the native kernels, float32, a vocabulary of at least ``NATIVE_MIN_VOCAB`` and the
    hidden sizes and row counts where it measured faster (the ``NATIVE_*`` bounds; the
    benchmark's S and M), the whole pass is one C kernel
    (:func:`rnnkit.kernels.native.linear_xent`): the threads split the vocabulary and take
    the tokens in blocks of 128 (256 where the weight is over 8 MiB) whose logits stay in cache
    from the GEMM that makes them to the two that consume them, reading W, x and the gradients
    in place. It keeps its own blocks (at most 16 MiB of logits a thread), so ``chunk_bytes``
    does not apply there; the result is the same to float32 rounding.
    """
    if not isinstance(linear, Linear):
        raise TypeError(f"linear is a {type(linear).__name__}; expected an rnnkit Linear layer")
    if not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool) or chunk_bytes < 1:
        raise ValueError(f"chunk_bytes {chunk_bytes!r}; expected an integer >= 1")
    W = linear.params["weight"]
    V, H = W.shape
    if getattr(x, "ndim", 0) < 1:
        raise ValueError(f"x has shape {getattr(x, 'shape', None)}; expected (..., {H})")
    check_float_input(x, "x", x.ndim, H, W.dtype, check_finite=False)
    xp = backend.get_array_module(x)
    targets = _check_targets(xp, targets, x.shape[:-1], "x")
    t, valid = _counted_targets(xp, targets, mask, ignore_index, V)
    x2 = xp.ascontiguousarray(x.reshape(-1, H))
    N = x2.shape[0]
    count = int(valid.sum())
    all_valid = count == N
    scale = dloss / max(count, 1)
    if _native_xent(linear, x2):
        return _linear_xent_native(linear, x, x2, t, valid, all_valid, count, scale, grad)
    on_gpu = xp is not np
    if on_gpu and chunk_bytes == CHUNK_BYTES:  # the CPU's cache-sized blocks cost launches there, not memory
        chunk_bytes = GPU_CHUNK_BYTES
    rows = max(1, min(N, chunk_bytes // (V * W.itemsize)))
    rows = -(-N // -(-N // rows))  # as many blocks as needed, of equal size
    buf = xp.empty((rows, V), dtype=W.dtype)
    dx = xp.empty_like(x2) if grad else None
    total = 0.0
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        z, tc, vc = buf[: r1 - r0], t[r0:r1], None if all_valid else valid[r0:r1]
        xp.matmul(x2[r0:r1], W.T, out=z)
        linear.add_bias(z)
        if on_gpu and kernels.cuda.softmax_xent_takes(z, tc, vc):
            # loss, softmax and gradient in one launch; the total stays on the device until the end
            neg_logp = kernels.cuda.softmax_xent_rows(z, tc, vc, scale, grad)
            total = total + (neg_logp if vc is None else neg_logp * vc).sum()
        else:
            sumexp, neg_logp = _softmax_rows(z, tc, z)
            total += float((neg_logp if vc is None else neg_logp * vc).sum())
            if grad:
                _softmax_grad_rows(z, tc, sumexp, vc, scale)
        if not grad:
            continue
        xp.matmul(z, W, out=dx[r0:r1])
        linear.accumulate_grads(z, x2[r0:r1])
    loss = float(total) / count if count else 0.0
    return LinearCrossEntropyResult(loss, count, dx.reshape(x.shape) if grad else None)


def native_xent_shape(V: int, H: int, N: int) -> bool:
    """True for the shapes (vocabulary, hidden size, rows) where ``linear_cross_entropy``
    runs the native kernel (given float32 NumPy arrays it can take): the ``NATIVE_*`` bounds."""
    if V < NATIVE_MIN_VOCAB or H > NATIVE_MAX_HIDDEN:
        return False
    big_w = H <= NATIVE_BIG_W_HIDDEN and 4 * V * H > NATIVE_BIG_W_BYTES  # the kernel's 256-row blocks
    return H <= NATIVE_ANY_ROWS_HIDDEN or N <= NATIVE_MAX_ROWS or big_w


def _native_xent(linear: Linear, x2) -> bool:
    """True where :func:`linear_cross_entropy` runs the native fused kernel: float32 NumPy
    arrays it takes as they are and the shapes where it was measured faster (the
    ``NATIVE_*`` bounds above)."""
    W = linear.params["weight"]
    if not native_xent_shape(*W.shape, x2.shape[0]):
        return False
    return kernels.native_for(W, x2, linear.params.get("bias"), linear.grads["weight"],
                              linear.grads.get("bias"), min_size=0)


def _linear_xent_native(linear: Linear, x, x2, t, valid, all_valid: bool, count: int, scale: float,
                        grad: bool) -> LinearCrossEntropyResult:
    N = x2.shape[0]
    dx = row_scale = None
    if grad:
        dx = np.empty_like(x2)
        row_scale = np.full(N, scale, dtype=np.float32) if all_valid else (valid * scale).astype(np.float32)
    neg_logp = kernels.native.linear_xent(
        x2, linear.params["weight"], linear.params.get("bias"), t, row_scale, row_scale, dx,
        linear.grads["weight"] if grad else None, linear.grads.get("bias") if grad else None)
    total = float((neg_logp if all_valid else neg_logp * valid).sum())
    loss = total / count if count else 0.0
    return LinearCrossEntropyResult(loss, count, dx.reshape(x.shape) if grad else None)


class MSELoss(Layer):
    """``mean((pred - target)^2)`` over counted elements (``mask`` over leading axes, broadcast)."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, pred, target, mask=None) -> float:
        """pred, target: equal shapes (...). mask: None, or bool/0-1 values over pred's leading
        axes, of shape ``pred.shape[:mask.ndim]`` (e.g. (B, T) for (B, T, D)), broadcast over the rest."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}; expected equal shapes")
        xp = backend.get_array_module(pred)
        if mask is not None:
            if not hasattr(mask, "shape"):
                mask = xp.asarray(mask)
            if mask.ndim > pred.ndim or tuple(mask.shape) != tuple(pred.shape[:mask.ndim]):
                raise ValueError(f"mask has shape {tuple(mask.shape)}; expected pred's leading axes, e.g. "
                                 f"{tuple(pred.shape[:-1])} for pred {tuple(pred.shape)}")
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
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        diff, count = self._cache
        return diff * (2.0 * dloss / count)


__all__ = ["SoftmaxCrossEntropy", "linear_cross_entropy", "LinearCrossEntropyResult", "MSELoss"]
