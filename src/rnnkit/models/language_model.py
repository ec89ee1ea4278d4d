"""Recurrent language model: embedding -> RNN/LSTM/GRU -> affine -> softmax cross-entropy.

    e_t = E[w_t]                      (B, T, E)  embedding (``encoder``), dropout
    h_t = RNN(e_t, h_{t-1})           (B, T, H)  stateful: carried across TBPTT chunks
    z_t = h_t W_dec^T + b_dec         (B, T, V)  ``decoder`` (tied: W_dec = E)
    L   = mean_t -log softmax(z_t)[w_{t+1}]

Attribute names follow PyTorch's word_language_model example (``encoder``, ``rnn``,
``decoder``), so its state_dicts map 1:1 (see ``rnnkit.interop``).

Tied weights (``tie_weights=True``, Press & Wolf 2017): the decoder's weight *is* the
embedding matrix, one array with one gradient buffer into which both uses accumulate
(``dE = dE_embedding + dW_decoder``). ``named_parameters()``/``state_dict()`` yield it once,
as ``encoder.weight``, so the optimizer steps it once and a checkpoint stores it once;
``load_state_dict`` also accepts PyTorch's state_dict, which lists it twice
(``encoder.weight`` and ``decoder.weight``), after checking that the two are equal.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..layers import GRU, LSTM, RNN, Dropout, Embedding, Linear, SoftmaxCrossEntropy, linear_cross_entropy
from ..layers.recurrent import init_normal, init_uniform
from .base import Model

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
INIT_HELP = ("uniform: embedding and output U(-init_range, init_range), recurrent weights U(-1/sqrt(H), 1/sqrt(H)) "
             "(Zaremba et al., PyTorch's example) | normal: every weight matrix N(0, 1/fan_in), embedding N(0, 0.01^2), "
             "biases 0 (Deep Learning from Scratch 2)")


def _time_major(a, name: str, ids):
    """targets or mask (B, T), checked against ids (B, T) and handed on as (T, B) (a view)."""
    if a is None:
        return None
    if getattr(a, "shape", None) is None or tuple(a.shape) != tuple(ids.shape):
        raise ValueError(f"{name} have shape {getattr(a, 'shape', None)}; expected {tuple(ids.shape)}, as ids")
    return a.T


@dataclass
class LanguageModelArchitecture:
    """The network's shape: shared by :class:`LanguageModelConfig` and the ``lm`` task's config."""

    cell: str = field(default="lstm", metadata={"help": "rnn | lstm | gru"})
    nonlinearity: str = field(default="tanh", metadata={"help": "tanh | relu (vanilla rnn only)"})
    embedding_size: int = field(default=128, metadata={"help": "embedding width E"})
    hidden_size: int = field(default=256, metadata={"help": "recurrent state width H"})
    num_layers: int = field(default=1, metadata={"help": "stacked recurrent layers"})
    dropout: float = field(default=0.0, metadata={"help": "dropout between recurrent layers"})
    embedding_dropout: float = field(default=0.0, metadata={"help": "dropout on the embeddings"})
    output_dropout: float = field(default=0.0, metadata={"help": "dropout on the last recurrent layer's output"})
    tie_weights: bool = field(default=False, metadata={"help": "share the embedding and output matrices (E == H)"})
    init: str = field(default="uniform", metadata={"help": INIT_HELP})
    init_range: float = field(default=0.1, metadata={"help": "uniform init: U(-r, r) for embedding and output weights "
                                                             "(0: the layers' defaults)"})
    bias_hh: bool = field(default=True, metadata={
        "help": "PyTorch's second recurrent bias b_hh; --no-bias-hh keeps one bias, as Deep Learning from "
                "Scratch 2 and Keras do (rnn, lstm; under SGD two biases learn their sum twice as fast)"})

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r}; expected one of {sorted(CELLS)}")
        if not self.bias_hh and self.cell == "gru":
            raise ValueError("bias_hh=False with cell 'gru'; the GRU's b_hn cannot merge into b_ih "
                             "(one bias is for rnn and lstm)")
        if self.init not in ("uniform", "normal"):
            raise ValueError(f"init {self.init!r}; expected 'uniform' or 'normal'")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ValueError(f"tie_weights needs embedding_size == hidden_size; got {self.embedding_size} "
                             f"and {self.hidden_size}")
        for name in ("dropout", "embedding_dropout", "output_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} {getattr(self, name)}; expected 0 <= p < 1")


@dataclass
class LanguageModelConfig(LanguageModelArchitecture):
    vocab_size: int = field(default=0, metadata={"help": "number of tokens V (set from the vocabulary)"})
    level: str = field(default="char", metadata={"help": "char | word"})

    def __post_init__(self):
        super().__post_init__()
        if self.level not in ("char", "word"):
            raise ValueError(f"level {self.level!r}; expected 'char' or 'word'")


class LanguageModel(Model):
    """Character- or word-level recurrent language model (see the module docstring).

    ``forward(ids (B, T)) -> logits (B, T, V)`` carries the recurrent state between calls
    (truncated BPTT: gradients stop at the chunk edge); ``reset_state()`` forgets it.
    """

    config_class = LanguageModelConfig

    def __init__(self, config: LanguageModelConfig, vocab: dict | None = None, seed: int = 0, dtype=None):
        super().__init__(config)
        if config.vocab_size < 1:
            raise ValueError(f"vocab_size {config.vocab_size}; expected >= 1")
        if vocab is not None and len(vocab.get("itos", [])) != config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocab.get('itos', []))} tokens; config says vocab_size "
                             f"{config.vocab_size}")
        self.vocab = vocab
        rng = backend.default_rng(seed)
        c, V = config, config.vocab_size
        self.encoder = Embedding(V, c.embedding_size, dtype=dtype, rng=rng)
        self.embedding_drop = Dropout(c.embedding_dropout, rng=rng)
        extra = {"nonlinearity": c.nonlinearity} if c.cell == "rnn" else {}
        self.rnn = CELLS[c.cell](c.embedding_size, c.hidden_size, num_layers=c.num_layers, dropout=c.dropout,
                                 stateful=True, dtype=dtype, rng=rng, bias_hh=c.bias_hh, **extra)
        self.output_drop = Dropout(c.output_dropout, rng=rng)
        self.decoder = Linear(c.hidden_size, V, dtype=dtype, rng=rng)
        self._initialise(rng)
        self._tie()
        self.criterion = SoftmaxCrossEntropy()
        self.last_logits = None
        self._embedded = False  # the last _features went through rnn.forward_embedded

    def _initialise(self, rng) -> None:
        """Language-model initialisations (see ``LanguageModelConfig.init``); the layers' own are PyTorch's."""
        c, xp = self.config, self.xp
        encoder, decoder = self.encoder.params, self.decoder.params
        # drawn block by block in the weights' dtype (init_uniform/init_normal): the values of
        # one float64 draw, without a float64 copy of a (V, E) matrix at build time
        if c.init == "uniform" and c.init_range:
            r = c.init_range
            for value in (encoder["weight"], decoder["weight"]):
                value[...] = xp.asarray(init_uniform(rng, value.shape, r, value.dtype))
            decoder["bias"][...] = 0
        elif c.init == "normal":
            weight = encoder["weight"]
            weight[...] = xp.asarray(init_normal(rng, weight.shape, 0.01, weight.dtype))
            for layer, name in [(self.rnn, n) for n in self.rnn.params] + [(self.decoder, "weight"), (self.decoder, "bias")]:
                value = layer.params[name]
                fan_in = value.shape[1] if value.ndim == 2 else 0
                value[...] = xp.asarray(init_normal(rng, value.shape, fan_in ** -0.5, value.dtype)) if fan_in else 0

    def _tie(self) -> None:
        """Point the decoder's weight (and its gradient) at the embedding's: one array, two uses."""
        if self.config.tie_weights:
            self.decoder.params["weight"] = self.encoder.params["weight"]
            self.decoder.grads["weight"] = self.encoder.grads["weight"]

    def _on_to(self, dtype, device) -> None:
        self._tie()

    def extra_state(self) -> dict:
        return {"vocab": self.vocab} if self.vocab is not None else {}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """As Layer's; with tied weights a ``decoder.weight`` entry (PyTorch saves both) must equal the embedding."""
        if self.config.tie_weights and "decoder.weight" in state:
            state = dict(state)
            dec = np.asarray(backend.to_numpy(state.pop("decoder.weight")))
            enc = state.get("encoder.weight")
            if enc is not None and not np.array_equal(dec, backend.to_numpy(enc)):
                raise ValueError("tie_weights=True but decoder.weight differs from encoder.weight")
        super().load_state_dict(state, strict)

    # -- state ---------------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the state carried between ``forward`` calls (next call starts from zeros)."""
        self.rnn.reset_state()

    def carried_state(self) -> dict:
        """The carried state as named arrays (``h`` (L, B, H), LSTM also ``c``); {} if none.

        The trainer stores it in mid-epoch checkpoints so a resumed run continues each
        stream from where it stopped.
        """
        state = self.rnn.state
        if state is None:
            return {}
        return {"h": state[0], "c": state[1]} if isinstance(state, tuple) else {"h": state}

    def set_carried_state(self, arrays: dict) -> None:
        """Inverse of :meth:`carried_state`."""
        if not arrays:
            self.rnn.reset_state()
            return
        xp, dtype = self.xp, self.encoder.params["weight"].dtype
        h = xp.asarray(arrays["h"], dtype=dtype)
        self.rnn._state = (h, xp.asarray(arrays["c"], dtype=dtype)) if "c" in arrays else h

    # -- forward / backward --------------------------------------------------------------------
    def _features(self, ids, time_major: bool = False):
        """ids (B, T) -> the decoder's input (B, T, H) ((T, B, H) with ``time_major``, the stack's
        own layout, no transposes): embedding, recurrent stack, dropouts."""
        if getattr(ids, "ndim", 0) != 2:
            raise ValueError(f"ids have shape {getattr(ids, 'shape', None)}; expected (B, T) token ids")
        if self.embedding_drop.p and self.training:
            self._embedded = False
            h, _ = self.rnn(self.embedding_drop(self.encoder(ids.T if time_major else ids)), time_major=time_major)
        else:  # the embedding straight into the stack: a small vocabulary's lookup goes through W_ih unmade
            self._embedded = True
            h, _ = self.rnn.forward_embedded(self.encoder, ids, time_major=time_major)
        return self.output_drop(h)

    def forward(self, ids):
        """ids (B, T) int -> logits (B, T, V); the recurrent state carries over from the last call."""
        self.last_logits = self.decoder(self._features(ids))
        return self.last_logits

    def loss(self, ids, targets, mask=None) -> float:
        """Mean next-token cross-entropy (nats per token) of ``targets`` (B, T) given ``ids`` (B, T)."""
        return self.criterion.forward(self.forward(ids), targets, mask)

    def backward(self, dloss: float = 1.0) -> None:
        """BPTT through the last ``loss`` call; gradients accumulate into ``grads``."""
        dlogits = self.criterion.backward(dloss)
        self._backward_features(self.decoder.backward(dlogits))

    def _backward_features(self, dh) -> None:
        dx = self.rnn.backward(self.output_drop.backward(dh))
        if not self._embedded:  # forward_embedded's backward has accumulated the embedding's gradient
            self.encoder.backward(self.embedding_drop.backward(dx))

    def loss_and_backward(self, ids, targets, mask=None, dloss: float = 1.0) -> float:
        """``loss(ids, targets, mask)`` and then ``backward(dloss)``, without the (B, T, V) logits.

        The decoder and the softmax cross-entropy run block by block of rows, each block's
        gradients taken before the next (:func:`rnnkit.layers.linear_cross_entropy`), so a
        big vocabulary's logits and softmax never take memory at once. The same loss and
        gradients as the two calls, to float32 rounding; ``last_logits`` is left None. The
        ``lm`` task trains with this.
        """
        self.last_logits = None
        # time-major (T, B, H) features skip two transposes (the loss is a sum over tokens, any
        # order); not under the embedding or output dropout, whose masks are drawn in the
        # features' shape: loss() then backward() draw them batch-first, and this must equal them
        time_major = not (self.training and (self.embedding_drop.p or self.output_drop.p))
        h = self._features(ids, time_major=time_major)
        if time_major:
            targets, mask = _time_major(targets, "targets", ids), _time_major(mask, "mask", ids)
        result = linear_cross_entropy(self.decoder, h, targets, mask, ignore_index=self.criterion.ignore_index,
                                      dloss=dloss)
        self._backward_features(result.dx)
        return result.loss

    # -- inference -----------------------------------------------------------------------------
    def predict(self, ids, state=None):
        """Logits and final state for ``ids`` (B, T) from ``state`` (None: zeros), in eval mode.

        Leaves the training carry (``rnn.state``) untouched. Returns (logits (B, T, V), state).
        """
        with self._inference():
            h, state = self._eval_features(ids, state)
            return self.decoder.forward(h), state

    def predict_loss(self, ids, targets, state=None, mask=None):
        """Mean next-token loss of ``targets`` given ``ids`` (B, T) from ``state``, in eval mode,
        without the (B, T, V) logits (``linear_cross_entropy(grad=False)``, block by block).

        Leaves the training carry untouched (see :meth:`predict`). Returns (loss, count, state).
        """
        with self._inference():
            h, state = self._eval_features(ids, state)
            result = linear_cross_entropy(self.decoder, h, targets, mask, ignore_index=self.criterion.ignore_index,
                                          grad=False)
            return result.loss, result.count, state

    def _inference(self):
        """``evaluating()``, unless one is open already (then the mode and caches are its job)."""
        return self.evaluating() if not self._eval_blocks else contextlib.nullcontext()

    def _eval_features(self, ids, state):
        carried = self.rnn._state
        self.rnn._state = None  # state=None means zeros here, not the training carry
        try:
            return self.rnn.forward_embedded(self.encoder, ids, state)
        finally:  # the inference caches go now: a long generation does not keep them
            self.rnn._state, self.rnn._cache, self.rnn._embedding = carried, None, None

    def step(self, ids, state=None):
        """One token per stream: ``ids`` (B,) -> (logits (B, V), state) from ``state`` (None: zeros).

        For generation: feed each prediction back in with the returned state. Eval mode;
        the training carry is left untouched (see :meth:`predict`).
        """
        ids = self.xp.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids have shape {ids.shape}; expected (B,) token ids, one per stream")
        logits, state = self.predict(ids[:, None], state)
        return logits[:, 0], state
