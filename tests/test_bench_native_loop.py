"""benchmarks/bench_native_loop.py: a row per cell and shape, real timings, bad input refused."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from rnnkit.kernels import native
from script_helpers import load_script

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_native_loop.py"
pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.why_unavailable()}")


def _module():
    return load_script(PATH)


def test_prints_a_row_per_cell_and_shape(capsys):
    assert _module().main(["--shapes", "3x17x4,13x5x2", "--cells", "lstm,gru,rnn", "--reps", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")
            and line.split("|")[1].strip() in {"lstm", "gru", "rnn"}]
    assert [(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows] == [
        (cell, B, H) for cell in ("lstm", "gru", "rnn") for B, H in (("3", "17"), ("13", "5"))]
    assert all(math.isfinite(float(v)) for r in rows for v in r[4:])  # ms and GFLOP/s of both loops


def test_each_loop_is_the_native_one(monkeypatch):
    calls = []
    for name in ("cell_forward", "cell_backward"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    _module().time_loops("gru", 2, 3, 4, reps=2)
    assert calls == ["cell_forward"] * 3 + ["cell_backward"] * 3  # 2 timed + 1 warm-up each


@pytest.mark.parametrize("argv,message", [(["--shapes", "3x17"], "expected BxHxT"),
                                          (["--shapes", "0x5x2"], ">= 1"),
                                          (["--cells", "lstm,tree"], "cell 'tree'"),
                                          (["--reps", "0"], "--reps 0")])
def test_refuses_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit):
        _module().main(argv)
    assert message in capsys.readouterr().err
