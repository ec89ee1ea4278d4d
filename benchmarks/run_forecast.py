"""Forecasting benchmark: Forecaster vs seasonal naive vs ARIMA on the same test origins.

For one dataset and horizon: trains the network with ``--seeds`` seeds (Adam, clipping,
early stopping on validation loss, best weights kept), then evaluates on the test part
with rolling origins (every origin whose ``horizon`` targets lie in test is forecast
from the true history up to it). On exactly those origins and targets it also scores

- the seasonal-naive forecast ``y_{t+k-s*ceil(k/s)}`` (s = season; s = 1 is the naive last value);
- a SARIMA model (statsmodels) on the same transformed series (log where the network
  uses log), order chosen by AIC on the training part from a small grid (``arima_grid``), fitted once
  (a) on the training part only — the data the network's weights saw — and
  (b) on training + validation; forecasts from each origin apply the fitted
  parameters to the history up to that origin (no refit).

``--grid hidden_size=8,16,32 output=last,sequence`` trains every combination with every
seed and reports the one with the lowest mean *validation* MAE (test plays no part).

``--folds K`` (rolling-origin model selection): the grid is scored on k expanding-window
folds inside the non-test part (``rolling_origin_folds``): each fold validates on a block as
long as the validation part, right after its training part; the blocks are consecutive and
the last fold is the usual train | validation split. k = min(K, the most folds whose first
training part still holds ``--min-train-windows`` training windows for the longest
``input_len`` of the grid), so every grid point sees the same folds. Each fold trains every
seed (early stopping on the fold's own validation block) on a task cut at the fold's end, so
it never sees a later step. The point with the lowest mean validation MAE over folds and
seeds is chosen; the reported networks are the last fold's, i.e. trained exactly as without
``--folds`` (train part, early stopping on the validation part), and scored on test.

Needs the ``bench`` extra (statsmodels, matplotlib). Writes a JSON line per dataset to
``--out`` and a PNG of forecast vs truth to ``--figure``.

    python benchmarks/run_forecast.py --dataset air-passengers --seeds 0 1 2 3 4 \
        --figure benchmarks/figures/forecast_air_passengers_h1.png --out runs/forecast.jsonl
    python benchmarks/run_forecast.py --dataset air-passengers --set horizon=12 \
        --grid hidden_size=8,16,32 output=last,sequence
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from rnnkit.config import from_dict, parse_overrides, to_dict
from rnnkit.optim import Adam, clip_grad_norm
from rnnkit.data.series import rolling_origin_folds
from rnnkit.tasks.forecast import (ForecastConfig, ForecastTask, diebold_mariano, forecast_metrics, load_series,
                                  resolve)


def train_one(task: ForecastTask, epochs: int, lr: float, patience: int, clip: float) -> int:
    """Adam + clipping; early stopping on validation loss; the best weights are restored."""
    model = task.model
    opt = Adam(model, lr=lr)
    best, best_state, best_epoch, waited = np.inf, None, -1, 0
    for epoch in range(epochs):
        task.start_epoch(epoch)
        for batch in task.train_batches(epoch):
            model.zero_grad()
            task.train_loss(batch)
            task.backward()
            clip_grad_norm(model, clip)
            opt.step()
        val = task.evaluate("valid")["loss"]
        if val < best:
            best, best_epoch, waited = val, epoch, 0
            best_state = {k: v.copy() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited > patience:
                break
    model.load_state_dict(best_state)
    return best_epoch


# ---- ARIMA -------------------------------------------------------------------------------
def arima_grid(season: int):
    """(p, d, q) with p, q <= 2, d <= 1; seasonal none, (0,1,1), (1,1,1) or (1,0,1) (72 models at most)."""
    orders = [(p, d, q) for p, d, q in itertools.product(range(3), range(2), range(3))]
    seasonal = [(0, 0, 0, 0)]
    if season > 1:
        seasonal += [(0, 1, 1, season), (1, 1, 1, season), (1, 0, 1, season)]
    return orders, seasonal


def fit_sarima(v: np.ndarray, season: int, order=None, seasonal_order=None):
    """Fit SARIMA on v (T,); without an order, pick the lowest-AIC one from the grid."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX  # noqa: PLC0415

    def fit(o, so):
        trend = "c" if o[1] + so[1] == 0 else "n"
        with warnings.catch_warnings():  # non-converged grid points are common and harmless here
            warnings.simplefilter("ignore")
            return SARIMAX(v, order=o, seasonal_order=so, trend=trend).fit(disp=False)

    if order is not None:
        return fit(order, seasonal_order)
    best = None
    for o, so in itertools.product(*arima_grid(season)):
        try:
            res = fit(o, so)
        except Exception:  # noqa: BLE001 - a grid point that does not converge is skipped
            continue
        if np.isfinite(res.aic) and (best is None or res.aic < best.aic):
            best = res
    return best


def arima_forecasts(res, v: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """(N, h) forecasts of v from each origin, the fitted parameters applied to v[:t+1]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.stack([np.asarray(res.apply(v[:t + 1]).forecast(horizon)) for t in origins])


# ---- figure ------------------------------------------------------------------------------
def plot(path: Path, task: ForecastTask, origins, preds: dict, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    y = task.y[:, 0]
    h = task.config.horizon
    fig, ax = plt.subplots(figsize=(10, 4.2))
    start = max(0, task.train_end - 3 * max(task.config.season, 12))
    ax.plot(np.arange(start, len(y)), y[start:], color="black", lw=1.6, label="truth")
    ax.axvspan(task.train_end, task.val_end, color="0.92", label="validation")
    ax.axvspan(task.val_end, len(y), color="0.85", label="test")
    styles = {"network": ("tab:blue", "-"), "ARIMA": ("tab:orange", "--"), "seasonal naive": ("tab:green", ":")}
    for name, pred in preds.items():
        color, ls = styles[name]
        if h == 1:
            ax.plot(origins + 1, pred[:, 0, 0], color=color, ls=ls, lw=1.4, label=f"{name} (one step ahead)")
        else:  # whole h-step forecasts from every h-th origin, so they tile the test part
            for j, i in enumerate(range(0, len(origins), h)):
                ax.plot(origins[i] + 1 + np.arange(h), pred[i, :, 0], color=color, ls=ls, lw=1.4,
                        label=f"{name} ({h} steps from origins {h} apart)" if j == 0 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(task.columns[0])
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(values) -> str:
    values = np.asarray(values)
    return f"{values.mean():.3g} ± {values.std():.2g}" if len(values) > 1 else f"{values[0]:.3g}"


def parse_grid(items) -> list[dict]:
    """["hidden_size=8,16", "output=last,sequence"] -> the 4 combinations as override dicts."""
    axes = []
    for item in items:
        key, _, values = item.partition("=")
        axes.append([(key, parse_overrides([f"{key}={v}"])[key]) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def train_seeds(config: ForecastConfig, series, names, args):
    nets, tasks = [], []
    for seed in args.seeds:
        start = time.time()
        task = ForecastTask(config, series, names, seed=seed)
        epoch = train_one(task, args.epochs, args.lr, args.patience, args.clip)
        origins, pred, truth = task.forecast("test")
        m = forecast_metrics(pred, truth)
        val = task.evaluate("valid")
        print(f"  seed {seed}: best epoch {epoch}, val MAE {val['mae']:.4g}, test MAE {m['mae']:.4g} "
              f"MAPE {m['mape']:.3g}% ({time.time() - start:.0f}s)", flush=True)
        nets.append({"seed": seed, "epoch": epoch, "val_mae": val["mae"], "val_mape": val["mape"], **m, "pred": pred})
        tasks.append(task)
    return nets, tasks


def fold_scheme(base: dict, grid: list[dict], length: int, max_folds: int, min_windows: int) -> list[tuple[int, int]]:
    """The (train_end, val_end) folds shared by every grid point (see ``--folds``)."""
    configs = [resolve(from_dict(ForecastConfig, {**base, **combo}), length) for combo in grid]
    c = configs[0]
    if any((g.val_size, g.test_size, g.difference, g.horizon) != (c.val_size, c.test_size, c.difference, c.horizon)
           for g in configs):
        raise ValueError("--folds needs the same val_size, test_size, difference and horizon at every grid point")
    val_end = length - c.test_size
    longest = max(g.input_len for g in configs)
    min_train = c.difference + longest + c.horizon - 1 + min_windows  # the first fold's fewest training steps
    k = max(1, min(max_folds, (val_end - min_train) // c.val_size))
    return rolling_origin_folds(val_end, c.val_size, k, min_train=min(min_train, val_end - c.val_size))


def fold_scores(config: ForecastConfig, series, names, folds, args) -> list[list[float]]:
    """Validation MAE [fold][seed] of every fold but the last (the last is the usual split)."""
    scores = []
    for fold in folds[:-1]:
        row = []
        for seed in args.seeds:
            start = time.time()
            task = ForecastTask.for_fold(config, series, names, fold, seed=seed)
            epoch = train_one(task, args.epochs, args.lr, args.patience, args.clip)
            row.append(task.evaluate("valid")["mae"])
            print(f"  fold {fold} seed {seed}: best epoch {epoch}, val MAE {row[-1]:.4g} "
                  f"({time.time() - start:.0f}s)", flush=True)
        scores.append(row)
    return scores


def significance(nets, mean_pred, preds: dict, truth, horizon: int) -> dict:
    """Diebold-Mariano tests (absolute error, HLN correction) of the network's forecasts against the
    baselines' on the same test origins: the seed-averaged forecast, and each seed's own."""
    n = len(truth)
    if n < 4 * horizon:  # the long-run variance of h-step errors needs many more origins than h
        return {"skipped": f"{n} test origins for horizon {horizon}: too few for a Diebold-Mariano test"}
    out = {}
    for name in ("seasonal naive", "ARIMA"):
        if name in preds:
            key = name.replace(" ", "_")
            out[f"seed-average vs {key}"] = diebold_mariano(mean_pred - truth, preds[name] - truth, horizon)
            per_seed = [diebold_mariano(nt["pred"] - truth, preds[name] - truth, horizon) for nt in nets]
            out[f"each seed vs {key}"] = {k: [r[k] for r in per_seed] for k in ("statistic", "p_value", "mean_diff")}
    return out


def summarize_significance(path: Path) -> str:
    """A markdown table of the Diebold-Mariano tests in the JSON lines written by ``--out``."""
    rows = ["| series | h | test origins | vs seasonal naive: DM, p (seed-average) | p of each seed | "
            "vs ARIMA (train): DM, p (seed-average) | p of each seed |", "|---|---|---|---|---|---|---|"]
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        sig, cells = r.get("significance", {}), []
        if not sig or "skipped" in sig:
            cells = [sig.get("skipped", "not computed")] + ["-"] * 3
        else:
            for key in ("seasonal_naive", "ARIMA"):
                avg, each = sig.get(f"seed-average vs {key}"), sig.get(f"each seed vs {key}")
                if avg:
                    cells += [f"{avg['statistic']:+.2f}, {avg['p_value']:.3g}",
                              " ".join(f"{p:.2g}" for p in each["p_value"])]
                else:
                    cells += ["-", "-"]
        rows.append(f"| {r['dataset']} | {r['config']['horizon']} | {r['test_origins']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def summarize(path: Path) -> str:
    """A markdown table of the JSON lines written by ``--out``."""
    rows = ["| series | h | test origins | network: chosen config | network MAE (5 seeds) | network MAPE % "
            "| seed-average MAE / MAPE % | seasonal naive MAE / MAPE % | ARIMA (train) MAE / MAPE % "
            "| ARIMA (train+val) MAE / MAPE % | ARIMA order |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        c, net, avg, naive = r["config"], r["network"], r["network_seed_average"], r["seasonal_naive"]
        chosen = f"{c['cell']} {c['hidden_size']}, {c['output']}, L={c['input_len']}, {c['transform']}, d={c['difference']}"
        chosen += ", residual" if c.get("residual") else ""
        folds = len(r.get("selection", {}).get("folds", [None]))
        chosen += f"; chosen on {folds} rolling-origin folds" if folds > 1 else ""
        arima = [f"{r[k]['mae']:.4g} / {r[k]['mape']:.3g}" if k in r else "-" for k in ("arima_train", "arima_train_val")]
        order = r.get("arima_order", {})
        order_text = f"{tuple(order['order'])}{tuple(order['seasonal_order'])} {order['transform']}" if order else "-"
        rows.append(f"| {r['dataset']} | {c['horizon']} | {r['test_origins']} | {chosen} | {fmt(net['mae'])} "
                    f"| {fmt(net['mape'])} | {avg['mae']:.4g} / {avg['mape']:.3g} | {naive['mae']:.4g} / {naive['mape']:.3g} "
                    f"| {arima[0]} | {arima[1]} | {order_text} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="air-passengers")
    p.add_argument("--data-dir", default="")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--patience", type=int, default=25)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="ForecastConfig overrides")
    p.add_argument("--grid", nargs="*", default=[], metavar="FIELD=V1,V2",
                   help="model selection: try every combination, keep the lowest mean validation MAE")
    p.add_argument("--folds", type=int, default=1,
                   help="rolling-origin model selection on at most this many expanding-window folds (1: the "
                        "validation part only)")
    p.add_argument("--min-train-windows", type=int, default=12,
                   help="with --folds: the first fold keeps at least this many training windows")
    p.add_argument("--arima-order", help="p,d,q,P,D,Q (default: AIC grid search on the training part)")
    p.add_argument("--no-arima", action="store_true")
    p.add_argument("--figure", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--summarize", type=Path, help="print a markdown table of a --out file and exit")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        print()
        print(summarize_significance(args.summarize))
        return 0

    base = {"dataset": args.dataset, "data_dir": args.data_dir, **parse_overrides(args.set)}
    series, names = load_series(from_dict(ForecastConfig, base))
    # --grid: every combination is trained with every seed; the one with the lowest mean
    # *validation* MAE is reported (the test part plays no part in the choice)
    grid = parse_grid(args.grid)
    folds = fold_scheme(base, grid, len(series), args.folds, args.min_train_windows) if args.folds > 1 else None
    if folds:
        print(f"rolling-origin folds (train_end, val_end): {folds}", flush=True)
    candidates = []
    for combo in grid:
        config = from_dict(ForecastConfig, {**base, **combo})
        if len(grid) > 1:
            print(f"grid point {combo}", flush=True)
        earlier = fold_scores(config, series, names, folds, args) if folds else []
        nets, tasks = train_seeds(config, series, names, args)  # the last fold = the usual split
        per_fold = [*earlier, [n["val_mae"] for n in nets]]
        candidates.append((float(np.mean(per_fold)), combo, nets, tasks, per_fold))
    val_mae, chosen, nets, tasks, _ = min(candidates, key=lambda c: c[0])
    grid_report = [{"point": c[1], "val_mae": c[0], "test_mae": float(np.mean([n["mae"] for n in c[2]])),
                    "fold_val_mae": [float(np.mean(f)) for f in c[4]]} for c in candidates]
    task = tasks[0]
    cfg = task.config
    origins, truth = task.origins["test"], task.truth(task.origins["test"])
    naive = forecast_metrics(task.seasonal_naive(origins), truth)
    result = {"dataset": args.dataset, "config": to_dict(cfg), "test_origins": len(origins),
              "train": {"epochs": args.epochs, "lr": args.lr, "patience": args.patience, "clip": args.clip},
              "network": {k: [n[k] for n in nets] for k in ("seed", "epoch", "val_mae", "val_mape", "mae", "rmse", "mape")},
              "seasonal_naive": naive, "grid": grid_report, "chosen": chosen,
              "selection": {"folds": [list(f) for f in folds] if folds else [[task.train_end, task.val_end]],
                            "min_train_windows": args.min_train_windows if folds else None,
                            "val_mae": val_mae}}
    mean_pred = np.mean([n["pred"] for n in nets], axis=0)
    result["network_seed_average"] = forecast_metrics(mean_pred, truth)
    preds = {"network": nets[0]["pred"], "seasonal naive": task.seasonal_naive(origins)}

    if not args.no_arima:  # univariate: the first target column
        v = task.v[:, 0]
        order = seasonal = None
        if args.arima_order:
            o = [int(x) for x in args.arima_order.split(",")]
            order, seasonal = tuple(o[:3]), (*o[3:6], cfg.season) if any(o[3:6]) else (0, 0, 0, 0)
        res = fit_sarima(v[:task.train_end], cfg.season, order, seasonal)
        order, seasonal = res.model.order, res.model.seasonal_order
        inv = np.exp if cfg.transform == "log" else (lambda a: a)
        for label, fit_end in (("arima_train", task.train_end), ("arima_train_val", task.val_end)):
            fitted = res if fit_end == task.train_end else fit_sarima(v[:fit_end], cfg.season, order, seasonal)
            pred = inv(arima_forecasts(fitted, v, origins, cfg.horizon))[:, :, None]
            result[label] = forecast_metrics(pred, truth)
            if label == "arima_train":
                preds["ARIMA"] = pred
        result["arima_order"] = {"order": list(order), "seasonal_order": list(seasonal),
                                 "transform": cfg.transform}

    result["significance"] = significance(nets, mean_pred, preds, truth, cfg.horizon)

    net = result["network"]
    for g in grid_report:
        per_fold = " ".join(f"{m:.4g}" for m in g["fold_val_mae"])
        print(f"  grid {g['point']}: mean val MAE {g['val_mae']:.4g} [folds {per_fold}] (test MAE {g['test_mae']:.4g})")
    print(f"\n{args.dataset}  horizon {cfg.horizon}  output {cfg.output}  hidden {cfg.hidden_size}  "
          f"{len(origins)} test origins")
    print(f"  network ({len(nets)} seeds)  MAE {fmt(net['mae'])}  MAPE {fmt(net['mape'])}%   "
          f"(validation MAE {fmt(net['val_mae'])})")
    print(f"  network seed-average    MAE {result['network_seed_average']['mae']:.4g}  "
          f"MAPE {result['network_seed_average']['mape']:.3g}%")
    print(f"  seasonal naive          MAE {naive['mae']:.4g}  MAPE {naive['mape']:.3g}%")
    for label in ("arima_train", "arima_train_val"):
        if label in result:
            print(f"  {label:<23} MAE {result[label]['mae']:.4g}  MAPE {result[label]['mape']:.3g}%  "
                  f"{result['arima_order']}")
    for label, r in result["significance"].items():
        if label == "skipped":
            print(f"  Diebold-Mariano: skipped, {r}")
        elif label.startswith("each seed"):
            print(f"  Diebold-Mariano, {label}: p {' '.join(f'{p:.2g}' for p in r['p_value'])}")
        else:
            print(f"  Diebold-Mariano, {label}: DM {r['statistic']:+.2f}, p {r['p_value']:.3g} "
                  f"(mean |e| difference {r['mean_diff']:+.4g}; negative: the network is better)")
    if args.figure:
        title = (f"{args.dataset}: test forecasts (network seed {args.seeds[0]}, {cfg.cell} {cfg.hidden_size}, "
                 f"horizon {cfg.horizon}, {cfg.output})")
        plot(args.figure, task, origins, preds, title)
        print(f"figure: {args.figure}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
