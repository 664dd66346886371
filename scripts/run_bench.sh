#!/usr/bin/env bash
# The main job: installs dependencies, builds qmm (CUDA when nvcc is found) and runs `qmm bench`
# with the given arguments (see README "qmm bench", or ./build/qmm bench --help).
#
#   bash scripts/run_bench.sh                 # the default benchmark
#   bash scripts/run_bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=$(nproc 2>/dev/null || echo 2)

bash scripts/install_deps.sh >&2

generator=()
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then generator=(-G Ninja); fi
# The project's Python (.venv, made by install_deps.sh) is the one that has nanobind, mlx, numpy.
python_args=()
if [ -x .venv/bin/python ]; then
  python_args=(-DPython_EXECUTABLE="$PWD/.venv/bin/python" -DQMM_TEST_PYTHON="$PWD/.venv/bin/python")
fi
# shellcheck disable=SC2086  # QMM_CMAKE_ARGS is a list of words on purpose
cmake -S . -B "$BUILD_DIR" "${generator[@]}" "${python_args[@]}" -DCMAKE_BUILD_TYPE=Release ${QMM_CMAKE_ARGS:-} >&2
cmake --build "$BUILD_DIR" -j "$JOBS" --target qmm_cli >&2
exec "./$BUILD_DIR/qmm" bench "$@"
