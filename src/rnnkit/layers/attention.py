"""Attention over a memory of encoder outputs: dot (Luong) and additive (Bahdanau) scoring.

For decoder states (queries) ``q_t`` and encoder outputs (the memory, keys = values)
``h_s`` of one sequence, with ``mask_s`` True at valid source steps::

    dot:       e_ts = q_t . h_s                                       (Luong "dot")
    additive:  e_ts = v . tanh(q_t W_q^T + b + h_s W_m^T)             (Bahdanau "concat")
    a_ts = softmax_s(e_ts)   over valid s only (masked steps get a_ts = 0 exactly)
    c_t  = sum_s a_ts h_s

Shapes: query (B, T, Hq) — all decoder steps at once, as under teacher forcing — or
(B, Hq) for one step; memory (B, S, H); mask (B, S) bool. ``forward`` returns
``(context, weights)``: (B, T, H) and (B, T, S) (or (B, H) and (B, S) for one step);
the weights are what an alignment plot shows.

Like the cells, each ``forward`` pushes its cache on a stack and each ``backward`` pops
the latest, so a decoder can attend step by step T times and back-propagate T times in
reverse order.
"""
from __future__ import annotations

import math

from .. import backend
from ._checks import check_float_input
from .base import Layer
from .recurrent import init_uniform

SCORES = ("dot", "additive")


class Attention(Layer):
    """Masked softmax attention of queries over a memory; keys and values are the memory.

    Attention(query_size, memory_size=None, score="dot"|"additive", attention_size=None,
    dtype=None, rng=None, seed=None). ``dot`` has no parameters and needs
    ``query_size == memory_size``. ``additive`` has ``weight_query`` (A, Hq), ``bias`` (A,),
    ``weight_memory`` (A, H) and ``weight_score`` (A,) (the ``v`` of the equations);
    A = ``attention_size`` (default: memory_size).
    """

    def __init__(self, query_size: int, memory_size: int | None = None, score: str = "dot",
                 attention_size: int | None = None, dtype=None, rng=None, seed=None):
        super().__init__()
        memory_size = query_size if memory_size is None else memory_size
        attention_size = memory_size if attention_size is None else attention_size
        for name, value in (("query_size", query_size), ("memory_size", memory_size),
                            ("attention_size", attention_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} {value!r}; expected an integer >= 1")
        if score not in SCORES:
            raise ValueError(f"attention score {score!r}; expected one of {SCORES}")
        if score == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention with query_size {query_size} != memory_size {memory_size}; "
                             f"expected equal sizes (or use score='additive')")
        self.query_size, self.memory_size, self.score = query_size, memory_size, score
        self.attention_size = attention_size if score == "additive" else None
        if score == "additive":
            dtype = dtype or backend.get_default_dtype()
            rng = rng if rng is not None else backend.default_rng(seed)
            xp = backend.xp_for()
            A = attention_size
            for name, shape, fan_in in (("weight_query", (A, query_size), query_size), ("bias", (A,), query_size),
                                        ("weight_memory", (A, memory_size), memory_size),
                                        ("weight_score", (A,), A)):
                self.add_param(name, xp.asarray(init_uniform(rng, shape, 1.0 / math.sqrt(fan_in), dtype)))
        self._stack = []

    def extra_repr(self) -> str:
        s = f"{self.query_size}, {self.memory_size}, score={self.score!r}"
        return s + (f", attention_size={self.attention_size}" if self.score == "additive" else "")

    def reset_cache(self) -> None:
        """Drop cached steps (e.g. after attending for inference only)."""
        self._stack.clear()

    def _on_to(self, dtype, device) -> None:
        self._stack.clear()

    # -- forward ----------------------------------------------------------------
    def forward(self, query, memory, mask=None):
        """query (B, T, Hq) or (B, Hq); memory (B, S, H); mask (B, S) bool, True at valid steps.

        Returns ``(context, weights)``: (B, T, H), (B, T, S) — or (B, H), (B, S) for a 2-d query.
        """
        dtype = self.dtype if self.params else getattr(memory, "dtype", None)
        check_float_input(memory, "memory", 3, self.memory_size, dtype)
        B, S, H = memory.shape
        one_step = getattr(query, "ndim", 0) == 2
        check_float_input(query, "query", 2 if one_step else 3, self.query_size, dtype)
        if query.shape[0] != B:
            raise ValueError(f"query batch {query.shape[0]}; expected {B} (the batch of memory)")
        xp = backend.get_array_module(memory)
        q = query[:, None, :] if one_step else query  # (B, T, Hq)
        if mask is not None:
            mask = xp.asarray(mask)
            if tuple(mask.shape) != (B, S) or mask.dtype != bool:
                raise ValueError(f"mask has shape {tuple(mask.shape)} dtype {mask.dtype}; expected ({B}, {S}) bool")
            if not bool(mask.any(axis=1).all()):
                raise ValueError(f"memory row {int(xp.argmin(mask.any(axis=1)))} has no valid step; "
                                 f"need at least one True per mask row")
            if bool(mask.all()):
                mask = None

        E = None
        if self.score == "dot":
            scores = q @ memory.transpose(0, 2, 1)  # (B, T, S)
        else:
            p = self.params
            qp = q @ p["weight_query"].T + p["bias"]  # (B, T, A)
            mp = memory @ p["weight_memory"].T  # (B, S, A)
            E = xp.tanh(qp[:, :, None, :] + mp[:, None, :, :])  # (B, T, S, A)
            scores = E @ p["weight_score"]  # (B, T, S)
        if mask is not None:
            scores = xp.where(mask[:, None, :], scores, -xp.inf)
        # softmax through the row max: exp never overflows, and masked steps give exp(-inf) = 0
        weights = xp.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        context = weights @ memory  # (B, T, H)
        self._stack.append((q, memory, weights, E, one_step))
        if one_step:
            return context[:, 0], weights[:, 0]
        return context, weights

    # -- backward ---------------------------------------------------------------
    def backward(self, dcontext, dweights=None):
        """Back through the most recent un-backpropagated forward.

        dcontext: gradient of the context, shaped like it; dweights: gradient of the
        weights (or None). Returns ``(dquery, dmemory)``; parameter gradients accumulate.
        """
        if not self._stack:
            raise RuntimeError("backward called more times than forward")
        q, memory, w, E, one_step = self._stack.pop()
        dc = dcontext[:, None, :] if one_step else dcontext
        dw = dc @ memory.transpose(0, 2, 1)  # (B, T, S)
        if dweights is not None:
            dw = dw + (dweights[:, None, :] if one_step else dweights)
        dmemory = w.transpose(0, 2, 1) @ dc  # the value path, (B, S, H)
        # softmax backward: ds = a * (da - sum_s a da); zero wherever a is zero (masked steps)
        ds = w * (dw - (dw * w).sum(axis=-1, keepdims=True))
        if self.score == "dot":
            dq = ds @ memory
            dmemory += ds.transpose(0, 2, 1) @ q
        else:
            p, g = self.params, self.grads
            A = self.attention_size
            g["weight_score"] += E.reshape(-1, A).T @ ds.reshape(-1)
            dpre = (ds[..., None] * p["weight_score"]) * (1.0 - E * E)  # through tanh, (B, T, S, A)
            dqp = dpre.sum(axis=2)  # (B, T, A)
            dmp = dpre.sum(axis=1)  # (B, S, A)
            g["weight_query"] += dqp.reshape(-1, A).T @ q.reshape(-1, self.query_size)
            g["bias"] += dqp.sum(axis=(0, 1))
            g["weight_memory"] += dmp.reshape(-1, A).T @ memory.reshape(-1, self.memory_size)
            dq = dqp @ p["weight_query"]
            dmemory += dmp @ p["weight_memory"]
        return (dq[:, 0] if one_step else dq), dmemory


__all__ = ["Attention", "SCORES"]
