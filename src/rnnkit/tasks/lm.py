"""``rnnkit train --task lm``: a recurrent language model trained with truncated BPTT.

The corpus (bundled ``tinyshakespeare``, ``ptb`` from the data folder, or any UTF-8 text
file) is cut into ``batch_size`` parallel streams; each step reads the next ``bptt``
tokens of every stream, carrying the hidden state from the previous chunk (gradients stop
at the chunk edge). The state is reset at each epoch start, and every epoch reads the same
chunks; ``batching="ring"`` instead reads the streams on around the corpus from where the
last epoch stopped, never resetting the state (Deep Learning from Scratch 2's trainer; the
chunk edges then move every epoch). Metrics: loss in nats per token and perplexity ``exp(loss)``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.batching import RingBatcher, TBPTTBatcher
from ..data.text import BUNDLED, load_corpus, shared_data_dir
from ..data.vocab import Vocab
from ..models.language_model import LanguageModel, LanguageModelArchitecture, LanguageModelConfig
from .common import absolute_if_exists


@dataclass
class _CorpusFields:
    corpus: str = field(default="tinyshakespeare", metadata={
        "help": "tinyshakespeare (bundled) | ptb | path to a UTF-8 text file"})
    data_dir: str = field(default="", metadata={"help": "folder holding ptb/ (default: $RNNKIT_DATA, else "
                                                        "../shared/data beside the current folder)"})
    level: str = field(default="", metadata={"help": "char | word (default: the corpus's own; char for text files)"})
    min_freq: int = field(default=1, metadata={"help": "drop tokens seen fewer times from the vocabulary"})
    max_size: int = field(default=0, metadata={"help": "keep at most this many tokens in the vocabulary (0: all)"})
    batch_size: int = field(default=32, metadata={"help": "parallel streams B"})
    bptt: int = field(default=64, metadata={"help": "truncated-BPTT length T (tokens per chunk)"})
    batching: str = field(default="reset", metadata={
        "help": "reset: each epoch starts from a zero state at the stream starts, the same chunks every epoch | "
                "ring: the streams read on around the corpus across epochs, the state is never reset and the "
                "chunk edges move each epoch (Deep Learning from Scratch 2's trainer)"})
    eval_batch_size: int = field(default=10, metadata={"help": "parallel streams for evaluation"})
    max_eval_tokens: int = field(default=0, metadata={
        "help": "validate on at most this many tokens (0: all); the test split is always read whole"})


@dataclass
class LMTaskConfig(LanguageModelArchitecture, _CorpusFields):
    """The corpus and batching fields, then the network's (:class:`LanguageModelArchitecture`)."""

    def __post_init__(self):
        super().__post_init__()
        if self.corpus not in BUNDLED and self.corpus != "ptb":  # a file: kept absolute (see absolute_if_exists)
            self.corpus = absolute_if_exists(self.corpus)
        self.data_dir = absolute_if_exists(self.data_dir)
        for name in ("batch_size", "bptt", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}; expected an integer >= 1")
        for name in ("max_eval_tokens", "max_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}; expected an integer >= 0 (0: all)")
        if self.level not in ("", "char", "word"):
            raise ValueError(f"level {self.level!r}; expected 'char', 'word' or '' (the corpus's own)")
        if self.batching not in ("reset", "ring"):
            raise ValueError(f"batching {self.batching!r}; expected 'reset' or 'ring'")


def _data_dir(config: LMTaskConfig):
    if config.data_dir:
        return Path(config.data_dir)
    found = shared_data_dir()
    if found is not None:
        return found
    beside = Path.cwd().parent / "shared" / "data"
    return beside if beside.exists() else None


def load_lm_corpus(config: LMTaskConfig):
    data_dir = _data_dir(config) if config.corpus == "ptb" else None  # only ptb reads the data folder
    return load_corpus(config.corpus, level=config.level or None, data_dir=data_dir,
                       min_freq=config.min_freq, max_size=config.max_size or None)


class LanguageModelTask:
    """Truncated-BPTT language modelling (see the module docstring)."""

    name = "lm"
    supports_cuda = True  # batches go to the model's array module
    config_class = LMTaskConfig
    main_metric = "val_loss"
    reports_perplexity = True  # the progress bar shows exp(loss)
    unit = "tok"  # train_loss counts tokens: the trainer reports tok/s

    def __init__(self, config: LMTaskConfig, corpus, seed: int = 0, model: LanguageModel | None = None):
        self.config, self.corpus, self.seed = config, corpus, seed
        if model is None:
            shape = {f.name: getattr(config, f.name) for f in dataclasses.fields(LanguageModelArchitecture)}
            model_config = LanguageModelConfig(vocab_size=len(corpus.vocab), level=corpus.level, **shape)
            model = LanguageModel(model_config, vocab=corpus.vocab.to_dict(), seed=seed)
        elif Vocab.from_dict(model.vocab) != corpus.vocab:
            raise ValueError("the checkpoint's vocabulary does not match this corpus's; evaluate on text encoded "
                             "with the model's own vocabulary (rnnkit evaluate --file does this)")
        self.model = model
        batcher = RingBatcher if config.batching == "ring" else TBPTTBatcher
        self.train_stream = batcher(corpus.train, config.batch_size, config.bptt)
        self.carries_state_across_epochs = config.batching == "ring"  # the trainer checkpoints the carry then

    @classmethod
    def from_config(cls, config: LMTaskConfig, seed: int = 0) -> "LanguageModelTask":
        return cls(config, load_lm_corpus(config), seed)

    @classmethod
    def from_checkpoint(cls, path) -> "LanguageModelTask":
        """The trained model in ``path`` with its corpus rebuilt from the stored task config."""
        from ..checkpoint import load_checkpoint  # noqa: PLC0415
        from ..config import from_dict  # noqa: PLC0415

        _, meta = load_checkpoint(path)
        if meta.get("task") != cls.name:
            raise ValueError(f"{path}: not a language-model checkpoint (task {meta.get('task')!r})")
        # evaluating a checkpoint measures the whole split (max_eval_tokens caps only in-training checks)
        config = dataclasses.replace(from_dict(LMTaskConfig, meta["task_config"]), max_eval_tokens=0)
        return cls(config, load_lm_corpus(config), int(meta.get("seed", 0)), model=LanguageModel.load(path))

    def extra_meta(self) -> dict:
        return {"task": self.name, "task_config": dataclasses.asdict(self.config), "seed": self.seed}

    # -- training ------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        if not self.carries_state_across_epochs:
            self.model.reset_state()

    def train_batches(self, epoch: int):
        """Epoch ``epoch``'s chunks in stream order (the carried state needs that order):
        the same chunks every epoch, or (``batching="ring"``) the ring read on from the last epoch."""
        xp = self.model.xp
        for x, y in self.train_stream.epoch(epoch):
            yield xp.asarray(x), xp.asarray(y)

    def num_train_batches(self) -> int:
        return len(self.train_stream)

    def train_loss(self, batch) -> tuple[float, int]:
        """Forward *and* backward: the model's fused output layer takes its gradients block by
        block in one pass (``LanguageModel.loss_and_backward``), so ``backward`` has nothing left."""
        x, y = batch
        return self.model.loss_and_backward(x, y), int(y.size)

    def backward(self) -> None:
        """Done in ``train_loss`` (see there)."""

    # -- evaluation ----------------------------------------------------------------------------
    def eval_splits(self) -> list[str]:
        """The splits :meth:`evaluate` measures: "valid", and "test" where the corpus has one
        (ptb; a text file is split train/valid only). ``rnnkit evaluate`` checks its --split here."""
        return [name for name, ids in (("valid", self.corpus.valid), ("test", self.corpus.test))
                if ids is not None and len(ids) >= 2]

    def evaluate(self, split: str) -> dict[str, float]:
        """Loss and perplexity on ``split``; {} where the corpus has no such split (the trainer
        asks for "test" at the end of every run)."""
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        ids = {"valid": self.corpus.valid, "test": self.corpus.test}.get(split)
        if ids is None or len(ids) < 2:
            return {}
        cap = self.config.max_eval_tokens if split == "valid" else 0  # a test figure reads the whole split
        return evaluate_ids(self.model, ids, self.config.eval_batch_size, self.config.bptt, cap)


def evaluate_ids(model: LanguageModel, ids: np.ndarray, batch_size: int, bptt: int, max_tokens: int = 0) -> dict:
    """Mean loss (nats/token) and perplexity of ``model`` on the token stream ``ids``.

    Runs in eval mode with its own state from zeros; the training carry is restored after.
    """
    if max_tokens:
        ids = ids[: max_tokens + 1]
    stream = TBPTTBatcher(ids, max(1, min(batch_size, len(ids) - 1)), bptt)
    xp = model.xp
    total, count, state = 0.0, 0, None
    for x, y in stream:
        loss, counted, state = model.predict_loss(xp.asarray(x), xp.asarray(y), state)
        total += loss * counted
        count += counted
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(loss) if loss < 709 else math.inf, "tokens": count}  # exp overflows past 709
