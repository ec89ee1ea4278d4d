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

Adversarial training (``adversarial_eps`` > 0; Miyato, Dai & Goodfellow 2017, "Adversarial
Training Methods for Semi-Supervised Text Classification"): after the usual backward, each
sequence's embeddings are moved by an L2 distance ``eps`` in the direction that raises its loss
the most, to first order,

    g_b = dloss/de_b                                   (T, E) of sequence b
    r_b = eps * g_b / ||g_b||_2                        (held constant: no gradient through r)
    loss_adv = mean_b -log softmax(z(e + r)_b)[label_b]

and the gradient of ``loss_adv`` is added to that of ``loss`` (weight 1). The embedding dropout
mask is shared by both passes; the other dropout masks are drawn again.
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
    adversarial_eps: float = field(default=0.0, metadata={
        "help": "training: also fit each batch with every sequence's embeddings moved this L2 distance along "
                "its loss gradient (adversarial training, Miyato et al. 2017; doubles the step's cost); 0: off"})

    def __post_init__(self):
        if self.cell not in RECURRENT:
            raise ValueError(f"cell {self.cell!r}; expected one of {sorted(RECURRENT)}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling {self.pooling!r}; expected one of {POOLING_MODES}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout {self.word_dropout!r}; expected 0 <= word_dropout < 1")
        if not self.adversarial_eps >= 0.0:  # also refuses NaN
            raise ValueError(f"adversarial_eps {self.adversarial_eps!r}; expected >= 0 (0: no adversarial training)")


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
        self._embedded, self._adversarial_batch = None, None
        self.last_adversarial_loss = self.last_adversarial_delta = None  # of the last adversarial pass

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

    def forward(self, ids, mask=None, delta=None):
        """ids (B, T) int, mask (B, T) bool (None: no padding) -> logits (B, num_classes).

        ``delta`` (B, T, E), if given, is added to the (dropped-out) embeddings: a perturbation
        of the input held constant by ``backward``.
        """
        ids = self.xp.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids have shape {tuple(ids.shape)}; expected (B, T) token ids")
        e = self.embed(ids)
        if delta is not None:
            if delta.shape != e.shape:
                raise ValueError(f"delta shape {delta.shape}; expected the embeddings' shape {e.shape}")
            e = e + delta
        self._embedded = e
        return self._head(e, mask)

    def _head(self, e, mask):
        """Embeddings (B, T, E) -> logits: recurrent stack, pooling, dropout, affine."""
        y, _ = self.rnn(e, mask=mask)
        return self.output(self.dropout(self.pool(y, mask)))

    def _head_backward(self, dlogits):
        """Back through the last ``_head``: dlogits (B, C) -> gradient of the embeddings (B, T, E)."""
        dv = self.dropout.backward(self.output.backward(dlogits))
        return self.rnn.backward(self.pool.backward(dv))

    def backward(self, dlogits=None):
        """Back through the last forward. dlogits (B, C); None: the gradient of the last ``loss``.

        After a training ``loss`` with ``adversarial_eps`` > 0 this also runs the adversarial pass
        (module docstring) and accumulates its gradient; its loss and perturbation are
        ``last_adversarial_loss`` and ``last_adversarial_delta``.
        """
        adversarial = dlogits is None and self._adversarial_batch is not None
        batch, self._adversarial_batch = self._adversarial_batch, None
        if dlogits is None:
            dlogits = self.criterion.backward()
        de = self._head_backward(dlogits)
        if adversarial:
            labels, mask = batch
            r = self.last_adversarial_delta = self.adversarial_perturbation(de)
            z = self._head(self._embedded + r, mask)
            self.last_adversarial_loss = self.criterion.forward(z, labels)
            de = de + self._head_backward(self.criterion.backward())
        self.embed_backward(de)

    def adversarial_perturbation(self, grad):
        """``eps * g_b / ||g_b||`` for each sequence b of ``grad`` (B, T, E); zero where g_b is zero.

        As in Miyato et al.'s code, each g_b is first divided by its largest magnitude, so the
        squares neither underflow nor overflow in float32.
        """
        xp = self.xp
        scale = xp.abs(grad).max(axis=(1, 2), keepdims=True)
        g = grad / xp.where(scale > 0, scale, 1)
        norm = xp.sqrt((g * g).sum(axis=(1, 2), keepdims=True))
        return (self.config.adversarial_eps * g / xp.where(norm > 0, norm, 1)).astype(grad.dtype, copy=False)

    def loss(self, ids, labels, mask=None) -> float:
        """Mean cross-entropy of the batch (training forward; caches for ``backward()``).

        labels (B,) int class ids. The returned loss is the clean one (without the adversarial pass).
        """
        self.last_logits = self.forward(ids, mask)
        adversarial = self.training and self.config.adversarial_eps > 0
        self._adversarial_batch = (labels, mask) if adversarial else None
        return self.criterion.forward(self.last_logits, labels)

    # -- inference ---------------------------------------------------------------
    def predict_proba(self, ids, mask=None):
        """Class probabilities (B, num_classes), in eval mode (the mode is restored after)."""
        with self.evaluating():
            z = self.forward(ids, mask)
        z = z - z.max(axis=1, keepdims=True)
        p = self.xp.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, ids, mask=None):
        """Most probable class id per sequence, (B,) int."""
        return self.predict_proba(ids, mask).argmax(axis=1)


__all__ = ["ClassifierConfig", "SequenceClassifier"]
