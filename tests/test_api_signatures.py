"""API details that docs/ARCHITECTURE.md states: keyword-only arguments and re-exports."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import rnnkit
from rnnkit import layers
from rnnkit.analysis.gradcheck import gradcheck

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


@pytest.mark.parametrize("call", [
    lambda: rnnkit.RNN(3, 4, 1, "relu"),  # PyTorch's order: nonlinearity 4th; here it was bias="relu"
    lambda: rnnkit.LSTM(3, 4, 1, True),  # PyTorch's: bias, batch_first, dropout, bidirectional
    lambda: rnnkit.GRU(3, 4, 1, True, True),
])
def test_recurrent_arguments_after_num_layers_are_keyword_only(call):
    with pytest.raises(TypeError, match="positional argument"):
        call()


def test_recurrent_layers_by_keyword():
    rnn = rnnkit.RNN(3, 4, 2, nonlinearity="relu", bias=False, bidirectional=True, seed=0)
    assert rnn.nonlinearity == "relu" and rnn.num_layers == 2 and "bias_ih_l0" not in rnn.params
    assert "weight_hh_l1_reverse" in rnn.params
    for cls in (rnnkit.LSTM, rnnkit.GRU):
        layer = cls(3, 4, 1, bias=True, dropout=0.0, stateful=True, seed=0)
        y, _ = layer.forward(np.zeros((2, 5, 3), np.float32))
        assert y.shape == (2, 5, 4) and layer.stateful
    for cls in (rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU):
        kinds = [p.kind for p in inspect.signature(cls).parameters.values()]
        assert kinds[:3] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
        assert set(kinds[3:]) == {inspect.Parameter.KEYWORD_ONLY}


def test_linear_cross_entropy_is_re_exported_from_rnnkit():
    assert rnnkit.linear_cross_entropy is layers.linear_cross_entropy
    assert rnnkit.LinearCrossEntropyResult is layers.LinearCrossEntropyResult
    assert {"linear_cross_entropy", "LinearCrossEntropyResult"} <= set(rnnkit.__all__)
    lin = rnnkit.Linear(4, 6, seed=0)
    x, targets = np.ones((2, 3, 4), np.float32), np.zeros((2, 3), np.int64)
    result = rnnkit.linear_cross_entropy(lin, x, targets, None, grad=False)
    loss, count, dx = result
    assert isinstance(result, rnnkit.LinearCrossEntropyResult) and count == 6 and dx is None and loss > 0
    with pytest.raises(TypeError):
        rnnkit.linear_cross_entropy(lin, x, targets, None, None)  # ignore_index is keyword-only


def _documented(name: str) -> str:
    """The signature the architecture document gives for ``name(...)``, whitespace collapsed."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(rf"^(?:report = rnnkit\.)?{name}\((.*?)\)(?: ->|\n)", text, re.M | re.S)
    assert match, f"{name} not in {ARCHITECTURE.name}"
    return " ".join(match.group(1).split())


def _params(sig: inspect.Signature) -> str:
    out, star = [], False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        out.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return re.sub(r"e-0(\d)", r"e-\1", ", ".join(out).replace("'", '"'))  # 1e-06 is written 1e-6


def test_documented_signatures_are_the_code():
    assert _documented("gradcheck") == _params(inspect.signature(gradcheck))
    assert _documented("RNN") == _params(inspect.signature(rnnkit.RNN))
