"""benchmarks/micro_packed_gemm.py: runs at tiny sizes, NumPy-only where MKL is absent, and with
MKL's packed GEMM (checked against NumPy inside the script) where it is present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from script_helpers import load_script

pytest.importorskip("threadpoolctl")
PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "micro_packed_gemm.py"


def load():
    return load_script(PATH)


def test_runs_and_reports_every_size(capsys, monkeypatch):
    micro = load()
    monkeypatch.setenv("MKL_RT", "")
    rows = micro.main(["--threads", "1", "--reps", "1", "--sizes", "a:2,3,12,4", "b:1,5,20,2"])
    assert [(r["size"], r["B"], r["H"], r["G"], r["T"]) for r in rows] == [("a", 2, 3, 12, 4), ("b", 1, 5, 20, 2)]
    assert all(r["numpy_fwd_ms"] > 0 and r["numpy_bwd_ms"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "a (B=2, H=3, G=12, 4 steps): numpy_fwd" in out
    with pytest.raises(SystemExit):
        micro.main(["--sizes", "C:32,512"])
    assert "size 'C:32,512'; expected NAME:B,H,G,T" in capsys.readouterr().err


def test_packed_product_equals_numpy_where_mkl_is_present():
    micro = load()
    mkl = micro.load_mkl()
    if mkl is None:
        pytest.skip("MKL (libmkl_rt) not installed: the benchmark's optional comparison")
    rng = np.random.default_rng(0)
    B = rng.standard_normal((7, 11), dtype=np.float32)
    packed = micro.PackedB(mkl, B, 3)
    x = rng.standard_normal((3, 7), dtype=np.float32)
    np.testing.assert_allclose(packed.matmul(x, np.empty((3, 11), np.float32)), x @ B, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"x \(4, 7\) float32"):
        packed.matmul(np.zeros((4, 7), np.float32), np.empty((4, 11), np.float32))
