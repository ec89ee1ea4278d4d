"""Generation: the sampling rules as pure functions, seeded reproducibility, streaming, bad primes."""
from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

from rnnkit.data.text import tokenize
from rnnkit.data.vocab import Vocab
from rnnkit.generate import (apply_temperature, encode_prime, generate, greedy, sample_next, softmax, top_k_filter,
                             top_p_filter)
from rnnkit.layers import Layer
from rnnkit.models import LanguageModel, LanguageModelConfig

TEXT = "to be or not to be that is the question\nwhether tis nobler in the mind to suffer\n"


@pytest.fixture(autouse=True, scope="module")
def single_threaded_blas():
    """Tiny matrices gain nothing from BLAS threads, and on a busy machine OpenBLAS's spinning
    threads make these tests ~10x slower; threadpoolctl comes with the dev extras (scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def char_model(seed=0):
    vocab = Vocab.build(tokenize(TEXT, "char"), specials=("<unk>",))
    cfg = LanguageModelConfig(vocab_size=len(vocab), level="char", embedding_size=8, hidden_size=16)
    return LanguageModel(cfg, vocab=vocab.to_dict(), seed=seed)


LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))


def test_pure_rules_on_logits():
    assert greedy(LOGITS) == 0 and greedy([1.0, 3.0, 3.0]) == 1
    np.testing.assert_allclose(softmax(apply_temperature(LOGITS, 1.0)), [0.5, 0.3, 0.15, 0.05])
    sharp = softmax(apply_temperature(LOGITS, 0.5))
    assert sharp[0] > 0.5 and sharp.sum() == pytest.approx(1)
    np.testing.assert_array_equal(np.isfinite(top_k_filter(LOGITS, 2)), [True, True, False, False])
    np.testing.assert_array_equal(top_k_filter(LOGITS, 0), LOGITS)
    np.testing.assert_array_equal(np.isfinite(top_p_filter(LOGITS, 0.5)), [True, False, False, False])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(LOGITS, 0.6)), [True, True, False, False])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(LOGITS, 0.96)), [True, True, True, True])
    kept = softmax(top_p_filter(LOGITS, 0.6))
    np.testing.assert_allclose(kept, [0.625, 0.375, 0, 0])  # renormalised
    # exactly at the threshold: 0.5 + 0.2 + 0.2 is 0.8999999999999999 in floats, and is the nucleus of 0.9
    edge = np.log(np.array([0.5, 0.2, 0.2, 0.1]))
    np.testing.assert_array_equal(np.isfinite(top_p_filter(edge, 0.9)), [True, True, True, False])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(edge, 0.9000001)), [True, True, True, True])


def test_sampling_frequencies():
    rng = np.random.default_rng(0)
    assert {sample_next(LOGITS, rng, top_k=2) for _ in range(300)} == {0, 1}
    assert {sample_next(LOGITS, rng, top_p=0.6) for _ in range(300)} == {0, 1}
    draws = np.bincount([sample_next(LOGITS, rng) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(draws, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    assert [sample_next(LOGITS, rng, temperature=0.05) for _ in range(100)].count(0) > 95


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature 0; expected > 0"),
    ({"top_k": -1}, "top_k -1"),
    ({"top_p": 0.0}, "top_p 0.0; expected 0 < p <= 1"),
    ({"top_p": 1.5}, "top_p 1.5"),
])
def test_bad_sampling_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_next(LOGITS, np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=message):  # checked before any model work
        next(generate(char_model(), "to", 5, **kwargs))


def test_generation_is_reproducible_and_top_k_1_is_greedy():
    model = char_model()
    a = list(generate(model, "to be", 40, temperature=0.9, seed=5))
    b = list(generate(model, "to be", 40, temperature=0.9, seed=5))
    c = list(generate(model, "to be", 40, temperature=0.9, seed=6))
    assert a == b and a != c and len(a) == 40
    assert "".join(generate(model, "to be", 30, greedy=True)) == "".join(generate(model, "to be", 30, top_k=1, seed=9))


def test_generation_matches_a_manual_loop_and_leaves_the_training_carry():
    """Prime in one forward, then one step per token with the state carried: same as re-reading everything."""
    model = char_model()
    model.forward(np.array([[1, 2, 3]]))
    carry = model.carried_state()["h"].copy()
    vocab = Vocab.from_dict(model.vocab)
    pieces = list(generate(model, "to be", 12, greedy=True))
    ids = list(vocab.encode(tokenize("to be", "char")))
    for piece in pieces:  # greedy from the full history, no state carried between calls
        logits, _ = model.predict(np.array([ids]))
        assert vocab.itos[int(np.argmax(logits[0, -1]))] == piece
        ids.append(vocab.stoi[piece])
    np.testing.assert_array_equal(model.carried_state()["h"], carry)


def test_generation_runs_in_eval_mode_and_gives_the_mode_back():
    """Eval mode once for the loop (dropout off: the text is that of an eval-mode model), not one
    switch of every layer per token, and the model's own mode afterwards, also when stopped early."""
    cfg = LanguageModelConfig(vocab_size=char_model().config.vocab_size, level="char", embedding_size=8,
                              hidden_size=16, embedding_dropout=0.5, output_dropout=0.5)
    model = LanguageModel(cfg, vocab=char_model().vocab, seed=0)
    expected = list(generate(model.eval(), "to be", 20, greedy=True))
    model.train()
    blocks, switches = [], []
    original_block, original_train = type(model).evaluating, Layer.train

    def counting_block(self):
        blocks.append(1)
        return original_block(self)

    def counting_train(self, mode=True):
        switches.append(mode)
        return original_train(self, mode)

    model.evaluating = types.MethodType(counting_block, model)
    Layer.train = counting_train
    try:
        assert list(generate(model, "to be", 20, greedy=True)) == expected
    finally:
        Layer.train = original_train
    # one eval block for the whole loop, and no layer walked into eval mode and back per token
    assert blocks == [1] and switches == [] and model.training and model.rnn.training
    stream = generate(model, "to be", 20, greedy=True)
    next(stream)
    assert not model.training and not model.rnn.training  # eval mode while it runs
    stream.close()
    assert model.training and model.rnn.training
    model.eval()
    with model.evaluating():
        with model.evaluating():
            pass
        assert not model.training
    assert not model.training and not model.rnn.training  # the mode before: eval


def test_generation_streams():
    """Tokens come out one by one as they are produced, not after the whole text."""
    model = char_model()
    calls = []
    original = model.step

    def counting_step(ids, state):
        calls.append(1)
        return original(ids, state)

    model.step = counting_step
    stream = generate(model, "to", 100, seed=0)
    next(stream)
    assert len(calls) == 0  # the first token needs only the prime's forward
    next(stream)
    assert len(calls) == 1


def test_unknown_prime_tokens():
    vocab = Vocab(["a", "b"])  # no <unk>
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['y', 'z'\]"):
        encode_prime(vocab, "abzy", "char")
    with pytest.raises(ValueError, match="has no char tokens"):
        encode_prime(vocab, "", "char")
    with_unk = Vocab(["<unk>", "a", "b"])
    with pytest.warns(UserWarning, match=r"read as <unk>: \['z'\]"):
        assert encode_prime(with_unk, "abz", "char").tolist() == [1, 2, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_prime(with_unk, "ab", "char")


def test_word_level_pieces_read_as_text():
    vocab = Vocab.build(tokenize(TEXT, "word"), specials=("<unk>", "<eos>"))
    cfg = LanguageModelConfig(vocab_size=len(vocab), level="word", embedding_size=8, hidden_size=8)
    model = LanguageModel(cfg, vocab=vocab.to_dict(), seed=1)
    pieces = list(generate(model, "to be or", 60, seed=2))
    assert "\n" in pieces
    for before, piece in zip([" or", *pieces], pieces):
        if piece != "\n":  # a space before every word but a line's first
            assert piece == (piece.strip() if before == "\n" else " " + piece.strip()) and piece.strip() in vocab
    with pytest.raises(ValueError, match="expected >= 0"):
        list(generate(model, "to", -1))


def test_model_without_vocabulary():
    model = LanguageModel(LanguageModelConfig(vocab_size=4))
    with pytest.raises(ValueError, match="no vocabulary"):
        next(generate(model, "ab", 3))
    assert isinstance(generate, types.FunctionType)


def test_logits_with_nan_or_plus_inf_are_refused_by_every_rule():
    """A model whose weights went NaN used to 'generate' under greedy decoding (argmax picked the NaN)."""
    rng = np.random.default_rng(0)
    for bad in ([1.0, np.nan, 2.0], [1.0, np.inf, 2.0]):
        for kwargs in ({"greedy": True}, {"top_k": 2}, {}, {"top_p": 0.5}):
            with pytest.raises(ValueError, match=r"1 NaN/\+inf value\(s\) \(first at token 1\)"):
                sample_next(np.array(bad), rng, **kwargs)
        with pytest.raises(ValueError, match="NaN/"):
            greedy(np.array(bad))
    with pytest.raises(ValueError, match="all -inf"):
        sample_next(np.array([-np.inf, -np.inf]), rng)
    assert sample_next(np.array([-np.inf, 0.0, -np.inf]), rng) == 1  # -inf rules a token out
    with pytest.raises(ValueError, match="top_k 2.5; expected an integer"):
        top_k_filter(LOGITS, 2.5)


def test_perplexity_past_float_range_is_inf():
    from rnnkit.tasks.lm import evaluate_ids

    model = char_model()
    model.decoder.params["weight"][...] *= 1e5  # a loss in the thousands
    result = evaluate_ids(model, np.arange(40) % model.config.vocab_size, 4, 5)
    assert result["loss"] > 709 and result["ppl"] == float("inf")
