#!/usr/bin/env bash
# The whole GPU check of qmm in one call on a GPU machine (an H100 for the committed results):
# build, every CUDA test (C++, model, CLI, Python), compute-sanitizer, the issue-#3553 benchmark
# with the peers merged, the bit-width and dtype variants, and the model benchmark.
#   bash scripts/gpu_full_run.sh --debs DIR [--phase tests|perf|all] [--budget-ms X] [--no-peers] [--no-python]
# (one call may not fit 10 minutes: run --phase perf and --phase tests as two calls)
# Needs the .deb folder of scripts/gpu_check.sh; peers need bench/peers/install_wheels.sh first,
# Python needs nanobind/scikit-build-core on PYTHONPATH (same wheels). Results go to $OUT:
#   report.txt report.json report.png peers.json variants.txt model.txt model.json logs.tar.gz
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
DEBS="" BUDGET=100 PEERS=1 PYTHON=1 PHASE=all
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) DEBS=$2; shift 2 ;;
    --budget-ms) BUDGET=$2; shift 2 ;;
    --no-peers) PEERS=0; shift ;;
    --no-python) PYTHON=0; shift ;;
    --phase) PHASE=$2; shift 2 ;;
    *) echo "gpu_full_run: unknown argument $1" >&2; exit 2 ;;
  esac
done
step() { echo "== $* ($(date +%T))"; }
source scripts/gpu_build.sh
source scripts/gpu_sanitize.sh
PY_ARGS=()
if [ "$PYTHON" = 1 ] && python3 -c "import nanobind" 2>/dev/null; then PY_ARGS=(-DQMM_BUILD_PYTHON=ON); fi

step build
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv | tee "$LOGS/gpu.txt"
gpu_build "$LOGS" "$DEBS" "" "${PY_ARGS[@]}" || exit 1

if [ "$PHASE" != perf ]; then
step "ctest -L cuda"
(cd build-gpu && ctest -L cuda --output-on-failure -j4 >"$LOGS/ctest_cuda.log" 2>&1)
tail -6 "$LOGS/ctest_cuda.log"

step "compute-sanitizer memcheck and racecheck, the whole CUDA suite in shards"
gpu_sanitize "$LOGS" build-gpu/tests/qmm_cuda_tests 400

if [ "$PYTHON" = 1 ] && [ -d build-gpu/python/qmm ]; then
  step "pytest (CUDA and CPU), one file at a time so a crash in one does not hide the others"
  for f in python/tests/test_*.py; do
    (cd /tmp && PYTHONPATH="$OLDPWD/build-gpu/python:${PYTHONPATH:-}" timeout 200 python3 -m pytest -q -rs \
      -p no:cacheprovider "$OLDPWD/$f" >>"$LOGS/pytest.log" 2>&1)
    echo "$f: exit $? $(tail -1 "$LOGS/pytest.log")"
  done
fi

fi

if [ "$PHASE" != tests ]; then
PEER_ARGS=()
if [ "$PEERS" = 1 ]; then
  step peers
  PYTHONUNBUFFERED=1 timeout 480 python3 bench/peers/run_peers.py --preset qwen2.5-14b --m 1-16,32,64 ${PEER_LIST:+--peers $PEER_LIST} --peer-timeout "${PEER_TIMEOUT:-240}" \
    --budget-ms "$BUDGET" --json "$OUT/peers.json" >"$LOGS/peers.log" 2>&1
  tail -12 "$LOGS/peers.log"
  [ -s "$OUT/peers.json" ] && PEER_ARGS=(--peers "$OUT/peers.json")
fi

step "qmm bench (issue 3553 shapes, M=1-16,32,64)"
build-gpu/qmm bench --preset qwen2.5-14b --m 1-16,32,64 --budget-ms "$BUDGET" "${PEER_ARGS[@]}" \
  --json "$OUT/report.json" --plot "$OUT/report.png" >"$OUT/report.txt" 2>"$LOGS/bench.err"
cat "$OUT/report.txt"

step "variants: bits 2 and 8, bf16, 5120->13824"
{
  for args in "--bits 2" "--bits 8" "--dtype bfloat16" "--bits 4"; do
    echo "### qmm bench --shape 5120:13824 --m 1-16 $args"
    build-gpu/qmm bench --shape 5120:13824 --m 1-16 --budget-ms "$BUDGET" --no-dense -q $args
  done
} >"$OUT/variants.txt" 2>&1
grep -E "###|^\s+(1|8|16) " "$OUT/variants.txt"

step "qmm model --synthetic qwen2.5-14b"
timeout 300 build-gpu/qmm model --synthetic qwen2.5-14b --prefill 512 --m 1-8 --json "$OUT/model.json" \
  >"$OUT/model.txt" 2>"$LOGS/model.err"
cat "$OUT/model.txt"; tail -3 "$LOGS/model.err"
fi

tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
