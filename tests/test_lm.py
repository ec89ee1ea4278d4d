"""Language model: gradients, learning on real text, checkpoints, resume, generation."""
from __future__ import annotations

import math

import numpy as np
import pytest

import rnnkit
from rnnkit.data.text import bundled_text, load_corpus
from rnnkit.data.vocab import Vocab
from rnnkit.generate import encode_prime, generate, sample_next
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.tasks.lm import LanguageModelTask, LMTaskConfig
from rnnkit.train import TrainConfig, Trainer


def tiny_lm(cell="lstm", tie=False, dtype=np.float64, **kw):
    cfg = LanguageModelConfig(vocab_size=11, cell=cell, embedding_size=6, hidden_size=6, num_layers=2,
                              tie_weights=tie, init_range=0.0, **kw)
    return LanguageModel(cfg, dtype=dtype, seed=1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("tie", [False, True])
def test_lm_gradcheck_second_chunk_with_dropout(cell, tie):
    model = tiny_lm(cell, tie, dropout=0.3, embedding_dropout=0.2, output_dropout=0.2)
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 11, (2, 5)), rng.integers(0, 11, (2, 5))
    model.forward(ids)  # a first chunk: the second starts from its carried state
    report = rnnkit.gradcheck(model, (ids, targets), method="loss", eps=1e-5)
    assert report.passed(1e-6), str(report)


def test_tied_weights_are_one_parameter():
    model = tiny_lm(tie=True)
    names = [n for n, _, _ in model.named_parameters()]
    assert "encoder.weight" in names and "decoder.weight" not in names
    assert model.decoder.params["weight"] is model.encoder.params["weight"]
    model.to(dtype=np.float32)  # re-tied after a cast
    assert model.decoder.params["weight"] is model.encoder.params["weight"]
    with pytest.raises(ValueError, match="tie_weights needs embedding_size == hidden_size"):
        LanguageModelConfig(vocab_size=5, embedding_size=4, hidden_size=6, tie_weights=True)


def _char_task(tmp_path=None, text_chars=60_000, **overrides):
    cfg = LMTaskConfig(corpus="tinyshakespeare", level="char", hidden_size=96, embedding_size=32, batch_size=16,
                       bptt=32, max_eval_tokens=3000, **overrides)
    corpus = load_corpus("tinyshakespeare", level="char")
    corpus.train = corpus.train[:text_chars]
    return cfg, LanguageModelTask(cfg, corpus, seed=0)


def test_small_lm_learns_real_text(tmp_path):
    """On 60k characters of Shakespeare, loss falls far below log(V) within seconds.

    log(V) = 4.19 nats is chance; 3.31 nats is the unigram entropy of the text (a model
    that knows letter frequencies only). Beating that by half a nat needs context.
    """
    cfg, task = _char_task()
    chance = math.log(len(task.corpus.vocab))
    before = task.evaluate("valid")["loss"]
    trainer = Trainer(task, TrainConfig(epochs=1, lr=5e-3, max_steps=100, run_dir=str(tmp_path / "run"),
                                        progress=False, eval_test=False), cfg)
    result = trainer.fit()
    assert before > 0.95 * chance
    assert result["best_val_loss"] < 2.8, result


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = LanguageModel(LanguageModelConfig(vocab_size=7, hidden_size=8, embedding_size=4, cell="gru"),
                          vocab=Vocab(["<unk>", "a", "b", "c", "d", "e", "f"]).to_dict(), seed=3)
    ids = np.array([[1, 2, 3, 4], [6, 5, 4, 3]])
    path = model.save(tmp_path / "lm.safetensors")
    loaded = LanguageModel.load(path)
    np.testing.assert_array_equal(loaded.predict(ids)[0], model.predict(ids)[0])
    assert loaded.config == model.config and loaded.vocab == model.vocab
    assert type(rnnkit.models.Model.load(path)) is LanguageModel  # dispatch on the stored class name


def test_resume_matches_uninterrupted_run(tmp_path):
    """Two epochs straight == one epoch, stop, resume for the second (same data, RNG, lr schedule)."""
    def run(run_dir, epochs, resume=False):
        cfg, task = _char_task(text_chars=8_000, dropout=0.0, output_dropout=0.3)
        tc = TrainConfig(epochs=epochs, lr=3e-3, run_dir=str(run_dir), progress=False, eval_test=False,
                         schedule="step", lr_factor=0.5, seed=0)
        return Trainer(task, tc, cfg).fit(resume=resume), run_dir

    straight, _ = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    resumed, _ = run(tmp_path / "b", 2, resume=True)
    assert resumed["best_val_loss"] == pytest.approx(straight["best_val_loss"], rel=1e-6)
    a = LanguageModel.load(tmp_path / "a" / "checkpoints" / "ckpt-2.safetensors")
    b = LanguageModel.load(tmp_path / "b" / "checkpoints" / "ckpt-2.safetensors")
    for (n, pa, _), (_, pb, _) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(pa, pb, rtol=1e-6, atol=1e-7, err_msg=n)


def test_fresh_run_refuses_to_mix_into_an_old_one(tmp_path):
    cfg, task = _char_task(text_chars=3_000)
    tc = TrainConfig(epochs=1, max_steps=2, run_dir=str(tmp_path), progress=False, eval_test=False)
    Trainer(task, tc, cfg).fit()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        Trainer(task, tc, cfg).fit()


def test_divergence_stops_the_step_and_names_the_parameter(tmp_path):
    from rnnkit.train import DivergenceError

    cfg, task = _char_task(text_chars=3_000)
    original = task.backward

    def poisoned_backward():
        original()
        task.model.rnn.grads["weight_hh_l0"][0, 0] = np.nan

    task.backward = poisoned_backward
    weights = task.model.rnn.params["weight_hh_l0"].copy()
    tc = TrainConfig(epochs=1, run_dir=str(tmp_path), progress=False)
    with pytest.raises(DivergenceError, match=r"step 1 .*non-finite gradient in rnn.weight_hh_l0"):
        Trainer(task, tc, cfg).fit()
    np.testing.assert_array_equal(task.model.rnn.params["weight_hh_l0"], weights)  # nothing written


def test_generation_is_reproducible_and_top_k_1_is_greedy():
    cfg, task = _char_task(text_chars=2_000)
    model = task.model
    pieces = list(generate(model, "ROMEO:", 40, temperature=0.9, seed=5))
    a = "".join(pieces)
    b = "".join(generate(model, "ROMEO:", 40, temperature=0.9, seed=5))
    c = "".join(generate(model, "ROMEO:", 40, temperature=0.9, seed=6))
    assert a == b and a != c and len(pieces) == 40
    greedy = "".join(generate(model, "ROMEO:", 30, greedy=True))
    top1 = "".join(generate(model, "ROMEO:", 30, top_k=1, seed=123))
    assert greedy == top1


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert sample_next(logits, rng, greedy=True) == 0
    draws = {sample_next(logits, rng, top_k=2) for _ in range(200)}
    assert draws == {0, 1}
    draws = {sample_next(logits, rng, top_p=0.6) for _ in range(200)}  # 0.5 < 0.6: needs the top two
    assert draws == {0, 1}
    draws = [sample_next(logits, rng, temperature=0.05) for _ in range(100)]
    assert draws.count(0) > 95
    with pytest.raises(ValueError, match="temperature 0"):
        sample_next(logits, rng, temperature=0)


def test_unknown_prime_characters():
    vocab = Vocab(["a", "b"])  # no <unk>
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['z'\]"):
        encode_prime(vocab, "abz", "char")
    with_unk = Vocab(["<unk>", "a", "b"])
    assert encode_prime(with_unk, "abz", "char").tolist() == [1, 2, 0]


def test_bundled_corpus_is_there():
    text = bundled_text("tinyshakespeare")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
