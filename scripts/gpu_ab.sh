#!/usr/bin/env bash
# An A/B in one call on a GPU machine, so every comparison is within one run (bench/NOTES.md):
# the working tree and variants of it (the tree with a patch applied, each built in its own copy,
# side by side) run the same `qmm bench` arguments, interleaved (tree, variants, tree, ... for
# --rounds rounds), each binary with every kernel of --kernels ("" or "auto" = dispatch's choice);
# with --model, each binary also runs `qmm model ARGS` in every round (dispatch's kernels: a bench
# gain that does not survive between a model's other kernels shows there, bench/NOTES.md v20).
#   scripts/gpu_ab.sh [--debs DIR] [--variant NAME=PATCH]... [--kernels "auto,qmv_mma_c8"] [--rounds N]
#                     [--cmake "ARGS"] [--model "ARGS"] [-- BENCH_ARGS...]
# PATCH is `git diff` output against the tree (make it here: `git diff HEAD OTHER -- src include >
# .dev/other.patch`, carried to the machine), applied with `patch -p1`. --debs as in
# scripts/gpu_check.sh. Without BENCH_ARGS (and with --model) only the model runs. Writes to $OUT
# (or ./gpu-out): ab.txt (every bench table), model_ab.txt (every model table), ab/*.json (one
# report per label and round) and ab_summary.txt (scripts/ab_summary.py: per shape, or model, and M
# the lowest round median of each label and its change against the tree's first kernel), printed too.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu-out}
DEBS="" ROUNDS=2 KERNELS="auto" CMAKE_ARGS="" MODEL_ARGS=""
VARIANTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) DEBS=$2; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --kernels) KERNELS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --cmake) CMAKE_ARGS=$2; shift 2 ;;
    --model) MODEL_ARGS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "gpu_ab: unknown argument $1 (bench arguments go after --)" >&2; exit 2 ;;
  esac
done
BENCH_ARGS=("$@")
RUN_BENCH=1
[ ${#BENCH_ARGS[@]} -eq 0 ] && [ -n "$MODEL_ARGS" ] && RUN_BENCH=0
[ -n "$DEBS" ] && DEBS=$(realpath "$DEBS")  # the variants build from other folders
mkdir -p "$OUT/ab"
source scripts/gpu_build.sh
tree=$PWD

# Binaries: label -> qmm executable. The tree first (the baseline). The tree and the variants build
# side by side (each copy's build is independent; the compile is the longest part of a call).
labels=(tree)
binaries=("$tree/build-gpu/qmm")
mkdir -p "$OUT/logs/tree"
pids=()
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of words on purpose
gpu_build "$OUT/logs/tree" "$DEBS" qmm_cli $CMAKE_ARGS &
pids+=($!)
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
  (cd "$dir" && gpu_build "$OUT/logs/$name" "$DEBS" qmm_cli $CMAKE_ARGS) &
  pids+=($!)
  labels+=("$name")
  binaries+=("$dir/build-gpu/qmm")
done
for pid in "${pids[@]}"; do wait "$pid"; done
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
[ -n "$MODEL_ARGS" ] && : >"$OUT/model_ab.txt"
add_file() {  # label json: the label's report files, in first-seen order
  [ -z "${files[$1]:-}" ] && order+=("$1")
  files[$1]="${files[$1]:+${files[$1]},}$2"
}
for ((round = 1; round <= ROUNDS; ++round)); do
  if [ "$RUN_BENCH" = 1 ]; then
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
        add_file "$label" "$json"
      done
    done
  fi
  [ -n "$MODEL_ARGS" ] || continue
  for i in "${!labels[@]}"; do
    label=${labels[$i]}
    json="$OUT/ab/model_${label}_r$round.json"
    echo "=== round $round $label: qmm model $MODEL_ARGS" >>"$OUT/model_ab.txt"
    # shellcheck disable=SC2086  # MODEL_ARGS is a list of words on purpose
    if ! "${binaries[$i]}" model $MODEL_ARGS --json "$json" >>"$OUT/model_ab.txt" 2>&1; then
      echo "gpu_ab: qmm model failed for $label in round $round (model_ab.txt)" >&2
      exit 1
    fi
    add_file "$label" "$json"
  done
done
summary_args=()
for label in "${order[@]}"; do summary_args+=("$label=${files[$label]}"); done
python3 scripts/ab_summary.py "${summary_args[@]}" | tee "$OUT/ab_summary.txt"
