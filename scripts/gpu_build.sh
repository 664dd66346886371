# Sourced by the GPU-machine scripts (scripts/gpu_check.sh, scripts/gpu_full_run.sh,
# bench/peers/gpu_report.sh): one way to configure and build qmm there.
#   gpu_build LOG_DIR DEBS TARGETS [extra cmake args...]
# DEBS: a folder of .deb files (GoogleTest, CLI11, nlohmann-json, which that machine lacks),
# unpacked into /tmp/qmm-deps and put on CMAKE_PREFIX_PATH; "" for none. TARGETS: "" builds
# everything. Builds into build-gpu with `-k 0`, so one broken target does not block the others;
# logs go to LOG_DIR/configure.log and LOG_DIR/build.log. Returns non-zero if configure fails.
gpu_build() {
  local logs=$1 debs=$2 targets=$3
  shift 3
  local prefix=()
  if [ -n "$debs" ]; then
    mkdir -p /tmp/qmm-deps
    for f in "$debs"/*.deb; do dpkg -x "$f" /tmp/qmm-deps; done
    prefix=(-DCMAKE_PREFIX_PATH=/tmp/qmm-deps/usr)
  fi
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a "${prefix[@]}" "$@" \
    >"$logs/configure.log" 2>&1 || { tail -30 "$logs/configure.log"; return 1; }
  local target_args=()
  [ -n "$targets" ] && target_args=(--target $targets)
  cmake --build build-gpu -j"$(nproc)" "${target_args[@]}" -- -k 0 >"$logs/build.log" 2>&1
  grep -E "error|FAILED" "$logs/build.log" | head -20
  return 0
}
