"""Every model's inference runs in eval mode (dropout off) and gives the mode back, also on errors."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.models.forecaster import Forecaster, ForecasterConfig


def forecaster():
    return Forecaster(ForecasterConfig(hidden_size=4, num_layers=2, dropout=0.5), input_size=2, seed=0)


def classifier():
    cfg = ClassifierConfig(embedding_dim=4, hidden_size=3, dropout=0.5, rnn_dropout=0.5, num_layers=2)
    return SequenceClassifier(cfg, 7, 2, unk_id=1, seed=0)


CASES = {
    "forecaster": (forecaster, lambda m: m.predict(np.ones((3, 5, 2), dtype=np.float32)),
                   lambda m: m.predict(np.ones((3, 5, 9), dtype=np.float32))),
    "classifier": (classifier, lambda m: m.predict_proba(np.full((3, 5), 2), np.ones((3, 5), dtype=bool)),
                   lambda m: m.predict_proba(np.full((3, 5), 99), np.ones((3, 5), dtype=bool))),
}


@pytest.mark.parametrize("name", CASES)
def test_inference_is_deterministic_in_train_mode_and_leaves_the_mode(name):
    make, infer, bad = CASES[name]
    model = make()
    model.train()
    np.testing.assert_array_equal(infer(model), infer(model))  # no dropout draw
    assert model.training and all(layer.training for layer in model.modules())
    with pytest.raises(ValueError):
        bad(model)
    assert model.training and all(layer.training for layer in model.modules())
    model.eval()
    infer(model)
    assert not model.training


def test_evaluating_nests_and_restores_after_an_exception():
    model = forecaster()
    model.train()
    with pytest.raises(RuntimeError):
        with model.evaluating():
            with model.evaluating():
                assert not model.training and model._eval_blocks == 2
            assert not model.training and model._eval_blocks == 1
            raise RuntimeError("inside")
    assert model.training and model._eval_blocks == 0


# --- inference between loss() and backward() ------------------------------------------------
# A predict or decode call between a training loss() and its backward() must not touch the
# caches that backward reads (it used to: silently wrong gradients, or a RuntimeError).

def _lm(dtype):
    from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
    cfg = LanguageModelConfig(vocab_size=11, embedding_size=5, hidden_size=6, num_layers=2, dropout=0.3)
    return LanguageModel(cfg, seed=1, dtype=dtype)


def _seq2seq(dtype):
    from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig
    cfg = Seq2SeqConfig(embedding_dim=4, hidden_size=5, attention="dot", teacher_forcing_ratio=1.0)
    return Seq2Seq(cfg, 11, max_target_len=4, dtype=dtype, seed=1)


def _captioner(dtype):
    from rnnkit.models.captioner import Captioner, CaptionerConfig
    cfg = CaptionerConfig(embedding_dim=3, hidden_size=4, conditioning="both", inject_size=3, dropout=0.3)
    return Captioner(cfg, 6, 11, max_caption_len=4, dtype=dtype, seed=1)


def _classifier(dtype):
    cfg = ClassifierConfig(embedding_dim=4, hidden_size=3, num_layers=2, dropout=0.3, rnn_dropout=0.3)
    return SequenceClassifier(cfg, 11, 3, unk_id=1, dtype=dtype, seed=1)


def _forecaster(dtype):
    return Forecaster(ForecasterConfig(hidden_size=4, num_layers=2, dropout=0.3), input_size=2, dtype=dtype, seed=1)


R = np.random.default_rng(7)
IDS, IDS2, IDS3 = R.integers(3, 11, (3, 6)), R.integers(3, 11, (3, 6)), R.integers(3, 11, (2, 4))
FEATS, FEATS3 = R.normal(size=(3, 6)), R.normal(size=(2, 6))
X, X2, X3, Y = R.normal(size=(3, 5, 2)), R.normal(size=(3, 5, 2)), R.normal(size=(2, 7, 2)), R.normal(size=(3, 1, 2))
def _steps_in_a_block(model):
    """Generation's pattern: one-token steps inside one evaluating() block."""
    with model.evaluating():
        state, token = None, IDS3[:, 0]
        for _ in range(3):
            logits, state = model.step(token, state)
            token = model.xp.asarray(logits).argmax(axis=1)


# (make, training loss, inference calls: one with the training batch's shape, one with another)
TRAINING = {
    "language model": (_lm, lambda m: m.loss(IDS, IDS2),
                       [lambda m: m.predict(IDS2), lambda m: m.predict_loss(IDS3, IDS3), lambda m: m.step(IDS3[:, 0]),
                        lambda m: _steps_in_a_block(m)]),
    "seq2seq": (_seq2seq, lambda m: m.loss(IDS, IDS2),
                [lambda m: m.greedy_decode(IDS2), lambda m: m.beam_decode(IDS3, beam_size=2)]),
    "captioner": (_captioner, lambda m: m.loss(FEATS.astype(m.dtype), IDS2),
                  [lambda m: m.greedy_decode(FEATS.astype(m.dtype)),
                   lambda m: m.beam_decode(FEATS3.astype(m.dtype), beam_size=2),
                   lambda m: m.sample_decode(FEATS3.astype(m.dtype))]),
    "classifier": (_classifier, lambda m: m.loss(IDS, np.array([0, 2, 1])),
                   [lambda m: m.predict(IDS2), lambda m: m.predict_proba(IDS3)]),
    "forecaster": (_forecaster, lambda m: m.loss(X.astype(m.dtype), Y.astype(m.dtype)),
                   [lambda m: m.predict(X2.astype(m.dtype)), lambda m: m.predict(X3.astype(m.dtype))]),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", TRAINING)
def test_inference_between_loss_and_backward_leaves_the_gradients_exact(name, dtype):
    make, loss, calls = TRAINING[name]
    alone, model = make(dtype), make(dtype)
    for m in (alone, model):
        m.train()
        m.zero_grad()
    loss_alone = loss(alone)
    alone.backward()
    assert loss(model) == loss_alone
    for call in calls:
        call(model)
    assert model.training
    model.backward()
    expected = {n: g for n, _, g in alone.named_parameters()}
    for n, _, g in model.named_parameters():
        np.testing.assert_array_equal(g, expected[n], err_msg=n)


def test_evaluating_gives_each_layer_its_own_mode_back():
    """A model in train mode with one part frozen in eval mode (a fine-tuning setup) keeps it."""
    model = forecaster()
    model.train()
    frozen = next(layer for layer in model.modules() if layer is not model)
    frozen.eval()
    before = {id(layer): layer.training for layer in model.modules()}
    with model.evaluating():
        assert not any(layer.training for layer in model.modules())
    assert {id(layer): layer.training for layer in model.modules()} == before and not frozen.training
