"""rnnkit against PyTorch autograd: stored fixtures (always) and live comparisons (with torch).

Each fixture in tests/fixtures/torch/ holds a torch.nn module's inputs, parameters
(PyTorch state_dict names), a random upstream gradient per output, the outputs and the
gradients of ``sum(y*dy) + sum(h_n*dh_n) + sum(c_n*dc_n)`` (losses: ``dloss * loss``).
Here the same case runs through the rnnkit layer built per docs/ARCHITECTURE.md, and
every output and gradient must agree: max|a - b| / max|b| <= 1e-10 in float64, 1e-5 in
float32. The fixtures are made by tests/fixtures/make_torch_fixtures.py (see the README
there); the live tests reuse its builders on fresh configurations.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rnnkit.layers import (GRU, LSTM, RNN, Embedding, GRUCell, Linear, LSTMCell, MSELoss, RNNCell,
                           SoftmaxCrossEntropy, linear_cross_entropy)
from script_helpers import load_script

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "torch"
GENERATOR_PATH = Path(__file__).resolve().parent / "fixtures" / "make_torch_fixtures.py"
TOL = {"float64": 1e-10, "float32": 1e-5}
OUTPUT_NAMES = ("y", "h_n", "c_n", "loss")
RECURRENT = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
CELLS = {"rnn_cell": RNNCell, "lstm_cell": LSTMCell, "gru_cell": GRUCell}


def _import_generator():
    return load_script(GENERATOR_PATH)


gen = _import_generator()
FIXTURES = sorted(FIXTURE_DIR.glob("*.npz"))


def load_case(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def split_meta(arrays: dict) -> tuple[dict, dict]:
    """A freshly built case (from the generator) as (meta, arrays), like a loaded file."""
    arrays = dict(arrays)
    return json.loads(str(arrays.pop("meta"))), arrays


# -- running a case through rnnkit ---------------------------------------------------

def run_rnnkit(meta: dict, a: dict, variable_length: str = "lengths") -> dict:
    """Build the rnnkit layer for ``meta``, load the torch parameters, run forward and
    backward with the stored upstream gradients; return outputs and ``grad.*`` arrays."""
    kind, cfg, dtype = meta["kind"], meta["config"], np.dtype(meta["dtype"])
    params = {name: a[name] for name in meta["params"]}
    got = {}
    if kind in RECURRENT:
        extra = {"nonlinearity": cfg.get("nonlinearity", "tanh")} if kind == "rnn" else {}
        layer = RECURRENT[kind](cfg["D"], cfg["H"], num_layers=cfg["num_layers"],
                                bidirectional=cfg["bidirectional"], dtype=dtype, **extra)
        layer.load_state_dict(params)
        state = (a["h0"], a["c0"]) if kind == "lstm" else a["h0"]
        kwargs = {}
        if "lengths" in a:
            if variable_length == "mask":
                kwargs["mask"] = np.arange(cfg["T"])[None, :] < a["lengths"][:, None]
            else:
                kwargs["lengths"] = a["lengths"]
        y, state_n = layer.forward(a["x"], state=state, **kwargs)
        dstate = (a["dh_n"], a["dc_n"]) if kind == "lstm" else a["dh_n"]
        got["grad.x"] = layer.backward(a["dy"], dstate=dstate)
        got["y"] = y
        if kind == "lstm":
            got["h_n"], got["c_n"] = state_n
            got["grad.h0"], got["grad.c0"] = layer.dstate0
        else:
            got["h_n"], got["grad.h0"] = state_n, layer.dstate0
    elif kind in CELLS:
        extra = {"nonlinearity": cfg.get("nonlinearity", "tanh")} if kind == "rnn_cell" else {}
        layer = CELLS[kind](cfg["D"], cfg["H"], dtype=dtype, **extra)
        layer.load_state_dict(params)
        if kind == "lstm_cell":
            got["h_n"], got["c_n"] = layer.forward(a["x"], (a["h0"], a["c0"]))
            got["grad.x"], (got["grad.h0"], got["grad.c0"]) = layer.backward((a["dh_n"], a["dc_n"]))
        else:
            got["h_n"] = layer.forward(a["x"], a["h0"])
            got["grad.x"], got["grad.h0"] = layer.backward(a["dh_n"])
    elif kind == "linear":
        layer = Linear(cfg["in_features"], cfg["out_features"], dtype=dtype)
        layer.load_state_dict(params)
        got["y"] = layer.forward(a["x"])
        got["grad.x"] = layer.backward(a["dy"])
    elif kind == "embedding":
        layer = Embedding(cfg["num_embeddings"], cfg["embedding_dim"], padding_idx=cfg["padding_idx"], dtype=dtype)
        layer.load_state_dict(params)
        got["y"] = layer.forward(a["ids"])
        assert layer.backward(a["dy"]) is None
    elif kind == "cross_entropy":
        layer = SoftmaxCrossEntropy(ignore_index=cfg["ignore_index"])
        got["loss"] = np.asarray(layer.forward(a["logits"], a["targets"]))
        got["grad.logits"] = layer.backward(float(a["dloss"]))
        assert layer.count == int((a["targets"] != cfg["ignore_index"]).sum())
    elif kind == "linear_cross_entropy":
        layer = Linear(cfg["in_features"], cfg["V"], dtype=dtype)
        layer.load_state_dict(params)
        result = linear_cross_entropy(layer, a["x"], a["targets"], ignore_index=cfg["ignore_index"],
                                      dloss=float(a["dloss"]), chunk_bytes=cfg["block_rows"] * cfg["V"] * dtype.itemsize)
        got["loss"], got["grad.x"] = np.asarray(result.loss), result.dx
        assert result.count == int((a["targets"] != cfg["ignore_index"]).sum())
    elif kind == "mse":
        layer = MSELoss()
        got["loss"] = np.asarray(layer.forward(a["pred"], a["target"]))
        got["grad.pred"] = layer.backward(float(a["dloss"]))
    else:
        raise AssertionError(f"fixture kind {kind!r} has no rnnkit runner")
    for name, _, grad in layer.named_parameters():
        got["grad." + name] = grad
    return got


def max_rel_error(got, want) -> float:
    """max|got - want| / max(max|want|, tiny), computed in float64."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    if want.size == 0:
        return 0.0
    scale = max(float(np.abs(want).max()), np.finfo(np.float64).tiny)
    return float(np.abs(got - want).max()) / scale


def compare(meta: dict, want: dict, got: dict) -> dict[str, float]:
    """Assert every stored output and gradient matches; return {name: error}."""
    names = [k for k in want if k in OUTPUT_NAMES or k.startswith("grad.")]
    missing = [k for k in names if k not in got]
    assert not missing, f"{meta['name']}: rnnkit produced no {missing}"
    for k in names:
        assert np.shape(got[k]) == np.shape(want[k]), \
            f"{meta['name']}: {k} has shape {np.shape(got[k])}; torch has {np.shape(want[k])}"
        if k not in ("loss",):
            assert np.asarray(got[k]).dtype == want[k].dtype, \
                f"{meta['name']}: {k} has dtype {np.asarray(got[k]).dtype}; torch has {want[k].dtype}"
    errors = {k: max_rel_error(got[k], want[k]) for k in names}
    worst = max(errors, key=errors.get)
    tol = TOL[meta["dtype"]]
    assert errors[worst] <= tol, (
        f"{meta['name']} ({meta['kind']}, {meta['dtype']}, config {meta['config']}): worst array {worst!r} "
        f"max rel error {errors[worst]:.3e} > {tol:.0e}; all errors above tol: "
        + ", ".join(f"{k}={e:.2e}" for k, e in sorted(errors.items(), key=lambda kv: -kv[1]) if e > tol)
    )
    return errors


def check(meta: dict, arrays: dict, **kw) -> dict[str, float]:
    return compare(meta, arrays, run_rnnkit(meta, arrays, **kw))


# -- stored fixtures (no torch needed) ----------------------------------------------

def test_fixtures_exist_for_every_generator_case():
    on_disk = {p.stem for p in FIXTURES}
    expected = {c["name"] for c in gen.CASES}
    assert on_disk == expected, (
        f"fixtures out of date: missing {sorted(expected - on_disk)}, stale {sorted(on_disk - expected)}; "
        "run python tests/fixtures/make_torch_fixtures.py"
    )
    total = sum(p.stat().st_size for p in FIXTURES)
    assert total < 2 * 1024 * 1024, f"fixtures take {total} bytes; keep them under 2 MiB"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_metadata_matches_generator(path):
    meta, arrays = load_case(path)
    case = next(c for c in gen.CASES if c["name"] == path.stem)
    for key in ("kind", "config", "dtype", "seed"):
        assert meta[key] == case[key], f"{path.name}: meta {key} {meta[key]!r}; generator says {case[key]!r}"
    assert meta["torch_version"], f"{path.name}: no torch version recorded"
    for name in meta["params"]:
        assert name in arrays and "grad." + name in arrays, f"{path.name}: parameter {name} or its grad missing"


def _fixture_params():
    params = []
    for p in FIXTURES:
        params.append(pytest.param(p, "lengths", id=p.stem))
        if "_lengths_" in p.stem:  # the same variable-length case once more through mask=
            params.append(pytest.param(p, "mask", id=p.stem + "-mask"))
    return params


@pytest.mark.parametrize("path,variable_length", _fixture_params())
def test_fixture_parity(path, variable_length):
    meta, arrays = load_case(path)
    check(meta, arrays, variable_length=variable_length)


def test_embedding_padding_row_gets_no_gradient():
    meta, arrays = load_case(FIXTURE_DIR / "embedding_padding_f64.npz")
    pad = meta["config"]["padding_idx"]
    assert (arrays["ids"] == pad).any()
    got = run_rnnkit(meta, arrays)
    assert np.all(got["grad.weight"][pad] == 0)


# -- live PyTorch -------------------------------------------------------------------

def _live(name, kind, config, dtype, seed):
    pytest.importorskip("torch")
    return split_meta(gen.build_case(name, kind, config, dtype, seed))


def _random_recurrent_config(seed: int):
    rng = np.random.default_rng(seed)
    kind = ["rnn", "lstm", "gru"][seed % 3]
    Bn, Tn = int(rng.integers(1, 5)), int(rng.integers(1, 9))
    cfg = {"B": Bn, "T": Tn, "D": int(rng.integers(1, 6)), "H": int(rng.integers(1, 8)),
           "num_layers": int(rng.integers(1, 4)), "bidirectional": bool(rng.integers(0, 2))}
    if kind == "rnn":
        cfg["nonlinearity"] = ["tanh", "relu"][int(rng.integers(0, 2))]
    if rng.random() < 0.5:
        cfg["lengths"] = [int(v) for v in rng.integers(1, Tn + 1, size=Bn)]
    return kind, cfg


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", range(12))
def test_live_random_recurrent(seed, dtype):
    kind, cfg = _random_recurrent_config(seed)
    meta, arrays = _live(f"random{seed}-{kind}", kind, cfg, dtype, 1000 + seed)
    check(meta, arrays)


def _recurrent_variants():
    return [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind,act", _recurrent_variants(), ids=lambda v: str(v))
def test_live_long_sequence(kind, act, dtype):
    cfg = {"B": 4, "T": 50, "D": 5, "H": 8, "num_layers": 2, "bidirectional": True,
           "lengths": [50, 17, 33, 1]}
    if act:
        cfg["nonlinearity"] = act
    meta, arrays = _live(f"long-{kind}-{act}", kind, cfg, dtype, 7)
    check(meta, arrays)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind,act", _recurrent_variants(), ids=lambda v: str(v))
def test_live_saturated_recurrent(kind, act, dtype):
    # large inputs drive tanh/sigmoid deep into saturation (relu: large values). The
    # weights keep PyTorch's scale: larger recurrent weights make the recurrence itself
    # ill-conditioned, and float32 rounding then grows with time in torch and rnnkit alike.
    cfg = {"B": 3, "T": 12, "D": 4, "H": 6, "num_layers": 2, "bidirectional": True, "x_scale": 50.0}
    if act:
        cfg["nonlinearity"] = act
    meta, arrays = _live(f"saturated-{kind}-{act}", kind, cfg, dtype, 11)
    preact = arrays["x"] @ arrays["weight_ih_l0"].T + arrays["bias_ih_l0"]
    assert np.mean(np.abs(preact) > 5.0) > 0.5, "first-layer pre-activations are not saturated"
    check(meta, arrays)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("x_scale", [1.0, 20.0], ids=["plain", "saturated"])
@pytest.mark.parametrize("kind,act", [("rnn_cell", "tanh"), ("rnn_cell", "relu"), ("lstm_cell", None),
                                      ("gru_cell", None)], ids=lambda v: str(v))
def test_live_cells(kind, act, x_scale, dtype):
    cfg = {"B": 5, "D": 7, "H": 3, "x_scale": x_scale}
    if act:
        cfg["nonlinearity"] = act
    meta, arrays = _live(f"cell-{kind}-{act}", kind, cfg, dtype, 5)
    check(meta, arrays)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind,cfg", [
    ("linear", {"B": 2, "T": 9, "in_features": 11, "out_features": 3}),
    ("embedding", {"B": 4, "T": 6, "num_embeddings": 5, "embedding_dim": 3, "padding_idx": None}),
    ("embedding", {"B": 4, "T": 6, "num_embeddings": 5, "embedding_dim": 3, "padding_idx": 4}),
    ("cross_entropy", {"B": 4, "T": 6, "V": 9, "ignore_index": -100}),
    ("cross_entropy", {"B": 2, "T": 3, "V": 5, "ignore_index": 3, "x_scale": 200.0}),  # huge logits: log-sum-exp
    ("mse", {"B": 2, "T": 7, "D": 3}),
], ids=["linear", "embedding", "embedding-pad", "ce", "ce-huge-logits", "mse"])
def test_live_other_layers(kind, cfg, dtype):
    meta, arrays = _live(f"live-{kind}", kind, cfg, dtype, 3)
    check(meta, arrays)


@pytest.mark.torch
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_regenerates(path):
    """The stored file is what the generator makes: inputs and parameters bit for bit
    (torch's CPU generator is deterministic), outputs and gradients to tolerance (BLAS
    may round differently on another machine or torch version)."""
    meta, stored = load_case(path)
    fresh_meta, fresh = _live(meta["name"], meta["kind"], meta["config"], meta["dtype"], meta["seed"])
    assert sorted(fresh) == sorted(stored), f"{path.name}: array names differ from the generator's"
    derived = {k for k in stored if k in OUTPUT_NAMES or k.startswith("grad.")}
    for k in stored:
        if k in derived:
            err = max_rel_error(fresh[k], stored[k])
            assert err <= TOL[meta["dtype"]], f"{path.name}: {k} regenerates with rel error {err:.2e}"
        else:
            assert np.array_equal(fresh[k], stored[k]), f"{path.name}: input/parameter {k} differs from the generator's"
