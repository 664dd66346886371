# Sourced by the GPU-machine scripts (scripts/gpu_check.sh, scripts/gpu_full_run.sh): compute-sanitizer's
# memcheck and racecheck over the whole CUDA test binary, each split into gtest shards that run side by
# side: the whole suite, because filtered runs had left a kernel family out of racecheck (bench/NOTES.md
# v18), and in shards, because one racecheck process over the suite takes too long for a device call.
# Sharded, both tools took about 3.5 minutes on the H100 machine (16 cores).
#   gpu_sanitize LOG_DIR TEST_BINARY [LIMIT_S]
# Prints one line per tool and shard; returns non-zero if any shard reported an error or a hazard, failed
# a test or ran past LIMIT_S seconds (default 480). Logs: LOG_DIR/sanitize_<tool>_<shard>.log.
gpu_sanitize() {
  local logs=$1 binary=$2 limit=${3:-480}
  local -a pids=() names=()
  local tool shards i
  for tool in memcheck racecheck; do
    shards=3
    [ "$tool" = racecheck ] && shards=5  # racecheck is the slower tool
    for ((i = 0; i < shards; ++i)); do
      GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i timeout "$limit" compute-sanitizer --tool "$tool" \
        --error-exitcode 3 "$binary" >"$logs/sanitize_${tool}_$i.log" 2>&1 &
      pids+=($!)
      names+=("${tool}_$i")
    done
  done
  local status=0 rc log summary verdict
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    rc=$?
    log="$logs/sanitize_${names[$i]}.log"
    summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^=* *//')
    verdict=$(grep -E '^\[  (PASSED|FAILED)  \]' "$log" | head -1)
    echo "compute-sanitizer ${names[$i]}: exit $rc; ${summary:-no summary}; ${verdict:-no test verdict}"
    [ "$rc" = 0 ] || status=1
  done
  return $status
}
