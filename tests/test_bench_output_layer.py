"""benchmarks/bench_output_layer.py: a tiny shape, both paths, and that the toggle really switches paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from rnnkit.kernels import native
from rnnkit.layers import losses
from script_helpers import load_script

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_output_layer.py"
pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.why_unavailable()}")


def _module():
    return load_script(PATH)


def test_prints_a_row_per_shape(capsys):
    assert _module().main(["--shapes", "20x16x1100,5x8x300", "--reps", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 20 ") or line.startswith("| 5 ")]
    assert len(rows) == 2
    assert rows[0].endswith("| yes |") and rows[1].endswith("| no |")  # V 300 < NATIVE_MIN_VOCAB


def test_each_path_runs_what_it_says_and_the_bounds_come_back(monkeypatch):
    calls = []
    real = native.linear_xent
    monkeypatch.setattr(native, "linear_xent", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = losses.NATIVE_MIN_VOCAB, losses.NATIVE_MAX_HIDDEN, losses.NATIVE_MAX_ROWS
    _module().time_shape(7, 8, 300, reps=3)  # a shape the dispatch rule would not send to the kernel
    assert len(calls) == 4  # the kernel path: 3 timed calls + 1 warm-up; the BLAS path never
    assert (losses.NATIVE_MIN_VOCAB, losses.NATIVE_MAX_HIDDEN, losses.NATIVE_MAX_ROWS) == before


def test_refuses_a_bad_shape():
    with pytest.raises(SystemExit):
        _module().main(["--shapes", "700x100"])
