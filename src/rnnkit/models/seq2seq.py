"""Encoder-decoder (seq2seq) with teacher forcing, scheduled sampling, peeky decoding and attention.

::

    x   = src (B, S), reversed within each valid prefix when reverse_source
    m   = Encoder(SrcEmbedding(x), src_mask)             m (B, S, H), state_S (L, B, H)
    p   = state_S's top-layer h                          (B, H), the "peek" vector
    y_0 = <sos>; y_t = target_t (teacher forcing) or the decoder's own prediction at step t
    h_t = Decoder([TgtEmbedding(y_{t-1}) ; p if peeky],  state_0 = state_S)
    c_t, a_t = Attention(h_t, m, src_mask)                dot | additive, if attention
    z_t = W [c_t if attention ; h_t ; p if peeky] + b     (B, T, V) logits
    loss = mean over valid target tokens of -log softmax(z_t)[target_t]

Targets are given without ``<sos>`` and end with ``<eos>``: ``tgt`` (B, T) right-padded,
``tgt_mask`` (B, T) True at valid tokens (``<eos>`` included). Sources are right-padded
with ``src_mask`` (B, S); padded source steps change neither the encoder state nor the
attention, so a padded example decodes exactly as it would alone.

Teacher forcing ratio < 1 (training only): at each step and for each example the
decoder is fed the true previous token with that probability, else its own previous
prediction (argmax, or a sample, over every token but ``<pad>`` and ``<sos>``: the first's
embedding gets no gradient, the second only ever starts a target), so the decoder runs step by step on its one-step cells
(which share the decoder's parameters) and back-propagates through the steps in reverse.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..decoding import Hypothesis, beam_search, greedy_search
from ..layers import GRU, LSTM, RNN, Embedding, GRUCell, Linear, LSTMCell, RNNCell, SoftmaxCrossEntropy
from ..layers.attention import Attention
from .base import Model

RECURRENT = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
ATTENTION = ("none", "dot", "additive")
FEEDBACK = ("argmax", "sample")


@dataclass
class Seq2SeqConfig:
    """Architecture of a :class:`Seq2Seq` (vocabulary sizes come separately)."""

    cell: str = field(default="lstm", metadata={"help": "encoder and decoder cell: rnn | lstm | gru"})
    embedding_dim: int = field(default=16, metadata={"help": "token embedding size E (source and target)"})
    hidden_size: int = field(default=128, metadata={"help": "hidden size H of encoder and decoder"})
    num_layers: int = field(default=1, metadata={"help": "stacked layers in encoder and in decoder"})
    attention: str = field(default="none", metadata={"help": "attention over encoder outputs: none | dot | additive"})
    attention_size: int = field(default=0, metadata={"help": "additive attention size A (0: hidden_size)"})
    peeky: bool = field(default=False, metadata={"help": "feed the encoder's final h to every decoder step and to the output layer"})
    reverse_source: bool = field(default=False, metadata={"help": "read each source sequence backwards"})
    teacher_forcing_ratio: float = field(default=1.0, metadata={"help": "probability of feeding the true previous token in training (< 1: scheduled sampling)"})
    feedback: str = field(default="argmax", metadata={
        "help": "what the decoder feeds back when not teacher-forced: argmax | sample (never <pad> or <sos>)"})
    embedding_init_std: float = field(default=0.1, metadata={"help": "std of the N(0, std) embedding init"})

    def __post_init__(self):
        if self.cell not in RECURRENT:
            raise ValueError(f"cell {self.cell!r}; expected one of {sorted(RECURRENT)}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention {self.attention!r}; expected one of {ATTENTION}")
        if self.feedback not in FEEDBACK:
            raise ValueError(f"feedback {self.feedback!r}; expected one of {FEEDBACK}")
        if not 0.0 <= self.teacher_forcing_ratio <= 1.0:
            raise ValueError(f"teacher_forcing_ratio {self.teacher_forcing_ratio!r}; expected 0 <= ratio <= 1")
        for name in ("embedding_dim", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)!r}; expected an integer >= 1")
        if self.attention_size < 0:
            raise ValueError(f"attention_size {self.attention_size!r}; expected >= 0 (0: hidden_size)")


class Seq2Seq(Model):
    """Encoder-decoder of any cell with optional peeky decoding, reversed source and attention.

    Seq2Seq(config, src_vocab_size, tgt_vocab_size=None (= src), pad_id=0, sos_id=1, eos_id=2,
    max_target_len=64, vocab=None, dtype=None, seed=0). ``vocab`` (any JSON-able form of the
    vocabulary) and ``max_target_len`` (the default decoding limit) go into checkpoints.
    """

    config_class = Seq2SeqConfig

    def __init__(self, config: Seq2SeqConfig, src_vocab_size: int, tgt_vocab_size: int | None = None,
                 pad_id: int = 0, sos_id: int = 1, eos_id: int = 2, max_target_len: int = 64,
                 vocab: dict | None = None, dtype=None, seed: int = 0, rng=None):
        super().__init__(config)
        tgt_vocab_size = src_vocab_size if tgt_vocab_size is None else tgt_vocab_size
        for name, value in (("pad_id", pad_id), ("sos_id", sos_id), ("eos_id", eos_id)):
            if not 0 <= value < tgt_vocab_size:
                raise ValueError(f"{name} {value!r}; expected an id in [0, {tgt_vocab_size - 1}]")
        self.src_vocab_size, self.tgt_vocab_size = int(src_vocab_size), int(tgt_vocab_size)
        self.pad_id, self.sos_id, self.eos_id = int(pad_id), int(sos_id), int(eos_id)
        self.max_target_len, self.vocab = int(max_target_len), vocab
        self.rng = rng if rng is not None else backend.default_rng(seed)
        c = config
        E, H, L = c.embedding_dim, c.hidden_size, c.num_layers
        peek = H if c.peeky else 0
        self.src_embedding = Embedding(src_vocab_size, E, padding_idx=pad_id, dtype=dtype, rng=self.rng,
                                       init_std=c.embedding_init_std)
        self.tgt_embedding = Embedding(tgt_vocab_size, E, padding_idx=pad_id, dtype=dtype, rng=self.rng,
                                       init_std=c.embedding_init_std)
        self.encoder = RECURRENT[c.cell](E, H, num_layers=L, dtype=dtype, rng=self.rng)
        self.decoder = RECURRENT[c.cell](E + peek, H, num_layers=L, dtype=dtype, rng=self.rng)
        if c.attention != "none":
            self.attention = Attention(H, H, score=c.attention, attention_size=c.attention_size or H,
                                       dtype=dtype, rng=self.rng)
        else:
            self.attention = None
        self.output = Linear((H if self.attention is not None else 0) + H + peek, tgt_vocab_size, dtype=dtype, rng=self.rng)
        self.criterion = SoftmaxCrossEntropy()
        # one-step views of the decoder's layers for step-by-step decoding; kept in a dict so
        # they are not children (their parameters are the decoder's, bound on every use)
        self._step_cells = {"cells": [CELLS[c.cell](E + peek if k == 0 else H, H, rng=np.random.default_rng(0))
                                      for k in range(L)]}
        self._cache = None
        self.last_attention = None  # (B, T, S) weights of the last forward, by original source position

    def extra_state(self) -> dict:
        return {"src_vocab_size": self.src_vocab_size, "tgt_vocab_size": self.tgt_vocab_size,
                "pad_id": self.pad_id, "sos_id": self.sos_id, "eos_id": self.eos_id,
                "max_target_len": self.max_target_len, "vocab": self.vocab}

    # -- pieces -------------------------------------------------------------------
    def _cells(self):
        """The decoder's one-step cells, bound to its current parameter and gradient arrays."""
        cells = self._step_cells["cells"]
        for k, cell in enumerate(cells):
            for short, full in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), self.decoder._names(k, 0)):
                if full in self.decoder.params:
                    cell.params[short], cell.grads[short] = self.decoder.params[full], self.decoder.grads[full]
        return cells

    def _source(self, src, src_mask):
        """Validate; returns (src as the encoder reads it, mask or None, reverse index (B, S) or None)."""
        xp = self.xp
        src = xp.asarray(src)
        if src.ndim != 2:
            raise ValueError(f"src has shape {tuple(src.shape)}; expected (B, S) token ids")
        B, S = src.shape
        if src_mask is None:
            mask = None
            lengths = xp.full(B, S)
        else:
            mask = xp.asarray(src_mask)
            if tuple(mask.shape) != (B, S) or mask.dtype != bool:
                raise ValueError(f"src_mask has shape {tuple(mask.shape)} dtype {mask.dtype}; expected ({B}, {S}) bool")
            lengths = mask.sum(axis=1)
            if int(lengths.min()) < 1:
                raise ValueError(f"source {int(xp.argmin(lengths))} has no valid step; need length >= 1")
            if not bool((mask == (xp.arange(S)[None, :] < lengths[:, None])).all()):
                raise ValueError("src_mask is not a valid prefix per row; expected right-padded sources")
            if bool(mask.all()):
                mask = None
        rev = None
        if self.config.reverse_source:
            t = xp.arange(S)[None, :]
            rev = xp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # an involution per row
            src = xp.take_along_axis(src, rev, axis=1)
        return src, mask, rev

    def _encode(self, src, mask):
        memory, state = self.encoder(self.src_embedding(src), mask=mask)
        h = state[0] if self.config.cell == "lstm" else state
        return memory, state, h[-1]

    # -- teacher-forced and scheduled-sampling forward ----------------------------------
    def forward(self, src, tgt, src_mask=None):
        """Logits (B, T, V) for targets ``tgt`` (B, T) (no ``<sos>``; ``<eos>`` last), caching for backward.

        The decoder reads ``<sos>, tgt[:, :-1]`` (teacher forcing), or, in training with
        ``teacher_forcing_ratio < 1``, a per-step mix of those and its own predictions.
        """
        xp = self.xp
        tgt = xp.asarray(tgt)
        if tgt.ndim != 2 or tgt.shape[0] != xp.asarray(src).shape[0]:
            raise ValueError(f"tgt has shape {tuple(tgt.shape)}; expected (B, T) with B = {xp.asarray(src).shape[0]}")
        # a new forward replaces the last one, also for the layers that stack their caches
        for layer in self._cells() + ([self.attention] if self.attention is not None else []):
            layer.reset_cache()
        src_r, mask, rev = self._source(src, src_mask)
        memory, enc_state, peek = self._encode(src_r, mask)
        B, T = tgt.shape
        sos = xp.full((B, 1), self.sos_id, dtype=tgt.dtype)
        teacher_inputs = xp.concatenate([sos, tgt[:, :-1]], axis=1)
        if self.training and self.config.teacher_forcing_ratio < 1.0:
            features, dec_in = self._forward_steps(teacher_inputs, enc_state, memory, mask, peek)
            self.tgt_embedding.forward(dec_in)  # (re)sets the embedding's cache for backward
            stepwise = True
        else:
            x = self.tgt_embedding(teacher_inputs)
            if self.config.peeky:
                x = xp.concatenate([x, xp.broadcast_to(peek[:, None, :], (B, T, peek.shape[1]))], axis=2)
            h, _ = self.decoder(x, state=enc_state)
            features = self._features(h, memory, mask, peek)
            stepwise = False
        if self.last_attention is not None and rev is not None:  # by original source position, as decoding reports
            self.last_attention = xp.take_along_axis(self.last_attention, rev[:, None, :], axis=2)
        logits = self.output(features)
        self._cache = (stepwise, T)
        return logits

    def _features(self, h, memory, mask, peek):
        """[c ; h ; p] for all steps: (B, T, F)."""
        parts = [h]
        if self.attention is not None:
            context, weights = self.attention(h, memory, mask)
            self.last_attention = weights
            parts = [context, h]
        if self.config.peeky:
            parts.append(self.xp.broadcast_to(peek[:, None, :], h.shape[:2] + peek.shape[1:]))
        return parts[0] if len(parts) == 1 else self.xp.concatenate(parts, axis=2)

    def _forward_steps(self, teacher_inputs, enc_state, memory, mask, peek):
        """Scheduled sampling: step the cells, feeding back the model's own predictions where the coin says so."""
        xp, c = self.xp, self.config
        B, T = teacher_inputs.shape
        states = self._layer_states(enc_state)
        use_truth = xp.asarray(self.rng.random((B, T)) < c.teacher_forcing_ratio)
        tokens = teacher_inputs[:, 0]
        dec_in, features, weights = [], [], []
        for t in range(T):
            if t > 0:
                tokens = xp.where(use_truth[:, t], teacher_inputs[:, t], self._feedback(self._logits(f)))
            dec_in.append(tokens)
            f, states, w = self._step(tokens, states, memory, mask, peek)
            features.append(f)
            weights.append(w)
        self.last_attention = xp.stack(weights, axis=1) if self.attention is not None else None
        return xp.stack(features, axis=1), xp.stack(dec_in, axis=1)

    def _step(self, tokens, states, memory, mask, peek):
        """One decoder step on the cells (which stack their caches, as does the attention).

        tokens (B,) int; states: one cell state per layer. Returns (features [c ; h ; p] (B, F),
        the new states, attention weights (B, S) or None).
        """
        xp, c = self.xp, self.config
        x = self.tgt_embedding.params["weight"][tokens]
        if c.peeky:
            x = xp.concatenate([x, peek], axis=1)
        new_states = []
        for cell, state in zip(self._cells(), states):
            state = cell(x, state)
            new_states.append(state)
            x = state[0] if c.cell == "lstm" else state
        parts, weights = [x], None
        if self.attention is not None:
            context, weights = self.attention(x, memory, mask)
            parts = [context, x]
        if c.peeky:
            parts.append(peek)
        return (xp.concatenate(parts, axis=1) if len(parts) > 1 else x), new_states, weights

    def _logits(self, features):
        """The output layer's affine map, without touching its cache."""
        logits = features @ self.output.params["weight"].T
        if "bias" in self.output.params:
            logits += self.output.params["bias"]
        return logits

    def _feedback(self, logits):
        # never feed back <pad> (its embedding row gets no gradient) nor <sos>
        logits = logits.copy()
        logits[:, [self.pad_id, self.sos_id]] = -self.xp.inf
        if self.config.feedback == "argmax":
            return logits.argmax(axis=1)
        xp = self.xp
        p = xp.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        u = xp.asarray(self.rng.random((p.shape[0], 1)))
        return xp.minimum((xp.cumsum(p, axis=1) < u).sum(axis=1), p.shape[1] - 1)

    def _layer_states(self, enc_state):
        """(L, B, H) state (LSTM: a tuple) -> a list of per-layer cell states."""
        if self.config.cell == "lstm":
            return [(enc_state[0][k], enc_state[1][k]) for k in range(self.config.num_layers)]
        return [enc_state[k] for k in range(self.config.num_layers)]

    def loss(self, src, tgt, src_mask=None, tgt_mask=None) -> float:
        """Mean cross-entropy over valid target tokens (training forward; caches for ``backward()``)."""
        logits = self.forward(src, tgt, src_mask)
        if tgt_mask is not None:
            tgt_mask = self.xp.asarray(tgt_mask)
        self.last_logits = logits
        return self.criterion.forward(logits, self.xp.asarray(tgt), mask=tgt_mask)

    # -- backward ---------------------------------------------------------------------
    def backward(self, dlogits=None):
        """Back through the last forward. dlogits (B, T, V); None: the gradient of the last ``loss``."""
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        stepwise, T = self._cache
        self._cache = None
        if dlogits is None:
            dlogits = self.criterion.backward()
        c, H = self.config, self.config.hidden_size
        dfeat = self.output.backward(dlogits)
        off = H if self.attention is not None else 0
        dcontext = dfeat[:, :, :off] if off else None
        dh = dfeat[:, :, off : off + H]
        dpeek = dfeat[:, :, off + H :].sum(axis=1) if c.peeky else None
        dmemory = None
        if stepwise:
            dx, dstate0, dmemory = self._backward_steps(dcontext, dh, T)
        else:
            if self.attention is not None:
                dq, dmemory = self.attention.backward(dcontext)
                dh = dh + dq
            dx = self.decoder.backward(dh)
            dstate0 = self.decoder.dstate0
        E = c.embedding_dim
        self.tgt_embedding.backward(dx[:, :, :E])
        if c.peeky:
            dpeek = dpeek + dx[:, :, E:].sum(axis=1)
        # the peek vector is the encoder's top-layer final h: its gradient joins that of the state
        if c.cell == "lstm":
            dh0, dc0 = dstate0
            if c.peeky:
                dh0 = dh0.copy()
                dh0[-1] += dpeek
            dstate = (dh0, dc0)
        else:
            dstate = dstate0
            if c.peeky:
                dstate = dstate.copy()
                dstate[-1] += dpeek
        de = self.encoder.backward(dmemory, dstate=dstate)
        self.src_embedding.backward(de)

    def _backward_steps(self, dcontext, dh_out, T):
        """BPTT through the stepped cells (and attention), last step first."""
        c, xp = self.config, self.xp
        cells = self._step_cells["cells"]
        B = dh_out.shape[0]
        L = c.num_layers
        carry = [None] * L  # gradient of each layer's state entering step t+1
        dx = xp.empty((B, T, cells[0].input_size), dtype=dh_out.dtype)
        dmemory = None
        for t in range(T - 1, -1, -1):
            g = dh_out[:, t]
            if self.attention is not None:
                dq, dm = self.attention.backward(dcontext[:, t])
                g = g + dq
                dmemory = dm if dmemory is None else dmemory + dm
            for k in range(L - 1, -1, -1):
                if c.cell == "lstm":
                    dh_next, dc_next = carry[k] if carry[k] is not None else (0.0, None)
                    d_in, carry[k] = cells[k].backward((g + dh_next, dc_next))
                else:
                    d_in, carry[k] = cells[k].backward(g + (carry[k] if carry[k] is not None else 0.0))
                g = d_in
            dx[:, t] = g
        if c.cell == "lstm":
            dstate0 = (xp.stack([s[0] for s in carry]), xp.stack([s[1] for s in carry]))
        else:
            dstate0 = xp.stack(carry)
        return dx, dstate0, dmemory

    # -- decoding -----------------------------------------------------------------------
    def _decode_setup(self, src, src_mask):
        """Encode; returns (initial decoding state with batch on axis 0, batch size)."""
        src_r, mask, rev = self._source(src, src_mask)
        memory, enc_state, peek = self._encode(src_r, mask)
        if self.config.cell == "lstm":
            h, cstate = enc_state[0].transpose(1, 0, 2), enc_state[1].transpose(1, 0, 2)
        else:
            h, cstate = enc_state.transpose(1, 0, 2), None
        if self.attention is None:
            memory = None
        state = (h, cstate, memory, mask, rev, peek if self.config.peeky else None)
        return state, src_r.shape[0]

    def decode_step(self, tokens, state):
        """One decoding step (a :mod:`rnnkit.decoding` step function).

        tokens (K,) int; state = (h (K, L, H), c (K, L, H) or None, memory (K, S, H) or None,
        src_mask (K, S) or None, reverse index (K, S) or None, peek (K, H) or None).
        Returns (log_probs (K, V), new state, attention weights (K, S) over source
        positions in their original order, or None).
        """
        xp = self.xp
        h, cstate, memory, mask, rev, peek = state
        L = h.shape[1]
        states = [(h[:, k], cstate[:, k]) if cstate is not None else h[:, k] for k in range(L)]
        f, states, weights = self._step(xp.asarray(tokens), states, memory, mask, peek)
        for layer in self._step_cells["cells"] + ([self.attention] if self.attention is not None else []):
            layer.reset_cache()  # inference: nothing to back-propagate
        if cstate is not None:
            h, cstate = xp.stack([s[0] for s in states], axis=1), xp.stack([s[1] for s in states], axis=1)
        else:
            h = xp.stack(states, axis=1)
        if weights is not None and rev is not None:  # report weights by original source position
            weights = xp.take_along_axis(weights, rev, axis=1)
        logits = self._logits(f)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        return log_probs, (h, cstate, memory, mask, rev, peek), weights

    def greedy_decode(self, src, src_mask=None, max_len: int | None = None) -> list[Hypothesis]:
        """Greedy decoding of a batch of sources (B, S). Returns one Hypothesis per example;
        ``hyp.aux`` holds the attention weights (steps, S) when the model attends."""
        def run():
            state, B = self._decode_setup(src, src_mask)
            return greedy_search(self.decode_step, state, self.sos_id, self.eos_id, max_len or self.max_target_len,
                                 batch_size=B)
        with self.evaluating():
            return run()

    def beam_decode(self, src, src_mask=None, beam_size: int = 5, max_len: int | None = None,
                    length_penalty: float = 1.0, n_best: int | None = None) -> list[list[Hypothesis]]:
        """Beam search with length normalisation (``score / length ** length_penalty``).
        Returns per example the ``n_best`` (default ``beam_size``) hypotheses, best first."""
        def run():
            state, B = self._decode_setup(src, src_mask)
            return beam_search(self.decode_step, state, self.sos_id, self.eos_id, beam_size,
                               max_len or self.max_target_len, length_penalty=length_penalty,
                               n_best=n_best, batch_size=B)
        with self.evaluating():
            return run()


__all__ = ["Seq2SeqConfig", "Seq2Seq"]
