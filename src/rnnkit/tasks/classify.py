"""``rnnkit train --task classify``: many-to-one text classification.

Data: ``rt-polarity`` (Pang & Lee sentence polarity, 10,662 sentences), ``sms-spam``
(SMS Spam Collection, 5,574 messages), or a path to any labelled text/CSV file (see
:func:`rnnkit.data.tasks.load_labelled_file`). Texts are lower-cased and split into
words and punctuation; the vocabulary (``<pad>`` = 0, ``<unk>`` = 1, then words seen at
least ``min_freq`` times) is built on the training part only.

Splits: a fixed random split (``val_fraction``, ``test_fraction``), or k-fold
cross-validation (``folds`` = k > 1): fold ``fold`` is the test set and ``val_fraction``
(of all the data) is held out of the rest for early stopping. Splits are drawn from
``split_seed`` alone, so they do not move when the training seed changes, and the k folds
of one split seed partition the data.

Metrics: loss (mean cross-entropy), accuracy, and for two classes the F1 score of the
rarer class (``spam`` in SMS spam) with its precision and recall.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backend
from ..data.batching import pad_batch
from ..data.tasks import load_labelled_file, load_rt_polarity, load_sms_spam
from ..data.text import shared_data_dir
from ..data.vocab import PAD, UNK, Vocab
from ..models.bilm import BiLMPretrainer
from ..models.classifier import ClassifierConfig, SequenceClassifier
from .common import absolute_if_exists, bucketed_batches, find_task_meta

NAMED = ("rt-polarity", "sms-spam")
_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """Lower-cased words (with inner apostrophes: ``don't``) and single punctuation marks."""
    return _WORD.findall(text.lower())


@dataclass
class ClassifyConfig(ClassifierConfig):
    """Data and model hyper-parameters of the classification task."""

    dataset: str = field(default="sms-spam", metadata={
        "help": "rt-polarity | sms-spam | path to a labelled text/CSV file"})
    data_dir: str = field(default="", metadata={
        "help": "folder holding rt-polarity/ and sms-spam-collection/ (default: $RNNKIT_DATA or ../shared/data)"})
    min_freq: int = field(default=1, metadata={"help": "keep words seen at least this often in training"})
    max_len: int = field(default=100, metadata={"help": "keep at most this many tokens of each text"})
    batch_size: int = field(default=32, metadata={"help": "sequences per training batch"})
    val_fraction: float = field(default=0.1, metadata={"help": "fraction held out for validation"})
    test_fraction: float = field(default=0.1, metadata={"help": "fraction held out for test (fixed split)"})
    folds: int = field(default=0, metadata={"help": "k > 1: k-fold cross-validation, test = fold number `fold`"})
    fold: int = field(default=0, metadata={"help": "which fold is the test set (0 <= fold < folds)"})
    max_train: int = field(default=0, metadata={"help": "use at most this many training examples (0: all)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the data split (independent of the training seed)"})
    pretrain_epochs: int = field(default=0, metadata={
        "help": "before the labelled training, train the embedding and recurrent encoder as a bidirectional "
                "language model for this many epochs on the training part's own texts, labels unused (forward "
                "state at t predicts word t+1, backward state word t-1; no outside text or vectors); 0: off"})
    pretrain_lr: float = field(default=0.0, metadata={"help": "learning rate of the biLM pretraining (0: the training lr)"})
    pretrain_vocab: int = field(default=4000, metadata={
        "help": "biLM pretraining predicts the most frequent N words of the vocabulary (rarer ones as <unk>); "
                "0: all of them"})
    pretrain_keep: str = field(default="all", metadata={
        "help": "what the classifier keeps of the biLM pretraining: all (embedding and encoder) | embedding "
                "(the encoder goes back to its initial weights)"})

    def __post_init__(self):
        super().__post_init__()
        if self.dataset not in NAMED:
            self.dataset = absolute_if_exists(self.dataset)
        self.data_dir = absolute_if_exists(self.data_dir)
        for name in ("pretrain_epochs", "pretrain_vocab", "max_train"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}; expected >= 0")
        for name in ("batch_size", "max_len", "min_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}; expected an integer >= 1")
        if self.pretrain_keep not in ("all", "embedding"):
            raise ValueError(f"pretrain_keep {self.pretrain_keep!r}; expected 'all' or 'embedding'")
        if self.pretrain_lr < 0:
            raise ValueError(f"pretrain_lr {self.pretrain_lr}; expected >= 0 (0: the training lr)")
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds {self.folds}; expected 0 (fixed split) or k >= 2")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold {self.fold}; expected 0 <= fold < folds={self.folds}")
        if not self.folds and self.fold:
            raise ValueError(f"fold {self.fold} without folds; set folds=k (k >= 2) for k-fold cross-validation")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1 \
                or self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction {self.val_fraction}, test_fraction {self.test_fraction}; "
                             "expected fractions in (0, 1) that leave a training part")


def model_config(config: ClassifyConfig) -> ClassifierConfig:
    """The architecture part of a task config."""
    names = [f.name for f in dataclasses.fields(ClassifierConfig)]
    return ClassifierConfig(**{n: getattr(config, n) for n in names})


def data_dir(config) -> Path:
    """The configured data folder, else $RNNKIT_DATA, else ``../shared/data`` (beside the checkout)."""
    if config.data_dir:
        return Path(config.data_dir)
    return shared_data_dir() or Path("..") / "shared" / "data"


def load_texts(config: ClassifyConfig) -> tuple[list[str], list[str]]:
    """(texts, label names) of the configured dataset."""
    if config.dataset == "rt-polarity":
        return load_rt_polarity(data_dir(config) / "rt-polarity")
    if config.dataset == "sms-spam":
        return load_sms_spam(data_dir(config) / "sms-spam-collection" / "SMSSpamCollection")
    return load_labelled_file(config.dataset)


def split_indices(n: int, config: ClassifyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) index arrays: a fixed split, or fold ``config.fold`` of k, drawn from ``split_seed``.

    Raises ValueError when the training part of the split (of any fold, with folds) would be empty."""
    order = np.random.default_rng(config.split_seed).permutation(n)
    if config.folds:
        if config.folds > n:
            raise ValueError(f"folds={config.folds} of n={n} texts; expected folds <= n (a test fold would be empty)")
        bounds = np.linspace(0, n, config.folds + 1).round().astype(int)
        n_val = int(round(config.val_fraction * n))
        left = n - int(np.diff(bounds).max())  # the fewest texts outside a test fold
        if left - n_val < 1:
            raise ValueError(f"val_fraction {config.val_fraction} of n={n} texts holds out {n_val} for validation, "
                             f"but folds={config.folds} leave {left} outside a test fold: no training part; "
                             f"expected round(val_fraction * n) <= {left - 1} (or fewer folds)")
        test = order[bounds[config.fold]:bounds[config.fold + 1]]
        rest = np.concatenate([order[:bounds[config.fold]], order[bounds[config.fold + 1]:]])
        # validation: a random part of the other k-1 folds, drawn anew for each fold
        rest = np.random.default_rng([config.split_seed, config.fold]).permutation(rest)
        return rest[n_val:], rest[:n_val], test
    n_test, n_val = int(round(config.test_fraction * n)), int(round(config.val_fraction * n))
    if n - n_test - n_val < 1:
        raise ValueError(f"val_fraction {config.val_fraction} and test_fraction {config.test_fraction} of n={n} "
                         f"texts hold out {n_val} + {n_test}: no training part; "
                         "expected more texts or smaller fractions")
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


class ClassifyTask:
    """Trains a :class:`SequenceClassifier` on a labelled text set (see the module docstring)."""

    name = "classify"
    supports_cuda = True  # batches go to the model's array module
    config_class = ClassifyConfig
    main_metric = "val_loss"

    def __init__(self, config: ClassifyConfig, texts: list[str], labels: list[str], seed: int = 0,
                 model: SequenceClassifier | None = None):
        self.config, self.seed = config, seed
        if len(texts) != len(labels) or not texts:
            raise ValueError(f"{len(texts)} texts and {len(labels)} labels; expected equally many, at least one")
        tokens = [word_tokens(t)[: config.max_len] for t in texts]
        train, val, test = split_indices(len(texts), config)
        if config.max_train:
            train = train[: config.max_train]
        if model is None:
            names = sorted(set(labels))
            vocab = Vocab.build((w for i in train for w in tokens[i]), min_freq=config.min_freq, specials=(PAD, UNK))
            model = SequenceClassifier(model_config(config), len(vocab), len(names), pad_id=vocab.pad_id,
                                       unk_id=vocab.unk_id, labels=names, vocab=vocab.to_dict(), seed=seed)
        self.model = model
        self.vocab = Vocab.from_dict(model.vocab)
        self.labels = list(model.labels)
        label_id = {name: i for i, name in enumerate(self.labels)}
        unknown = sorted(set(labels) - set(label_id))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the model's classes {self.labels}")
        unk = self.vocab.unk_id
        # an empty text becomes one <unk>, so every sequence has a valid step
        self.ids = [self.vocab.encode(t) if t else np.array([unk], dtype=np.int64) for t in tokens]
        self.targets = np.array([label_id[lab] for lab in labels], dtype=np.int64)
        self.splits = {"train": train, "valid": val, "test": test}
        counts = np.bincount(self.targets[train], minlength=len(self.labels))
        # F1 is reported for the rarer of two classes (a tie picks id 1)
        self.positive = (1 if counts[1] <= counts[0] else 0) if len(self.labels) == 2 else None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ClassifyConfig, seed: int = 0) -> "ClassifyTask":
        texts, labels = load_texts(config)
        return cls(config, texts, labels, seed)

    @classmethod
    def from_checkpoint(cls, path) -> "ClassifyTask":
        """The task of a saved run: its model (weights, vocabulary, labels) and its data split."""
        from ..checkpoint import load_checkpoint  # noqa: PLC0415
        from ..config import from_dict  # noqa: PLC0415
        from ..models.base import Model  # noqa: PLC0415

        _, meta = load_checkpoint(path)
        task_meta = find_task_meta(meta, cls.name)
        config = from_dict(ClassifyConfig, task_meta["config"])
        model = Model.load(path)
        texts, labels = load_texts(config)
        return cls(config, texts, labels, int(task_meta.get("seed", 0)), model=model)

    def extra_meta(self) -> dict:
        return {"task": self.name, "task_config": dataclasses.asdict(self.config), "seed": self.seed}

    # -- training ----------------------------------------------------------------------------
    def before_fit(self, trainer) -> None:
        """Called by the Trainer before a fresh (not resumed) run: the biLM pretraining, if configured."""
        if self.config.pretrain_epochs:
            metrics = pretrain_bilm(self, trainer.config)
            trainer._log({"split": "pretrain", "epoch": 0, "step": 0, **metrics})

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def batch(self, idx):
        """(ids (B, T), mask (B, T), labels (B,)) of examples ``idx``."""
        ids, mask = pad_batch([self.ids[i] for i in idx], self.vocab.pad_id)
        return ids, mask, self.targets[idx]

    def train_batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        xp = self.model.xp
        for idx in bucketed_batches(self.splits["train"], self.ids, self.config.batch_size, rng):
            yield tuple(xp.asarray(a) for a in self.batch(idx))

    def num_train_batches(self) -> int:
        return -(-len(self.splits["train"]) // self.config.batch_size)

    def train_loss(self, batch) -> tuple[float, int]:
        ids, mask, labels = batch
        return self.model.loss(ids, labels, mask), len(labels)

    def backward(self) -> None:
        self.model.backward()

    # -- evaluation --------------------------------------------------------------------------
    def predict_split(self, split: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, C), labels (N,)) of a split, in eval mode, in the order of ``splits[split]``."""
        idx = self.splits[split]
        by_length = np.argsort([len(self.ids[i]) for i in idx], kind="stable")  # little padding per batch
        probs, xp = np.empty((len(idx), len(self.labels))), self.model.xp
        for start in range(0, len(idx), batch_size):
            rows = by_length[start:start + batch_size]
            ids, mask, _ = self.batch(idx[rows])
            probs[rows] = backend.to_numpy(self.model.predict_proba(xp.asarray(ids), xp.asarray(mask)))
        return probs, self.targets[idx]

    def evaluate(self, split: str) -> dict[str, float]:
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        if split not in self.splits:
            raise ValueError(f"split {split!r}; expected one of {sorted(self.splits)}")
        if len(self.splits[split]) == 0:
            return {}
        probs, y = self.predict_split(split)
        return classification_metrics(probs, y, self.positive)

    def classify(self, texts: list[str]) -> list[str]:
        """Label names predicted for raw texts."""
        seqs = [self.vocab.encode(word_tokens(t)[: self.config.max_len]) for t in texts]
        seqs = [s if len(s) else np.array([self.vocab.unk_id]) for s in seqs]
        ids, mask = pad_batch(seqs, self.vocab.pad_id)
        xp = self.model.xp
        predicted = backend.to_numpy(self.model.predict(xp.asarray(ids), xp.asarray(mask)))
        return [self.labels[k] for k in predicted]


class BiLMPretrainTask:
    """The training part's texts as a bidirectional language-model task (labels unused).

    Drives :class:`BiLMPretrainer` through the shared Trainer: the same length-bucketed,
    padded batches as the classifier (in an order of their own), validation on the
    validation part's texts, no test. Losses are nats per predicted token (both directions).
    """

    name = "classify-bilm-pretrain"
    supports_cuda = True  # batches go to the model's array module
    main_metric = "val_loss"
    unit = "tok"
    reports_perplexity = True

    def __init__(self, task: ClassifyTask, num_words: int = 0):
        self.task, self.seed, self.config = task, task.seed, task.config
        self.model = BiLMPretrainer(task.model, num_words, seed=task.seed)

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def train_batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch, 1])  # not the classifier's order of the same epoch
        xp, task = self.model.xp, self.task
        for idx in bucketed_batches(task.splits["train"], task.ids, self.config.batch_size, rng):
            ids, mask, _ = task.batch(idx)  # the classifier's batches, labels unused
            yield xp.asarray(ids), xp.asarray(mask)

    def num_train_batches(self) -> int:
        return self.task.num_train_batches()

    def train_loss(self, batch) -> tuple[float, int]:
        ids, mask = batch
        return self.model.loss(ids, mask), self.model.count

    def backward(self) -> None:
        self.model.backward()

    def evaluate(self, split: str, batch_size: int = 64) -> dict[str, float]:
        """{"loss", "ppl"} of the biLM on a split's texts, in eval mode."""
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        idx = self.task.splits[split]
        if len(idx) == 0:
            return {}
        idx = idx[np.argsort([len(self.task.ids[i]) for i in idx], kind="stable")]
        xp = self.model.xp
        total = count = 0.0
        with self.model.evaluating():
            for start in range(0, len(idx), batch_size):
                ids, mask, _ = self.task.batch(idx[start:start + batch_size])
                loss = self.model.loss(xp.asarray(ids), xp.asarray(mask))
                total, count = total + loss * self.model.count, count + self.model.count
        loss = total / max(count, 1)
        return {"loss": loss, "ppl": math.exp(loss) if loss < 709 else math.inf}

    def extra_meta(self) -> dict:
        return {"task": self.name, "task_config": dataclasses.asdict(self.config), "seed": self.seed}


def pretrain_bilm(task: ClassifyTask, train_config) -> dict[str, float]:
    """Pretrain ``task.model``'s embedding and encoder as a biLM for ``task.config.pretrain_epochs`` epochs.

    The shared Trainer runs it in ``<run_dir>/pretrain`` with the training config's optimizer,
    clipping, seed and logging (``pretrain_lr`` or the training lr; no schedule, weight averaging,
    early stopping or test). The weights of the last epoch stay in the classifier (with
    ``pretrain_keep="embedding"`` only the embedding's; the encoder gets its initial weights back). Returns the
    last validation metrics, e.g. ``{"pretrain_val_loss": ..., "pretrain_val_ppl": ...}``.
    """
    from ..train.trainer import Trainer  # noqa: PLC0415 (the trainer imports nothing of the tasks)

    cfg = task.config
    lm = BiLMPretrainTask(task, cfg.pretrain_vocab)
    pre = dataclasses.replace(
        train_config, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr or train_config.lr, schedule="none",
        ema_decay=0.0, early_stopping=0, max_steps=0, time_budget=0.0, eval_every=0, checkpoint_every=0,
        keep_checkpoints=1, eval_test=False, overwrite=True, run_dir=str(Path(train_config.run_dir) / "pretrain"))
    n_tokens = sum(len(task.ids[i]) for i in task.splits["train"])
    print(f"biLM pretraining: {cfg.pretrain_epochs} epoch(s) on the {len(task.splits['train']):,} training texts "
          f"({n_tokens:,} tokens, labels unused), {lm.model.num_directions} direction(s), "
          f"{lm.model.num_words:,} output words + boundary, lr {pre.lr:g}", flush=True)
    initial = {n: p.copy() for n, p in task.model.rnn.state_dict().items()}
    trainer = Trainer(lm, pre, cfg)
    trainer.fit()
    if cfg.pretrain_keep == "embedding":  # only the word vectors carry over; the encoder starts afresh
        task.model.rnn.load_state_dict(initial)
    last = [r for r in trainer.history if r.get("split") == "epoch"][-1]
    return {"pretrain_epochs": cfg.pretrain_epochs, "pretrain_train_loss": last["train_loss"],
            **{"pretrain_" + k: v for k, v in last.items() if k.startswith("val_")}}


def classification_metrics(probs: np.ndarray, y: np.ndarray, positive: int | None = None) -> dict[str, float]:
    """loss (mean -log p[y]), accuracy, and precision/recall/F1 of class ``positive`` (if given)."""
    eps = np.finfo(np.float64).tiny
    loss = float(-np.log(np.maximum(probs[np.arange(len(y)), y], eps)).mean())
    pred = probs.argmax(axis=1)
    out = {"loss": loss, "accuracy": float((pred == y).mean())}
    if positive is not None:
        tp = int(((pred == positive) & (y == positive)).sum())
        precision = tp / max(int((pred == positive).sum()), 1)
        recall = tp / max(int((y == positive).sum()), 1)
        out.update(precision=precision, recall=recall,
                   f1=0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return out


__all__ = ["BiLMPretrainTask", "ClassifyConfig", "ClassifyTask", "pretrain_bilm", "classification_metrics", "word_tokens", "split_indices"]
