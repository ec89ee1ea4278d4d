"""Long-range memory: which cell learns which delay within a fixed budget, and what clipping does.

    python benchmarks/run_memory.py [--quick] [--out benchmarks/figures]

Writes ``gradflow_memory.csv`` (one row per training run), ``gradflow_memory_clipping.png``
(loss and gradient norm per step, with and without clipping) under ``--out``, and prints
the markdown tables of benchmarks/gradflow_results.md. Single-threaded BLAS is advised
(``OPENBLAS_NUM_THREADS=1``): the models are tiny and the machine is shared.

Experiments (budgets are fixed so the whole run stays a few CPU minutes):

1. Adding problem, sequence length T in LENGTHS: RNN (tanh), LSTM, GRU; hidden 32, batch 32,
   Adam lr 1e-2, clip 1.0, at most 1500 steps, two seeds; solved = held-out MSE <= 0.01
   (predicting 1.0 always gives 1/6). A cell is not tried at longer T once both seeds fail.
2. Copy problem with distractors (one symbol of 8, then ``delay`` random symbols of another
   alphabet, then recall): same cells, at most 1000 steps, one seed; solved = accuracy >= 0.95.
3. Clipping: vanilla RNNs made to explode (``weight_hh`` = 1.5 x orthogonal), plain SGD,
   copy problem with delay 20, 400 steps, three seeds, no clipping vs clipping at norm 1.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from rnnkit.analysis.memory_tasks import train_memory_task

CELLS = [("RNN (tanh)", "rnn"), ("LSTM", "lstm"), ("GRU", "gru")]
LENGTHS = [10, 20, 50, 100, 200]
COPY_DELAYS = [10, 30, 60]
FIELDS = ["experiment", "task", "cell", "delay", "seed", "clip", "lr", "optimizer", "recurrent_scale", "steps",
          "solved_at", "final_metric", "best_metric", "nonfinite_steps", "max_grad_norm", "wall_s"]


def row(experiment, run, seed, clip, lr, optimizer, scale):
    return {"experiment": experiment, "task": run.task, "cell": run.cell, "delay": run.delay, "seed": seed,
            "clip": clip if clip else "none", "lr": lr, "optimizer": optimizer, "recurrent_scale": scale or "",
            "steps": run.steps, "solved_at": run.solved_at if run.solved_at else "", "final_metric": f"{run.final_metric:.4g}",
            "best_metric": f"{run.best_metric:.4g}", "nonfinite_steps": run.nonfinite_steps,
            "max_grad_norm": f"{run.max_grad_norm:.4g}", "wall_s": f"{run.wall_s:.1f}"}


def longest_delay(task, delays, budget, seeds, rows, log, **kw):
    """Per cell: {delay: [solved_at or None per seed]}, trying longer delays until every seed fails."""
    table = {}
    for label, cell in CELLS:
        table[label] = {}
        for delay in delays:
            results = []
            for seed in seeds:
                run = train_memory_task(task, cell, delay, steps=budget, seed=seed, **kw)
                rows.append(row(f"longest-{task}", run, seed, kw.get("clip", 1.0), kw.get("lr", 1e-2), "adam", None))
                results.append(run.solved_at)
                log(f"  {task} {label:<11} delay {delay:>4} seed {seed}: "
                    f"{'solved at step ' + str(run.solved_at) if run.solved_at else 'not solved'}"
                    f" (best {run.best_metric:.3g}, {run.wall_s:.1f} s)")
            table[label][delay] = results
            if not any(results):
                break
    return table


def markdown_table(table, delays, budget, what):
    lines = ["| cell | " + " | ".join(f"{what} {d}" for d in delays) + " | longest solved |",
             "|---|" + "---|" * (len(delays) + 1)]
    for label, results in table.items():
        cells, longest = [], "none"
        for d in delays:
            if d not in results:
                cells.append("not tried")
                continue
            got = results[d]
            cells.append(" / ".join(str(s) if s else f">{budget}" for s in got))
            if all(got):
                longest = str(d)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {longest} |")
    return "\n".join(lines)


def clipping(rows, log, seeds, steps=400):
    runs = {}
    settings = [("rnn", 0.1), ("rnn-relu", 0.1), ("rnn-relu", 0.5)]
    for cell, lr in settings:
        for clip in (None, 1.0):
            for seed in seeds:
                run = train_memory_task("copy", cell, 20, steps=steps, num_symbols=1, optimizer="sgd", lr=lr,
                                        clip=clip, recurrent_scale=1.5, stop_when_solved=False, eval_every=25,
                                        seed=seed)
                rows.append(row("clipping", run, seed, clip, lr, "sgd", 1.5))
                runs[(cell, lr, clip, seed)] = run
                log(f"  clipping {cell:<8} lr {lr} clip {clip}: seed {seed} final accuracy {run.final_metric:.3g}, "
                    f"max grad norm {run.max_grad_norm:.3g}, non-finite steps {run.nonfinite_steps}")
    lines = ["| vanilla RNN (spectral radius 1.5), SGD | clipping | solved (acc >= 0.95) | final accuracy | "
             "max grad norm | non-finite steps |", "|---|---|---|---|---|---|"]
    for cell, lr in settings:
        for clip in (None, 1.0):
            rs = [runs[(cell, lr, clip, s)] for s in seeds]
            lines.append(f"| {cell.replace('rnn-relu', 'relu').replace('rnn', 'tanh')}, lr {lr} | "
                         f"{'norm 1.0' if clip else 'none'} | {sum(r.solved_at is not None for r in rs)}/{len(rs)} | "
                         + ", ".join(f"{r.final_metric:.2f}" for r in rs) + " | "
                         + ", ".join(f"{r.max_grad_norm:.3g}" for r in rs) + " | "
                         + ", ".join(str(r.nonfinite_steps) for r in rs) + " |")
    return "\n".join(lines), runs


def plot_clipping(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for clip, colour in ((None, "tab:red"), (1.0, "tab:blue")):
        r = runs[("rnn", 0.1, clip, 0)]
        label = "clip 1.0" if clip else "no clipping"
        axes[0].plot(r.grad_norms, color=colour, label=label, lw=0.8)
        steps, _, metric = zip(*r.history)
        axes[1].plot(steps, metric, color=colour, label=label, marker=".")
        r = runs[("rnn-relu", 0.5, clip, 0)]
        losses = np.array(r.losses, dtype=float)
        axes[2].plot(np.where(np.isfinite(losses), losses, np.nan), color=colour, label=label, lw=0.8)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:  # the weights have overflowed: every later loss is NaN/inf
            axes[2].axvspan(bad[0], len(losses), color=colour, alpha=0.12, label=f"{label}: loss NaN/inf from step {bad[0]}")
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].set_title("tanh RNN, lr 0.1: gradient norm before clipping")
    axes[1].set_title("tanh RNN, lr 0.1: held-out recall accuracy")
    axes[2].set_title("relu RNN, lr 0.5: training loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Gradient clipping on an exploding vanilla RNN (W_hh = 1.5 x orthogonal), copy problem, delay 20, SGD")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/figures")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    rows, t0 = [], time.perf_counter()
    add_budget, copy_budget = (20, 20) if args.quick else (1500, 1000)
    lengths, delays = (LENGTHS[:2], COPY_DELAYS[:1]) if args.quick else (LENGTHS, COPY_DELAYS)
    seeds = (0,) if args.quick else (0, 1)

    log("1. adding problem")
    adding = longest_delay("adding", lengths, add_budget, seeds, rows, log, hidden_size=32, lr=1e-2, clip=1.0,
                           eval_every=50)
    log("2. copy problem with distractors")
    copy = longest_delay("copy", delays, copy_budget, (0,), rows, log, hidden_size=32, lr=1e-2, clip=1.0,
                         eval_every=50, num_symbols=1, distractors=True)
    log("3. clipping")
    clip_table, runs = clipping(rows, log, (0,) if args.quick else (0, 1, 2), steps=50 if args.quick else 400)

    with open(out / "gradflow_memory.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot_clipping(runs, out / "gradflow_memory_clipping.png")
    print()
    print(f"### Adding problem: steps to solve (MSE <= 0.01) per seed, budget {add_budget} steps\n")
    print(markdown_table(adding, lengths, add_budget, "T ="))
    print(f"\n### Copy problem with distractors: steps to solve (accuracy >= 0.95), budget {copy_budget} steps\n")
    print(markdown_table(copy, delays, copy_budget, "delay"))
    print("\n### Clipping\n")
    print(clip_table)
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; wrote {out / 'gradflow_memory.csv'} and "
          f"{out / 'gradflow_memory_clipping.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
