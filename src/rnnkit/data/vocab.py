"""Vocabulary: a fixed, ordered list of tokens and the id of each (``itos[i]`` <-> ``stoi[token]``).

Built deterministically from a token stream: specials first (in the order given), then
tokens by falling frequency, ties broken by first appearance. Stored as JSON, never pickled.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

UNK, PAD, EOS, SOS = "<unk>", "<pad>", "<eos>", "<sos>"
_FORMAT = "rnnkit.vocab"
_VERSION = 1


class Vocab:
    """An ordered token list ``itos`` (tuple) and its inverse ``stoi`` (read-only mapping).

    ``Vocab(itos)`` takes the tokens in id order (strings, no duplicates, at least one).
    ``unk_id``, ``pad_id``, ``eos_id``, ``sos_id`` are the ids of ``<unk>``, ``<pad>``,
    ``<eos>``, ``<sos>``, or None when the vocabulary lacks that token.
    """

    def __init__(self, itos: Sequence[str]):
        itos = _check_itos(itos)
        self.itos: tuple[str, ...] = itos
        self.stoi = MappingProxyType({token: i for i, token in enumerate(itos)})

    @classmethod
    def build(cls, tokens: Iterable[str], min_freq: int = 1, max_size: int | None = None,
              specials: Sequence[str] = (UNK,)) -> "Vocab":
        """Vocabulary of ``tokens`` (any iterable of str; a str gives its characters).

        Order: ``specials`` first, then every other token seen at least ``min_freq`` times,
        most frequent first, ties in order of first appearance. ``max_size`` caps the total
        length, specials included (the rarest tokens are dropped).
        """
        if not isinstance(min_freq, int) or isinstance(min_freq, bool) or min_freq < 1:
            raise ValueError(f"min_freq {min_freq!r}; expected an integer >= 1")
        specials = tuple(specials)
        if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool)
                                     or max_size < max(len(specials), 1)):
            raise ValueError(f"max_size {max_size!r}; expected None or an integer >= "
                             f"{max(len(specials), 1)} (the number of specials, at least 1)")
        counts = Counter(tokens)  # insertion order = first appearance, and sorted() is stable
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        special_set = set(specials)
        itos = list(specials) + [tok for tok, n in ranked if n >= min_freq and tok not in special_set]
        if max_size is not None:
            itos = itos[:max_size]
        if not itos:
            raise ValueError(f"no token occurs at least min_freq={min_freq} times and there are no "
                             f"specials; the vocabulary would be empty")
        return cls(itos)

    # ---- ids of the special tokens --------------------------------------------------------
    @property
    def unk_id(self) -> int | None:
        return self.stoi.get(UNK)

    @property
    def pad_id(self) -> int | None:
        return self.stoi.get(PAD)

    @property
    def eos_id(self) -> int | None:
        return self.stoi.get(EOS)

    @property
    def sos_id(self) -> int | None:
        return self.stoi.get(SOS)

    # ---- encode / decode --------------------------------------------------------------------
    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Ids (N,) int64 of ``tokens``. Unknown tokens map to ``<unk>``; without ``<unk>`` they are an error."""
        stoi, unk = self.stoi, self.unk_id
        if unk is not None:
            ids = [stoi.get(tok, unk) for tok in tokens]
        else:
            try:
                ids = [stoi[tok] for tok in tokens]
            except KeyError as err:
                raise ValueError(f"token {err.args[0]!r} is not in the vocabulary ({len(self)} tokens) "
                                 f"and it has no {UNK!r} token to stand for it") from None
        return np.asarray(ids, dtype=np.int64).reshape(-1)

    def decode(self, ids) -> list[str]:
        """Tokens of ``ids`` (any integer array-like, flattened); each id must satisfy 0 <= id < len(self)."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return []
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids of dtype {ids.dtype}; expected integers")
        ids = ids.reshape(-1)
        bad = (ids < 0) | (ids >= len(self))
        if bad.any():
            raise ValueError(f"id {int(ids[bad.argmax()])} out of range; expected 0 <= id < {len(self)}")
        itos = self.itos
        return [itos[i] for i in ids.tolist()]

    # ---- container protocol -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token) -> bool:
        return token in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    __hash__ = None

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.itos[:5])
        return f"Vocab({len(self)} tokens: {head}{', ...' if len(self) > 5 else ''})"

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able form: ``{"format": "rnnkit.vocab", "version": 1, "itos": [...]}``."""
        return {"format": _FORMAT, "version": _VERSION, "itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        """Inverse of :meth:`to_dict`; checks keys, types and duplicates."""
        if not isinstance(d, dict):
            raise ValueError(f"vocabulary data of type {type(d).__name__}; expected a dict with key 'itos'")
        unknown = set(d) - {"format", "version", "itos"}
        if unknown:
            raise ValueError(f"unknown vocabulary keys {sorted(map(str, unknown))}; expected 'itos' "
                             f"(and optionally 'format', 'version')")
        if d.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"vocabulary format {d['format']!r}; expected {_FORMAT!r}")
        if d.get("version", _VERSION) != _VERSION:
            raise ValueError(f"vocabulary version {d['version']!r}; expected {_VERSION}")
        if "itos" not in d:
            raise ValueError("vocabulary data has no 'itos' list")
        if not isinstance(d["itos"], list):
            raise ValueError(f"'itos' of type {type(d['itos']).__name__}; expected a list of strings")
        return cls(d["itos"])

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as UTF-8 JSON, atomically (temp file + rename)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=0)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        """Read a vocabulary written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vocabulary file {str(path)!r}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"vocabulary file {str(path)!r} is not valid UTF-8 JSON: {err}") from None
        return cls.from_dict(d)


def _check_itos(itos) -> tuple[str, ...]:
    if isinstance(itos, (str, bytes)):
        raise ValueError(f"itos of type {type(itos).__name__}; expected a sequence of token strings")
    itos = tuple(itos)
    if not itos:
        raise ValueError("empty vocabulary; need at least one token")
    seen: dict[str, int] = {}
    for i, tok in enumerate(itos):
        if not isinstance(tok, str):
            raise ValueError(f"token {tok!r} at id {i} is a {type(tok).__name__}; expected str")
        if tok in seen:
            raise ValueError(f"duplicate token {tok!r} at ids {seen[tok]} and {i}; tokens must be unique")
        seen[tok] = i
    return itos
