"""Resident memory at each phase of the benchmark's training step, and what the fused
output layer's block size buys.

    python benchmarks/profile_step_memory.py --config M --cell lstm [--chunk-mib 16] [--unfused]
    python benchmarks/profile_step_memory.py --config M --cell lstm --ab 20   # speed, fused vs unfused

Builds the model of ``rnnkit bench`` (embedding -> recurrent stack -> affine -> softmax
cross-entropy, SGD, clip 0.25) at config S, M or C and runs ``--steps`` training steps,
printing after every phase the resident set and its high-water mark above the resident set
just before the build (``/proc/self/status``; the high-water is reset first through
``/proc/self/clear_refs``, Linux only), and tracemalloc's peak of the NumPy allocations.
``--chunk-mib`` is ``linear_cross_entropy``'s block bound for its BLAS row blocks, which
run where its native kernel does not (the native kernel takes float32 vocabularies >= 1024
with H <= 1024, so S and M; ``--blas-blocks`` makes S and M take the row blocks too);
``--unfused`` runs ``Linear`` + ``SoftmaxCrossEntropy`` instead (the whole logits at once). ``--ab N`` times
instead: N whole training steps of each path, alternating in one process (the order swaps
every round), and prints the medians. The figures of
benchmarks/RESULTS.md, section "Fused output layer and loss", came from this script.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np

from rnnkit import kernels, optim
from rnnkit.bench import CONFIGS, _reset_peak_rss, _rss_kib
from rnnkit.layers import GRU, LSTM, RNN, Embedding, Layer, Linear, SoftmaxCrossEntropy, linear_cross_entropy, losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="M", choices=sorted(CONFIGS))
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    parser.add_argument("--chunk-mib", type=float, default=16.0, help="linear_cross_entropy's block bound, MiB")
    parser.add_argument("--unfused", action="store_true", help="Linear + SoftmaxCrossEntropy, the whole logits")
    parser.add_argument("--blas-blocks", action="store_true",
                        help="linear_cross_entropy's BLAS row blocks even where its native kernel would run")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--ab", type=int, default=0, metavar="N", help="time N steps of fused and unfused, alternating")
    args = parser.parse_args(argv)
    if args.chunk_mib <= 0 or args.steps < 1:
        parser.error(f"--chunk-mib {args.chunk_mib} and --steps {args.steps}; expected both > 0")
    V, D, H, L, B, T = CONFIGS[args.config]
    if args.blas_blocks:
        losses.NATIVE_MAX_HIDDEN = -1
    rnn_class = {"lstm": LSTM, "gru": GRU, "rnn": RNN}[args.cell]
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))

    base = _rss_kib("VmRSS")
    if not _reset_peak_rss():
        print("note: /proc/self/clear_refs unavailable: the high-water mark includes the imports", file=sys.stderr)

    def mark(name: str) -> None:
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        print(f"| {name} | {(_rss_kib('VmRSS') - base) / 1024:.1f} | {(_rss_kib('VmHWM') - base) / 1024:.1f} "
              f"| {traced:.1f} |")

    if args.ab:
        return _ab(args, V, D, H, L, rnn_class, ids, targets)
    print(f"{args.config}/{args.cell}, {'unfused' if args.unfused else 'fused, ' + _fused_path(V, H, B * T, args.chunk_mib)}")
    print("| phase | resident MiB | high-water MiB | traced peak MiB |\n|---|---|---|---|")
    tracemalloc.start()
    model, opt = _build(V, D, H, L, rnn_class, rng, lr=1.0)
    mark("model built")
    for step in range(1, args.steps + 1):
        _train_step(model, opt, ids, targets, not args.unfused, args.chunk_mib,
                    lambda phase, step=step: mark(f"step {step}: {phase}"))
    return 0


def _fused_path(V: int, H: int, N: int, chunk_mib: float) -> str:
    """Which of linear_cross_entropy's two paths the benchmark's float32 model takes."""
    if kernels.native.available() and losses.native_xent_shape(V, H, N):
        return "native kernel"
    return f"blocks <= {chunk_mib:g} MiB"


def _build(V, D, H, L, rnn_class, rng, lr):
    """The benchmark's model (as ``rnnkit.bench``'s rnnkit worker builds it) and its SGD."""
    model = Layer()
    model.embed = Embedding(V, D, rng=rng, init_std=0.01)
    model.rnn = rnn_class(D, H, num_layers=L, stateful=True, rng=rng)
    model.out = Linear(H, V, rng=rng)
    model.loss_layer = SoftmaxCrossEntropy()
    return model, optim.SGD(model, lr=lr)


def _train_step(model, opt, ids, targets, fused: bool, chunk_mib: float, mark=lambda phase: None) -> None:
    """One training step of the benchmark; ``mark(phase)`` after each phase."""
    opt.zero_grad()
    y, _ = model.rnn.forward(model.embed.forward(ids))
    mark("recurrent forward")
    if fused:
        dy = linear_cross_entropy(model.out, y, targets, chunk_bytes=int(chunk_mib * 2**20)).dx
    else:
        model.loss_layer.forward(model.out.forward(y), targets)
        dy = model.out.backward(model.loss_layer.backward())
    mark("output layer + loss")
    model.embed.backward(model.rnn.backward(dy))
    mark("recurrent + embedding backward")
    optim.clip_grad_norm(model, 0.25)
    opt.step()
    mark("clip + SGD")


def _ab(args, V, D, H, L, rnn_class, ids, targets) -> int:
    model, opt = _build(V, D, H, L, rnn_class, np.random.default_rng(0), lr=0.1)

    def step(fused: bool) -> None:
        _train_step(model, opt, ids, targets, fused, args.chunk_mib)

    times = {True: [], False: []}
    for fused in (True, False, True, False):  # warm-up
        step(fused)
    for round_ in range(args.ab):
        for fused in ((True, False) if round_ % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            step(fused)
            times[fused].append(time.perf_counter() - t0)
    f, u = (1e3 * float(np.median(times[k])) for k in (True, False))
    print(f"{args.config}/{args.cell}: fused ({_fused_path(V, H, ids.size, args.chunk_mib)}) {f:.1f} ms, unfused {u:.1f} ms "
          f"per step, median of {args.ab} each; fused/unfused {f / u:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
