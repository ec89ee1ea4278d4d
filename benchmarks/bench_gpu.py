"""GPU speed: rnnkit on CuPy against PyTorch (cuDNN) and the textbook layers on CuPy, in one run.

Same code as ``rnnkit bench-gpu`` (see ``rnnkit/bench_gpu.py`` for what is measured and how).
Run from the repository root, e.g.::

    python benchmarks/bench_gpu.py --json gpu.json
    python benchmarks/bench_gpu.py --device cpu --configs S --rounds 3     # the script itself, no GPU
"""
import sys

from rnnkit.bench_gpu import main

if __name__ == "__main__":
    sys.exit(main())
