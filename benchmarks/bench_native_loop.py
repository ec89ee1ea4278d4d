"""The native recurrent time loops alone: ``native.cell_forward`` and ``cell_backward``.

    python benchmarks/bench_native_loop.py                          # the benchmark's C, M and S shapes
    python benchmarks/bench_native_loop.py --cells lstm,gru --shapes 32x512x128 --reps 9
    RNNKIT_NUM_THREADS=1 python benchmarks/bench_native_loop.py     # one thread

Times one direction's forward loop (the per-step GEMM with ``W_hh``, the cell and the state
update, over T steps) and its BPTT loop (dy given, bias gradients summed), float32, on the
buffers ``layers.unroll`` would pass, without the input projection or the weight-gradient
GEMMs around them. Prints median milliseconds and GFLOP/s (2 B H G T each way). To compare
two builds, run it from each checkout in turn (``PYTHONPATH=<checkout>/src``), alternating.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from rnnkit.kernels import native

SHAPES = ["32x512x128", "20x650x35", "20x100x35"]  # B x H x T of configs C, M and S
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _shape(text: str) -> tuple[int, int, int]:
    try:
        B, H, T = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}; expected BxHxT, e.g. 32x512x128") from None
    if min(B, H, T) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}; expected B, H and T >= 1")
    return B, H, T


def _median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: packing buffers, pages
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_loops(cell: str, B: int, H: int, T: int, reps: int) -> tuple[float, float]:
    """(forward, backward) median seconds of one direction's loops, copies of the inputs excluded."""
    G = GATES[cell] * H
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((G, H)) * H ** -0.5).astype(np.float32)
    xw = rng.standard_normal((T, B, G)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    Hs = np.zeros((T + 1, B, H), np.float32)
    Cs = np.zeros((T + 1, B, H), np.float32) if cell == "lstm" else None
    aux = np.empty((T, B, H), np.float32) if cell != "rnn" else None
    mode = native.MODES[cell] if cell != "rnn" else native.MODES[("rnn", "tanh")]
    b_hh = np.zeros(G, np.float32) if cell == "gru" else None
    buf = np.empty_like(xw)

    def forward():
        buf[...] = xw  # the loop writes the activated gates over its input
        native.cell_forward(mode, buf, W, None, b_hh, Hs, Cs, aux, None)

    copy = _median_seconds(lambda: np.copyto(buf, xw), reps)
    fwd = _median_seconds(forward, reps) - copy
    gates = buf.copy()
    aux_fwd = None if aux is None else aux.copy()

    def backward():
        buf[...] = gates
        if aux is not None:
            aux[...] = aux_fwd  # the GRU's backward writes over it
        native.cell_backward(mode, buf, W, Hs, Cs, aux, dy, np.zeros((B, H), np.float32),
                             None if Cs is None else np.zeros((B, H), np.float32), None, bias_grad=True)

    copy_b = copy if aux is None else _median_seconds(lambda: (np.copyto(buf, gates), np.copyto(aux, aux_fwd)), reps)
    bwd = _median_seconds(backward, reps) - copy_b
    return fwd, bwd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="BxHxT,... (default: %(default)s)")
    parser.add_argument("--cells", default="lstm,gru,rnn", help="default: %(default)s")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args(argv)
    if not native.available():
        print(f"native kernels unavailable: {native.why_unavailable()}", file=sys.stderr)
        return 2
    try:
        shapes = [_shape(s) for s in args.shapes.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    cells = args.cells.split(",")
    for cell in cells:
        if cell not in GATES:
            parser.error(f"cell {cell!r}; expected some of {sorted(GATES)}")
    if args.reps < 1:
        parser.error(f"--reps {args.reps}; expected >= 1")
    print(f"native kernels: {native.isa()}, {native.num_threads()} threads")
    print("| cell | B | H | T | forward ms | forward GFLOP/s | backward ms | backward GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in cells:
        for B, H, T in shapes:
            fwd, bwd = time_loops(cell, B, H, T, args.reps)
            flop = 2.0 * B * H * GATES[cell] * H * T
            print(f"| {cell} | {B} | {H} | {T} | {fwd * 1e3:.2f} | {flop / max(fwd, 1e-9) / 1e9:.0f} "
                  f"| {bwd * 1e3:.2f} | {flop / max(bwd, 1e-9) / 1e9:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
