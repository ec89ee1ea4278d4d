"""``rnnkit train --task caption``: caption scenes of handwritten digits (one-to-many).

Data (:mod:`rnnkit.data.captions`): scenes of 1 to 3 of scikit-learn's bundled 8x8 digits
on a 20x30 canvas, with captions such as ``a seven left of a two``, ``two sixes on a
diagonal`` or ``three digits four one nine``; the digit pictures are split into
train / validation / test pools (``val_fraction``, ``test_fraction``, stratified), so the
held-out scenes show only pictures never seen in training. The scenes are drawn from
``data_seed`` alone, so every run (any ``--seed``) sees the same test set. Each canvas goes
through the fixed feature extractor ``features`` (pooled intensities and/or HOG-like
orientation histograms); the captioner's encoder layer on top of it is trained jointly.

Vocabulary: ``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3, then the words of
the training captions.

Metrics: ``loss`` (teacher-forced cross-entropy per caption token, ``<eos>`` included),
``token_accuracy`` (teacher-forced next-word accuracy), ``exact_match`` (greedy caption ==
reference) and ``bleu`` (sacrebleu corpus BLEU of the greedy captions, 0..100; only when
sacrebleu is installed), plus ``beam_exact_match`` and ``beam_bleu`` when
``eval_beam_size`` > 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..data.batching import pad_batch
from ..data.captions import FEATURES, CaptionSet, build_caption_data, feature_shape, image_features
from ..data.vocab import EOS, PAD, SOS, UNK, Vocab
from ..models.captioner import Captioner, CaptionerConfig
from .common import find_task_meta

SPLITS = ("train", "valid", "test")
DIGIT_WEIGHTS = (0.2, 0.4, 0.4)  # how often a scene holds 1, 2, 3 digits


@dataclass
class CaptionTaskConfig(CaptionerConfig):
    """Data and model hyper-parameters of the captioning task."""

    features: str = field(default="pixels+hog", metadata={
        "help": "fixed features of each slot's 8x8 crop: pixels+hog | pixels | pooled | hog | pooled+hog"})
    align: bool = field(default=True, metadata={
        "help": "centre each slot's crop on its centre of intensity (else the fixed middle crop)"})
    standardize: bool = field(default=True, metadata={
        "help": "centre each slot's features and scale them to unit RMS (empty slots stay zero)"})
    regions: bool = field(default=True, metadata={
        "help": "features per slot (6 regions) through one shared encoder layer, instead of one vector per image"})
    data_seed: int = field(default=0, metadata={"help": "seed of the picture split and of the scenes"})
    num_train: int = field(default=8000, metadata={"help": "training scenes"})
    num_val: int = field(default=500, metadata={"help": "validation scenes"})
    num_test: int = field(default=1000, metadata={"help": "test scenes"})
    max_digits: int = field(default=3, metadata={"help": "digits per scene: 1 to this (1: 20 percent, 2: 40, 3: 40, renormalised)"})
    val_fraction: float = field(default=0.1, metadata={"help": "fraction of the digit pictures kept for validation scenes"})
    test_fraction: float = field(default=0.2, metadata={"help": "fraction of the digit pictures kept for test scenes"})
    batch_size: int = field(default=64, metadata={"help": "scenes per training batch"})
    max_eval: int = field(default=0, metadata={"help": "evaluate on at most this many scenes per split (0: all)"})
    eval_beam_size: int = field(default=0, metadata={"help": "> 0: also report exact match and BLEU of beam search of this size"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam search length normalisation exponent"})

    def __post_init__(self):
        super().__post_init__()
        try:
            feature_shape(self.features)
        except ValueError:
            raise ValueError(f"features {self.features!r}; expected one of {FEATURES}") from None
        for name in ("num_train", "num_val", "num_test", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)!r}; expected an integer >= 1")
        if not 1 <= self.max_digits <= 3:
            raise ValueError(f"max_digits {self.max_digits!r}; expected 1, 2 or 3")
        if self.max_eval < 0 or self.eval_beam_size < 0:
            raise ValueError(f"max_eval {self.max_eval}, eval_beam_size {self.eval_beam_size}; expected >= 0")


def model_config(config: CaptionTaskConfig) -> CaptionerConfig:
    """The architecture part of a task config."""
    names = [f.name for f in dataclasses.fields(CaptionerConfig)]
    return CaptionerConfig(**{n: getattr(config, n) for n in names})


def load_data(config: CaptionTaskConfig) -> dict[str, CaptionSet]:
    """The configured scenes {"train", "valid", "test"}."""
    weights = [w if k < config.max_digits else 0.0 for k, w in enumerate(DIGIT_WEIGHTS)]
    return build_caption_data(config.data_seed, config.num_train, config.num_val, config.num_test,
                              config.val_fraction, config.test_fraction, weights)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float | None:
    """sacrebleu's corpus BLEU (0..100) with one reference per caption; None without sacrebleu."""
    try:
        import sacrebleu  # noqa: PLC0415
    except ImportError:
        return None
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


class CaptionTask:
    """Trains a :class:`Captioner` on digit scenes (see the module docstring)."""

    name = "caption"
    supports_cuda = True  # batches go to the model's array module
    config_class = CaptionTaskConfig
    main_metric = "val_loss"
    unit = "tok"

    def __init__(self, config: CaptionTaskConfig, data: dict[str, CaptionSet], seed: int = 0,
                 model: Captioner | None = None):
        self.config, self.seed, self.data = config, seed, data
        words = {s: [c.split() for c in data[s].captions] for s in SPLITS}
        if model is None:
            vocab = Vocab.build((w for caption in words["train"] for w in caption), specials=(PAD, SOS, EOS, UNK))
            longest = max(len(c) for c in words["train"])
            shape = feature_shape(config.features, config.regions)
            model = Captioner(model_config(config), shape[-1], len(vocab), pad_id=vocab.pad_id, sos_id=vocab.sos_id,
                              eos_id=vocab.eos_id, max_caption_len=longest + 4, vocab=vocab.to_dict(),
                              num_regions=shape[0] if config.regions else 1, seed=seed)
        self.model = model
        self.vocab = Vocab.from_dict(model.vocab)
        self.features = {s: image_features(data[s].images, config.features, config.regions, config.align,
                                            config.standardize) for s in SPLITS}
        shape = self.features["train"].shape[1:]
        if shape[-1] != model.feature_size or (len(shape) == 2 and shape[0] != model.num_regions):
            raise ValueError(f"features {config.features!r} (regions={config.regions}) have shape {shape}; "
                             f"the model reads {model.num_regions} region(s) of {model.feature_size}")
        eos = np.array([self.vocab.eos_id], dtype=np.int64)
        self.ids = {s: [np.concatenate([self.vocab.encode(c), eos]) for c in words[s]] for s in SPLITS}

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: CaptionTaskConfig, seed: int = 0) -> "CaptionTask":
        return cls(config, load_data(config), seed)

    @classmethod
    def from_checkpoint(cls, path) -> "CaptionTask":
        """The task of a saved run: its model (weights, vocabulary) and its scenes."""
        from ..checkpoint import load_checkpoint  # noqa: PLC0415
        from ..config import from_dict  # noqa: PLC0415
        from ..models.base import Model  # noqa: PLC0415

        _, meta = load_checkpoint(path)
        task_meta = find_task_meta(meta, cls.name)
        config = from_dict(CaptionTaskConfig, task_meta["config"])
        model = Model.load(path)
        return cls(config, load_data(config), int(task_meta.get("seed", 0)), model=model)

    def extra_meta(self) -> dict:
        return {"task": self.name, "task_config": dataclasses.asdict(self.config), "seed": self.seed}

    # -- training ----------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def batch(self, split: str, idx):
        """(features (B, F), captions (B, T), mask (B, T)) of scenes ``idx`` of ``split``."""
        feats = self.features[split][idx].astype(self.model.dtype, copy=False)
        ids, mask = pad_batch([self.ids[split][i] for i in idx], self.vocab.pad_id)
        xp = self.model.xp
        return xp.asarray(feats), xp.asarray(ids), xp.asarray(mask)

    def train_batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.data["train"]))
        for start in range(0, len(order), self.config.batch_size):
            yield self.batch("train", order[start:start + self.config.batch_size])

    def num_train_batches(self) -> int:
        return -(-len(self.data["train"]) // self.config.batch_size)

    def train_loss(self, batch) -> tuple[float, int]:
        feats, ids, mask = batch
        loss = self.model.loss(feats, ids, mask)
        return loss, self.model.criterion.count

    def backward(self) -> None:
        self.model.backward()

    # -- evaluation --------------------------------------------------------------------------
    def _split(self, split: str) -> str:
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        if split not in SPLITS:
            raise ValueError(f"split {split!r}; expected one of {SPLITS}")
        return split

    def _eval_indices(self, split: str) -> np.ndarray:
        n = len(self.data[split])
        return np.arange(min(n, self.config.max_eval) if self.config.max_eval else n)

    def generate(self, split: str, beam_size: int = 0, idx=None, batch_size: int = 500) -> list[str]:
        """Captions of scenes ``idx`` (default: the evaluated ones) of ``split``:
        greedy when ``beam_size`` is 0, else the best of a beam search."""
        split = self._split(split)
        idx = self._eval_indices(split) if idx is None else np.asarray(idx)
        out = []
        for start in range(0, len(idx), batch_size):
            feats = self.features[split][idx[start:start + batch_size]].astype(self.model.dtype, copy=False)
            out += self._decode(self.model.xp.asarray(feats), beam_size)
        return out

    def _decode(self, feats, beam_size: int) -> list[str]:
        if beam_size:
            hyps = [beams[0] for beams in self.model.beam_decode(feats, beam_size=beam_size,
                                                                 length_penalty=self.config.length_penalty)]
        else:
            hyps = self.model.greedy_decode(feats)
        return [" ".join(self.vocab.decode(h.tokens)) for h in hyps]

    def caption_images(self, images, beam_size: int = 0) -> list[str]:
        """Captions of raw canvases ``images`` (N, 20, 30) in [0, 1]."""
        feats = image_features(images, self.config.features, self.config.regions, self.config.align,
                               self.config.standardize).astype(self.model.dtype, copy=False)
        return self._decode(self.model.xp.asarray(feats), beam_size)

    def evaluate(self, split: str, batch_size: int = 500) -> dict[str, float]:
        split = self._split(split)
        idx = self._eval_indices(split)
        model = self.model
        total, count, correct = 0.0, 0, 0
        with model.evaluating():
            for start in range(0, len(idx), batch_size):
                feats, ids, mask = self.batch(split, idx[start:start + batch_size])
                loss = model.loss(feats, ids, mask)
                model._cache = None  # no backward follows
                n = model.criterion.count
                total, count = total + loss * n, count + n
                pred = model.last_logits.argmax(axis=-1)
                correct += int(((pred == ids) & mask).sum())
        references = [self.data[split].captions[i] for i in idx]
        out = {"loss": total / max(count, 1), "token_accuracy": correct / max(count, 1)}
        out.update(self._caption_metrics("", self.generate(split, 0, idx), references))
        if self.config.eval_beam_size:
            out.update(self._caption_metrics("beam_", self.generate(split, self.config.eval_beam_size, idx),
                                             references))
        return out

    @staticmethod
    def _caption_metrics(prefix: str, hypotheses: list[str], references: list[str]) -> dict[str, float]:
        out = {prefix + "exact_match": float(np.mean([h == r for h, r in zip(hypotheses, references)]))}
        bleu = corpus_bleu(hypotheses, references)
        if bleu is not None:
            out[prefix + "bleu"] = bleu
        return out


__all__ = ["CaptionTaskConfig", "CaptionTask", "corpus_bleu", "load_data", "model_config"]
