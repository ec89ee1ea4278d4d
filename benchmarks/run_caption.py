"""Captioning benchmark helpers: evaluate a checkpoint, draw captioned test scenes, tabulate runs.

Models are trained with the command line (``rnnkit train --task caption ...``, see
benchmarks/caption_results.md); this script reads their checkpoints and run folders.

    python benchmarks/run_caption.py evaluate runs/caption/checkpoints/best.safetensors --beams 1 3 5
    python benchmarks/run_caption.py figure runs/caption/checkpoints/best.safetensors \
        --out benchmarks/figures/captions.png
    python benchmarks/run_caption.py table runs/caption runs/caption_inject ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rnnkit.tasks.caption import CaptionTask, corpus_bleu


def _scores(hypotheses: list[str], references: list[str]) -> dict:
    return {"exact_match": round(float(np.mean([h == r for h, r in zip(hypotheses, references)])), 4),
            "bleu": round(corpus_bleu(hypotheses, references), 2)}


def evaluate(args) -> int:
    """Exact match and BLEU of greedy, beam and sampled captions; exact match by number of digits."""
    task = CaptionTask.from_checkpoint(args.checkpoint)
    split = args.split
    scenes = task.data[split]
    idx = np.arange(len(scenes))
    references = list(scenes.captions)
    out = {"checkpoint": str(args.checkpoint), "split": split, "n": len(idx)}
    started = time.time()
    out["loss"] = round(task.evaluate(split)["loss"], 4)
    for beam in args.beams:
        t0 = time.time()
        hyps = task.generate(split, beam_size=0 if beam == 1 else beam, idx=idx)
        row = _scores(hyps, references)
        correct = np.array([h == r for h, r in zip(hyps, references)])
        row["exact_match_by_digits"] = {int(k): round(float(correct[scenes.num_digits == k].mean()), 4)
                                        for k in np.unique(scenes.num_digits)}
        row["seconds"] = round(time.time() - t0, 2)
        out["greedy" if beam == 1 else f"beam{beam}"] = row
    if args.temperature:
        model, vocab = task.model, task.vocab
        feats = task.features[split].astype(model.dtype)
        hyps = model.sample_decode(feats, temperature=args.temperature, rng=np.random.default_rng(0))
        out[f"sample_t{args.temperature:g}"] = _scores([" ".join(vocab.decode(h.tokens)) for h in hyps], references)
    out["seconds"] = round(time.time() - started, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


def figure(args) -> int:
    """A grid of held-out scenes with their generated (greedy, beam) and reference captions."""
    import matplotlib  # noqa: PLC0415 - only the figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    task = CaptionTask.from_checkpoint(args.checkpoint)
    scenes = task.data["test"]
    # the first scenes of each kind (1, 2, 3 digits), then any wrong ones so errors show too
    per_kind = args.n // 4
    idx = [int(i) for k in (1, 2, 3) for i in np.flatnonzero(scenes.num_digits == k)[:per_kind]]
    greedy_all = task.generate("test", idx=np.arange(len(scenes)))
    wrong = [i for i, h in enumerate(greedy_all) if h != scenes.captions[i] and i not in idx]
    idx += wrong[: args.n - len(idx)]
    idx = idx[: args.n]
    greedy = [greedy_all[i] for i in idx]
    beam = task.generate("test", beam_size=args.beam, idx=np.array(idx))
    cols = 4
    rows = -(-len(idx) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i, g, b in zip(np.ravel(axes), idx, greedy, beam):
        ax.imshow(scenes.images[i], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ref = scenes.captions[i]
        lines = [(f"greedy: {g}", "tab:green" if g == ref else "tab:red"),
                 (f"beam {args.beam}: {b}", "tab:green" if b == ref else "tab:red"),
                 (f"reference: {ref}", "black")]
        for k, (text, color) in enumerate(lines):
            ax.text(0.0, -0.10 - 0.14 * k, text, transform=ax.transAxes, fontsize=8, color=color, va="top")
    fig.suptitle("Held-out scenes (digit pictures never seen in training): generated vs reference captions",
                 fontsize=11)
    fig.tight_layout(h_pad=4.0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(idx)} scenes)")
    return 0


def table(args) -> int:
    """One markdown row per run folder: the knobs that differ, epochs, time, test metrics."""
    rows = []
    for run in args.runs:
        run = Path(run)
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))["task"]
        result = json.loads((run / "result.json").read_text(encoding="utf-8"))
        seconds = sum(json.loads(line).get("seconds", 0.0) for line in
                      (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                      if json.loads(line).get("split") == "epoch")
        rows.append((run.name, config, result, seconds))
    keys = ["cell", "conditioning", "encoder_hidden", "features", "align", "standardize", "regions", "hidden_size"]
    print("| run | " + " | ".join(keys) + " | epochs | train s | test loss | exact match | BLEU |")
    print("|" + "---|" * (len(keys) + 7))
    for name, config, result, seconds in rows:
        cells = [str(config.get(k)) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + f" | {result.get('epochs')} | {seconds:.0f} | "
              f"{result.get('test_loss', float('nan')):.3f} | {result.get('test_exact_match', float('nan')):.3f} | "
              f"{result.get('test_bleu', float('nan')):.1f} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5], help="beam sizes (1: greedy)")
    p.add_argument("--temperature", type=float, default=0.0, help="> 0: also score captions sampled at this temperature")
    p.add_argument("--json", help="also write the metrics here")
    p.set_defaults(fn=evaluate)
    p = sub.add_parser("figure", help="PNG of held-out scenes with their captions")
    p.add_argument("checkpoint")
    p.add_argument("--out", default="benchmarks/figures/captions.png")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--beam", type=int, default=3)
    p.set_defaults(fn=figure)
    p = sub.add_parser("table", help="markdown table of finished run folders")
    p.add_argument("runs", nargs="+")
    p.set_defaults(fn=table)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
