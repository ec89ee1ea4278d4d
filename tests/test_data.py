"""rnnkit.data: vocabularies, text files, corpora, batching, task loaders; real files give the
counts their READMEs state. Real data comes from $RNNKIT_DATA or the checkout's sibling
shared/data folder; tests that need it skip when it is absent."""
from __future__ import annotations

import datetime
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rnnkit.data import (Scaler, TBPTTBatcher, Vocab, bundled_text, detokenize, encode_labels, fixed_split,
                         load_corpus, load_labelled_file, load_rt_polarity, load_seq2seq_file, load_series_csv,
                         load_sms_spam, make_addition_problems, make_date_problems, make_windows, minibatches,
                         pad_batch, read_text, rolling_origin_folds, shared_data_dir, split_contiguous,
                         tokenize, train_val_test_split_series)


def _shared_data() -> Path | None:
    candidates = [os.environ.get("RNNKIT_DATA"), Path(__file__).resolve().parents[1].parent / "shared" / "data"]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), None)


def data_path(*parts: str) -> Path:
    """A path under the shared data folder, or skip the test when it is absent."""
    root = _shared_data()
    if root is None or not root.joinpath(*parts).exists():
        pytest.skip(f"shared data {'/'.join(parts)} not available (set RNNKIT_DATA)")
    return root.joinpath(*parts)


# ---- Vocab -------------------------------------------------------------------------------
def test_vocab_build_orders_by_frequency_then_first_appearance():
    v = Vocab.build("b a c a b d".split())  # a:2, b:2 (b first), c:1, d:1 (c first)
    assert v.itos == ("<unk>", "b", "a", "c", "d")
    assert v.stoi["a"] == 2 and len(v) == 5 and "c" in v and "z" not in v
    assert v.unk_id == 0 and v.pad_id is None and v.eos_id is None and v.sos_id is None


def test_vocab_min_freq_max_size_and_specials():
    tokens = "x x x y y z <unk>".split()
    assert Vocab.build(tokens, min_freq=2).itos == ("<unk>", "x", "y")
    assert Vocab.build(tokens, max_size=2).itos == ("<unk>", "x")  # max_size counts the specials
    v = Vocab.build(tokens, specials=("<pad>", "<sos>", "<eos>", "<unk>"))
    assert (v.pad_id, v.sos_id, v.eos_id, v.unk_id) == (0, 1, 2, 3) and len(v) == 7
    with pytest.raises(ValueError, match="max_size 1; expected None or an integer >= 2"):
        Vocab.build(tokens, max_size=1, specials=("<pad>", "<unk>"))
    with pytest.raises(ValueError, match="min_freq 0"):
        Vocab.build(tokens, min_freq=0)


def test_vocab_encode_decode_and_errors():
    v = Vocab.build("the cat sat".split())
    ids = v.encode("the dog sat".split())
    assert ids.dtype == np.int64 and ids.tolist() == [1, 0, 3]
    assert v.decode(ids) == ["the", "<unk>", "sat"]
    assert v.decode(np.array([[1, 2]])) == ["the", "cat"] and v.decode([]) == []
    with pytest.raises(ValueError, match="id 4 out of range; expected 0 <= id < 4"):
        v.decode([1, 4])
    with pytest.raises(ValueError, match="id -1 out of range"):
        v.decode([-1])
    with pytest.raises(ValueError, match="dtype float64; expected integers"):
        v.decode([1.0])
    no_unk = Vocab.build("the cat".split(), specials=())
    with pytest.raises(ValueError, match="token 'dog' is not in the vocabulary"):
        no_unk.encode(["cat", "dog"])


def test_vocab_dict_and_file_round_trip(tmp_path):
    v = Vocab.build(list("héllo wörld\n"), specials=("<pad>", "<unk>"))
    d = json.loads(json.dumps(v.to_dict()))
    assert Vocab.from_dict(d) == v
    v.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == v
    assert list(tmp_path.iterdir()) == [tmp_path / "vocab.json"]  # no temp file left behind


@pytest.mark.parametrize("bad, message", [
    ({"itos": ["a", "b", "a"]}, "duplicate token 'a' at ids 0 and 2"),
    ({"itos": ["a", 3]}, "token 3 at id 1 is a int; expected str"),
    ({"itos": "ab"}, "'itos' of type str; expected a list"),
    ({"itos": []}, "empty vocabulary"),
    ({"itos": ["a"], "extra": 1}, "unknown vocabulary keys \\['extra'\\]"),
    ({"tokens": ["a"]}, "unknown vocabulary keys"),
    ({}, "no 'itos'"),
    (["a", "b"], "vocabulary data of type list"),
    ({"itos": ["a"], "version": 2}, "vocabulary version 2; expected 1"),
])
def test_vocab_from_dict_rejects_bad_data(bad, message):
    with pytest.raises(ValueError, match=message):
        Vocab.from_dict(bad)


def test_vocab_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no vocabulary file"):
        Vocab.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        Vocab.load(tmp_path / "bad.json")


# ---- text --------------------------------------------------------------------------------
def test_tokenize_word_follows_ptb_convention():
    assert tokenize(" a b \n c \n", "word") == ["a", "b", "<eos>", "c", "<eos>"]
    assert tokenize("a  b\nc", "word") == ["a", "b", "<eos>", "c"]
    assert detokenize(["a", "b", "<eos>", "c", "<eos>"], "word") == "a b\nc\n"
    assert tokenize("ab\n", "char") == ["a", "b", "\n"] and detokenize(["a", "\n"], "char") == "a\n"
    with pytest.raises(ValueError, match="level 'bpe'; expected 'char' or 'word'"):
        tokenize("a", "bpe")


def test_read_text_reads_plain_gz_crlf_and_bom(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffline one\r\nzwei – drei\r\n".encode("utf-8"))
    assert read_text(tmp_path / "a.txt") == "line one\nzwei – drei\n"
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress("gzipped ✓\n".encode("utf-8")))
    assert read_text(tmp_path / "b.txt.gz") == "gzipped ✓\n"


def test_read_text_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "bin.dat").write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(ValueError, match="looks binary \\(NUL byte at offset 3\\)"):
        read_text(tmp_path / "bin.dat")
    (tmp_path / "latin1.txt").write_bytes("café ok".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8: byte 0xe9 at offset 3"):
        read_text(tmp_path / "latin1.txt")
    (tmp_path / "fake.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(ValueError, match="not valid gzip"):
        read_text(tmp_path / "fake.gz")
    (tmp_path / "empty.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(ValueError, match="is empty"):
        read_text(tmp_path / "empty.gz")
    with pytest.raises(ValueError, match="not a regular file"):
        read_text(tmp_path)


def test_bundled_tiny_shakespeare_matches_its_readme():
    text = bundled_text()
    assert len(text) == 1_115_394 and text.count("\n") == 40_000 and len(set(text)) == 65
    shared = _shared_data()
    if shared is not None and (shared / "tinyshakespeare" / "input.txt").is_file():
        assert read_text(shared / "tinyshakespeare" / "input.txt") == text
    with pytest.raises(ValueError, match="bundled corpus 'wikitext'; expected one of"):
        bundled_text("wikitext")


def test_load_corpus_tiny_shakespeare_is_a_contiguous_90_10_char_split():
    corpus = load_corpus("tinyshakespeare")
    assert corpus.level == "char" and corpus.test is None
    assert (len(corpus.train), len(corpus.valid)) == (1_003_854, 111_540)
    assert len(corpus.vocab) == 66 and corpus.vocab.unk_id == 0  # 65 characters + <unk>
    text = "".join(corpus.vocab.decode(corpus.train)) + "".join(corpus.vocab.decode(corpus.valid))
    assert text == bundled_text()


def test_load_corpus_from_a_file_builds_the_vocab_on_train_only(tmp_path):
    (tmp_path / "tiny.txt").write_text("aaaaabbbbbccccdddxyz", encoding="utf-8")
    corpus = load_corpus(tmp_path / "tiny.txt", split=(0.5, 0.25, 0.25))
    assert corpus.vocab.itos == ("<unk>", "a", "b")
    assert corpus.train.tolist() == [1] * 5 + [2] * 5
    assert corpus.valid.tolist() == [0] * 5 and corpus.test.tolist() == [0] * 5
    with pytest.raises(ValueError, match="sums to 1.1; expected 1"):
        load_corpus(tmp_path / "tiny.txt", split=(0.9, 0.2))
    with pytest.raises(ValueError, match="expected 2 or 3 fractions"):
        load_corpus(tmp_path / "tiny.txt", split=(1.0,))
    with pytest.raises(ValueError, match="N=20 tokens leaves an empty piece"):
        load_corpus(tmp_path / "tiny.txt", split=(0.96, 0.02, 0.02))


def test_load_corpus_word_level_file(tmp_path):
    (tmp_path / "w.txt").write_text("a b a\nb c\n" * 9 + "a z\n", encoding="utf-8")
    corpus = load_corpus(tmp_path / "w.txt", level="word", split=(0.9, 0.1))
    assert corpus.vocab.itos[:2] == ("<unk>", "<eos>") and "z" not in corpus.vocab
    assert corpus.vocab.decode(corpus.valid)[-3:] == ["a", "<unk>", "<eos>"]


def test_ptb_gives_the_10000_word_vocabulary_and_readme_counts():
    ptb_dir = data_path("ptb")
    corpus = load_corpus("ptb", data_dir=ptb_dir)
    assert corpus.level == "word" and len(corpus.vocab) == 10_000
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    eos = corpus.vocab.eos_id
    assert [int((part == eos).sum()) for part in (corpus.train, corpus.valid, corpus.test)] == [42_068, 3_370, 3_761]
    assert corpus.vocab.unk_id == 0 and int((corpus.train == 0).sum()) > 0  # PTB's own <unk> tokens
    assert load_corpus("ptb", data_dir=ptb_dir.parent).vocab == corpus.vocab  # the data root works too


def test_ptb_needs_its_files(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNKIT_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="ptb needs data_dir="):
        load_corpus("ptb")
    with pytest.raises(FileNotFoundError, match="no ptb.train.txt"):
        load_corpus("ptb", data_dir=tmp_path)
    with pytest.raises(ValueError, match="ptb has fixed train/valid/test files"):
        load_corpus("ptb", split=(0.8, 0.2), data_dir=tmp_path)


def test_shared_data_dir_reads_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="RNNKIT_DATA=.*missing.* is not a folder"):  # not read as unset
        shared_data_dir()
    monkeypatch.delenv("RNNKIT_DATA")
    assert shared_data_dir() is None


def test_split_contiguous_bounds():
    assert [len(p) for p in split_contiguous(list(range(10)), (0.9, 0.1))] == [9, 1]
    assert [len(p) for p in split_contiguous(list(range(10)), (0.8, 0.1, 0.1))] == [8, 1, 1]
    assert [len(p) for p in split_contiguous(list(range(10)), (0.95, 0.05, 0.0))] == [9, 1, 0]


# ---- batching ----------------------------------------------------------------------------
def test_tbptt_streams_small_example():
    batcher = TBPTTBatcher(np.arange(11), batch_size=2, bptt=3)  # n = 5 per stream, id 10 left over
    chunks = list(batcher)
    assert len(batcher) == len(chunks) == 2 and batcher.num_tokens == 10
    np.testing.assert_array_equal(chunks[0][0], [[0, 1, 2], [5, 6, 7]])
    np.testing.assert_array_equal(chunks[0][1], [[1, 2, 3], [6, 7, 8]])
    np.testing.assert_array_equal(chunks[1][0], [[3, 4], [8, 9]])
    np.testing.assert_array_equal(chunks[1][1], [[4, 5], [9, 10]])
    assert chunks[0][0].dtype == np.int64 and chunks[0][0].flags.c_contiguous
    assert [c[0].tolist() for c in batcher] == [c[0].tolist() for c in chunks]  # re-iterable


def test_tbptt_on_real_corpus_uses_every_token_once():
    corpus = load_corpus("tinyshakespeare")
    batcher = TBPTTBatcher(corpus.valid, batch_size=16, bptt=35)
    x = np.concatenate([c[0] for c in batcher], axis=1)
    y = np.concatenate([c[1] for c in batcher], axis=1)
    n = (len(corpus.valid) - 1) // 16
    np.testing.assert_array_equal(x.reshape(-1), corpus.valid[:16 * n])
    np.testing.assert_array_equal(y.reshape(-1), corpus.valid[1:16 * n + 1])


def test_tbptt_errors():
    with pytest.raises(ValueError, match="corpus of N=4 tokens is too short for batch_size B=4: need N >= B \\+ 1"):
        TBPTTBatcher(np.arange(4), batch_size=4, bptt=2)
    with pytest.raises(ValueError, match="bptt 0; expected an integer >= 1"):
        TBPTTBatcher(np.arange(40), batch_size=4, bptt=0)
    with pytest.raises(ValueError, match="expected a 1-D integer array"):
        TBPTTBatcher(np.zeros((4, 10), dtype=np.int64), batch_size=2, bptt=2)


def test_pad_batch_masks_exactly_the_valid_steps():
    ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 0, 0], [9, 10, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    assert ids.dtype == np.int64 and mask.dtype == bool
    ids, mask = pad_batch([np.array([1, 2, 3, 4]), [5]], pad_id=-1, max_len=3)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [5, -1, -1]])
    assert pad_batch([[1]], pad_id=0, max_len=4)[0].shape == (1, 4)
    with pytest.raises(ValueError, match="sequence 1 has length 0; need T >= 1"):
        pad_batch([[1], []], pad_id=0)
    with pytest.raises(ValueError, match="no sequences; need B >= 1"):
        pad_batch([], pad_id=0)


def test_minibatches():
    batches = list(minibatches(10, 4, rng=0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert [b.tolist() for b in minibatches(10, 4, rng=0)] == [b.tolist() for b in batches]
    assert [b.tolist() for b in minibatches(5, 2, shuffle=False, drop_last=True)] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="n_items 3 < batch_size 4 with drop_last=True"):
        minibatches(3, 4, drop_last=True)


# ---- seq2seq tasks -----------------------------------------------------------------------
_DATE_FORMATS = ("%B %d, %Y", "%b %d, %Y", "%A, %B %d, %Y", "%m/%d/%y")


def _parse_date(text: str) -> str:
    for fmt in _DATE_FORMATS:  # strptime matches month and day names case-insensitively
        try:
            return datetime.datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            pass
    raise AssertionError(f"{text!r} is in none of the date formats")


def test_addition_file_matches_readme():
    pairs = load_seq2seq_file(data_path("dl2-addition", "addition.txt"))
    assert len(pairs) == 50_000 and len(set(pairs)) == 50_000 and pairs[0] == ("16+75", "91")
    assert all(int(a) + int(b) == int(ans) for (a, b), ans in ((q.split("+"), ans) for q, ans in pairs))
    assert max(len(q) for q, _ in pairs) == 7 and max(len(a) for _, a in pairs) == 4


def test_generated_addition_problems_are_correct_and_fit_the_format():
    problems = make_addition_problems(2000, rng=0)
    assert problems == make_addition_problems(2000, rng=np.random.default_rng(0))
    for question, answer in problems:
        a, b = question.split("+")
        assert int(a) + int(b) == int(answer) and len(question) <= 7 and len(answer) <= 4
        assert str(int(a)) == a and str(int(b)) == b  # no leading zeros
    assert {len(q.split("+")[0]) for q, _ in problems} == {1, 2, 3}
    assert all(len(q) <= 11 for q, _ in make_addition_problems(50, max_digits=5, rng=1))


def test_date_file_matches_readme_and_the_generator_formats():
    pairs = load_seq2seq_file(data_path("dl2-date", "date.txt"))
    assert len(pairs) == 50_000 and len(set(pairs)) == 41_578
    assert pairs[0] == ("september 27, 1994", "1994-09-27")
    assert max(len(q) for q, _ in pairs) == 29
    for question, answer in pairs[::25]:
        assert _parse_date(question) == answer
    file_chars = {ch for q, a in pairs for ch in q + a}
    generated = make_date_problems(3000, rng=0)
    assert {ch for q, a in generated for ch in q + a} <= file_chars  # a model on the file's vocab reads them


def test_generated_date_problems_are_correct():
    problems = make_date_problems(1000, rng=3, start="1999-12-25", end="2000-01-05")
    for question, answer in problems:
        assert _parse_date(question) == answer and "1999-12-25" <= answer <= "2000-01-05"
    assert any(q.isupper() for q, _ in problems) and any(q.islower() for q, _ in problems)  # cases vary


def test_seq2seq_file_errors_and_spacing(tmp_path):
    (tmp_path / "s.txt").write_text("1 + 2  _3   \nab_cd\n\n", encoding="utf-8")
    assert load_seq2seq_file(tmp_path / "s.txt") == [("1 + 2", "3"), ("ab", "cd")]
    (tmp_path / "bad.txt").write_text("1+1_2\n3+4 7\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 of .* has no separator '_'"):
        load_seq2seq_file(tmp_path / "bad.txt")
    (tmp_path / "empty_answer.txt").write_text("1+1_   \n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 of .* has an empty answer"):
        load_seq2seq_file(tmp_path / "empty_answer.txt")


# ---- classification tasks ----------------------------------------------------------------
def test_rt_polarity_counts():
    texts, labels = load_rt_polarity(data_path("rt-polarity"))
    assert len(texts) == 10_662 and labels.count("pos") == labels.count("neg") == 5_331
    assert texts[0].startswith("the rock is destined") and not texts[0].endswith(" ")
    assert load_rt_polarity(data_path("rt-polarity").parent)[0] == texts


def test_sms_spam_counts():
    texts, labels = load_sms_spam(data_path("sms-spam-collection", "SMSSpamCollection"))
    assert len(texts) == 5_574 and labels.count("ham") == 4_827 and labels.count("spam") == 747
    assert texts[0].startswith("Go until jurong point")
    ids, names = encode_labels(labels)
    assert names == ["ham", "spam"] and int(ids.sum()) == 747


def test_labelled_files(tmp_path):
    (tmp_path / "a.tsv").write_text("label\ttext\npos\tgood film\nneg\tbad,\tsad\n\n", encoding="utf-8")
    assert load_labelled_file(tmp_path / "a.tsv") == (["good film", "bad,\tsad"], ["pos", "neg"])
    (tmp_path / "b.csv").write_text('id,text,label\n1,"hello, world",x\n2,bye,y\n', encoding="utf-8")
    assert load_labelled_file(tmp_path / "b.csv") == (["hello, world", "bye"], ["x", "y"])
    (tmp_path / "c.csv").write_text("sentence,label\nhi,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has columns \\['sentence', 'label'\\]; expected 'text' and 'label'"):
        load_labelled_file(tmp_path / "c.csv")
    (tmp_path / "d.txt").write_text("pos\tok\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 of .* is not 'label<TAB>text'"):
        load_labelled_file(tmp_path / "d.txt")
    (tmp_path / "e.txt").write_text("ham\thi\nspam!\tbuy\n", encoding="utf-8")
    with pytest.raises(ValueError, match="label 'spam!' at index 1 is not one of \\['ham', 'spam'\\]"):
        load_sms_spam(tmp_path / "e.txt")


def test_encode_labels():
    ids, names = encode_labels(["b", "a", "b"])
    assert names == ["a", "b"] and ids.tolist() == [1, 0, 1] and ids.dtype == np.int64
    assert encode_labels(["b"], label_names=["b", "a"])[0].tolist() == [0]
    with pytest.raises(ValueError, match="label 'c' at index 0 is not one of \\['a', 'b'\\]"):
        encode_labels(["c"], label_names=["a", "b"])
    with pytest.raises(ValueError, match="duplicate label name 'a'"):
        encode_labels(["a"], label_names=["a", "a"])


def test_fixed_split_is_a_reproducible_partition():
    train, valid, test = fixed_split(10, (0.8, 0.1, 0.1), seed=1)
    assert (len(train), len(valid), len(test)) == (8, 1, 1)
    assert sorted(np.concatenate([train, valid, test]).tolist()) == list(range(10))
    assert [p.tolist() for p in fixed_split(10, (0.8, 0.1, 0.1), seed=1)] == [train.tolist(), valid.tolist(),
                                                                             test.tolist()]
    with pytest.raises(ValueError, match="fractions \\(0.5, 0.6\\); expected one or more values >= 0 summing to 1"):
        fixed_split(10, (0.5, 0.6))


# ---- time series -------------------------------------------------------------------------
def test_air_passengers_matches_readme():
    dates, values = load_series_csv(data_path("air-passengers", "AirPassengers.csv"))
    assert values.shape == (144,) and values.dtype == np.float64 and values.sum() == 40_363
    assert (str(dates[0]), values[0], str(dates[-1]), values[-1]) == ("1949-01-01", 112, "1960-12-01", 432)
    assert load_series_csv(data_path("air-passengers", "AirPassengers.csv"), column="value")[1].shape == (144,)


@pytest.mark.parametrize("name, rows, shape, first", [
    ("sunspots.csv", 309, (309,), 1700),
    ("nile.csv", 100, (100,), 1871),
    ("elnino.csv", 61, (61, 12), 1950),
])
def test_statsmodels_series_match_readme(name, rows, shape, first):
    index, values = load_series_csv(data_path("statsmodels-ts", name))
    assert len(index) == rows and values.shape == shape and index[0] == first and index.dtype == np.int64
    assert not np.isnan(values).any()


def test_co2_missing_values():
    path = data_path("statsmodels-ts", "co2.csv")
    dates, values = load_series_csv(path)
    assert values.shape == (2_284,) and int(np.isnan(values).sum()) == 59
    assert str(dates[0]) == "1958-03-29" and str(dates[-1]) == "2001-12-29"
    assert load_series_csv(path, missing="drop")[1].shape == (2_225,)
    filled = load_series_csv(path, missing="interpolate")[1]
    assert not np.isnan(filled).any() and np.allclose(filled[~np.isnan(values)], values[~np.isnan(values)])


def test_series_csv_errors(tmp_path):
    (tmp_path / "s.csv").write_text("t,a,b\n1,1.5,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2, column 'b' of .* is 'x'; expected a number"):
        load_series_csv(tmp_path / "s.csv")
    assert load_series_csv(tmp_path / "s.csv", column="a")[1].tolist() == [1.5]
    with pytest.raises(ValueError, match="column 'c' not in .*; expected one of \\['a', 'b'\\]"):
        load_series_csv(tmp_path / "s.csv", column="c")


def test_make_windows_small_example():
    X, Y = make_windows(np.arange(6.0), input_len=3, horizon=2)
    assert X.shape == (2, 3, 1) and Y.shape == (2, 2, 1)
    np.testing.assert_array_equal(X[:, :, 0], [[0, 1, 2], [1, 2, 3]])
    np.testing.assert_array_equal(Y[:, :, 0], [[3, 4], [4, 5]])
    X, Y = make_windows(np.arange(20.0).reshape(10, 2), input_len=2, horizon=1, stride=3)
    assert X.shape == (3, 2, 2) and Y[1, 0].tolist() == [10.0, 11.0]
    with pytest.raises(ValueError, match="length T=4 is shorter than input_len \\+ horizon = 5"):
        make_windows(np.arange(4.0), input_len=3, horizon=2)
    with pytest.raises(ValueError, match="series has NaN at step 1"):
        make_windows(np.array([0.0, np.nan, 1.0]), input_len=1)


def test_series_split_and_scaler():
    series = np.arange(100.0)
    train, val, test = train_val_test_split_series(series, val_size=12, test_size=0.1)
    assert (len(train), len(val), len(test)) == (78, 12, 10) and test[-1] == 99
    _, val, test = train_val_test_split_series(series, val_size=12, test_size=10, overlap=5)
    assert val[0] == 73 and test[0] == 85 and len(test) == 15
    assert len(train_val_test_split_series(series, val_size=0, test_size=10, overlap=5)[1]) == 0
    with pytest.raises(ValueError, match="leave no training steps of T=100"):
        train_val_test_split_series(series, val_size=50, test_size=50)

    scaler = Scaler().fit(train)
    z = scaler.transform(series)
    assert abs(z[:78].mean()) < 1e-12 and abs(z[:78].std() - 1) < 1e-12
    np.testing.assert_allclose(scaler.inverse_transform(z), series)
    restored = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_allclose(restored.transform(series), z)
    wide = Scaler().fit(np.stack([np.arange(5.0), np.ones(5)], axis=1))
    assert wide.transform(np.ones((2, 3, 2)))[..., 1].tolist() == [[0, 0, 0], [0, 0, 0]]  # constant: std 1
    with pytest.raises(ValueError, match="expected a last axis of 2 features"):
        wide.transform(np.ones((4, 3)))
    with pytest.raises(RuntimeError, match="before fit"):
        Scaler().transform(series)


def test_series_rolling_origin_folds_are_consecutive_expanding_and_end_at_the_validation_part():
    folds = rolling_origin_folds(85, 15, 4)
    assert folds == [(25, 40), (40, 55), (55, 70), (70, 85)]  # the Nile scheme; the last fold = 70 | 15
    for (train_end, val_end), (next_train_end, _) in zip(folds, folds[1:]):
        assert val_end - train_end == 15 and next_train_end == val_end  # disjoint, consecutive blocks
    assert rolling_origin_folds(120, 24, 1) == [(96, 120)]
    assert rolling_origin_folds(120, 24, 3, min_train=48) == [(48, 72), (72, 96), (96, 120)]
    with pytest.raises(ValueError, match="leave 24 training steps to the first fold; need at least 48 "
                                         "\\(at most 3 folds\\)"):
        rolling_origin_folds(120, 24, 4, min_train=48)
    with pytest.raises(ValueError, match="n_folds 0; expected an integer >= 1"):
        rolling_origin_folds(120, 24, 0)


# ----------------------------------------------------------------------------- RingBatcher
def test_ring_batcher_reads_the_ring_on_across_epochs():
    from rnnkit.data import RingBatcher

    ids = np.arange(103)  # L = 102 (input, target) pairs; B = 4 streams start at 0, 25, 50, 75
    ring = RingBatcher(ids, batch_size=4, bptt=5)
    assert len(ring) == 102 // 20 == 5 and ring.num_tokens == 100
    first = list(ring.epoch(0))
    assert all(x.shape == (4, 5) for x, _ in first)
    np.testing.assert_array_equal(first[0][0][:, 0], [0, 25, 50, 75])
    for x, y in first:
        np.testing.assert_array_equal(y, (x + 1))  # the next token (ids are positions here)
    # each row continues exactly where it stopped, across the epoch edge too, wrapping at L
    rows = np.concatenate([x for e in range(3) for x, _ in ring.epoch(e)], axis=1)
    for b in range(4):
        np.testing.assert_array_equal(rows[b], (25 * b + np.arange(rows.shape[1])) % 102)
    # epoch 1's row b starts where epoch 0's row b stopped: in what was row b + 1's part
    second = next(iter(ring.epoch(1)))[0]
    np.testing.assert_array_equal(second[:, 0], (np.array([0, 25, 50, 75]) + 25) % 102)
    np.testing.assert_array_equal(list(ring)[0][0], first[0][0])  # iter() is epoch 0


def test_ring_batcher_chunk_edges_move_when_an_epoch_is_not_whole_streams():
    from rnnkit.data import RingBatcher

    ring = RingBatcher(np.arange(930), batch_size=4, bptt=7)  # L = 929: streams of 232, epochs of 33 x 7 = 231
    starts = [next(iter(ring.epoch(e)))[0][0, 0] for e in range(3)]
    assert starts == [0, 231, 462]  # stream 0 reads on; relative to its stream length (232) the edge moves by 1
    with pytest.raises(ValueError, match="too short"):
        RingBatcher(np.arange(20), batch_size=4, bptt=5)
    with pytest.raises(ValueError, match="1-D integer"):
        RingBatcher(np.zeros((3, 3), dtype=int), batch_size=1, bptt=1)


def test_tbptt_batcher_epochs_are_all_the_same_chunks():
    batcher = TBPTTBatcher(np.arange(50), batch_size=3, bptt=4)
    for (x0, y0), (x5, y5) in zip(batcher, batcher.epoch(5), strict=True):
        np.testing.assert_array_equal(x0, x5)
        np.testing.assert_array_equal(y0, y5)
