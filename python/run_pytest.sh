#!/usr/bin/env bash
# The ctest `python_pytest` (label python): `pip install .` into the environment of PYTHON, then
# pytest python/tests. Exit 77 (ctest: skipped) when that environment lacks the tools.
#
#   bash python/run_pytest.sh PYTHON BUILD_DIR [OUTER_CUDA=ON|OFF] [pytest args...]
#
# BUILD_DIR keeps scikit-build-core's CMake build between runs (incremental rebuilds). The
# extension is built with CUDA when OUTER_CUDA is ON and nvidia-smi sees a GPU, unless
# QMM_PYTHON_CUDA=AUTO|ON|OFF says otherwise.
set -euo pipefail
PY=${1:?usage: run_pytest.sh PYTHON BUILD_DIR [ON|OFF] [pytest args]}
BUILD_DIR=${2:?usage: run_pytest.sh PYTHON BUILD_DIR [ON|OFF] [pytest args]}
OUTER_CUDA=${3:-OFF}
shift $(( $# < 3 ? $# : 3 ))
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if ! "$PY" -c "import pytest, nanobind, scikit_build_core, numpy" 2>/dev/null; then
  echo "SKIPPED: $PY lacks pytest, nanobind, scikit-build-core or numpy (bash scripts/install_deps.sh)"
  exit 77
fi

if [ -n "${QMM_PYTHON_CUDA:-}" ]; then
  cuda=$QMM_PYTHON_CUDA
elif [ "$OUTER_CUDA" = ON ] && nvidia-smi -L >/dev/null 2>&1; then
  cuda=ON
else
  cuda=OFF
fi
echo "python_pytest: pip install . (QMM_CUDA=$cuda) into $("$PY" -c 'import sys; print(sys.prefix)')"
start=$(date +%s)
QMM_CUDA=$cuda "$PY" -m pip install --no-build-isolation --no-deps --disable-pip-version-check -q \
  -C build-dir="$BUILD_DIR" "$ROOT"
echo "python_pytest: installed in $(( $(date +%s) - start )) s"

# Run from outside the source tree so that `import qmm` finds the installed package.
cd "$BUILD_DIR"
exec "$PY" -m pytest -p no:cacheprovider -q -rs "$ROOT/python/tests" "$@"
