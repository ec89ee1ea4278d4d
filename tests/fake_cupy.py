"""A stand-in for CuPy made of NumPy, strict where CuPy is, for running the GPU tests on a CPU.

``tests/test_gpu_emulated.py`` installs it as ``cupy`` (and ``cupyx``) and runs every test of
``tests/test_gpu.py`` through it, with the CUDA kernels themselves run by ``cuda_emulator``.
What that proves without a GPU: the device path is a separate array type all the way
through (no NumPy fast path or native kernel takes a device array by mistake), and it
breaks CuPy's rules nowhere the fake can see. Its arrays (``FakeArray``, a NumPy
subclass) refuse what CuPy's refuse:

- a ufunc or operator mixing a device array with a host (NumPy) array, or writing into one;
- ``device[...] = host_array`` (CuPy: "non-scalar numpy.ndarray cannot be used for fill");
- and, inside ``cupyx.allow_synchronize(False)``, every step that makes the host wait for
  the device: ``float``/``int``/``bool``/``.item()``/``.get()``/``cupy.asnumpy``, boolean-mask
  indexing and ``nonzero`` (their result size lives on the device).

What it cannot see: NVRTC, streams, memory spaces, and CuPy functions that differ from
NumPy's in their details; those stay for the real GPU tests.
"""
from __future__ import annotations

import contextlib
import time
import types

import numpy as np


class DeviceSynchronized(RuntimeError):
    """Raised where CuPy's ``allow_synchronize(False)`` raises ``cupyx.DeviceSynchronized``."""


_sync_allowed = [True]
SYNCS: list[str] = []  # every host synchronisation, in order (tests may clear and read it)


def _check_sync(what: str) -> None:
    SYNCS.append(what)
    if not _sync_allowed[-1]:
        raise DeviceSynchronized(f"{what} waits for the device inside allow_synchronize(False)")


def _is_host_array(x) -> bool:
    return type(x) is np.ndarray and x.ndim > 0


def _wrap(x):
    if type(x) is np.ndarray:
        return x.view(FakeArray)
    if isinstance(x, np.generic) and not isinstance(x, np.dtype):  # CuPy gives 0-d device arrays
        return np.asarray(x).view(FakeArray)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _unwrap(x):
    return x.view(np.ndarray) if isinstance(x, FakeArray) else x


class _Flags:
    """CuPy's ``ndarray.flags``: ``c_contiguous``, ``f_contiguous`` and ``owndata``, read-only;
    no ``writeable`` (CuPy has none, so code that sets it breaks on a GPU)."""

    __slots__ = ("_flags",)

    def __init__(self, flags):
        object.__setattr__(self, "_flags", flags)

    c_contiguous = property(lambda self: self._flags.c_contiguous)
    f_contiguous = property(lambda self: self._flags.f_contiguous)
    owndata = property(lambda self: self._flags.owndata)

    def __setattr__(self, name, value):
        raise AttributeError(f"cupy flags have no settable {name!r} (CuPy arrays cannot be made read-only)")


class FakeArray(np.ndarray):
    """A 'device' array: NumPy memory behind CuPy's rules (see the module docstring)."""

    @property
    def flags(self):
        return _Flags(np.ndarray.flags.__get__(self))

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        for x in inputs + (out or ()):
            if _is_host_array(x):
                raise TypeError(f"{ufunc.__name__}: a host numpy.ndarray of shape {x.shape} meets a device "
                                "array (CuPy refuses to mix them: move it with cupy.asarray)")
        args = [_unwrap(x) for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(result, np.generic):  # CuPy's reductions give 0-d device arrays, not host scalars
            return np.asarray(result).view(FakeArray)
        return _wrap(result)

    def __setitem__(self, key, value):
        if _is_host_array(value):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill (CuPy: device[...] = host array)")
        if isinstance(key, FakeArray) and key.dtype == bool:
            _check_sync("boolean-mask assignment")
        super().__setitem__(key, value)

    def __getitem__(self, key):
        if isinstance(key, FakeArray) and key.dtype == bool:
            _check_sync("boolean-mask indexing")
        return super().__getitem__(key)

    def __float__(self):
        _check_sync("float()")
        return super().__float__()

    def __int__(self):
        _check_sync("int()")
        return super().__int__()

    def __index__(self):
        _check_sync("an index taken from a device array")
        return super().__index__()

    def __bool__(self):
        _check_sync("bool()")
        return super().__bool__()

    def item(self, *args):
        _check_sync(".item()")
        return super().item(*args)

    def tolist(self):
        _check_sync(".tolist()")
        return super().tolist()

    def nonzero(self):
        _check_sync(".nonzero()")
        return _wrap(self.view(np.ndarray).nonzero())

    def get(self):
        _check_sync(".get()")
        return self.view(np.ndarray).copy()


def _wrapping(fn):
    def call(*args, **kwargs):
        return _wrap(fn(*[_unwrap(a) for a in args], **{k: _unwrap(v) for k, v in kwargs.items()}))
    call.__name__ = getattr(fn, "__name__", "call")
    return call


class _Generator:
    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        return _wrapping(getattr(self._rng, name))


def asnumpy(a):
    if isinstance(a, FakeArray):
        _check_sync("cupy.asnumpy")
        return a.view(np.ndarray).copy()
    return np.asarray(a)


def asarray(a, dtype=None, order=None):
    return np.asarray(_unwrap(a), dtype=dtype, order=order).view(FakeArray)


def _flatnonzero(a):
    _check_sync("flatnonzero")
    return _wrap(np.flatnonzero(_unwrap(a)))


class _Device:
    id = 0

    def synchronize(self):
        pass


class _Event:
    """``cupy.cuda.Event``: here the host clock at record()."""

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, end):
    return 1e3 * (end.t - start.t)


class _MemoryPool:
    def used_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_POOL = _MemoryPool()


def _gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """``cupy.cublas.gemm``: out = alpha op(a) @ op(b) + beta out, with CuPy's checks."""
    for x in (a, b, out):
        if _is_host_array(x):
            raise TypeError("cupy.cublas.gemm: a host numpy.ndarray argument")
    assert a.ndim == b.ndim == 2 and a.dtype == b.dtype
    opa = _unwrap(a) if transa == "N" else _unwrap(a).T
    opb = _unwrap(b) if transb == "N" else _unwrap(b).T
    assert opa.shape[1] == opb.shape[0], (opa.shape, opb.shape)
    product = alpha * (opa @ opb)
    if out is None:
        return _wrap(np.asfortranarray(product))
    assert out.ndim == 2 and out.shape == product.shape and out.dtype == a.dtype
    target = _unwrap(out)
    if beta == 0:
        target[...] = product
    else:
        target[...] = product + beta * target
    return out


NOT_IN_CUPY_13 = frozenset({"put_along_axis"})  # NumPy functions CuPy 13 lacks (pyproject allows cupy >= 13)


def make_modules():
    """(cupy, cupyx) stand-ins, as modules."""
    cupy = types.ModuleType("cupy")
    cupy.__doc__ = "fake CuPy for tests (tests/fake_cupy.py)"

    def module_getattr(name):
        if name in NOT_IN_CUPY_13:
            raise AttributeError(f"module 'cupy' has no attribute {name!r} (not in CuPy 13, which rnnkit supports)")
        obj = getattr(np, name)
        if isinstance(obj, (type, np.ufunc, types.ModuleType)) or not callable(obj):
            return obj
        return _wrapping(obj)

    cupy.__getattr__ = module_getattr
    cupy.ndarray = FakeArray
    cupy.asarray = asarray
    cupy.asnumpy = asnumpy
    cupy.flatnonzero = _flatnonzero
    cupy.random = types.SimpleNamespace(default_rng=_Generator)
    cupy.get_default_memory_pool = lambda: _POOL
    cupy.cublas = types.SimpleNamespace(gemm=_gemm)
    cupy.__version__ = "fake"
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 0,
                                    driverGetVersion=lambda: 0,
                                    getDeviceProperties=lambda device: {"name": b"fake device (tests/fake_cupy.py)"})
    cupy.cuda = types.SimpleNamespace(Device=_Device, runtime=runtime, Event=_Event, get_elapsed_time=_elapsed_ms)

    cupyx = types.ModuleType("cupyx")
    cupyx.DeviceSynchronized = DeviceSynchronized

    @contextlib.contextmanager
    def allow_synchronize(allow: bool):
        _sync_allowed.append(bool(allow))
        try:
            yield
        finally:
            _sync_allowed.pop()

    def scatter_add(a, indices, values):
        for x in (a, indices, values):
            if _is_host_array(x):
                raise TypeError("cupyx.scatter_add: a host numpy.ndarray argument")
        np.add.at(_unwrap(a), _unwrap(indices), _unwrap(values))

    cupyx.allow_synchronize = allow_synchronize
    cupyx.scatter_add = scatter_add
    return cupy, cupyx


def install(monkeypatch, emulators):
    """Make this process's "GPU" the fake one for a test: ``cupy``/``cupyx`` importable as the
    stand-ins, rnnkit's backend seeing a device, and ``kernels.cuda`` launching the kernels
    that ``emulators`` (``cuda_emulator.Emulators``) built for the CPU, on grids small enough
    for threads: four "multiprocessors", and the softmax and norm kernels on 2 blocks of 2
    threads (their reduction trees are tested wider in test_cuda_kernels). Returns (cupy, cupyx)."""
    import sys

    from rnnkit import backend
    from rnnkit.kernels import cuda

    cupy, cupyx = make_modules()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setattr(backend, "_cupy", cupy)
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    monkeypatch.setattr(cuda, "_kernel", emulators.lookup)
    monkeypatch.setattr(cuda, "_cooperative_kernel", emulators.lookup)
    monkeypatch.setattr(cuda, "_device_limits", lambda: (4, 1 << 22))
    for name in ("ROWS_BLOCK", "ROWS_GRID", "SUMSQ_GRID", "SUMSQ_BLOCK"):
        monkeypatch.setattr(cuda, name, 2)
    return cupy, cupyx
