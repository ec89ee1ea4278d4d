"""A small image-captioning set built from real pictures: scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 scanned 8x8 digits (0..16 grey levels) inside
the wheel, so nothing is downloaded. A *scene* is a 20x30 canvas of 2 rows x 3 columns of
10x10 slots; 1, 2 or 3 digits sit in distinct slots, each shifted by 0..2 pixels inside
its slot. Its caption follows from the digits and their slots alone (one right answer
per scene, so exact match is a fair metric):

====================================  ============================================
scene                                 caption
====================================  ============================================
one digit                             ``a seven at the top left``
two digits in a row                   ``a seven left of a two``
two digits in a column                ``a three above a five``
two digits on a diagonal              ``an eight above and right of a one``
two equal digits                      ``two sixes side by side`` /
                                      ``two sixes one above the other`` /
                                      ``two sixes on a diagonal``
three digits in one row               ``a row of four one nine``
three equal digits                    ``three nines``
three digits, exactly two equal       ``two fours and a one``
three other digits                    ``three digits four one nine`` (reading order)
====================================  ============================================

Split by source image: the 1,797 pictures are divided (stratified by digit class) into
train / validation / test pools, and each split's scenes are composed only from its own
pool, so no held-out scene shows a picture seen in training. Everything is drawn from
``seed``; each split has its own random stream, so asking for more training scenes
leaves the validation and test scenes unchanged.

:func:`image_features` is the fixed feature extractor: per slot, an 8x8 crop centred on
the slot's centre of intensity, described by its pixels, 2x2 average-pooled intensities
and/or HOG-like histograms of gradient orientations per 4x4 cell; as one vector per
canvas, or one row per slot (region features, for an encoder shared by the regions).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

ROWS, COLS, SLOT = 2, 3, 10                 # the canvas is ROWS*SLOT x COLS*SLOT = 20 x 30 pixels
DIGIT = 8                                   # load_digits pictures are 8 x 8
CANVAS_SHAPE = (ROWS * SLOT, COLS * SLOT)
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLURALS = ("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines")
ROW_NAMES = ("top", "bottom")
COL_NAMES = ("left", "middle", "right")
SPLITS = ("train", "valid", "test")
FEATURES = ("pixels+hog", "pixels", "pooled", "hog", "pooled+hog")
ORIENTATION_BINS = 8
HOG_CELL = 4
POOL = 2


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) float32 in [0, 1], labels (1797,) int64."""
    images, labels = _load_digits_cached()
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=1)
def _load_digits_cached():
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the captioning data set needs scikit-learn (its bundled digits): "
                          "pip install 'rnnkit[caption]'") from err
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


# ----------------------------------------------------------------------------- captions
def _a(word: str) -> str:
    return ("an " if word == "eight" else "a ") + word


def caption_for(digits, slots) -> str:
    """The caption of a scene: ``digits`` (k,) in 0..9 at ``slots`` (k,) of ``(row, col)`` (module table)."""
    digits, slots = [int(d) for d in digits], [tuple(int(v) for v in s) for s in slots]
    if not 1 <= len(digits) <= 3 or len(slots) != len(digits):
        raise ValueError(f"{len(digits)} digits at {len(slots)} slots; expected 1 to 3 of each")
    if len(set(slots)) != len(slots):
        raise ValueError(f"slots {slots} repeat; expected distinct slots")
    for r, c in slots:
        if not (0 <= r < ROWS and 0 <= c < COLS):
            raise ValueError(f"slot {(r, c)}; expected 0 <= row < {ROWS}, 0 <= col < {COLS}")
    order = sorted(range(len(digits)), key=lambda i: slots[i])  # reading order: row, then column
    digits, slots = [digits[i] for i in order], [slots[i] for i in order]
    words = [NAMES[d] for d in digits]
    if len(digits) == 1:
        (r, c), = slots
        return f"{_a(words[0])} at the {ROW_NAMES[r]} {COL_NAMES[c]}"
    if len(digits) == 2:
        (r0, c0), (r1, c1) = slots
        if digits[0] == digits[1]:
            how = "side by side" if r0 == r1 else "one above the other" if c0 == c1 else "on a diagonal"
            return f"two {PLURALS[digits[0]]} {how}"
        if r0 == r1:
            return f"{_a(words[0])} left of {_a(words[1])}"
        if c0 == c1:
            return f"{_a(words[0])} above {_a(words[1])}"
        side = "left" if c0 < c1 else "right"
        return f"{_a(words[0])} above and {side} of {_a(words[1])}"
    if len({r for r, _ in slots}) == 1:
        return "a row of " + " ".join(words)
    counts = np.bincount(digits, minlength=10)
    if counts.max() == 3:
        return f"three {PLURALS[digits[0]]}"
    if counts.max() == 2:
        twice, once = int(counts.argmax()), int(np.flatnonzero(counts == 1)[0])
        return f"two {PLURALS[twice]} and {_a(NAMES[once])}"
    return "three digits " + " ".join(words)


# ----------------------------------------------------------------------------- scenes
@dataclass
class CaptionSet:
    """The scenes of one split.

    images (N, 20, 30) float32 in [0, 1]; captions: N strings (space-separated words);
    digits (N, 3) int64 and slots (N, 3, 2) int64 (row, col), -1 past ``num_digits``;
    sources (N, 3) int64: index of each digit's picture in ``load_digits`` (-1 past
    ``num_digits``); num_digits (N,) int64.
    """

    images: np.ndarray
    captions: list[str]
    digits: np.ndarray
    slots: np.ndarray
    sources: np.ndarray
    num_digits: np.ndarray

    def __len__(self) -> int:
        return len(self.captions)

    def source_images(self) -> set[int]:
        """Indices (into ``load_digits``) of every picture used in this split."""
        return set(self.sources[self.sources >= 0].tolist())


def split_pictures(labels: np.ndarray, seed: int = 0, val_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Disjoint picture pools {"train", "valid", "test"}: index arrays, stratified by digit class."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction}, test_fraction {test_fraction}; expected fractions "
                         "in (0, 1) that leave a training pool")
    rng = np.random.default_rng([seed, 0])
    pools = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_test, n_val = int(round(test_fraction * len(idx))), int(round(val_fraction * len(idx)))
        if min(n_test, n_val, len(idx) - n_test - n_val) < 1:
            raise ValueError(f"digit {digit} has {len(idx)} pictures: too few for the fractions "
                             f"{val_fraction}, {test_fraction}")
        pools["test"].append(idx[:n_test])
        pools["valid"].append(idx[n_test:n_test + n_val])
        pools["train"].append(idx[n_test + n_val:])
    return {s: np.sort(np.concatenate(p)) for s, p in pools.items()}


def compose_scenes(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, n: int, rng,
                   digit_weights=(0.2, 0.4, 0.4), jitter: int = SLOT - DIGIT) -> CaptionSet:
    """``n`` scenes from the pictures ``pool`` (indices into ``images``), drawn with ``rng``.

    digit_weights: probability of 1, 2, 3 digits. Slots are distinct and uniform; each
    picture is drawn uniformly from the pool (with replacement across scenes, never twice
    in one scene) and placed at a random offset 0..``jitter`` inside its slot.
    """
    weights = np.asarray(digit_weights, dtype=np.float64)
    if weights.shape != (3,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"digit_weights {digit_weights!r}; expected 3 non-negative weights (1, 2, 3 digits)")
    if not 0 <= jitter <= SLOT - DIGIT:
        raise ValueError(f"jitter {jitter}; expected 0 <= jitter <= {SLOT - DIGIT}")
    if len(pool) < 3:
        raise ValueError(f"a pool of {len(pool)} pictures; need at least 3")
    canvases = np.zeros((n,) + CANVAS_SHAPE, dtype=np.float32)
    digits = np.full((n, 3), -1, dtype=np.int64)
    slots = np.full((n, 3, 2), -1, dtype=np.int64)
    sources = np.full((n, 3), -1, dtype=np.int64)
    counts = rng.choice(3, size=n, p=weights / weights.sum()) + 1
    captions = []
    for i, k in enumerate(counts):
        cells = rng.choice(ROWS * COLS, size=k, replace=False)
        pics = pool[rng.choice(len(pool), size=k, replace=False)]
        offsets = rng.integers(0, jitter + 1, size=(k, 2))
        for j in range(k):
            r, c = divmod(int(cells[j]), COLS)
            y, x = r * SLOT + offsets[j, 0], c * SLOT + offsets[j, 1]
            canvases[i, y:y + DIGIT, x:x + DIGIT] = images[pics[j]]
            digits[i, j], slots[i, j], sources[i, j] = labels[pics[j]], (r, c), pics[j]
        captions.append(caption_for(digits[i, :k], slots[i, :k]))
    return CaptionSet(canvases, captions, digits, slots, sources, counts.astype(np.int64))


def build_caption_data(seed: int = 0, num_train: int = 8000, num_val: int = 500, num_test: int = 1000,
                       val_fraction: float = 0.1, test_fraction: float = 0.2,
                       digit_weights=(0.2, 0.4, 0.4)) -> dict[str, CaptionSet]:
    """The three splits {"train", "valid", "test"} of composed scenes (module docstring).

    Deterministic in ``seed``; the pools are disjoint, so held-out scenes show only
    pictures never seen in training.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} {value!r}; expected an integer >= 1")
    images, labels = load_digit_images()
    pools = split_pictures(labels, seed, val_fraction, test_fraction)
    sizes = {"train": num_train, "valid": num_val, "test": num_test}
    return {s: compose_scenes(images, labels, pools[s], sizes[s], np.random.default_rng([seed, 1 + k]),
                              digit_weights)
            for k, s in enumerate(SPLITS)}


# ----------------------------------------------------------------------------- features
def slot_crops(images: np.ndarray, align: bool = True) -> np.ndarray:
    """One 8x8 crop per slot: canvases (N, 20, 30) -> (N, 6, 8, 8), slots in reading order.

    align=True: each crop is placed so that the slot's centre of intensity falls as close
    to the crop's centre as the slot allows (shift 0..2 per axis), which undoes most of
    the placement jitter, as MNIST centres its digits by centre of mass. An empty slot
    gives its middle crop. align=False: always the middle crop (rows and columns 1..8).
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[1:] != CANVAS_SHAPE:
        raise ValueError(f"images have shape {images.shape}; expected (N, {CANVAS_SHAPE[0]}, {CANVAS_SHAPE[1]})")
    N = len(images)
    regions = images.reshape(N, ROWS, SLOT, COLS, SLOT).transpose(0, 1, 3, 2, 4).reshape(N * ROWS * COLS, SLOT, SLOT)
    margin = SLOT - DIGIT
    if align:
        mass = regions.sum(axis=(1, 2))
        grid = np.arange(SLOT)
        safe = np.where(mass > 0, mass, 1.0)
        cy = np.where(mass > 0, (regions.sum(axis=2) @ grid) / safe, (SLOT - 1) / 2)
        cx = np.where(mass > 0, (regions.sum(axis=1) @ grid) / safe, (SLOT - 1) / 2)
        oy = np.clip(np.round(cy - (DIGIT - 1) / 2), 0, margin).astype(np.int64)
        ox = np.clip(np.round(cx - (DIGIT - 1) / 2), 0, margin).astype(np.int64)
    else:
        oy = ox = np.full(len(regions), margin // 2)
    rows = oy[:, None] + np.arange(DIGIT)[None, :]              # (M, 8)
    cols = ox[:, None] + np.arange(DIGIT)[None, :]
    crops = regions[np.arange(len(regions))[:, None, None], rows[:, :, None], cols[:, None, :]]
    return crops.reshape(N, ROWS * COLS, DIGIT, DIGIT)


def _pooled(crops: np.ndarray) -> np.ndarray:
    """2x2 average pooling: (M, 8, 8) -> (M, 16)."""
    M, H, W = crops.shape
    return crops.reshape(M, H // POOL, POOL, W // POOL, POOL).mean(axis=(2, 4)).reshape(M, -1)


def _hog(crops: np.ndarray) -> np.ndarray:
    """Histograms of unsigned gradient orientations per 4x4 cell: (M, 8, 8) -> (M, 2*2*8).

    Gradients by central differences; each pixel's magnitude is split linearly between
    the two nearest of 8 orientation bins over [0, pi) (so a small rotation changes the
    histogram smoothly); each cell's histogram is divided by ``sqrt(|h|^2 + 1)``, which
    evens out stroke contrast but leaves empty background cells near zero.
    """
    M, H, W = crops.shape
    padded = np.pad(crops, ((0, 0), (1, 1), (1, 1)))
    gx = (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]) / 2
    gy = (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]) / 2
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi) / np.pi * ORIENTATION_BINS - 0.5  # bin centres at 0..7
    low = np.floor(angle)
    frac = angle - low
    low = np.mod(low, ORIENTATION_BINS).astype(np.int64)
    high = np.mod(low + 1, ORIENTATION_BINS)
    # one weighted bincount per neighbouring bin over (crop, cell row, cell column, bin)
    gh, gw = H // HOG_CELL, W // HOG_CELL
    cell = (np.arange(H)[:, None] // HOG_CELL) * gw + np.arange(W)[None, :] // HOG_CELL
    cell = (np.arange(M)[:, None, None] * (gh * gw) + cell) * ORIENTATION_BINS
    size = M * gh * gw * ORIENTATION_BINS
    cells = (np.bincount((cell + low).ravel(), (magnitude * (1 - frac)).ravel(), minlength=size)
             + np.bincount((cell + high).ravel(), (magnitude * frac).ravel(), minlength=size))
    cells = cells.reshape(M, gh * gw, ORIENTATION_BINS)
    return (cells / np.sqrt((cells ** 2).sum(axis=-1, keepdims=True) + 1.0)).reshape(M, -1)


_PARTS = {"pixels": lambda crops: crops.reshape(len(crops), -1), "pooled": _pooled, "hog": _hog}


def _standardize(block: np.ndarray) -> np.ndarray:
    """Each row (one part of one slot) minus its mean, over its root-mean-square; all-zero rows stay zero."""
    centred = block - block.mean(axis=1, keepdims=True)
    rms = np.sqrt((centred ** 2).mean(axis=1, keepdims=True))
    return np.divide(centred, rms, out=np.zeros_like(centred), where=rms > 1e-12)


def image_features(images: np.ndarray, kind: str = "pixels+hog", regions: bool = False,
                   align: bool = True, standardize: bool = True) -> np.ndarray:
    """Fixed (not learned) features of canvases ``images`` (N, 20, 30) in [0, 1], float32.

    Each slot's 8x8 crop (:func:`slot_crops`, ``align``) is described by ``kind``:
    ``+``-joined parts among ``pixels`` (64 values), ``pooled`` (2x2 average pooling, 16)
    and ``hog`` (8-bin orientation histograms of 2x2 cells of 4x4 pixels, 32); the default
    ``pixels+hog`` gives 96 per slot. standardize: each part of each slot is centred and
    scaled to unit root-mean-square, and an empty slot stays all zero. (Raw pixels and
    histograms are all >= 0; a trained layer over such inputs drifts, under Adam's
    nearly sign-sized steps, toward units that measure only the amount of ink, and the
    digit is lost; see benchmarks/caption_results.md.) regions=True: (N, 6, F), one row per slot in reading
    order, for an encoder that shares its weights across regions; regions=False: the same
    numbers as one vector (N, 6*F).
    """
    parts = kind.split("+")
    if any(p not in _PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"feature kind {kind!r}; expected distinct parts among {tuple(_PARTS)} joined by '+', "
                         f"e.g. {FEATURES}")
    crops = slot_crops(images, align)
    N = len(crops)
    flat = crops.reshape(N * ROWS * COLS, DIGIT, DIGIT)
    blocks = [_PARTS[p](flat) for p in parts]
    if standardize:
        blocks = [_standardize(b) for b in blocks]
    out = np.concatenate(blocks, axis=1).reshape(N, ROWS * COLS, -1)
    return (out if regions else out.reshape(N, -1)).astype(np.float32)


def feature_shape(kind: str, regions: bool = False) -> tuple[int, ...]:
    """Shape of one image's :func:`image_features`: (6*F,), or (6, F) with regions."""
    return image_features(np.zeros((1,) + CANVAS_SHAPE), kind, regions).shape[1:]


__all__ = ["CaptionSet", "build_caption_data", "caption_for", "compose_scenes", "feature_shape", "image_features", "slot_crops",
           "load_digit_images", "split_pictures", "CANVAS_SHAPE", "FEATURES", "NAMES", "PLURALS"]
