"""Properties of rnnkit.data that must hold for every input (hypothesis)."""
from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.data import (Scaler, TBPTTBatcher, Vocab, decode_text, detokenize, fixed_split, make_windows,
                         minibatches, pad_batch, split_contiguous, tokenize)

fast = settings(max_examples=60, deadline=None)

words = st.text(alphabet=st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=6)
token_lists = st.lists(st.one_of(words, st.sampled_from(["<unk>", "<eos>", "a", "b"])), min_size=1, max_size=60)


@fast
@given(token_lists, st.integers(1, 3), st.none() | st.integers(2, 20))
def test_vocab_build_order_and_round_trips(tokens, min_freq, max_size):
    vocab = Vocab.build(tokens, min_freq=min_freq, max_size=max_size, specials=("<pad>", "<unk>"))
    assert vocab.itos[:2] == ("<pad>", "<unk>") and len(set(vocab.itos)) == len(vocab)
    counts = {t: tokens.count(t) for t in vocab.itos[2:]}
    first = {t: tokens.index(t) for t in vocab.itos[2:]}
    ranks = [(-counts[t], first[t]) for t in vocab.itos[2:]]
    assert ranks == sorted(ranks) and all(c >= min_freq for c in counts.values())
    known = [t for t in tokens if t in vocab]
    assert vocab.decode(vocab.encode(known)) == known
    assert all(t in vocab or i == vocab.unk_id for t, i in zip(tokens, vocab.encode(tokens)))
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    assert Vocab.build(list(tokens), min_freq=min_freq, max_size=max_size, specials=("<pad>", "<unk>")) == vocab


@fast
@given(st.integers(2, 400), st.integers(1, 9), st.integers(1, 50))
def test_tbptt_uses_each_input_once_with_next_token_targets(n_tokens, batch_size, bptt):
    if n_tokens < batch_size + 1:
        return
    ids = np.arange(n_tokens) * 7 % 1009  # distinct values, so each token is identified by its value
    batcher = TBPTTBatcher(ids, batch_size, bptt)
    chunks = list(batcher)
    stream_len = (n_tokens - 1) // batch_size
    assert len(chunks) == len(batcher) == -(-stream_len // bptt)
    assert all(x.shape == y.shape == (batch_size, bptt) for x, y in chunks[:-1])
    assert 1 <= chunks[-1][0].shape[1] <= bptt
    rows_x = np.concatenate([x for x, _ in chunks], axis=1)
    rows_y = np.concatenate([y for _, y in chunks], axis=1)
    used = batch_size * stream_len
    assert sorted(rows_x.reshape(-1).tolist()) == sorted(ids[:used].tolist())  # each once; the rest unused
    position = {int(v): i for i, v in enumerate(ids)}
    for b in range(batch_size):  # row b is one contiguous stream, continued from chunk to chunk
        starts = [position[int(v)] for v in rows_x[b]]
        assert starts == list(range(b * stream_len, (b + 1) * stream_len))
        assert [position[int(v)] for v in rows_y[b]] == [s + 1 for s in starts]


@fast
@given(st.lists(st.lists(st.integers(0, 99), min_size=1, max_size=12), min_size=1, max_size=8),
       st.none() | st.integers(1, 15))
def test_pad_batch_mask_covers_exactly_the_valid_steps(sequences, max_len):
    ids, mask = pad_batch(sequences, pad_id=-7, max_len=max_len)
    kept = [s[:max_len] if max_len else s for s in sequences]
    assert ids.shape == mask.shape == (len(sequences), max_len or max(map(len, sequences)))
    assert mask.sum(axis=1).tolist() == [len(s) for s in kept]
    assert ids[mask].tolist() == [v for s in kept for v in s]
    assert (ids[~mask] == -7).all()
    assert all(mask[b, :len(s)].all() for b, s in enumerate(kept))  # valid steps come first


@fast
@given(st.integers(1, 200), st.integers(1, 50), st.booleans(), st.integers(0, 3))
def test_minibatches_cover_every_item_once(n_items, batch_size, drop_last, seed):
    if drop_last and n_items < batch_size:
        return
    batches = list(minibatches(n_items, batch_size, rng=seed, drop_last=drop_last))
    flat = np.concatenate(batches).tolist()
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(n_items))
    assert len(flat) == (n_items - n_items % batch_size if drop_last else n_items)
    assert all(len(b) == batch_size for b in batches[:-1]) and batches[0].dtype == np.int64


@fast
@given(st.lists(st.one_of(words, st.just("<eos>")), max_size=40))
def test_word_tokens_survive_detokenize_tokenize(tokens):
    assert tokenize(detokenize(tokens, "word"), "word") == tokens


@fast
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),  # no lone surrogates:
               min_size=1, max_size=200))  # they have no UTF-8 encoding
def test_char_text_round_trips_and_decodes(text):
    assert detokenize(tokenize(text, "char"), "char") == text
    expected = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if expected:  # a lone BOM is rejected as empty
        assert decode_text(text.encode("utf-8")) == expected


@fast
@given(st.integers(1, 300), st.sampled_from([(0.9, 0.1), (0.8, 0.1, 0.1), (0.5, 0.5), (0.7, 0.2, 0.1)]))
def test_splits_are_partitions(n, fractions):
    items = list(range(n))
    try:
        pieces = split_contiguous(items, fractions)
    except ValueError as err:  # only when a piece would be empty
        assert "leaves an empty piece" in str(err) and n < 20
    else:
        assert sum(pieces, []) == items and all(pieces)
    parts = fixed_split(n, fractions, seed=n)
    assert sorted(np.concatenate(parts).tolist()) == items
    assert [len(p) for p in parts] == [len(p) for p in fixed_split(n, fractions, seed=n + 1)]


@fast
@given(st.integers(2, 60), st.integers(1, 3), st.integers(1, 10), st.integers(1, 5), st.integers(1, 4))
def test_windows_are_the_right_slices(length, features, input_len, horizon, stride):
    if length < input_len + horizon:
        return
    series = np.arange(length * features, dtype=np.float64).reshape(length, features)
    X, Y = make_windows(series, input_len, horizon, stride)
    assert len(X) == len(Y) == (length - input_len - horizon) // stride + 1
    for i in range(len(X)):
        s = i * stride
        np.testing.assert_array_equal(X[i], series[s:s + input_len])
        np.testing.assert_array_equal(Y[i], series[s + input_len:s + input_len + horizon])


@fast
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=50), st.floats(-1e3, 1e3))
def test_scaler_inverse_undoes_transform(values, shift):
    x = np.array(values)
    scaler = Scaler().fit(x)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(x + shift)), x + shift, rtol=1e-9, atol=1e-6)
