"""Image captioning (one-to-many): an image feature vector conditions a recurrent decoder.

::

    x   = image features (B, F), or region features (B, R, F)   (a fixed extractor: data.captions)
    f   = tanh(x W_e^T)               (B, D) or (B, R, D): the optional jointly trained layer,
                                      one W_e shared by all R regions; f = x if encoder_hidden = 0
    f   = f flattened to (B, R*D)     (each region keeps its place)
    init:   h_0 = f W_h^T + b_h       (L, B, H), one block of H per layer
            c_0 = f W_c^T + b_c       (LSTM only)
    inject: p   = f W_p^T + b_p       (B, P), fed beside the word at every step
    y_0 = <sos>; y_t = caption word t (teacher forcing)
    h_t = Decoder([Embedding(y_{t-1}) ; p if inject],  state_0 = (h_0, c_0) if init else 0)
    z_t = W_o dropout(h_t) + b_o      (B, T, V) logits
    loss = mean over valid caption tokens of -log softmax(z_t)[y_t]

``conditioning`` picks ``init`` (the image only sets the initial state, Show and Tell's
"init-inject"), ``inject`` (the image vector is concatenated to every input, "par-inject";
the state starts at zero) or ``both``. The heads are affine, like Show, Attend and Tell's
``init_h``/``init_c``: with a ``tanh`` on them, training drove h_0 to the same saturated
value for every image within an epoch, and then no gradient reached the image.
Captions are given without ``<sos>`` and end with ``<eos>``: ``captions`` (B, T)
right-padded, ``mask`` (B, T) True at valid tokens.

Decoding runs the decoder's one-step cells (bound to the decoder's own parameters) under
:mod:`rnnkit.decoding`: greedy, beam search with length normalisation, or sampling with a
temperature.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..decoding import Hypothesis, beam_search, greedy_search
from ..layers import GRU, LSTM, RNN, Dropout, Embedding, GRUCell, Layer, Linear, LSTMCell, RNNCell, SoftmaxCrossEntropy
from ..layers._checks import check_float_input
from .base import Model

RECURRENT = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
CONDITIONING = ("init", "inject", "both")


@dataclass
class CaptionerConfig:
    """Architecture of a :class:`Captioner` (feature and vocabulary sizes come separately).

    The defaults are the best measured on the digit scenes (benchmarks/caption_results.md).
    """

    cell: str = field(default="lstm", metadata={"help": "decoder cell: rnn | lstm | gru"})
    embedding_dim: int = field(default=32, metadata={"help": "word embedding size E"})
    hidden_size: int = field(default=256, metadata={"help": "decoder hidden size H"})
    num_layers: int = field(default=1, metadata={"help": "stacked decoder layers L"})
    encoder_hidden: int = field(default=128, metadata={
        "help": "size D of a jointly trained tanh layer over each region's features (0: none, affine heads only)"})
    conditioning: str = field(default="inject", metadata={
        "help": "how the image enters the decoder: init (initial state) | inject (fed at every step) | both"})
    inject_size: int = field(default=128, metadata={"help": "size P of the image vector fed at every step (inject | both)"})
    dropout: float = field(default=0.3, metadata={"help": "dropout on the decoder outputs before the softmax layer"})
    embedding_init_std: float = field(default=0.1, metadata={"help": "std of the N(0, std) embedding init"})

    def __post_init__(self):
        if self.cell not in RECURRENT:
            raise ValueError(f"cell {self.cell!r}; expected one of {sorted(RECURRENT)}")
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"conditioning {self.conditioning!r}; expected one of {CONDITIONING}")
        for name in ("embedding_dim", "hidden_size", "num_layers", "inject_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)!r}; expected an integer >= 1")
        if self.encoder_hidden < 0:
            raise ValueError(f"encoder_hidden {self.encoder_hidden!r}; expected >= 0 (0: no hidden layer)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout {self.dropout!r}; expected 0 <= dropout < 1")

    @property
    def uses_init(self) -> bool:
        return self.conditioning in ("init", "both")

    @property
    def uses_inject(self) -> bool:
        return self.conditioning in ("inject", "both")


class ImageEncoder(Layer):
    """Image features -> the decoder's initial state and/or its per-step image vector.

    forward(x) -> (state_0, p). x: (B, F), or (B, R, F) with num_regions = R. state_0:
    (L, B, H) (LSTM: a tuple (h_0, c_0)), None without ``init``; p: (B, P), None without
    ``inject``. Equations in the module docstring. backward(dstate_0, dp) -> dx shaped like
    x; either gradient may be None.

    The shared layer has no bias, so an empty region (all-zero features) encodes to exactly
    zero instead of a constant that every image shares (a direction in which the heads
    would otherwise drift together).
    """

    def __init__(self, config: CaptionerConfig, feature_size: int, num_regions: int = 1, dtype=None, rng=None):
        super().__init__()
        c = config
        self.config, self.feature_size, self.num_regions = c, int(feature_size), int(num_regions)
        L, H = c.num_layers, c.hidden_size
        D = (c.encoder_hidden or feature_size) * num_regions
        self.hidden = (Linear(feature_size, c.encoder_hidden, bias=False, dtype=dtype, rng=rng)
                       if c.encoder_hidden else None)
        self.init_h = Linear(D, L * H, dtype=dtype, rng=rng) if c.uses_init else None
        self.init_c = Linear(D, L * H, dtype=dtype, rng=rng) if c.uses_init and c.cell == "lstm" else None
        self.inject = Linear(D, c.inject_size, dtype=dtype, rng=rng) if c.uses_inject else None
        self._cache = None

    def _to_state(self, z):
        """(B, L*H) -> (L, B, H): one block of H per layer."""
        B = z.shape[0]
        return z.reshape(B, self.config.num_layers, self.config.hidden_size).transpose(1, 0, 2)

    def _from_state(self, d):
        """(L, B, H) -> (B, L*H), the inverse of ``_to_state``."""
        return d.transpose(1, 0, 2).reshape(d.shape[1], -1)

    def forward(self, x):
        R = self.num_regions
        check_float_input(x, "image features", 3 if R > 1 else getattr(x, "ndim", 2), self.feature_size, self.dtype)
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[1] != R):
            F = self.feature_size
            want = f"(B, {R}, {F})" if R > 1 else f"(B, {F}) or (B, 1, {F})"
            raise ValueError(f"image features have shape {tuple(x.shape)}; expected {want}")
        xp = self.xp
        hidden = xp.tanh(self.hidden(x)) if self.hidden is not None else x
        f = hidden.reshape(x.shape[0], -1)
        state, p = None, None
        if self.init_h is not None:
            state = self._to_state(self.init_h(f))
            if self.init_c is not None:
                state = (state, self._to_state(self.init_c(f)))
        if self.inject is not None:
            p = self.inject(f)
        self._cache = hidden
        return state, p

    def backward(self, dstate=None, dp=None):
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        hidden = self._cache
        self._cache = None
        df = 0.0
        if self.init_h is not None and dstate is not None:
            dh0, dc0 = dstate if self.init_c is not None else (dstate, None)
            df = df + self.init_h.backward(self._from_state(dh0))
            if self.init_c is not None and dc0 is not None:
                df = df + self.init_c.backward(self._from_state(dc0))
        if self.inject is not None and dp is not None:
            df = df + self.inject.backward(dp)
        if isinstance(df, float):  # no gradient reached the encoder
            df = self.xp.zeros((hidden.shape[0], self.init_h.in_features if self.init_h is not None
                                else self.inject.in_features), dtype=hidden.dtype)
        df = df.reshape(hidden.shape)
        if self.hidden is None:
            return df
        return self.hidden.backward(df * (1 - hidden * hidden))


class Captioner(Model):
    """Image features -> caption, with an RNN/LSTM/GRU decoder over word embeddings.

    Captioner(config, feature_size, vocab_size, pad_id=0, sos_id=1, eos_id=2,
    max_caption_len=16, vocab=None, num_regions=1, dtype=None, seed=0). Images come as
    features (B, feature_size), or with ``num_regions`` = R > 1 as region features
    (B, R, feature_size). ``vocab`` (any JSON-able form of the vocabulary) and
    ``max_caption_len`` (the default decoding limit) go into checkpoints.
    """

    config_class = CaptionerConfig

    def __init__(self, config: CaptionerConfig, feature_size: int, vocab_size: int, pad_id: int = 0,
                 sos_id: int = 1, eos_id: int = 2, max_caption_len: int = 16, vocab: dict | None = None,
                 num_regions: int = 1, dtype=None, seed: int = 0, rng=None):
        super().__init__(config)
        if feature_size < 1 or vocab_size < 2:
            raise ValueError(f"feature_size {feature_size}, vocab_size {vocab_size}; expected >= 1 and >= 2")
        for name, value in (("pad_id", pad_id), ("sos_id", sos_id), ("eos_id", eos_id)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"{name} {value!r}; expected an id in [0, {vocab_size - 1}]")
        if max_caption_len < 1 or num_regions < 1:
            raise ValueError(f"max_caption_len {max_caption_len!r}, num_regions {num_regions!r}; expected >= 1")
        self.feature_size, self.vocab_size, self.num_regions = int(feature_size), int(vocab_size), int(num_regions)
        self.pad_id, self.sos_id, self.eos_id = int(pad_id), int(sos_id), int(eos_id)
        self.max_caption_len, self.vocab = int(max_caption_len), vocab
        self.rng = rng if rng is not None else backend.default_rng(seed)
        c = config
        E, H, L = c.embedding_dim, c.hidden_size, c.num_layers
        P = c.inject_size if c.uses_inject else 0
        self.encoder = ImageEncoder(c, feature_size, num_regions, dtype=dtype, rng=self.rng)
        self.embedding = Embedding(vocab_size, E, padding_idx=pad_id, dtype=dtype, rng=self.rng,
                                   init_std=c.embedding_init_std)
        self.decoder = RECURRENT[c.cell](E + P, H, num_layers=L, dtype=dtype, rng=self.rng)
        self.dropout = Dropout(c.dropout, rng=self.rng)
        self.output = Linear(H, vocab_size, dtype=dtype, rng=self.rng)
        self.criterion = SoftmaxCrossEntropy()
        # one-step views of the decoder's layers for decoding; kept in a dict so they are not
        # children (their parameters are the decoder's, bound on every use)
        self._step_cells = {"cells": [CELLS[c.cell](E + P if k == 0 else H, H, rng=np.random.default_rng(0))
                                      for k in range(L)]}
        self._cache = None
        self.last_logits = None

    def extra_state(self) -> dict:
        return {"feature_size": self.feature_size, "vocab_size": self.vocab_size, "pad_id": self.pad_id,
                "sos_id": self.sos_id, "eos_id": self.eos_id, "max_caption_len": self.max_caption_len,
                "vocab": self.vocab, "num_regions": self.num_regions}

    # -- teacher-forced forward and backward ------------------------------------------
    def forward(self, features, captions, mask=None):
        """Logits (B, T, V) of every caption word given the previous ones (teacher forcing).

        features (B, F) or (B, R, F) float; captions (B, T) int, without ``<sos>``, ``<eos>`` last; the
        decoder reads ``<sos>, captions[:, :-1]``. ``mask`` is accepted for symmetry with
        :meth:`loss`: padded steps come after the last valid one, so they cannot change
        the logits of valid steps.
        """
        xp = self.xp
        features, captions = xp.asarray(features), xp.asarray(captions)
        if captions.ndim != 2 or captions.shape[0] != features.shape[0] or captions.shape[1] < 1:
            raise ValueError(f"captions have shape {tuple(captions.shape)}; expected (B, T) with "
                             f"B = {features.shape[0]} (the features' batch) and T >= 1")
        state0, p = self.encoder(features)
        B, T = captions.shape
        sos = xp.full((B, 1), self.sos_id, dtype=captions.dtype)
        x = self.embedding(xp.concatenate([sos, captions[:, :-1]], axis=1))
        if p is not None:
            x = xp.concatenate([x, xp.broadcast_to(p[:, None, :], (B, T, p.shape[1]))], axis=2)
        h, _ = self.decoder(x, state=state0)
        self._cache = True
        return self.output(self.dropout(h))

    def loss(self, features, captions, mask=None) -> float:
        """Mean cross-entropy over valid caption tokens (training forward; caches for ``backward()``)."""
        logits = self.forward(features, captions, mask)
        self.last_logits = logits
        xp = self.xp
        return self.criterion.forward(logits, xp.asarray(captions), mask=None if mask is None else xp.asarray(mask))

    def backward(self, dlogits=None):
        """Back through the last forward; returns the gradient of the features (their shape).

        dlogits (B, T, V); None: the gradient of the last :meth:`loss`.
        """
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        self._cache = None
        if dlogits is None:
            dlogits = self.criterion.backward()
        dh = self.dropout.backward(self.output.backward(dlogits))
        dx = self.decoder.backward(dh)
        E = self.config.embedding_dim
        self.embedding.backward(dx[:, :, :E])
        dp = dx[:, :, E:].sum(axis=1) if self.config.uses_inject else None
        dstate0 = self.decoder.dstate0 if self.config.uses_init else None
        return self.encoder.backward(dstate0, dp)

    # -- decoding ---------------------------------------------------------------------
    def _cells(self):
        """The decoder's one-step cells, bound to its current parameter and gradient arrays."""
        cells = self._step_cells["cells"]
        for k, cell in enumerate(cells):
            for short in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                full = f"{short}_l{k}"
                if full in self.decoder.params:
                    cell.params[short], cell.grads[short] = self.decoder.params[full], self.decoder.grads[full]
        return cells

    def init_decoding(self, features):
        """The decoding state of images ``features`` (B, F) or (B, R, F), batch on axis 0:
        (h (B, L, H), c (B, L, H) or None, p (B, P) or None)."""
        xp, c = self.xp, self.config
        features = xp.asarray(features)
        state0, p = self.encoder(features)
        self.encoder._cache = None
        B, L, H = features.shape[0], c.num_layers, c.hidden_size
        if state0 is None:
            h = xp.zeros((B, L, H), dtype=self.dtype)
            cstate = xp.zeros_like(h) if c.cell == "lstm" else None
        elif c.cell == "lstm":
            h, cstate = state0[0].transpose(1, 0, 2).copy(), state0[1].transpose(1, 0, 2).copy()
        else:
            h, cstate = state0.transpose(1, 0, 2).copy(), None
        return h, cstate, p

    def step(self, tokens, state):
        """One decoding step (a :mod:`rnnkit.decoding` step function).

        tokens (K,) int, the previous words; state = (h (K, L, H), c (K, L, H) or None,
        p (K, P) or None). Returns (log_probs (K, V), new state).
        """
        xp = self.xp
        h, cstate, p = state
        x = self.embedding.params["weight"][xp.asarray(tokens)]
        if p is not None:
            x = xp.concatenate([x, p], axis=1)
        new_h, new_c = xp.empty_like(h), None if cstate is None else xp.empty_like(cstate)
        for k, cell in enumerate(self._cells()):
            s = cell(x, (h[:, k], cstate[:, k]) if cstate is not None else h[:, k])
            cell.reset_cache()
            if cstate is not None:
                new_h[:, k], new_c[:, k] = s
            else:
                new_h[:, k] = s
            x = new_h[:, k]
        logits = x @ self.output.params["weight"].T + self.output.params["bias"]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        return log_probs, (new_h, new_c, p)

    def greedy_decode(self, features, max_len: int | None = None) -> list[Hypothesis]:
        """The most probable word at every step, for images ``features`` (B, ...): one Hypothesis each."""
        def run():
            state = self.init_decoding(features)
            return greedy_search(self.step, state, self.sos_id, self.eos_id, max_len or self.max_caption_len,
                                 batch_size=state[0].shape[0])
        with self.evaluating():
            return run()

    def beam_decode(self, features, beam_size: int = 5, max_len: int | None = None, length_penalty: float = 1.0,
                    n_best: int | None = None) -> list[list[Hypothesis]]:
        """Beam search with length normalisation (``score / length ** length_penalty``);
        per image the ``n_best`` (default ``beam_size``) hypotheses, best first."""
        def run():
            state = self.init_decoding(features)
            return beam_search(self.step, state, self.sos_id, self.eos_id, beam_size,
                               max_len or self.max_caption_len, length_penalty=length_penalty,
                               n_best=n_best, batch_size=state[0].shape[0])
        with self.evaluating():
            return run()

    def sample_decode(self, features, temperature: float = 1.0, max_len: int | None = None,
                      rng=None) -> list[Hypothesis]:
        """Captions sampled word by word from ``softmax(logits / temperature)``, one per image.

        ``score`` is the sum of the model's (untempered) log-probabilities of the drawn words.
        """
        if not temperature > 0:
            raise ValueError(f"temperature {temperature!r}; expected > 0")
        rng = rng if rng is not None else self.rng
        max_len = max_len or self.max_caption_len

        def run():
            state = self.init_decoding(features)
            B = state[0].shape[0]
            tokens = np.full(B, self.sos_id, dtype=np.int64)
            words, scores = [[] for _ in range(B)], np.zeros(B)
            done = np.zeros(B, dtype=bool)
            for _ in range(max_len):
                log_probs, state = self.step(tokens, state)
                log_probs = backend.to_numpy(log_probs).astype(np.float64)
                z = log_probs / temperature
                probs = np.exp(z - z.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
                u = rng.random((B, 1))
                tokens = np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), probs.shape[1] - 1)
                for b in np.flatnonzero(~done):
                    scores[b] += log_probs[b, tokens[b]]
                    if tokens[b] == self.eos_id:
                        done[b] = True
                    else:
                        words[b].append(int(tokens[b]))
                if done.all():
                    break
            return [Hypothesis(words[b], float(scores[b]), float(scores[b]) / max(len(words[b]) + done[b], 1),
                               bool(done[b])) for b in range(B)]
        with self.evaluating():
            return run()


__all__ = ["CaptionerConfig", "Captioner", "ImageEncoder"]
