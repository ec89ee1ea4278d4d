"""PyTorch interop: modules and state_dicts in and out, same outputs (<= 1e-5 in float32).

The safetensors fixtures (tests/fixtures/interop/, made by make_interop_fixtures.py there)
hold weights trained in PyTorch and torch's outputs; they are checked in a subprocess in
which ``import torch`` fails, so loading them provably needs no torch. The live tests
(round trips through real torch modules) skip where torch is not installed.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rnnkit.interop import from_torch, load_torch_safetensors, save_torch_safetensors, to_torch, torch_state_dict
from rnnkit.layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "interop"
TOL = 1e-5


def _close(a, b, tol=TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
    assert err <= tol, f"max relative error {err:.2e} > {tol:.0e}"


# ----------------------------------------------------------------------------- without torch
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
import numpy as np
from rnnkit.interop import load_torch_safetensors
here = {here!r}
{body}
assert "torch" not in sys.modules or sys.modules["torch"] is None
print("ok")
"""


def _run_without_torch(body: str):
    code = WITHOUT_TORCH.format(here=str(FIXTURES), body=textwrap.dedent(body))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_safetensors_layer_loads_without_torch():
    _run_without_torch("""
        from rnnkit.layers import GRU
        gru = load_torch_safetensors(here + "/gru_layer.safetensors")
        assert isinstance(gru, GRU) and gru.num_layers == 2 and gru.hidden_size == 6, gru
        ref = np.load(here + "/gru_layer.npz")
        y, h_n = gru.forward(ref["x"])
        for a, b in ((y, ref["y"]), (h_n, ref["h_n"])):
            err = np.abs(a - b).max() / np.abs(b).max()
            assert err <= 1e-5, err
    """)


def test_safetensors_language_model_loads_without_torch():
    _run_without_torch("""
        lm = load_torch_safetensors(here + "/lstm_lm.safetensors")
        assert type(lm).__name__ == "LanguageModel", type(lm)
        assert lm.config.tie_weights and lm.config.cell == "lstm" and lm.config.num_layers == 2
        lm.eval()
        ref = np.load(here + "/lstm_lm.npz")
        logits, _ = lm.predict(ref["ids"])
        err = np.abs(logits - ref["logits"]).max() / np.abs(ref["logits"]).max()
        assert err <= 1e-5, err
    """)


def test_safetensors_round_trip_without_torch(tmp_path):
    lstm = LSTM(3, 4, num_layers=2, seed=1)
    path = save_torch_safetensors(lstm, tmp_path / "lstm.safetensors")
    back = load_torch_safetensors(path)
    assert isinstance(back, LSTM) and back.num_layers == 2
    for name, value in lstm.state_dict().items():
        np.testing.assert_array_equal(back.params[name], value)


def test_state_dict_of_numpy_arrays_is_recognised():
    rnn = RNN(3, 4, num_layers=2, bidirectional=True, nonlinearity="relu", bias=False, seed=2)
    back = from_torch(torch_state_dict(rnn), nonlinearity="relu")
    assert (back.num_layers, back.bidirectional, back.bias, back.nonlinearity) == (2, True, False, "relu")
    cell = from_torch(torch_state_dict(GRUCell(3, 5, seed=0)))
    assert isinstance(cell, GRUCell) and cell.hidden_size == 5


def test_bad_state_dicts_are_explained():
    with pytest.raises(ValueError, match="unexpected keys"):
        from_torch({"weight_ih_l0": np.zeros((4, 3)), "weight_hh_l0": np.zeros((4, 4)), "foo": np.zeros(1)})
    with pytest.raises(ValueError, match="expected 1, 3 or 4 times H"):
        from_torch({"weight_ih_l0": np.zeros((8, 3)), "weight_hh_l0": np.zeros((4, 4))})
    with pytest.raises(TypeError, match="expected a torch.nn module or a state_dict"):
        from_torch(42)
    with pytest.raises(FileNotFoundError):
        load_torch_safetensors(FIXTURES / "nope.safetensors")


# ----------------------------------------------------------------------------- live torch
def _torch():
    return pytest.importorskip("torch", reason="PyTorch not installed: live interop round trips skipped")


LAYER_CASES = [("rnn", "tanh", 1, False), ("rnn", "relu", 2, False), ("lstm", None, 2, False),
               ("lstm", None, 1, True), ("gru", None, 2, True), ("gru", None, 1, False)]


@pytest.mark.parametrize("mode,act,layers,bidir", LAYER_CASES,
                         ids=[f"{m}-{a or ''}-L{n}-{'bi' if b else 'uni'}" for m, a, n, b in LAYER_CASES])
def test_torch_layer_round_trip(mode, act, layers, bidir):
    torch = _torch()
    torch.manual_seed(0)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode]
    extra = {"nonlinearity": act} if act else {}
    module = cls(4, 5, num_layers=layers, bidirectional=bidir, **extra)  # sequence-first, as PyTorch's default
    x = torch.randn(7, 3, 4)
    with torch.no_grad():
        y_ref, state_ref = module(x)
    ours = from_torch(module)
    assert isinstance(ours, {"rnn": RNN, "lstm": LSTM, "gru": GRU}[mode]) and ours.dtype == np.float32
    y, state = ours.forward(x.transpose(0, 1).numpy())  # rnnkit is batch-first
    _close(y, y_ref.transpose(0, 1).numpy())
    for a, b in zip(state if mode == "lstm" else (state,), state_ref if mode == "lstm" else (state_ref,)):
        _close(a, b.numpy())
    back = to_torch(ours)
    assert back.batch_first and back.num_layers == layers and back.bidirectional == bidir
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name].numpy(), value.numpy())
    with torch.no_grad():
        y_back, _ = back(x.transpose(0, 1))
    _close(y_back.numpy(), y)


@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_torch_cell_round_trip(mode):
    torch = _torch()
    torch.manual_seed(1)
    cls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[mode]
    module = cls(3, 4, **({"nonlinearity": "relu"} if mode == "rnn" else {}))
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    state = (h, torch.randn(2, 4)) if mode == "lstm" else h
    with torch.no_grad():
        ref = module(x, state)
    ours = from_torch(module)
    assert isinstance(ours, {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}[mode])
    out = ours.forward(x.numpy(), tuple(s.numpy() for s in state) if mode == "lstm" else state.numpy())
    for a, b in zip(out if mode == "lstm" else (out,), ref if mode == "lstm" else (ref,)):
        _close(a, b.numpy())
    back = to_torch(ours)
    assert type(back) is cls and getattr(back, "nonlinearity", "relu") == "relu"


def test_float64_stays_float64():
    torch = _torch()
    module = torch.nn.GRU(3, 4).double()
    ours = from_torch(module)
    assert ours.dtype == np.float64
    assert next(to_torch(ours).parameters()).dtype == torch.float64


def test_save_torch_safetensors_loads_in_torch(tmp_path):
    torch = _torch()
    from safetensors.torch import load_file

    ours = GRU(3, 4, num_layers=2, seed=3)
    path = save_torch_safetensors(ours, tmp_path / "gru.safetensors")
    module = torch.nn.GRU(3, 4, num_layers=2, batch_first=True)
    module.load_state_dict(load_file(str(path)))
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        y_ref, _ = module(torch.from_numpy(x))
    _close(ours.forward(x)[0], y_ref.numpy())


# ----------------------------------------------------------------------------- language models
class _RNNModel:
    """Built lazily: PyTorch's word_language_model RNNModel (sequence-first; RNN_TANH/RNN_RELU/LSTM/GRU)."""

    @staticmethod
    def make(torch, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2, tie_weights=False):
        nn = torch.nn

        class RNNModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.drop = nn.Dropout(dropout)
                self.encoder = nn.Embedding(ntoken, ninp)
                if rnn_type in ("LSTM", "GRU"):
                    self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
                else:
                    act = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
                    self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=act, dropout=dropout)
                self.decoder = nn.Linear(nhid, ntoken)
                if tie_weights:
                    self.decoder.weight = self.encoder.weight

            def forward(self, ids, hidden=None):
                output, hidden = self.rnn(self.drop(self.encoder(ids)), hidden)
                return self.decoder(self.drop(output)), hidden

        return RNNModel()


LM_CASES = [("LSTM", True), ("GRU", False), ("RNN_RELU", False), ("RNN_TANH", True)]


@pytest.mark.parametrize("rnn_type,tied", LM_CASES, ids=[f"{t}-{'tied' if b else 'untied'}" for t, b in LM_CASES])
def test_language_model_trained_in_torch_runs_in_rnnkit_and_back(rnn_type, tied):
    torch = _torch()
    from rnnkit.models.language_model import LanguageModel

    torch.manual_seed(2)
    V = 17
    model = _RNNModel.make(torch, rnn_type, V, 8, 8, 2, tie_weights=tied)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.arange(300) % V
    for _ in range(15):  # trained, so the weights are not at their initial values
        starts = torch.randint(0, 280, (4,))
        batch = torch.stack([data[s : s + 9] for s in starts]).T
        opt.zero_grad()
        logits, _ = model(batch[:-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), batch[1:].reshape(-1)).backward()
        opt.step()
    model.eval()
    ids = torch.randint(0, V, (3, 10))
    with torch.no_grad():
        ref, _ = model(ids.T)
    ref = ref.transpose(0, 1).numpy()

    ours = from_torch(model, vocab=[chr(97 + i) for i in range(V)])
    assert isinstance(ours, LanguageModel) and ours.config.tie_weights == tied
    ours.eval()
    _close(ours.predict(ids.numpy())[0], ref)

    back = to_torch(ours)
    back.eval()
    with torch.no_grad():
        logits_back, _ = back(ids)
    _close(logits_back.numpy(), ref)
    assert (back.decoder.weight is back.encoder.weight) == tied


def test_language_model_trained_in_rnnkit_runs_in_torch(tmp_path):
    torch = _torch()
    from rnnkit.data import Vocab
    from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
    from rnnkit.optim import Adam

    V = 11
    config = LanguageModelConfig(vocab_size=V, level="char", cell="gru", embedding_size=6, hidden_size=7,
                                 num_layers=2)
    ours = LanguageModel(config, vocab=Vocab([chr(97 + i) for i in range(V)]).to_dict())
    opt = Adam(ours, lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(10):
        ids = rng.integers(0, V, size=(4, 9))
        opt.zero_grad()
        ours.loss(ids[:, :-1], ids[:, 1:])
        ours.backward()
        opt.step()
    ours.eval()
    ids = rng.integers(0, V, size=(2, 8))
    ours.reset_state()  # predict(state=None) would otherwise start from the carried training state
    logits, _ = ours.predict(ids)
    module = to_torch(ours)
    with torch.no_grad():
        ref, _ = module(torch.from_numpy(ids))
    _close(ref.numpy(), logits)
    # and through a safetensors file, read back without the module
    path = save_torch_safetensors(ours, tmp_path / "lm.safetensors")
    again = load_torch_safetensors(path, vocab=ours.vocab)
    assert again.vocab == ours.vocab
    _close(again.predict(ids)[0], logits, tol=0)


def test_state_dict_weights_of_wrong_rank_are_explained():
    gru = torch_state_dict(GRU(3, 5, num_layers=2, seed=0))
    for key, shape in (("weight_ih_l0", (15, 3, 1)), ("weight_hh_l0", (15,)), ("weight_ih_l0", (0, 3))):
        with pytest.raises(ValueError, match=rf"'{key}' has shape .*; expected a 2-d weight matrix"):
            from_torch({**gru, key: np.zeros(shape, np.float32)})
    with pytest.raises(ValueError, match="state_dict lacks 'weight_hh_l0'"):
        from_torch({k: v for k, v in gru.items() if k != "weight_hh_l0"})
    cell = torch_state_dict(LSTMCell(3, 5, seed=0))
    with pytest.raises(ValueError, match=r"'weight_ih' has shape \(20, 3, 1\); expected a 2-d weight matrix"):
        from_torch({**cell, "weight_ih": np.zeros((20, 3, 1), np.float32)})


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_bfloat16_module_is_read_as_float32(as_state_dict):
    torch = _torch()
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True).bfloat16()
    ours = from_torch(module.state_dict() if as_state_dict else module)
    assert ours.dtype == np.float32
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(ours.params[name], value.float().numpy())  # bf16 -> f32 is exact
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        ref, _ = module.float()(torch.from_numpy(x))
    _close(ours.forward(x)[0], ref.numpy())


def test_bfloat16_safetensors_is_read_as_float32(tmp_path):
    torch = _torch()
    from safetensors.torch import save_file

    module = torch.nn.GRU(3, 4).bfloat16()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp_path / "gru.safetensors"))
    ours = load_torch_safetensors(tmp_path / "gru.safetensors")
    assert isinstance(ours, GRU) and ours.dtype == np.float32
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(ours.params[name], value.float().numpy())
