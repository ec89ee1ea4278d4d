"""``rnnkit train --task seq2seq``: character-level sequence-to-sequence (DL2 addition, date format).

Data: ``addition`` or ``date`` (the DL2 toy sets in the shared data folder), a path to any
file of ``question_answer`` lines (the DL2 format, see
:func:`rnnkit.data.tasks.load_seq2seq_file`), or fresh generated problems
(``gen-addition``, ``gen-date``, ``num_generated`` of them). Pairs are character
sequences; the vocabulary (``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3,
then the characters of the training part) is shared by questions and answers.

With ``fixed_width`` the pairs are padded with spaces to fixed widths again, as the DL2
book feeds them (spaces are then ordinary tokens the decoder must also produce); by default
they are variable-length and batched with masks.

Split (``split_seed``, default 1984 as in the DL2 book): the pairs, de-duplicated first
when ``dedupe`` (the date file repeats 8,422 lines, so without it some test questions are
also training questions), are shuffled exactly as the book's ``sequence.load_data`` does
(``RandomState(split_seed).shuffle``) and the last ``test_fraction`` is the test set; the
last ``val_fraction`` (of all pairs) of the rest is the validation set. With the addition
file and the defaults, the test set is the book's own 5,000 questions.

Metrics: ``loss`` (teacher-forced cross-entropy per answer token, ``<eos>`` included),
``accuracy`` (exact match of the greedy decoding with the answer), ``token_accuracy``
(teacher-forced next-character accuracy), and ``beam_accuracy`` when ``eval_beam_size`` > 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import backend
from ..data.batching import pad_batch
from ..data.tasks import load_seq2seq_file, make_addition_problems, make_date_problems
from ..data.text import shared_data_dir
from ..data.vocab import EOS, PAD, SOS, UNK, Vocab
from ..models.seq2seq import Seq2Seq, Seq2SeqConfig
from .common import absolute_if_exists, bucketed_batches, find_task_meta

NAMED = {"addition": ("dl2-addition", "addition.txt"), "date": ("dl2-date", "date.txt")}
GENERATED = ("gen-addition", "gen-date")


@dataclass
class Seq2SeqTaskConfig(Seq2SeqConfig):
    """Data and model hyper-parameters of the seq2seq task."""

    dataset: str = field(default="addition", metadata={
        "help": "addition | date | gen-addition | gen-date | path to a question_answer file"})
    data_dir: str = field(default="", metadata={
        "help": "folder holding dl2-addition/ and dl2-date/ (default: $RNNKIT_DATA or ../shared/data)"})
    sep: str = field(default="_", metadata={"help": "question/answer separator of a data file"})
    num_generated: int = field(default=50000, metadata={"help": "problems to generate for gen-addition | gen-date"})
    fixed_width: bool = field(default=False, metadata={
        "help": "pad questions and answers with spaces to the longest of each, as the DL2 book feeds them"})
    dedupe: bool = field(default=True, metadata={"help": "drop repeated question/answer pairs before splitting"})
    split_seed: int = field(default=1984, metadata={"help": "seed of the shuffle that splits the data (DL2: 1984)"})
    test_fraction: float = field(default=0.1, metadata={"help": "fraction held out for test (the last part)"})
    val_fraction: float = field(default=0.05, metadata={"help": "fraction held out for validation"})
    max_train: int = field(default=0, metadata={"help": "use at most this many training pairs (0: all)"})
    batch_size: int = field(default=128, metadata={"help": "pairs per training batch"})
    max_eval: int = field(default=0, metadata={"help": "evaluate on at most this many pairs per split (0: all)"})
    eval_beam_size: int = field(default=0, metadata={"help": "> 0: also report exact match of beam search of this size"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam search length normalisation exponent"})

    def __post_init__(self):
        super().__post_init__()
        if self.dataset not in NAMED and self.dataset not in GENERATED:
            self.dataset = absolute_if_exists(self.dataset)
        self.data_dir = absolute_if_exists(self.data_dir)
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1 \
                or self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"test_fraction {self.test_fraction}, val_fraction {self.val_fraction}; "
                             "expected fractions in [0, 1) that leave a training part")
        if len(self.sep) != 1:
            raise ValueError(f"sep {self.sep!r}; expected one character")
        for name in ("batch_size", "num_generated"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}; expected an integer >= 1")
        for name in ("max_train", "max_eval", "eval_beam_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}; expected an integer >= 0 (0: {'off' if name == 'eval_beam_size' else 'all'})")


def model_config(config: Seq2SeqTaskConfig) -> Seq2SeqConfig:
    """The architecture part of a task config."""
    return Seq2SeqConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(Seq2SeqConfig)})


def data_dir(config) -> Path:
    """The configured data folder, else $RNNKIT_DATA, else ``../shared/data`` (beside the checkout)."""
    if config.data_dir:
        return Path(config.data_dir)
    return shared_data_dir() or Path("..") / "shared" / "data"


def load_pairs(config: Seq2SeqTaskConfig) -> list[tuple[str, str]]:
    """(question, answer) pairs of the configured dataset, de-duplicated (first occurrence kept) if asked."""
    if config.dataset in NAMED:
        folder, name = NAMED[config.dataset]
        pairs = load_seq2seq_file(data_dir(config) / folder / name, sep=config.sep)
    elif config.dataset == "gen-addition":
        pairs = make_addition_problems(config.num_generated, rng=config.split_seed)
    elif config.dataset == "gen-date":
        pairs = make_date_problems(config.num_generated, rng=config.split_seed)
    else:
        pairs = load_seq2seq_file(config.dataset, sep=config.sep)
    if config.dedupe:
        pairs = list(dict.fromkeys(pairs))
    if config.fixed_width:
        q_width, a_width = max(len(q) for q, _ in pairs), max(len(a) for _, a in pairs)
        pairs = [(q.ljust(q_width), a.ljust(a_width)) for q, a in pairs]
    return pairs


def split_indices(n: int, config: Seq2SeqTaskConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid, test) indices: the DL2 shuffle, test = the last ``test_fraction``."""
    order = np.arange(n)
    np.random.RandomState(config.split_seed).shuffle(order)  # the book's exact shuffle, no global state
    n_test, n_val = int(n * config.test_fraction + 1e-9), int(n * config.val_fraction + 1e-9)
    n_train = n - n_test - n_val
    return order[:n_train], order[n_train:n - n_test], order[n - n_test:]


class Seq2SeqTask:
    """Trains a :class:`Seq2Seq` on question/answer character pairs (see the module docstring)."""

    name = "seq2seq"
    supports_cuda = True  # batches go to the model's array module
    config_class = Seq2SeqTaskConfig
    main_metric = "val_loss"
    unit = "tok"  # train_loss counts answer tokens (<eos> included)

    def __init__(self, config: Seq2SeqTaskConfig, pairs: list[tuple[str, str]], seed: int = 0,
                 model: Seq2Seq | None = None):
        if not pairs:
            raise ValueError("no question/answer pairs; need at least one")
        self.config, self.seed, self.pairs = config, seed, pairs
        train, valid, test = split_indices(len(pairs), config)
        for part, fraction, name in ((test, config.test_fraction, "test"), (valid, config.val_fraction, "val")):
            if fraction > 0 and len(part) == 0:
                raise ValueError(f"{len(pairs)} question/answer pairs: {name}_fraction {fraction} leaves no {name} "
                                 f"pair; expected at least {int(np.ceil(1 / fraction))} pairs")
        if config.max_train:
            train = train[: config.max_train]
        self.splits = {"train": train, "valid": valid, "test": test}
        if model is None:
            chars = (ch for i in train for q, a in [pairs[i]] for ch in q + a)
            vocab = Vocab.build(chars, specials=(PAD, SOS, EOS, UNK))
            longest = max(len(a) for _, a in pairs)
            model = Seq2Seq(model_config(config), len(vocab), pad_id=vocab.pad_id, sos_id=vocab.sos_id,
                            eos_id=vocab.eos_id, max_target_len=longest + 1, vocab=vocab.to_dict(), seed=seed)
        self.model = model
        self.vocab = Vocab.from_dict(model.vocab)
        self.src = [self.vocab.encode(q) for q, _ in pairs]
        eos = np.array([self.vocab.eos_id], dtype=np.int64)
        self.tgt = [np.concatenate([self.vocab.encode(a), eos]) for _, a in pairs]

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Seq2SeqTaskConfig, seed: int = 0) -> "Seq2SeqTask":
        return cls(config, load_pairs(config), seed)

    @classmethod
    def from_checkpoint(cls, path) -> "Seq2SeqTask":
        """The task of a saved run: its model (weights, vocabulary) and its data split."""
        from ..checkpoint import load_checkpoint  # noqa: PLC0415
        from ..config import from_dict  # noqa: PLC0415
        from ..models.base import Model  # noqa: PLC0415

        _, meta = load_checkpoint(path)
        task_meta = find_task_meta(meta, cls.name)
        config = from_dict(Seq2SeqTaskConfig, task_meta["config"])
        return cls(config, load_pairs(config), int(task_meta.get("seed", 0)), model=Model.load(path))

    def extra_meta(self) -> dict:
        return {"task": self.name, "task_config": dataclasses.asdict(self.config), "seed": self.seed}

    # -- training ----------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def batch(self, idx):
        """(src (B, S), src_mask, tgt (B, T), tgt_mask) of pairs ``idx``; ``tgt`` ends with ``<eos>``."""
        pad = self.vocab.pad_id
        src, src_mask = pad_batch([self.src[i] for i in idx], pad)
        tgt, tgt_mask = pad_batch([self.tgt[i] for i in idx], pad)
        return src, src_mask, tgt, tgt_mask

    def train_batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        for idx in bucketed_batches(self.splits["train"], self.src, self.config.batch_size, rng):
            yield self.batch(idx)

    def num_train_batches(self) -> int:
        return -(-len(self.splits["train"]) // self.config.batch_size)

    def train_loss(self, batch) -> tuple[float, int]:
        src, src_mask, tgt, tgt_mask = batch
        loss = self.model.loss(src, tgt, src_mask, tgt_mask)
        return loss, self.model.criterion.count

    def backward(self) -> None:
        self.model.backward()

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, split: str, batch_size: int = 500) -> dict[str, float]:
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        if split not in self.splits:
            raise ValueError(f"split {split!r}; expected one of {sorted(self.splits)}")
        idx = self.splits[split]
        if self.config.max_eval:
            idx = idx[: self.config.max_eval]
        if len(idx) == 0:
            return {}
        idx = idx[np.argsort([len(self.src[i]) for i in idx], kind="stable")]
        model = self.model
        total_loss = total_tokens = correct_tokens = exact = beam_exact = 0
        with model.evaluating():
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                src, src_mask, tgt, tgt_mask = self.batch(part)
                loss = model.loss(src, tgt, src_mask, tgt_mask)
                count = model.criterion.count
                total_loss += loss * count
                total_tokens += count
                correct_tokens += int(((backend.to_numpy(model.last_logits).argmax(-1) == tgt) & tgt_mask).sum())
                answers = [self.tgt[i][:-1].tolist() for i in part]
                hyps = model.greedy_decode(src, src_mask)
                exact += sum(h.finished and h.tokens == a for h, a in zip(hyps, answers))
                if self.config.eval_beam_size:
                    beams = model.beam_decode(src, src_mask, beam_size=self.config.eval_beam_size,
                                              length_penalty=self.config.length_penalty, n_best=1)
                    beam_exact += sum(b[0].finished and b[0].tokens == a for b, a in zip(beams, answers))
        out = {"loss": total_loss / max(total_tokens, 1), "accuracy": exact / len(idx),
               "token_accuracy": correct_tokens / max(total_tokens, 1)}
        if self.config.eval_beam_size:
            out["beam_accuracy"] = beam_exact / len(idx)
        return out

    def answer(self, questions: list[str], beam_size: int = 0) -> list[str]:
        """Decoded answers to raw questions (greedy, or beam search of ``beam_size``).

        With ``fixed_width`` a question is padded with spaces as the training questions were,
        and the answer's padding is stripped again, so questions go in and answers come out as
        a user types and reads them."""
        if self.config.fixed_width:
            width = len(self.pairs[0][0])  # load_pairs padded every question to this width
            questions = [q.ljust(width) for q in questions]
        src, src_mask = pad_batch([self.vocab.encode(q) if q else np.array([self.vocab.unk_id]) for q in questions],
                                  self.vocab.pad_id)
        if beam_size:
            hyps = [b[0] for b in self.model.beam_decode(src, src_mask, beam_size=beam_size,
                                                         length_penalty=self.config.length_penalty, n_best=1)]
        else:
            hyps = self.model.greedy_decode(src, src_mask)
        answers = ["".join(self.vocab.decode(h.tokens)) for h in hyps]
        return [a.rstrip(" ") for a in answers] if self.config.fixed_width else answers


__all__ = ["Seq2SeqTaskConfig", "Seq2SeqTask", "load_pairs", "split_indices", "model_config"]
