#!/usr/bin/env bash
# Every GPU check of the project in one command, within about 8 minutes on one H100 / H200
# (benchmarks/gpu_suite.py; see benchmarks/README.md "GPU check"):
#   env, latency (480x270 frame: PyTorch eager / fp16 / bf16 / CUDA graphs, TensorRT and
#   onnxruntime-gpu when importable, vs the compute bound), CUDA NIQE vs numpy NIQE, adaptation
#   s/step, the attention kernel tests and benchmark, one adaptation at the paper's budget.
# Results go to $OUT when set (the device tool's output folder), else benchmarks/results/:
#   gpu_check.json / gpu_check.md, gpu_check_<section>.json, and the files of the scripts it runs.
# Weights: if .gpu_carry/ exists (python benchmarks/gpu_carry.py pack, on a machine that has them),
# it is unpacked to a temporary folder and used (backbone package on PYTHONPATH, ADASSR_CACHE_DIR).
# Arguments go to gpu_suite.py, e.g. --cpu-smoke (tiny CPU run), --only latency,niqe, --budget-s 300.
# GPU_CHECK_BUNDLE=1 with $OUT set (the device tool, which returns at most 8 files): the results are
# written to a temporary folder and packed into $OUT/gpu_results.tgz, with gpu_check.md and
# gpu_check.json beside it, after every section and at exit (also when stopped by a signal): a run
# killed outright (SIGKILL at the device tool's limit) keeps the sections it finished.
# Sections and the scripts they start run in their own process groups, listed (with their start
# times) in $TMPDIR/adassr_gpu_check.pgids while they run; the groups a killed run left running are
# killed when the next run starts and when a run ends (gpu_suite.py --kill-stale).
# Exit status: 0 when every section that ran passed (absent libraries are skips, not failures).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
BUNDLE_TO=""
if [ "${GPU_CHECK_BUNDLE:-0}" = 1 ] && [ -n "${OUT:-}" ]; then
  BUNDLE_TO="$OUT"
  BUNDLE_ROOT="$(mktemp -d)"
  OUT_DIR="$BUNDLE_ROOT/gpu_results"
fi
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # the compiled kernels, not the interpreter
CARRY_DEST=""

kill_sections() {  # process groups still running (a killed run cannot stop its own); only ours, by start time
  "$PY" benchmarks/gpu_suite.py --kill-stale
}
kill_sections

finish() {
  kill_sections
  if [ -n "$BUNDLE_TO" ]; then
    cp "$OUT_DIR"/gpu_check.md "$OUT_DIR"/gpu_check.json "$BUNDLE_TO"/ 2>/dev/null
    # to a temporary name first: a KILL during this tar must not replace the last good bundle. Exit
    # status 1 is GNU tar's "a file changed as we read it" (a section still stopping writes its files):
    # the archive is complete, so it is kept; 2 is a failure, and the last good bundle stays.
    tar czf "$BUNDLE_TO/gpu_results.tgz.tmp" -C "$BUNDLE_ROOT" gpu_results
    if [ $? -le 1 ]; then
      mv -f "$BUNDLE_TO/gpu_results.tgz.tmp" "$BUNDLE_TO/gpu_results.tgz"
    else
      rm -f "$BUNDLE_TO/gpu_results.tgz.tmp"
    fi
    rm -rf "$BUNDLE_ROOT"
  fi
  [ -z "$CARRY_DEST" ] || rm -rf "$CARRY_DEST"
}
trap finish EXIT

if [ -f .gpu_carry/carry.json ]; then
  CARRY_DEST="$(mktemp -d)"
  if "$PY" benchmarks/gpu_carry.py unpack "$CARRY_DEST" > "$OUT_DIR/gpu_carry_unpack.txt" 2>&1; then
    export PYTHONPATH="$CARRY_DEST/site:$PYTHONPATH"
    export ADASSR_CACHE_DIR="$CARRY_DEST/cache"
    export ADASSR_CARRY_REPORT="$CARRY_DEST/carry_report.json"
  else
    echo "gpu_check: .gpu_carry could not be unpacked (see $OUT_DIR/gpu_carry_unpack.txt); using the machine's own weights"
  fi
fi

# in the background, so a TERM (e.g. from `timeout`) reaches the trap at once: the suite is stopped
# and what it wrote so far (gpu_check.json is rewritten after every section) is still packed
BUNDLE_ARGS=()
[ -z "$BUNDLE_TO" ] || BUNDLE_ARGS=(--bundle-to "$BUNDLE_TO")
"$PY" benchmarks/gpu_suite.py --out "$OUT_DIR" "${BUNDLE_ARGS[@]}" "$@" &
SUITE_PID=$!
trap 'kill -TERM "$SUITE_PID" 2>/dev/null; sleep 2; exit 143' TERM INT
wait "$SUITE_PID"
status=$?
if [ -n "$BUNDLE_TO" ]; then where="$BUNDLE_TO"; else where="$OUT_DIR"; fi
echo "gpu_check: exit status $status; results in $where"
exit $status
