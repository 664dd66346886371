#!/usr/bin/env bash
# One call on a GPU machine: configure, build, run the CUDA tests (and, with --sanitize, the whole
# suite under compute-sanitizer's memcheck and racecheck) and the benchmark, writing logs to $OUT
# (or ./gpu-out).
#   scripts/gpu_check.sh [--debs DIR] [--sanitize] [--bench "ARGS"] [--tests REGEX]
# --debs DIR: Debian packages (.deb) to unpack for headers/libraries the machine lacks
#             (GoogleTest, CLI11, nlohmann-json); see README "GPU runs".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
DEBS="" SANITIZE=0 BENCH="" TESTS="" TARGETS="qmm_cuda_tests qmm_cli"
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) DEBS=$2; shift 2 ;;
    --sanitize) SANITIZE=1; shift ;;
    --bench) BENCH=$2; shift 2 ;;
    --tests) TESTS=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
source scripts/gpu_build.sh
source scripts/gpu_sanitize.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
gpu_build "$OUT" "$DEBS" "$TARGETS" || exit 1
status=0
if [ -x build-gpu/tests/qmm_cuda_tests ]; then
  FILTER=()
  [ -n "$TESTS" ] && FILTER=(--gtest_filter="$TESTS")
  build-gpu/tests/qmm_cuda_tests "${FILTER[@]}" >"$OUT/cuda_tests.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran|Failure" "$OUT/cuda_tests.log" | head -40
  if [ "$SANITIZE" = 1 ]; then
    gpu_sanitize "$OUT" build-gpu/tests/qmm_cuda_tests || status=1
  fi
fi
if [ -n "$BENCH" ] && [ -x build-gpu/qmm ]; then
  # shellcheck disable=SC2086
  build-gpu/qmm bench $BENCH 2>"$OUT/bench.err" | tee "$OUT/bench.txt"
fi
exit $status
