"""Bidirectional language-model pretraining of a :class:`SequenceClassifier`'s body.

Semi-supervised sequence learning (Dai & Le 2015; ELMo's biLM is the bidirectional form):
before the classifier is trained on labels, its own embedding and recurrent encoder are
trained as a language model on the same sentences, labels unused. Only the head differs::

    e    = classifier.embed(ids)                         (B, T, E)  word dropout, embedding, dropout
    y    = classifier.rnn(e, mask)                       (B, T, dirs*H)
    y    = classifier.dropout(y)
    z_f  = y[..., :H] W_f^T + b_f                        (B, T, V+1)  forward state at t -> token t+1
    z_b  = y[..., H:] W_b^T + b_b                        (B, T, V+1)  backward state at t -> token t-1
    loss = mean over the valid positions of both directions of -log softmax(z)[target]

The forward state at a sequence's last valid step predicts a boundary class (id ``V``, the
end of the sentence), the backward state at its first valid step predicts the same class
(the start). The output vocabulary is the classifier's first ``V`` ids (the vocabulary is
ordered by falling frequency); rarer words are predicted as ``<unk>``, which keeps the
two (V+1)-way softmaxes cheap. Padded steps are not counted.

The embedding, recurrent layer and dropout layers are the classifier's own objects, so
training this model trains the classifier's weights in place; the two heads are thrown
away afterwards. A stacked *bidirectional* encoder cannot be pretrained this way: its
second layer reads both directions of the first, so its forward state at t has already
seen token t+1 (:class:`BiLMPretrainer` refuses it with a clear error).
"""
from __future__ import annotations

from .. import backend
from ..layers import Linear, SoftmaxCrossEntropy
from .base import Model
from .classifier import ClassifierConfig, SequenceClassifier


class BiLMPretrainer(Model):
    """The classifier's embedding + encoder with one next-token head per direction.

    BiLMPretrainer(classifier, num_words=0, seed=0). ``num_words``: predict the classifier's
    ids below it (0 or more than the vocabulary: all of them); larger ids count as ``unk_id``.
    ``loss(ids, mask) -> float`` (training forward; caches) and ``backward(dloss=1.0)``.
    """

    config_class = ClassifierConfig

    def __init__(self, classifier: SequenceClassifier, num_words: int = 0, seed: int = 0):
        c = classifier.config
        if c.bidirectional and c.num_layers > 1:
            raise ValueError(f"biLM pretraining of a {c.num_layers}-layer bidirectional encoder: its upper layers read "
                             "both directions of the layer below, so a forward state would already have seen the "
                             "token it must predict; use num_layers=1 (or bidirectional=False) to pretrain")
        if num_words < 0:
            raise ValueError(f"num_words {num_words}; expected >= 0 (0: the whole vocabulary)")
        super().__init__(c)
        V = classifier.vocab_size if not num_words or num_words > classifier.vocab_size else int(num_words)
        if V < classifier.vocab_size and classifier.unk_id is None:
            raise ValueError(f"num_words {num_words} with a classifier that has no unk_id: the rarer words need an "
                             "<unk> class to be predicted as; give the classifier an unk_id, or num_words=0")
        if V <= max(classifier.pad_id, classifier.unk_id or 0):
            raise ValueError(f"num_words {num_words} leaves out the special ids (pad {classifier.pad_id}, unk "
                             f"{classifier.unk_id}); expected more")
        self.num_words, self.boundary = V, V  # class V: the sentence boundary
        self.unk_id = classifier.unk_id if classifier.unk_id is not None else classifier.pad_id
        self.hidden_size, self.num_directions = c.hidden_size, 2 if c.bidirectional else 1
        # the classifier's own layers (shared objects: their weights are trained in place)
        self.embedding, self.embed_dropout = classifier.embedding, classifier.embed_dropout
        self.rnn, self.dropout = classifier.rnn, classifier.dropout
        self._embed, self._embed_backward = classifier.embed, classifier.embed_backward  # methods, not children
        rng, dtype = backend.default_rng(seed), classifier.embedding.params["weight"].dtype
        self.forward_head = Linear(c.hidden_size, V + 1, dtype=dtype, rng=rng)
        self.forward_loss = SoftmaxCrossEntropy()
        if self.num_directions == 2:
            self.backward_head = Linear(c.hidden_size, V + 1, dtype=dtype, rng=rng)
            self.backward_loss = SoftmaxCrossEntropy()
        self.count = 0  # predictions counted by the last loss (both directions)

    def extra_state(self) -> dict:
        return {"num_words": self.num_words}

    def targets(self, ids, mask):
        """(next (B, T), previous (B, T)): the target of each step's forward / backward state.

        The neighbour's id (capped to the output vocabulary), or the boundary class where the
        neighbour is padding or past either end.
        """
        xp = backend.get_array_module(ids)
        words = xp.where(ids < self.num_words, ids, self.unk_id)
        nxt = xp.full(ids.shape, self.boundary, dtype=ids.dtype)
        prv = xp.full(ids.shape, self.boundary, dtype=ids.dtype)
        nxt[:, :-1] = xp.where(mask[:, 1:], words[:, 1:], self.boundary)
        prv[:, 1:] = xp.where(mask[:, :-1], words[:, :-1], self.boundary)
        return nxt, prv

    def loss(self, ids, mask=None) -> float:
        """Mean next/previous-token cross-entropy over the valid steps of both directions."""
        xp = backend.get_array_module(ids)
        if mask is None:
            mask = xp.ones(ids.shape, dtype=bool)
        mask = mask.astype(bool)
        nxt, prv = self.targets(ids, mask)
        y, _ = self.rnn(self._embed(ids), mask=mask)
        y = self.dropout(y)
        H = self.hidden_size
        loss = self.forward_loss.forward(self.forward_head(y[..., :H]), nxt, mask)
        self.count = self.forward_loss.count
        if self.num_directions == 2:  # equal counts: the mean over both is the mean of the two
            loss = 0.5 * (loss + self.backward_loss.forward(self.backward_head(y[..., H:]), prv, mask))
            self.count += self.backward_loss.count
        return loss

    def backward(self, dloss: float = 1.0) -> None:
        """Back through the last ``loss``: heads, dropout, recurrent layer, embedding."""
        xp = self.xp
        if self.num_directions == 2:
            dy = xp.concatenate([self.forward_head.backward(self.forward_loss.backward(0.5 * dloss)),
                                 self.backward_head.backward(self.backward_loss.backward(0.5 * dloss))], axis=-1)
        else:
            dy = self.forward_head.backward(self.forward_loss.backward(dloss))
        self._embed_backward(self.rnn.backward(self.dropout.backward(dy)))


__all__ = ["BiLMPretrainer"]
