#!/usr/bin/env bash
# On a GPU machine: why a quantized_matmul configuration costs what it does. For each kernel
# named, one ncu pass over one call inside `qmm bench` (duration, DRAM and issue rates, warps per
# scheduler, executed instructions and the stall reasons per issued instruction), plus the SASS
# opcode histogram of each tensor-core family (this development machine has no cuobjdump).
#   bash scripts/gpu_profile.sh --debs DIR [--shape K:N] [--m M] [--kernels a,b,...] [--dtype float16]
# Results to $OUT (or ./gpu-profile): ncu_<kernel>.txt, sass_<family>.txt; a summary on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-profile}
mkdir -p "$OUT"
DEBS="" SHAPE="5120:13824" M=1 KERNELS="qmv_mma_m8,qmv_staged_m8" DTYPE=float16
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) DEBS=$2; shift 2 ;;
    --shape) SHAPE=$2; shift 2 ;;
    --m) M=$2; shift 2 ;;
    --kernels) KERNELS=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    *) echo "gpu_profile: unknown argument $1" >&2; exit 2 ;;
  esac
done
source scripts/gpu_build.sh
LOGS=$(mktemp -d)
gpu_build "$LOGS" "$DEBS" "qmm_cli" || exit 1
metrics="gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",smsp__issue_active.avg.per_cycle_active,smsp__warps_active.avg.per_cycle_active"
metrics+=",smsp__warps_eligible.avg.per_cycle_active,smsp__inst_executed.sum"
metrics+=",regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio"
for k in ${KERNELS//,/ }; do
  # --launch-skip: past the warm-up calls, into the timed graph replays.
  timeout 150 ncu --kernel-name regex:"qmv_|qvm_" --launch-skip 3 --launch-count 1 --metrics "$metrics" \
    build-gpu/qmm bench --shape "$SHAPE" --m "$M" --dtype "$DTYPE" --budget-ms 3 --no-dense -q --kernel "$k" \
    >"$OUT/ncu_$k.txt" 2>&1
  echo "== $k ($SHAPE, M=$M, $DTYPE): ncu exit $?"
  grep -E "gpu__time|dram__|issue_active|warps_active|warps_eligible|inst_executed|stalled" "$OUT/ncu_$k.txt" |
    awk '{print $NF, $1}' | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' |
    sort -g -r | head -16
done
# SASS opcode histograms: the 4-bit fp16 one-token-tile instantiation of each family.
if command -v cuobjdump >/dev/null; then
  for fam in qmv_mma qmv_staged; do
    obj=build-gpu/CMakeFiles/qmm.dir/src/cuda/${fam}_kernels.cu.o
    [ -f "$obj" ] || continue
    cuobjdump -sass "$obj" |
      awk -v pat="${fam}_kernelI6__halfLi4ELi1E" '/Function : /{f = ($0 ~ pat) && !done; if (f) done = 1} f' |
      grep -oE "^\s+/\*[0-9a-f]+\*/\s+(@!?U?P[0-9T] )?[A-Z0-9_.]+" | awk '{print $NF}' | sed 's/\..*//' |
      sort | uniq -c | sort -rn >"$OUT/sass_$fam.txt"
    echo "== SASS $fam (half, 4-bit, 8 tokens): $(awk '{n += $1} END {print n}' "$OUT/sass_$fam.txt") instructions"
    head -8 "$OUT/sass_$fam.txt"
  done
fi
