#!/usr/bin/env bash
# The GPU checks in one prepared run, for a machine with an NVIDIA GPU, CuPy and PyTorch
# (a device session's run, or any such machine): environment, the GPU tests, then the
# GPU benchmark. Everything it prints also lands in $OUT (default: ./device_out).
#
#   OUT=/tmp/out bash benchmarks/device_check.sh            # all of it
#   QUICK=1 bash benchmarks/device_check.sh                 # the benchmark on S only
#
# rnnkit is used from the checkout (PYTHONPATH=src, no install, no native build needed:
# the CPU side of the comparisons then runs the NumPy kernels). Each part has its own time
# limit, so one that hangs cannot eat the others' time; the script fails when a test fails.
# The limits add up to 510 s (90 + 210 + 210), inside one 600 s device command with room for
# the start; the benchmark writes its JSON after every case, so a cut-short run keeps what it
# measured. The persistent kernels' cooperative launch needs the CUDA toolkit's libcudadevrt
# (a pip-only CuPy without the toolkit falls back to the GEMM loop, and their tests fail).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import cupy, numpy, sys; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" 2>&1
} 2>&1 | tee "$OUT/env.txt"
# no network on a device machine: stop at once, saying what is missing, rather than midway
if ! "$PY" -c "import pytest, safetensors, numpy, cupy, torch" 2>>"$OUT/env.txt"; then
  echo "missing a module (pytest, safetensors, numpy, cupy, torch): see $OUT/env.txt" | tee -a "$OUT/env.txt"
  exit 3
fi

# the persistent kernels first, on their own short limit: a fault there (a hang at the grid
# barrier, say) must not take the other tests' or the benchmark's time
timeout "${PERSISTENT_LIMIT:-90}" "$PY" -m pytest -q -p no:cacheprovider -x -rs -k persistent \
  tests/test_gpu.py 2>&1 | tee "$OUT/tests_persistent.log"
persistent_rc=${PIPESTATUS[0]}
timeout "${TEST_LIMIT:-210}" "$PY" -m pytest -q -p no:cacheprovider -rs -k "not persistent" \
  tests/test_gpu.py tests/test_cuda_kernels.py 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}

frameworks=rnnkit,rnnkit_persistent,torch,reference
if [ "$persistent_rc" != 0 ]; then
  frameworks=rnnkit,torch,reference  # benchmark without the variant that failed its tests
fi
if [ -n "${QUICK:-}" ]; then
  bench_args=(--configs S --rounds 10)
else
  bench_args=()
fi
timeout "${BENCH_LIMIT:-210}" "$PY" benchmarks/bench_gpu.py "${bench_args[@]}" --frameworks "$frameworks" \
  --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "persistent tests exit status $persistent_rc; tests $tests_rc; benchmark $bench_rc" | tee -a "$OUT/env.txt"
[ "$persistent_rc" = 0 ] && [ "$tests_rc" = 0 ]
