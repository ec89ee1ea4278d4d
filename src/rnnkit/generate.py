"""Text generation from a language model: feed each prediction back in.

The sampling rules are pure functions of one row of logits ``z`` (V,):

- greedy:       ``argmax z``
- temperature:  sample from ``softmax(z / tau)`` (tau < 1 sharper, tau > 1 flatter)
- top-k:        keep the k largest logits, renormalise, sample (k = 1 is greedy)
- top-p:        keep the smallest set of most likely tokens whose probability reaches p
                (nucleus sampling, Holtzman et al. 2020), renormalise, sample

They compose in that order (temperature, then top-k, then top-p), as in most libraries.
Randomness comes only from the ``numpy.random.Generator`` passed in, so a seed fixes the text.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

from . import backend
from .data.text import tokenize
from .data.vocab import Vocab


# --------------------------------------------------------------------------- rules on logits (V,)
def _row(logits) -> np.ndarray:
    z = np.asarray(backend.to_numpy(logits), dtype=np.float64)
    if z.ndim != 1 or z.size == 0:
        raise ValueError(f"logits of shape {z.shape}; expected one row (V,) with V >= 1")
    return z


def _checked_row(logits) -> np.ndarray:
    """A model's logits row, refused if it holds NaN or +inf or nothing finite (-inf: a token
    the model rules out). A model whose weights went NaN would otherwise "generate" silently."""
    z = _row(logits)
    if np.isfinite(z.max()):  # one pass: the max is NaN with any NaN, +inf with any +inf, -inf if all are
        return z
    bad = np.isnan(z) | (z == np.inf)
    if bad.any():
        raise ValueError(f"logits hold {int(bad.sum())} NaN/+inf value(s) (first at token {int(np.argmax(bad))}); "
                         "expected finite logits (-inf allowed)")
    if not np.isfinite(z).any():
        raise ValueError("logits are all -inf; expected at least one token with a finite logit")
    return z


def greedy(logits) -> int:
    """The most likely token: ``argmax z`` (the first one on ties)."""
    return int(np.argmax(_checked_row(logits)))


_argmax = greedy  # sample_next's ``greedy`` flag shadows the name


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """``z / tau``; tau must be > 0 (use :func:`greedy` for the tau -> 0 limit)."""
    if not temperature > 0:
        raise ValueError(f"temperature {temperature}; expected > 0 (use greedy for argmax)")
    return _row(logits) / temperature


def top_k_filter(logits, k: int) -> np.ndarray:
    """Logits with all but the ``k`` largest set to -inf (k = 0 or k >= V: unchanged; ties kept)."""
    z = _row(logits)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"top_k {k!r}; expected an integer k >= 0 (0: off)")
    if 0 < k < z.size:
        kth = np.partition(z, -k)[-k]
        z = np.where(z >= kth, z, -np.inf)
    return z


def softmax(logits) -> np.ndarray:
    """Probabilities ``exp(z - max z) / sum``; -inf logits get probability 0."""
    z = _row(logits)
    p = np.exp(z - z.max())
    return p / p.sum()


def top_p_filter(logits, p: float) -> np.ndarray:
    """Logits outside the nucleus set to -inf: the nucleus is the smallest set of most likely
    tokens whose total probability is >= p (p = 1: unchanged)."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p {p}; expected 0 < p <= 1")
    z = _row(logits)
    if p >= 1.0:
        return z
    probs = softmax(z)
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    # 1e-9 of slack: [0.5, 0.2, 0.2, 0.1] sums to 0.8999999999999999 after three, which must count as 0.9
    keep = order[: min(int(np.searchsorted(cumulative, p - 1e-9)), len(order) - 1) + 1]
    out = np.full_like(z, -np.inf)
    out[keep] = z[keep]
    return out


def sample_next(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, greedy: bool = False) -> int:
    """The next token id from ``logits`` (V,) by the rule the arguments select (module docstring)."""
    logits = _checked_row(logits)
    if greedy or top_k == 1:
        return _argmax(logits)
    z = top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)
    probs = softmax(z)
    return int(rng.choice(probs.size, p=probs))


# --------------------------------------------------------------------------- the loop
def encode_prime(vocab: Vocab, prime: str, level: str) -> np.ndarray:
    """Token ids (N,) of the prime text.

    Tokens the vocabulary lacks map to ``<unk>`` when it has one (with a warning naming
    them); without ``<unk>`` they are a ValueError naming every unknown token.
    """
    tokens = tokenize(prime, level)
    if not tokens:
        raise ValueError(f"prime text {prime!r} has no {level} tokens; need at least one to start from")
    unknown = sorted({t for t in tokens if t not in vocab})
    if unknown and vocab.unk_id is None:
        raise ValueError(f"prime contains tokens not in the vocabulary: {unknown[:20]!r}; expected only "
                         f"tokens the model was trained on")
    if unknown:
        warnings.warn(f"prime tokens not in the vocabulary, read as <unk>: {unknown[:20]!r}", stacklevel=3)
    return vocab.encode(tokens)


def generate(model, prime: str, num_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False, seed: int | None = None) -> Iterator[str]:
    """Stream ``num_tokens`` generated tokens, as text pieces, from a :class:`LanguageModel`.

    The prime is read in one forward pass from a zero state; then each sampled token is
    fed back in with ``model.step``, carrying the recurrent state. Pieces are yielded as
    they are produced. Word level: a word comes with a leading space (none at a line's
    start) and ``<eos>`` becomes a newline, so ``prime + "".join(pieces)`` reads naturally. The same ``seed``
    (and model) gives the same text; the model's training carry is left untouched. While the
    generator runs, the model is in eval mode (``model.evaluating()``); its own mode comes back
    when the generator finishes or is closed.
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens {num_tokens}; expected >= 0")
    # check the rule's arguments before any work (a bad value should not wait for a forward)
    if not greedy and top_k != 1:
        top_p_filter(top_k_filter(apply_temperature(np.zeros(1), temperature), top_k), top_p)
    if model.vocab is None:
        raise ValueError("the model has no vocabulary; it cannot read a prime or write text")
    vocab, level = Vocab.from_dict(model.vocab), model.config.level
    rng = np.random.default_rng(seed)
    ids = encode_prime(vocab, prime, level)
    with model.evaluating():  # eval mode once for the whole loop, the model's own mode after
        logits, state = model.predict(model.xp.asarray(ids[None, :]))
        last = logits[0, -1]
        line_start = prime.endswith(("\n", " "))  # word level: no space before a line's first word
        for _ in range(num_tokens):
            token = sample_next(last, rng, temperature, top_k, top_p, greedy)
            piece = vocab.itos[token]
            if level == "word":
                piece = "\n" if piece == "<eos>" else (piece if line_start else " " + piece)
                line_start = piece == "\n"
            yield piece
            step_logits, state = model.step(np.array([token]), state)
            last = step_logits[0]
