"""Seq2seq benchmark helpers: beam-search evaluation of a checkpoint, and the attention figure.

Models are trained with the command line (``rnnkit train --task seq2seq ...``, see
benchmarks/seq2seq_results.md); this script reads their checkpoints.

    python benchmarks/run_seq2seq.py evaluate runs/addition_dot/checkpoints/best.safetensors --beam 5 --show 10
    python benchmarks/run_seq2seq.py plot runs/date_dot/checkpoints/best.safetensors \
        --question "Wednesday, November 9, 1977" "11/10/91" --out benchmarks/figures/attention_date.png
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rnnkit.data.batching import pad_batch
from rnnkit.tasks.seq2seq import Seq2SeqTask


def evaluate(args) -> int:
    """Metrics of a saved model on a split: greedy exact match, and beam search if asked."""
    task = Seq2SeqTask.from_checkpoint(args.checkpoint)
    task.config.eval_beam_size = args.beam
    task.config.length_penalty = args.length_penalty
    started = time.time()
    metrics = task.evaluate(args.split)
    print(json.dumps({"split": args.split, "n": len(task.splits[args.split]), "beam_size": args.beam,
                      "length_penalty": args.length_penalty, **metrics, "seconds": round(time.time() - started, 1)}))
    if args.show:
        idx = task.splits[args.split]
        questions = [task.pairs[i][0] for i in idx]
        answers = task.answer(questions, beam_size=args.beam)
        wrong = [(q, task.pairs[i][1], a) for q, i, a in zip(questions, idx, answers) if a != task.pairs[i][1]]
        for q, truth, a in wrong[: args.show]:
            print(f"  {q!r}: expected {truth!r}, got {a!r}")
    return 0


def plot(args) -> int:
    """Attention weights of one decoded example as a heat map (matplotlib, Agg)."""
    import matplotlib  # noqa: PLC0415 - only the figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    task = Seq2SeqTask.from_checkpoint(args.checkpoint)
    if task.model.attention is None:
        print("this model has no attention", file=sys.stderr)
        return 1
    questions = args.question or [task.pairs[i][0] for i in task.splits["test"][:1]]
    vocab = task.vocab
    fig, axes = plt.subplots(1, len(questions), figsize=(5.2 * len(questions), 4.6), squeeze=False)
    for ax, question in zip(axes[0], questions):
        src, mask = pad_batch([vocab.encode(question)], vocab.pad_id)
        hyp = task.model.greedy_decode(src, mask)[0]
        out = vocab.decode(hyp.tokens) + ([vocab.itos[vocab.eos_id]] if hyp.finished else [])
        ax.imshow(hyp.aux, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(question)), [c if c != " " else "\u2423" for c in question])
        ax.set_yticks(range(len(out)), out)
        ax.set_xlabel("source (question)")
        ax.set_ylabel("decoded output")
        ax.set_title(f"{question!r} -> {''.join(out[:len(hyp.tokens)])}", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--split", default="test")
    e.add_argument("--beam", type=int, default=0, help="also report exact match of beam search of this size")
    e.add_argument("--length-penalty", type=float, default=1.0)
    e.add_argument("--show", type=int, default=0, help="print this many wrong answers")
    f = sub.add_parser("plot")
    f.add_argument("checkpoint", type=Path)
    f.add_argument("--question", nargs="*", help="questions to decode (default: the first test question)")
    f.add_argument("--out", type=Path, default=Path("benchmarks/figures/attention_date.png"))
    args = p.parse_args(argv)
    return {"evaluate": evaluate, "plot": plot}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
