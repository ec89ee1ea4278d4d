"""Seq2Seq: float64 gradient checks of every variant, stepwise BPTT == full-sequence BPTT,
padding invariance, beam search (beam 1 == greedy, exhaustive on a tiny chain), and that it
learns a real task (a subset of the DL2 date set) in seconds."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import rnnkit
from rnnkit.decoding import beam_search, greedy_search
from rnnkit.layers import Layer
from rnnkit.models.base import Model
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig

F64 = np.float64
V, B, S, T = 7, 3, 5, 4
ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    return Path(os.environ.get("RNNKIT_DATA") or ROOT.parent / "shared" / "data")


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(3, V, (B, S))
    tgt = rng.integers(3, V, (B, T))
    src_mask = np.ones((B, S), dtype=bool)
    src_mask[1, 3:] = src_mask[2, 2:] = False
    src[~src_mask] = 0
    tgt_mask = np.ones((B, T), dtype=bool)
    tgt_mask[0, 2:] = False
    tgt[~tgt_mask] = 0
    return src, tgt, src_mask, tgt_mask


def _model(cell="lstm", dtype=F64, seed=1, **kw):
    kw.setdefault("embedding_init_std", 1.0)
    config = Seq2SeqConfig(cell=cell, embedding_dim=3, hidden_size=4, **kw)
    return Seq2Seq(config, V, dtype=dtype, seed=seed)


VARIANTS = {
    "plain": {},
    "peeky": {"peeky": True},
    "dot": {"attention": "dot"},
    "additive": {"attention": "additive", "attention_size": 5},
    "reversed": {"reverse_source": True, "attention": "dot"},
    "sampling-argmax": {"teacher_forcing_ratio": 0.5, "attention": "additive", "peeky": True},
    "sampling-sample": {"teacher_forcing_ratio": 0.3, "feedback": "sample", "attention": "dot"},
    "two-layers": {"num_layers": 2, "peeky": True, "teacher_forcing_ratio": 0.5},
}
CASES = [("lstm", v) for v in VARIANTS] + [(c, v) for c in ("rnn", "gru")
                                           for v in ("plain", "additive", "sampling-argmax", "two-layers")]


@pytest.mark.parametrize("cell,variant", CASES, ids=[f"{c}-{v}" for c, v in CASES])
def test_gradcheck(cell, variant):
    """Logits projected on a random direction; every parameter, fixed seed for the coin flips."""
    src, tgt, src_mask, _ = _batch()
    tgt[tgt == 0] = 3  # no <pad> fed to the decoder: its embedding row rightly gets no gradient
    model = _model(cell, **VARIANTS[variant])
    # eps 1e-5: the additive-attention gradients are small, and round-off dominates at 1e-6
    report = rnnkit.gradcheck(model, (src, tgt), forward_kwargs={"src_mask": src_mask}, eps=1e-5)
    assert report.passed(1e-6), str(report)
    assert len(report.errors) == len(list(model.named_parameters()))


class _Loss(Layer):
    """The training loss as a layer, for the gradient check of the masked loss path."""

    def __init__(self, model, tgt_mask):
        super().__init__()
        self.model, self.tgt_mask = model, tgt_mask

    def forward(self, src, tgt, src_mask):
        return self.model.loss(src, tgt, src_mask, self.tgt_mask)

    def backward(self, dloss):
        self.model.backward(self.model.criterion.backward(dloss))


def test_gradcheck_masked_loss():
    src, tgt, src_mask, tgt_mask = _batch(1)
    report = rnnkit.gradcheck(_Loss(_model("gru", attention="dot", peeky=True), tgt_mask), (src, tgt, src_mask))
    assert report.passed(1e-6), str(report)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepwise_bptt_equals_full_sequence(cell):
    """Scheduled sampling whose coins all say 'truth' runs the stepped cells; same loss and grads."""
    src, tgt, src_mask, tgt_mask = _batch(2)
    kw = dict(attention="additive", peeky=True, num_layers=2)
    full, stepped = _model(cell, **kw), _model(cell, teacher_forcing_ratio=1 - 1e-12, **kw)
    losses = [m.loss(src, tgt, src_mask, tgt_mask) for m in (full, stepped)]
    assert stepped._cache[0] and not full._cache[0]  # the step-by-step path really ran
    for m in (full, stepped):
        m.backward()
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    grads = {n: g for n, _, g in full.named_parameters()}
    for name, _, g in stepped.named_parameters():
        np.testing.assert_allclose(g, grads[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("variant", ["plain", "peeky", "dot", "additive", "reversed"])
def test_padding_changes_nothing(variant):
    """A padded batch gives each example exactly its unpadded logits, decodings and attention."""
    src, tgt, src_mask, _ = _batch(3)
    model = _model("lstm", **VARIANTS[variant]).eval()
    src[~src_mask] = 5  # whatever sits in the padding must not matter
    logits = model.forward(src, tgt, src_mask)
    greedy = model.greedy_decode(src, src_mask, max_len=6)
    for b in range(B):
        n = int(src_mask[b].sum())
        alone = model.forward(src[b:b + 1, :n], tgt[b:b + 1])
        np.testing.assert_allclose(logits[b:b + 1], alone, rtol=1e-12, atol=1e-12)
        hyp = model.greedy_decode(src[b:b + 1, :n], max_len=6)[0]
        assert hyp.tokens == greedy[b].tokens and hyp.score == pytest.approx(greedy[b].score, rel=1e-12)
        if model.attention is not None:
            np.testing.assert_allclose(greedy[b].aux[:, :n], hyp.aux, rtol=1e-12, atol=1e-12)
            assert np.all(greedy[b].aux[:, n:] == 0.0)


def test_last_attention_is_by_original_source_position_as_decoding_reports():
    """With a reversed source, the training forward's weights come back in the source's own order."""
    src, tgt, src_mask, _ = _batch()
    model = _model(attention="dot", reverse_source=True).eval()
    model.forward(src, tgt, src_mask)
    _, _, first = model.decode_step(np.full(B, model.sos_id), model._decode_setup(src, src_mask)[0])
    np.testing.assert_allclose(model.last_attention[:, 0], first, atol=1e-12)  # both read <sos> first
    assert not np.allclose(first[1], first[1, ::-1])  # the order is visible


@pytest.mark.parametrize("variant", ["plain", "peeky", "additive", "reversed"])
def test_beam_size_one_equals_greedy(variant):
    src, _, src_mask, _ = _batch(4)
    model = _model("gru", dtype=np.float32, **VARIANTS[variant])
    greedy = model.greedy_decode(src, src_mask, max_len=8)
    beams = model.beam_decode(src, src_mask, beam_size=1, max_len=8)
    for g, (b,) in zip(greedy, beams):
        assert (b.tokens, b.finished) == (g.tokens, g.finished)
        assert b.score == pytest.approx(g.score, rel=1e-6)
        if g.aux is not None:
            np.testing.assert_array_equal(b.aux, g.aux)


def _chain(V=4, seed=0):
    """A fixed random Markov chain as a step function; state = the step count per row."""
    table = np.log(np.random.default_rng(seed).dirichlet(np.ones(V) * 0.7, size=V))

    def step(tokens, state):
        return table[tokens], state + 1, np.eye(V)[tokens]

    return table, step


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_is_exhaustive_when_the_beam_holds_everything(length_penalty):
    """eos = 0, sos = 3; a beam wider than the number of live sequences must find the best one."""
    table, step = _chain()
    max_len, eos, sos = 4, 0, 3
    best, best_seq = -np.inf, None
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(4), repeat=n):
            if eos in seq[:-1] or (seq[-1] != eos and n < max_len):
                continue  # a hypothesis ends with <eos>, or runs to max_len unfinished
            score = sum(table[a, b] for a, b in zip((sos,) + seq[:-1], seq))
            norm = score / n ** length_penalty
            if norm > best:
                best, best_seq = norm, seq
    (top, *_), = beam_search(step, np.zeros(1), sos, eos, beam_size=64, max_len=max_len,
                             length_penalty=length_penalty)
    found = tuple(top.tokens) + ((eos,) if top.finished else ())
    assert found == best_seq and top.normalized_score == pytest.approx(best)
    # aux rows follow their hypothesis: one-hot of the token fed at each step
    fed = (sos,) + found[:-1]
    np.testing.assert_array_equal(top.aux.argmax(1), fed)


def test_search_results_are_consistent():
    table, step = _chain(V=6, seed=1)
    state = np.zeros(5)
    greedy = greedy_search(step, state, 5, 0, max_len=6)
    beams = beam_search(step, state, 5, 0, beam_size=3, max_len=6)
    assert all(len(b) == 3 for b in beams)
    for g, hyps in zip(greedy, beams):
        norms = [h.normalized_score for h in hyps]
        assert norms == sorted(norms, reverse=True)
        assert hyps[0].normalized_score >= g.normalized_score - 1e-12  # a beam never does worse
        for h in hyps:  # scores are the sums of the step log-probabilities
            seq = [5] + h.tokens + ([0] if h.finished else [])
            assert h.score == pytest.approx(sum(table[a, b] for a, b in zip(seq[:-1], seq[1:])))
    assert len(greedy) == len(beams) == 5  # one result per example of the batch


def test_save_load_roundtrip(tmp_path):
    model = _model("lstm", dtype=np.float32, attention="dot", peeky=True, reverse_source=True)
    path = model.save(tmp_path / "s2s.safetensors")
    loaded = Model.load(path)
    src, tgt, src_mask, _ = _batch(5)
    assert isinstance(loaded, Seq2Seq) and loaded.config == model.config
    np.testing.assert_array_equal(loaded.eval().forward(src, tgt, src_mask), model.eval().forward(src, tgt, src_mask))


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="attention 'luong'"):
        Seq2SeqConfig(attention="luong")
    with pytest.raises(ValueError, match="teacher_forcing_ratio 1.5"):
        Seq2SeqConfig(teacher_forcing_ratio=1.5)
    src, tgt, src_mask, _ = _batch()
    bad = src_mask.copy()
    bad[0, 1] = False  # a hole, not right padding
    with pytest.raises(ValueError, match="not a valid prefix"):
        _model().forward(src, tgt, bad)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        _model().backward()


def _prefix_majority_accuracy(train_answers, eval_answers) -> float:
    """Teacher-forced next-character accuracy of the best predictor that ignores the question:
    the most frequent next character after each answer prefix in training."""
    counts = {}
    for a in train_answers:
        for t in range(len(a) + 1):
            nxt = counts.setdefault(a[:t], {})
            nxt[a[t:t + 1]] = nxt.get(a[t:t + 1], 0) + 1  # "" stands for <eos>
    hits = total = 0
    for a in eval_answers:
        for t in range(len(a) + 1):
            nxt = counts.get(a[:t], {})
            hits += bool(nxt) and max(nxt, key=nxt.get) == a[t:t + 1]
            total += 1
    return hits / total


def test_learns_dates_in_seconds():
    """~140 steps on 1,500 date pairs: held-out next-character accuracy far above what the
    answers alone allow (so it reads the question), and loss far below chance."""
    data = shared_data() / "dl2-date" / "date.txt"
    if not data.is_file():  # without the shared data: every 20th line of it, which rides with the tests
        data = ROOT / "tests" / "data" / "dl2-date" / "date-2500.txt"
    from rnnkit.optim import Adam, clip_grad_norm
    from rnnkit.tasks.seq2seq import Seq2SeqTask, Seq2SeqTaskConfig

    config = Seq2SeqTaskConfig(dataset=str(data), cell="gru", attention="dot", reverse_source=True,
                               hidden_size=48, embedding_dim=16, max_train=1500, max_eval=300, batch_size=32)
    task = Seq2SeqTask.from_config(config, seed=0)
    opt = Adam(task.model, lr=1e-2)
    for epoch in range(3):
        for batch in task.train_batches(epoch):
            task.model.zero_grad()
            task.train_loss(batch)
            task.backward()
            clip_grad_norm(task.model, 5.0)
            opt.step()
    metrics = task.evaluate("valid")
    baseline = _prefix_majority_accuracy([task.pairs[i][1] for i in task.splits["train"]],
                                         [task.pairs[i][1] for i in task.splits["valid"][:300]])
    assert metrics["token_accuracy"] > baseline + 0.15, (metrics, baseline)  # 0.75 vs 0.48
    assert metrics["loss"] < 0.8, metrics  # 0.64; chance: log(62) = 4.1


def test_task_trains_with_the_shared_trainer_and_reloads(tmp_path):
    """`rnnkit train --task seq2seq` in miniature: generated problems, one epoch, checkpoint round trip."""
    from rnnkit.tasks.seq2seq import Seq2SeqTask, Seq2SeqTaskConfig
    from rnnkit.train.trainer import TrainConfig, Trainer

    config = Seq2SeqTaskConfig(dataset="gen-addition", num_generated=400, hidden_size=16, embedding_dim=8,
                               attention="dot", reverse_source=True, batch_size=32, eval_beam_size=2)
    task = Seq2SeqTask.from_config(config, seed=0)
    parts = np.concatenate(list(task.splits.values()))
    assert sorted(parts.tolist()) == list(range(len(task.pairs)))  # disjoint, and they cover the data
    assert len(task.splits["test"]) == len(task.pairs) // 10
    result = Trainer(task, TrainConfig(epochs=1, run_dir=str(tmp_path / "run"), progress=False)).fit()
    assert {"test_loss", "test_accuracy", "test_token_accuracy", "test_beam_accuracy"} <= set(result)
    again = Seq2SeqTask.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors")
    assert again.evaluate("test") == pytest.approx({k[5:]: v for k, v in result.items() if k.startswith("test_")})
    answers = again.answer(["12+34", "7+8"], beam_size=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_fixed_width_answer_pads_questions_as_training_did_and_strips_the_answers(monkeypatch):
    """A fixed-width model was trained on questions padded to one width: answer() must pad a
    question typed without that padding the same way, and strip the answer's padding."""
    from rnnkit.decoding import Hypothesis
    from rnnkit.tasks.seq2seq import Seq2SeqTask, Seq2SeqTaskConfig

    config = Seq2SeqTaskConfig(dataset="gen-addition", num_generated=300, fixed_width=True, hidden_size=8,
                               embedding_dim=4)
    task = Seq2SeqTask.from_config(config, seed=0)
    width = len(task.pairs[0][0])
    assert width > len("1+2") and all(len(q) == width for q, _ in task.pairs)
    seen = {}

    def greedy(src, src_mask=None, max_len=None):
        seen["src"], seen["mask"] = src, src_mask
        return [Hypothesis(task.vocab.encode("91  ").tolist(), 0.0, 0.0, True) for _ in range(len(src))]

    monkeypatch.setattr(task.model, "greedy_decode", greedy)
    assert task.answer(["1+2", "16+75"]) == ["91", "91"]
    assert seen["src"].shape == (2, width) and seen["mask"].all()
    np.testing.assert_array_equal(seen["src"][0], task.vocab.encode("1+2".ljust(width)))


def test_task_sizes_are_checked():
    from rnnkit.tasks.seq2seq import Seq2SeqTask, Seq2SeqTaskConfig

    for name in ("max_train", "max_eval", "eval_beam_size"):
        with pytest.raises(ValueError, match=f"{name} -100; expected an integer >= 0"):
            Seq2SeqTaskConfig(**{name: -100})
    with pytest.raises(ValueError, match="3 question/answer pairs: test_fraction 0.1 leaves no test pair"):
        Seq2SeqTask.from_config(Seq2SeqTaskConfig(dataset="gen-addition", num_generated=3, hidden_size=4))
    config = Seq2SeqTaskConfig(dataset="gen-addition", num_generated=10, val_fraction=0.0, hidden_size=4)
    assert len(Seq2SeqTask.from_config(config).splits["valid"]) == 0  # no validation part asked for: fine


def test_a_relative_data_path_is_kept_absolute(tmp_path, monkeypatch):
    from rnnkit.tasks.seq2seq import Seq2SeqTaskConfig

    (tmp_path / "pairs.txt").write_text("1+1_2\n2+2_4\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert Seq2SeqTaskConfig(dataset="pairs.txt").dataset == str(tmp_path / "pairs.txt")
    assert Seq2SeqTaskConfig(dataset="missing.txt").dataset == "missing.txt"  # the error comes when it is read
    (tmp_path / "addition").write_text("", encoding="utf-8")
    assert Seq2SeqTaskConfig(dataset="addition").dataset == "addition"  # a name stays a name
