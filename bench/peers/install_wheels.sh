#!/usr/bin/env bash
# On the GPU machine: installs what bench/peers/fetch_wheels.sh downloaded into /tmp/site.
#   bash bench/peers/install_wheels.sh stage-a    # call 1 (carry .whl-mlx-a): keeps the first half in /tmp
#   bash bench/peers/install_wheels.sh install    # call 2 (carry .whl and .whl-mlx-b), then
#   export PYTHONPATH=/tmp/site
# Call 2 must come while the machine from call 1 is still warm (/tmp survives only then). Without
# the mlx halves it installs what .whl holds and run_peers.py reports mlx_cuda as not run.
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=/tmp/qmm-mlx-cuda
case "${1:-install}" in
  stage-a)
    mkdir -p "$stage"
    cp .whl-mlx-a/part "$stage/part-a"
    cp .whl-mlx-a/NAME "$stage/NAME"
    echo "install_wheels: staged $(cat "$stage/NAME") part a"
    ;;
  install)
    wheels=(.whl/*.whl)
    if [ -f "$stage/part-a" ] && [ -f .whl-mlx-b/part ]; then
      whl="$stage/$(cat "$stage/NAME")"
      cat "$stage/part-a" .whl-mlx-b/part > "$whl"
      if [ "$(sha256sum "$whl" | cut -d' ' -f1)" = "$(cat .whl-mlx-b/SHA256)" ]; then
        wheels+=("$whl")
      else
        echo "install_wheels: mlx-cuda-13 halves do not match (checksum); installing without it" >&2
      fi
    else
      echo "install_wheels: no mlx-cuda-13 halves staged; installing without it" >&2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
    echo "install_wheels: installed into /tmp/site: ${wheels[*]}"
    ;;
  *) echo "usage: $0 stage-a|install" >&2; exit 2 ;;
esac
