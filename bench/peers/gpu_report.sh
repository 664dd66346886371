#!/usr/bin/env bash
# One call on the GPU machine: build qmm, check `qmm bench` there (QmmCliCuda tests), run the peers
# and `qmm bench` with the peers merged, writing the report to $OUT (or ./gpu-report):
#   info.txt  bench_tests.log  peers.json  peers.log  report.txt  report.json  report.csv  report.png
#
#   bash bench/peers/gpu_report.sh [--debs DIR] [--m LIST] [--preset NAME] [--budget-ms X] [--no-peers]
#
# --debs DIR: Debian packages to unpack for the headers the machine lacks (CLI11, nlohmann-json,
# GoogleTest), as scripts/gpu_check.sh does. Peers need the wheels of bench/peers/fetch_wheels.sh
# installed first (bench/peers/install_wheels.sh; README "qmm bench", "Peers on the GPU machine").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-report}
mkdir -p "$OUT"
DEBS="" M="1-16,32,64" PRESET="qwen2.5-14b" BUDGET=200 PEERS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) DEBS=$2; shift 2 ;;
    --m) M=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --budget-ms) BUDGET=$2; shift 2 ;;
    --no-peers) PEERS=0; shift ;;
    *) echo "gpu_report: unknown argument $1" >&2; exit 2 ;;
  esac
done
BUILD=build-gpu
source scripts/gpu_build.sh
BUILD_LOGS=$(mktemp -d)
gpu_build "$BUILD_LOGS" "$DEBS" "qmm_cli qmm_cli_tests" || exit 1
cat "$BUILD_LOGS/configure.log" "$BUILD_LOGS/build.log" >"$OUT/bench_tests.log"
[ -x "$BUILD/qmm" ] || { echo "gpu_report: qmm did not build"; exit 1; }

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv >"$OUT/info.txt" 2>&1
"$BUILD/qmm" info >>"$OUT/info.txt" 2>&1
cat "$OUT/info.txt"
if [ -x "$BUILD/tests/qmm_cli_tests" ]; then
  "$BUILD/tests/qmm_cli_tests" --gtest_filter='QmmCliCuda.*:BenchFlags.*' >>"$OUT/bench_tests.log" 2>&1
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure" "$OUT/bench_tests.log" | head -20
fi

PEER_ARGS=()
if [ "$PEERS" = 1 ]; then
  PYTHONUNBUFFERED=1 python3 bench/peers/run_peers.py --preset "$PRESET" --m "$M" --budget-ms "$BUDGET" \
    --json "$OUT/peers.json" >"$OUT/peers.log" 2>&1
  tail -25 "$OUT/peers.log"
  [ -s "$OUT/peers.json" ] && PEER_ARGS=(--peers "$OUT/peers.json")
fi
"$BUILD/qmm" bench --preset "$PRESET" --m "$M" --budget-ms "$BUDGET" "${PEER_ARGS[@]}" \
  --json "$OUT/report.json" --csv "$OUT/report.csv" --plot "$OUT/report.png" >"$OUT/report.txt" 2>>"$OUT/peers.log"
status=$?
cat "$OUT/report.txt"
exit $status
