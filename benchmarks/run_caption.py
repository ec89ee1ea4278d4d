"""Captioning benchmark helpers: evaluate a checkpoint, draw captioned test scenes, tabulate runs.

Models are trained with the command line (``rnnkit train --task caption ...``, see
benchmarks/caption_results.md); this script reads their checkpoints and run folders.

    python benchmarks/run_caption.py evaluate runs/caption/checkpoints/best.safetensors --beams 3 5
    python benchmarks/run_caption.py figure runs/caption/checkpoints/best.safetensors \
        --out benchmarks/figures/captions.png
    python benchmarks/run_caption.py table runs/caption runs/caption_init ...
    python benchmarks/run_caption.py baseline
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rnnkit.data.captions import NAMES, PLURALS
from rnnkit.tasks.caption import CaptionTask, corpus_bleu


def self_contradictory(caption: str) -> bool:
    """A caption the grammar never writes for any scene: a template that needs different digits
    (``a two left of a two``, ``three digits one one five``, ``two fours and a four``) given equal ones."""
    words = caption.split()
    if words[:2] == ["three", "digits"]:
        return len(set(words[2:])) < len(words[2:])
    if words[:1] == ["two"] and "and" in words and words[1] in PLURALS:
        return NAMES[PLURALS.index(words[1])] == words[-1]
    if words[:1] in (["a"], ["an"]) and "of" in words:
        return words[1] == words[-1]
    return False


def _scores(hypotheses: list[str], references: list[str]) -> dict:
    return {"exact_match": round(float(np.mean([h == r for h, r in zip(hypotheses, references)])), 4),
            "bleu": round(corpus_bleu(hypotheses, references), 2),
            "self_contradictory": round(float(np.mean([self_contradictory(h) for h in hypotheses])), 4)}


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
    runs = [(1, None)] + [(beam, penalty) for beam in args.beams if beam > 1 for penalty in args.length_penalties]
    for beam, penalty in runs:
        t0 = time.time()
        if penalty is not None:
            task.config.length_penalty = penalty
        hyps = task.generate(split, beam_size=0 if beam == 1 else beam, idx=idx)
        row = _scores(hyps, references)
        correct = np.array([h == r for h, r in zip(hyps, references)])
        row["exact_match_by_digits"] = {int(k): round(float(correct[scenes.num_digits == k].mean()), 4)
                                        for k in np.unique(scenes.num_digits)}
        row["seconds"] = round(time.time() - t0, 2)
        out["greedy" if beam == 1 else f"beam{beam}_lp{penalty:g}"] = row
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
        ax.axis("on")
        ax.imshow(scenes.images[i], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for x in (9.5, 19.5):  # the 2 x 3 slots of 10 x 10 pixels
            ax.axvline(x, color="0.85", lw=0.6, ls=":")
        ax.axhline(9.5, color="0.85", lw=0.6, ls=":")
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


def baseline(args) -> int:
    """A pipeline that is told the grammar, no RNN: the occupied slots are read off the canvas (any ink),
    a logistic-regression digit classifier (scikit-learn, on the same slot features as the captioner)
    names the digit in each, and :func:`caption_for` writes the caption. The inverse regularisation C
    is chosen on the validation scenes (digit accuracy), then the test scenes are scored once."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    from rnnkit.data.captions import COLS, ROWS, SLOT, caption_for, image_features  # noqa: PLC0415
    from rnnkit.tasks.caption import CaptionTaskConfig, load_data  # noqa: PLC0415

    config = CaptionTaskConfig()
    data = load_data(config)

    def slots_of(scenes, detect: bool):
        """(scene, slot row, slot col) of each digit, its slot features, its true digit (if known)."""
        if detect:
            ink = scenes.images.reshape(len(scenes), ROWS, SLOT, COLS, SLOT).sum(axis=(2, 4)) > 0
            rows = [(i, r, c) for i, r, c in zip(*np.nonzero(ink))]
            truth = None
        else:
            rows = [(i, *scenes.slots[i, j]) for i in range(len(scenes)) for j in range(scenes.num_digits[i])]
            truth = np.array([scenes.digits[i, j] for i in range(len(scenes)) for j in range(scenes.num_digits[i])])
        x = image_features(scenes.images, config.features, regions=True, align=config.align,
                           standardize=config.standardize)
        return rows, x[[i for i, _, _ in rows], [COLS * r + c for _, r, c in rows]], truth

    def captions(classifier, scenes):
        rows, x, _ = slots_of(scenes, detect=True)
        digits, slots = [[] for _ in range(len(scenes))], [[] for _ in range(len(scenes))]
        for (i, r, c), d in zip(rows, classifier.predict(x)):
            digits[i].append(d)
            slots[i].append((r, c))
        return [caption_for(digits[i], slots[i]) for i in range(len(scenes))]

    _, x_train, y_train = slots_of(data["train"], detect=False)
    started = time.time()
    out = {"train_slots": len(y_train), "valid_digit_accuracy": {}}
    best = None
    for C in args.C:
        classifier = LogisticRegression(C=C, max_iter=3000).fit(x_train, y_train)
        _, x_val, y_val = slots_of(data["valid"], detect=False)
        accuracy = float((classifier.predict(x_val) == y_val).mean())
        out["valid_digit_accuracy"][f"{C:g}"] = round(accuracy, 4)
        if best is None or accuracy > best[0]:
            best = (accuracy, C, classifier)
    _, out["C"], classifier = best
    for split in ("valid", "test"):
        scenes = data[split]
        _, x, y = slots_of(scenes, detect=False)
        out[split] = {"digit_accuracy": round(float((classifier.predict(x) == y).mean()), 4),
                      **_scores(captions(classifier, scenes), list(scenes.captions))}
    out["seconds"] = round(time.time() - started, 1)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


def table(args) -> int:
    """One markdown row per run folder: the knobs, epochs, training time and the validation figures of
    the kept epoch (lowest validation loss) -- the figures runs are compared on; test is not read."""
    rows = []
    for run in args.runs:
        run = Path(run)
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))["task"]
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        epochs = [e for e in epochs if e.get("split") == "epoch" and "val_loss" in e]
        best = min(epochs, key=lambda e: e["val_loss"])
        rows.append((run.name, config, best, len(epochs), sum(e.get("seconds", 0.0) for e in epochs)))
    keys = ["conditioning", "encoder_hidden", "hidden_size", "inject_size", "dropout"]
    print("| run | " + " | ".join(keys) + " | epochs (kept) | train s | val loss | val exact match | val BLEU |")
    print("|" + "---|" * (len(keys) + 6))
    for name, config, best, n, seconds in rows:
        cells = [str(config.get(k)) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + f" | {n} ({best['epoch'] + 1}) | {seconds:.0f} | "
              f"{best['val_loss']:.4f} | {best['val_exact_match']:.3f} | {best.get('val_bleu', float('nan')):.1f} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--beams", type=int, nargs="+", default=[3, 5], help="beam sizes besides greedy")
    p.add_argument("--length-penalties", type=float, nargs="+", default=[0.0, 1.0],
                   help="beam ranking: score / length ** penalty (0: summed log-probability, 1: mean per word)")
    p.add_argument("--temperature", type=float, default=0.0, help="> 0: also score captions sampled at this temperature")
    p.add_argument("--json", help="also write the metrics here")
    p.set_defaults(fn=evaluate)
    p = sub.add_parser("figure", help="PNG of held-out scenes with their captions")
    p.add_argument("checkpoint")
    p.add_argument("--out", default="benchmarks/figures/captions.png")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--beam", type=int, default=3)
    p.set_defaults(fn=figure)
    p = sub.add_parser("baseline", help="logistic-regression digits + the true caption template (no RNN)")
    p.add_argument("--C", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0],
                   help="inverse L2 strengths of the logistic regression to try (chosen on validation)")
    p.add_argument("--json", help="also write the metrics here")
    p.set_defaults(fn=baseline)
    p = sub.add_parser("table", help="markdown table of finished run folders")
    p.add_argument("runs", nargs="+")
    p.set_defaults(fn=table)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
