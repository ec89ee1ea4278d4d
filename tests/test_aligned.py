"""``backend.empty_aligned`` / ``ascontiguous_aligned``: the loop buffers start on a cache
line (64 bytes), so the native kernels' 64-byte vectors never straddle two lines."""
import numpy as np
import pytest

from rnnkit import LSTM, backend, kernels


@pytest.mark.parametrize("shape,dtype", [((33, 7, 129), np.float32), ((5, 3000), np.float64), ((16385,), np.float32)])
def test_big_arrays_start_on_a_cache_line(shape, dtype):
    for _ in range(20):  # whatever offset malloc hands out
        a = backend.empty_aligned(np, shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0
        a[...] = 1  # the whole extent is writable memory of its own
        assert a.sum() == a.size


def test_small_arrays_are_plain():
    a = backend.empty_aligned(np, (4, 5), np.float32)
    assert a.shape == (4, 5) and a.base is None  # no over-allocated buffer behind it


def test_ascontiguous_aligned_copies_only_what_it_must():
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 40, 30)).astype(np.float32)
    for view in (big, big[::-1], big[:, :, :20], big.transpose(1, 0, 2), big[1:]):
        out = backend.ascontiguous_aligned(view)
        np.testing.assert_array_equal(out, view)
        assert out.flags.c_contiguous and out.ctypes.data % 64 == 0
    aligned = backend.ascontiguous_aligned(big[::-1])
    assert backend.ascontiguous_aligned(aligned) is aligned  # already right: no copy
    as64 = backend.ascontiguous_aligned(aligned, np.float64)
    assert as64.dtype == np.float64 and as64.ctypes.data % 64 == 0
    np.testing.assert_array_equal(as64, aligned.astype(np.float64))


def test_the_layer_hands_the_native_loop_aligned_buffers():
    """The cache of a float32 layer's forward: gates, states and cell states on a line."""
    layer = LSTM(8, 64, dtype=np.float32, seed=0)
    x = np.random.default_rng(1).standard_normal((16, 40, 8)).astype(np.float32)
    with kernels.using("native" if kernels.native.available() else "fused"):
        layer.forward(x)
    cache = layer._cache[0][0][0]
    for name in ("gates", "Hs", "Cs", "tanh_c"):
        assert getattr(cache, name).ctypes.data % 64 == 0, name
