"""Captioner: gradient checks, decoding (beam 1 == greedy), the digit-scene data set, and learning.

The data and task tests need scikit-learn (its bundled digits; the ``caption`` and ``dev``
extras install it) and skip cleanly without it; the model tests need NumPy only.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rnnkit import gradcheck
from rnnkit.layers import Layer
from rnnkit.models.base import Model
from rnnkit.models.captioner import Captioner, CaptionerConfig

F, V, B, T = 6, 9, 3, 4
LENGTHS = np.array([4, 2, 3])
MASK = np.arange(T)[None, :] < LENGTHS[:, None]


def tiny(cell="lstm", conditioning="init", encoder_hidden=0, num_layers=1, num_regions=1, dropout=0.0,
         feature_size=F):
    config = CaptionerConfig(cell=cell, embedding_dim=3, hidden_size=4, num_layers=num_layers,
                             encoder_hidden=encoder_hidden, conditioning=conditioning, inject_size=3, dropout=dropout)
    return Captioner(config, feature_size, V, pad_id=0, sos_id=1, eos_id=2, max_caption_len=6,
                     num_regions=num_regions, seed=1)


def features(num_regions=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (B, F) if num_regions == 1 else (B, num_regions, F)
    return rng.standard_normal(shape)


def captions(padded=False, seed=0):
    ids = np.random.default_rng(seed).integers(3, V, size=(B, T))
    return np.where(MASK, ids, 0) if padded else ids


class LossOf(Layer):
    """The training loss as a layer: forward -> float, backward(dloss) through the criterion."""

    def __init__(self, model, ids, mask):
        super().__init__()
        self.model, self.ids, self.mask = model, ids, mask

    def forward(self, x):
        return self.model.loss(x, self.ids, self.mask)

    def backward(self, dloss):
        return self.model.backward(self.model.criterion.backward(dloss))


@pytest.mark.parametrize("cell,conditioning,encoder_hidden,num_layers,num_regions", [
    ("lstm", "init", 0, 1, 1), ("lstm", "inject", 5, 1, 1), ("lstm", "both", 5, 2, 3),
    ("gru", "init", 5, 2, 1), ("gru", "inject", 0, 1, 3), ("rnn", "both", 5, 1, 1), ("rnn", "init", 5, 1, 3),
])
def test_gradcheck_logits(cell, conditioning, encoder_hidden, num_layers, num_regions):
    """Every parameter and the image features, float64, with dropout on (its masks replayed)."""
    model = tiny(cell, conditioning, encoder_hidden, num_layers, num_regions, dropout=0.3)
    report = gradcheck(model, (features(num_regions), captions()))
    assert report.passed(1e-6), str(report)
    names = set(report.errors)
    assert "input.0" in names  # d loss / d features
    assert ("encoder.hidden.weight" in names) == bool(encoder_hidden)
    assert ("encoder.init_h.weight" in names) == (conditioning != "inject")
    assert ("encoder.inject.weight" in names) == (conditioning != "init")
    assert ("encoder.init_c.weight" in names) == (cell == "lstm" and conditioning != "inject")


@pytest.mark.parametrize("conditioning", ["init", "inject"])
def test_gradcheck_masked_loss(conditioning):
    """Through right-padded captions and the masked mean cross-entropy, MLP encoder included."""
    model = tiny("lstm", conditioning, encoder_hidden=5, num_regions=2)
    report = gradcheck(LossOf(model, captions(padded=True), MASK), (features(2),))
    assert report.passed(1e-6), str(report)


def test_padded_steps_do_not_change_valid_logits():
    model = tiny("gru", "both")
    x = features().astype(np.float32)
    full = model.forward(x, captions())
    padded = model.forward(x, np.where(MASK, captions(), 0))
    np.testing.assert_allclose(padded[MASK], full[MASK], rtol=1e-6)


@pytest.mark.parametrize("cell,conditioning", [("lstm", "init"), ("gru", "inject"), ("rnn", "both")])
def test_beam_one_equals_greedy(cell, conditioning):
    model = tiny(cell, conditioning, encoder_hidden=5, num_layers=2)
    x = features(seed=3).astype(np.float32)
    greedy = model.greedy_decode(x)
    beam = model.beam_decode(x, beam_size=1)
    for g, (b,) in zip(greedy, beam):
        assert g.tokens == b.tokens and g.finished == b.finished
        assert g.score == pytest.approx(b.score, rel=1e-6)


def test_step_matches_teacher_forcing_and_sampling_is_greedy_when_cold():
    """The decoding step reproduces the teacher-forced logits; temperature -> 0 is greedy."""
    model = tiny("lstm", "both", encoder_hidden=5, num_layers=2)
    model.eval()
    x, ids = features().astype(np.float32), captions()
    log_softmax = model.forward(x, ids)
    log_softmax = log_softmax - np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    state, tokens = model.init_decoding(x), np.full(B, model.sos_id)
    for t in range(T):
        log_probs, state = model.step(tokens, state)
        np.testing.assert_allclose(log_probs, log_softmax[:, t], atol=1e-5)
        tokens = ids[:, t]
    cold = model.sample_decode(x, temperature=1e-4, rng=np.random.default_rng(0))
    assert [h.tokens for h in cold] == [h.tokens for h in model.greedy_decode(x)]
    hot = model.sample_decode(x, temperature=5.0, rng=np.random.default_rng(0))
    assert all(len(h.tokens) <= model.max_caption_len for h in hot)


def test_save_load_roundtrip(tmp_path):
    model = tiny("gru", "both", encoder_hidden=5, num_regions=3)
    path = model.save(tmp_path / "captioner.safetensors")
    loaded = Model.load(path)
    assert isinstance(loaded, Captioner) and loaded.num_regions == 3
    x = features(3).astype(np.float32)
    assert [h.tokens for h in loaded.greedy_decode(x)] == [h.tokens for h in model.greedy_decode(x)]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="conditioning 'sideways'"):
        CaptionerConfig(conditioning="sideways")
    model = tiny(num_regions=3)
    with pytest.raises(ValueError, match=r"expected \(B, 3, 6\)"):
        model.forward(features(2).astype(np.float32), captions())
    with pytest.raises(ValueError, match="captions have shape"):
        model.forward(features(3).astype(np.float32), captions()[:2])


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from rnnkit.data.captions import load_digit_images

    return load_digit_images()


def test_caption_grammar():
    from rnnkit.data.captions import caption_for

    assert caption_for([7], [(0, 0)]) == "a seven at the top left"
    assert caption_for([8], [(1, 1)]) == "an eight at the bottom middle"
    assert caption_for([2, 7], [(0, 2), (0, 0)]) == "a seven left of a two"  # reading order, not given order
    assert caption_for([3, 5], [(0, 1), (1, 1)]) == "a three above a five"
    assert caption_for([8, 1], [(0, 2), (1, 0)]) == "an eight above and right of a one"
    assert caption_for([6, 6], [(1, 0), (1, 2)]) == "two sixes side by side"
    assert caption_for([6, 6], [(0, 1), (1, 1)]) == "two sixes one above the other"
    assert caption_for([6, 6], [(0, 0), (1, 1)]) == "two sixes on a diagonal"
    assert caption_for([4, 1, 9], [(1, 0), (1, 1), (1, 2)]) == "a row of four one nine"
    assert caption_for([9, 9, 9], [(0, 0), (1, 1), (0, 2)]) == "three nines"
    assert caption_for([4, 1, 4], [(0, 0), (1, 1), (0, 2)]) == "two fours and a one"
    assert caption_for([4, 1, 9], [(1, 2), (0, 1), (1, 0)]) == "three digits one nine four"
    with pytest.raises(ValueError, match="repeat"):
        caption_for([1, 2], [(0, 0), (0, 0)])


def test_scenes_deterministic_and_split_by_picture(digits):
    from rnnkit.data.captions import build_caption_data

    a = build_caption_data(seed=3, num_train=300, num_val=50, num_test=80)
    b = build_caption_data(seed=3, num_train=300, num_val=50, num_test=80)
    for split in a:
        np.testing.assert_array_equal(a[split].images, b[split].images)
        assert a[split].captions == b[split].captions
    # no held-out scene shows a picture used in training (nor in validation)
    train, valid, test = (a[s].source_images() for s in ("train", "valid", "test"))
    assert not train & test and not train & valid and not valid & test
    # the held-out scenes do not depend on how many training scenes there are
    c = build_caption_data(seed=3, num_train=120, num_val=50, num_test=80)
    np.testing.assert_array_equal(c["test"].images, a["test"].images)
    other = build_caption_data(seed=4, num_train=300, num_val=50, num_test=80)
    assert other["test"].captions != a["test"].captions
    # every caption agrees with the recorded digits, and every digit sits in its slot
    images, labels = digits
    from rnnkit.data.captions import caption_for
    s = a["test"]
    for i in range(len(s)):
        k = s.num_digits[i]
        assert s.captions[i] == caption_for(s.digits[i, :k], s.slots[i, :k])
        assert np.array_equal(labels[s.sources[i, :k]], s.digits[i, :k])
        for j in range(k):
            r, c_ = s.slots[i, j]
            region = s.images[i, 10 * r:10 * r + 10, 10 * c_:10 * c_ + 10]
            assert region.sum() == pytest.approx(images[s.sources[i, j]].sum(), rel=1e-5)


def test_features(digits):
    from rnnkit.data.captions import build_caption_data, feature_shape, image_features, slot_crops

    s = build_caption_data(seed=0, num_train=40, num_val=5, num_test=5)["train"]
    assert feature_shape("pixels+hog") == (576,) and feature_shape("pixels+hog", regions=True) == (6, 96)
    assert feature_shape("pooled+hog", regions=True) == (6, 48)
    x = image_features(s.images, regions=True)
    flat = image_features(s.images)
    np.testing.assert_array_equal(flat, x.reshape(len(x), -1))
    occupied = np.zeros((len(s), 6), dtype=bool)
    for i in range(len(s)):
        for r, c in s.slots[i, :s.num_digits[i]]:
            occupied[i, 3 * r + c] = True
    assert (np.abs(x[~occupied]).max(axis=-1) == 0).all()  # an empty slot is all zero
    np.testing.assert_allclose(x[occupied][:, :64].mean(axis=-1), 0, atol=1e-5)  # standardised parts
    np.testing.assert_allclose((x[occupied][:, :64] ** 2).mean(axis=-1), 1, rtol=1e-4)
    # most aligned crops give back the original 8x8 picture exactly
    images, _ = digits
    crops = slot_crops(s.images)
    same = [np.array_equal(crops[i, 3 * r + c], images[src])
            for i in range(len(s)) for (r, c), src in zip(s.slots[i, :s.num_digits[i]], s.sources[i, :s.num_digits[i]])]
    assert np.mean(same) > 0.6
    with pytest.raises(ValueError, match="feature kind 'edges'"):
        image_features(s.images, "edges")


# ----------------------------------------------------------------------------- task and learning
def small_task_config(**overrides):
    from rnnkit.tasks.caption import CaptionTaskConfig

    values = dict(cell="lstm", conditioning="init", encoder_hidden=0, hidden_size=48, embedding_dim=16, dropout=0.0,
                  num_train=1200, num_val=100, num_test=200, max_digits=1, batch_size=50)
    values.update(overrides)
    return CaptionTaskConfig(**values)


@pytest.fixture(scope="module")
def trained_task(digits):
    """A small captioner trained for a few seconds on one-digit scenes."""
    from rnnkit.optim import Adam, clip_grad_norm
    from rnnkit.tasks.caption import CaptionTask

    task = CaptionTask.from_config(small_task_config(), seed=0)
    opt = Adam(task.model, lr=5e-3)
    before = task.evaluate("test")
    for epoch in range(4):
        task.start_epoch(epoch)
        for batch in task.train_batches(epoch):
            task.model.zero_grad()
            task.train_loss(batch)
            task.backward()
            clip_grad_norm(task.model, 5.0)
            opt.step()
    return task, before


def test_learns_to_caption_held_out_pictures(trained_task):
    task, before = trained_task
    after = task.evaluate("test")
    chance = np.log(len(task.vocab))
    assert before["loss"] > 0.8 * chance and before["exact_match"] == 0.0
    # one-digit captions: 10 digits x 6 places = 60 captions; chance exact match 1/60
    assert after["loss"] < 0.12 * chance, after
    assert after["exact_match"] > 0.5, after
    assert after["bleu"] > 60, after


def test_task_contract_and_checkpoint_roundtrip(trained_task, tmp_path):
    from rnnkit.tasks.caption import CaptionTask

    task, _ = trained_task
    assert CaptionTask.name == "caption" and CaptionTask.main_metric == "val_loss"
    assert task.num_train_batches() == 24
    first = [b[1].tolist() for b in task.train_batches(1)]
    assert first == [b[1].tolist() for b in task.train_batches(1)]  # the order depends on (seed, epoch) only
    greedy = task.generate("test", idx=np.arange(20))
    assert task.generate("test", beam_size=1, idx=np.arange(20)) == greedy
    assert task.caption_images(task.data["test"].images[:20]) == greedy
    path = task.model.save(tmp_path / "ckpt.safetensors", meta=task.extra_meta())
    restored = CaptionTask.from_checkpoint(path)
    assert restored.generate("test", idx=np.arange(20)) == greedy
    assert restored.data["test"].captions == task.data["test"].captions


def test_train_help_lists_every_caption_flag():
    """``rnnkit train --task caption --help`` formats (a bare % in a help string broke argparse)."""
    from rnnkit import cli
    from rnnkit.tasks import get_task
    from rnnkit.tasks.caption import CaptionTaskConfig

    text = cli.build_train_parser(get_task("caption")).format_help()
    for f in dataclasses.fields(CaptionTaskConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
