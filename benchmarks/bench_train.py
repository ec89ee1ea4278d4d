"""Training and generation speed: rnnkit vs PyTorch vs the textbook per-step layers.

Same code as ``rnnkit bench`` (see ``rnnkit/bench.py`` for what is measured and how).
Run from the repository root, e.g.::

    python benchmarks/bench_train.py --configs S,M,C --cells lstm,gru,rnn --json results.json
"""
import sys

from rnnkit.bench import main

if __name__ == "__main__":
    sys.exit(main())
