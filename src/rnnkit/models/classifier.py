"""Many-to-one sequence classification: tokens in, one class per sequence out.

::

    e   = Dropout(Embedding(WordDropout(ids)))         (B, T, E)
    y   = RNN/LSTM/GRU(e, mask)                        (B, T, dirs*H), stacked, (bi)directional
    v   = Dropout(pool(y, mask))                       (B, dirs*H)   last valid state | mean | max
                                                       (B, 2*dirs*H) max+mean: [max | mean]
    z   = v W^T + b                                    (B, C) logits
    loss = mean_b -log softmax(z_b)[label_b]

Batches are right-padded: ``mask`` (B, T) is True on each sequence's valid prefix.
Padded steps neither change the recurrent state nor enter the pooling, so a padded
sequence is classified exactly as it would be alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import backend
from ..layers import GRU, LSTM, RNN, Dropout, Embedding, Linear, SequencePooling, SoftmaxCrossEntropy
from ..layers.pooling import POOLING_MODES
from .base import Model

RECURRENT = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


@dataclass
class ClassifierConfig:
    """Architecture of a :class:`SequenceClassifier` (sizes of the data come separately)."""

    cell: str = field(default="lstm", metadata={"help": "recurrent cell: rnn | lstm | gru"})
    embedding_dim: int = field(default=128, metadata={"help": "word embedding size E"})
    hidden_size: int = field(default=128, metadata={"help": "recurrent hidden size H (per direction)"})
    num_layers: int = field(default=1, metadata={"help": "stacked recurrent layers"})
    bidirectional: bool = field(default=True, metadata={"help": "read each sequence both ways"})
    pooling: str = field(default="max", metadata={"help": "sequence summary over valid steps: last | mean | max | max+mean ([max | mean])"})
    dropout: float = field(default=0.5, metadata={"help": "dropout on the embeddings and on the pooled vector"})
    rnn_dropout: float = field(default=0.0, metadata={"help": "dropout between stacked recurrent layers"})
    embedding_init_std: float = field(default=0.1, metadata={"help": "std of the N(0, std) embedding init"})
    word_dropout: float = field(default=0.0, metadata={"help": "training: replace each token by <unk> with this probability"})

    def __post_init__(self):
        if self.cell not in RECURRENT:
            raise ValueError(f"cell {self.cell!r}; expected one of {sorted(RECURRENT)}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling {self.pooling!r}; expected one of {POOLING_MODES}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout {self.word_dropout!r}; expected 0 <= word_dropout < 1")


class SequenceClassifier(Model):
    """Embedding -> (bi)directional stacked RNN/LSTM/GRU -> pooling -> dropout -> affine -> softmax.

    SequenceClassifier(config, vocab_size, num_classes, pad_id=0, unk_id=None, labels=None,
    vocab=None, dtype=None, seed=0). ``unk_id`` is what word dropout turns tokens into.
    ``labels`` (class names) and ``vocab`` (any JSON-able form of the vocabulary) are carried
    into checkpoints so a saved model can classify raw text again.
    """

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig, vocab_size: int, num_classes: int, pad_id: int = 0,
                 unk_id: int | None = None, labels: list[str] | None = None, vocab: dict | None = None,
                 dtype=None, seed: int = 0, rng=None):
        super().__init__(config)
        if num_classes < 2:
            raise ValueError(f"num_classes {num_classes}; need at least 2 classes")
        if labels is not None and len(labels) != num_classes:
            raise ValueError(f"{len(labels)} label names for num_classes {num_classes}; expected one name per class")
        if config.word_dropout and unk_id is None:
            raise ValueError(f"word_dropout {config.word_dropout} needs unk_id, the id that dropped words become")
        self.vocab_size, self.num_classes, self.pad_id = int(vocab_size), int(num_classes), int(pad_id)
        self.unk_id = None if unk_id is None else int(unk_id)
        self.rng = rng if rng is not None else backend.default_rng(seed)
        rng = self.rng
        self.labels, self.vocab = list(labels) if labels is not None else None, vocab
        c = config
        dirs = 2 if c.bidirectional else 1
        self.embedding = Embedding(vocab_size, c.embedding_dim, padding_idx=pad_id, dtype=dtype, rng=rng,
                                   init_std=c.embedding_init_std)
        self.embed_dropout = Dropout(c.dropout, rng=rng)
        self.rnn = RECURRENT[c.cell](c.embedding_dim, c.hidden_size, num_layers=c.num_layers,
                                     bidirectional=c.bidirectional, dropout=c.rnn_dropout, dtype=dtype, rng=rng)
        self.pool = SequencePooling(c.pooling, num_directions=dirs)
        self.dropout = Dropout(c.dropout, rng=rng)
        self.output = Linear(self.pool.output_size(dirs * c.hidden_size), num_classes, dtype=dtype, rng=rng)
        self.criterion = SoftmaxCrossEntropy()

    def extra_state(self) -> dict:
        return {"vocab_size": self.vocab_size, "num_classes": self.num_classes, "pad_id": self.pad_id,
                "unk_id": self.unk_id, "labels": self.labels, "vocab": self.vocab}

    # -- forward / backward -------------------------------------------------------
    def embed(self, ids):
        """(Word dropout in training,) embedding lookup, dropout: ids (B, T) -> (B, T, E).

        Shared with the biLM pretraining (:mod:`rnnkit.models.bilm`); ``embed_backward`` undoes it.
        """
        if self.training and self.config.word_dropout:
            # word dropout: whole tokens become <unk>, so no single word can carry a sentence
            drop = self.xp.asarray(self.rng.random(ids.shape) < self.config.word_dropout)
            ids = self.xp.where(drop, self.unk_id, ids)
        return self.embed_dropout(self.embedding(ids))

    def embed_backward(self, de) -> None:
        """Back through the last ``embed`` (into the embedding's gradient)."""
        self.embedding.backward(self.embed_dropout.backward(de))

    def forward(self, ids, mask=None):
        """ids (B, T) int, mask (B, T) bool (None: no padding) -> logits (B, num_classes)."""
        e = self.embed(ids)
        y, _ = self.rnn(e, mask=mask)
        v = self.dropout(self.pool(y, mask))
        return self.output(v)

    def backward(self, dlogits=None):
        """Back through the last forward. dlogits (B, C); None: the gradient of the last ``loss``."""
        if dlogits is None:
            dlogits = self.criterion.backward()
        dv = self.dropout.backward(self.output.backward(dlogits))
        dy = self.pool.backward(dv)
        self.embed_backward(self.rnn.backward(dy))

    def loss(self, ids, labels, mask=None) -> float:
        """Mean cross-entropy of the batch (training forward; caches for ``backward()``).

        labels (B,) int class ids.
        """
        self.last_logits = self.forward(ids, mask)
        return self.criterion.forward(self.last_logits, labels)

    # -- inference ---------------------------------------------------------------
    def predict_proba(self, ids, mask=None):
        """Class probabilities (B, num_classes), in eval mode (the mode is restored after)."""
        was_training = self.training
        self.eval()
        try:
            z = self.forward(ids, mask)
        finally:
            self.train(was_training)
        z = z - z.max(axis=1, keepdims=True)
        p = self.xp.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, ids, mask=None):
        """Most probable class id per sequence, (B,) int."""
        return self.predict_proba(ids, mask).argmax(axis=1)


__all__ = ["ClassifierConfig", "SequenceClassifier"]
