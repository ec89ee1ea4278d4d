"""The output layer + softmax cross-entropy, forward and backward: the native kernel against the BLAS row blocks.

    python benchmarks/bench_output_layer.py                       # the shapes of benchmarks/RESULTS.md
    python benchmarks/bench_output_layer.py --shapes 700x100x10000,64x650x10000 --reps 9

Times ``rnnkit.layers.linear_cross_entropy`` (N rows of H features, a vocabulary of V,
float32, with the bias, gradients accumulated) on its two paths, alternating in one process
so that the machine's load hits both alike: the native kernel (``native.linear_xent``) and
the BLAS row blocks that run where the kernel does not. Prints the median milliseconds of
each and their ratio, and whether ``linear_cross_entropy`` takes the kernel at that shape
by itself (``losses.native_xent_shape``). The table "The kernel against the BLAS row blocks,
by shape" in benchmarks/RESULTS.md came from this script.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from rnnkit.kernels import native
from rnnkit.layers import Linear, linear_cross_entropy, losses

SHAPES = ["700x100x10000", "700x200x10000", "700x650x10000", "700x1024x10000", "700x2048x5000", "64x650x10000",
          "2000x100x10000", "700x100x50000", "700x512x2000", "2000x256x1024", "4096x512x2000", "4096x512x8000"]


def _shape(text: str) -> tuple[int, int, int]:
    try:
        N, H, V = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}; expected NxHxV, e.g. 700x100x10000") from None
    if min(N, H, V) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}; expected positive sizes")
    return N, H, V


def time_shape(N: int, H: int, V: int, reps: int, seed: int = 0) -> tuple[float, float]:
    """Median ms of (native kernel, BLAS row blocks) over ``reps`` alternating calls (+1 warm-up each)."""
    rng = np.random.default_rng(seed)
    linear = Linear(H, V, rng=rng)
    x = rng.standard_normal((N, H), dtype=np.float32)
    targets = rng.integers(0, V, N)
    saved = losses.NATIVE_MIN_VOCAB, losses.NATIVE_MAX_HIDDEN, losses.NATIVE_MAX_ROWS
    times = {True: [], False: []}
    try:
        for i in range(reps + 1):
            for use_native in ((True, False) if i % 2 else (False, True)):
                if use_native:  # every shape on the kernel, whatever the dispatch rule says
                    losses.NATIVE_MIN_VOCAB, losses.NATIVE_MAX_HIDDEN, losses.NATIVE_MAX_ROWS = 1, 1 << 30, 1 << 62
                else:  # no vocabulary is big enough: the BLAS row blocks
                    losses.NATIVE_MIN_VOCAB = 1 << 62
                t0 = time.perf_counter()
                linear_cross_entropy(linear, x, targets)
                if i:  # the first round warms up
                    times[use_native].append(time.perf_counter() - t0)
    finally:
        losses.NATIVE_MIN_VOCAB, losses.NATIVE_MAX_HIDDEN, losses.NATIVE_MAX_ROWS = saved
    return 1e3 * float(np.median(times[True])), 1e3 * float(np.median(times[False]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=lambda s: [_shape(v) for v in s.split(",")],
                        default=[_shape(v) for v in SHAPES], help="comma-separated NxHxV")
    parser.add_argument("--reps", type=int, default=8, help="timed calls of each path per shape (default 8)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps {args.reps}; expected >= 1")
    if not native.available():
        print(f"native kernels unavailable: {native.why_unavailable()}", file=sys.stderr)
        return 1
    print(f"native kernels: {native.isa()}, {native.num_threads()} threads; median of {args.reps}")
    print("| N | H | V | native kernel ms | BLAS row blocks ms | ratio | taken by default |")
    print("|---|---|---|---|---|---|---|")
    for N, H, V in args.shapes:
        a, b = time_shape(N, H, V, args.reps)
        taken = "yes" if losses.native_xent_shape(V, H, N) else "no"
        print(f"| {N} | {H} | {V} | {a:.1f} | {b:.1f} | {a / b:.2f} | {taken} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
