"""Soak test (not in CI): many short sessions of training, each resumed from the last
checkpoint, against one uninterrupted run; memory must stay flat and the results equal.

Each "session" builds a fresh task and Trainer, resumes from the run directory's latest
checkpoint (mid-epoch checkpoints every ``--checkpoint-every`` steps), trains until
``--steps-per-session`` more steps, and stops, as a process killed and restarted would.
After every session the script records the resident set size (ru_maxrss and the current
RSS from /proc) and Python's traced allocations. At the end it compares the resumed
run's final weights and metrics with an uninterrupted run of the same length.

    python benchmarks/soak.py --sessions 40 --steps-per-session 25 --out benchmarks/soak_results.md
"""
from __future__ import annotations

import argparse
import platform
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from rnnkit.data.text import load_corpus
from rnnkit.models import LanguageModel
from rnnkit.tasks.lm import LanguageModelTask, LMTaskConfig
from rnnkit.train import TrainConfig, Trainer


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def make_task(chars: int):
    cfg = LMTaskConfig(corpus="tinyshakespeare", level="char", hidden_size=128, embedding_size=32, batch_size=16,
                       bptt=32, max_eval_tokens=4000, output_dropout=0.2)
    corpus = load_corpus("tinyshakespeare", level="char")
    corpus.train = corpus.train[:chars]
    return cfg, LanguageModelTask(cfg, corpus, seed=0)


def train_config(run_dir, epochs, args, max_steps=0):
    return TrainConfig(epochs=epochs, lr=3e-3, run_dir=str(run_dir), progress=False, eval_test=False,
                       checkpoint_every=args.checkpoint_every, max_steps=max_steps, seed=0, plot=False,
                       schedule="step", lr_factor=0.7, keep_checkpoints=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=40)
    p.add_argument("--steps-per-session", type=int, default=25)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--chars", type=int, default=40_000, help="training characters (sets the epoch length)")
    p.add_argument("--out", default=None, help="write a markdown report here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="rnnkit-soak-"))
    cfg, task = make_task(args.chars)
    steps_per_epoch = task.num_train_batches()
    total_steps = args.sessions * args.steps_per_session
    epochs = -(-total_steps // steps_per_epoch)
    print(f"{args.sessions} sessions x {args.steps_per_session} steps = {total_steps} steps, {epochs} epochs "
          f"of {steps_per_epoch} steps; checkpoint every {args.checkpoint_every}")

    tracemalloc.start()
    rows, t0 = [], time.perf_counter()
    resumed_dir = work / "resumed"
    for session in range(args.sessions):
        cfg, task = make_task(args.chars)
        limit = (session + 1) * args.steps_per_session
        result = Trainer(task, train_config(resumed_dir, epochs, args, max_steps=limit), cfg).fit(resume=session > 0)
        traced, _ = tracemalloc.get_traced_memory()
        rows.append({"session": session + 1, "steps": result["steps"], "rss_mib": current_rss_mib(),
                     "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "traced_mib": traced / 2**20})
        print(f"session {session + 1:3d}: step {result['steps']:5d}  rss {rows[-1]['rss_mib']:.1f} MiB  "
              f"traced {rows[-1]['traced_mib']:.2f} MiB")
    soak_seconds = time.perf_counter() - t0

    cfg, task = make_task(args.chars)
    straight = Trainer(task, train_config(work / "straight", epochs, args, max_steps=total_steps), cfg).fit()
    a = LanguageModel.load(Path(resumed_dir) / "checkpoints" / "best.safetensors")
    b = LanguageModel.load(Path(work / "straight") / "checkpoints" / "best.safetensors")
    diffs = [float(np.abs(pa - pb).max()) for (_, pa, _), (_, pb, _) in zip(a.named_parameters(), b.named_parameters())]
    resumed_best = result["best_val_loss"]
    first, last = rows[len(rows) // 4], rows[-1]
    verdict = {
        "weights max abs difference": max(diffs),
        "best val loss (resumed / straight)": (resumed_best, straight["best_val_loss"]),
        "rss growth after warm-up (MiB)": last["rss_mib"] - first["rss_mib"],
        "traced growth after warm-up (MiB)": last["traced_mib"] - first["traced_mib"],
    }
    for k, v in verdict.items():
        print(f"{k}: {v}")
    if args.out:
        lines = ["# Soak: resumed sessions vs one uninterrupted run", "",
                 f"Command: `python benchmarks/soak.py --sessions {args.sessions} --steps-per-session "
                 f"{args.steps_per_session} --checkpoint-every {args.checkpoint_every} --chars {args.chars}`", "",
                 f"Machine: {platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}; "
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; soak took {soak_seconds:.0f} s.", "",
                 f"{args.sessions} sessions, each a fresh Trainer resumed from the latest checkpoint "
                 f"(checkpoints every {args.checkpoint_every} steps, {epochs} epochs of {steps_per_epoch} steps).", "",
                 "| result | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in verdict.items()]
        lines += ["", "| session | steps | RSS MiB | max RSS MiB | traced MiB |", "|---|---|---|---|---|"]
        lines += [f"| {r['session']} | {r['steps']} | {r['rss_mib']:.1f} | {r['maxrss_mib']:.1f} | {r['traced_mib']:.2f} |"
                  for r in rows]
        Path(args.out).write_text("\n".join(lines) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    ok = max(diffs) < 1e-5 and abs(resumed_best - straight["best_val_loss"]) < 1e-6 * max(1, straight["best_val_loss"])
    print("PASS" if ok else "FAIL: resumed run differs from the uninterrupted one")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
