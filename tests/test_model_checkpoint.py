"""Model.save / Model.load: dtype kept, hostile metadata refused by name, all-or-nothing loads."""
from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rnnkit.models.base import Model
from rnnkit.models.forecaster import Forecaster, ForecasterConfig


def forecaster(dtype=None):
    return Forecaster(ForecasterConfig(hidden_size=4), input_size=2, dtype=dtype, seed=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_keeps_the_files_dtype(tmp_path, dtype):
    model = forecaster(dtype)
    model.save(tmp_path / "m.safetensors")
    again = Model.load(tmp_path / "m.safetensors")
    assert again.dtype == dtype
    for (n, p, _), (_, q, _) in zip(model.named_parameters(), again.named_parameters()):
        np.testing.assert_array_equal(p, q, err_msg=n)  # bit-exact: no trip through float32
    assert Model.load(tmp_path / "m.safetensors", dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("change, message", [
    ({"model": ["Forecaster"]}, "holds a ['Forecaster'] model; expected Model"),
    ({"extra": "abc"}, "its 'extra' is a str; expected an object"),
    ({"config": "abc"}, "its 'config' is a str; expected an object"),
    ({"config": {"hidden_size": "four"}}, "cannot rebuild the Forecaster it holds"),
    ({"extra": {"input_size": [1, 2]}}, "cannot rebuild the Forecaster it holds"),
])
def test_hostile_metadata_is_refused_naming_the_file(tmp_path, change, message):
    """Metadata a tool wrote on purpose passes both checksums: its content must still be checked."""
    forecaster().save(tmp_path / "m.safetensors")
    tensors, meta = load_checkpoint(tmp_path / "m.safetensors")
    meta.update(change)
    path = save_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError) as info:
        Model.load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_load_state_dict_is_all_or_nothing():
    layer = rnnkit.LSTM(3, 4, num_layers=2, seed=0)
    before = {n: p.copy() for n, p in layer.state_dict().items()}
    state = {n: np.full_like(p, 7.0) for n, p in before.items()}
    state["weight_hh_l1"] = np.zeros((16, 5), np.float32)  # a later parameter of the wrong shape
    with pytest.raises(ValueError, match=r"parameter 'weight_hh_l1' has shape \(16, 5\); expected \(16, 4\)"):
        layer.load_state_dict(state)
    for n, p in layer.state_dict().items():
        np.testing.assert_array_equal(p, before[n], err_msg=n)  # nothing copied
