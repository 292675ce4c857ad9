#!/usr/bin/env bash
# Plots of scripts/bench_sparse_erm.sh's runs: relative gap against seconds (the optimizer's
# clock, the per-pass objective not counted) for SVRG, Katyusha and DASVRDA, one plot per
# problem and (l1, l2), into OUT (docs/results/vr/sparse by default).
#   scripts/plot_sparse_erm.sh WORK [OUT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work="${1:?usage: plot_sparse_erm.sh WORK [OUT]}"
out="${2:-$root/docs/results/vr/sparse}"
command -v gnuplot >/dev/null || { echo "plot_sparse_erm: gnuplot not found" >&2; exit 1; }
mkdir -p "$out"
for set in "big-l1_0-l2_1e-5" "big-l1_1e-5-l2_0" "a9a-l1_0-l2_1e-6" "a9a-l1_1e-4-l2_0"; do
  files=()
  for f in "$work/$set"*/gap.csv; do [[ -f $f ]] && files+=("$f"); done
  [[ ${#files[@]} -gt 0 ]] || { echo "plot_sparse_erm: no runs for $set in $work" >&2; continue; }
  plot=""
  for f in "${files[@]}"; do
    for m in svrg katyusha dasvrda; do
      grep -q "^$m," "$f" || continue
      plot+="${plot:+, }'$f' using (strcol(1) eq '$m' ? \$4 : 1/0):5 with linespoints lw 2 title '$m'"
    done
  done
  gnuplot <<GP
set terminal pngcairo noenhanced size 900,600
set output '$out/$set.png'
set logscale y
set format y '1e%T'
set xlabel 'seconds (optimizer only; 2-core Xeon, one thread)'
set ylabel '(P - P*) / |P*|'
set grid
set datafile separator ','
set key top right
set title '$set: lazy sparse methods, tuned steps'
plot $plot
GP
  echo "plot: $out/$set.png"
done
