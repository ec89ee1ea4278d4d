"""benchmarks/profile_step_memory.py: runs at config C (small), both paths and the A/B."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from script_helpers import load_script

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step_memory.py"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def _module():
    return load_script(PATH)


@pytest.mark.parametrize("extra", [[], ["--unfused"], ["--chunk-mib", "0.01"], ["--blas-blocks"]])
def test_prints_every_phase_of_every_step(extra):
    # a fresh process, as the script is meant to run: in this one, freed memory of earlier
    # tests would hold the model without the resident set growing
    out = subprocess.run([sys.executable, str(PATH), "--config", "C", "--cell", "rnn", "--steps", "2", *extra],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| step")]
    assert len(rows) == 8
    high_water = [float(r.split("|")[3]) for r in rows]
    assert high_water == sorted(high_water) and high_water[-1] > 0  # a high-water mark never falls


def test_ab_times_both_paths(capsys):
    assert _module().main(["--config", "C", "--cell", "rnn", "--ab", "1"]) == 0
    out = capsys.readouterr().out
    assert "fused (blocks <= 16 MiB)" in out and "unfused" in out and "fused/unfused" in out


def test_refuses_a_bad_block_bound():
    with pytest.raises(SystemExit):
        _module().main(["--chunk-mib", "0"])
