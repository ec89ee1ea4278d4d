"""Typed configs: strict from_dict, TOML/JSON files, overrides, round trips."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from rnnkit.config import (ConfigError, from_dict, load_config, merge_overrides, parse_overrides, save_config,
                           to_dict)


@dataclass
class ModelConfig:
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    hidden_size: int = 128
    dropout: float = 0.0
    bidirectional: bool = False
    sizes: tuple[int, ...] = (64, 64)
    pair: tuple[int, str] = (1, "a")
    tags: list[str] = field(default_factory=list)
    max_len: Optional[int] = None
    vocab_path: Path | None = None
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    lr: float = 1e-3
    epochs: int = 1
    clip: float | None = 5.0

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs {self.epochs}; need epochs >= 1")


@dataclass
class RunConfig:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0


def test_from_dict_builds_nested_dataclasses_and_converts():
    config = from_dict(RunConfig, {"name": "ptb", "model": {"cell": "gru", "sizes": [32, 16], "pair": [2, "b"],
                                                            "vocab_path": "data/vocab.json", "max_len": None,
                                                            "weights": {"a": 1}},
                                   "train": {"lr": 1, "clip": None}})
    assert config.model == ModelConfig(cell="gru", sizes=(32, 16), pair=(2, "b"), vocab_path=Path("data/vocab.json"),
                                       weights={"a": 1.0})
    assert config.train.lr == 1.0 and type(config.train.lr) is float      # int accepted for float
    assert config.train.clip is None and config.seed == 0


def test_unknown_key_is_named_with_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, {"name": "x", "model": {"hiden_size": 3}})
    text = str(info.value)
    assert "RunConfig.model: unknown key 'hiden_size'" in text and "did you mean 'hidden_size'?" in text
    assert "valid keys: cell, hidden_size, dropout, bidirectional, sizes" in text
    with pytest.raises(ConfigError, match="RunConfig: unknown key 'optimizer'; valid keys: name, model, train, seed"):
        from_dict(RunConfig, {"name": "x", "optimizer": "adam"})


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "hidden_size", "128", "RunConfig.model.hidden_size: got str '128'; expected int"),
    ("model", "hidden_size", 1.5, "got float 1.5; expected int"),
    ("model", "hidden_size", True, "got bool True; expected int"),
    ("model", "dropout", "0.1", "RunConfig.model.dropout: got str '0.1'; expected float"),
    ("model", "dropout", False, "got bool False; expected float"),
    ("model", "bidirectional", 1, "got int 1; expected bool"),
    ("model", "cell", "transformer", "got str 'transformer'; expected one of 'rnn', 'lstm', 'gru'"),
    ("model", "sizes", [1, "x"], "RunConfig.model.sizes[1]: got str 'x'; expected int"),
    ("model", "sizes", 3, "got int 3; expected tuple[int, ...]"),
    ("model", "pair", [1], "got 1 items list [1]; expected tuple[int, str]"),
    ("model", "tags", "abc", "got str 'abc'; expected list[str]"),
    ("model", "max_len", "x", "RunConfig.model.max_len: got str 'x'; expected int"),
    ("model", "vocab_path", 3, "got int 3; expected a path string"),
    ("model", "weights", {"a": "b"}, "RunConfig.model.weights.a: got str 'b'; expected float"),
    ("train", "clip", "none", "RunConfig.train.clip: got str 'none'; expected float"),
    ("train", "epochs", 0, "RunConfig.train: epochs 0; need epochs >= 1"),
])
def test_wrong_types_name_the_key_value_and_expectation(section, key, value, message):
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, {"name": "x", section: {key: value}})
    assert message in str(info.value)


def test_sections_and_required_keys():
    with pytest.raises(ConfigError, match="RunConfig.model: got int 3; expected a table of ModelConfig fields"):
        from_dict(RunConfig, {"name": "x", "model": 3})
    with pytest.raises(ConfigError, match=r"RunConfig: missing required keys \['name'\]"):
        from_dict(RunConfig, {})
    with pytest.raises(TypeError, match="needs a dataclass type"):
        from_dict(dict, {})


def test_to_dict_round_trips_through_json():
    config = RunConfig(name="x", model=ModelConfig(sizes=(1, 2, 3), vocab_path=Path("v.json")))
    plain = to_dict(config)
    assert plain["model"]["sizes"] == [1, 2, 3] and plain["model"]["vocab_path"] == "v.json"
    assert from_dict(RunConfig, json.loads(json.dumps(plain))) == config


def test_merge_overrides_dotted_and_nested_without_mutating():
    base = {"name": "x", "train": {"lr": 0.1, "epochs": 3}}
    merged = merge_overrides(base, {"train.lr": 0.5, "model": {"cell": "gru"}, "train": {"epochs": 9}})
    assert merged == {"name": "x", "train": {"lr": 0.5, "epochs": 9}, "model": {"cell": "gru"}}
    assert base == {"name": "x", "train": {"lr": 0.1, "epochs": 3}}
    with pytest.raises(ConfigError, match="override 'name.first': name is str 'x', not a section"):
        merge_overrides(base, {"name.first": "y"})
    with pytest.raises(ConfigError, match="override key 'train..lr'"):
        merge_overrides(base, {"train..lr": 1})


def test_parse_overrides_reads_json_values_else_strings():
    assert parse_overrides(["train.lr=1e-3", "model.cell=gru", "model.sizes=[8, 8]", "model.bidirectional=true",
                            "model.max_len=null", "name=a=b"]) == {
        "train.lr": 0.001, "model.cell": "gru", "model.sizes": [8, 8], "model.bidirectional": True,
        "model.max_len": None, "name": "a=b"}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.lr"])


TOML = """
name = "ptb-small"
seed = 7

[model]
cell = "gru"
sizes = [256, 256]

[train]
lr = 1
"""


def test_load_config_toml_and_json_with_overrides(tmp_path):
    toml_path = tmp_path / "preset.toml"
    toml_path.write_text(TOML)
    config = load_config(RunConfig, toml_path, overrides={"train.epochs": 4})
    assert config == RunConfig(name="ptb-small", seed=7, model=ModelConfig(cell="gru", sizes=(256, 256)),
                               train=TrainConfig(lr=1.0, epochs=4))
    saved = save_config(config, tmp_path / "run" / "config.json")
    assert load_config(RunConfig, saved) == config


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_config(RunConfig, tmp_path / "missing.toml")
    preset = tmp_path / "preset.py"
    preset.write_text("import os; os.system('echo pwned')")
    with pytest.raises(ConfigError, match=r"preset.py: extension '.py'; expected .toml or .json"):
        load_config(RunConfig, preset)          # presets are data, never code
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML \(.*line 1"):
        load_config(RunConfig, broken)
    typo = tmp_path / "typo.json"
    typo.write_text('{"name": "x", "trian": {}}')
    with pytest.raises(ConfigError, match=r"typo.json: RunConfig: unknown key 'trian' \(did you mean 'train'\?\)"):
        load_config(RunConfig, typo)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="list.json: RunConfig: got list"):
        load_config(RunConfig, listed)


def test_read_config_file_checks_the_sections_and_names_the_file(tmp_path):
    from rnnkit.config import read_config_file

    upper = tmp_path / "c.JSON"
    upper.write_text('{"train": {"lr": 1}}')
    assert read_config_file(upper, sections=("train", "task")) == {"train": {"lr": 1}}
    for text, message in [("5", "holds int 5; expected a table with [train] and [task] sections"),
                          ('{"train": [1]}', "section 'train' is list [1]; expected a table"),
                          ('{"model": {}}', r"unknown section(s) ['model']; expected [train] and [task]")]:
        upper.write_text(text)
        with pytest.raises(ConfigError) as info:
            read_config_file(upper, sections=("train", "task"))
        assert str(info.value).startswith(f"config file {upper}: ") and message in str(info.value)
    folder = tmp_path / "d.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="d.toml is a directory"):
        load_config(RunConfig, folder)
    undecodable = tmp_path / "bin.toml"
    undecodable.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin.toml: cannot read \('utf-8' codec"):
        read_config_file(undecodable)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="list.json: RunConfig: got list"):  # overrides or not
        load_config(RunConfig, listed, overrides={"train.epochs": 4})
