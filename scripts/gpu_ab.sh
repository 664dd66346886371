#!/usr/bin/env bash
# An A/B in one call on a GPU machine, so every comparison is within one run (bench/NOTES.md):
# the working tree and variants of it (the tree with a patch applied, each built in its own copy)
# run the same `qmm bench` arguments, interleaved (tree, variants, tree, ... for --rounds rounds),
# each binary with every kernel of --kernels ("" or "auto" = dispatch's choice).
#   scripts/gpu_ab.sh [--debs DIR] [--variant NAME=PATCH]... [--kernels "auto,qmv_mma_c8"] [--rounds N]
#                     [--cmake "ARGS"] -- BENCH_ARGS...
# PATCH is `git diff` output against the tree (make it here: `git diff HEAD OTHER -- src include >
# .dev/other.patch`, carried to the machine), applied with `patch -p1`. --debs as in
# scripts/gpu_check.sh. Writes to $OUT (or ./gpu-out): ab.txt (every run's table), ab/*.json
# (one report per label and round) and ab_summary.txt (scripts/ab_summary.py: per shape and M the
# lowest round median of each label and its change against the tree's first kernel), printed too.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu-out}
DEBS="" ROUNDS=2 KERNELS="auto" CMAKE_ARGS=""
VARIANTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) DEBS=$2; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --kernels) KERNELS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --cmake) CMAKE_ARGS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "gpu_ab: unknown argument $1 (bench arguments go after --)" >&2; exit 2 ;;
  esac
done
BENCH_ARGS=("$@")
[ -n "$DEBS" ] && DEBS=$(realpath "$DEBS")  # the variants build from other folders
mkdir -p "$OUT/ab"
source scripts/gpu_build.sh
tree=$PWD

# Binaries: label -> qmm executable. The tree first (the baseline).
labels=(tree)
binaries=("$tree/build-gpu/qmm")
mkdir -p "$OUT/logs/tree"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of words on purpose
gpu_build "$OUT/logs/tree" "$DEBS" qmm_cli $CMAKE_ARGS || exit 1
for spec in "${VARIANTS[@]}"; do
  name=${spec%%=*}
  patch_file=$(realpath "${spec#*=}")
  dir=/tmp/qmm-ab/$name
  rm -rf "$dir" && mkdir -p "$dir" "$OUT/logs/$name"
  # The tree without its build folders and carried extras, then the patch.
  tar -C "$tree" --exclude=./build-gpu --exclude=./build --exclude=./.dev --exclude='./.whl*' -cf - . | tar -C "$dir" -xf -
  if ! (cd "$dir" && patch -p1 --batch <"$patch_file" >"$OUT/logs/$name/patch.log" 2>&1); then
    echo "gpu_ab: $name: the patch does not apply (logs/$name/patch.log)" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  (cd "$dir" && gpu_build "$OUT/logs/$name" "$DEBS" qmm_cli $CMAKE_ARGS) || exit 1
  labels+=("$name")
  binaries+=("$dir/build-gpu/qmm")
done
for i in "${!labels[@]}"; do
  if [ ! -x "${binaries[$i]}" ]; then
    echo "gpu_ab: ${labels[$i]} did not build (logs/${labels[$i]}/build.log)" >&2
    exit 1
  fi
done

IFS=',' read -r -a kernel_list <<<"$KERNELS"
declare -A files
order=()
: >"$OUT/ab.txt"
for ((round = 1; round <= ROUNDS; ++round)); do
  for i in "${!labels[@]}"; do
    for kernel in "${kernel_list[@]}"; do
      label=${labels[$i]}
      kernel_args=()
      if [ -n "$kernel" ] && [ "$kernel" != auto ]; then
        label="$label:$kernel"
        kernel_args=(--kernel "$kernel")
      fi
      json="$OUT/ab/${label//[:\/]/_}_r$round.json"
      echo "=== round $round $label: qmm bench ${BENCH_ARGS[*]} ${kernel_args[*]}" >>"$OUT/ab.txt"
      if ! "${binaries[$i]}" bench -q "${BENCH_ARGS[@]}" "${kernel_args[@]}" --json "$json" >>"$OUT/ab.txt" 2>&1; then
        echo "gpu_ab: $label failed in round $round (ab.txt)" >&2
        exit 1
      fi
      [ -z "${files[$label]:-}" ] && order+=("$label")
      files[$label]="${files[$label]:+${files[$label]},}$json"
    done
  done
done
summary_args=()
for label in "${order[@]}"; do summary_args+=("$label=${files[$label]}"); done
python3 scripts/ab_summary.py "${summary_args[@]}" | tee "$OUT/ab_summary.txt"
