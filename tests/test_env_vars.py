"""The RNNKIT_* environment variables: switches, counts and the data folder are checked, naming the variable."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rnnkit.data.text import shared_data_dir
from rnnkit.kernels import native


def import_rnnkit(**env) -> subprocess.CompletedProcess:
    code = "import rnnkit; from rnnkit.kernels import cuda, native; print(native.available(), cuda.persistent_enabled())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.parametrize("name, value, expected", [
    ("RNNKIT_SPIN_US", "x", "an integer number of microseconds (0 to 100,000"),
    ("RNNKIT_NUM_THREADS", "1.5", "an integer number of threads >= 1"),
    ("RNNKIT_NUM_THREADS", "0", "an integer number of threads >= 1"),
    ("RNNKIT_NATIVE", "maybe", "expected 1/true/on/yes or 0/false/off/no"),
    ("RNNKIT_CUDA_PERSISTENT", "sure", "expected 1/true/on/yes or 0/false/off/no (unset: off)"),
])
def test_a_bad_value_fails_the_import_naming_the_variable(name, value, expected):
    out = import_rnnkit(**{name: value})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ValueError: environment variable {name}={value!r}; ") and expected in last, out.stderr
    assert "invalid literal" not in out.stderr and "During handling" not in out.stderr


def test_switches_accept_the_usual_spellings_at_import():
    out = import_rnnkit(RNNKIT_NATIVE=" Off ", RNNKIT_CUDA_PERSISTENT="YES", RNNKIT_SPIN_US=" 250 ")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("value, flag", [("1", True), ("true", True), (" ON ", True), ("Yes", True),
                                         ("0", False), ("FALSE", False), ("off", False), ("no", False),
                                         ("", None), ("  ", None)])
def test_env_flag_spellings(monkeypatch, value, flag):
    monkeypatch.setenv("RNNKIT_OPENBLAS_HOOK", value)
    for default in (True, False):
        assert native.env_flag("RNNKIT_OPENBLAS_HOOK", default) is (default if flag is None else flag)


@pytest.mark.parametrize("value", ["2", "enable", "1.0", "y"])
def test_env_flag_refuses_anything_else(monkeypatch, value):
    monkeypatch.setenv("RNNKIT_MALLOC_TUNING", value)
    with pytest.raises(ValueError, match=f"environment variable RNNKIT_MALLOC_TUNING={value!r}; expected 1/true"):
        native.env_flag("RNNKIT_MALLOC_TUNING", True)
    with pytest.raises(ValueError, match="RNNKIT_MALLOC_TUNING"):
        native.check_environment()


def test_spin_us_is_clamped_to_its_documented_range(monkeypatch):
    low, high = native.SPIN_US_RANGE
    for value, expected in [("", native.SPIN_US), ("0", 0), ("750", 750), ("-5", low), ("99999999", high)]:
        monkeypatch.setenv("RNNKIT_SPIN_US", value)
        assert native.spin_us() == expected
    monkeypatch.setenv("RNNKIT_SPIN_US", "0.5ms")
    with pytest.raises(ValueError, match="environment variable RNNKIT_SPIN_US='0.5ms'"):
        native.spin_us()


@pytest.mark.parametrize("value", ["x", "1.5", "0", "-3"])
def test_num_threads_refuses_what_is_not_a_count_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("RNNKIT_NUM_THREADS", value)
    with pytest.raises(ValueError, match=f"environment variable RNNKIT_NUM_THREADS={value!r}; expected an integer"):
        native.num_threads()
    with pytest.raises(ValueError, match="RNNKIT_NUM_THREADS"):
        native.check_environment()


def test_num_threads_reads_a_count(monkeypatch):
    monkeypatch.setenv("RNNKIT_NUM_THREADS", " 3 ")
    assert native.num_threads() == 3
    monkeypatch.setenv("RNNKIT_NUM_THREADS", "")
    assert native.num_threads() >= 1


def test_rnnkit_data_naming_a_missing_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    missing = tmp_path / "missing"
    monkeypatch.setenv("RNNKIT_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match=f"RNNKIT_DATA={str(missing)!r} is not a folder"):
        shared_data_dir()
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "file"))
    with pytest.raises(FileNotFoundError, match="RNNKIT_DATA="):
        shared_data_dir()
    monkeypatch.setenv("RNNKIT_DATA", "")
    assert shared_data_dir() is None
    monkeypatch.delenv("RNNKIT_DATA")
    assert shared_data_dir() is None
