"""``rnnkit bench`` (benchmarks/bench_train.py): the harness itself, at its smallest setting.

Not a speed test (speed targets live in benchmarks/RESULTS.md): these check that one run
produces every figure for every framework, and that the harness waits for idle workers
before it times one (spinning BLAS threads of an idle worker would steal a core).
"""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from rnnkit import bench


def test_one_tiny_run_reports_every_figure(tmp_path):
    out = tmp_path / "r.json"
    args = ["--configs", "S", "--cells", "rnn", "--frameworks", "rnnkit,reference", "--rounds", "2", "--steps", "1",
            "--gen-tokens", "2", "--warmup", "1", "--json", str(out)]
    proc = subprocess.run([sys.executable, "-m", "rnnkit.bench", *args], capture_output=True, text=True, timeout=600,
                          cwd=bench.find_reference().parents[1])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rows = {r["framework"]: r for r in result["rows"]}
    assert set(rows) == {"rnnkit", "reference"}
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["train"]["n"] == 2 and r["generate"]["n"] == 4
        assert r["peak_rss_mib"] is None or r["peak_rss_mib"] > 0
        assert np.isfinite(r["last_loss"])
    # both time the same model: untrained, a V = 10000-way guess (their inits differ)
    for r in rows.values():
        assert r["first_losses"][0] == pytest.approx(np.log(10000), abs=0.05)
    assert "| S | rnn | rnnkit |" in proc.stdout


def test_settle_waits_for_a_busy_process_and_not_for_an_idle_one(monkeypatch):
    """With a scripted CPU clock (no timing: a loaded machine gave the real spinning process under 5 %
    of a core, so the old wall-clock version failed there): pid 1 spins for 4 windows, pid 2 never."""
    reads = {1: 0, 2: 0}

    def cpu_seconds(pid):  # read twice a window: before and after its sleep
        reads[pid] += 1
        return 0.02 * min(reads[1] // 2, 4) if pid == 1 else 0.0  # pid 1: a whole window of CPU a window

    monkeypatch.setattr(bench, "_cpu_seconds", cpu_seconds)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    bench.settle([1, 2], window=0.02, timeout=5.0)
    assert reads == {1: 2 * 5, 2: 2 * 5}  # four busy windows, then the first quiet one
    reads.update({1: 0, 2: 0})
    bench.settle([2], window=0.02, timeout=5.0)
    assert reads == {1: 0, 2: 2}  # idle from the start: one window


def test_settle_on_real_processes_returns():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert bench.settle([idle.pid], timeout=3.0) < 3.0
    finally:
        idle.kill()
        idle.wait()


@pytest.mark.parametrize("flag, value, expected", [
    ("--rounds", "0", "argument --rounds: 0; expected an integer >= 1"),
    ("--gen-tokens", "0", "argument --gen-tokens: 0; expected an integer >= 1"),
    ("--threads", "0", "argument --threads: 0; expected an integer >= 1"),
    ("--steps", "-1", "argument --steps: -1; expected an integer >= 0"),
    ("--warmup", "-1", "argument --warmup: -1; expected an integer >= 0"),
    ("--rounds", "two", "argument --rounds: 'two'; expected an integer >= 1"),
])
def test_bad_numeric_arguments_stop_at_parse_time(monkeypatch, capsys, flag, value, expected):
    monkeypatch.setattr(bench, "environment", lambda args: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main([flag, value])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_zero_steps_and_warmup_are_accepted():
    parser = bench.argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--steps", "0", "--warmup", "0"])
    assert (args.steps, args.warmup, args.rounds, args.threads) == (0, 0, 5, 2)


def test_json_into_a_missing_folder_stops_before_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "environment", lambda args: pytest.fail("the run started"))
    with pytest.raises(SystemExit, match="--json .*: no folder .*missing.*; expected the path of a file"):
        bench.main(["--json", str(tmp_path / "missing" / "r.json")])
    with pytest.raises(SystemExit, match="is a folder; expected the path of a JSON file"):
        bench.main(["--json", str(tmp_path)])


def test_nothing_left_to_run_is_said_instead_of_crashing(monkeypatch):
    """--frameworks torch without PyTorch installed: a message, not a ZeroDivisionError."""
    env = {"torch": None, "OPENBLAS_CORETYPE": None}
    monkeypatch.setattr(bench, "environment", lambda args: env)
    monkeypatch.setattr(bench, "Worker", lambda *a, **k: pytest.fail("a worker started"))
    with pytest.raises(SystemExit, match="nothing left to run: PyTorch is not installed"):
        bench.main(["--frameworks", "torch", "--configs", "S", "--cells", "lstm"])
