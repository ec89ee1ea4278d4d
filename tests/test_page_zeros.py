"""Gradients whose unwritten pages take no memory: backend.page_zeros / zero_, the native
scale that leaves zero pages unwritten, and the Embedding that uses them.

What an array holds in memory is read page by page from /proc/self/pagemap (exact, not the
noisy process-wide resident set), so the tests that look at pages run on Linux only.
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import pytest

from rnnkit import backend, kernels, optim
from rnnkit.layers import Embedding
from rnnkit.models import LanguageModel, LanguageModelConfig

PAGE = 4096


def resident_kib(array) -> int:
    """KiB of ``array``'s pages this process holds on its own (/proc/self/pagemap: present and
    exclusively mapped). A page only read maps the kernel's shared zero page and does not count,
    as in the resident set."""
    start, n = array.ctypes.data, (array.nbytes + PAGE - 1) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        entries = np.frombuffer(f.read(8 * n), dtype=np.uint64)
    own = ((entries >> np.uint64(63)) & (entries >> np.uint64(56)) & np.uint64(1)).sum()
    return int(own) * PAGE // 1024


def _pagemap_works() -> bool:
    if not backend._PAGE_ZEROS:
        return False
    try:
        probe = backend.page_zeros((backend.PAGE_ZEROS_MIN_BYTES // 4,), np.float32)
        probe[0] = 1
        return resident_kib(probe) == PAGE // 1024
    except OSError:
        return False


linux_only = pytest.mark.skipif(not _pagemap_works(), reason="needs page_zeros' mappings (Linux) and /proc/self/pagemap")


def test_page_zeros_is_a_plain_zeroed_array():
    g = backend.page_zeros((7000, 650), np.float32)  # 17 MiB: over PAGE_ZEROS_MIN_BYTES
    assert (backend._whole_mapping(g) is not None) == backend._PAGE_ZEROS
    assert type(g) is np.ndarray and g.shape == (7000, 650) and g.dtype == np.float32
    assert g.flags.c_contiguous and g.flags.writeable
    assert not g.any()
    g[3, 5] = 2.5
    assert g.sum() == 2.5
    backend.zero_(g)
    assert not g.any()
    g += 1  # still writable after the pages were handed back
    assert g.sum() == g.size


def test_small_arrays_are_ordinary_zeros_and_zero_writes_them():
    g = backend.page_zeros((10, 3), np.float64)
    assert g.dtype == np.float64 and not g.any()
    assert backend._whole_mapping(g) is None
    g[...] = 7
    backend.zero_(g)
    assert not g.any()


def test_only_arrays_from_the_threshold_up_are_mapped():
    # config S's (10000, 100) embedding gradient (4 MiB) stays dense: its page faults cost more than
    # the memory it would keep unused; config M's (10000, 650), 25 MiB, is mapped
    n = backend.PAGE_ZEROS_MIN_BYTES // 4
    assert backend._whole_mapping(backend.page_zeros((n - 1,), np.float32)) is None
    assert (backend._whole_mapping(backend.page_zeros((n,), np.float32)) is not None) == backend._PAGE_ZEROS
    assert backend._whole_mapping(Embedding(10000, 100, seed=0).grads["weight"]) is None
    assert (backend._whole_mapping(Embedding(10000, 650, seed=0).grads["weight"]) is not None) == backend._PAGE_ZEROS


def test_zero_on_a_view_writes_zeros_and_leaves_the_rest():
    g = backend.page_zeros((4096, 1024), np.float32)
    g[...] = 1
    part = g[:10]
    assert backend._whole_mapping(part) is None  # a part of the mapping is not the whole of it
    backend.zero_(part)
    assert not part.any() and g[10:].all()


@linux_only
def test_untouched_pages_are_not_resident_and_zero_hands_them_back():
    g = backend.page_zeros((4096, 1024), np.float32)  # 16 MiB, 4 KiB a row
    assert resident_kib(g) == 0
    assert float(np.dot(g.ravel(), g.ravel())) == 0.0  # reading maps the kernel's zero page only
    assert resident_kib(g) == 0
    rows = np.array([0, 17, 900, 4095])
    g[rows] += 1.0
    assert resident_kib(g) == 4 * PAGE // 1024
    g[...] = 3
    assert resident_kib(g) == g.nbytes // 1024
    backend.zero_(g)
    assert resident_kib(g) == 0 and not g.any()


@linux_only
@pytest.mark.skipif(not kernels.native.available(), reason="native kernels not built")
def test_native_scale_leaves_zero_pages_unwritten():
    g = backend.page_zeros((4096, 1024), np.float32)
    g[[5, 1000]] = 2.0
    kernels.native.scale(g, 0.125)
    assert resident_kib(g) == 2 * PAGE // 1024
    assert g[5].tolist() == [0.25] * 1024 and g.sum() == 0.25 * 2048


@pytest.mark.skipif(not kernels.native.available(), reason="native kernels not built")
@pytest.mark.parametrize("a", [0.37, 1.0, 0.0, -0.0, -2.5, np.inf, -np.inf, np.nan, 1e-30])
def test_native_scale_matches_numpy_bit_for_bit(a):
    rng = np.random.default_rng(3)
    y = rng.standard_normal(4 * 1024 + 517).astype(np.float32)
    y[1024:3072] = 0.0  # at least one whole page of zeros, wherever the array starts
    y[2100:2200] = -0.0
    y[4000] = np.nan
    y[7] = np.inf
    y[9] = 0.0
    y = y[1:]  # an offset start: pages do not begin at element 0
    with np.errstate(invalid="ignore"):
        expected = y * np.float32(a)
    got = y.copy()
    kernels.native.scale(got, float(a))
    assert got.tobytes() == expected.tobytes()


def test_embedding_gradient_is_page_backed_and_correct_across_zero_grad():
    emb = Embedding(32768, 128, seed=0)  # 16 MiB of gradient
    grad = emb.grads["weight"]
    assert backend._whole_mapping(grad) is not None or not backend._PAGE_ZEROS
    ids = np.array([[1, 5, 5], [32767, 0, 1]])
    dy = np.random.default_rng(1).standard_normal((2, 3, 128)).astype(np.float32)
    expected = np.zeros((32768, 128), np.float32)
    np.add.at(expected, ids.reshape(-1), dy.reshape(-1, 128))
    for _ in range(2):
        emb.forward(ids)
        emb.backward(dy)
        np.testing.assert_allclose(emb.grads["weight"], expected, rtol=1e-6, atol=1e-7)
        emb.zero_grad()
        assert not emb.grads["weight"].any()
    assert emb.grads["weight"] is grad  # the same array throughout: tied and shared gradients hold on to it


def test_embedding_to_float64_keeps_a_page_backed_gradient():
    emb = Embedding(16384, 128, seed=0).to(dtype=np.float64)  # 8 MiB in float32, 16 in float64
    g = emb.grads["weight"]
    assert g.dtype == np.float64 and not g.any()
    assert (backend._whole_mapping(g) is not None) == backend._PAGE_ZEROS
    clone = copy.deepcopy(emb)  # a deep copy is an ordinary array with the same values
    clone.grads["weight"][0, 0] = 1
    assert g[0, 0] == 0


@linux_only
@pytest.mark.skipif(sys.byteorder != "little", reason="page arithmetic assumes the usual layout")
@pytest.mark.skipif(not kernels.native.available(),
                    reason="native kernels not built: NumPy's clip (g *= scale) writes every page")
def test_a_language_model_step_keeps_only_the_batch_rows_of_the_embedding_gradient_resident():
    V, E = 16384, 256  # 1 KiB a row: four rows a page; 16 MiB
    config = LanguageModelConfig(vocab_size=V, embedding_size=E, hidden_size=32, cell="gru", tie_weights=False)
    model = LanguageModel(config, seed=0)
    opt = optim.SGD(model, lr=0.1)
    rng = np.random.default_rng(0)
    grad = model.encoder.grads["weight"]
    for _ in range(3):
        ids = rng.integers(0, 64, size=(4, 8))  # ids < 64: the first 16 pages of the gradient
        targets = rng.integers(0, V, size=(4, 8))
        opt.zero_grad()
        model.loss_and_backward(ids, targets)
        optim.clip_grad_norm(model, 0.01)  # clipping scales every gradient
        opt.step()
        assert 0 < resident_kib(grad) <= 16 * PAGE // 1024
        assert grad[:64].any() and not grad[64:].any()
