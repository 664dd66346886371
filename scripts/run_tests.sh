#!/usr/bin/env bash
# The test command: installs dependencies (scripts/install_deps.sh), configures qmm (the CUDA
# backend is built when nvcc is found), builds with every core and runs every ctest label
# (cpu, cuda, mlx, python). GPU tests skip themselves without a GPU; the live MLX test skips
# itself when mlx cannot be imported. Skipped tests are listed as such by ctest.
#
#   bash scripts/run_tests.sh                     # build/ , all tests
#   BUILD_DIR=build-cpu QMM_CMAKE_ARGS="-DQMM_CUDA=OFF" bash scripts/run_tests.sh
#   bash scripts/run_tests.sh -L cpu              # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=$(nproc 2>/dev/null || echo 2)

bash scripts/install_deps.sh

generator=()
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then generator=(-G Ninja); fi
# The project's Python (.venv, made by install_deps.sh) is the one that has nanobind, mlx, numpy.
python_args=()
if [ -x .venv/bin/python ]; then
  python_args=(-DPython_EXECUTABLE="$PWD/.venv/bin/python" -DQMM_TEST_PYTHON="$PWD/.venv/bin/python")
fi
# shellcheck disable=SC2086  # QMM_CMAKE_ARGS is a list of words on purpose
cmake -S . -B "$BUILD_DIR" "${generator[@]}" "${python_args[@]}" -DCMAKE_BUILD_TYPE=Release ${QMM_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" "$@"
