"""Adversarial training of the classifier (``adversarial_eps``; Miyato et al. 2017): the perturbation
is the per-sequence normalised gradient of the loss with respect to the embeddings, and the
gradient taken is that of clean loss + perturbed loss with the perturbation held constant."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.tasks.classify import ClassifyConfig

from test_classifier import MASK, B, T, V, fit_keyword_rule, one_blas_thread, tiny_ids  # noqa: F401  (fixture)

E = 4
LABELS = np.array([0, 2, 1])


def model64(eps=0.5, cell="lstm", pooling="max", seed=1):
    cfg = ClassifierConfig(cell=cell, embedding_dim=E, hidden_size=3, num_layers=2, bidirectional=True,
                           pooling=pooling, dropout=0.0, adversarial_eps=eps)
    return SequenceClassifier(cfg, V, 3, unk_id=1, seed=seed, dtype=np.float64)


def loss_at(model, ids, delta=None):
    """Clean cross-entropy of the batch with the embeddings moved by ``delta`` (no caches kept)."""
    return model.criterion.forward(model.forward(ids, MASK, delta=delta), LABELS)


def test_perturbation_is_eps_times_the_normalised_embedding_gradient():
    model, ids = model64(eps=0.3), tiny_ids(2)
    model.criterion.forward(model.forward(ids, MASK), LABELS)
    g = model._head_backward(model.criterion.backward())
    # the analytic gradient of the loss w.r.t. the embeddings, against central differences
    num, h = np.zeros((B, T, E)), 1e-6
    for idx in np.ndindex(B, T, E):
        d = np.zeros((B, T, E))
        d[idx] = h
        num[idx] = (loss_at(model, ids, d) - loss_at(model, ids, -d)) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)
    assert np.all(g[~MASK] == 0)  # padded steps do not touch the loss
    r = model.adversarial_perturbation(g)
    np.testing.assert_allclose(np.sqrt((r ** 2).sum(axis=(1, 2))), 0.3, rtol=1e-12)  # length eps per sequence
    for b in range(B):  # and the direction of that sequence's gradient
        np.testing.assert_allclose(r[b], 0.3 * g[b] / np.linalg.norm(g[b]), rtol=1e-10, atol=1e-15)
    assert np.all(model.adversarial_perturbation(np.zeros((2, T, E))) == 0)  # zero gradient: no move, no NaN
    tiny = model.adversarial_perturbation(np.full((1, T, E), 1e-30, dtype=np.float32))
    assert tiny.dtype == np.float32 and np.isclose(np.sqrt((tiny.astype(np.float64) ** 2).sum()), 0.3, rtol=1e-5)


@pytest.mark.parametrize("cell,pooling", [("lstm", "max"), ("gru", "last"), ("rnn", "mean")])
def test_gradient_is_that_of_clean_plus_perturbed_loss(cell, pooling):
    """Every parameter, central differences of L(theta) + L(theta; e + r) with r fixed to the one used."""
    model, ids = model64(0.5, cell, pooling), tiny_ids(3)
    model.train()
    model.zero_grad()
    clean = model.loss(ids, LABELS, MASK)
    model.backward()
    r = model.last_adversarial_delta
    assert r.shape == (B, T, E) and np.allclose(np.sqrt((r ** 2).sum(axis=(1, 2))), 0.5)
    np.testing.assert_allclose(model.last_adversarial_loss, loss_at(model, ids, r), rtol=1e-12)
    assert model.last_adversarial_loss > clean  # the move raises the loss, as it should to first order

    def objective():
        return loss_at(model, ids) + loss_at(model, ids, r)

    rng, h, checked = np.random.default_rng(0), 1e-6, 0
    for name, p, grad in model.named_parameters():
        flat, gflat = p.reshape(-1), grad.reshape(-1)
        for i in rng.choice(flat.size, size=min(8, flat.size), replace=False):
            keep = flat[i]
            flat[i] = keep + h
            up = objective()
            flat[i] = keep - h
            down = objective()
            flat[i] = keep
            num = (up - down) / (2 * h)
            assert abs(num - gflat[i]) <= 1e-6 * max(1.0, abs(num)), (name, i, num, gflat[i])
            checked += 1
    assert checked > 40


def test_off_by_default_and_outside_training():
    ids = tiny_ids(4)
    plain, adv = model64(eps=0.0), model64(eps=0.5)
    for m in (plain, adv):
        m.zero_grad()
        m.loss(ids, LABELS, MASK)
    assert plain.loss(ids, LABELS, MASK) == adv.loss(ids, LABELS, MASK)  # the returned loss is the clean one
    plain.backward()
    assert plain.last_adversarial_loss is None
    # eval mode: no adversarial pass, the gradient is the plain one
    adv.eval()
    adv.zero_grad()
    adv.loss(ids, LABELS, MASK)
    adv.backward()
    plain.zero_grad()
    plain.loss(ids, LABELS, MASK)
    plain.backward()
    for (n, _, g1), (_, _, g2) in zip(plain.named_parameters(), adv.named_parameters()):
        np.testing.assert_array_equal(g1, g2, err_msg=n)
    # an explicit dlogits back-propagates just that, in training too
    dlogits = np.random.default_rng(5).standard_normal((B, 3))
    for m in (plain, adv):
        m.train()
        m.zero_grad()
        m.loss(ids, LABELS, MASK)
        m.backward(dlogits)
    assert adv.last_adversarial_loss is None
    for (n, _, g1), (_, _, g2) in zip(plain.named_parameters(), adv.named_parameters()):
        np.testing.assert_array_equal(g1, g2, err_msg=n)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="adversarial_eps -1.0; expected >= 0"):
        ClassifierConfig(adversarial_eps=-1.0)
    with pytest.raises(ValueError, match="adversarial_eps nan"):
        ClassifyConfig(adversarial_eps=float("nan"))
    model = model64()
    with pytest.raises(ValueError, match=r"delta shape \(1, 2, 3\); expected the embeddings' shape \(3, 5, 4\)"):
        model.forward(tiny_ids(), MASK, delta=np.zeros((1, 2, 3)))


def test_learns_keyword_rule_with_adversarial_training():
    """The keyword task of test_classifier, float32, with the adversarial pass on every step."""
    assert fit_keyword_rule(adversarial_eps=0.5) > 0.97


def test_trainer_and_cli_run_the_adversarial_pass(tmp_path, capsys):
    import json

    from rnnkit import cli
    from rnnkit.models.base import Model
    from rnnkit.tasks.classify import ClassifyTask
    from rnnkit.train.trainer import Trainer, TrainConfig

    from test_bilm_pretrain import write_csv

    data = write_csv(tmp_path / "toy.csv")
    cfg = ClassifyConfig(dataset=str(data), embedding_dim=8, hidden_size=8, batch_size=8, val_fraction=0.2,
                         test_fraction=0.2, adversarial_eps=0.3)
    task = ClassifyTask.from_config(cfg, seed=0)
    Trainer(task, TrainConfig(epochs=1, lr=1e-2, run_dir=str(tmp_path / "t"), progress=False, plot=False), cfg).fit()
    assert task.model.last_adversarial_loss is not None  # the Trainer's step went through the adversarial pass
    assert np.allclose(np.sqrt((task.model.last_adversarial_delta.astype(np.float64) ** 2).sum(axis=(1, 2))), 0.3)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--task", "classify", "--dataset", str(data), "--embedding-dim", "8", "--hidden-size",
                     "8", "--batch-size", "8", "--epochs", "1", "--adversarial-eps", "0.3", "--run-dir", str(run_dir),
                     "--no-progress", "--no-plot"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["task"]["adversarial_eps"] == 0.3
    assert Model.load(run_dir / "checkpoints" / "best.safetensors").config.adversarial_eps == 0.3
