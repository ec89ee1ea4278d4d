"""Embedding lookup: ``y[b, t] = W[ids[b, t]]``."""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from ._checks import check_grad_shape, check_int_input, check_size
from .base import Layer
from .recurrent import init_normal


class Embedding(Layer):
    """Rows of ``weight`` (num_embeddings, embedding_dim) picked by integer ids.

    ids of any shape (...) -> (..., embedding_dim). The backward scatters-adds the
    gradient rows into the ids' rows (repeated ids accumulate); ``padding_idx``'s row
    is initialised to zero and never receives gradient, as in PyTorch.

    The weight gradient is a dense array, but a step writes only the rows of its ids: from
    16 MiB up (``backend.PAGE_ZEROS_MIN_BYTES``) it comes from ``backend.page_zeros``, so on
    Linux the rows no batch since the last ``zero_grad()`` has touched take no memory (on
    config M, about 4 of its 25 MiB are resident).
    """

    sparse_grad_params = frozenset({"weight"})

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype=None, rng=None, seed=None, init_std: float = 1.0):
        super().__init__()
        num_embeddings = check_size(num_embeddings, "num_embeddings")
        embedding_dim = check_size(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            if isinstance(padding_idx, (bool, np.bool_)) or not isinstance(padding_idx, numbers.Integral):
                raise ValueError(f"padding_idx {padding_idx!r}; expected an integer id in "
                                 f"[0, {num_embeddings - 1}] or None")
            padding_idx = int(padding_idx)
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"padding_idx {padding_idx}; expected an id in [0, {num_embeddings - 1}]")
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        dtype = dtype or backend.get_default_dtype()
        rng = rng if rng is not None else backend.default_rng(seed)
        weight = init_normal(rng, (num_embeddings, embedding_dim), init_std, dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.add_param("weight", backend.xp_for().asarray(weight))
        self._ids = None

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"

    def forward(self, ids):
        check_int_input(ids, "ids", self.num_embeddings)
        self._ids = ids
        return self.params["weight"][ids]

    def backward(self, dy):
        ids = self._ids
        if ids is None:
            raise RuntimeError("backward called before forward")
        check_grad_shape(dy, "dy", tuple(ids.shape) + (self.embedding_dim,), " (the shape of the output)")
        xp = self.xp
        flat = ids.reshape(-1)
        dy2 = dy.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:  # the padding row never receives gradient
            keep = flat != self.padding_idx
            flat, dy2 = flat[keep], dy2[keep]
            if flat.size == 0:
                return None
        grad = self.grads["weight"]
        if xp is backend.np:
            # np.add.at is slow; a stable sort then one segmented sum (reduceat) per unique id is fast.
            order = xp.argsort(flat, kind="stable")
            sorted_ids = flat[order]
            starts = xp.flatnonzero(xp.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
            sums = xp.add.reduceat(dy2[order], starts, axis=0)
            grad[sorted_ids[starts]] += sums
        else:  # CuPy: atomic scatter-add
            import cupyx  # noqa: PLC0415

            cupyx.scatter_add(grad, flat, dy2)
        return None
