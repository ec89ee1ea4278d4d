"""Typed configs: nested dataclasses read from TOML/JSON files and command-line overrides.

A config is a plain dataclass whose fields have defaults; a section is a nested
dataclass. :func:`from_dict` builds one from parsed data and checks it strictly: an
unknown key or a value of the wrong type is a :class:`ConfigError` naming the key path,
the bad value and what was expected, because a typo in a config file must never be
silently ignored. Presets are data files read with :func:`load_config`; nothing is
imported or executed.

Supported field types: ``bool``, ``int``, ``float`` (an int is accepted and converted),
``str``, ``pathlib.Path`` (from a string), ``Literal[...]``, ``X | None`` and other
unions, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, nested
dataclasses and ``Any``. Lists and tuples are interchangeable on input (TOML and JSON
only have arrays) and converted to the declared container.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath

from .checkpoint import write_json_atomic


class ConfigError(ValueError):
    """A config value, key or file is not what the config class expects."""


def from_dict(cls, d: Mapping, *, where: str | None = None):
    """Build dataclass ``cls`` from mapping ``d`` (nested mappings for nested dataclasses).

    Raises :class:`ConfigError` on unknown keys (listing the valid ones), missing required
    keys and values of the wrong type, naming the dotted key path (``where`` prefixes it).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type; got {cls!r}")
    where = where or cls.__name__
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: got {_show(d)}; expected a table of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in d:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(fields)}")
    missing = [name for name, f in fields.items() if name not in d
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required keys {missing}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in d.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ check; add where it happened
        raise ConfigError(f"{where}: {e}") from e


def _convert(value, tp, where: str):
    """``value`` checked against (and converted to) type annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own error says more
            return _convert(value, arms[0], where)
        for arm in arms:
            try:
                return _convert(value, arm, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: got {_show(value)}; expected {_name(tp)}")
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{where}: got {_show(value)}; expected one of {', '.join(map(repr, args))}")
    if tp in (bool, int, float, str):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if ok:
            return value
        raise ConfigError(f"{where}: got {_show(value)}; expected {tp.__name__}")
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise ConfigError(f"{where}: got {_show(value)}; expected a path string")
    if tp in (list, tuple) or origin in (list, tuple):
        return _convert_sequence(value, tp, origin or tp, args, where)
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: got {_show(value)}; expected a table")
        key_type, value_type = args or (str, typing.Any)
        return {_convert(k, key_type, f"{where} key"): _convert(v, value_type, f"{where}.{k}")
                for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported field type {_name(tp)}")


def _convert_sequence(value, tp, container, args, where):
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: got {_show(value)}; expected {_name(tp)}")
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(f"{where}: got {len(value)} items {_show(value)}; expected {_name(tp)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item_type = args[0] if args else typing.Any
    return container(_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))


def _show(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _name(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def to_dict(obj) -> dict:
    """Dataclass instance -> plain dict (nested dataclasses -> dicts, tuples -> lists,
    paths -> strings): JSON-able, and ``from_dict(type(obj), to_dict(obj)) == obj``."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance; got {obj!r}")
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


def merge_overrides(d: Mapping, overrides: Mapping) -> dict:
    """A copy of ``d`` with ``overrides`` on top (command-line flags over file values).

    Keys may be dotted paths into sections (``{"train.lr": 0.1}``) or nested mappings,
    which merge into existing sections key by key. ``None`` is a value like any other:
    drop flags that were not given before calling. ``d`` is not modified.
    """
    merged = copy.deepcopy(dict(d))
    for key, value in overrides.items():
        parts = key.split(".") if isinstance(key, str) else []
        if not parts or not all(parts):
            raise ConfigError(f"override key {key!r}; expected a dotted name like 'train.lr'")
        node = merged
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i + 1])} is {_show(node)}, not a section")
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge_overrides(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return merged


def parse_overrides(items: Iterable[str]) -> dict:
    """``["train.lr=0.1", "model.cell=gru"]`` -> ``{"train.lr": 0.1, "model.cell": "gru"}``.

    A value is read as JSON when it parses (``0.1``, ``true``, ``null``, ``[1, 2]``),
    else kept as a string.
    """
    result = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}; expected KEY=VALUE, e.g. train.lr=0.1")
        try:
            result[key.strip()] = json.loads(text)
        except ValueError:
            result[key.strip()] = text
    return result


def read_config_file(path, sections: Iterable[str] | None = None) -> dict:
    """The parsed content of a ``.toml`` or ``.json`` file (the suffix in any case: ``c.JSON``).

    Raises :class:`ConfigError` naming the file for another suffix, a missing or unreadable
    file (a directory, no permission, bytes that are not UTF-8) and a syntax error. With
    ``sections`` (e.g. ``("train", "task")``) the top level must be a table holding only those
    keys, each a table; without, the content is returned as parsed (for :func:`from_dict` to check).
    """
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".toml", ".json"):
        raise ConfigError(f"config file {path}: extension {path.suffix!r}; expected .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read ({e})") from None
    try:
        data = tomllib.loads(text) if kind == ".toml" else json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"config file {path}: not valid {kind[1:].upper()} ({e})") from None
    if sections is None:
        return data
    sections = list(sections)
    expected = " and ".join(f"[{name}]" for name in sections)
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path}: holds {_show(data)}; expected a table with {expected} sections")
    unknown = sorted(set(data) - set(sections), key=str)
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {unknown}; expected {expected}")
    for name in sections:
        if name in data and not isinstance(data[name], Mapping):
            raise ConfigError(f"config file {path}: section {name!r} is {_show(data[name])}; expected a table of "
                              "keys and values")
    return data


def load_config(cls, path, overrides: Mapping | None = None):
    """Read a ``.toml`` or ``.json`` file into dataclass ``cls``, ``overrides`` on top.

    Raises :class:`ConfigError` naming the file for a missing file, a syntax error, or
    any problem :func:`from_dict` finds (see :func:`read_config_file`).
    """
    path = Path(path)
    data = read_config_file(path)
    try:
        return from_dict(cls, merge_overrides(data, overrides) if overrides and isinstance(data, Mapping) else data)
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def save_config(obj, path) -> Path:
    """Write dataclass ``obj`` as JSON atomically (the resolved config beside a run's checkpoints)."""
    return write_json_atomic(path, to_dict(obj))
