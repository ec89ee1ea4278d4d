"""``rnnkit train --task forecast``: time-series forecasting with a recurrent network.

Data: ``air-passengers`` (Box & Jenkins series G, monthly 1949-1960) and the statsmodels
series ``co2`` (Mauna Loa, weekly, averaged to months), ``sunspots`` (yearly),
``nile`` (yearly flow), ``elnino`` (monthly sea surface temperature), or a path to any
CSV whose first column is the time index (``columns`` picks value columns, ``targets``
the ones forecast; the others are covariates).

Pipeline, per value column, with every statistic taken from the training part only:

1. ``transform``: ``v_t = log y_t`` (multiplicative seasonality becomes additive) or ``v_t = y_t``;
2. ``difference`` at lag d: ``w_t = v_t - v_{t-d}`` (d = the season length removes a
   trend and a fixed seasonal pattern; d = 0 keeps levels);
3. standard scaling ``z_t = (w_t - mean) / std``, fitted on the training part;
4. optional ``calendar`` covariates ``sin(2 pi t / s), cos(2 pi t / s)`` (s = season).

A window of ``input_len`` steps of z ending at the *origin* t forecasts
``z_{t+1..t+horizon}``; forecasts are inverted back to the units of y
(``v_{t+k} = w_{t+k} + v_{t+k-d}``, using already forecast values when k > d).

Split: contiguous train | val | test in time. A window belongs to the part that holds
all of its forecast targets (its inputs may reach back into earlier parts: that is the
past, known at forecast time). Evaluation is rolling-origin: every origin whose
``horizon`` targets lie in the part is forecast from the true history up to it, and
metrics average over all origins and steps, in the original units: MAE, RMSE, MAPE (%),
next to the seasonal-naive forecast ``y_{t+k-s*ceil(k/s)}`` on the same targets.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backend
from ..data.series import Scaler, load_series_csv
from ..models.forecaster import Forecaster, ForecasterConfig
from .classify import data_dir
from .common import absolute_if_exists, find_task_meta


@dataclass(frozen=True)
class SeriesPreset:
    file: str  # relative to the data folder
    column: str | None  # None: the wide elnino table
    season: int
    input_len: int
    val_size: int
    test_size: int
    transform: str = "none"
    difference: int = 0


PRESETS = {
    "air-passengers": SeriesPreset("air-passengers/AirPassengers.csv", "value", 12, 24, 24, 24, "log", 12),
    "co2": SeriesPreset("statsmodels-ts/co2.csv", "co2", 12, 24, 60, 60, "none", 12),
    "sunspots": SeriesPreset("statsmodels-ts/sunspots.csv", "SUNACTIVITY", 11, 22, 40, 40),
    "nile": SeriesPreset("statsmodels-ts/nile.csv", "volume", 1, 10, 15, 15),
    "elnino": SeriesPreset("statsmodels-ts/elnino.csv", None, 12, 24, 60, 60),
}


@dataclass
class ForecastConfig(ForecasterConfig):
    """Data and model hyper-parameters of the forecasting task (0 / "auto" / -1: the dataset's default)."""

    dataset: str = field(default="air-passengers", metadata={
        "help": "air-passengers | co2 | sunspots | nile | elnino | path to a CSV (first column = time)"})
    data_dir: str = field(default="", metadata={
        "help": "folder holding air-passengers/ and statsmodels-ts/ (default: $RNNKIT_DATA or ../shared/data)"})
    columns: str = field(default="", metadata={"help": "CSV value columns, comma-separated (default: all)"})
    targets: str = field(default="", metadata={"help": "columns to forecast, comma-separated (default: all columns)"})
    input_len: int = field(default=0, metadata={"help": "window length in steps (0: the dataset's default)"})
    val_size: int = field(default=0, metadata={"help": "validation steps before the test part (0: default)"})
    test_size: int = field(default=0, metadata={"help": "test steps at the end of the series (0: default)"})
    season: int = field(default=0, metadata={"help": "season length s for seasonal naive and calendar terms (0: default)"})
    transform: str = field(default="auto", metadata={"help": "none | log | auto (the dataset's default)"})
    difference: int = field(default=-1, metadata={"help": "difference lag d (0: none; -1: the dataset's default)"})
    calendar: bool = field(default=False, metadata={"help": "add sin/cos of the season phase as input features"})
    batch_size: int = field(default=16, metadata={"help": "windows per training batch"})

    def __post_init__(self):
        super().__post_init__()
        if self.transform not in ("none", "log", "auto"):
            raise ValueError(f"transform {self.transform!r}; expected 'none', 'log' or 'auto'")
        if self.difference < -1:
            raise ValueError(f"difference {self.difference}; expected a lag >= 0 (or -1: the dataset's default)")
        for name in ("input_len", "val_size", "test_size", "season"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)!r}; expected an integer >= 0 (0: the dataset's default)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size!r}; expected an integer >= 1")
        if self.dataset not in PRESETS:  # a file: kept absolute, so the checkpoint's config finds it anywhere
            self.dataset = absolute_if_exists(self.dataset)
        self.data_dir = absolute_if_exists(self.data_dir)


def model_config(config: ForecastConfig) -> ForecasterConfig:
    return ForecasterConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ForecasterConfig)})


def load_series(config: ForecastConfig) -> tuple[np.ndarray, list[str]]:
    """The raw series (T, k) float64 without gaps, and its column names."""
    preset = PRESETS.get(config.dataset)
    if preset is None:
        names = [c.strip() for c in config.columns.split(",") if c.strip()] or None
        _, values = load_series_csv(config.dataset, names, missing="interpolate")
        values = values.reshape(len(values), -1)
        if names is None:
            header = Path(config.dataset).read_text(encoding="utf-8").split("\n", 1)[0]
            names = [h.strip().strip('"') for h in header.split(",")[1:]]
        return values, names
    name = preset.column or config.dataset  # the preset's one series (elnino: its twelve month columns, read as one)
    picked = [c.strip() for c in config.columns.split(",") if c.strip()]
    if picked and picked != [name]:
        whole = " (its JAN..DEC columns are read as one monthly series)" if preset.column is None else ""
        raise ValueError(f"columns {config.columns!r} for dataset {config.dataset!r}; expected {name!r}, "
                         f"its only column{whole}, or none")
    path = data_dir(config) / preset.file
    if preset.column is None:
        _, values = load_series_csv(path)  # one row of twelve months per year
        return values.reshape(-1, 1), [name]
    index, values = load_series_csv(path, preset.column, missing="nan")
    if config.dataset == "co2":  # weekly with gaps -> monthly means
        months = index.astype("datetime64[M]")
        uniq, inverse = np.unique(months, return_inverse=True)
        sums = np.bincount(inverse, weights=np.nan_to_num(values), minlength=len(uniq))
        counts = np.bincount(inverse, weights=~np.isnan(values), minlength=len(uniq))
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        known = ~np.isnan(values)
        values = np.interp(np.arange(len(values)), np.flatnonzero(known), values[known])
    return values.reshape(-1, 1), [preset.column]


def resolve(config: ForecastConfig, length: int) -> ForecastConfig:
    """The config with every "dataset default" filled in (what gets saved with a run)."""
    preset = PRESETS.get(config.dataset, SeriesPreset("", None, 1, 12, length // 6, length // 6))
    return dataclasses.replace(
        config,
        input_len=config.input_len or preset.input_len,
        val_size=config.val_size or preset.val_size,
        test_size=config.test_size or preset.test_size,
        season=config.season or preset.season,
        transform=preset.transform if config.transform == "auto" else config.transform,
        difference=preset.difference if config.difference == -1 else config.difference,
    )


class ForecastTask:
    """Trains a :class:`Forecaster` on one series (see the module docstring)."""

    name = "forecast"
    supports_cuda = True  # batches go to the model's array module
    config_class = ForecastConfig
    main_metric = "val_loss"

    def __init__(self, config: ForecastConfig, series: np.ndarray, column_names: list[str], seed: int = 0,
                 model: Forecaster | None = None, ends: tuple[int, int] | None = None):
        """``ends``: ``(train_end, val_end)`` in steps of ``series``, instead of the split of the
        config's ``val_size``/``test_size``; the test part is then the steps from ``val_end`` on
        (none if the series ends there, as in :meth:`for_fold`)."""
        series = np.asarray(series, dtype=np.float64).reshape(len(series), -1)
        config = resolve(config, len(series))
        self.config, self.seed, self.columns = config, seed, list(column_names)
        targets = [c.strip() for c in config.targets.split(",") if c.strip()] or self.columns
        missing = [t for t in targets if t not in self.columns]
        if missing:
            raise ValueError(f"targets {missing} are not among the columns {self.columns}")
        # targets first: the model forecasts its first K features
        order = [self.columns.index(t) for t in targets] + [i for i, c in enumerate(self.columns) if c not in targets]
        self.y = series[:, order]  # (T, k), original units
        self.columns = [self.columns[i] for i in order]
        self.num_targets = len(targets)
        T, lag, L, h = len(self.y), config.difference, config.input_len, config.horizon
        self.train_end = T - config.val_size - config.test_size
        self.val_end = T - config.test_size
        if ends is not None:
            self.train_end, self.val_end = (int(e) for e in ends)
            if not 0 < self.train_end < self.val_end <= T:
                raise ValueError(f"ends {tuple(ends)}; expected 0 < train_end < val_end <= T = {T}")
        if self.train_end - lag - L - h + 1 < 1:
            raise ValueError(f"training part of {self.train_end} steps is too short for difference {lag}, "
                             f"input_len {L} and horizon {h}; need at least {lag + L + h} steps")
        if config.transform == "log" and (self.y <= 0).any():
            raise ValueError("transform 'log' needs a positive series; use --transform none")

        self.v = np.log(self.y) if config.transform == "log" else self.y.copy()
        w = np.full_like(self.v, np.nan)
        w[lag:] = self.v[lag:] - self.v[:T - lag] if lag else self.v
        self.scaler = Scaler().fit(w[lag:self.train_end])
        z = self.scaler.transform(w)
        if config.calendar:
            phase = 2 * np.pi * np.arange(T) / config.season
            z = np.concatenate([z, np.sin(phase)[:, None], np.cos(phase)[:, None]], axis=1)
        self.z = z  # (T, D) model features; rows before `lag` are NaN and never used

        # origin t: inputs z[t-L+1 .. t], targets t+1 .. t+h
        origins = np.arange(lag + L - 1, T - h)
        last_target = origins + h
        self.origins = {
            "train": origins[last_target < self.train_end],
            "valid": origins[(origins + 1 >= self.train_end) & (last_target < self.val_end)],
            "test": origins[(origins + 1 >= self.val_end) & (last_target < T)],
        }
        for split, part, key, size in (("valid", "validation", "val_size", self.val_end - self.train_end),
                                       ("test", "test", "test_size", T - self.val_end)):
            if size > 0 and len(self.origins[split]) == 0:  # a window needs all its targets inside the part
                raise ValueError(f"{part} part of {size} steps holds no forecast origin for horizon {h}; expected "
                                 f"horizon <= {size}, or a {part} part ({key}) of >= {h} steps")
        if model is None:
            data = {"columns": self.columns, "num_targets": self.num_targets, "scaler": self.scaler.to_dict()}
            model = Forecaster(model_config(config), z.shape[1], self.num_targets, data=data, seed=seed)
        self.model = model

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ForecastConfig, seed: int = 0) -> "ForecastTask":
        series, names = load_series(config)
        return cls(config, series, names, seed)

    @classmethod
    def for_fold(cls, config: ForecastConfig, series: np.ndarray, column_names: list[str], fold: tuple[int, int],
                 seed: int = 0) -> "ForecastTask":
        """A task on one rolling-origin fold ``(train_end, val_end)`` (see ``rolling_origin_folds``).

        The series is cut at ``val_end``: the fold's task never holds a later step, its scaling
        statistics come from ``[0, train_end)`` and its training windows forecast targets before
        ``train_end`` only; ``valid`` is the fold's validation block and ``test`` is empty.
        """
        train_end, val_end = fold
        series = np.asarray(series, dtype=np.float64).reshape(len(series), -1)
        if not 0 < train_end < val_end <= len(series):
            raise ValueError(f"fold {tuple(fold)}; expected 0 < train_end < val_end <= T = {len(series)}")
        return cls(config, series[:val_end], column_names, seed, ends=(train_end, val_end))

    @classmethod
    def from_checkpoint(cls, path) -> "ForecastTask":
        from ..checkpoint import load_checkpoint  # noqa: PLC0415
        from ..config import from_dict  # noqa: PLC0415
        from ..models.base import Model  # noqa: PLC0415

        _, meta = load_checkpoint(path)
        task_meta = find_task_meta(meta, cls.name)
        config = from_dict(ForecastConfig, task_meta["config"])
        series, names = load_series(config)
        return cls(config, series, names, int(task_meta.get("seed", 0)), model=Model.load(path))

    def extra_meta(self) -> dict:
        return {"task": self.name, "task_config": dataclasses.asdict(self.config), "seed": self.seed}

    # -- windows ------------------------------------------------------------------------------
    def windows(self, origins: np.ndarray, sequence_targets: bool = False):
        """x (N, L, D) and scaled targets: (N, h, K), or (N, L, h, K) for every step, in the model's dtype."""
        L, h, K = self.config.input_len, self.config.horizon, self.num_targets
        steps = origins[:, None] + np.arange(-L + 1, 1)  # (N, L)
        x = self.z[steps].astype(self.model.dtype)
        ahead = np.arange(1, h + 1)
        if sequence_targets:
            y = self.z[steps[:, :, None] + ahead, :K]  # (N, L, h, K)
        else:
            y = self.z[origins[:, None] + ahead, :K]  # (N, h, K)
        return x, y.astype(self.model.dtype)

    # -- training ----------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def train_batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        origins = rng.permutation(self.origins["train"])
        sequence = self.model.config.output == "sequence"
        bs, xp = self.config.batch_size, self.model.xp
        for start in range(0, len(origins), bs):
            yield tuple(xp.asarray(a) for a in self.windows(origins[start:start + bs], sequence))

    def num_train_batches(self) -> int:
        return -(-len(self.origins["train"]) // self.config.batch_size)

    def train_loss(self, batch) -> tuple[float, int]:
        x, y = batch
        return self.model.loss(x, y), len(x)

    def backward(self) -> None:
        self.model.backward()

    # -- forecasting and evaluation -----------------------------------------------------------
    def invert(self, origins: np.ndarray, zhat: np.ndarray) -> np.ndarray:
        """Scaled forecasts (N, h, K) from ``origins`` -> forecasts in the series' units (N, h, K)."""
        K, lag = self.num_targets, self.config.difference
        w = zhat * self.scaler.std[:K] + self.scaler.mean[:K]
        v = np.empty_like(w)
        for k in range(w.shape[1]):
            if lag == 0:
                v[:, k] = w[:, k]
            elif k >= lag:  # the base value is itself a forecast
                v[:, k] = w[:, k] + v[:, k - lag]
            else:
                v[:, k] = w[:, k] + self.v[origins + 1 + k - lag, :K]
        return np.exp(v) if self.config.transform == "log" else v

    def forecast(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(origins (N,), forecasts (N, h, K), truths (N, h, K)) of a split, in the series' units."""
        origins = self.origins[_split_name(split)]
        x, _ = self.windows(origins)
        zhat = self.predict_scaled(x)
        return origins, self.invert(origins, zhat), self.truth(origins)

    def predict_scaled(self, x: np.ndarray) -> np.ndarray:
        """The model's scaled forecasts (N, h, K) float64 of windows x, in eval mode."""
        return backend.to_numpy(self.model.predict(self.model.xp.asarray(x))).astype(np.float64)

    def truth(self, origins: np.ndarray) -> np.ndarray:
        return self.y[origins[:, None] + np.arange(1, self.config.horizon + 1), :self.num_targets]

    def seasonal_naive(self, origins: np.ndarray) -> np.ndarray:
        """``y_{t+k-s*ceil(k/s)}``: the last observed value of the same season (s = 1: the last value)."""
        s, h = self.config.season, self.config.horizon
        ahead = np.arange(1, h + 1)
        back = ahead - s * np.ceil(ahead / s).astype(int)
        return self.y[origins[:, None] + back, :self.num_targets]

    def evaluate(self, split: str) -> dict[str, float]:
        origins = self.origins[_split_name(split)]
        if len(origins) == 0:
            return {}
        x, y = self.windows(origins)
        zhat = self.predict_scaled(x)
        diff = zhat - y
        loss = float((diff ** 2).mean() if self.config.loss == "mse" else np.abs(diff).mean())
        truth = self.truth(origins)
        out = {"loss": loss, **forecast_metrics(self.invert(origins, zhat), truth)}
        out.update({f"naive_{k}": v for k, v in forecast_metrics(self.seasonal_naive(origins), truth).items()})
        return out


def forecast_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and MAPE (%) over every value (MAPE skips zero truths)."""
    err = pred - truth
    nonzero = truth != 0
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "mape": float(100 * np.abs(err[nonzero] / truth[nonzero]).mean()) if nonzero.any() else float("nan")}


def diebold_mariano(errors_a, errors_b, horizon: int = 1, loss: str = "abs") -> dict[str, float]:
    """Diebold-Mariano test of equal accuracy of two forecasts of the same targets.

    ``errors_a`` and ``errors_b`` are the two forecasts' errors (forecast - truth) at the same
    origins, in time order: shape (N,) or (N, ...), where the extra axes (steps ahead, series)
    are averaged into one loss per origin. The loss differential is
    ``d_t = L(a_t) - L(b_t)`` with ``L = |e|`` (``loss="abs"``) or ``e^2`` (``"squared"``);
    its long-run variance takes the autocovariances up to lag ``horizon - 1`` (an h-step
    forecast error is at most MA(h-1) under the null). The statistic carries Harvey, Leybourne
    and Newbold's (1997) small-sample correction and is read against Student's t with N - 1
    degrees of freedom.

    Returns ``statistic`` (negative: a is more accurate), two-sided ``p_value``, ``mean_diff``
    (mean of d, in loss units), ``n`` and ``variance_lags``: the truncated estimate can come out
    negative at h > 1, and then (with a RuntimeWarning) the lag-0 variance is used instead. Needs SciPy (the ``bench`` extra) for the t distribution.
    """
    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"errors of shapes {a.shape} and {b.shape}; expected two equal shapes (N, ...)")
    if loss not in ("abs", "squared"):
        raise ValueError(f"loss {loss!r}; expected 'abs' or 'squared'")
    n = a.shape[0]
    if not isinstance(horizon, (int, np.integer)) or not 1 <= horizon < n:
        raise ValueError(f"horizon {horizon!r}; expected an integer from 1 to N - 1 = {n - 1}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("errors contain NaN or inf; expected finite errors")
    fn = np.abs if loss == "abs" else np.square
    d = (fn(a) - fn(b)).reshape(n, -1).mean(axis=1)
    dev = d - d.mean()
    gamma = [float(dev[k:] @ dev[:n - k]) / n for k in range(horizon)]
    if not gamma[0] > 0:
        raise ValueError("the loss differential is constant (the two forecasts' losses are equal or differ "
                         "by a constant); expected losses that vary")
    variance = (gamma[0] + 2 * sum(gamma[1:])) / n
    lags = horizon - 1
    if not variance > 0:  # the truncated estimate can be negative at h > 1: fall back, as R's dm.test does
        warnings.warn(f"diebold_mariano: the long-run variance over {lags} lags is negative ({variance:.3g}); "
                      f"using the lag-0 variance", RuntimeWarning, stacklevel=2)
        variance, lags = gamma[0] / n, 0
    from scipy import stats  # the bench extra; kept out of the core dependencies

    dm = float(d.mean()) / np.sqrt(variance)
    dm *= np.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    return {"statistic": float(dm), "p_value": float(2 * stats.t.sf(abs(dm), df=n - 1)),
            "mean_diff": float(d.mean()), "n": int(n), "variance_lags": lags}


def _split_name(split: str) -> str:
    name = {"val": "valid", "validation": "valid"}.get(split, split)
    if name not in ("train", "valid", "test"):
        raise ValueError(f"split {split!r}; expected 'train', 'valid' or 'test'")
    return name


__all__ = ["ForecastConfig", "ForecastTask", "PRESETS", "diebold_mariano", "forecast_metrics", "load_series"]
