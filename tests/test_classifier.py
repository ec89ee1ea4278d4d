"""SequenceClassifier, SequencePooling and the classify task: gradients, masks, learning, files."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from rnnkit import gradcheck
from rnnkit.layers import Layer, SequencePooling
from rnnkit.models.base import Model
from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.optim import Adam, clip_grad_norm
from rnnkit.tasks.classify import ClassifyConfig, ClassifyTask, classification_metrics, split_indices, word_tokens

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RNNKIT_DATA", ROOT.parent / "shared" / "data"))
SMS = DATA / "sms-spam-collection" / "SMSSpamCollection"


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """These matrices are tiny: one BLAS thread is faster, and far faster on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional; without it the tests only run slower
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


B, T, V = 3, 5, 11
LENGTHS = np.array([5, 2, 3])
MASK = np.arange(T)[None, :] < LENGTHS[:, None]


def tiny_ids(seed=0):
    ids = np.random.default_rng(seed).integers(2, V, size=(B, T))
    ids[~MASK] = 0
    return ids


def tiny_model(cell="lstm", pooling="max", bidirectional=True, num_layers=2, dropout=0.3, seed=1):
    cfg = ClassifierConfig(cell=cell, embedding_dim=4, hidden_size=3, num_layers=num_layers,
                           bidirectional=bidirectional, pooling=pooling, dropout=dropout, rnn_dropout=0.2,
                           word_dropout=0.2 if dropout else 0.0)
    return SequenceClassifier(cfg, V, 3, unk_id=1, seed=seed)


# ---- gradients -------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,pooling,bidirectional",
                         list(itertools.product(["rnn", "lstm", "gru"], ["last", "mean", "max", "max+mean"], [False, True])))
def test_gradcheck_logits(cell, pooling, bidirectional):
    """Every parameter, through padded (masked) sequences, with (word) dropout active (its masks replayed)."""
    # 15 random elements of every parameter array keep the 24 cases fast
    report = gradcheck(tiny_model(cell, pooling, bidirectional), (tiny_ids(), MASK), max_elements=15)
    assert report.passed(1e-6), str(report)
    assert len(report.errors) == len(list(tiny_model(cell, pooling, bidirectional).named_parameters()))


class LossOf(Layer):
    """The classifier's training loss as a layer: forward -> float, backward(dloss) through the criterion."""

    def __init__(self, model, labels):
        super().__init__()
        self.model, self.labels = model, labels

    def forward(self, ids, mask):
        return self.model.loss(ids, self.labels, mask)

    def backward(self, dloss):
        self.model.backward(self.model.criterion.backward(dloss))


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "max+mean"])
def test_gradcheck_loss(pooling):
    report = gradcheck(LossOf(tiny_model("gru", pooling), np.array([0, 2, 1])), (tiny_ids(1), MASK), max_elements=15)
    assert report.passed(1e-6), str(report)


@pytest.mark.parametrize("mode,dirs,left", [("last", 1, False), ("last", 2, False), ("last", 2, True),
                                             ("mean", 1, True), ("max", 1, False), ("max", 2, True),
                                             ("max+mean", 1, False), ("max+mean", 2, True)])
def test_gradcheck_pooling(mode, dirs, left):
    y = np.random.default_rng(0).standard_normal((B, T, 4))
    mask = MASK[:, ::-1].copy() if left else MASK
    report = gradcheck(SequencePooling(mode, num_directions=dirs), (y, mask))
    assert report.passed(1e-7), str(report)


def test_pooling_values():
    y = np.arange(B * T * 2, dtype=np.float64).reshape(B, T, 2)
    y[1, 1, 0] = -100.0  # valid, and the only valid max candidate below the padded ones
    last = SequencePooling("last", 2).forward(y, MASK)
    np.testing.assert_array_equal(last[:, 0], y[np.arange(B), LENGTHS - 1, 0])  # forward half: last valid step
    np.testing.assert_array_equal(last[:, 1], y[:, 0, 1])  # reverse half: t = 0
    mean = SequencePooling("mean").forward(y, MASK)
    np.testing.assert_allclose(mean[2], y[2, :3].mean(axis=0))
    top = SequencePooling("max").forward(y, MASK)
    np.testing.assert_array_equal(top[1], y[1, :2].max(axis=0))  # padded steps (larger values) ignored
    both = SequencePooling("max+mean", 2).forward(y, MASK)  # [max | mean], width 2 D
    assert both.shape == (B, 4)
    np.testing.assert_array_equal(both, np.concatenate([top, mean], axis=1))
    assert SequencePooling("max+mean").output_size(6) == 12 and SequencePooling("max").output_size(6) == 6
    with pytest.raises(ValueError, match="no valid step"):
        SequencePooling("mean").forward(y, np.zeros((B, T), dtype=bool))
    with pytest.raises(ValueError, match="pooling mode 'sum'; expected one of .*'max\\+mean'"):
        SequencePooling("sum")


def test_concat_pooling_widens_the_output_layer():
    model = tiny_model("lstm", "max+mean", True)
    assert model.output.params["weight"].shape[1] == 2 * 2 * 3  # [max | mean] of the (B, T, 2 H) BiLSTM outputs
    assert model.predict_proba(tiny_ids(), MASK).shape == (B, 3)


# ---- masks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,pooling,bidirectional",
                         [("lstm", "last", True), ("gru", "max", True), ("rnn", "mean", False), ("lstm", "max", False),
                          ("lstm", "max+mean", True)])
def test_padded_example_equals_alone(cell, pooling, bidirectional):
    """A sequence padded inside a batch of longer ones gets exactly its own prediction."""
    model = tiny_model(cell, pooling, bidirectional, dropout=0.0)
    rng = np.random.default_rng(3)
    ids = rng.integers(2, V, size=(B, 9))
    lengths = np.array([9, 4, 6])
    mask = np.arange(9)[None, :] < lengths[:, None]
    ids_garbage = np.where(mask, ids, rng.integers(1, V, size=ids.shape))  # non-pad junk in padded slots
    batch = model.predict_proba(ids_garbage, mask)
    for b in range(B):
        alone = model.predict_proba(ids[b:b + 1, :lengths[b]])
        np.testing.assert_allclose(batch[b], alone[0], rtol=1e-5, atol=1e-6)


# ---- learning --------------------------------------------------------------------------------
def train_classifier(ids, labels, mask, epochs: int, batches: int, seed: int = 0, **config) -> SequenceClassifier:
    """A 2-class GRU classifier (``config``: more ClassifierConfig fields) trained with Adam
    (lr 1e-2, gradient norm clipped to 5) for ``epochs`` passes of ``batches`` minibatches."""
    rng = np.random.default_rng(seed)
    cfg = ClassifierConfig(**{"cell": "gru", "embedding_dim": 16, "hidden_size": 16, "dropout": 0.0, **config})
    model = SequenceClassifier(cfg, int(ids.max()) + 1, 2, seed=seed)
    opt = Adam(model, lr=1e-2)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(labels)), batches):
            model.zero_grad()
            model.loss(ids[idx], labels[idx], mask[idx])
            model.backward()
            clip_grad_norm(model, 5.0)
            opt.step()
    assert (model.last_adversarial_loss is not None) == (cfg.adversarial_eps > 0)
    return model


def keyword_examples(n: int, rng, T_max: int = 12, V: int = 20):
    """Class 1 iff token 2 occurs anywhere in a variable-length sequence of tokens 3..V-1."""
    lengths = rng.integers(3, T_max + 1, size=n)
    mask = np.arange(T_max)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(3, V, size=(n, T_max)), 0)
    labels = rng.integers(0, 2, size=n)
    pos = rng.integers(0, lengths)
    ids[labels == 1, pos[labels == 1]] = 2
    return ids, labels, mask


def fit_keyword_rule(**config) -> float:
    """Synthetic: class 1 iff token 2 occurs anywhere in a variable-length sequence.

    Trains a GRU classifier (``config``: more ClassifierConfig fields) for 15 epochs of Adam on
    256 sequences; returns its accuracy on 1,000 held-out sequences of the same kind."""
    ids, labels, mask = keyword_examples(256, np.random.default_rng(0))
    model = train_classifier(ids, labels, mask, epochs=15, batches=8, **config)
    held_ids, held_labels, held_mask = keyword_examples(1000, np.random.default_rng(1))
    return (model.predict(held_ids, held_mask) == held_labels).mean()


def test_learns_keyword_rule_quickly():
    assert fit_keyword_rule() > 0.97


def order_examples(n: int, rng, T_max: int = 20, V: int = 20):
    """Class 1 iff token 2 comes before token 3. Each of the two occurs exactly once, at random
    inner positions (never the first or last valid step), among filler tokens 4..V-1 of a
    variable-length sequence; the label is drawn independently of everything else."""
    lengths = rng.integers(5, T_max + 1, size=n)
    mask = np.arange(T_max)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(4, V, size=(n, T_max)), 0)
    inner = lengths - 2  # positions 1 .. length-2
    p = 1 + rng.integers(0, inner)
    q = 1 + (p - 1 + rng.integers(1, inner)) % inner  # another inner position
    labels = rng.integers(0, 2, size=n)
    first, second = np.minimum(p, q), np.maximum(p, q)
    rows = np.arange(n)
    ids[rows, np.where(labels == 1, first, second)] = 2
    ids[rows, np.where(labels == 1, second, first)] = 3
    return ids, labels, mask


@pytest.mark.parametrize("cell,bidirectional,pooling", [("gru", False, "last"), ("lstm", True, "max")])
def test_learns_token_order_on_held_out_sequences(cell, bidirectional, pooling):
    """A task that needs the recurrence: whether token 2 precedes token 3.

    Both labels hold the same multiset of tokens, so a bag-of-words model is at chance. The
    held-out set makes that exact: it pairs every sequence with its twin in which 2 and 3 swap
    places (same bag, same first and last token, opposite label), so any model that ignores
    the order (bag-of-words, or per-token features pooled over steps) scores exactly 0.5 on
    it. The recurrent model reaches 1.0 in a fraction of a second; the bar is 0.95.
    """
    ids, labels, mask = order_examples(512, np.random.default_rng(0))
    model = train_classifier(ids, labels, mask, epochs=12, batches=16, cell=cell, bidirectional=bidirectional,
                             pooling=pooling)
    held_ids, held_labels, held_mask = order_examples(500, np.random.default_rng(1))
    twins = np.where(held_ids == 2, 3, np.where(held_ids == 3, 2, held_ids))
    held_ids, held_labels = np.concatenate([held_ids, twins]), np.concatenate([held_labels, 1 - held_labels])
    held_mask = np.concatenate([held_mask, held_mask])
    assert np.array_equal(np.sort(held_ids[:500], axis=1), np.sort(held_ids[500:], axis=1))  # same bags
    assert held_labels.mean() == 0.5
    accuracy = (model.predict(held_ids, held_mask) == held_labels).mean()
    assert accuracy > 0.95, accuracy


@pytest.mark.skipif(not SMS.is_file(), reason="SMS spam data not found (set RNNKIT_DATA)")
def test_learns_sms_spam_subset():
    """1,000 training messages, three epochs (a few seconds): test accuracy well above the majority (ham) rate."""
    cfg = ClassifyConfig(dataset="sms-spam", data_dir=str(DATA), embedding_dim=32, hidden_size=32, dropout=0.2,
                         cell="gru", pooling="max", max_train=1000, max_len=40, batch_size=32,
                         val_fraction=0.05, test_fraction=0.1)
    task = ClassifyTask.from_config(cfg, seed=0)
    opt = Adam(task.model, lr=1e-2)
    for epoch in range(3):
        task.start_epoch(epoch)
        for batch in task.train_batches(epoch):
            task.model.zero_grad()
            task.train_loss(batch)
            task.backward()
            clip_grad_norm(task.model, 5.0)
            opt.step()
    metrics = task.evaluate("test")
    majority = 1 - task.targets[task.splits["test"]].mean()
    assert task.labels == ["ham", "spam"] and task.positive == 1
    assert metrics["accuracy"] > max(0.95, majority + 0.07), metrics
    assert metrics["f1"] > 0.8, metrics


# ---- task plumbing ---------------------------------------------------------------------------
def write_labelled_csv(path: Path) -> Path:
    rows = ["label,text"] + [f"pos,\"good great fine {i}\"" for i in range(20)] + \
           [f"neg,\"bad awful poor {i}\"" for i in range(20)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_task_on_labelled_csv_and_checkpoint_roundtrip(tmp_path):
    path = write_labelled_csv(tmp_path / "toy.csv")
    cfg = ClassifyConfig(dataset=str(path), embedding_dim=8, hidden_size=8, batch_size=8, val_fraction=0.2,
                         test_fraction=0.2)
    task = ClassifyTask.from_config(cfg, seed=0)
    assert task.labels == ["neg", "pos"]
    assert sorted(np.concatenate(list(task.splits.values()))) == list(range(40))
    batch = next(iter(task.train_batches(0)))
    ids, mask, labels = batch
    assert ids.shape == mask.shape and labels.shape == (ids.shape[0],)
    loss, count = task.train_loss(batch)
    task.backward()
    assert count == len(labels) and loss > 0
    before = task.evaluate("test")
    ckpt = task.model.save(tmp_path / "m.safetensors", meta=task.extra_meta())
    again = ClassifyTask.from_checkpoint(ckpt)
    assert isinstance(Model.load(ckpt), SequenceClassifier)
    assert again.evaluate("test") == pytest.approx(before)
    assert again.classify(["good great", "bad awful"]) == task.classify(["good great", "bad awful"])


def test_kfold_splits_partition_the_data():
    cfg = ClassifyConfig(folds=10, fold=0, split_seed=5)
    tests, trains = [], []
    for fold in range(10):
        cfg.fold = fold
        train, val, test = split_indices(103, cfg)
        assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
        assert len(train) + len(val) + len(test) == 103
        tests.append(test)
        trains.append(frozenset(train))
    assert sorted(np.concatenate(tests)) == list(range(103))
    assert len(set(trains)) == 10  # every fold trains on its own data


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="pooling 'sum'"):
        ClassifierConfig(pooling="sum")
    with pytest.raises(ValueError, match="fold 3"):
        ClassifyConfig(folds=3, fold=3)
    for name, bad, expected in (("batch_size", 0, ">= 1"), ("max_len", 0, ">= 1"), ("max_len", -1, ">= 1"),
                                ("min_freq", 0, ">= 1"), ("max_train", -3, ">= 0")):
        with pytest.raises(ValueError, match=f"{name} {bad}; expected .*{expected}"):
            ClassifyConfig(**{name: bad})


def test_tokens_and_metrics():
    assert word_tokens("FREE entry!! Don't miss") == ["free", "entry", "!", "!", "don't", "miss"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(probs, np.array([0, 1, 1, 0]), positive=1)
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5


def test_trainer_run_and_reload_from_its_checkpoint(tmp_path):
    """The shared Trainer drives the task; the best checkpoint rebuilds the same task and model."""
    from rnnkit.train.trainer import Trainer, TrainConfig

    cfg = ClassifyConfig(dataset=str(write_labelled_csv(tmp_path / "toy.csv")), embedding_dim=8, hidden_size=8,
                         batch_size=8, val_fraction=0.2, test_fraction=0.2)
    task = ClassifyTask.from_config(cfg, seed=1)
    train_cfg = TrainConfig(epochs=2, lr=1e-2, seed=1, run_dir=str(tmp_path / "run"), progress=False)
    result = Trainer(task, train_cfg, cfg).fit()
    assert {"best_val_loss", "test_loss", "test_accuracy", "test_f1"} <= set(result)
    again = ClassifyTask.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert again.seed == 1 and again.config == cfg
    assert again.evaluate("test")["loss"] == pytest.approx(result["test_loss"])


def test_weight_averaging_scores_and_saves_the_averaged_weights(tmp_path):
    """ema_decay: the test figure and best.safetensors are the averaged model's, not the raw weights'."""
    from rnnkit.checkpoint import load_checkpoint
    from rnnkit.train.trainer import RAW_PREFIX, Trainer, TrainConfig

    cfg = ClassifyConfig(dataset=str(write_labelled_csv(tmp_path / "toy.csv")), embedding_dim=8, hidden_size=8,
                         batch_size=4, val_fraction=0.2, test_fraction=0.2)
    task = ClassifyTask.from_config(cfg, seed=1)
    train_cfg = TrainConfig(epochs=3, lr=1e-2, seed=1, run_dir=str(tmp_path / "run"), progress=False, plot=False,
                            ema_decay=0.9)
    result = Trainer(task, train_cfg, cfg).fit()
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    again = ClassifyTask.from_checkpoint(best)
    assert again.evaluate("test")["loss"] == pytest.approx(result["test_loss"])
    tensors, _ = load_checkpoint(best)
    again.model.load_state_dict({n[len(RAW_PREFIX):]: v for n, v in tensors.items() if n.startswith(RAW_PREFIX)})
    assert again.evaluate("test")["loss"] != pytest.approx(result["test_loss"], rel=1e-3)


def test_left_padding_gives_the_same_prediction():
    """Masked steps carry the state and are skipped by every pooling, wherever they sit."""
    for pooling in ("last", "mean", "max", "max+mean"):
        model = tiny_model("gru", pooling, True, dropout=0.0)
        ids = np.random.default_rng(4).integers(2, V, size=(1, 6))
        right = np.concatenate([ids, np.zeros((1, 3), dtype=ids.dtype)], axis=1)
        left = np.concatenate([np.zeros((1, 3), dtype=ids.dtype), ids], axis=1)
        mask_right = np.arange(9)[None] < 6
        np.testing.assert_allclose(model.predict_proba(left, mask_right[:, ::-1].copy()),
                                   model.predict_proba(right, mask_right), rtol=1e-5, atol=1e-7)


def test_ids_of_the_wrong_rank_are_named():
    with pytest.raises(ValueError, match=r"ids have shape \(3,\); expected \(B, T\) token ids"):
        tiny_model().predict_proba(np.array([1, 2, 3]))


def test_a_relative_data_path_still_loads_from_another_folder(tmp_path, monkeypatch):
    """The config in the checkpoint keeps the data file's absolute path, so `rnnkit evaluate`
    works from any folder (it used to look for the relative path in the current one)."""
    from rnnkit.train.trainer import Trainer, TrainConfig

    (tmp_path / "data").mkdir()
    write_labelled_csv(tmp_path / "data" / "toy.csv")
    monkeypatch.chdir(tmp_path)
    cfg = ClassifyConfig(dataset="data/toy.csv", data_dir="data", embedding_dim=4, hidden_size=4, batch_size=8,
                         val_fraction=0.2, test_fraction=0.2)
    assert cfg.dataset == str(tmp_path / "data" / "toy.csv") and cfg.data_dir == str(tmp_path / "data")
    assert ClassifyConfig(dataset="sms-spam").dataset == "sms-spam"  # names stay names
    task = ClassifyTask.from_config(cfg, seed=1)
    Trainer(task, TrainConfig(epochs=1, run_dir="run", progress=False, plot=False), cfg).fit()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = ClassifyTask.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert again.evaluate("test") == pytest.approx(task.evaluate("test"))


def test_kfold_split_that_leaves_no_training_part_is_an_error():
    # 20 texts, 2 folds: 10 outside each test fold, and val_fraction 0.5 of all 20 takes all 10
    with pytest.raises(ValueError, match="val_fraction 0.5 of n=20 texts holds out 10 for validation, but folds=2 "
                                         "leave 10 outside a test fold: no training part"):
        split_indices(20, ClassifyConfig(folds=2, fold=0, val_fraction=0.5))
    with pytest.raises(ValueError, match="no training part"):  # every fold, not only the one asked for
        split_indices(103, ClassifyConfig(folds=2, fold=1, val_fraction=0.5))
    train, val, test = split_indices(20, ClassifyConfig(folds=2, fold=0, val_fraction=0.45))
    assert (len(train), len(val), len(test)) == (1, 9, 10)
    with pytest.raises(ValueError, match="folds=10 of n=5 texts; expected folds <= n"):
        split_indices(5, ClassifyConfig(folds=10, fold=1))
    with pytest.raises(ValueError, match="val_fraction 0.4 and test_fraction 0.4 of n=2 texts hold out 1 \\+ 1: "
                                         "no training part"):
        split_indices(2, ClassifyConfig(val_fraction=0.4, test_fraction=0.4))


def test_fold_without_folds_is_an_error():
    with pytest.raises(ValueError, match="fold 3 without folds; set folds=k"):
        ClassifyConfig(fold=3)
    assert ClassifyConfig(folds=5, fold=3).fold == 3


def test_rt_polarity_protocol_split_sizes_are_unchanged():
    # 10,662 texts, 10 folds, val_fraction 0.1: the sizes the rt-polarity protocol has always had
    sizes = [tuple(len(p) for p in split_indices(10_662, ClassifyConfig(folds=10, fold=f))) for f in range(10)]
    big, small = (8530, 1066, 1066), (8529, 1066, 1067)
    assert sizes == [big, big, small, big, big, big, big, small, big, big]
