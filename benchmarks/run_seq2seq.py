"""Seq2seq benchmark: DL2 addition and date format with Seq2Seq, and the attention figure.

Trains with Adam (gradient clipping, learning rate decayed on a validation plateau),
keeps the weights of the epoch with the best validation exact match, reports test
metrics of those weights, and saves them. One JSON line per epoch goes to ``--log``.

    python benchmarks/run_seq2seq.py train --set dataset=addition reverse_source=true attention=dot \\
        --epochs 60 --save runs/addition.safetensors --log runs/addition.jsonl
    python benchmarks/run_seq2seq.py plot runs/date.safetensors --out benchmarks/figures/attention_date.png

``--set name=value`` overrides any Seq2SeqTaskConfig field (the same names as the CLI flags).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rnnkit.config import from_dict, parse_overrides, to_dict
from rnnkit.data.batching import pad_batch
from rnnkit.optim import Adam, ReduceLROnPlateau, clip_grad_norm
from rnnkit.tasks.seq2seq import Seq2SeqTask, Seq2SeqTaskConfig


def train(args) -> int:
    config = from_dict(Seq2SeqTaskConfig, parse_overrides(args.set))
    task = Seq2SeqTask.from_config(config, seed=args.seed)
    model = task.model
    opt = Adam(model, lr=args.lr)
    sched = ReduceLROnPlateau(opt, factor=0.5, patience=args.patience, min_lr=args.lr / 64)
    sizes = {k: len(v) for k, v in task.splits.items()}
    print(f"config {json.dumps(to_dict(config))}\nsplits {sizes}  vocab {len(task.vocab)}  "
          f"parameters {model.num_parameters()}", flush=True)
    log = open(args.log, "a") if args.log else None
    best, best_state, started = {"val_accuracy": -1.0}, None, time.time()
    for epoch in range(args.epochs):
        t0 = time.time()
        task.start_epoch(epoch)
        total = count = 0
        for batch in task.train_batches(epoch):
            model.zero_grad()
            loss, n = task.train_loss(batch)
            task.backward()
            clip_grad_norm(model, args.clip)
            opt.step()
            total, count = total + loss * n, count + n
        train_s = time.time() - t0
        val = task.evaluate("valid")
        sched.step(1.0 - val["accuracy"] + val["loss"] * 1e-3)  # exact-match error first, loss breaks ties
        row = {"epoch": epoch + 1, "train_loss": total / count, **{f"val_{k}": v for k, v in val.items()},
               "lr": opt.lr, "train_s": round(train_s, 1), "elapsed_s": round(time.time() - started, 1)}
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        if log:
            log.write(json.dumps(row) + "\n")
            log.flush()
        if val["accuracy"] > best["val_accuracy"]:
            best = {"epoch": epoch + 1, "val_accuracy": val["accuracy"], "val_loss": val["loss"]}
            best_state = {k: v.copy() for k, v in model.state_dict().items()}
            if args.save:
                model.save(args.save, meta=task.extra_meta())
        if val["accuracy"] >= args.stop_at:
            break
    model.load_state_dict(best_state)
    test = task.evaluate("test")
    result = {**best, **{f"test_{k}": v for k, v in test.items()}, "train_minutes": round((time.time() - started) / 60, 1)}
    if args.beam:
        task.config.eval_beam_size = args.beam
        result[f"test_beam{args.beam}_accuracy"] = task.evaluate("test")["beam_accuracy"]
    print("result " + json.dumps(result), flush=True)
    if log:
        log.write(json.dumps({"result": result, "config": to_dict(config), "seed": args.seed}) + "\n")
        log.close()
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
    t = sub.add_parser("train")
    t.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="Seq2SeqTaskConfig overrides")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--patience", type=int, default=2, help="epochs without improvement before the lr halves")
    t.add_argument("--clip", type=float, default=5.0)
    t.add_argument("--stop-at", type=float, default=1.01, help="stop once validation exact match reaches this")
    t.add_argument("--beam", type=int, default=0, help="also report test exact match of beam search of this size")
    t.add_argument("--save", type=Path, help="checkpoint of the best epoch")
    t.add_argument("--log", type=Path, help="append one JSON line per epoch here")
    f = sub.add_parser("plot")
    f.add_argument("checkpoint", type=Path)
    f.add_argument("--question", nargs="*", help="questions to decode (default: the first test question)")
    f.add_argument("--out", type=Path, default=Path("benchmarks/figures/attention_date.png"))
    args = p.parse_args(argv)
    return train(args) if args.command == "train" else plot(args)


if __name__ == "__main__":
    sys.exit(main())
