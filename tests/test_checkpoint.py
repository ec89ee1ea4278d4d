"""Checkpoints: round trips, atomic writes, hostile and broken files, and SIGKILL mid-save."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import rnnkit
from rnnkit.checkpoint import (CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint,
                               write_json_atomic, write_text_atomic)
from script_helpers import load_script

bad = load_script(Path(__file__).parent / "fixtures" / "make_bad_checkpoints.py")


def sample_tensors():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    return {
        "encoder.rnn.weight_ih_l0": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "transposed": base.T,                                   # not contiguous
        "strided": base[:, ::2],
        "big_endian": np.arange(5, dtype=">f4"),
        "optim.encoder.rnn.weight_ih_l0.m": np.full((3, 4), 0.5, np.float32),
        "optim.step": np.array(7, dtype=np.int64),                # 0-d
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
        "ids": np.arange(6, dtype=np.int32),
    }


def sample_meta():
    rng = np.random.default_rng(1234)
    rng.random(5)
    return {
        "model": "LanguageModel",
        "config": {"hidden_size": 128, "cell": "lstm", "sizes": (1, 2), "dropout": 0.25, "path": None},
        "vocab": ["<pad>", "<unk>", "a", "é", "\u2603"],
        "token_ids": {"__init__": 0, "__label__pos": 1, "__": 2},   # ordinary dunder-ish tokens are data
        "trainer": {"epoch": 3, "step": np.int64(1200), "best_metric": float("inf"), "lr": np.float32(0.5),
                    "rng": rng.bit_generator.state},
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_keeps_every_tensor_and_the_metadata(tmp_path, suffix):
    tensors, meta = sample_tensors(), sample_meta()
    path = save_checkpoint(tmp_path / f"run{suffix}", tensors, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].shape == value.shape and loaded[name].dtype == value.dtype.newbyteorder("=")
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].flags.writeable
    assert loaded_meta == json.loads(json.dumps(meta, default=lambda v: v.item()))
    assert loaded_meta["config"]["sizes"] == [1, 2]           # tuples come back as lists
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded_meta["trainer"]["rng"]
    expected = np.random.default_rng(1234)
    expected.random(5)
    np.testing.assert_array_equal(restored.random(4), expected.random(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"run{suffix}"]   # no temp files left


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    path = save_checkpoint(tmp_path / "a.safetensors", {"w": np.ones(3, np.float32)}, {"step": 2})
    with safe_open(path, framework="np") as f:
        assert list(f.keys()) == ["w"]
        meta = json.loads(f.metadata()["rnnkit"])
        assert meta.pop("tensor_sha256") and meta.pop("meta_sha256") and meta == {"format_version": 2, "step": 2}


def test_a_flipped_bit_in_the_metadata_is_refused(tmp_path):
    """The tensors' checksum does not cover the metadata: a vocabulary letter or a config
    number changed by one bit, still valid JSON, used to load as a different model."""
    path = save_checkpoint(tmp_path / "a.safetensors", {"w": np.ones(3, np.float32)},
                           {"vocab": ["a", "b"], "dropout": 0.0})
    good = path.read_bytes()
    for old, new in ((b'\\"a\\"', b'\\"`\\"'), (b"0.0", b"0.1")):  # the JSON string inside the header's JSON
        assert good.count(old) == 1
        path.write_bytes(good.replace(old, new))
        with pytest.raises(CheckpointError, match="metadata does not match its SHA-256 checksum"):
            load_checkpoint(path)
    path.write_bytes(good)
    assert load_checkpoint(path)[1] == {"vocab": ["a", "b"], "dropout": 0.0}


def test_format_1_files_without_a_metadata_checksum_still_load(tmp_path):
    from rnnkit.checkpoint import _digest
    from safetensors.numpy import save

    arrays = {"w": np.ones(3, np.float32)}
    text = json.dumps({"format_version": 1, "tensor_sha256": _digest(arrays), "step": 7})
    (tmp_path / "v1.safetensors").write_bytes(save(arrays, metadata={"rnnkit": text}))
    tensors, meta = load_checkpoint(tmp_path / "v1.safetensors")
    assert meta == {"step": 7} and tensors["w"].tolist() == [1, 1, 1]
    # a format-2 file must have one
    text = json.dumps({"format_version": 2, "tensor_sha256": _digest(arrays), "step": 7})
    (tmp_path / "v2.safetensors").write_bytes(save(arrays, metadata={"rnnkit": text}))
    with pytest.raises(CheckpointError, match="no meta_sha256 checksum"):
        load_checkpoint(tmp_path / "v2.safetensors")


@pytest.mark.parametrize("tensors, meta, message", [
    ({"w": np.ones(2)}, [1, 2], "meta is a list"),
    ({"w": np.ones(2)}, {"format_version": 3}, "'format_version' is reserved"),
    ({"w": np.ones(2)}, {"a": {"b": object()}}, "meta.a.b is a object"),
    ({"w": np.ones(2)}, {"rng": np.zeros(3)}, "store arrays as tensors"),
    ({"w": np.ones(2)}, {"a": {1: 2}}, "key 1 of type int"),
    ({"w": np.ones(2)}, {"a": [{"__class__": "x"}]}, "meta.a[0] has key '__class__', an object-serialisation"),
    ({"w": np.ones(2)}, {"a": {"py/reduce": []}}, "key 'py/reduce'"),
    ({"w": [1.0, 2.0]}, {}, "tensor 'w' is a list"),
    ({"w": np.array([object()])}, {}, "tensor 'w' has dtype object"),
    ({"w": np.array(["text"])}, {}, "tensor 'w' has dtype <U4"),
    ({"": np.ones(2)}, {}, "tensor name ''"),
    ({"__metadata__": np.ones(2)}, {}, "tensor name '__metadata__'"),
    ([np.ones(2)], {}, "tensors is a list"),
])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_rejects_what_it_could_not_load_back(tmp_path, tensors, meta, message, suffix):
    path = tmp_path / f"x{suffix}"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, tensors, meta)
    assert message in str(info.value) and str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, failing):
    path = save_checkpoint(tmp_path / "a.safetensors", {"w": np.zeros(3)}, {"step": 1})

    def boom(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": np.ones(3)}, {"step": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(path)
    assert meta == {"step": 1} and (tensors["w"] == 0).all()
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_atomic_text_and_json_helpers(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "metrics.json", {"loss": 1.5, "ppl": [1, 2]})
    assert json.loads(path.read_text()) == {"loss": 1.5, "ppl": [1, 2]}
    write_text_atomic(path, "replaced\n")
    assert path.read_text() == "replaced\n"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


# ----------------------------------------------------------------------------- broken and hostile files
def test_every_broken_file_raises_a_named_error(tmp_path):
    cases = bad.build_all(tmp_path)
    assert load_checkpoint(tmp_path / "good.safetensors")[1] == {"step": 3}   # the base file is fine
    assert load_checkpoint(tmp_path / "good.npz")[1] == {}
    problems = []
    for name, path, message in cases:
        try:
            load_checkpoint(path)
            problems.append(f"{name}: loaded without error")
        except CheckpointError as e:
            if message not in str(e) or str(path) not in str(e):
                problems.append(f"{name}: expected {message!r} and the file name in: {e}")
    assert not problems, "\n".join(problems)


def test_pickle_inside_npz_is_never_executed(tmp_path):
    # The payload is live: unpickling it really does create its marker...
    live_marker = tmp_path / "live_marker"
    with np.load(bad.pickle_npz(tmp_path / "live.npz", live_marker), allow_pickle=True) as archive:
        archive["evil"]
    assert live_marker.exists()
    # ...and load_checkpoint refuses it without running it.
    marker = tmp_path / "marker"
    path = bad.pickle_npz(tmp_path / "evil.npz", marker)
    with pytest.raises(CheckpointError, match="pickled object array; refusing to unpickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such file"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_expected_names_each_missing_unexpected_wrong_shape_and_dtype(tmp_path, suffix):
    path = save_checkpoint(tmp_path / f"m{suffix}", {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32),
                                                     "extra": np.zeros(1)}, {})
    expected = {"w": ((3, 2), np.float32), "b": ((3,), np.float64), "gone": ((1,), np.float32)}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expected)
    text = str(info.value)
    for part in ["missing tensors ['gone']", "unexpected tensors ['extra']",
                 "tensor 'w' has shape (2, 3); expected (3, 2)", "tensor 'b' has dtype float32; expected float64"]:
        assert part in text
    ok = {"w": np.zeros((2, 3), np.float32), "b": (None, None)}   # arrays as specs, None = any
    assert set(load_checkpoint(path, ok, strict=False)[0]) == {"w", "b", "extra"}
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['extra'\]"):
        load_checkpoint(path, ok)


def test_check_finite_is_opt_in(tmp_path):
    path = save_checkpoint(tmp_path / "n.safetensors", {"w": np.array([1.0, np.nan, np.inf], np.float32),
                                                        "ids": np.arange(3)}, {})
    load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"tensor 'w' has 2 non-finite values"):
        load_checkpoint(path, check_finite=True)


# ----------------------------------------------------------------------------- manager
def test_manager_keeps_the_newest_points_latest_and_best(tmp_path):
    manager = CheckpointManager(tmp_path / "run", keep=2)
    assert manager.latest() is None and manager.best() is None and manager.checkpoints() == []
    for step in range(1, 6):
        manager.save(step, {"w": np.full(4, step, np.float32)}, {"step": step}, best=step == 3)
    assert [p.name for p in manager.checkpoints()] == ["ckpt-4.safetensors", "ckpt-5.safetensors"]
    assert manager.latest().name == "ckpt-5.safetensors"
    assert load_checkpoint(manager.best())[1] == {"step": 3}
    named = manager.save("final", {"w": np.zeros(4, np.float32)}, {"step": 6})
    assert named.name == "ckpt-final.safetensors" and manager.latest() == named
    assert len(manager.checkpoints()) == 2


def test_manager_ignores_temp_files_and_a_bad_pointer(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(10, {"w": np.zeros(2)}, {"step": 10})
    stale = tmp_path / ".ckpt-11.safetensors.0123456789abcdef.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert manager.latest().name == "ckpt-10.safetensors"
    for pointer in ["../../etc/passwd", ".ckpt-11.safetensors.0123456789abcdef.tmp", "ckpt-99.safetensors", ""]:
        (tmp_path / "latest").write_text(pointer)
        assert manager.latest().name == "ckpt-10.safetensors"   # falls back to the highest step
    manager.save(11, {"w": np.ones(2)}, {"step": 11})
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-10.safetensors", "ckpt-11.safetensors", "latest"]


@pytest.mark.parametrize("step", [-1, True, 1.5, "../x", ".hidden", "a/b", ""])
def test_manager_rejects_bad_steps(tmp_path, step):
    with pytest.raises(CheckpointError, match="checkpoint step or name"):
        CheckpointManager(tmp_path).save(step, {"w": np.zeros(1)}, {})


def test_manager_rejects_bad_keep(tmp_path):
    with pytest.raises(ValueError, match="keep=0; expected an integer >= 1"):
        CheckpointManager(tmp_path, keep=0)


CHILD = """
import sys
import numpy as np
from rnnkit.checkpoint import CheckpointManager, load_checkpoint

manager = CheckpointManager(sys.argv[1], keep=2)
latest = manager.latest()
step = load_checkpoint(latest)[1]["step"] + 1 if latest else 0
while True:
    tensors = {"weight": np.full((512, 1024), step, np.float32),    # 2 MiB
               "optim.weight.m": np.full(300_000, step, np.float64),  # 2.3 MiB
               "optim.step": np.array(step)}
    manager.save(step, tensors, {"step": step, "trainer": {"epoch": step // 10}}, best=step % 3 == 0)
    print(step, flush=True)
    step += 1
"""


def _assert_complete(path: Path) -> int:
    tensors, meta = load_checkpoint(path, {"weight": ((512, 1024), np.float32),
                                           "optim.weight.m": ((300_000,), np.float64), "optim.step": ((), np.int64)})
    step = meta["step"]
    assert meta["trainer"] == {"epoch": step // 10}
    assert all((value == step).all() for value in tensors.values()), f"{path.name} mixes steps"
    return step


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_at_random_moments_never_corrupts_latest(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(rnnkit.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    rng, previous, deadline = random.Random(0), -1, time.monotonic() + 15
    manager = CheckpointManager(tmp_path, keep=2)
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=env)
        assert child.stdout.readline(), "child died before its first save"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        step = _assert_complete(manager.latest())
        assert manager.latest().name == f"ckpt-{step}.safetensors" and step > previous
        if manager.best() is not None:
            assert _assert_complete(manager.best()) % 3 == 0
        names = [p.name for p in tmp_path.iterdir()]
        assert all(n.startswith(".") and n.endswith(".tmp") for n in names
                   if n not in {"latest", "best.safetensors"} and not n.startswith("ckpt-"))
        assert len(manager.checkpoints()) <= 3   # keep=2, plus one if killed before pruning
        previous = step
        if time.monotonic() > deadline:
            break
    manager.save(previous + 1, {"weight": np.zeros(1)}, {"step": previous + 1})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_flipped_bit_in_tensor_data_is_detected(tmp_path, suffix):
    """safetensors has no checksum of its own; the stored SHA-256 catches silent data damage."""
    values = np.arange(64, dtype=np.float32)
    path = save_checkpoint(tmp_path / f"c{suffix}", {"w": values}, {"step": 1})
    data = bytearray(path.read_bytes())
    pos = bytes(data).find(values[40:44].tobytes())  # inside the tensor payload
    assert pos > 0
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum|corrupted|CRC"):
        load_checkpoint(path)
