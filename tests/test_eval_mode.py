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
