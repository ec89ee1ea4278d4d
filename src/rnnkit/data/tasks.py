"""Data for the non-language-model tasks: seq2seq pairs, labelled texts, index splits.

Seq2seq (the DL2 toy tasks): a file line is ``question`` padded with spaces, then ``_``, then
the answer padded with spaces (``"16+75  _91  "``, ``"2/10/93  ...  _1993-02-10"``). Pairs
are returned as ``(question, answer)`` with the separator and the trailing padding removed
(spaces inside a question, as in ``"september 27, 1994"``, are kept); a model adds its own
start token. The time-series helpers live in :mod:`rnnkit.data.series` and are re-exported here.
"""
from __future__ import annotations

import csv
import datetime
import io
import os
from pathlib import Path

import numpy as np

from .series import Scaler, load_series_csv, make_windows, train_val_test_split_series
from .text import fraction_bounds, read_text, shared_data_dir

__all__ = ["load_seq2seq_file", "make_addition_problems", "make_date_problems", "load_rt_polarity",
           "load_sms_spam", "load_labelled_file", "encode_labels", "fixed_split", "shared_data_dir",
           "load_series_csv", "make_windows", "train_val_test_split_series", "Scaler"]


# ---- seq2seq -----------------------------------------------------------------------------
def load_seq2seq_file(path: str | os.PathLike, sep: str = "_") -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of a DL2-style file: each line is split at the first ``sep``,
    and trailing spaces (the fixed-width padding) are stripped from both sides of it."""
    if not isinstance(sep, str) or len(sep) != 1:
        raise ValueError(f"sep {sep!r}; expected one character")
    pairs = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        cut = line.find(sep)
        if cut < 0:
            raise ValueError(f"line {number} of {str(path)!r} has no separator {sep!r}: {line!r}")
        question, answer = line[:cut].rstrip(" "), line[cut + 1:].rstrip(" ")
        if not question or not answer:
            raise ValueError(f"line {number} of {str(path)!r} has an empty {'question' if not question else 'answer'}: "
                             f"{line!r}; expected 'question{sep}answer'")
        pairs.append((question, answer))
    return pairs


def make_addition_problems(n: int, max_digits: int = 3, rng=None) -> list[tuple[str, str]]:
    """``n`` fresh problems ``("16+75", "91")`` in the format of :func:`load_seq2seq_file`.

    Each operand first draws its digit count uniformly in 1..max_digits, then a value with
    that many digits (0-9 for one digit), so short operands are not rare. ``rng``: a
    numpy Generator or a seed. Problems may repeat.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n {n!r}; expected an integer >= 0")
    if not isinstance(max_digits, int) or not 1 <= max_digits <= 18:
        raise ValueError(f"max_digits {max_digits!r}; expected an integer in 1..18")
    rng = np.random.default_rng(rng)
    digits = rng.integers(1, max_digits + 1, size=(n, 2))
    low = np.where(digits == 1, 0, 10 ** (digits - 1))
    values = rng.integers(low, 10 ** digits)
    return [(f"{a}+{b}", str(a + b)) for a, b in values.tolist()]


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DATE_FORMATS = ("{month} {day}, {year}", "{mon} {day}, {year}", "{weekday}, {month} {day}, {year}",
                 "{m}/{day}/{yy}")


def make_date_problems(n: int, rng=None, start: str = "1970-01-01", end: str = "2017-12-31") -> list[tuple[str, str]]:
    """``n`` problems ``("TUESDAY, SEPTEMBER 25, 1984", "1984-09-25")``: a date between ``start``
    and ``end`` (ISO, inclusive) written in a human format, answered in ISO ``yyyy-mm-dd``.

    Formats, as in the DL2 date set: ``September 27, 1994``, ``Sep 27, 1994``,
    ``Tuesday, September 27, 1994`` (each in Title, lower or UPPER case) and ``9/27/94``.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n {n!r}; expected an integer >= 0")
    first, last = datetime.date.fromisoformat(start), datetime.date.fromisoformat(end)
    if last < first:
        raise ValueError(f"end {end} is before start {start}; expected start <= end")
    rng = np.random.default_rng(rng)
    offsets = rng.integers(0, (last - first).days + 1, size=n)
    formats = rng.integers(0, len(_DATE_FORMATS), size=n)
    cases = rng.integers(0, 3, size=n)
    problems = []
    for offset, fmt, case in zip(offsets.tolist(), formats.tolist(), cases.tolist()):
        d = first + datetime.timedelta(days=offset)
        month = _MONTHS[d.month - 1]
        text = _DATE_FORMATS[fmt].format(month=month, mon=month[:3], weekday=_WEEKDAYS[d.weekday()], day=d.day,
                                         year=d.year, m=d.month, yy=f"{d.year % 100:02d}")
        text = (text, text.lower(), text.upper())[case]
        problems.append((text, d.isoformat()))
    return problems


# ---- labelled texts ----------------------------------------------------------------------
def load_rt_polarity(data_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Sentence polarity v1.0: ``rt-polarity.pos`` lines (label "pos") then ``rt-polarity.neg``
    lines (label "neg"), trailing whitespace stripped. ``data_dir`` holds the two files or an
    ``rt-polarity/`` folder with them."""
    folder = Path(data_dir)
    if not (folder / "rt-polarity.pos").is_file() and (folder / "rt-polarity").is_dir():
        folder = folder / "rt-polarity"
    texts, labels = [], []
    for label in ("pos", "neg"):
        lines = [line.rstrip() for line in read_text(folder / f"rt-polarity.{label}").split("\n")]
        if lines and not lines[-1]:
            lines.pop()  # the newline that ends the file
        texts += lines
        labels += [label] * len(lines)
    return texts, labels


def load_sms_spam(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """SMS Spam Collection: ``label<TAB>text`` lines with label "ham" or "spam". ``path`` is the
    ``SMSSpamCollection`` file or a folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "SMSSpamCollection"
    texts, labels = _read_tab_separated(path)
    encode_labels(labels, ["ham", "spam"])  # checks that every label is ham or spam
    return texts, labels


def load_labelled_file(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a ``.csv`` file with columns ``text`` and ``label`` (any order, any
    other columns ignored; a quoted field may hold commas and line breaks), or of any other file
    with ``label<TAB>text`` lines (an optional first line ``label<TAB>text`` or ``text<TAB>label``
    is a header, the latter for ``text<TAB>label`` lines). Blank and whitespace-only lines are
    skipped. Labels are stripped of surrounding whitespace; texts are kept as they are."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return _read_tab_separated(path)
    rows = _csv_rows(read_text(path))
    header = next(rows, (0, None))[1]
    if header is None or not {"text", "label"} <= set(header):
        raise ValueError(f"CSV {str(path)!r} has columns {header}; expected 'text' and 'label'")
    for name in ("text", "label"):
        if header.count(name) > 1:
            raise ValueError(f"CSV {str(path)!r} has {header.count(name)} columns {name!r} in {header}; "
                             f"expected one")
    text_at, label_at = header.index("text"), header.index("label")
    texts, labels = [], []
    for number, row in rows:
        if len(row) > len(header):
            raise ValueError(f"CSV {str(path)!r} row {number} has {len(row)} fields; expected {len(header)} "
                             f"(quote a text that holds a comma)")
        if len(row) <= max(text_at, label_at):
            raise ValueError(f"CSV {str(path)!r} row {number} has too few fields: {len(row)}; "
                             f"expected {len(header)}")
        label = row[label_at].strip()
        if not label:
            raise ValueError(f"CSV {str(path)!r} row {number} has an empty label")
        texts.append(row[text_at])
        labels.append(label)
    return texts, labels


def _csv_rows(text: str):
    """``(line number, fields)`` of each CSV record of ``text`` (the line it starts on), skipping blank
    and whitespace-only lines; quoted fields keep their commas and line breaks."""
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    for row in reader:
        if len(row) > 1 or (row and row[0].strip()):
            yield start, row
        start = reader.line_num + 1


def _read_tab_separated(path: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    text_first, seen_line = False, False
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        if not seen_line:
            seen_line = True
            if line.strip() in ("label\ttext", "text\tlabel"):
                text_first = line.strip() == "text\tlabel"
                continue
        if text_first:  # text<TAB>label: the label is after the last tab
            text, tab, label = line.rpartition("\t")
        else:
            label, tab, text = line.partition("\t")
        label = label.strip()
        if not tab or not label:
            expected = "text<TAB>label" if text_first else "label<TAB>text"
            raise ValueError(f"line {number} of {str(path)!r} is not '{expected}': {line[:60]!r}")
        texts.append(text)
        labels.append(label)
    return texts, labels


def encode_labels(labels, label_names=None) -> tuple[np.ndarray, list]:
    """Class ids (N,) int64 of ``labels`` and the names they index, ``label_names[ids[i]] == labels[i]``.

    Without ``label_names`` the names are the sorted distinct labels (so the ids do not depend
    on the order of the data); with them, a label not among them is an error.
    """
    labels = list(labels)
    names = sorted(set(labels)) if label_names is None else list(label_names)
    index = {}
    for i, name in enumerate(names):
        if name in index:
            raise ValueError(f"duplicate label name {name!r} in label_names {names}")
        index[name] = i
    ids = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if label not in index:
            raise ValueError(f"label {label!r} at index {i} is not one of {names}")
        ids[i] = index[label]
    return ids, names


def fixed_split(n: int, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, ...]:
    """A reproducible random split of ``range(n)``: one sorted int64 index array per fraction.

    The items are permuted with ``numpy.random.default_rng(seed)``, then cut like
    :func:`rnnkit.data.text.split_contiguous` (piece k ends at floor(n * (f_0 + ... + f_k))).
    The pieces are disjoint and together cover ``range(n)``.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n {n!r}; expected an integer >= 1")
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not f >= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions {fractions}; expected one or more values >= 0 summing to 1")
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    bounds = fraction_bounds(int(n), fractions)
    return tuple(np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
