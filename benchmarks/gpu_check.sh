#!/usr/bin/env bash
# GPU check of the attention column-sum kernel, in one command (see benchmarks/README.md):
#   1. the GPU tests (pytest -m gpu tests/cuda_kernels/test_gpu.py), when pytest is installed;
#   2. benchmarks/attention_kernel.py (its own float64 correctness checks, then the timings).
# Results go to $OUT when set (the device tool's output folder), else benchmarks/results/:
#   attention_kernel_<gpu>.json / .md, attention_gpu_tests.txt, attention_gpu_env.txt.
# Extra arguments are passed to the benchmark (e.g. --sizes 4096,16384 --dtypes bf16).
# Exit status: 0 when the tests and the benchmark checks all passed.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # the compiled kernels, not the interpreter
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print('device', torch.cuda.get_device_name(0))" 2>&1
} | tee "$OUT_DIR/attention_gpu_env.txt"

if "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pytest -m gpu tests/cuda_kernels/test_gpu.py -q -ra -p no:cacheprovider 2>&1 | tee "$OUT_DIR/attention_gpu_tests.txt"
  test "${PIPESTATUS[0]}" -eq 0 || status=1
else
  echo "pytest is not installed: GPU tests skipped; the benchmark's --check still compares" \
       "every method with a float64 reference" | tee "$OUT_DIR/attention_gpu_tests.txt"
fi

"$PY" benchmarks/attention_kernel.py --out-dir "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/attention_kernel_log.txt"
test "${PIPESTATUS[0]}" -eq 0 || status=1

echo "gpu_check: exit status $status; results in $OUT_DIR"
exit $status
