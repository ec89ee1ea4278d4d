"""What the native-kernel tests share: running under a thread count and instruction set,
and running a piece of work from two Python threads at once."""
from __future__ import annotations

import contextlib
import os
import threading

from rnnkit.kernels import native


@contextlib.contextmanager
def native_settings(threads=None, isa=None):
    """``RNNKIT_NUM_THREADS = threads`` and ``native.force_isa(isa)`` inside the block (None:
    leave as is); both restored after it."""
    env_before = os.environ.get("RNNKIT_NUM_THREADS")
    if threads is not None:
        os.environ["RNNKIT_NUM_THREADS"] = str(threads)
    if isa is not None:
        native.force_isa(isa)
    try:
        yield
    finally:
        native.force_isa(None)
        if threads is not None:
            if env_before is None:
                os.environ.pop("RNNKIT_NUM_THREADS", None)
            else:
                os.environ["RNNKIT_NUM_THREADS"] = env_before


def run_in_two_threads(work, repeats: int) -> list:
    """``work()`` ``repeats`` times in each of two Python threads at once; every result, in
    no particular order. An exception in either thread fails the caller's test."""
    results, errors = [], []

    def loop():
        try:
            for _ in range(repeats):
                results.append(work())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 2 * repeats
    return results
