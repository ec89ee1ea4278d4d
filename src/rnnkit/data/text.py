"""Text corpora: reading files safely, tokenizing, and loading a corpus as train/valid/test id arrays.

Named corpora:
- ``"tinyshakespeare"``: bundled with the package (1,115,394 characters), character level,
  split contiguously (default 90% train, 10% valid, no test).
- ``"ptb"``: Penn Treebank in Mikolov's preprocessing, word level, from the files
  ``ptb.train.txt[.gz]``, ``ptb.valid.txt[.gz]``, ``ptb.test.txt[.gz]`` in ``data_dir``;
  one ``<eos>`` per line; 10,000 word types.
Anything else is a path to a UTF-8 text file, split contiguously.
"""
from __future__ import annotations

import gzip
import importlib.resources
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .vocab import EOS, UNK, Vocab

LEVELS = ("char", "word")
BUNDLED = ("tinyshakespeare",)


# ---- reading -----------------------------------------------------------------------------
def read_text(path: str | os.PathLike) -> str:
    """The whole UTF-8 text of ``path`` (``.gz`` decompressed transparently).

    Newlines are normalised to ``\\n`` (as Python's text mode does) and a leading BOM is
    dropped. Raises FileNotFoundError for a missing file and ValueError for an empty file,
    a binary file (a NUL byte) or invalid UTF-8 (with the byte offset).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a regular file; expected a text file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"file {str(path)!r} ends in .gz but is not valid gzip: {err}") from None
    return decode_text(raw, str(path))


def decode_text(raw: bytes, name: str = "<bytes>") -> str:
    """Decode ``raw`` as text with the checks of :func:`read_text` (``name`` appears in errors)."""
    if not raw:
        raise ValueError(f"file {name!r} is empty; expected at least one character of text")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"file {name!r} looks binary (NUL byte at offset {nul}); expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"file {name!r} is not valid UTF-8: byte 0x{raw[err.start]:02x} at offset "
                         f"{err.start} ({err.reason})") from None
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        raise ValueError(f"file {name!r} holds only a byte-order mark; expected text")
    return text


def bundled_text(name: str = "tinyshakespeare") -> str:
    """Text of a corpus bundled with the package (``rnnkit/_data/<name>.txt.gz``)."""
    if name not in BUNDLED:
        raise ValueError(f"bundled corpus {name!r}; expected one of {list(BUNDLED)}")
    raw = importlib.resources.files("rnnkit").joinpath("_data", f"{name}.txt.gz").read_bytes()
    return decode_text(gzip.decompress(raw), f"rnnkit/_data/{name}.txt.gz")


# ---- tokens ------------------------------------------------------------------------------
def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level {level!r}; expected 'char' or 'word'")


def tokenize(text: str, level: str) -> list[str]:
    """Tokens of ``text``: ``"char"`` gives every character (newlines included);
    ``"word"`` splits each line on whitespace and ends every line that a newline ends
    with ``<eos>`` (the PTB convention: ``" a b \\n c \\n"`` -> ``[a, b, <eos>, c, <eos>]``)."""
    _check_level(level)
    if level == "char":
        return list(text)
    lines = text.split("\n")
    tokens: list[str] = []
    for line in lines[:-1]:
        tokens.extend(line.split())
        tokens.append(EOS)
    tokens.extend(lines[-1].split())
    return tokens


def detokenize(tokens, level: str) -> str:
    """Inverse of :func:`tokenize` up to whitespace: words joined by one space, ``<eos>`` -> newline."""
    _check_level(level)
    if level == "char":
        return "".join(tokens)
    out, line = [], []
    for tok in tokens:
        if tok == EOS:
            out.append(" ".join(line) + "\n")
            line = []
        else:
            line.append(tok)
    out.append(" ".join(line))
    return "".join(out)


# ---- corpora -----------------------------------------------------------------------------
@dataclass
class Corpus:
    """A tokenized corpus: ``train``, ``valid``, ``test`` are (N,) int64 id arrays (``test`` may be
    None), ``vocab`` was built on ``train`` only, ``level`` is "char" or "word"."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray | None
    vocab: Vocab
    level: str
    name: str = ""


def load_corpus(name_or_path: str | os.PathLike, level: str | None = None, split=None,
                data_dir: str | os.PathLike | None = None, min_freq: int = 1,
                max_size: int | None = None) -> Corpus:
    """Load a named corpus or a text file as a :class:`Corpus`.

    level: "char" | "word"; None means the corpus's own level (word for "ptb", char otherwise).
    split: contiguous (train, valid) or (train, valid, test) fractions summing to 1; None means
    (0.9, 0.1); without a test fraction (or with 0) ``test`` is None. PTB has fixed files, so it
    takes no split.
    data_dir: the folder with the PTB files (or a folder with a ``ptb/`` subfolder); None looks
    under :func:`rnnkit.data.shared_data_dir`.
    The vocabulary is built on the training part only (``min_freq``, ``max_size`` as in
    :meth:`Vocab.build`); valid/test tokens it lacks become ``<unk>``.
    """
    key = str(name_or_path)
    if key == "ptb":
        if split is not None:
            raise ValueError(f"split {split!r} for ptb; ptb has fixed train/valid/test files, pass split=None")
        level = level or "word"
        _check_level(level)
        files = _ptb_files(data_dir)
        parts = [tokenize(read_text(f), level) for f in files]
        name = "ptb"
    else:
        level = level or "char"
        _check_level(level)
        if key in BUNDLED:
            text, name = bundled_text(key), key
        else:
            text, name = read_text(name_or_path), Path(name_or_path).name
        parts = split_contiguous(tokenize(text, level), (0.9, 0.1) if split is None else split)
    specials = (UNK,) if level == "char" else (UNK, EOS)
    vocab = Vocab.build(parts[0], min_freq=min_freq, max_size=max_size, specials=specials)
    ids = [vocab.encode(p) for p in parts]
    test = ids[2] if len(ids) > 2 and len(ids[2]) else None  # a zero test fraction means no test part
    return Corpus(ids[0], ids[1], test, vocab, level, name)


def split_contiguous(items, fractions) -> list:
    """Cut ``items`` into consecutive pieces of the given fractions (2 or 3, >= 0, summing to 1).

    Piece k ends at ``floor(N * (f_0 + ... + f_k))``; the last piece takes the rest. A zero
    fraction gives an empty piece; a positive one must give at least one item.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) not in (2, 3) or any(not f >= 0 for f in fractions) or fractions[0] <= 0:
        raise ValueError(f"split {fractions}; expected 2 or 3 fractions >= 0 (train > 0)")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split {fractions} sums to {sum(fractions):g}; expected 1")
    n = len(items)
    bounds = fraction_bounds(n, fractions)
    pieces = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    for f, piece in zip(fractions, pieces):
        if f > 0 and len(piece) == 0:
            raise ValueError(f"split {fractions} of N={n} tokens leaves an empty piece for fraction {f}; "
                             f"need a longer corpus")
    return pieces


def shared_data_dir() -> Path | None:
    """The folder named by the environment variable ``RNNKIT_DATA``, or None when it is unset or empty.

    Set to anything but a folder (a typo, a moved data set), it is a FileNotFoundError naming the
    variable and its value, rather than silently treated as unset. Library functions take paths
    explicitly; this is for the command line and the tests.
    """
    value = os.environ.get("RNNKIT_DATA")
    if not value:
        return None
    if not Path(value).is_dir():
        raise FileNotFoundError(f"environment variable RNNKIT_DATA={value!r} is not a folder"
                                f"{' (it does not exist)' if not Path(value).exists() else ''}; point it at the "
                                "data folder, or unset it")
    return Path(value)


def fraction_bounds(n: int, fractions) -> list[int]:
    """Cut points ``[0, b_1, ..., n]`` for pieces of the given fractions: ``b_k = floor(n * (f_0 + ... + f_{k-1}))``."""
    bounds, total = [0], 0.0
    for f in fractions[:-1]:
        total += f
        bounds.append(min(n, int(np.floor(n * total + 1e-9))))
    return bounds + [n]


def _ptb_files(data_dir) -> list[Path]:
    if data_dir is None:
        data_dir = shared_data_dir()
        if data_dir is None:
            raise FileNotFoundError("ptb needs data_dir= (a folder with ptb.train.txt, ptb.valid.txt, "
                                    "ptb.test.txt), or the environment variable RNNKIT_DATA")
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "ptb"):
        found = [_first_existing(folder / f"ptb.{part}.txt") for part in ("train", "valid", "test")]
        if all(found):
            return found
    raise FileNotFoundError(f"no ptb.train.txt[.gz], ptb.valid.txt[.gz], ptb.test.txt[.gz] in "
                            f"{str(data_dir)!r} or its ptb/ subfolder")


def _first_existing(path: Path) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None
