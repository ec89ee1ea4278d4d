"""The classification benchmark scripts pass --optimizer / --weight-decay on to the trainer."""
import json
import sys
from pathlib import Path

import pytest
from script_helpers import load_script

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    return load_script(BENCH / f"{name}.py")


@pytest.fixture
def data(tmp_path):
    words = ["good", "fine", "great", "bad", "awful", "poor", "film", "plot", "the", "a"]
    lines = []
    for i in range(60):
        label = "pos" if i % 2 else "neg"
        lines.append(f"{label}\t{words[i % 3 + (0 if i % 2 else 3)]} {words[6 + i % 4]} {words[(i * 7) % 10]}")
    path = tmp_path / "tiny.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_recorder(module, monkeypatch):
    seen = []
    real = module.TrainConfig

    def record(**kwargs):
        config = real(**kwargs)
        seen.append(config)
        return config

    monkeypatch.setattr(module, "TrainConfig", record)
    return seen


TINY = ["embedding_dim=4", "hidden_size=4", "batch_size=8"]


def test_run_classify_weight_decay(data, tmp_path, monkeypatch):
    module = load("run_classify")
    seen = make_recorder(module, monkeypatch)
    out = tmp_path / "out.jsonl"
    assert module.main(["--dataset", str(data), "--epochs", "1", "--optimizer", "adamw", "--weight-decay", "0.05",
                        "--run-dir", str(tmp_path / "run"), "--out", str(out), "--set", *TINY]) == 0
    assert [(c.optimizer, c.weight_decay) for c in seen] == [("adamw", 0.05)]
    row = json.loads(out.read_text().splitlines()[0])
    assert row["train"]["optimizer"] == "adamw" and row["train"]["weight_decay"] == 0.05


def test_run_classify_default_is_plain_adam(data, tmp_path, monkeypatch):
    module = load("run_classify")
    seen = make_recorder(module, monkeypatch)
    module.main(["--dataset", str(data), "--epochs", "1", "--run-dir", str(tmp_path / "run"), "--set", *TINY])
    assert [(c.optimizer, c.weight_decay) for c in seen] == [("adam", 0.0)]


def test_explore_weight_decay(data, tmp_path, monkeypatch):
    module = load("explore_classify_averaging")
    seen = make_recorder(module, monkeypatch)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "explore.jsonl"
    monkeypatch.setattr(sys, "argv", ["explore", "--only", "0", "--epochs", "1", "--decays", "0.9",
                                      "--swa-start", "99", "--optimizer", "adamw", "--weight-decay", "0.02",
                                      "--tag", "wd", "--out", str(out), "--set", f"dataset={data}", *TINY])
    module.main()
    assert [(c.optimizer, c.weight_decay) for c in seen] == [("adamw", 0.02)]
    row = json.loads(out.read_text().splitlines()[0])
    assert row["optimizer"] == "adamw" and row["weight_decay"] == 0.02
