"""Text generation: feed each prediction back in.

Sampling rules act on one row of logits ``z`` (V,):

- greedy:       ``argmax z``
- temperature:  sample from ``softmax(z / tau)`` (tau < 1 sharper, > 1 flatter)
- top-k:        keep the k largest logits, renormalise, sample (k = 1 is greedy)
- top-p:        keep the smallest set of most likely tokens whose probability reaches p
                (nucleus sampling, Holtzman et al. 2020), renormalise, sample
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import backend
from .data.text import detokenize, tokenize
from .data.vocab import Vocab


def sample_next(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, greedy: bool = False) -> int:
    """Pick the next token id from ``logits`` (V,) by the rule the arguments select."""
    z = np.asarray(backend.to_numpy(logits), dtype=np.float64).reshape(-1)
    if greedy or top_k == 1:
        return int(np.argmax(z))
    if not temperature > 0:
        raise ValueError(f"temperature {temperature}; expected > 0 (use greedy=True for argmax)")
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"top_k {top_k}, top_p {top_p}; expected top_k >= 0 and 0 < top_p <= 1")
    z = z / temperature
    if 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]  # smallest prefix reaching top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[keep] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def encode_prime(vocab: Vocab, prime: str, level: str) -> np.ndarray:
    """Token ids of the prime text; unknown tokens map to ``<unk>`` when the vocabulary has it.

    Without ``<unk>`` an unknown token is a ValueError naming every unknown one.
    """
    tokens = tokenize(prime, level)
    if not tokens:
        raise ValueError("prime text is empty; need at least one token to start from")
    unknown = sorted({t for t in tokens if t not in vocab})
    if unknown and vocab.unk_id is None:
        raise ValueError(f"prime contains tokens not in the vocabulary: {unknown[:10]!r}; expected only "
                         f"tokens the model was trained on")
    return vocab.encode(tokens)


def generate(model, prime: str, num_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False, seed: int | None = None) -> Iterator[str]:
    """Stream ``num_tokens`` generated tokens (as text pieces) from a LanguageModel.

    The prime is read in one forward pass; then each sampled token is fed back in, one
    step at a time, carrying the recurrent state. Word-level pieces come with a leading
    space (``<eos>`` becomes a newline) so ``"".join`` reads naturally.
    """
    if num_tokens < 0:
        raise ValueError(f"num_tokens {num_tokens}; expected >= 0")
    vocab = Vocab.from_dict(model.vocab)
    level = model.config.level
    rng = np.random.default_rng(seed)
    ids = encode_prime(vocab, prime, level)
    xp = model.xp
    logits, state = model.predict(xp.asarray(ids[None, :]))
    last = logits[0, -1]
    for _ in range(num_tokens):
        token = sample_next(last, rng, temperature, top_k, top_p, greedy)
        piece = vocab.itos[token]
        if level == "word":
            yield "\n" if piece == "<eos>" else " " + piece
        else:
            yield detokenize([piece], "char")
        logits, state = model.predict(xp.asarray([[token]]), state)
        last = logits[0, -1]
