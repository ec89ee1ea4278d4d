"""PyTorch weights in and out: ``nn.RNN/LSTM/GRU``, their cells, and word-language-model style models.

rnnkit keeps PyTorch's parameter names and layouts (``weight_ih_l0`` is ``(gates*H, D)``,
gate order LSTM ``i, f, g, o``, GRU ``r, z, n``), so a conversion is a copy of named
arrays plus the constructor arguments. What differs is only the calling convention:
rnnkit is batch-first, ``(B, T, D)``; a PyTorch module built with ``batch_first=False``
(the default, and PyTorch's word_language_model example) takes ``(T, B, D)``: transpose.

- :func:`from_torch` — a torch module or a ``state_dict`` (torch tensors or NumPy arrays)
  -> the rnnkit layer, cell or :class:`~rnnkit.models.language_model.LanguageModel`.
- :func:`to_torch` — an rnnkit layer, cell or language model -> the torch module
  (``batch_first=True``); the language model becomes :func:`torch_language_model_class`.
- :func:`load_torch_safetensors` / :func:`save_torch_safetensors` — a PyTorch
  ``state_dict`` stored as safetensors, read and written with ``safetensors.numpy``:
  no torch needed. (Save one in PyTorch with ``safetensors.torch.save_file(
  {k: v.contiguous() for k, v in module.state_dict().items()}, path)``; a tied decoder
  weight may be left out, it is recognised as tied.)

A language model's ``state_dict`` has ``encoder.weight`` (V, E), ``rnn.<PyTorch RNN names>``
and ``decoder.weight`` (V, H), ``decoder.bias`` (V,), as PyTorch's word_language_model
``RNNModel``. A state_dict does not say an RNN's nonlinearity (pass ``nonlinearity=``) nor
the vocabulary (pass ``vocab=``, else tokens ``<0>``, ``<1>``, ... stand in).

torch is imported only inside the functions that need it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import backend
from ..layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

MODES = {1: "rnn", 3: "gru", 4: "lstm"}  # rows of weight_ih / hidden_size -> cell type
LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
_LAYER_KEY = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")


def _import_torch():
    try:
        import torch  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError as exc:
        raise ImportError("this conversion needs PyTorch: pip install 'rnnkit[torch]' "
                          "(load_torch_safetensors works without it)") from exc
    return torch


def _is_torch_module(obj) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def _to_numpy_dict(state: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu()
            try:
                value = value.numpy()
            except TypeError as exc:  # a dtype NumPy has not: bfloat16, the float8 types
                if not value.is_floating_point():
                    raise TypeError(f"state_dict entry {str(name)!r} has torch dtype {value.dtype}, which NumPy "
                                    "cannot hold; convert it to a standard dtype first") from exc
                value = value.float().numpy()  # exact: float32 holds every bfloat16 / float8 value
        out[str(name)] = np.asarray(value)
    return out


def _matrix_shape(state: dict[str, np.ndarray], key: str, prefix: str = "") -> tuple[int, int]:
    """The (rows, columns) of the 2-d weight ``state[key]``; an error naming it (``prefix + key``,
    as the caller's state_dict spells it) if it is absent, not 2-d or empty."""
    if key not in state:
        raise ValueError(f"state_dict lacks {prefix + key!r}")
    shape = tuple(state[key].shape)
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"{prefix + key!r} has shape {shape}; expected a 2-d weight matrix with no empty axis")
    return shape


def _float_dtype(arrays: dict, dtype):
    if dtype is not None:
        return np.dtype(dtype)
    kinds = {a.dtype for a in arrays.values() if np.issubdtype(a.dtype, np.floating)}
    return np.dtype(np.float64) if kinds == {np.dtype(np.float64)} else np.dtype(np.float32)


# ----------------------------------------------------------------------------- inference from names
def _layer_spec(state: dict[str, np.ndarray], nonlinearity: str, prefix: str = "") -> dict:
    """Constructor arguments of the RNN/LSTM/GRU layer whose PyTorch state_dict is ``state``."""
    bad = [k for k in state if not _LAYER_KEY.match(k)]
    if bad or "weight_ih_l0" not in state:
        raise ValueError(f"not a recurrent layer's state_dict: unexpected keys {bad[:5]}"
                         + ("" if "weight_ih_l0" in state else ", no 'weight_ih_l0'"))
    G, D = _matrix_shape(state, "weight_ih_l0", prefix)
    H = _matrix_shape(state, "weight_hh_l0", prefix)[1]
    if G % H or G // H not in MODES:
        raise ValueError(f"weight_ih_l0 has {G} rows for hidden size {H}; expected 1, 3 or 4 times H "
                         "(RNN, GRU, LSTM); projections (proj_size) are not supported")
    layers = 1 + max(int(_LAYER_KEY.match(k).group(3)) for k in state)
    return {"mode": MODES[G // H], "input_size": int(D), "hidden_size": int(H), "num_layers": layers,
            "bias": "bias_ih_l0" in state, "bidirectional": any(k.endswith("_reverse") for k in state),
            "nonlinearity": nonlinearity}


def _build_layer(spec: dict, dtype, dropout: float = 0.0):
    kwargs = {k: spec[k] for k in ("num_layers", "bias", "bidirectional")}
    if spec["mode"] == "rnn":
        kwargs["nonlinearity"] = spec["nonlinearity"]
    return LAYERS[spec["mode"]](spec["input_size"], spec["hidden_size"], dropout=dropout, dtype=dtype, seed=0,
                                **kwargs)


def _cell_from_state(state: dict[str, np.ndarray], nonlinearity: str, dtype):
    G, D = _matrix_shape(state, "weight_ih")
    H = _matrix_shape(state, "weight_hh")[1]
    if G % H or G // H not in MODES:
        raise ValueError(f"weight_ih has {G} rows for hidden size {H}; expected 1, 3 or 4 times H")
    mode = MODES[G // H]
    extra = {"nonlinearity": nonlinearity} if mode == "rnn" else {}
    cell = CELLS[mode](int(D), int(H), bias="bias_ih" in state, dtype=dtype, seed=0, **extra)
    cell.load_state_dict(state)
    return cell


def _vocab_dict(vocab, size: int) -> dict:
    """The language model's vocabulary (``Vocab.to_dict()`` form) from a Vocab, a dict, a token list or None."""
    from ..data import Vocab

    if vocab is None:
        vocab = Vocab([f"<{i}>" for i in range(size)])  # stand-ins: a state_dict holds no tokens
    elif isinstance(vocab, dict):
        vocab = Vocab.from_dict(vocab)
    elif not isinstance(vocab, Vocab):
        vocab = Vocab(list(vocab))
    if len(vocab) != size:
        raise ValueError(f"vocab has {len(vocab)} tokens; the encoder has {size} rows")
    return vocab.to_dict()


def _language_model_from_state(state, nonlinearity, vocab, level, dtype, dropout, tie_weights):
    from ..models.language_model import LanguageModel, LanguageModelConfig

    rnn_state = {k[4:]: v for k, v in state.items() if k.startswith("rnn.")}
    spec = _layer_spec(rnn_state, nonlinearity, "rnn.")
    V, E = _matrix_shape(state, "encoder.weight")
    if tie_weights is None:  # absent (deduplicated on save) or identical: tied
        tie_weights = "decoder.weight" not in state or np.array_equal(state["decoder.weight"], state["encoder.weight"])
    vocab = _vocab_dict(vocab, int(V))
    config = LanguageModelConfig(vocab_size=int(V), level=level, cell=spec["mode"], nonlinearity=nonlinearity,
                                 embedding_size=int(E), hidden_size=spec["hidden_size"],
                                 num_layers=spec["num_layers"], tie_weights=bool(tie_weights),
                                 **_dropout_fields(LanguageModelConfig, dropout))
    model = LanguageModel(config, vocab=vocab, dtype=dtype)
    own = {name for name, _, _ in model.named_parameters()}
    if "decoder.weight" not in state:
        state = {**state, "decoder.weight": state["encoder.weight"]}
    missing = sorted(own - set(state))
    if missing:
        raise ValueError(f"language model state_dict lacks {missing}")
    model.load_state_dict({k: v for k, v in state.items() if k in own})
    return model


def _dropout_fields(config_class, dropout: float) -> dict:
    """Map one dropout probability onto whichever dropout fields the config has."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(config_class) if "dropout" in f.name]
    return {n: float(dropout) for n in names}


# ----------------------------------------------------------------------------- public API
def from_torch(obj, *, nonlinearity: str | None = None, vocab=None, level: str = "char", dtype=None):
    """An rnnkit layer, cell or language model holding the weights of ``obj``.

    obj: ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (-> rnnkit ``RNN``/``LSTM``/``GRU``),
    ``torch.nn.RNNCell`` / ``LSTMCell`` / ``GRUCell`` (-> the rnnkit cell), a module with
    ``encoder`` (Embedding), ``rnn`` and ``decoder`` (Linear) such as PyTorch's
    word_language_model ``RNNModel`` (-> ``LanguageModel``), or the ``state_dict`` of any
    of these (torch tensors or NumPy arrays). The kind is read from the parameter names.
    nonlinearity: for a vanilla RNN given as a state_dict ("tanh" default; a module says it).
    vocab: a language model's ``Vocab`` or token list. dtype: default the weights' own
    (float64 stays float64, anything else becomes float32; bfloat16 and float8 tensors, which
    NumPy has no dtype for, are converted through float32 exactly, so a ``.bfloat16()``
    module comes out as a float32 layer with the same values).
    The result is batch-first: feed ``x.transpose(0, 1)`` where torch ran sequence-first.
    """
    if _is_torch_module(obj):
        return _from_module(obj, nonlinearity=nonlinearity, vocab=vocab, level=level, dtype=dtype)
    if not isinstance(obj, Mapping):
        raise TypeError(f"from_torch got a {type(obj).__name__}; expected a torch.nn module or a state_dict mapping")
    state = _to_numpy_dict(obj)
    dtype = _float_dtype(state, dtype)
    nonlinearity = nonlinearity or "tanh"
    if "encoder.weight" in state and any(k.startswith("rnn.") for k in state):
        return _language_model_from_state(state, nonlinearity, vocab, level, dtype, 0.0, None)
    if "weight_ih" in state:
        return _cell_from_state(state, nonlinearity, dtype)
    layer = _build_layer(_layer_spec(state, nonlinearity), dtype)
    layer.load_state_dict(state)
    return layer


def _from_module(module, nonlinearity, vocab, level, dtype):
    torch = _import_torch()
    nn = torch.nn
    state = _to_numpy_dict(module.state_dict())
    dtype = _float_dtype(state, dtype)
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        if getattr(module, "proj_size", 0):
            raise ValueError(f"LSTM with proj_size={module.proj_size}; rnnkit's LSTM has no projection")
        spec = _layer_spec(state, getattr(module, "nonlinearity", "tanh"))
        layer = _build_layer(spec, dtype, dropout=float(module.dropout))
        layer.load_state_dict(state)
        return layer
    if isinstance(module, (nn.RNNCell, nn.LSTMCell, nn.GRUCell)):
        return _cell_from_state(state, getattr(module, "nonlinearity", "tanh"), dtype)
    if all(hasattr(module, n) for n in ("encoder", "rnn", "decoder")):
        rnn = module.rnn
        if not isinstance(rnn, (nn.RNN, nn.LSTM, nn.GRU)):
            raise TypeError(f"{type(module).__name__}.rnn is a {type(rnn).__name__}; expected nn.RNN, nn.LSTM or nn.GRU")
        if rnn.bidirectional:
            raise ValueError("a language model's rnn must be unidirectional")
        tied = module.decoder.weight is module.encoder.weight
        drop = getattr(module, "drop", None)
        dropout = float(drop.p) if isinstance(drop, nn.Dropout) else float(rnn.dropout)
        return _language_model_from_state(state, getattr(rnn, "nonlinearity", nonlinearity or "tanh"), vocab,
                                          level, dtype, dropout, tied)
    raise TypeError(f"from_torch: cannot convert a {type(module).__name__}; expected nn.RNN/LSTM/GRU, a cell, "
                    "or a module with encoder/rnn/decoder")


def torch_state_dict(obj) -> dict[str, np.ndarray]:
    """The PyTorch ``state_dict`` of an rnnkit layer, cell or language model, as NumPy arrays.

    A layer built with ``bias_hh=False`` (one bias) gets PyTorch's ``bias_hh_*`` as zeros:
    PyTorch adds the two, so the module computes the same function.
    """
    state = {name: backend.to_numpy(p).copy() for name, p, _ in obj.named_parameters()}
    for prefix, layer in (("", obj), ("rnn.", getattr(obj, "rnn", None))):
        if isinstance(layer, (RNN, LSTM, GRU)) and layer.bias and not layer.bias_hh:
            for name in [n for n in state if n.startswith(prefix + "bias_ih_")]:
                state[prefix + "bias_hh_" + name[len(prefix + "bias_ih_"):]] = np.zeros_like(state[name])
    return state


def to_torch(obj):
    """The torch module equivalent to an rnnkit layer, cell or language model, same weights and dtype.

    RNN/LSTM/GRU -> ``torch.nn.RNN/LSTM/GRU(..., batch_first=True)``; cells -> torch cells;
    a language model -> :func:`torch_language_model_class` (encoder/rnn/decoder, batch-first).
    The module is in eval mode when ``obj`` is.
    """
    torch = _import_torch()
    nn = torch.nn
    state = torch_state_dict(obj)
    dtype = {np.dtype(np.float64): torch.float64}.get(np.dtype(obj.dtype), torch.float32)
    if isinstance(obj, (RNN, LSTM, GRU)):
        kwargs = {"num_layers": obj.num_layers, "bias": obj.bias, "bidirectional": obj.bidirectional,
                  "dropout": obj.dropout, "batch_first": True}
        if obj.mode == "rnn":
            kwargs["nonlinearity"] = obj.nonlinearity
        module = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[obj.mode](obj.input_size, obj.hidden_size, **kwargs)
    elif isinstance(obj, (RNNCell, LSTMCell, GRUCell)):
        kwargs = {"bias": obj.bias}
        if obj.mode == "rnn":
            kwargs["nonlinearity"] = obj.nonlinearity
        module = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[obj.mode](obj.input_size,
                                                                                      obj.hidden_size, **kwargs)
    elif all(hasattr(obj, n) for n in ("encoder", "rnn", "decoder")):
        rnn = obj.rnn
        V, E = state["encoder.weight"].shape
        tied = obj.decoder.params.get("weight") is obj.encoder.params.get("weight") or "decoder.weight" not in state
        dropout = max([float(getattr(obj.config, f)) for f in vars(obj.config) if "dropout" in f] or [0.0])
        module = torch_language_model_class()(int(V), int(E), rnn.hidden_size, rnn.num_layers, rnn.mode,
                                              getattr(rnn, "nonlinearity", "tanh"), dropout, tied)
        if tied:
            state.pop("decoder.weight", None)
    else:
        raise TypeError(f"to_torch: cannot convert a {type(obj).__name__}; expected an rnnkit RNN/LSTM/GRU, "
                        "a cell, or a model with encoder/rnn/decoder")
    module = module.to(dtype)
    missing, unexpected = module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    if unexpected or [m for m in missing if m != "decoder.weight"]:
        raise ValueError(f"state_dict mismatch converting {type(obj).__name__}: missing {missing}, "
                         f"unexpected {unexpected}")
    module.train(bool(getattr(obj, "training", True)))
    return module


_TORCH_LM = None


def torch_language_model_class():
    """``TorchLanguageModel``: PyTorch's word_language_model ``RNNModel``, batch-first.

    ``TorchLanguageModel(vocab_size, embedding_size, hidden_size, num_layers, cell, nonlinearity,
    dropout, tie_weights)``; ``forward(ids (B, T), hidden=None) -> (logits (B, T, V), hidden)``
    with ``drop -> encoder -> rnn -> drop -> decoder`` (logits, not log-probabilities).
    """
    global _TORCH_LM
    if _TORCH_LM is not None:
        return _TORCH_LM
    torch = _import_torch()
    nn = torch.nn

    class TorchLanguageModel(nn.Module):
        def __init__(self, vocab_size, embedding_size, hidden_size, num_layers=1, cell="lstm",
                     nonlinearity="tanh", dropout=0.0, tie_weights=False):
            super().__init__()
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(vocab_size, embedding_size)
            extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
            self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](
                embedding_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0,
                batch_first=True, **extra)
            self.decoder = nn.Linear(hidden_size, vocab_size)
            if tie_weights:
                if hidden_size != embedding_size:
                    raise ValueError(f"tie_weights needs hidden_size == embedding_size; got {hidden_size} and "
                                     f"{embedding_size}")
                self.decoder.weight = self.encoder.weight

        def forward(self, ids, hidden=None):
            y, hidden = self.rnn(self.drop(self.encoder(ids)), hidden)
            return self.decoder(self.drop(y)), hidden

    _TORCH_LM = TorchLanguageModel
    return _TORCH_LM


def load_torch_safetensors(path, **kwargs):
    """:func:`from_torch` on a PyTorch ``state_dict`` saved as safetensors; needs no torch.

    kwargs: ``nonlinearity``, ``vocab``, ``level``, ``dtype`` as for :func:`from_torch`.
    bfloat16 tensors (which ``safetensors.numpy`` cannot read) are converted to float32, exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return from_torch(_load_safetensors(path), **kwargs)


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """``safetensors.numpy.load_file``, except that bfloat16 tensors (a ``.bfloat16()`` module's),
    which NumPy has no dtype for, are read as float32 (exactly: a bfloat16 is the top half of one)."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except TypeError:  # "data type 'bfloat16' not understood"
        pass
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data_start = 8 + n
    out = {}
    with safe_open(str(path), framework="numpy") as st:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info.get("dtype") == "BF16":
                lo, hi = info["data_offsets"]
                raw = np.fromfile(path, dtype="<u2", count=(hi - lo) // 2, offset=data_start + lo)
                out[name] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
            else:
                try:
                    out[name] = st.get_tensor(name)
                except TypeError as exc:
                    raise TypeError(f"{path}: tensor {name!r} has dtype {info.get('dtype')}, which NumPy cannot "
                                    "hold; save it as float32 (or bfloat16) instead") from exc
    return out


def save_torch_safetensors(obj, path) -> Path:
    """Write the PyTorch ``state_dict`` of an rnnkit layer, cell or language model as safetensors (no torch).

    A tied decoder weight is written once, as ``encoder.weight``. Load it in PyTorch with
    ``module.load_state_dict(safetensors.torch.load_file(path), strict=False)`` (strict is
    fine unless weights are tied).
    """
    from safetensors.numpy import save_file

    state = torch_state_dict(obj)
    if "decoder.weight" in state and "encoder.weight" in state and \
            getattr(obj, "decoder", None) is not None and \
            obj.decoder.params.get("weight") is obj.encoder.params.get("weight"):
        state.pop("decoder.weight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path
