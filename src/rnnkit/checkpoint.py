"""Safe checkpoints: one file of named tensors plus JSON metadata, written atomically.

A checkpoint is ONE ``.safetensors`` file (or ``.npz``) holding every tensor under its
dotted name (model parameters, ``optim.<param>.<slot>``, ...) and, in the header's
``__metadata__``, a JSON string under ``"rnnkit"``: config, vocabulary, trainer state
(epoch, step, best metric, RNG states) and ``format_version``. Loading parses data only:
nothing is unpickled, imported or executed, and a broken or hostile file raises
:class:`CheckpointError` naming the file and the problem.

Every write goes to a hidden temp file beside the target (``.<name>.<16 hex>.tmp``), is
flushed and fsynced, ``os.replace``d onto the target, and the directory is fsynced: after
a crash the target holds the old content or the new, never a part.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

FORMAT_VERSION = 2                  # 2: the metadata has a checksum too (1, without it, is still read)
READABLE_VERSIONS = (1, 2)
META_KEY = "rnnkit"                 # key in the safetensors __metadata__
NPZ_META_KEY = "__rnnkit_meta__"    # 0-d string array in an .npz
MAX_HEADER_BYTES = 100 * 2**20      # the safetensors library's own limit
MAX_META_DEPTH = 64
MAX_INT_DIGITS = 100                # 128-bit RNG states need 39

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64,
           "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16, "I8": np.int8,
           "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64}
_SAVABLE = {np.dtype(t) for t in _DTYPES.values()}
# Keys that pickle-through-JSON schemes (jsonpickle's "py/...", __reduce__ tricks) treat as
# instructions: refused, so no tool that does interpret them is ever handed one.
_MARKER_KEYS = frozenset({"__class__", "__reduce__", "__reduce_ex__", "__getstate__", "__setstate__", "__newobj__",
                          "__module__", "__qualname__", "__globals__", "__builtins__", "__import__", "__code__",
                          "__dict__"})
_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "integer", float: "number",
               bool: "boolean", type(None): "null"}


class CheckpointError(ValueError):
    """A checkpoint could not be written or read; the message names the file and the problem."""


# ----------------------------------------------------------------------------- atomic writes
def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (NaN/inf as Python's ``json`` writes them)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on Windows, refused by a few filesystems.
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- save
def save_checkpoint(path, tensors: Mapping[str, np.ndarray], meta: dict) -> Path:
    """Write ``tensors`` and ``meta`` to one checkpoint file at ``path``, atomically.

    ``tensors``: name -> NumPy array (float16/32/64, int8..64, uint8..64, bool, complex64;
    made contiguous and little-endian). ``meta``: JSON-able plain data (dicts with string
    keys, lists, tuples, str, int, float, bool, None, NumPy scalars); tuples come back as
    lists. Writes ``.npz`` when ``path`` ends in ``.npz``, safetensors otherwise.
    """
    path = Path(path)
    try:
        data = _encode(path, tensors, meta)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    return write_bytes_atomic(path, data)


def _encode(path: Path, tensors, meta) -> bytes:
    arrays = _prepare_tensors(tensors)
    if not isinstance(meta, dict):
        raise CheckpointError(f"meta is a {type(meta).__name__}; expected a dict of JSON-able data")
    for reserved in ("format_version", "tensor_sha256", "meta_sha256"):
        if reserved in meta:
            raise CheckpointError(f"meta key {reserved!r} is reserved for the file format")
    body = _plain(meta, "meta")
    text = json.dumps({"format_version": FORMAT_VERSION, "tensor_sha256": _digest(arrays),
                       "meta_sha256": _meta_digest(body), **body})
    if path.suffix == ".npz":
        return _npz_bytes({**arrays, NPZ_META_KEY: np.array(text)})
    return _st_save(arrays, metadata={META_KEY: text})


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes: safetensors itself has no
    checksum, so without this a flipped bit in the data region would load silently."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.newbyteorder('<').str}|{arr.shape}|".encode())
        h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def _meta_digest(body: dict) -> str:
    """SHA-256 over the metadata (config, vocabulary, trainer state) as canonical JSON: a
    flipped bit there that still parses would otherwise load a different model silently."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _prepare_tensors(tensors) -> dict[str, np.ndarray]:
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"tensors is a {type(tensors).__name__}; expected a dict of name -> array")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise CheckpointError(f"tensor name {name!r}; expected a non-empty string not starting with '__'")
        if not isinstance(value, (np.ndarray, np.generic)):
            raise CheckpointError(f"tensor {name!r} is a {type(value).__name__}; expected a numpy array "
                                  "(move device arrays to the host first)")
        arr = np.asarray(value)
        if arr.dtype.newbyteorder("=") not in _SAVABLE:
            raise CheckpointError(f"tensor {name!r} has dtype {arr.dtype}; expected one of "
                                  f"{sorted(str(d) for d in _SAVABLE)}")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        arrays[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    return arrays


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, arr in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return buffer.getvalue()


def _plain(value, where: str, depth: int = 0):
    """A checked copy of JSON-able ``value``: plain containers, str keys, no serialisation markers."""
    if depth > MAX_META_DEPTH:
        shown = where if len(where) <= 60 else where[:40] + "..."
        raise CheckpointError(f"{shown} is nested more than {MAX_META_DEPTH} levels deep")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CheckpointError(f"{where} has key {key!r} of type {type(key).__name__}; expected str keys")
            if key in _MARKER_KEYS or key.startswith("py/"):
                raise CheckpointError(f"{where} has key {key!r}, an object-serialisation marker; "
                                      "checkpoints hold plain data only")
        return {k: _plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    hint = " (store arrays as tensors, or call .tolist())" if isinstance(value, np.ndarray) else ""
    raise CheckpointError(f"{where} is a {type(value).__name__}; expected JSON-able data "
                          f"(dict, list, str, int, float, bool, None){hint}")


# ----------------------------------------------------------------------------- load
def load_checkpoint(path, expected: Mapping | None = None, *, strict: bool = True,
                    check_finite: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; returns ``(tensors, meta)``.

    ``meta`` is the dict that was saved (``format_version`` checked and removed).
    ``expected``: name -> ``(shape, dtype)`` (or anything with ``.shape`` and ``.dtype``;
    ``None`` for either part means "any"): missing tensors, wrong shapes and wrong dtypes
    are errors, and so are tensors not in ``expected`` unless ``strict=False``.
    ``check_finite=True`` also rejects NaN/inf in floating tensors.
    Raises :class:`CheckpointError` naming the file and every problem found.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise CheckpointError("no such file")
        if not path.is_file():
            raise CheckpointError("not a regular file")
        tensors, meta = _read_npz(path) if path.suffix == ".npz" else _read_safetensors(path)
        digest = meta.pop("tensor_sha256", None)
        if not isinstance(digest, str) or digest != _digest(tensors):
            raise CheckpointError("tensor data does not match its SHA-256 checksum (corrupted file)"
                                  if isinstance(digest, str) else "metadata has no tensor_sha256 checksum")
        _check_tensors(tensors, expected, strict, check_finite)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read ({e.strerror or e})") from None
    return tensors, meta


def _read_safetensors(path: Path):
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointError(f"{len(data)} bytes is too short for a safetensors file (truncated?)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
            raise CheckpointError("not a safetensors file (it looks like a zip archive or a pickle)")
        raise CheckpointError(f"header length {header_len} does not fit the {len(data)}-byte file: not a "
                              "safetensors file, a corrupted header length, or a truncated header")
    try:
        header_text = data[8:8 + header_len].decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("not a safetensors file (header is not UTF-8 text)") from None
    header = _parse_json(header_text, "safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"safetensors header is a JSON {_json_name(header)}; expected an object")
    specs = {k: v for k, v in header.items() if k != "__metadata__"}
    _check_layout(specs, len(data) - 8 - header_len)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("safetensors header has no __metadata__ table of strings; not an rnnkit checkpoint")
    if META_KEY not in metadata:
        raise CheckpointError(f"no {META_KEY!r} entry in __metadata__ (found {sorted(metadata)}); "
                              "not an rnnkit checkpoint")
    meta = _decode_meta(metadata[META_KEY])
    try:
        tensors = _st_load(data)
    except Exception as e:  # the library re-validates; anything it finds is a corrupt file
        raise CheckpointError(f"corrupted tensor data ({type(e).__name__}: {e})") from None
    return {k: v if v.flags.writeable else v.copy() for k, v in tensors.items()}, meta


def _check_layout(specs: dict, data_len: int) -> None:
    """Every tensor entry well-formed, tensors tiling the data region exactly."""
    spans = []
    for name, spec in specs.items():
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
            raise CheckpointError(f"header entry {name!r} is {spec!r:.80}; expected dtype, shape, data_offsets")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if dtype not in _DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {dtype!r:.20}; NumPy reads {sorted(_DTYPES)}")
        if not _uint_list(shape) or not _uint_list(offsets) or len(offsets) != 2:
            raise CheckpointError(f"tensor {name!r} has shape {shape!r:.80} and data_offsets {offsets!r:.80}; "
                                  "expected lists of non-negative integers ([begin, end] for the offsets)")
        need = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        if offsets[1] - offsets[0] != need:
            raise CheckpointError(f"tensor {name!r} has data_offsets {offsets}; shape {shape} of {dtype} "
                                  f"needs {need} bytes")
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointError(f"tensor {name!r} starts at data byte {begin}; expected {position} "
                                  "(overlapping or gapped tensors)")
        position = end
    if position > data_len:
        raise CheckpointError(f"truncated: the tensors need {position} data bytes, the file holds {data_len}")
    if position < data_len:
        raise CheckpointError(f"{data_len - position} unexpected bytes after the last tensor")


def _uint_list(value) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _read_npz(path: Path):
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        kind = "a pickle" if magic[:1] == b"\x80" else "not a zip archive"
        raise CheckpointError(f"not an .npz file ({kind})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as e:  # np.load raises many types on hostile input; none is recoverable
        if "pickle" in str(e):
            raise CheckpointError("holds a pickled object array; refusing to unpickle it") from None
        raise CheckpointError(f"corrupted or truncated .npz archive ({type(e).__name__}: {e})") from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"archive member {name!r} is not a .npy array")
    text = arrays.pop(NPZ_META_KEY, None)
    if text is None:
        raise CheckpointError(f"no {NPZ_META_KEY!r} array in the archive; not an rnnkit checkpoint")
    if text.shape != () or text.dtype.kind != "U":
        raise CheckpointError(f"{NPZ_META_KEY!r} is a {text.dtype} array of shape {text.shape}; "
                              "expected a 0-d string array")
    return arrays, _decode_meta(str(text[()]))


def _decode_meta(text: str) -> dict:
    meta = _parse_json(text, f"{META_KEY!r} metadata")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{META_KEY!r} metadata is a JSON {_json_name(meta)}; expected an object")
    meta = _plain(meta, "metadata")
    version = meta.pop("format_version", None)
    if version is None:
        raise CheckpointError("metadata has no format_version")
    if type(version) is not int:
        raise CheckpointError(f"metadata format_version is {version!r}; expected an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"format version {version} is newer than this rnnkit reads ({FORMAT_VERSION}); "
                              "upgrade rnnkit")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"unknown format version {version}; this rnnkit reads {list(READABLE_VERSIONS)}")
    if version >= 2:
        digest = meta.pop("meta_sha256", None)
        if not isinstance(digest, str):
            raise CheckpointError("metadata has no meta_sha256 checksum")
        if digest != _meta_digest({k: v for k, v in meta.items() if k != "tensor_sha256"}):
            raise CheckpointError("metadata does not match its SHA-256 checksum (corrupted file)")
    return meta


def _parse_json(text: str, what: str):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_int=_parse_int,
                          parse_float=_parse_float)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{what} is nested too deeply to parse") from None
    except ValueError as e:
        raise CheckpointError(f"{what} is not valid JSON ({e})") from None


def _no_duplicate_keys(pairs):
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise CheckpointError(f"duplicate key {duplicate!r}")
    return result


def _parse_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise CheckpointError(f"integer with {digits} digits; at most {MAX_INT_DIGITS} allowed")
    return int(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise CheckpointError(f"number {literal:.40} overflows a float")
    return value


def _json_name(value) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _check_tensors(tensors: dict, expected, strict: bool, check_finite: bool) -> None:
    problems = []
    if expected is not None:
        missing = [n for n in expected if n not in tensors]
        unexpected = [n for n in tensors if n not in expected]
        if missing:
            problems.append(f"missing tensors {_names(missing)}")
        if unexpected and strict:
            problems.append(f"unexpected tensors {_names(unexpected)}")
        for name in (n for n in expected if n in tensors):
            spec = expected[name]
            shape, dtype = (spec.shape, spec.dtype) if hasattr(spec, "dtype") else spec
            arr = tensors[name]
            if shape is not None and arr.shape != tuple(shape):
                problems.append(f"tensor {name!r} has shape {arr.shape}; expected {tuple(shape)}")
            if dtype is not None and arr.dtype != np.dtype(dtype):
                problems.append(f"tensor {name!r} has dtype {arr.dtype}; expected {np.dtype(dtype)}")
    if check_finite:
        for name, arr in tensors.items():
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                problems.append(f"tensor {name!r} has {arr.size - np.count_nonzero(np.isfinite(arr))} "
                                "non-finite values (NaN/inf)")
    if problems:
        raise CheckpointError("; ".join(problems))


def _names(names: list, limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... {len(names) - limit} more' if len(names) > limit else ''}]"


# ----------------------------------------------------------------------------- manager
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NUMBERED = re.compile(r"ckpt-(\d+)\.safetensors")
_TEMP = re.compile(r"\.(ckpt-[A-Za-z0-9_.-]+\.safetensors|best\.safetensors|latest)\.[0-9a-f]{16}\.tmp")


class CheckpointManager:
    """Checkpoints of one run in one directory.

    ``ckpt-<step>.safetensors`` per save, a ``latest`` pointer file naming the newest,
    ``best.safetensors`` when saved with ``best=True``, and only the ``keep`` newest
    numbered checkpoints kept (``keep=None``: all). One writer per directory. Each file is
    replaced atomically and old checkpoints are pruned only after the new one and the
    pointer are on disk, so a crash at any moment leaves :meth:`latest` naming a complete
    checkpoint. Temp files of an interrupted save are removed by the next save.
    """

    LATEST, BEST = "latest", "best.safetensors"

    def __init__(self, directory, keep: int | None = 3):
        if keep is not None and (type(keep) is not int or keep < 1):
            raise ValueError(f"keep={keep!r}; expected an integer >= 1 or None (keep all)")
        self.directory, self.keep = Path(directory), keep

    def save(self, step_or_name: int | str, tensors: Mapping[str, np.ndarray], meta: dict, *,
             best: bool = False) -> Path:
        """Write ``ckpt-<step_or_name>.safetensors`` (and ``best.safetensors`` if ``best``),
        point ``latest`` at it, then prune. Returns the checkpoint's path."""
        path = self.directory / self._file_name(step_or_name)
        try:
            data = _encode(path, tensors, meta)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.iterdir():
            if _TEMP.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
        write_bytes_atomic(path, data)
        if best:
            write_bytes_atomic(self.directory / self.BEST, data)
        write_text_atomic(self.directory / self.LATEST, path.name + "\n")
        self._prune(keep_path=path)
        return path

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the one ``latest`` names, else the highest step."""
        try:
            name = (self.directory / self.LATEST).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if _NAME.fullmatch(name) and (self.directory / name).is_file():
            return self.directory / name
        numbered = self.checkpoints()
        return numbered[-1] if numbered else None

    def best(self) -> Path | None:
        """``best.safetensors`` if one was saved."""
        path = self.directory / self.BEST
        return path if path.is_file() else None

    def checkpoints(self) -> list[Path]:
        """Numbered checkpoints ``ckpt-<step>.safetensors``, oldest step first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NUMBERED.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def _file_name(self, step_or_name) -> str:
        if type(step_or_name) is int and step_or_name >= 0:
            return f"ckpt-{step_or_name}.safetensors"
        if isinstance(step_or_name, str) and _NAME.fullmatch(step_or_name):
            return f"ckpt-{step_or_name}.safetensors"
        raise CheckpointError(f"checkpoint step or name {step_or_name!r}; expected an integer >= 0 or a "
                              "name of letters, digits, '_', '-', '.' not starting with '.'")

    def _prune(self, keep_path: Path) -> None:
        if self.keep is None:
            return
        for old in self.checkpoints()[:-self.keep]:
            if old != keep_path:
                old.unlink(missing_ok=True)
