"""Greedy and beam search over any autoregressive step function (model-agnostic).

A *step function* advances a batch of K partial outputs by one token::

    log_probs, new_state        = step_fn(tokens, state)      # or
    log_probs, new_state, aux   = step_fn(tokens, state)

``tokens`` (K,) int are the previous tokens (``sos_id`` first), ``log_probs`` (K, V) the
log-probabilities of the next token, ``state`` anything the model carries between steps
— an array or (nested) tuples/lists of arrays whose axis 0 is the batch (``None``
leaves allowed). ``aux`` (K, ...), when returned, is recorded per step and follows its
hypothesis (e.g. attention weights, for alignment plots).

Searches run a whole batch of B examples at once; the batch size is read from the
first array in ``init_state`` (or given as ``batch_size``). Each example's result is a
:class:`Hypothesis` (greedy) or a best-first list of them (beam search).

Length normalisation: hypotheses are ranked by ``score / length ** length_penalty``,
``score`` = the sum of the log-probabilities of the generated tokens and ``length`` the
number of them (``<eos>`` included). ``length_penalty=0`` ranks by the raw sum (which
favours short outputs), 1 by the mean log-probability per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend


@dataclass
class Hypothesis:
    """One decoded output.

    tokens: generated ids, without ``<sos>`` and ``<eos>``. score: sum of their
    log-probabilities (``<eos>``'s included when finished). normalized_score: the
    ranking score (module docstring). finished: ended with ``<eos>`` (False: stopped at
    ``max_len``). aux: per-step aux rows stacked, (steps, ...), the ``<eos>`` step
    included, or None.
    """

    tokens: list[int]
    score: float
    normalized_score: float
    finished: bool
    aux: np.ndarray | None = None


def index_state(state, index):
    """Rows ``index`` (1-d ints) of every array in a (nested) state, along axis 0."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(index_state(s, index) for s in state)
    xp = backend.get_array_module(state)
    return state[xp.asarray(index)]


def _batch_size(state) -> int:
    if isinstance(state, (tuple, list)):
        for s in state:
            n = _batch_size(s)
            if n is not None:
                return n
        return None
    return None if state is None else int(state.shape[0])


def _call(step_fn, tokens, state):
    out = step_fn(tokens, state)
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise ValueError("step_fn returned a {}; expected (log_probs, state) or (log_probs, state, aux)"
                         .format(type(out).__name__))
    log_probs, state = out[0], out[1]
    aux = backend.to_numpy(out[2]) if len(out) == 3 and out[2] is not None else None
    return backend.to_numpy(log_probs), state, aux


def _normalize(score: float, length: int, length_penalty: float) -> float:
    return score / max(length, 1) ** length_penalty if length_penalty else score


def _check(sos_id, eos_id, max_len, batch_size):
    for name, value in (("sos_id", sos_id), ("eos_id", eos_id)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} {value!r}; expected a token id >= 0")
    if not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len {max_len!r}; expected an integer >= 1")
    if batch_size is None or batch_size < 1:
        raise ValueError(f"batch size {batch_size!r} (from init_state's first array); expected >= 1: "
                         f"give batch_size= when the state holds no array")


def greedy_search(step_fn, init_state, sos_id: int, eos_id: int, max_len: int,
                  length_penalty: float = 1.0, batch_size: int | None = None) -> list[Hypothesis]:
    """Pick the most probable token at every step, for B examples at once.

    Stops at ``<eos>`` (per example) or after ``max_len`` tokens. Returns one
    :class:`Hypothesis` per example.
    """
    B = batch_size if batch_size is not None else _batch_size(init_state)
    _check(sos_id, eos_id, max_len, B)
    tokens = np.full(B, sos_id, dtype=np.int64)
    state = init_state
    scores = np.zeros(B)
    done = np.zeros(B, dtype=bool)
    steps_done = np.zeros(B, dtype=np.int64)  # steps taken by each example, <eos> included
    out_tokens, aux_rows = [], []
    for _ in range(max_len):
        log_probs, state, aux = _call(step_fn, tokens, state)
        tokens = log_probs.argmax(axis=1).astype(np.int64)
        live = ~done
        scores[live] += log_probs[np.arange(B), tokens][live]
        steps_done += live
        out_tokens.append(tokens)
        aux_rows.append(aux)
        done |= tokens == eos_id
        if done.all():
            break
    out = np.stack(out_tokens, axis=1)  # (B, steps)
    hyps = []
    for b in range(B):
        n = int(steps_done[b])
        finished = bool(out[b, n - 1] == eos_id)
        toks = out[b, : n - 1 if finished else n].tolist()
        aux = None if aux_rows[0] is None else np.stack([a[b] for a in aux_rows[:n]])
        hyps.append(Hypothesis(toks, float(scores[b]), _normalize(float(scores[b]), n, length_penalty),
                               finished, aux))
    return hyps


def beam_search(step_fn, init_state, sos_id: int, eos_id: int, beam_size: int, max_len: int,
                length_penalty: float = 1.0, n_best: int | None = None, batch_size: int | None = None,
                reorder_state=index_state) -> list[list[Hypothesis]]:
    """Beam search with length normalisation, for B examples at once.

    Every example keeps ``beam_size`` live hypotheses (rows ``b*K .. b*K+K-1`` of the
    step function's batch). Each step scores all ``K*V`` one-token extensions by their
    summed log-probability and takes the best; an extension ending in ``<eos>`` among the
    top K moves to the example's finished list, and the best K others stay live. An
    example stops once it has K finished hypotheses; at ``max_len`` its live ones join
    as unfinished. ``reorder_state(state, rows)`` picks state rows (default: axis 0 of
    every array). Returns, per example, the ``n_best`` (default K) hypotheses by
    normalized score, best first. ``beam_size=1`` gives exactly :func:`greedy_search`.
    """
    B = batch_size if batch_size is not None else _batch_size(init_state)
    _check(sos_id, eos_id, max_len, B)
    if not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
        raise ValueError(f"beam_size {beam_size!r}; expected an integer >= 1")
    K = int(beam_size)
    n_best = K if n_best is None else n_best
    rows_of = np.arange(B)[:, None] * K
    state = reorder_state(init_state, np.repeat(np.arange(B), K))
    tokens = np.full(B * K, sos_id, dtype=np.int64)
    scores = np.full((B, K), -np.inf)
    scores[:, 0] = 0.0  # all K beams start identical: expand only the first at step 1
    history = np.zeros((B, K, 0), dtype=np.int64)
    aux_history = None
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)

    for step in range(max_len):
        log_probs, state, aux = _call(step_fn, tokens, state)
        V = log_probs.shape[1]
        if V < 2:
            raise ValueError(f"step_fn gave log_probs over V={V} tokens; need V >= 2")
        cand = (scores[:, :, None] + log_probs.reshape(B, K, V)).reshape(B, K * V)
        n_cand = min(2 * K, K * V)
        # a stable sort breaks ties by the lowest index, as argmax does: beam 1 == greedy
        order = np.argsort(-cand, axis=1, kind="stable")[:, :n_cand]
        top = np.take_along_axis(cand, order, axis=1)
        parent, token = order // V, order % V
        is_eos = token == eos_id
        if aux is not None:
            aux = aux.reshape((B, K) + aux.shape[1:])
            if aux_history is None:
                aux_history = np.zeros((B, K, 0) + aux.shape[2:], dtype=aux.dtype)

        for b, j in zip(*np.nonzero(is_eos[:, :K] & np.isfinite(top[:, :K]) & ~done[:, None])):
            k, score = parent[b, j], float(top[b, j])
            hyp_aux = None if aux is None else np.concatenate([aux_history[b, k], aux[b, k][None]])
            finished[b].append(Hypothesis(history[b, k].tolist(), score,
                                          _normalize(score, step + 1, length_penalty), True, hyp_aux))

        # the first K candidates that do not end the output stay live (there are always K:
        # at most one <eos> extension per beam among the 2K best)
        pick = np.argsort(is_eos | (np.cumsum(~is_eos, axis=1) > K), axis=1, kind="stable")[:, :K]
        new_parent = np.take_along_axis(parent, pick, axis=1)
        tokens_bk = np.take_along_axis(token, pick, axis=1)
        scores = np.take_along_axis(top, pick, axis=1)
        batch_index = np.arange(B)[:, None]
        history = np.concatenate([history[batch_index, new_parent], tokens_bk[..., None]], axis=2)
        if aux is not None:
            aux_history = np.concatenate([aux_history[batch_index, new_parent],
                                          aux[batch_index, new_parent][:, :, None]], axis=2)
        state = reorder_state(state, (rows_of + new_parent).reshape(-1))
        tokens = tokens_bk.reshape(-1)
        done |= np.array([len(f) >= K for f in finished])
        if done.all():
            break

    results = []
    for b in range(B):
        hyps = finished[b]
        if not done[b]:
            for k in range(K):
                if np.isfinite(scores[b, k]):
                    score = float(scores[b, k])
                    hyps.append(Hypothesis(history[b, k].tolist(), score,
                                           _normalize(score, history.shape[2], length_penalty), False,
                                           None if aux_history is None else aux_history[b, k].copy()))
        hyps.sort(key=lambda h: -h.normalized_score)  # stable: earlier-found first on ties
        results.append(hyps[:n_best])
    return results


__all__ = ["Hypothesis", "greedy_search", "beam_search", "index_state"]
