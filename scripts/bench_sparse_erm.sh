#!/usr/bin/env bash
# Issue #21's benchmark (docs/sparse_vr.md, docs/results/vr.md): time to a 1e-4 and 1e-6
# relative gap for lazy sparse SVRG (b = 1), Katyusha and DASVRDA (b = ceil(sqrt(n))), each
# step tuned on a 7-point log grid, and liblinear -s 0 (pure L2) / -s 6 (pure L1) timed in
# the same run, on a generated 5e5 x 1e6 problem (50 non-zeros a row, seed 1; written by
# scripts/make_sparse_problem.py into the work folder, not committed) and on a9a held sparse.
#   scripts/bench_sparse_erm.sh [WORK=runs/sparse_erm]
# Run it alone on the machine (timings). About 30 minutes on a 2-core Xeon.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work="${1:-$root/runs/sparse_erm}"
mkdir -p "$work"
erm="$build/examples/sgdx-erm"
[[ -x $erm ]] || { echo "bench_sparse_erm: $erm not built (scripts/build.sh)" >&2; exit 1; }
big="$work/generated-5e5x1e6.svm"
[[ -f $big ]] || python3 "$root/scripts/make_sparse_problem.py" "$big" --rows 500000 --features 1000000 --per-row 50 --seed 1
show() { grep -E '^(sgdx-erm|\|)' || true; }
for reg in "0 1e-5" "1e-5 0"; do
  read -r l1 l2 <<<"$reg"
  echo "== generated 5e5 x 1e6, l1=$l1 l2=$l2"
  common=(--data "$big" --features 1000000 --l1 "$l1" --l2 "$l2" --passes 12 --tune)
  "$erm" "${common[@]}" --methods katyusha --step-scale 4 --liblinear --out "$work/big-l1_$l1-l2_$l2-katyusha" | show
  "$erm" "${common[@]}" --methods dasvrda --step-scale 64 --out "$work/big-l1_$l1-l2_$l2-dasvrda" | show
  "$erm" "${common[@]}" --methods svrg --batch 1 --step-scale 0.25 --out "$work/big-l1_$l1-l2_$l2-svrg" | show
done
if [[ -f "${SGDX_DATA_DIR:-/nonexistent}/libsvm/a9a" ]]; then
  for reg in "0 1e-6" "1e-4 0"; do
    read -r l1 l2 <<<"$reg"
    echo "== a9a (held sparse), l1=$l1 l2=$l2"
    common=(--data a9a --storage sparse --l1 "$l1" --l2 "$l2" --passes 40 --tune)
    "$erm" "${common[@]}" --methods katyusha,dasvrda --step-scale 4 --liblinear --out "$work/a9a-l1_$l1-l2_$l2" | show
    "$erm" "${common[@]}" --methods svrg --batch 1 --step-scale 0.25 --out "$work/a9a-l1_$l1-l2_$l2-svrg" | show
  done
else
  echo "skipping a9a: \$SGDX_DATA_DIR/libsvm/a9a not found"
fi
bash "$root/scripts/plot_sparse_erm.sh" "$work"
