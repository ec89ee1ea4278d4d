"""Batching: parallel streams for truncated BPTT (fixed chunks, or a ring read on across epochs), padding with
masks, shuffled minibatch indices."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} {value!r}; expected an integer >= 1")
    return int(value)


def _check_streams(ids, batch_size, bptt) -> tuple[np.ndarray, int, int]:
    """(ids as a 1-D integer array, B, T) for a stream batcher, or a ValueError naming the bad one."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids of shape {ids.shape} and dtype {ids.dtype}; expected a 1-D integer array")
    return ids, _check_positive_int("batch_size", batch_size), _check_positive_int("bptt", bptt)


class TBPTTBatcher:
    """Chunks ``(x, y)`` of a token stream for truncated BPTT with B parallel streams.

    The N ids are cut into B contiguous streams of n = (N - 1) // B steps each:
    ``x[b] = ids[b*n : b*n + n]`` and ``y[b] = ids[b*n + 1 : b*n + n + 1]`` (the next token).
    Iteration yields chunks of shape (B, t), t = ``bptt`` except possibly a shorter last one;
    row b of chunk k+1 continues exactly where row b of chunk k stopped, so a stateful
    model carries row b's hidden state from chunk to chunk. The last ``N - B*n`` ids
    (1 to B of them) are never an input. ``len()`` is the number of chunks, ceil(n / bptt).
    Each ``iter()`` is a fresh epoch over the same chunks.
    """

    def __init__(self, ids, batch_size: int, bptt: int):
        ids, self.batch_size, self.bptt = _check_streams(ids, batch_size, bptt)
        n_tokens = len(ids)
        self.stream_len = (n_tokens - 1) // self.batch_size
        if self.stream_len < 1:
            raise ValueError(f"corpus of N={n_tokens} tokens is too short for batch_size B={self.batch_size}: "
                             f"need N >= B + 1 for one input and one target per stream")
        used = self.batch_size * self.stream_len
        self._x = ids[:used].astype(np.int64).reshape(self.batch_size, self.stream_len)
        self._y = ids[1:used + 1].astype(np.int64).reshape(self.batch_size, self.stream_len)

    def __len__(self) -> int:
        return -(-self.stream_len // self.bptt)

    def epoch(self, e: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Epoch ``e``'s chunks: the same for every ``e`` (the interface of :class:`RingBatcher`)."""
        return iter(self)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, self.stream_len, self.bptt):
            stop = min(start + self.bptt, self.stream_len)
            yield (np.ascontiguousarray(self._x[:, start:stop]), np.ascontiguousarray(self._y[:, start:stop]))

    @property
    def num_tokens(self) -> int:
        """Targets per epoch, B * n (the denominator of a per-token loss over the epoch)."""
        return self.batch_size * self.stream_len

    def __repr__(self) -> str:
        return (f"TBPTTBatcher(batch_size={self.batch_size}, bptt={self.bptt}, "
                f"stream_len={self.stream_len}, chunks={len(self)})")


class RingBatcher:
    """B parallel streams over the corpus read as a ring, continuing across epochs (DL2's trainer).

    The N ids give L = N - 1 (input, next-token) pairs; stream b starts at ``b * (L // B)``.
    Global step g reads positions ``(b * (L // B) + g * bptt + t) mod L``, t < ``bptt``; an epoch
    is ``L // (B * bptt)`` steps, and epoch e starts at step ``e * len(self)``, exactly where
    epoch e - 1 stopped. So the carried state stays valid across epochs (do not reset it), and
    because an epoch is not a whole number of stream lengths the chunk edges move from epoch
    to epoch (by ``L // B - len(self) * bptt`` positions), unlike :class:`TBPTTBatcher`'s fixed chunks.
    ``epoch(e)`` iterates epoch e's chunks, each (B, bptt), as :class:`TBPTTBatcher` does.
    """

    def __init__(self, ids, batch_size: int, bptt: int):
        ids, self.batch_size, self.bptt = _check_streams(ids, batch_size, bptt)
        self._x = ids[:-1].astype(np.int64)
        self._y = ids[1:].astype(np.int64)
        pairs = len(self._x)
        self.steps = pairs // (self.batch_size * self.bptt)
        if self.steps < 1:
            raise ValueError(f"corpus of N={len(ids)} tokens is too short for batch_size B={self.batch_size} and "
                             f"bptt T={self.bptt}: need N >= B * T + 1 for one chunk an epoch")
        self._starts = (pairs // self.batch_size) * np.arange(self.batch_size, dtype=np.int64)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, e: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pairs, offsets = len(self._x), np.arange(self.bptt, dtype=np.int64)
        for g in range(e * self.steps, (e + 1) * self.steps):
            idx = (self._starts[:, None] + g * self.bptt + offsets[None, :]) % pairs
            yield self._x[idx], self._y[idx]

    def __iter__(self):
        return self.epoch(0)

    @property
    def num_tokens(self) -> int:
        """Targets per epoch, B * bptt * len(self)."""
        return self.batch_size * self.bptt * self.steps

    def __repr__(self) -> str:
        return f"RingBatcher(batch_size={self.batch_size}, bptt={self.bptt}, chunks={len(self)})"


def pad_batch(sequences: Sequence, pad_id: int, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad B integer sequences into ``ids`` (B, T) int64 and ``mask`` (B, T) bool.

    ``mask[b, t]`` is True exactly at the valid steps ``t < len(sequences[b])``; padded steps
    hold ``pad_id``. T is the longest length, or ``max_len`` when given (longer sequences are
    cut to their first ``max_len`` ids). Every sequence needs at least one id.
    """
    if len(sequences) == 0:
        raise ValueError("no sequences; need B >= 1")
    if max_len is not None:
        max_len = _check_positive_int("max_len", max_len)
    arrays = []
    for b, seq in enumerate(sequences):
        arr = np.asarray(seq)
        if arr.ndim != 1:
            raise ValueError(f"sequence {b} has shape {arr.shape}; expected a 1-D sequence of ids")
        if len(arr) == 0:
            raise ValueError(f"sequence {b} has length 0; need T >= 1")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"sequence {b} has dtype {arr.dtype}; expected integer ids")
        arrays.append(arr[:max_len] if max_len is not None else arr)
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    width = max_len if max_len is not None else int(lengths.max())
    ids = np.full((len(arrays), width), pad_id, dtype=np.int64)
    for b, arr in enumerate(arrays):
        ids[b, :len(arr)] = arr
    mask = np.arange(width)[None, :] < lengths[:, None]
    return ids, mask


def minibatches(n_items: int, batch_size: int, rng=None, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[np.ndarray]:
    """Yield int64 index arrays covering ``range(n_items)`` in batches of ``batch_size``.

    With ``shuffle`` the order is a permutation drawn from ``rng`` (a Generator, a seed, or
    None); the last batch may be smaller unless ``drop_last``. Arguments are checked at the
    call, not at the first ``next()``.
    """
    n_items = _check_positive_int("n_items", n_items)
    batch_size = _check_positive_int("batch_size", batch_size)
    if drop_last and n_items < batch_size:
        raise ValueError(f"n_items {n_items} < batch_size {batch_size} with drop_last=True would give no batch")
    order = np.random.default_rng(rng).permutation(n_items) if shuffle else np.arange(n_items)
    order = order.astype(np.int64, copy=False)
    stop = n_items - n_items % batch_size if drop_last else n_items
    return (order[i:i + batch_size] for i in range(0, stop, batch_size))
