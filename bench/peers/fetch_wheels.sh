#!/usr/bin/env bash
# Downloads, here, the Python packages bench/peers/run_peers.py needs on the GPU machine that its
# image lacks (the device machine reaches no registry): gemlite, mlx and mlx-cuda-13 (MLX's CUDA
# backend, `mlx[cuda13]`). torch, triton, numpy, tqdm and the nvidia-* libraries mlx-cuda-13
# depends on (cublas, cudnn, cufft, cusolver, nccl, nvrtc, cuda-runtime) are already there.
#
#   .whl/          gemlite (built here from its sdist: PyPI has no wheel) and mlx, for python 3.12
#   .whl-mlx-a/    first half of mlx-cuda-13's wheel   } the wheel (~90 MB) is larger than one device
#   .whl-mlx-b/    second half                         } call may carry (64 MiB), so it travels in two
#
# All three folders are ignored by git (never commit wheels). How the lead uses them: README.md,
# "## qmm bench", "Peers on the GPU machine".
set -euo pipefail
cd "$(dirname "$0")/../.."

MLX_VERSION=${MLX_VERSION:-0.32.4}
GEMLITE_VERSION=${GEMLITE_VERSION:-0.6.0.post2}
PY=${PYTHON:-python3}
PLATFORMS=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")

for d in /.whl/ /.whl-mlx-a/ /.whl-mlx-b/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
rm -rf .whl .whl-mlx-a .whl-mlx-b
mkdir -p .whl .whl-mlx-a .whl-mlx-b
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d .whl "mlx==$MLX_VERSION"
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$tmp" "mlx-cuda-13==$MLX_VERSION"
# gemlite is pure Python (Triton kernels) and ships only an sdist: build the wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl "gemlite==$GEMLITE_VERSION"

whl=$(ls "$tmp"/mlx_cuda_13-*.whl)
name=$(basename "$whl")
size=$(stat -c %s "$whl")
half=$(( (size + 1) / 2 ))
head -c "$half" "$whl" > .whl-mlx-a/part
tail -c +"$((half + 1))" "$whl" > .whl-mlx-b/part
echo "$name" > .whl-mlx-a/NAME
sha256sum "$whl" | cut -d' ' -f1 > .whl-mlx-b/SHA256

echo "fetch_wheels: .whl/ $(ls .whl | tr '\n' ' ')"
echo "fetch_wheels: $name split into .whl-mlx-a/part ($half bytes) and .whl-mlx-b/part ($((size - half)) bytes)"
du -sh .whl .whl-mlx-a .whl-mlx-b
