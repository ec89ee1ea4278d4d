"""`rnnkit inspect`: the activations it shows are the model's, and the page works in a real browser.

The browser test drives Debian's headless chromium over the Chrome DevTools protocol on a
pipe (``--remote-debugging-pipe``: no port, no extra package): it loads the page, reads the
text and the computed colour of every character, switches unit and source through the
page's own controls, and checks the colours change. Without chromium it skips, saying how
to install it (``.ci/install_browser.sh``).
"""
from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time

import numpy as np
import pytest

from rnnkit.analysis import gradflow as gf
from rnnkit.analysis import inspect as ins
from rnnkit.data import Vocab
from rnnkit.layers import GRU, LSTM, RNN

TEXT = ('He said "hello (world)" and left.\n'
        'She [replied] {quietly}: "yes, (a [b] c)".\n'
        "No quotes here, nor brackets.\n") * 3


def _model(cell="lstm", seed=0):
    vocab = Vocab.build(TEXT, specials=())
    model = gf.CharModel(len(vocab), hidden_size=12, embedding_size=6, cell=cell, seed=seed)
    return model, vocab


# ----------------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_sources_are_the_layers_states_and_gates(cls):
    rnn = cls(4, 5, num_layers=2, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((1, 9, 4))
    sources = {s.name: s.values for s in ins.activation_sources(rnn, x)}
    y, state = rnn.forward(x)
    np.testing.assert_allclose(sources["h1"], y[0], atol=1e-12)
    if cls is LSTM:
        np.testing.assert_allclose(sources["c1"][-1], state[1][1, 0], atol=1e-12)
        for l in (0, 1):  # the cell equations hold for the reported gates
            c_prev = np.vstack([np.zeros(5), sources[f"c{l}"][:-1]])
            np.testing.assert_allclose(sources[f"c{l}"], sources[f"f{l}"] * c_prev + sources[f"i{l}"] * sources[f"g{l}"],
                                       atol=1e-12)
            np.testing.assert_allclose(sources[f"h{l}"], sources[f"o{l}"] * np.tanh(sources[f"c{l}"]), atol=1e-12)
    if cls is GRU:
        for l in (0, 1):
            h_prev = np.vstack([np.zeros(5), sources[f"h{l}"][:-1]])
            z, n = sources[f"z{l}"], sources[f"n{l}"]
            np.testing.assert_allclose(sources[f"h{l}"], (1 - z) * n + z * h_prev, atol=1e-12)
    expected = {RNN: {"h0", "h1"}, LSTM: {f"{k}{l}" for k in "hcifgo" for l in (0, 1)},
                GRU: {f"{k}{l}" for k in "hrzn" for l in (0, 1)}}[cls]
    assert set(sources) == expected


def test_text_properties():
    props = ins.text_properties(list('a "b (c)"\nxy'))
    np.testing.assert_array_equal(props["inside quotes"], [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(props["line position"], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2])
    np.testing.assert_array_equal(props["bracket depth"], [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0])


def test_correlations_find_a_planted_unit():
    tokens = list(TEXT)
    props = ins.text_properties(tokens)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((len(tokens), 6)) * 0.1
    values[:, 4] = props["bracket depth"] * 0.5 - 0.2  # unit 4 counts brackets
    rows = ins.unit_correlations([ins.Source("h0", "layer 0 hidden h", "signed", values)], props, top=2)
    top_bracket = next(r for r in rows if r["property"] == "bracket depth")
    assert (top_bracket["source"], top_bracket["unit"]) == ("h0", 4) and top_bracket["r"] == pytest.approx(1.0)
    assert not ins.unit_correlations([ins.Source("h0", "h", "signed", values)],
                                     {"constant": np.ones(len(tokens))})


def test_predictions_are_the_models():
    model, vocab = _model("gru")
    ids = vocab.encode(list(TEXT[:20]))
    data = ins.page_data(model, ids, list(vocab.itos), top_k=3)
    y, _ = model.rnn.forward(model.encoder.forward(ids[None]))
    logits = model.decoder.forward(y)[0]
    np.testing.assert_array_equal(np.array(data["predictions"]["ids"]), np.argsort(-logits, axis=1)[:, :3])
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(data["predictions"]["probs"], np.sort(p / p.sum(1, keepdims=True), 1)[:, ::-1][:, :3],
                               atol=1e-4)


def test_page_is_self_contained_and_escapes_the_text(tmp_path):
    model, vocab = _model()
    text = TEXT + "</script><script>alert(1)</script>"
    vocab = Vocab.build(text, specials=())
    model = gf.CharModel(len(vocab), hidden_size=8, embedding_size=4, cell="rnn", seed=0)
    page = ins.write_page(model, text, tmp_path / "page.html", vocab=vocab).read_text()
    assert page.count("</script>") == 2  # the data block's and the code's own; the text's is escaped
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page), "the page must not load anything"
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert "".join(data["tokens"]) == text
    with pytest.raises(ValueError, match="at most"):
        ins.write_page(model, "a" * (ins.MAX_CHARS + 1), tmp_path / "big.html", vocab=vocab)



def test_characters_outside_the_vocabulary_are_shown_and_measured_as_themselves(tmp_path):
    """A model whose vocabulary lacks '"' and '(' still gets a page about the text typed: those
    characters go in as <unk>, but the page shows them and the quote and bracket properties see them."""
    vocab = Vocab.build("abc \n", specials=("<unk>",))
    model = gf.CharModel(len(vocab), hidden_size=8, embedding_size=4, cell="lstm", seed=0)
    text = 'ab "c (a) b" ca\nbc (ab "a" c) a'
    page = ins.write_page(model, text, tmp_path / "page.html", vocab=vocab).read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert "".join(data["tokens"]) == text and "<unk>" not in data["tokens"]
    assert {c["property"] for c in data["correlations"]} == set(ins.PROPERTIES)
    with pytest.raises(ValueError, match="top_k -2; expected an integer >= 1"):
        ins.write_page(model, text, tmp_path / "k.html", vocab=vocab, top_k=-2)


# ----------------------------------------------------------------------------- the browser
def find_chromium() -> str | None:
    override = os.environ.get("RNNKIT_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """A minimal Chrome DevTools protocol client over ``--remote-debugging-pipe``.

    The browser reads JSON commands, each ended by a NUL byte, on its fd 3 and writes
    replies and events, NUL-ended, on its fd 4.
    """

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", "--window-size=1300,900"]

    def __init__(self, executable: str, profile_dir):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def remap():  # child side: our pipe ends become its fds 3 and 4
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([executable, *self.FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=remap, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.session = b"", 0, None

    def send(self, method: str, params=None, timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                    raise TimeoutError(f"no reply to {method} within {timeout} s")
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"browser closed the pipe: {self.proc.stderr.read().decode()[-2000:]}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page never satisfied {expression!r}")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path):
    executable = find_chromium()
    if executable is None:
        pytest.skip("chromium not found: run .ci/install_browser.sh (Debian: apt-get install chromium) "
                    "or set RNNKIT_CHROMIUM to a Chrome/Chromium binary to run the browser test")
    devtools = DevTools(executable, tmp_path / "profile")
    yield devtools
    devtools.close()


COLOURS = "Array.from(document.querySelectorAll('#text span.ch')).map(s => getComputedStyle(s).backgroundColor)"


def test_page_in_headless_chromium(browser, tmp_path):
    model, vocab = _model("lstm")
    path = ins.write_page(model, TEXT, tmp_path / "inspect.html", vocab=vocab, title="inspect test")
    browser.open(path.resolve().as_uri() + "#source=h0&unit=0")
    assert browser.wait_for("document.body && document.body.dataset.rendered") == "h0:0"
    assert browser.evaluate("document.title") == "inspect test"

    # the text is there, one span per character
    shown = browser.evaluate("document.getElementById('text').innerText")
    assert shown.replace("\u21b5", "") == TEXT
    assert browser.evaluate("document.querySelectorAll('#text span.ch').length") == len(TEXT)
    before = browser.evaluate(COLOURS)
    assert len(set(before)) > 5, "characters should be coloured by the unit's activation"
    shot_before = browser.screenshot()

    # switch the unit through the page's number box, as a person would
    browser.evaluate("const u = document.getElementById('unit'); u.value = 5; u.dispatchEvent(new Event('change'))")
    assert browser.evaluate("document.body.dataset.rendered") == "h0:5"
    after_unit = browser.evaluate(COLOURS)
    assert sum(a != b for a, b in zip(before, after_unit)) > len(TEXT) // 2
    assert browser.screenshot() != shot_before

    # switch the source (forget gate) through the select; then the next-unit button
    browser.evaluate("const s = document.getElementById('source'); s.value = 'f0'; s.dispatchEvent(new Event('change'))")
    assert browser.evaluate("document.body.dataset.rendered") == "f0:5"
    after_source = browser.evaluate(COLOURS)
    assert after_source != after_unit
    browser.evaluate("document.getElementById('next').click()")
    assert browser.evaluate("document.body.dataset.rendered") == "f0:6"
    assert browser.evaluate("location.hash") == "#source=f0&unit=6"

    # clicking a correlated unit selects it; clicking a character lists the top predictions
    row = browser.evaluate("(() => { const tr = document.querySelector('#correlations tbody tr'); tr.click();"
                           " return [tr.dataset.source, +tr.dataset.unit]; })()")
    assert browser.evaluate("document.body.dataset.rendered") == f"{row[0]}:{row[1]}"
    browser.evaluate("document.querySelectorAll('#text span.ch')[3].click()")
    assert browser.evaluate("document.querySelectorAll('#predictions tr').length") == 5
    assert "position 3" in browser.evaluate("document.getElementById('info-body').innerText")
    (tmp_path / "inspect.png").write_bytes(browser.screenshot())


def test_command_line_on_a_language_model_checkpoint(tmp_path):
    import argparse

    from rnnkit.models.language_model import LanguageModel, LanguageModelConfig

    vocab = Vocab.build(TEXT, specials=())
    config = LanguageModelConfig(vocab_size=len(vocab), cell="lstm", embedding_size=6, hidden_size=8, num_layers=2)
    path = LanguageModel(config, vocab=vocab.to_dict()).save(tmp_path / "lm.safetensors")
    parser = argparse.ArgumentParser()
    ins.add_arguments(parser)
    out = tmp_path / "page.html"
    assert ins.run(parser.parse_args([str(path), "--string", TEXT, "--max-chars", "100", "--out", str(out)])) == 0
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', out.read_text(), re.S).group(1))
    assert "".join(data["tokens"]) == TEXT[:100]
    assert {s["name"] for s in data["sources"]} == {f"{k}{l}" for k in "hcifgo" for l in (0, 1)}
    assert len(data["predictions"]["ids"]) == 100 and len(data["predictions"]["ids"][0]) == 5


def test_command_line_refuses_a_model_that_is_not_a_language_model(tmp_path, capsys):
    """A classifier checkpoint once crashed deep in page_data (no .encoder); now a clean error."""
    from rnnkit import cli
    from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier

    config = ClassifierConfig(embedding_dim=4, hidden_size=4)
    path = SequenceClassifier(config, 20, 2, seed=0).save(tmp_path / "cls.safetensors")
    out = tmp_path / "page.html"
    message = "holds a 'SequenceClassifier' model; expected LanguageModel"
    assert cli.main(["inspect", str(path), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ins.main([str(path), "--out", str(out)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
