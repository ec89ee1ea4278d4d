"""Forecaster and the forecast task: gradients, windows and their inversion, baselines, learning."""
from __future__ import annotations

import itertools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from rnnkit import gradcheck
from rnnkit.layers import Layer
from rnnkit.models.base import Model
from rnnkit.models.forecaster import Forecaster, ForecasterConfig
from rnnkit.optim import Adam, clip_grad_norm
from rnnkit.tasks.forecast import ForecastConfig, ForecastTask, forecast_metrics
from script_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RNNKIT_DATA", ROOT.parent / "shared" / "data"))
AIR = DATA / "air-passengers" / "AirPassengers.csv"
AIR_DIR = DATA if AIR.is_file() else ROOT / "tests" / "data"  # a byte-for-byte copy rides with the tests


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """These matrices are tiny: one BLAS thread is faster, and far faster on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional; without it the tests only run slower
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


# ---- gradients -------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,output", list(itertools.product(["rnn", "lstm", "gru"], ["last", "sequence"])))
def test_gradcheck_forward(cell, output):
    cfg = ForecasterConfig(cell=cell, hidden_size=4, num_layers=2, horizon=3, output=output, dropout=0.2)
    model = Forecaster(cfg, input_size=3, num_targets=2, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 6, 3))
    report = gradcheck(ForwardOf(model), (x,))
    assert report.passed(1e-6) and "input.0" in report.errors, str(report)


def backward_with_dx(model, dpred):
    """``model.backward(dpred)``, returning the gradient with respect to x so gradcheck can check it.

    Forecaster.backward returns nothing (x is data), but the dx it computes is what its rnn's
    backward returns: capture that. With ``residual=True`` the model also adds x's last values of
    the targets to the output, a path its backward treats as a constant; add that identity path
    here, so the x gradient checked is the rnn's own plus exactly that.
    """
    rnn, captured = model.rnn, []

    def capture(*args, **kwargs):
        captured.append(type(rnn).backward(rnn, *args, **kwargs))
        return captured[-1]

    rnn.backward = capture
    try:
        model.backward(dpred)
    finally:
        del rnn.backward
    (dx,) = captured
    if model.config.residual:
        dbase = dpred.sum(axis=-2)  # out = net + base[..., None, :] over the horizon axis
        K = model.num_targets
        if model.config.output == "last":
            dx[:, -1, :K] += dbase
        else:
            dx[:, :, :K] += dbase
    return dx


class ForwardOf(Layer):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward(x)

    def backward(self, dpred):
        return backward_with_dx(self.model, dpred)


class LossOf(Layer):
    def __init__(self, model, target):
        super().__init__()
        self.model, self.target = model, target

    def forward(self, x):
        return self.model.loss(x, self.target)

    def backward(self, dloss):
        return backward_with_dx(self.model, self.model.criterion.backward(dloss))


@pytest.mark.parametrize("loss,output", [("mse", "last"), ("mae", "last"), ("mse", "sequence"), ("mae", "sequence")])
def test_gradcheck_loss(loss, output):
    cfg = ForecasterConfig(cell="gru", hidden_size=4, horizon=2, output=output, loss=loss)
    model = Forecaster(cfg, input_size=2, seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 2))
    target = rng.standard_normal((3, 2, 2) if output == "last" else (3, 5, 2, 2))
    report = gradcheck(LossOf(model, target), (x,))
    assert report.passed(1e-6) and "input.0" in report.errors, str(report)


def test_output_shapes_and_predict():
    x = np.zeros((4, 7, 3), dtype=np.float32)
    last = Forecaster(ForecasterConfig(horizon=5), input_size=3, num_targets=1)
    seq = Forecaster(ForecasterConfig(horizon=5, output="sequence"), input_size=3, num_targets=1)
    assert last.forward(x).shape == (4, 5, 1) and last.predict(x).shape == (4, 5, 1)
    assert seq.forward(x).shape == (4, 7, 5, 1) and seq.predict(x).shape == (4, 5, 1)
    np.testing.assert_array_equal(seq.predict(x), seq.forward(x)[:, -1])


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_residual_zero_output_is_the_last_value_and_gradients_hold(output):
    """residual=True: output layer at zero -> the forecast is the last observed value of each target."""
    cfg = ForecasterConfig(cell="lstm", hidden_size=4, horizon=3, output=output, residual=True)
    model = Forecaster(cfg, input_size=3, num_targets=2, seed=1)
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32)
    model.output.params["weight"][...] = 0.0
    model.output.params["bias"][...] = 0.0
    np.testing.assert_allclose(model.predict(x), np.repeat(x[:, -1:, :2], 3, axis=1))
    if output == "sequence":
        np.testing.assert_allclose(model.forward(x), np.repeat(x[:, :, None, :2], 3, axis=2))
    model = Forecaster(cfg, input_size=3, num_targets=2, seed=1)
    plain = Forecaster(ForecasterConfig(cell="lstm", hidden_size=4, horizon=3, output=output), input_size=3,
                       num_targets=2, seed=1)
    diff = model.forward(x) - plain.forward(x)  # same weights: the residual adds the last value, nothing else
    base = x[:, -1, :2][:, None, :] if output == "last" else x[:, :, None, :2]
    np.testing.assert_allclose(diff, np.broadcast_to(base, diff.shape), atol=1e-6)
    target = np.random.default_rng(1).standard_normal(model.forward(x).shape)
    report = gradcheck(LossOf(model, target), (x,))
    assert report.passed(1e-6) and "input.0" in report.errors, str(report)


def test_residual_task_with_zero_output_forecasts_the_naive_last_value():
    """On levels (difference 0) the residual forecaster at zero output is the naive forecast, in series units."""
    t = np.arange(80)
    y = 50 + t + 10 * np.sin(2 * np.pi * t / 4)
    task = make_task(y, residual=True, season=1)
    task.model.output.params["weight"][...] = 0.0
    task.model.output.params["bias"][...] = 0.0
    origins, pred, _ = task.forecast("test")
    np.testing.assert_allclose(pred, task.seasonal_naive(origins), rtol=1e-5)


# ---- the task's data pipeline ------------------------------------------------------------------
def make_task(series, names=None, **kw):
    series = np.asarray(series, dtype=np.float64).reshape(len(series), -1)
    names = names or [f"c{i}" for i in range(series.shape[1])]
    defaults = dict(dataset="synthetic.csv", hidden_size=8, input_len=6, val_size=12, test_size=12, season=4,
                    transform="none", difference=0)
    return ForecastTask(ForecastConfig(**{**defaults, **kw}), series, names, seed=0)


@pytest.mark.parametrize("transform,difference,horizon", [("none", 0, 1), ("log", 4, 3), ("log", 1, 3),
                                                         ("none", 2, 5), ("log", 4, 9)])
def test_invert_of_true_targets_gives_the_truth(transform, difference, horizon):
    """Scaled, differenced (and logged) targets map back exactly, also when h > lag chains forecasts."""
    t = np.arange(80)
    y = 50 + t + 10 * np.sin(2 * np.pi * t / 4) + np.random.default_rng(0).random(80)
    task = make_task(y, transform=transform, difference=difference, horizon=horizon)
    for split in ("train", "valid", "test"):
        origins = task.origins[split]
        _, z_true = task.windows(origins)
        np.testing.assert_allclose(task.invert(origins, z_true.astype(np.float64)), task.truth(origins), rtol=1e-5)


def test_split_windows_are_contiguous_and_disjoint_in_targets():
    task = make_task(np.arange(1, 61), horizon=2, difference=4)
    h = 2
    for split, (lo, hi) in {"train": (0, task.train_end), "valid": (task.train_end, task.val_end),
                            "test": (task.val_end, 60)}.items():
        origins = task.origins[split]
        assert ((origins + 1 >= lo) & (origins + h < hi)).all()
        assert len(origins) == hi - max(lo, 4 + 6) - h + 1 if split == "train" else hi - lo - h + 1
    x, y = task.windows(task.origins["train"], sequence_targets=True)
    assert x.shape == (len(task.origins["train"]), 6, 1) and y.shape == (len(task.origins["train"]), 6, 2, 1)
    np.testing.assert_array_equal(y[:, :-1, 0], x[:, 1:])  # step s targets x_{s+1}
    # the scaler saw the training part only
    assert task.scaler.mean == pytest.approx(4.0)


def test_seasonal_naive_and_metrics():
    y = np.tile([1.0, 2.0, 3.0, 4.0], 15)
    task = make_task(y, horizon=6)
    origins = task.origins["test"]
    np.testing.assert_array_equal(task.seasonal_naive(origins), task.truth(origins))  # exact for a pure season
    m = forecast_metrics(np.array([[[2.0]], [[2.0]]]), np.array([[[1.0]], [[4.0]]]))
    assert m == pytest.approx({"mae": 1.5, "rmse": np.sqrt(2.5), "mape": 75.0})


def test_multivariate_with_covariates_and_calendar(tmp_path):
    t = np.arange(100)
    path = tmp_path / "two.csv"
    lines = ["step,load,temp"] + [f"{i},{20 + np.sin(i / 3):.5f},{np.cos(i / 3):.5f}" for i in t]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = ForecastConfig(dataset=str(path), targets="load", calendar=True, season=12, horizon=2, hidden_size=4,
                         input_len=8, val_size=12, test_size=12, batch_size=8)
    task = ForecastTask.from_config(cfg)
    assert task.columns == ["load", "temp"] and task.num_targets == 1
    assert task.model.input_size == 4 and task.model.num_targets == 1  # 2 columns + sin + cos
    x, y = next(iter(task.train_batches(0)))
    assert x.shape == (8, 8, 4) and y.shape == (8, 2, 1)
    loss, count = task.train_loss((x, y))
    task.backward()
    assert count == 8 and loss > 0
    assert set(task.evaluate("test")) >= {"loss", "mae", "rmse", "mape", "naive_mae", "naive_mape"}


def test_a_relative_csv_path_is_kept_absolute(tmp_path, monkeypatch):
    (tmp_path / "one.csv").write_text("step,v\n" + "".join(f"{i},{i % 7}\n" for i in range(60)), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert ForecastConfig(dataset="one.csv").dataset == str(tmp_path / "one.csv")
    assert ForecastConfig(dataset="nile").dataset == "nile"


# ---- rolling-origin folds ----------------------------------------------------------------------
def fold_series(seed=0):
    t = np.arange(90)
    return 50 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 4) + np.random.default_rng(seed).random(90)


@pytest.mark.parametrize("transform,difference,horizon", [("none", 0, 1), ("log", 4, 3)])
def test_fold_task_boundaries_and_scaling_use_the_fold_training_steps_only(transform, difference, horizon):
    y = fold_series()
    cfg = ForecastConfig(dataset="synthetic.csv", hidden_size=4, input_len=6, val_size=12, test_size=12, season=4,
                         transform=transform, difference=difference, horizon=horizon)
    task = ForecastTask.for_fold(cfg, y, ["c0"], (40, 52))
    assert (task.train_end, task.val_end, len(task.y)) == (40, 52, 52)  # the series is cut at the fold's end
    train, valid = task.origins["train"], task.origins["valid"]
    assert (train + horizon < 40).all() and train[-1] == 40 - horizon - 1
    assert (valid + 1 >= 40).all() and (valid + horizon < 52).all() and len(valid) == 12 - horizon + 1
    assert len(task.origins["test"]) == 0
    v = np.log(y) if transform == "log" else y
    w = v[difference:40] - v[:40 - difference] if difference else v[:40]
    assert task.scaler.mean == pytest.approx(w.mean()) and task.scaler.std == pytest.approx(w.std())
    # the last fold is the usual split of the whole series
    full = ForecastTask(cfg, y, ["c0"])
    last = ForecastTask.for_fold(cfg, y, ["c0"], (full.train_end, full.val_end))
    np.testing.assert_array_equal(last.origins["valid"], full.origins["valid"])
    np.testing.assert_array_equal(last.origins["train"], full.origins["train"])
    assert last.scaler.to_dict() == full.scaler.to_dict()
    with pytest.raises(ValueError, match="fold \\(40, 95\\); expected 0 < train_end < val_end <= T = 90"):
        ForecastTask.for_fold(cfg, y, ["c0"], (40, 95))


def test_fold_validation_targets_never_reach_training_or_scaling():
    """Changing the fold's validation block (and everything after it) leaves the scaler, the training
    windows and the trained weights as they were; changing steps after the fold changes nothing at all."""
    y = fold_series()
    cfg = ForecastConfig(dataset="synthetic.csv", hidden_size=4, input_len=6, val_size=12, test_size=12, season=4,
                         transform="log", difference=4, horizon=2, batch_size=8)
    fold = (40, 52)
    changed = y.copy()
    changed[40:] *= 3.0  # the validation block and the rest of the series
    later = y.copy()
    later[52:] *= 3.0  # after the fold only

    def fit(series):
        task = ForecastTask.for_fold(cfg, series, ["c0"], fold, seed=1)
        opt = Adam(task.model, lr=1e-2)
        for epoch in range(3):
            for batch in task.train_batches(epoch):
                task.model.zero_grad()
                task.train_loss(batch)
                task.backward()
                opt.step()
        return task

    base, moved, after = fit(y), fit(changed), fit(later)
    assert moved.scaler.to_dict() == base.scaler.to_dict()
    for a, b in zip(base.train_batches(0), moved.train_batches(0)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    for name, value in base.model.state_dict().items():
        np.testing.assert_array_equal(moved.model.state_dict()[name], value)
    assert moved.evaluate("valid")["mae"] != pytest.approx(base.evaluate("valid")["mae"])  # the block did change
    assert after.evaluate("valid") == pytest.approx(base.evaluate("valid"))


def test_benchmark_fold_scheme_keeps_the_fewest_training_windows():
    bench = load_script(ROOT / "benchmarks" / "run_forecast.py")
    base = {"dataset": "synthetic.csv", "val_size": 15, "test_size": 15, "season": 1, "transform": "none",
            "difference": 0}
    grid = bench.parse_grid(["input_len=5,10"])
    # 85 non-test steps; the longest window 10 + h 1 - 1 + 12 windows = 22 steps for the first fold
    assert bench.fold_scheme(base, grid, 100, 4, 12) == [(25, 40), (40, 55), (55, 70), (70, 85)]
    assert bench.fold_scheme(base, grid, 100, 9, 20) == [(40, 55), (55, 70), (70, 85)]  # 10 + 20 = 30 > 25
    assert bench.fold_scheme({**base, "horizon": 12}, grid, 100, 4, 12) == [(40, 55), (55, 70), (70, 85)]


def test_benchmark_significance_tests_each_seed_and_the_average(tmp_path):
    pytest.importorskip("scipy.stats")
    bench = load_script(ROOT / "benchmarks" / "run_forecast.py")
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(20, 1, 1))
    nets = [{"pred": truth + 0.3 * rng.normal(size=truth.shape)} for _ in range(3)]
    mean_pred = np.mean([n["pred"] for n in nets], axis=0)
    preds = {"network": nets[0]["pred"], "seasonal naive": truth + rng.normal(size=truth.shape)}
    sig = bench.significance(nets, mean_pred, preds, truth, 1)
    assert set(sig) == {"seed-average vs seasonal_naive", "each seed vs seasonal_naive"}  # no ARIMA forecast
    assert sig["seed-average vs seasonal_naive"]["statistic"] < 0 and len(sig["each seed vs seasonal_naive"]["p_value"]) == 3
    assert "too few" in bench.significance(nets, mean_pred, preds, truth, 6)["skipped"]  # 20 origins < 4 * 6
    line = {"dataset": "x", "config": {"horizon": 1}, "test_origins": 20, "significance": sig}
    (tmp_path / "r.jsonl").write_text(json.dumps(line) + "\n")
    assert "| x | 1 | 20 | -" in bench.summarize_significance(tmp_path / "r.jsonl")


# ---- learning --------------------------------------------------------------------------------
def train(task, epochs, lr):
    opt = Adam(task.model, lr=lr)
    best, best_state = np.inf, None
    for epoch in range(epochs):
        task.start_epoch(epoch)
        for batch in task.train_batches(epoch):
            task.model.zero_grad()
            task.train_loss(batch)
            task.backward()
            clip_grad_norm(task.model, 1.0)
            opt.step()
        val = task.evaluate("valid")["loss"]
        if val < best:
            best, best_state = val, {k: v.copy() for k, v in task.model.state_dict().items()}
    task.model.load_state_dict(best_state)


def test_learns_noisy_sine_better_than_naive():
    t = np.arange(400)
    y = np.sin(2 * np.pi * t / 20) + 0.5 * np.sin(2 * np.pi * t / 7) + 0.05 * np.random.default_rng(0).standard_normal(400)
    task = make_task(y, input_len=20, val_size=40, test_size=40, season=1, horizon=3, hidden_size=16, batch_size=32)
    train(task, epochs=20, lr=1e-2)
    m = task.evaluate("test")
    assert m["mae"] < 0.4 * m["naive_mae"], m


def test_air_passengers_beats_seasonal_naive(tmp_path):
    """Learns, not just runs: a zero output layer already forecasts seasonal naive plus the
    training part's mean yearly change (MAPE 3.3 % against naive's 10.5 %, validation loss 1.49),
    so the trained network must also cut the validation loss well below that model's."""
    cfg = ForecastConfig(dataset="air-passengers", data_dir=str(AIR_DIR), hidden_size=16, batch_size=16)
    untrained = ForecastTask.from_config(cfg, seed=0)
    for name, p, _ in untrained.model.named_parameters():
        if name.startswith("output."):
            p[...] = 0
    drift = untrained.evaluate("valid")["loss"]
    task = ForecastTask.from_config(cfg, seed=0)
    assert (task.config.transform, task.config.difference, task.config.season) == ("log", 12, 12)
    assert {k: len(v) for k, v in task.origins.items()} == {"train": 60, "valid": 24, "test": 24}
    train(task, epochs=40, lr=3e-3)
    assert task.evaluate("valid")["loss"] < 0.5 * drift  # 0.32-0.36 against 1.49 (seeds 0-2)
    m = task.evaluate("test")
    assert m["mape"] < 0.6 * m["naive_mape"], m
    ckpt = task.model.save(tmp_path / "f.safetensors", meta=task.extra_meta())
    again = ForecastTask.from_checkpoint(ckpt)
    assert isinstance(Model.load(ckpt), Forecaster)
    assert again.evaluate("test") == pytest.approx(m)


def test_trainer_run_and_reload_from_its_checkpoint(tmp_path):
    from rnnkit.train.trainer import Trainer, TrainConfig

    t = np.arange(120)
    path = tmp_path / "s.csv"
    path.write_text("t,v\n" + "".join(f"{i},{10 + np.sin(i / 2):.5f}\n" for i in t), encoding="utf-8")
    cfg = ForecastConfig(dataset=str(path), hidden_size=8, input_len=10, val_size=15, test_size=15, horizon=2,
                         output="sequence", loss="mae")
    task = ForecastTask.from_config(cfg, seed=2)
    train_cfg = TrainConfig(epochs=2, lr=1e-2, seed=2, run_dir=str(tmp_path / "run"), progress=False)
    result = Trainer(task, train_cfg, cfg).fit()
    assert {"best_val_loss", "test_loss", "test_mae", "test_naive_mae"} <= set(result)
    again = ForecastTask.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert again.config == task.config and again.seed == 2
    assert again.evaluate("test")["mae"] == pytest.approx(result["test_mae"])


# --- Diebold-Mariano ----------------------------------------------------------------------

def test_diebold_mariano_one_step_equals_the_paired_t_test():
    """At h = 1 the HLN-corrected statistic is exactly the paired t-test of the losses."""
    stats = pytest.importorskip("scipy.stats")
    from rnnkit.tasks.forecast import diebold_mariano

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), 1.2 * rng.normal(size=40)
    for loss, fn in (("abs", np.abs), ("squared", np.square)):
        dm = diebold_mariano(a, b, loss=loss)
        ref = stats.ttest_rel(fn(a), fn(b))
        assert dm["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
        assert dm["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
        assert dm["mean_diff"] == pytest.approx(float((fn(a) - fn(b)).mean()))
        swapped = diebold_mariano(b, a, loss=loss)
        assert swapped["statistic"] == pytest.approx(-dm["statistic"]) and swapped["p_value"] == pytest.approx(dm["p_value"])


def test_diebold_mariano_multi_step_variance_and_extra_axes():
    pytest.importorskip("scipy.stats")
    from rnnkit.tasks.forecast import diebold_mariano

    rng = np.random.default_rng(1)
    n, h = 60, 3
    a, b = rng.normal(size=(n, h, 2)), rng.normal(size=(n, h, 2))
    d = (np.abs(a) - np.abs(b)).mean(axis=(1, 2))
    # the long-run variance written out with np.correlate (full autocovariance sequence)
    acov = np.correlate(d - d.mean(), d - d.mean(), mode="full")[n - 1:] / n
    lrv = acov[0] + 2 * acov[1:h].sum()
    expected = d.mean() / np.sqrt(lrv / n) * np.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    assert diebold_mariano(a, b, horizon=h)["statistic"] == pytest.approx(expected, rel=1e-12)
    assert diebold_mariano(a, b, horizon=h)["n"] == n


def test_diebold_mariano_size_and_power():
    """Equal forecasts are rejected at 5 % about 5 % of the time; a clearly better one nearly always."""
    pytest.importorskip("scipy.stats")
    from rnnkit.tasks.forecast import diebold_mariano

    rng = np.random.default_rng(2)
    n, trials = 30, 2000
    null = [diebold_mariano(rng.normal(size=n), rng.normal(size=n))["p_value"] < 0.05 for _ in range(trials)]
    assert 0.035 < np.mean(null) < 0.065
    # 2-step errors are MA(1): horizon=2 keeps the size, horizon=1 would over-reject
    def ma1():
        e = rng.normal(size=n + 1)
        return e[1:] + 0.9 * e[:-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the odd negative long-run variance
        pairs = [(ma1(), ma1()) for _ in range(trials)]
        null2 = [diebold_mariano(a, b, horizon=2, loss="squared")["p_value"] < 0.05 for a, b in pairs]
    null1 = [diebold_mariano(a, b, horizon=1, loss="squared")["p_value"] < 0.05 for a, b in pairs]
    assert 0.02 < np.mean(null2) < 0.08 < np.mean(null1)
    better = [diebold_mariano(0.5 * rng.normal(size=60), rng.normal(size=60)) for _ in range(200)]
    assert np.mean([r["p_value"] < 0.05 and r["statistic"] < 0 for r in better]) > 0.95


def test_diebold_mariano_rejects_bad_input():
    from rnnkit.tasks.forecast import diebold_mariano

    a = np.arange(10.0)
    with pytest.raises(ValueError, match=r"shapes \(10,\) and \(9,\)"):
        diebold_mariano(a, a[:9])
    with pytest.raises(ValueError, match="horizon 10"):
        diebold_mariano(a, a + 1, horizon=10)
    with pytest.raises(ValueError, match="loss 'mse'"):
        diebold_mariano(a, a + 1, loss="mse")
    with pytest.raises(ValueError, match="NaN"):
        diebold_mariano(a, np.r_[a[:9], np.nan])
    with pytest.raises(ValueError, match="constant"):
        diebold_mariano(a, -a)  # equal absolute errors: d = 0 everywhere
    pytest.importorskip("scipy.stats")
    with pytest.warns(RuntimeWarning, match="negative"):  # d alternates: lag-1 autocovariance = -lag 0
        assert diebold_mariano(np.zeros(10), np.tile([1.0, 2.0], 5), horizon=2)["variance_lags"] == 0


# ---- config, model and data checks -------------------------------------------------------------
def test_a_float64_model_gets_windows_in_its_dtype(tmp_path):
    """A model loaded as float64 trains and evaluates on float64 windows (not a float32 mismatch)."""
    t = np.arange(80)
    y = 50 + t + 10 * np.sin(2 * np.pi * t / 4)
    task = make_task(y, horizon=2)
    ckpt = task.model.save(tmp_path / "f.safetensors", meta=task.extra_meta())
    m64 = Model.load(ckpt, dtype=np.float64)
    task64 = ForecastTask(task.config, y, ["c0"], model=m64)
    x, target = task64.windows(task64.origins["train"][:4])
    assert x.dtype == target.dtype == np.float64
    loss, count = task64.train_loss(next(iter(task64.train_batches(0))))
    assert np.isfinite(loss) and count > 0
    assert task64.evaluate("test") == pytest.approx(task.evaluate("test"), rel=1e-4)


@pytest.mark.parametrize("name,value,expected", [
    ("batch_size", 0, "an integer >= 1"), ("horizon", 0, "an integer >= 1"),
    ("input_len", -3, "an integer >= 0"), ("val_size", -5, "an integer >= 0"),
    ("test_size", -5, "an integer >= 0"), ("season", -1, "an integer >= 0")])
def test_config_rejects_sizes_out_of_range(name, value, expected):
    with pytest.raises(ValueError, match=f"^{name} {value}; expected {expected}"):
        ForecastConfig(**{name: value})
    ForecastConfig(input_len=0, val_size=0, test_size=0, season=0)  # 0: the dataset's default


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("num_targets", [0, 3])
def test_forecaster_needs_targets_among_its_inputs(residual, num_targets):
    with pytest.raises(ValueError, match=f"num_targets {num_targets}; expected 1 <= num_targets <= input_size = 2"):
        Forecaster(ForecasterConfig(hidden_size=8, residual=residual), 2, num_targets=num_targets)
    assert Forecaster(ForecasterConfig(hidden_size=8, residual=residual), 2, num_targets=2).num_targets == 2


@pytest.mark.skipif(not (DATA / "statsmodels-ts" / "elnino.csv").is_file() or not AIR.is_file(),
                    reason="bundled series not found (set RNNKIT_DATA)")
def test_columns_of_a_bundled_dataset_are_checked():
    from rnnkit.tasks.forecast import load_series

    def load(dataset, columns):
        return load_series(ForecastConfig(dataset=dataset, data_dir=str(DATA), columns=columns))

    with pytest.raises(ValueError, match="columns 'nosuchcolumn' for dataset 'air-passengers'; expected 'value'"):
        load("air-passengers", "nosuchcolumn")
    with pytest.raises(ValueError, match="columns 'JAN' for dataset 'elnino'; expected 'elnino'.*JAN..DEC"):
        load("elnino", "JAN")
    values, names = load("air-passengers", "value")
    assert names == ["value"] and values.shape == (144, 1)
    values, names = load("elnino", "elnino")
    assert names == ["elnino"] and values.shape == (61 * 12, 1)


def test_a_part_too_short_for_the_horizon_is_refused():
    y = 50 + np.arange(80.0)
    with pytest.raises(ValueError, match="validation part of 12 steps holds no forecast origin for horizon 13; "
                                         "expected horizon <= 12, or a validation part \\(val_size\\) of >= 13"):
        make_task(y, horizon=13)
    with pytest.raises(ValueError, match="test part of 12 steps holds no forecast origin for horizon 13; "
                                         "expected horizon <= 12, or a test part \\(test_size\\) of >= 13"):
        make_task(y, horizon=13, val_size=20)
    task = make_task(y, horizon=12)  # the longest horizon that fits: one origin per part
    assert len(task.origins["valid"]) == len(task.origins["test"]) == 1
    fold = ForecastTask.for_fold(task.config, y, ["c0"], (50, 68))  # a fold has no test part: not an error
    assert len(fold.origins["test"]) == 0 and fold.evaluate("test") == {}
