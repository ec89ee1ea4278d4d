"""The book's own recipe, run outside rnnkit: what does "Deep Learning from Scratch 2"'s
small PTB LSTM reach from different seeds?

Issue 6 asks for test perplexity <= 136, the single figure the book prints for its
chapter-6 language model. rnnkit's ``ptb-small`` preset gives 137.1 / 141.1 / 137.2 for
seeds 0-2. This script asks whether that gap is rnnkit's or the seed's: it trains the
textbook per-step layers of ``reference_dl2.py`` (independent of rnnkit's layers, time
loop, data pipeline and trainer) with the book's recipe, written out here from its
description:

- corpus: the PTB files read whole, every newline replaced by ``<eos>``, split on white
  space; word ids in order of first appearance in the training file; xs = corpus[:-1],
  ts = corpus[1:];
- model: embedding 100 ~ N(0, 0.01^2), LSTM 100 with W ~ N(0, 1/fan_in) and zero bias,
  affine ~ N(0, 1/H), float32;
- training: 20 streams starting at i * (len(xs) // 20), read with wrap-around, 35 steps
  a batch, len(xs) // 700 batches an epoch, the hidden state carried through the whole
  run (never reset, not even between epochs); mean cross-entropy over the batch; global
  gradient-norm clipping at 0.25; plain SGD, lr 20; 4 epochs;
- test: the state reset, then 10 streams of 35 tokens over the test file, perplexity =
  exp(mean of the per-batch mean losses), the loss being the exact -log softmax (the
  book's: no epsilon inside the log).

Two switches make it train the way rnnkit's ``ptb-small`` preset does, one difference at
a time, so that a run with the same seed (same initial weights, same data) is a paired
comparison:

- ``--two-biases``: the LSTM has PyTorch's two bias vectors ``b_ih`` and ``b_hh`` instead of
  the book's one. Both start at zero and receive the same gradient, so their sum, the
  bias the gates see, moves at twice the rate, and the gradient norm that clipping
  measures counts the bias gradient twice. Emulated exactly: a second copy of the bias
  gradient joins the clipped list, and the bias is stepped with both copies.
- ``--reset-each-epoch``: rnnkit's ``TBPTTBatcher``: every epoch starts from a zero state
  at the stream starts, the same ceil(n / 35) chunks each epoch (the last one shorter), no
  wrap-around; the book instead reads on from where the last epoch stopped, so its chunk
  edges move by 34 tokens every epoch and its state is never reset.

Usage (one core):
    taskset -c 1 env OPENBLAS_NUM_THREADS=1 python benchmarks/run_ptb_dl2_reference.py --seed 0
Prints one JSON line per evaluation; ``--out`` appends them to a JSONL file.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_dl2 import SGD, LanguageModel, clip_grads  # noqa: E402


def read_words(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().replace("\n", " <eos> ").split()


def load_ptb(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    def find(name):
        for candidate in (data_dir / name, data_dir / (name + ".gz")):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{name} not found in {data_dir} (expected {name} or {name}.gz)")

    word_to_id: dict[str, int] = {}
    splits = []
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        words = read_words(find(name))
        if name == "ptb.train.txt":
            for w in words:
                word_to_id.setdefault(w, len(word_to_id))
        unknown = {w for w in words if w not in word_to_id}
        if unknown:
            raise ValueError(f"{name}: {len(unknown)} words not in the training vocabulary, e.g. {sorted(unknown)[:5]}")
        splits.append(np.array([word_to_id[w] for w in words], dtype=np.int64))
    return (*splits, len(word_to_id))


def perplexity(model: LanguageModel, corpus: np.ndarray, batch_size: int = 10, time_size: int = 35) -> float:
    """The book's evaluation: ``batch_size`` streams, mean of the per-batch mean losses."""
    model.reset_state()
    max_iters = (len(corpus) - 1) // (batch_size * time_size)
    jump = (len(corpus) - 1) // batch_size
    total = 0.0
    for it in range(max_iters):
        offsets = it * time_size + jump * np.arange(batch_size)
        idx = offsets[:, None] + np.arange(time_size)[None, :]
        total += model.forward(corpus[idx], corpus[idx + 1])
    return float(np.exp(total / max_iters))


def variant(args) -> str:
    parts = [name for name, on in (("two-biases", args.two_biases), ("reset-each-epoch", args.reset_each_epoch)) if on]
    return "+".join(parts) or "book"


def train(args) -> None:
    train_ids, valid_ids, test_ids, V = load_ptb(Path(args.data_dir))
    xs, ts = train_ids[:-1], train_ids[1:]
    B, T = args.batch_size, args.bptt
    data_size = len(xs)
    jump = data_size // B
    max_iters = data_size // (B * T)
    model = LanguageModel("lstm", V, args.embed, args.hidden, seed=args.seed)
    optimizer = SGD(args.lr)
    offsets = jump * np.arange(B)
    time_idx = 0
    if args.reset_each_epoch:
        stream_len = data_size // B  # rnnkit: (N - 1) // B with N = len(corpus) = data_size + 1
        max_iters = -(-stream_len // T)
    bias = model.rnns[0].params[2]
    out = open(args.out, "a") if args.out else None

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        losses = []
        if args.reset_each_epoch:
            model.reset_state()
        for it in range(max_iters):
            if args.reset_each_epoch:
                steps = np.arange(it * T, min((it + 1) * T, stream_len))
                idx = offsets[:, None] + steps[None, :]
            else:
                idx = (offsets[:, None] + time_idx + np.arange(T)[None, :]) % data_size
                time_idx += T
            losses.append(model.forward(xs[idx], ts[idx]))
            model.backward()
            if args.two_biases:
                grads = model.grads + [model.rnns[0].grads[2].copy()]
                clip_grads(grads, args.clip)
                optimizer.update(model.params + [bias], grads)
            else:
                clip_grads(model.grads, args.clip)
                optimizer.update(model.params, model.grads)
            if args.log_every and (it + 1) % args.log_every == 0:
                print(f"epoch {epoch} iter {it + 1}/{max_iters} train ppl {np.exp(np.mean(losses[-args.log_every:])):.1f} "
                      f"{(time.perf_counter() - start):.0f} s", file=sys.stderr, flush=True)
        # evaluation resets the state; save and restore it so training goes on exactly as the book's
        saved = [(r.h, r.c) for r in model.rnns]
        row = {"seed": args.seed, "variant": variant(args), "epoch": epoch, "train_ppl": float(np.exp(np.mean(losses))),
               "seconds": round(time.perf_counter() - start, 1)}
        if args.eval_valid:
            row["valid_ppl"] = perplexity(model, valid_ids)
        for r, (h, c) in zip(model.rnns, saved):
            r.h, r.c = h, c
        emit(row)
    if args.save:
        np.savez(args.save, **{f"p{k}": p for k, p in enumerate(model.params)})
    emit({"seed": args.seed, "variant": variant(args), "final": True, "epochs": args.epochs, "test_ppl": perplexity(model, test_ids),
          "seconds": round(time.perf_counter() - start, 1)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ptb"),
                   help="folder with ptb.train.txt(.gz), ptb.valid.txt, ptb.test.txt (default: ../shared/data/ptb)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation (the only randomness)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--embed", type=int, default=100)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--lr", type=float, default=20.0)
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--two-biases", action="store_true", help="rnnkit's (PyTorch's) b_ih + b_hh instead of one bias")
    p.add_argument("--reset-each-epoch", action="store_true",
                   help="rnnkit's batching: zero state and the same chunks every epoch, no wrap-around")
    p.add_argument("--eval-valid", action="store_true", help="also report validation perplexity after every epoch")
    p.add_argument("--log-every", type=int, default=200, help="progress line on stderr every N batches (0: none)")
    p.add_argument("--out", default=None, help="append the JSON lines to this file")
    p.add_argument("--save", default=None, help="write the trained weights to this .npz (model.params in order)")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
