#!/usr/bin/env bash
# Reproduction for docs/results/vr.md: log10 relative gap vs passes for SGD, SVRG,
# Katyusha and DASVRDA (adaptive restart) on L1/L2-regularised logistic regression
# with unit-norm rows, step sizes tuned per method on a log grid (x1/4 .. x16 of
# the theory default, best final gap), batch ceil(sqrt(n)); liblinear timed in the
# same run for the pure-L2 (-s 0) and pure-L1 (-s 6) settings.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$root/scripts/build.sh" >/dev/null
out="$root/docs/results/vr"
mkdir -p "$out"
sets=(heart-scale)
[[ -f "${SGDX_DATA_DIR:-/nonexistent}/libsvm/a9a" ]] && sets+=(a9a) || echo "skipping a9a: \$SGDX_DATA_DIR/libsvm/a9a not found"
for data in "${sets[@]}"; do
  passes=200
  [[ $data == a9a ]] && passes=40
  for reg in "0 1e-6" "1e-4 1e-6" "1e-4 0"; do
    read -r l1 l2 <<<"$reg"
    extra=()
    [[ $l1 == 0 || $l2 == 0 ]] && extra=(--liblinear)
    echo "== $data l1=$l1 l2=$l2"
    "$build/examples/sgdx-erm" --data "$data" --l1 "$l1" --l2 "$l2" --passes "$passes" --tune "${extra[@]}" \
      --out "$out/$data-l1_$l1-l2_$l2" | grep -E '^(sgdx-erm|\|)'
    rm -f "$out/$data-l1_$l1-l2_$l2/data.libsvm" "$out/$data-l1_$l1-l2_$l2/liblinear.model"
  done
done
