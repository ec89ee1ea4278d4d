"""Time series: reading small CSV tables, windows for forecasting, contiguous splits,
rolling-origin validation folds, scaling.

A series is an array (T,) or (T, k) of float64, time along axis 0.
"""
from __future__ import annotations

import csv
import datetime
import io
import os
import re

import numpy as np

from .text import read_text

_MISSING = {"", "na", "nan", "null", "none"}


def load_series_csv(path: str | os.PathLike, column=None, missing: str = "nan") -> tuple[np.ndarray, np.ndarray]:
    """``(index, values)`` of a CSV table whose first column is the time index.

    index (N,): ``datetime64[D]`` for ``yyyy-mm-dd`` or ``yyyymmdd`` dates, int64 for
    integers such as years, else str. values: float64, (N,) for one value column, else
    (N, k) in column order. ``column``: None (every column after the first), a column
    name, or a list of names. Empty or NA cells are NaN; ``missing`` = "nan" keeps them,
    "drop" drops the rows that have any, "interpolate" fills them linearly between the
    neighbouring rows, as for evenly spaced steps (flat beyond the ends). Blank lines are skipped; an infinite value (``inf``, ``1e400``)
    or an invalid date is an error naming its row (the file's line) and column.

    The statsmodels ``elnino.csv`` is wide (a YEAR row of twelve months); ``values.reshape(-1)``
    is its monthly series.
    """
    if missing not in ("nan", "drop", "interpolate"):
        raise ValueError(f"missing {missing!r}; expected 'nan', 'drop' or 'interpolate'")
    rows = []  # (line number, fields); blank and whitespace-only lines skipped
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    start = 1
    for row in reader:
        if len(row) > 1 or (row and row[0].strip()):
            rows.append((start, row))
        start = reader.line_num + 1
    header = [h.strip() for h in rows[0][1]] if rows else []
    body, lines = [row for _, row in rows[1:]], [number for number, _ in rows[1:]]
    if len(header) < 2 or not body:
        raise ValueError(f"CSV {str(path)!r} has columns {header} and {len(body)} rows; "
                         f"expected an index column, at least one value column and one row")
    names = header[1:] if column is None else [column] if isinstance(column, str) else list(column)
    for name in names:
        if name not in header[1:]:
            raise ValueError(f"column {name!r} not in {str(path)!r}; expected one of {header[1:]}")
    picks = [header.index(name) for name in names]
    values = np.empty((len(body), len(picks)), dtype=np.float64)
    for r, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"row {lines[r]} of {str(path)!r} has {len(row)} fields; expected {len(header)}")
        for c, pick in enumerate(picks):
            cell = row[pick].strip()
            try:
                values[r, c] = np.nan if cell.lower() in _MISSING else float(cell)
            except ValueError:
                raise ValueError(f"row {lines[r]}, column {header[pick]!r} of {str(path)!r} is {cell!r}; "
                                 f"expected a number or an empty cell") from None
            if np.isinf(values[r, c]):
                raise ValueError(f"row {lines[r]}, column {header[pick]!r} of {str(path)!r} is {cell!r}; "
                                 f"expected a finite number (an empty or NA cell for a missing value)")
    index = _parse_index([row[0].strip() for row in body], lines, header[0], str(path))
    if missing == "drop":
        keep = ~np.isnan(values).any(axis=1)
        index, values = index[keep], values[keep]
    elif missing == "interpolate":
        values = _interpolate(values, str(path))
    return index, (values[:, 0] if len(picks) == 1 else values)


def _parse_index(cells: list[str], lines: list[int], name: str, path: str) -> np.ndarray:
    if all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", c) for c in cells):
        try:
            return np.array(cells, dtype="datetime64[D]")
        except ValueError:
            for cell, line in zip(cells, lines):  # name the first bad date
                try:
                    np.datetime64(cell, "D")
                except ValueError:
                    raise ValueError(f"row {line}, column {name!r} of {path!r} is {cell!r}; "
                                     f"expected a valid yyyy-mm-dd date") from None
            raise
    if all(re.fullmatch(r"\d{8}", c) for c in cells):
        try:
            return np.array([datetime.datetime.strptime(c, "%Y%m%d").date() for c in cells], dtype="datetime64[D]")
        except ValueError:
            pass  # eight digits that are not dates: fall through to integers
    if all(re.fullmatch(r"[+-]?\d+", c) for c in cells):
        return np.array([int(c) for c in cells], dtype=np.int64)
    return np.array(cells, dtype=str)


def _interpolate(values: np.ndarray, name: str) -> np.ndarray:
    values = values.copy()
    steps = np.arange(len(values))
    for c in range(values.shape[1]):
        known = ~np.isnan(values[:, c])
        if not known.any():
            raise ValueError(f"column {c} of {name!r} has no values to interpolate from")
        values[~known, c] = np.interp(steps[~known], steps[known], values[known, c])
    return values


def make_windows(series, input_len: int, horizon: int = 1, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows for forecasting: ``X`` (N, input_len, k) and ``Y`` (N, horizon, k).

    Window i starts at s = i * stride: ``X[i] = series[s : s + input_len]``,
    ``Y[i] = series[s + input_len : s + input_len + horizon]``. A (T,) series counts as
    k = 1. N = (T - input_len - horizon) // stride + 1, so T >= input_len + horizon is needed.
    """
    series = np.asarray(series)
    if series.ndim == 1:
        series = series[:, None]
    if series.ndim != 2:
        raise ValueError(f"series of shape {series.shape}; expected (T,) or (T, k)")
    for name, value in (("input_len", input_len), ("horizon", horizon), ("stride", stride)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} {value!r}; expected an integer >= 1")
    length = len(series)
    if length < input_len + horizon:
        raise ValueError(f"series of length T={length} is shorter than input_len + horizon = "
                         f"{input_len + horizon}; need T >= input_len + horizon")
    if np.issubdtype(series.dtype, np.floating) and np.isnan(series).any():
        row = int(np.isnan(series).any(axis=1).argmax())
        raise ValueError(f"series has NaN at step {row}; fill or drop missing values first "
                         f"(load_series_csv(..., missing='interpolate'))")
    windows = np.lib.stride_tricks.sliding_window_view(series, input_len + horizon, axis=0)[::stride]
    windows = np.moveaxis(windows, -1, 1)  # (N, k, L) -> (N, L, k)
    return np.ascontiguousarray(windows[:, :input_len]), np.ascontiguousarray(windows[:, input_len:])


def train_val_test_split_series(series, val_size=0.1, test_size=0.1, overlap: int = 0):
    """Contiguous ``(train, val, test)`` pieces of a series, in time order.

    ``val_size``/``test_size``: a count of steps (int) or a fraction of T (float in [0, 1));
    test is the last steps, val the ones before. ``overlap`` prefixes val and test with the
    ``overlap`` steps before them (pass ``input_len`` so the first window can forecast the
    first val/test step); a piece of size 0 stays empty.
    """
    series = np.asarray(series)
    length = len(series)
    sizes = []
    for name, size in (("val_size", val_size), ("test_size", test_size)):
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0:
            sizes.append(int(size))
        elif isinstance(size, float) and 0 <= size < 1:
            sizes.append(int(np.floor(length * size + 1e-9)))
        else:
            raise ValueError(f"{name} {size!r}; expected a step count >= 0 or a fraction in [0, 1)")
    val_start, test_start = length - sizes[0] - sizes[1], length - sizes[1]
    if val_start < 1:
        raise ValueError(f"val {sizes[0]} + test {sizes[1]} steps leave no training steps of T={length}")
    if not isinstance(overlap, (int, np.integer)) or not 0 <= overlap <= val_start:
        raise ValueError(f"overlap {overlap!r}; expected an integer in 0..{val_start} (the train length)")

    def piece(start, stop):
        return series[start - overlap:stop] if stop > start else series[start:start]

    return series[:val_start], piece(val_start, test_start), piece(test_start, length)


def rolling_origin_folds(val_end: int, val_size: int, n_folds: int, min_train: int = 1) -> list[tuple[int, int]]:
    """Expanding-window (rolling-origin) validation folds: ``[(train_end, fold_val_end), ...]``, oldest first.

    Fold i of k trains on steps ``[0, train_end_i)`` and validates on the next ``val_size``
    steps ``[train_end_i, train_end_i + val_size)``; the validation blocks are consecutive and
    disjoint, and the last one ends at ``val_end``, so the last fold is the usual
    train | validation split and the earlier folds move it back by ``val_size`` steps each.
    Nothing at or after ``val_end`` (the test part) belongs to any fold. ``min_train``: the
    fewest training steps the first (shortest) fold may have.
    """
    for name, value in (("val_end", val_end), ("val_size", val_size), ("n_folds", n_folds), ("min_train", min_train)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} {value!r}; expected an integer >= 1")
    first_train_end = val_end - n_folds * val_size
    if first_train_end < min_train:
        most = max(0, (val_end - min_train) // val_size)
        raise ValueError(f"{n_folds} folds of {val_size} validation steps ending at step {val_end} leave "
                         f"{first_train_end} training steps to the first fold; need at least {min_train} "
                         f"(at most {most} folds)")
    ends = [val_end - (n_folds - i) * val_size for i in range(n_folds)]
    return [(int(e), int(e + val_size)) for e in ends]


class Scaler:
    """Standard scaling per feature: ``z = (x - mean) / std``, statistics from ``fit`` (the train part).

    Features are the last axis of an (N, k) or (..., k) array; a 1-D array is one feature.
    NaNs are ignored by ``fit``; a constant feature gets std 1 so it maps to 0, not to NaN.
    """

    def __init__(self):
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x) -> "Scaler":
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            raise ValueError(f"fit on an empty array of shape {x.shape}; need at least one value")
        axes = tuple(range(x.ndim - 1)) if x.ndim >= 2 else None
        self.mean = np.nanmean(x, axis=axes)
        std = np.nanstd(x, axis=axes)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def _check(self, x) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("Scaler used before fit(); call fit(train) first")
        x = np.asarray(x)
        features = self.mean.shape[0] if self.mean.ndim else None
        if features is not None and (x.ndim < 1 or x.shape[-1] != features):
            raise ValueError(f"array of shape {x.shape}; expected a last axis of {features} features")
        return x

    def transform(self, x) -> np.ndarray:
        x = self._check(x)
        return ((x - self.mean) / self.std).astype(np.result_type(x.dtype, np.float32), copy=False)

    def inverse_transform(self, z) -> np.ndarray:
        z = self._check(z)
        return (z * self.std + self.mean).astype(np.result_type(z.dtype, np.float32), copy=False)

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)

    def to_dict(self) -> dict:
        """JSON-able statistics: ``{"mean": ..., "std": ...}`` (floats or lists of floats)."""
        if self.mean is None:
            raise RuntimeError("Scaler used before fit(); call fit(train) first")
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        if not isinstance(d, dict) or set(d) != {"mean", "std"}:
            raise ValueError(f"scaler data {d!r}; expected a dict with exactly 'mean' and 'std'")
        scaler = cls()
        scaler.mean, scaler.std = np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64)
        if scaler.mean.shape != scaler.std.shape or scaler.mean.ndim > 1 or not (scaler.std > 0).all():
            raise ValueError(f"scaler mean shape {scaler.mean.shape} and std shape {scaler.std.shape}; "
                             f"expected equal shapes, () or (k,), with std > 0")
        return scaler
