"""See what a character model's units do: one self-contained HTML page.

The page shows a text with each character coloured by the activation of one chosen unit
(hidden state ``h``, cell state ``c`` or a gate) after the model has read that character,
a picker for the layer/source and unit, the model's top predictions for the next
character at each position, and the units whose activation correlates most (Pearson
``r`` over the text's positions) with simple properties of the text:

- ``inside quotes``: 1 between an opening and a closing ``"``;
- ``line position``: characters since the last newline;
- ``bracket depth``: open ``( [ {`` not yet closed.

Activations are recomputed exactly with the model's own cells (``gradflow.run_cells``)
and, for gates, the cell equations of ``layers/recurrent.py`` on those states:
LSTM ``i, f, o = sigma(.)``, ``g = tanh(.)`` of ``x W_ih^T + b_ih + h W_hh^T + b_hh``;
GRU ``r, z = sigma(.)``, ``n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))``.

The HTML holds everything (data as JSON, activations quantised to int8 per unit and
base64-encoded; no network, no external scripts). Command line: ``rnnkit inspect``.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .. import backend
from ..kernels.pointwise import sigmoid
from .gradflow import run_cells, step_cells

MAX_CHARS = 5000
TEMPLATE = "inspect_template.html"
PROPERTIES = {
    "inside quotes": 'between an opening and a closing "',
    "line position": "characters since the last newline",
    "bracket depth": "open ( [ { not yet closed",
}
GATE_LABELS = {"lstm": {"i": "input gate i", "f": "forget gate f", "g": "candidate g", "o": "output gate o"},
               "gru": {"r": "reset gate r", "z": "update gate z", "n": "candidate n"}}


@dataclass
class Source:
    name: str  # "h0", "c1", "f0", ...
    label: str  # "layer 0 hidden h"
    kind: str  # "signed" (tanh-like, any sign) or "gate" (in [0, 1])
    values: np.ndarray  # (T, H)


def _mode(rnn) -> str:
    return getattr(rnn, "mode", "rnn")


def activation_sources(rnn, x) -> list[Source]:
    """Every layer's ``h`` (LSTM also ``c`` and ``i, f, g, o``; GRU ``r, z, n``) after each step.

    rnn: unidirectional RNN/LSTM/GRU (or ActivationRNN); x: (T, D) or (1, T, D) inputs.
    """
    x = np.asarray(backend.to_numpy(x), dtype=np.float64)
    x = x[None] if x.ndim == 2 else x
    cells = step_cells(rnn)
    inputs, states, _ = run_cells(cells, x)
    mode, T = _mode(rnn), x.shape[1]
    sources = []
    for l, cell in enumerate(cells):
        lstm = mode == "lstm"
        h_after = np.stack([(states[l][t + 1][0] if lstm else states[l][t + 1])[0] for t in range(T)])
        sources.append(Source(f"h{l}", f"layer {l} hidden h", "signed", h_after))
        if lstm:
            c_after = np.stack([states[l][t + 1][1][0] for t in range(T)])
            sources.append(Source(f"c{l}", f"layer {l} cell c", "signed", c_after))
        if mode not in GATE_LABELS:
            continue
        X = np.stack([inputs[l][t][0] for t in range(T)])  # (T, D_l)
        Hp = np.stack([(states[l][t][0] if lstm else states[l][t])[0] for t in range(T)])  # h_{t-1}
        p = cell.params
        H = cell.hidden_size
        xw, hw = X @ p["weight_ih"].T, Hp @ p["weight_hh"].T
        if "bias_ih" in p:
            xw, hw = xw + p["bias_ih"], hw + p["bias_hh"]
        if lstm:
            A = xw + hw
            gates = {"i": sigmoid(A[:, :H]), "f": sigmoid(A[:, H : 2 * H]), "g": np.tanh(A[:, 2 * H : 3 * H]),
                     "o": sigmoid(A[:, 3 * H :])}
        else:
            r = sigmoid(xw[:, :H] + hw[:, :H])
            gates = {"r": r, "z": sigmoid(xw[:, H : 2 * H] + hw[:, H : 2 * H]),
                     "n": np.tanh(xw[:, 2 * H :] + r * hw[:, 2 * H :])}
        for key, label in GATE_LABELS[mode].items():
            kind = "signed" if key in ("g", "n") else "gate"
            sources.append(Source(f"{key}{l}", f"layer {l} {label}", kind, gates[key]))
    return sources


def text_properties(tokens: list[str]) -> dict[str, np.ndarray]:
    """Per position, the state of the text *after* reading that token (see ``PROPERTIES``)."""
    inside, column, depth = np.zeros(len(tokens)), np.zeros(len(tokens)), np.zeros(len(tokens))
    quote, col, level = False, 0, 0
    for t, tok in enumerate(tokens):
        if tok == '"':
            quote = not quote
        col = 0 if tok == "\n" else col + len(tok)
        if tok in ("(", "[", "{"):
            level += 1
        elif tok in (")", "]", "}") and level > 0:
            level -= 1
        inside[t], column[t], depth[t] = quote, col, level
    return {"inside quotes": inside, "line position": column, "bracket depth": depth}


def unit_correlations(sources: list[Source], properties: dict[str, np.ndarray], top: int = 5) -> list[dict]:
    """The ``top`` units per property by ``|r|`` (Pearson, over positions); constant properties are skipped."""
    rows = []
    for prop, p in properties.items():
        if p.std() == 0:
            continue
        pz = (p - p.mean()) / p.std()
        found = []
        for s in sources:
            v = s.values
            std = v.std(axis=0)
            r = np.where(std > 0, ((v - v.mean(axis=0)) * pz[:, None]).mean(axis=0) / np.where(std > 0, std, 1), 0.0)
            found += [(abs(r[u]), r[u], s.name, u) for u in range(v.shape[1])]
        found.sort(key=lambda item: -item[0])
        rows += [{"property": prop, "source": name, "unit": int(u), "r": round(float(r), 4)}
                 for _, r, name, u in found[:top]]
    return rows


def predictions(model, h_top, top_k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k next-token ids and probabilities (T, k) from the top layer's states (T, H) via ``model.decoder``."""
    W = backend.to_numpy(model.decoder.params["weight"]).astype(np.float64)
    logits = h_top @ W.T
    if "bias" in model.decoder.params:
        logits += backend.to_numpy(model.decoder.params["bias"]).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(top_k, probs.shape[1])
    ids = np.argsort(-probs, axis=1)[:, :k]
    return ids, np.take_along_axis(probs, ids, axis=1)


def _quantise(values: np.ndarray, kind: str) -> tuple[str, list[float]]:
    """int8 per unit: ``q = round(127 v / scale)``, scale = max |v| of the unit (1 for gates)."""
    if kind == "gate":
        scale = np.ones(values.shape[1])
    else:
        scale = np.abs(values).max(axis=0)
        scale[scale == 0] = 1.0
    q = np.clip(np.round(values / scale * 127), -127, 127).astype(np.int8)
    return base64.b64encode(np.ascontiguousarray(q).tobytes()).decode("ascii"), [round(float(s), 5) for s in scale]


def page_data(model, ids, vocab_tokens: list[str], title: str = "rnnkit inspect", meta: str = "",
              top_k: int = 5, chars: list[str] | None = None) -> dict:
    """Everything the page shows, JSON-able. ids: (T,) token ids of the text; vocab_tokens: id -> token;
    chars: the text's own characters, one per id, shown and used for the text's properties
    (default: the vocabulary's tokens, where a character outside it reads ``<unk>``)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size < 2:
        raise ValueError(f"text of {ids.size} tokens; need at least 2")
    if chars is not None and len(chars) != ids.size:
        raise ValueError(f"{len(chars)} characters for {ids.size} token ids; expected one each")
    x = backend.to_numpy(model.encoder.params["weight"])[ids]
    sources = activation_sources(model.rnn, x)
    tokens = list(chars) if chars is not None else [vocab_tokens[i] for i in ids]
    top_layer = len(step_cells(model.rnn)) - 1
    pred_ids, pred_probs = predictions(model, next(s.values for s in sources if s.name == f"h{top_layer}"), top_k)
    encoded = []
    for s in sources:
        q, scale = _quantise(s.values, s.kind)
        encoded.append({"name": s.name, "label": s.label, "kind": s.kind, "units": int(s.values.shape[1]),
                        "scale": scale, "q": q})
    correlations = unit_correlations(sources, text_properties(tokens))
    initial = correlations[0] if correlations else {"source": sources[0].name, "unit": 0}
    return {"title": title, "meta": meta, "tokens": tokens, "vocab": list(vocab_tokens), "sources": encoded,
            "predictions": {"ids": pred_ids.tolist(), "probs": np.round(pred_probs, 4).tolist()},
            "properties": PROPERTIES, "correlations": correlations,
            "initial": {"source": initial["source"], "unit": initial["unit"]}}


def render_html(data: dict) -> str:
    """The page: the template with ``data`` embedded as JSON (``</`` escaped so it cannot end the script)."""
    template = resources.files("rnnkit.analysis").joinpath(TEMPLATE).read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")
    page = template.replace("/*__INSPECT_DATA__*/", payload)
    return page.replace("<title>rnnkit inspect</title>", f"<title>{html.escape(data['title'])}</title>")


def write_page(model, text: str, path, vocab=None, title: str | None = None, top_k: int = 5) -> Path:
    """Write the inspect page of a character model for ``text``.

    model: encoder/rnn/decoder (rnnkit's LanguageModel); vocab: a ``Vocab`` or its dict
    (default ``model.vocab``). Characters outside the vocabulary go in as ``<unk>`` where it has
    one; the page shows, and measures the text's properties on, the text's own characters.
    """
    from ..checkpoint import write_text_atomic

    from ..data import Vocab

    vocab = vocab if vocab is not None else getattr(model, "vocab", None)
    if vocab is None:
        raise ValueError("no vocabulary: pass vocab= (the model has no .vocab)")
    vocab = Vocab.from_dict(vocab) if isinstance(vocab, dict) else vocab
    if len(text) > MAX_CHARS:
        raise ValueError(f"text of {len(text)} characters; at most {MAX_CHARS} (the page holds every activation)")
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k {top_k!r}; expected an integer >= 1 (predictions listed per character)")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        ids = vocab.encode(list(text))
        H = model.rnn.hidden_size
        meta = (f"{type(model).__name__}: {_mode(model.rnn).upper()}, {getattr(model.rnn, 'num_layers', 1)} layer(s), "
                f"hidden size {H}, vocabulary {len(vocab)}; text of {len(text)} characters")
        data = page_data(model, ids, list(vocab.itos), title or "rnnkit inspect", meta, top_k, chars=list(text))
    finally:
        model.train(was_training)
    return write_text_atomic(path, render_html(data))


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write one self-contained HTML page showing a text coloured by the activation of a "
                          "character model's units and gates, with top predictions and property-correlated units.")
    parser.add_argument("checkpoint", help="a saved character-level language model")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--text", help="UTF-8 text file to show (default: the start of the bundled tiny Shakespeare)")
    src.add_argument("--string", help="the text itself")
    parser.add_argument("--max-chars", type=int, default=2000, help="show at most this many characters")
    parser.add_argument("--top-k", type=int, default=5, help="predictions listed per character")
    parser.add_argument("--out", default="inspect.html", help="output HTML file")


def run(args) -> int:
    from ..models.language_model import LanguageModel

    # any other model is refused: "holds a 'SequenceClassifier' model; expected LanguageModel"
    model = LanguageModel.load(args.checkpoint)
    if getattr(getattr(model, "config", None), "level", "char") != "char":
        raise SystemExit(f"{args.checkpoint}: a {model.config.level}-level model; inspect shows character models")
    if args.string is not None:
        text = args.string
    elif args.text:
        from ..data import read_text

        text = read_text(args.text)
    else:
        from ..data import bundled_text

        text = bundled_text("tinyshakespeare")
    if not 2 <= args.max_chars <= MAX_CHARS:
        raise SystemExit(f"--max-chars {args.max_chars}; expected 2..{MAX_CHARS}")
    text = text[: args.max_chars]
    path = write_page(model, text, args.out, title=f"rnnkit inspect: {Path(args.checkpoint).name}", top_k=args.top_k)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB); open it in a browser")
    return 0


def main(argv=None) -> int:
    """``python -m rnnkit.analysis.inspect``: the same as ``rnnkit inspect``."""
    parser = argparse.ArgumentParser(prog="rnnkit inspect")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        parser.exit(2, f"rnnkit inspect: error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
