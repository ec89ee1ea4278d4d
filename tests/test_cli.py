"""The command line: train -> checkpoint -> generate -> evaluate on a tiny corpus, resume, bad input."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit import cli
from rnnkit.data.text import bundled_text
from rnnkit.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--bptt", "16", "--no-progress",
        "--log-every", "10", "--no-plot"]


@pytest.fixture(autouse=True, scope="module")
def single_threaded_blas():
    """Tiny matrices gain nothing from BLAS threads, and on a busy machine OpenBLAS's spinning
    threads make these tests ~10x slower; threadpoolctl comes with the dev extras (scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run from the command line, shared by the tests below."""
    folder = tmp_path_factory.mktemp("cli")
    corpus = folder / "tiny.txt"
    corpus.write_text(bundled_text()[:6_000], encoding="utf-8")
    run_dir = folder / "run"
    code = cli.main(["train", "--corpus", str(corpus), "--epochs", "1", "--run-dir", str(run_dir), *TINY])
    assert code == 0
    return corpus, run_dir


def test_train_writes_checkpoints_metrics_and_config(trained):
    corpus, run_dir = trained
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"]["hidden_size"] == 16 and config["task"]["corpus"] == str(corpus)
    assert config["train"]["epochs"] == 1
    assert (run_dir / "metrics.csv").read_text().startswith("split,epoch,step,complete,train_loss")


def test_generate_streams_text_reproducibly(trained, capsys):
    _, run_dir = trained
    ckpt = str(run_dir / "checkpoints" / "best.safetensors")
    args = ["generate", "--checkpoint", ckpt, "--prime", "ROMEO:", "--tokens", "30", "--seed", "3",
            "--temperature", "0.8", "--top-k", "10", "--top-p", "0.9"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("ROMEO:") and len(first) >= 37
    assert cli.main(["generate", "--checkpoint", ckpt, "--prime", "A", "--tokens", "5", "--greedy"]) == 0
    capsys.readouterr()
    assert cli.main(["generate", "--checkpoint", ckpt, "--prime", "A\u00a7", "--tokens", "5", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert "read as <unk>: ['\u00a7']" in captured.err and captured.out.startswith("A\u00a7")


def test_evaluate_own_split_and_a_file(trained, capsys, tmp_path):
    corpus, run_dir = trained
    ckpt = str(run_dir / "checkpoints" / "best.safetensors")
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", ckpt, "--split", "valid"]) == 0
    own = json.loads(capsys.readouterr().out)
    result = json.loads((run_dir / "result.json").read_text())
    assert own["loss"] == pytest.approx(result["best_val_loss"], rel=1e-5) and own["ppl"] > 1
    other = tmp_path / "other.txt"
    other.write_text("Speak, speak. \u00e9\u00e9\n", encoding="utf-8")  # two characters the model never saw
    assert cli.main(["evaluate", "--checkpoint", ckpt, "--file", str(other)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tokens"] == len("Speak, speak. \u00e9\u00e9\n") - 1
    assert "not in the vocabulary are scored as <unk>" in captured.err


def test_resume_from_the_run_dir_alone(trained, capsys):
    """--resume needs only --run-dir: the rest comes from the run's config.json; flags still override."""
    _, run_dir = trained
    assert cli.main(["train", "--resume", "--run-dir", str(run_dir), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 2:" in out
    assert json.loads((run_dir / "config.json").read_text())["train"]["epochs"] == 2


def test_config_file_preset_and_precedence(tmp_path, capsys):
    corpus = tmp_path / "t.txt"
    corpus.write_text(bundled_text()[:3_000], encoding="utf-8")
    config = tmp_path / "c.toml"
    config.write_text(f'[train]\nepochs = 1\nmax_steps = 3\nlr = 0.01\n[task]\nname = "lm"\ncorpus = "{corpus.as_posix()}"\n'
                      'hidden_size = 12\nembedding_size = 4\nbatch_size = 4\nbptt = 8\n', encoding="utf-8")
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--hidden-size", "8", "--run-dir", str(run_dir),
                     "--no-progress"]) == 0
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["task"]["hidden_size"] == 8 and resolved["task"]["bptt"] == 8  # flag beats file
    assert resolved["train"]["lr"] == 0.01 and resolved["train"]["max_steps"] == 3
    assert "demo" in cli.list_presets() and "ptb-small" in cli.list_presets()
    train_config, task_config = cli.resolve_train_config(
        get_task("lm"), cli.build_train_parser(get_task("lm")).parse_args(["--preset", "ptb-small"]))
    assert (train_config.optimizer, train_config.lr, train_config.clip, train_config.epochs) == ("sgd", 20.0, 0.25, 4)
    assert (task_config.corpus, task_config.hidden_size, task_config.bptt, task_config.batch_size) == ("ptb", 100, 35, 20)


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "poetry"], "task 'poetry'; expected one of lm, seq2seq"),
    (["train", "--preset", "nope"], "preset 'nope'; expected one of"),
    (["train", "--optimizer", "rmsprop", "--max-steps", "1"], "optimizer 'rmsprop'"),
    (["train", "--config", "nowhere.toml"], "config file nowhere.toml does not exist"),
    (["generate", "--checkpoint", "missing.safetensors"], "missing.safetensors"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_bad_command_lines(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--hidden-sise", "8"])
    assert exc.value.code == 2 and "unrecognized arguments: --hidden-sise" in capsys.readouterr().err


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[task]\nhiden_size = 8\n", encoding="utf-8")
    assert cli.main(["train", "--config", str(config)]) == 2
    assert "hiden_size" in capsys.readouterr().err
    config.write_text("[trainer]\nlr = 1\n", encoding="utf-8")
    assert cli.main(["train", "--config", str(config)]) == 2
    assert "unknown section(s) ['trainer']" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"\xff\xfe\x00bin\x00ary", "looks binary (NUL byte at offset 2)")])
def test_empty_or_binary_corpus_is_a_clear_error(tmp_path, capsys, content, message):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    assert cli.main(["train", "--corpus", str(corpus), "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "bad.txt" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing half-written


def test_missing_tool_module_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(cli.TOOLS, "gradflow", "rnnkit.analysis.not_written_yet")
    assert cli.main(["gradflow"]) == 2
    assert "rnnkit gradflow is not available" in capsys.readouterr().err


def test_every_flag_has_help():
    """Each field of TrainConfig and of every registered task's config documents itself."""
    from rnnkit.tasks import TASKS
    from rnnkit.train import TrainConfig

    classes = [TrainConfig] + [get_task(name).config_class for name in TASKS]
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    parser = cli.build_train_parser(get_task("lm"))
    assert all(action.help for action in parser._actions)


def test_module_entry_point_and_help():
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "rnnkit", "--help"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "rnnkit demo" in out.stdout and "rnnkit generate" in out.stdout


@pytest.mark.parametrize("split, message", [
    ("test", "no 'test' split in corpus 'tiny.txt' (a text file is split train/valid); use --split valid or --file"),
    ("bogus", "split 'bogus'; expected one of ['valid']"),
    ("train", "split 'train'; expected one of ['valid']"),
])
def test_evaluate_a_split_the_corpus_lacks_is_an_error(trained, capsys, split, message):
    """A text corpus has train/valid only: the default --split test once printed {} and exited 0."""
    _, run_dir = trained
    ckpt = str(run_dir / "checkpoints" / "best.safetensors")
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", ckpt, "--split", split]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"rnnkit evaluate: error: {message}" in captured.err
    # the trainer still gets {} for the missing test split at the end of a run
    assert get_task("lm").from_checkpoint(ckpt).evaluate("test") == {}
    assert cli.main(["evaluate", "--checkpoint", ckpt, "--split", "val"]) == 0  # the alias every task takes
    assert '"ppl"' in capsys.readouterr().out


def _demo_config_json(run_dir: Path) -> dict:
    """The config.json that ``rnnkit demo --run-dir run_dir`` writes."""
    from rnnkit.tasks.lm import LMTaskConfig
    from rnnkit.train.trainer import TrainConfig

    preset = cli._preset("demo")
    train = TrainConfig(**{**preset["train"], "run_dir": str(run_dir), "overwrite": True})
    task = LMTaskConfig(**{k: v for k, v in preset["task"].items() if k != "name"})
    return json.loads(json.dumps({"train": dataclasses.asdict(train), "task": {"name": "lm", **dataclasses.asdict(task)}}))


class _Built(Exception):
    """Raised where the demo would start building its task: the run dir was accepted."""


@pytest.fixture
def demo_stops_at_the_build(monkeypatch):
    from rnnkit.tasks.lm import LanguageModelTask

    def refuse(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(LanguageModelTask, "from_config", refuse)


def test_demo_refuses_a_run_dir_that_is_not_an_earlier_demos(tmp_path, capsys, demo_stops_at_the_build):
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "ckpt-10.safetensors").write_bytes(b"another run's")
    (other / "config.json").write_text(json.dumps({"train": {"epochs": 3}, "task": {"name": "lm"}}))
    assert cli.main(["demo", "--run-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--run-dir {other} is not empty and not an earlier demo's run dir" in err and "Traceback" not in err
    assert (other / "checkpoints" / "ckpt-10.safetensors").read_bytes() == b"another run's"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert cli.main(["demo", "--run-dir", str(tmp_path / "notes")]) == 2
    # accepted: a missing or empty directory, or an earlier demo's (which it overwrites)
    for run_dir in (tmp_path / "missing", tmp_path / "empty", tmp_path / "demo"):
        if run_dir.name != "missing":
            run_dir.mkdir()
        if run_dir.name == "demo":
            (run_dir / "config.json").write_text(json.dumps(_demo_config_json(run_dir)))
        with pytest.raises(_Built):
            cli.main(["demo", "--run-dir", str(run_dir), "--minutes", "0.5"])


@pytest.mark.parametrize("minutes", ["-1", "0", "nan", "inf"])
def test_demo_minutes_must_be_positive(minutes, tmp_path, capsys, demo_stops_at_the_build):
    assert cli.main(["demo", "--run-dir", str(tmp_path / "d"), "--minutes", minutes]) == 2
    assert f"--minutes {float(minutes)!r}; expected a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_train_refuses_a_run_dir_holding_a_users_files(trained, tmp_path, capsys):
    corpus, _ = trained
    (tmp_path / "result.json").write_text('{"mine": 1}')
    argv = ["train", "--corpus", str(corpus), "--epochs", "1", "--max-steps", "2", "--run-dir", str(tmp_path), *TINY]
    assert cli.main(argv) == 2
    assert "already holds files of a run (result.json); overwrite to replace them" in capsys.readouterr().err
    assert (tmp_path / "result.json").read_text() == '{"mine": 1}'
    assert cli.main([*argv, "--overwrite"]) == 0


def test_train_refuses_invalid_values_naming_them(capsys):
    for flag, value, message in [("--clip", "-1", "clip -1.0; expected >= 0 (0: no clipping)"),
                                 ("--time-budget", "nan", "time_budget nan"),
                                 ("--lr-factor", "-1", "lr_factor -1.0; expected > 0")]:
        assert cli.main(["train", flag, value, "--schedule", "step"]) == 2
        assert message in capsys.readouterr().err


def test_resume_extending_a_cosine_run_says_the_schedule_changed(trained, tmp_path, capsys):
    corpus, _ = trained
    run = ["--run-dir", str(tmp_path), *TINY]
    assert cli.main(["train", "--corpus", str(corpus), "--epochs", "1", "--schedule", "cosine", *run]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--epochs", "2", *run]) == 0
    out = capsys.readouterr().out
    assert "note: the cosine schedule's parameters differ from the checkpoint's (total_steps" in out
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["split"] == "epoch"]
    assert lrs[0] == 0 and lrs[1] == 0 and max(r["lr"] for r in rows if r["split"] == "train" and r["epoch"] == 1) > 1e-4


@pytest.mark.parametrize("name", ["native", "fused"])
def test_train_says_which_kernels_it_runs(tmp_path, capsys, name):
    from rnnkit import kernels

    if name == "native" and not kernels.native.available():
        pytest.skip("native kernels not built")
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(bundled_text()[:3_000], encoding="utf-8")
    with kernels.using(name):
        assert cli.main(["train", "--corpus", str(corpus), "--max-steps", "1", "--run-dir", str(tmp_path / "r"),
                         *TINY]) == 0
    out = capsys.readouterr().out
    assert ("kernels: native (C, float32)" if name == "native" else "kernels: fused (NumPy)") in out


# ----------------------------------------------------------------------------------- the task's name, config files
def test_task_name_follows_the_documented_precedence(tmp_path, monkeypatch):
    """defaults < a resumed run's config.json < --preset < --config < flags, for the task's name too."""
    monkeypatch.chdir(tmp_path)
    forecast = tmp_path / "fc.toml"
    forecast.write_text('[task]\nname = "forecast"\n', encoding="utf-8")
    assert cli._task_name(["--preset", "demo", "--config", str(forecast)]) == "forecast"  # --config beats --preset
    assert cli._task_name(["--preset", "demo", "--config", str(forecast), "--task", "seq2seq"]) == "seq2seq"
    assert cli._task_name(["--preset", "demo"]) == "lm"
    # --resume finds config.json in the run_dir a --config file gives, not only in --run-dir or runs/latest
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"train": {"run_dir": str(run_dir)},
                                                     "task": {"name": "seq2seq"}}), encoding="utf-8")
    resume = tmp_path / "resume.toml"
    resume.write_text(f'[train]\nrun_dir = "{run_dir.as_posix()}"\nmax_steps = 9\n', encoding="utf-8")
    assert cli._task_name(["--resume", "--config", str(resume)]) == "seq2seq"
    assert cli._task_name(["--resume", "--run-dir", str(run_dir)]) == "seq2seq"
    assert cli._task_name(["--resume", "--config", str(resume), "--run-dir", str(tmp_path / "none")]) == "lm"
    resume.write_text(f'[train]\nrun_dir = "{run_dir.as_posix()}"\n[task]\nname = "classify"\n', encoding="utf-8")
    assert cli._task_name(["--resume", "--config", str(resume)]) == "classify"  # --config beats the saved run's


@pytest.mark.parametrize("name, content, message", [
    ("five.json", b"5", "config file {p}: holds int 5; expected a table with [train] and [task] sections"),
    ("list.json", b"[1]", "config file {p}: holds list [1]; expected a table"),
    ("t5.json", b'{"train": 5}', "config file {p}: section 'train' is int 5; expected a table"),
    ("tl.json", b'{"task": "lm"}', "config file {p}: section 'task' is str 'lm'; expected a table"),
    ("n.json", b'{"task": {"name": 5}}', "task name 5; expected a string"),
    ("bin.toml", b"\xff\xfe[train]", "config file {p}: cannot read ('utf-8' codec can't decode"),
    ("c.yaml", b"[train]\nlr = 1\n", "config file {p}: extension '.yaml'; expected .toml or .json"),
    ("c.JSON", b'{"train": {"lr": 1}', "config file {p}: not valid JSON"),
    ("c.TOML", b"[train]\nlr = \n", "config file {p}: not valid TOML"),
    ("d.toml", None, "config file {p} is a directory"),
])
def test_malformed_config_files_are_clear_errors(tmp_path, capsys, monkeypatch, name, content, message):
    monkeypatch.chdir(tmp_path)  # a file wrongly accepted must not train into the checkout's runs/
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert cli.main(["train", "--config", str(path), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert message.format(p=path) in err and "Traceback" not in err


def test_config_file_suffix_is_case_insensitive_like_load_config(tmp_path):
    path = tmp_path / "c.JSON"
    path.write_text('{"train": {"lr": 0.5}, "task": {"hidden_size": 7}}', encoding="utf-8")
    args = cli.build_train_parser(get_task("lm")).parse_args(["--config", str(path)])
    train_config, task_config = cli.resolve_train_config(get_task("lm"), args)
    assert train_config.lr == 0.5 and task_config.hidden_size == 7
