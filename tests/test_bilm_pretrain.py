"""biLM pretraining of the classifier (BiLMPretrainer, ClassifyConfig.pretrain_epochs): gradients, targets,
learning on real text, the off switch, the command line and the benchmark scripts."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnkit import cli, gradcheck
from rnnkit.models.bilm import BiLMPretrainer
from rnnkit.models.classifier import ClassifierConfig, SequenceClassifier
from rnnkit.tasks.classify import BiLMPretrainTask, ClassifyConfig, ClassifyTask, pretrain_bilm
from rnnkit.train.trainer import Trainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RNNKIT_DATA", ROOT.parent / "shared" / "data"))
RT = DATA / "rt-polarity"


# the tiny batch, its padding and the one-BLAS-thread fixture are the classifier tests' own
from test_classifier import B, LENGTHS, MASK, T, V, one_blas_thread, tiny_ids  # noqa: E402, F401
from script_helpers import load_script as _load_script


def tiny_classifier(cell="lstm", bidirectional=True, num_layers=1, dropout=0.3, seed=1):
    cfg = ClassifierConfig(cell=cell, embedding_dim=4, hidden_size=3, num_layers=num_layers,
                           bidirectional=bidirectional, dropout=dropout, rnn_dropout=0.2,
                           word_dropout=0.2 if dropout else 0.0)
    return SequenceClassifier(cfg, V, 2, unk_id=1, seed=seed)


# ---- gradients and targets ------------------------------------------------------------------
@pytest.mark.parametrize("cell,bidirectional,num_layers,left",
                         [("lstm", True, 1, False), ("lstm", True, 1, True), ("gru", True, 1, False),
                          ("rnn", True, 1, False), ("lstm", False, 2, False), ("gru", False, 1, True)])
def test_gradcheck_bilm_loss(cell, bidirectional, num_layers, left):
    """Embedding, recurrent and both heads' weights, float64, padded batches (right or left), with
    word dropout, embedding dropout and output dropout active (their masks replayed), capped outputs."""
    model = BiLMPretrainer(tiny_classifier(cell, bidirectional, num_layers), num_words=8, seed=2)
    ids, mask = tiny_ids(), MASK
    if left:
        ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()
    report = gradcheck(model, (ids, mask), method="loss", max_elements=15)
    assert report.passed(1e-6), str(report)
    names = set(report.errors)
    assert {"embedding.weight", "forward_head.weight", "forward_head.bias"} <= names
    assert any(n.startswith("rnn.weight_hh") for n in names)
    assert ("backward_head.weight" in names) == bidirectional
    assert not any(n.startswith("output.") for n in names)  # the classification layer is not part of it


def test_targets_next_previous_and_boundary():
    model = BiLMPretrainer(tiny_classifier(dropout=0.0), num_words=8)
    ids = np.array([[2, 9, 4, 5], [3, 7, 0, 0]])
    mask = ids != 0
    nxt, prv = model.targets(ids, mask)
    # ids >= 8 are predicted as <unk> (1); 8 is the boundary class
    np.testing.assert_array_equal(nxt[0], [1, 4, 5, 8])
    np.testing.assert_array_equal(prv[0], [8, 2, 1, 4])
    np.testing.assert_array_equal(nxt[1, :2], [7, 8])
    np.testing.assert_array_equal(prv[1, :2], [8, 3])
    assert model.forward_head.out_features == 9


def test_loss_counts_valid_steps_only_and_equals_the_unpadded_loss():
    """Padding changes nothing: a padded sequence's loss equals its loss alone (eval mode)."""
    model = BiLMPretrainer(tiny_classifier(dropout=0.0), seed=3)
    model.eval()
    ids = tiny_ids(4)
    padded = model.loss(ids, MASK)
    assert model.count == 2 * LENGTHS.sum()
    parts = [(model.loss(ids[b:b + 1, :LENGTHS[b]]), model.count) for b in range(B)]
    assert padded == pytest.approx(sum(l * c for l, c in parts) / sum(c for _, c in parts), rel=1e-5)


def test_stacked_bidirectional_is_refused_clearly():
    with pytest.raises(ValueError, match="2-layer bidirectional encoder.*already have seen"):
        BiLMPretrainer(tiny_classifier(num_layers=2))
    with pytest.raises(ValueError, match="pretrain_epochs -1"):
        ClassifyConfig(pretrain_epochs=-1)


def test_fewer_words_need_an_unk_class():
    """Rarer words are predicted as <unk>: without one they became <pad>, a class of their own."""
    no_unk = SequenceClassifier(ClassifierConfig(embedding_dim=4, hidden_size=3), V, 2, unk_id=None, seed=0)
    with pytest.raises(ValueError, match="no unk_id"):
        BiLMPretrainer(no_unk, num_words=V - 2)
    assert BiLMPretrainer(no_unk).num_words == V  # the whole vocabulary: no <unk> needed


def test_pretraining_trains_the_classifier_body_in_place_not_its_output_layer(tmp_path):
    task = ClassifyTask.from_config(ClassifyConfig(dataset=str(write_csv(tmp_path / "toy.csv")), embedding_dim=8,
                                                   hidden_size=8, batch_size=8, pretrain_epochs=1), seed=0)
    before = {n: p.copy() for n, p in task.model.state_dict().items()}
    trainer = Trainer(task, TrainConfig(epochs=1, lr=1e-2, run_dir=str(tmp_path / "run"), progress=False,
                                        plot=False, eval_test=False))
    metrics = pretrain_bilm(task, trainer.config)
    after = task.model.state_dict()
    assert not np.array_equal(before["embedding.weight"], after["embedding.weight"])
    assert not np.array_equal(before["rnn.weight_hh_l0_reverse"], after["rnn.weight_hh_l0_reverse"])
    np.testing.assert_array_equal(before["output.weight"], after["output.weight"])
    assert metrics["pretrain_epochs"] == 1 and math.isfinite(metrics["pretrain_val_loss"])


def test_pretrain_keep_embedding_restores_the_initial_encoder(tmp_path):
    task = ClassifyTask.from_config(ClassifyConfig(dataset=str(write_csv(tmp_path / "toy.csv")), embedding_dim=8,
                                                   hidden_size=8, batch_size=8, pretrain_epochs=1,
                                                   pretrain_keep="embedding"), seed=0)
    before = {n: p.copy() for n, p in task.model.state_dict().items()}
    pretrain_bilm(task, TrainConfig(epochs=1, lr=1e-2, run_dir=str(tmp_path / "run"), progress=False, plot=False))
    after = task.model.state_dict()
    assert not np.array_equal(before["embedding.weight"], after["embedding.weight"])
    for name in before:
        if not name.startswith("embedding."):
            np.testing.assert_array_equal(before[name], after[name])
    with pytest.raises(ValueError, match="pretrain_keep 'heads'"):
        ClassifyConfig(pretrain_keep="heads")


# ---- learning on real text ------------------------------------------------------------------
@pytest.mark.skipif(not (RT / "rt-polarity.pos").is_file() and not RT.is_dir(),
                    reason="rt-polarity data not found (set RNNKIT_DATA)")
def test_bilm_learns_on_rt_polarity(tmp_path):
    """1,500 training sentences, 2 epochs, a small BiGRU (a few seconds): the validation biLM loss falls
    from about log(V+1) to well below it, and below a unigram model's."""
    cfg = ClassifyConfig(dataset="rt-polarity", data_dir=str(DATA), folds=10, fold=0, cell="gru", embedding_dim=32,
                         hidden_size=32, dropout=0.1, max_train=1500, max_len=40, pretrain_vocab=1000)
    task = ClassifyTask.from_config(cfg, seed=0)
    lm = BiLMPretrainTask(task, cfg.pretrain_vocab)
    start = lm.evaluate("valid")["loss"]
    assert start == pytest.approx(math.log(1001), abs=0.3)
    Trainer(lm, TrainConfig(epochs=2, lr=1e-2, run_dir=str(tmp_path / "pre"), progress=False, plot=False,
                            eval_test=False, overwrite=True)).fit()
    end = lm.evaluate("valid")["loss"]
    # a unigram model of the training targets (both directions) on the validation targets
    counts = np.ones(1001)
    for i in task.splits["train"]:
        ids = task.ids[i][None]
        for t in lm.model.targets(ids, np.ones(ids.shape, bool)):
            np.add.at(counts, t[0], 1)
    logp = np.log(counts / counts.sum())
    unigram = []
    for i in task.splits["valid"]:
        ids = task.ids[i][None]
        for t in lm.model.targets(ids, np.ones(ids.shape, bool)):
            unigram.extend(-logp[t[0]])
    assert end < math.log(1001) - 2.0, (start, end)
    assert end < np.mean(unigram) - 0.1, (end, np.mean(unigram))


# ---- the off switch -------------------------------------------------------------------------
def write_csv(path: Path) -> Path:
    rows = ["label,text"] + [f"pos,\"good great fine film {i}\"" for i in range(20)] + \
           [f"neg,\"bad awful poor plot {i}\"" for i in range(20)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def run(tmp_path, name, pretrain_epochs, without_hook=False, monkeypatch=None):
    cfg = ClassifyConfig(dataset=str(write_csv(tmp_path / "toy.csv")), embedding_dim=8, hidden_size=8, batch_size=8,
                         val_fraction=0.2, test_fraction=0.2, pretrain_epochs=pretrain_epochs)
    if without_hook:  # the classify task as it was before pretraining existed: no before_fit at all
        monkeypatch.delattr(ClassifyTask, "before_fit")
    task = ClassifyTask.from_config(cfg, seed=1)
    result = Trainer(task, TrainConfig(epochs=2, lr=1e-2, seed=1, run_dir=str(tmp_path / name), progress=False,
                                       plot=False, ema_decay=0.9), cfg).fit()
    if without_hook:
        monkeypatch.undo()
    return result, task.model.state_dict()


def test_pretrain_epochs_0_leaves_training_bit_for_bit_unchanged(tmp_path, monkeypatch):
    off, w_off = run(tmp_path, "off", 0)
    plain, w_plain = run(tmp_path, "plain", 0, without_hook=True, monkeypatch=monkeypatch)
    on, w_on = run(tmp_path, "on", 1)
    assert off["test_loss"] == plain["test_loss"] and off["best_val_loss"] == plain["best_val_loss"]
    for name in w_off:
        np.testing.assert_array_equal(w_off[name], w_plain[name])
    assert not (tmp_path / "off" / "pretrain").exists()
    # and the switch does something when on
    assert on["test_loss"] != off["test_loss"]
    assert not np.array_equal(w_on["embedding.weight"], w_off["embedding.weight"])
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["split"] == "pretrain" and rows[0]["pretrain_epochs"] == 1
    assert (tmp_path / "on" / "pretrain" / "metrics.jsonl").is_file()


# ---- command line and benchmark scripts -----------------------------------------------------
def test_cli_pretrain_epochs(tmp_path, capsys):
    data = write_csv(tmp_path / "toy.csv")
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--task", "classify", "--dataset", str(data), "--embedding-dim", "8",
                     "--hidden-size", "8", "--batch-size", "8", "--epochs", "1", "--pretrain-epochs", "2",
                     "--pretrain-lr", "0.005", "--run-dir", str(run_dir), "--no-progress", "--no-plot"])
    assert code == 0
    out = capsys.readouterr().out
    assert "biLM pretraining: 2 epoch(s)" in out and "lr 0.005" in out
    pre = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in pre if r["split"] == "epoch"] == [0, 1]
    assert all(r["lr"] == 0.005 for r in pre if r["split"] == "epoch")
    assert json.loads((run_dir / "config.json").read_text())["task"]["pretrain_epochs"] == 2
    with pytest.raises(SystemExit):
        cli.main(["train", "--task", "classify", "--help"])
    assert "--pretrain-epochs" in capsys.readouterr().out


def load_script(name):
    return _load_script(ROOT / "benchmarks" / f"{name}.py")


def test_benchmark_scripts_pass_pretrain_epochs_through(tmp_path, monkeypatch, capsys):
    data = write_csv(tmp_path / "toy.csv")
    tiny = ["embedding_dim=4", "hidden_size=4", "batch_size=8", "pretrain_epochs=1"]
    out = tmp_path / "out.jsonl"
    assert load_script("run_classify").main(["--dataset", str(data), "--epochs", "1", "--run-dir",
                                             str(tmp_path / "run"), "--out", str(out), "--set", *tiny]) == 0
    assert json.loads(out.read_text().splitlines()[0])["config"]["pretrain_epochs"] == 1
    assert "biLM pretraining: 1 epoch(s)" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["explore", "--only", "0", "--epochs", "1", "--decays", "0.9", "--swa-start",
                                      "99", "--tag", "pre", "--out", str(tmp_path / "x.jsonl"), "--set",
                                      f"dataset={data}", *tiny])
    load_script("explore_classify_averaging").main()
    assert "biLM pretraining: 1 epoch(s)" in capsys.readouterr().out


def test_resumed_run_does_not_pretrain_again(tmp_path, capsys):
    """The pretraining belongs to a fresh run: a resumed one takes its weights from the checkpoint."""
    cfg = ClassifyConfig(dataset=str(write_csv(tmp_path / "toy.csv")), embedding_dim=8, hidden_size=8, batch_size=8,
                         pretrain_epochs=1)
    train = dict(lr=1e-2, seed=1, run_dir=str(tmp_path / "run"), progress=False, plot=False)
    Trainer(ClassifyTask.from_config(cfg, seed=1), TrainConfig(epochs=1, **train), cfg).fit()
    assert capsys.readouterr().out.count("biLM pretraining:") == 1
    task = ClassifyTask.from_config(cfg, seed=1)
    Trainer(task, TrainConfig(epochs=2, **train), cfg).fit(resume=True)
    out = capsys.readouterr().out
    assert "resumed from" in out and "biLM pretraining:" not in out
