"""rnnkit bench-gpu (benchmarks/bench_gpu.py) without a GPU: its CPU mode for real, its GPU mode on the fake device.

The GPU figures come from the device machine (``benchmarks/device_check.sh``); what is
checked here is that the script runs every framework it can, times and reports them, and
that its CUDA branch (arrays moved, the reference's module switched to CuPy, memory and
device queries) runs through ``fake_cupy`` and the emulated kernels.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cuda_emulator import Emulators, compiler
import fake_cupy
from script_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


def _load():
    from rnnkit import bench_gpu

    return bench_gpu


def test_the_script_and_the_command_run_the_same_code(capsys):
    from rnnkit.cli import main

    script = load_script(ROOT / "benchmarks" / "bench_gpu.py", "bench_gpu_script")
    assert script.main is _load().main
    assert main(["bench-gpu", "--device", "cpu", "--configs", "X"]) == 2  # the CLI's clean error
    assert "--configs 'X'; expected a comma-separated subset of S, M, C" in capsys.readouterr().err


def _torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def test_cpu_mode_times_every_framework_and_reports_ratios(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "gpu.json"
    rc = bench.main(["--device", "cpu", "--configs", "S", "--cells", "rnn", "--rounds", "2", "--reference-rounds", "1",
                     "--warmup", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    frameworks = {(r["kind"], r["framework"]) for r in data["rows"]}
    want = {("step", "rnnkit"), ("step", "reference"), ("layer", "rnnkit"), ("phases", "rnnkit")}
    if _torch_installed():
        want |= {("step", "torch"), ("layer", "torch")}
    assert frameworks == want
    for r in data["rows"]:
        assert r["ms"] > 0 and r["rounds"] == (1 if r["framework"] == "reference" else 2)
        if r["kind"] == "phases":  # the phases lie inside the step's wall time
            assert set(r["phases_ms"]) == set(bench.PHASES) and all(v >= 0 for v in r["phases_ms"].values())
            assert sum(r["phases_ms"].values()) <= r["ms"] * 1.001
        else:
            assert r["tokens_per_s"] == pytest.approx(20 * 35 / (r["ms"] / 1e3))
    step = next(e for e in data["ratios"] if e["kind"] == "step")
    rnnkit_ms = next(r["ms"] for r in data["rows"] if r["kind"] == "step" and r["framework"] == "rnnkit")
    ref_ms = next(r["ms"] for r in data["rows"] if r["kind"] == "step" and r["framework"] == "reference")
    assert step["x_reference"] == pytest.approx(ref_ms / rnnkit_ms)
    assert data["environment"]["device"] == "cpu"
    assert "rnnkit as a multiple of" in capsys.readouterr().out


def test_bad_arguments_name_the_value():
    bench = _load()
    with pytest.raises(SystemExit):
        bench.parse_args(["--configs", "S,X"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--frameworks", "jax"])


@pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler to run the kernels on the CPU")
def test_cuda_mode_runs_on_the_fake_device(tmp_path, monkeypatch):
    emulators = Emulators(tmp_path, collapse=True)
    fake_cupy.install(monkeypatch, emulators)
    bench = _load()
    out = tmp_path / "gpu.json"
    rc = bench.main(["--device", "cuda", "--configs", "S", "--cells", "lstm",
                     "--frameworks", "rnnkit,rnnkit_persistent,reference",
                     "--rounds", "1", "--reference-rounds", "1", "--warmup", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert rc == 0, [r.get("trace") for r in data["rows"]]
    assert {(r["kind"], r["framework"]) for r in data["rows"]} == {
        ("step", "rnnkit"), ("step", "rnnkit_persistent"), ("step", "reference"), ("layer", "rnnkit"),
        ("layer", "rnnkit_persistent"), ("phases", "rnnkit")}
    assert {name for name, _, _ in emulators.launches} >= {"rk_lstm_persistent_forward", "rk_lstm_persistent_backward"}
    assert data["environment"]["gpu"].startswith("fake device")
    assert data["complete"] is True  # written after every case too, with complete false until the end
    # the fake pool holds nothing; real ones report MiB
    assert all(r["peak_mib"] == 0 for r in data["rows"] if r["kind"] != "phases")
