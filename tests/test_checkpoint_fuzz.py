"""Fuzzing the checkpoint loader: any byte-level damage either loads or raises CheckpointError.

No other exception type may escape (a KeyError, UnicodeDecodeError, struct.error or a
MemoryError from a forged length would be a bug), and nothing is ever executed.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

TENSORS = {"rnn.weight_ih_l0": np.arange(24, dtype=np.float32).reshape(8, 3), "step": np.array([7], dtype=np.int64)}
META = {"config": {"hidden_size": 2, "cell": "lstm"}, "vocab": {"itos": ["<unk>", "a", "b"]}, "epoch": 3}


def _valid_bytes(tmp_path, suffix):
    path = save_checkpoint(tmp_path / f"valid{suffix}", TENSORS, META)
    return path.read_bytes()


def _load_or_reject(tmp_path, data: bytes, suffix: str):
    path = tmp_path / f"fuzzed{suffix}"
    path.write_bytes(data)
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path.name) in str(exc) or "fuzzed" in str(exc)
        return None
    assert isinstance(meta, dict) and all(isinstance(v, np.ndarray) for v in tensors.values())
    return tensors, meta


damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
)


def _apply(data: bytes, op) -> bytes:
    kind, pos, value = op
    pos = pos % (len(data) + 1)
    if kind == "flip" and pos < len(data):
        return data[:pos] + bytes([data[pos] ^ value]) + data[pos + 1 :]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + bytes([value]) + data[pos:]
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(damage, min_size=1, max_size=3), suffix=st.sampled_from([".safetensors", ".npz"]))
def test_damaged_checkpoint_loads_or_raises_checkpoint_error(tmp_path, ops, suffix):
    data = _valid_bytes(tmp_path, suffix)
    for op in ops:
        data = _apply(data, op)
    _load_or_reject(tmp_path, data, suffix)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=512), suffix=st.sampled_from([".safetensors", ".npz"]))
def test_random_bytes_are_rejected(tmp_path, blob, suffix):
    assert _load_or_reject(tmp_path, blob, suffix) is None
