"""Every test of ``tests/test_gpu.py``, on the CPU: CuPy replaced by ``fake_cupy`` (NumPy memory
behind CuPy's rules) and the CUDA kernels run by ``cuda_emulator`` (the ``.cu`` text built for
the CPU).

This is what can be known about the GPU path without a GPU, and it runs in CI: the device
arrays stay a separate type from the embedding to the optimizer (no NumPy fast path or
native kernel takes one), nothing mixes host and device arrays or waits for the device
inside the time loop, and the kernels' results flow through whole layers, language-model
steps and the trainer as the NumPy path's do. NVRTC, CuPy's own functions and the timing
are left to ``tests/test_gpu.py`` on a real device.
"""
from __future__ import annotations

import pytest

from rnnkit import backend

import test_gpu
from cuda_emulator import Emulators, compiler
import fake_cupy
from test_gpu import (  # collected here, run against the fake device
    no_silent_fallback,
    test_a_cooperative_grid_cupy_would_shrink_is_not_launched,
    test_a_persistent_kernel_that_fails_falls_back_to_the_gemm_loop_and_says_so,
    test_cell_math_is_one_launch_per_step,
    test_device_kernels_match_the_reference,
    test_each_layer_on_the_gpu_matches_the_cpu,
    test_every_task_trains_on_the_gpu_as_on_the_cpu,
    test_layer_on_the_gpu_matches_the_cpu,
    test_lm_training_steps_on_the_gpu_match_the_cpu,
    test_persistent_lstm_falls_back_where_it_does_not_fit,
    test_persistent_loops_match_the_cpu,
    test_persistent_plan_splits_units_over_the_multiprocessors,
    test_the_output_layer_is_one_softmax_launch_per_block,
    test_time_loop_never_waits_for_the_device,
    test_trainer_on_the_gpu_learns_and_writes_host_checkpoints,
    test_unmasked_directions_run_the_gpu_loop_and_padded_ones_the_generic,
)

FIXTURES = (no_silent_fallback,)
COLLECTED = (test_a_cooperative_grid_cupy_would_shrink_is_not_launched,
             test_a_persistent_kernel_that_fails_falls_back_to_the_gemm_loop_and_says_so,
             test_cell_math_is_one_launch_per_step, test_device_kernels_match_the_reference,
             test_each_layer_on_the_gpu_matches_the_cpu,
             test_every_task_trains_on_the_gpu_as_on_the_cpu,
             test_layer_on_the_gpu_matches_the_cpu, test_lm_training_steps_on_the_gpu_match_the_cpu,
             test_persistent_lstm_falls_back_where_it_does_not_fit, test_persistent_loops_match_the_cpu,
             test_persistent_plan_splits_units_over_the_multiprocessors,
             test_the_output_layer_is_one_softmax_launch_per_block,
             test_time_loop_never_waits_for_the_device, test_trainer_on_the_gpu_learns_and_writes_host_checkpoints,
             test_unmasked_directions_run_the_gpu_loop_and_padded_ones_the_generic)

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler to run the kernels on the CPU")


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    return Emulators(tmp_path_factory.mktemp("cuda_cpu"), collapse=True)


@pytest.fixture(autouse=True)
def fake_device(monkeypatch, emulators):
    cupy, cupyx = fake_cupy.install(monkeypatch, emulators)
    monkeypatch.setattr(test_gpu, "cp", cupy)
    monkeypatch.setattr(test_gpu, "cupyx", cupyx)
    yield


def test_the_fake_device_keeps_cupys_rules():
    """The fake refuses what CuPy refuses, so the tests above could fail the way the GPU would."""
    import numpy as np

    cp, cupyx = test_gpu.cp, test_gpu.cupyx
    a = cp.zeros((2, 3), np.float32)
    assert backend.get_array_module(a) is cp and backend.get_array_module(np.zeros(2)) is np
    with pytest.raises(TypeError, match="meets a device array"):
        a + np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[...] = np.ones((2, 3), np.float32)
    a[...] = 2.0  # a scalar is fine, as in CuPy
    with cupyx.allow_synchronize(False):
        b = a * 3
        with pytest.raises(cupyx.DeviceSynchronized, match="float"):
            float(b.sum())
        with pytest.raises(cupyx.DeviceSynchronized, match="asnumpy"):
            cp.asnumpy(b)
        with pytest.raises(cupyx.DeviceSynchronized, match="boolean-mask"):
            b[b > 1]
    assert float(b.sum()) == 36.0


def test_every_gpu_test_runs_here_too():
    """A test added to test_gpu.py and not imported above would run on a GPU only."""
    names = {name for name in vars(test_gpu) if name.startswith("test_") and callable(getattr(test_gpu, name))}
    assert names == {t.__name__ for t in COLLECTED}


def test_a_training_step_waits_for_the_device_seven_times():
    """Each host synchronisation stalls the queue of launches. An LM training step (two LSTM
    layers, the fused output layer, clipping, SGD) waits for: the embedding's id range (2),
    the input's finiteness check, the targets' range check and count, the loss, and the
    gradient norm; not per parameter, not per step of the time loop."""
    import numpy as np

    from rnnkit.bench import _build_rnnkit

    cp = test_gpu.cp
    rng = np.random.default_rng(0)
    backend.set_device("cuda")  # the model's parameters are made on the device
    try:
        make_train, _ = _build_rnnkit("lstm", 1000, 16, 16, 2, seed=0)
        step = make_train(cp.asarray(rng.integers(0, 1000, (4, 7))), cp.asarray(rng.integers(0, 1000, (4, 7))))
    finally:
        backend.set_device("cpu")
    step()  # the first step also starts the carried state
    fake_cupy.SYNCS.clear()
    step()
    assert sorted(fake_cupy.SYNCS) == sorted(["int()", "int()", "bool()", "bool()", "int()", "float()", "float()"]), \
        fake_cupy.SYNCS
