#!/usr/bin/env bash
# CIFAR-10 versions of the papers' headline experiments, for docs/results/README.md.
# Every run: CIFAR-10 from $SGDX_DATA_DIR/cifar10 (../shared/data by default), random
# crop + flip, 5,000 training images held out for validation (seed 0), per-channel
# normalisation, weight decay 5e-4, constant learning rate. Test figures are on the
# first 1,000 test images only (all shared/data holds).
#
#   importance  ResNet, SGD-momentum: uniform vs loss vs upper-bound sampling, and
#               upper-bound with K&F presampling (R = 3)
#   gradqueue   CNN, batch 128 / 512 / 2048 (lr 0.01 sqrt(B/32)): SGDM vs plain and
#               clustered (k = 4) GradQueue-SGDM
#   rsgd        CNN: SGD, SGDM, Adam, R-SGD, each at its default lr and at 0.3x and 3x
#               (the "tuned" lr is the one with the best validation accuracy)
#   imbalance   CNN on CIFAR-10-LT (ratio 100 and 10, built from the 45,000 training
#               images): SGDM uniform vs temperature sampling, scalarization and
#               Cooldown at tau = 5
#
# Usage: scripts/reproduce_cifar10.sh EXPERIMENT [--scale cpu|full] [--device cpu|cuda]
#        [--threads N] [--out DIR]
# --scale cpu (default) is the committed budget: about 30 CPU-minutes per experiment,
# 2 seeds, on training subsets (see each block). --scale full trains on all 45,000
# images for 4x the epochs (for a GPU: --device cuda). SGDX_TRAIN=/path/to/sgdx-train
# runs that binary instead of building one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
[[ $# -ge 1 ]] || usage
[[ "$1" == -h || "$1" == --help ]] && usage 0
experiment="$1"
shift
scale=cpu device=cpu threads=1 out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "reproduce_cifar10.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$scale" in cpu|full) ;; *) echo "reproduce_cifar10.sh: --scale must be cpu or full, got '$scale'" >&2; exit 2 ;; esac
[[ -d "${SGDX_DATA_DIR:-/nonexistent}/cifar10" ]] ||
  { echo "reproduce_cifar10.sh: no CIFAR-10 at \$SGDX_DATA_DIR/cifar10 ('${SGDX_DATA_DIR:-}')" >&2; exit 1; }
if [[ -z "${SGDX_TRAIN:-}" ]]; then
  "$root/scripts/build.sh" >/dev/null
  SGDX_TRAIN="$build/examples/sgdx-train"
fi
out="${out:-$root/docs/results/cifar10}"
mkdir -p "$out"

# subset N / epochs E at --scale cpu; the whole training set and 4x the epochs at full.
sized() {  # subset epochs
  if [[ "$scale" == full ]]; then echo "--epochs $(( $2 * 4 ))"; else echo "--train-subset $1 --epochs $2"; fi
}
train() {  # dir args...
  local dir="$1"
  shift
  echo "== $dir: $*"
  "$SGDX_TRAIN" --dataset cifar10 --device "$device" --threads "$threads" --weight-decay 5e-4 --seeds 2 \
    --no-progress --out "$out/$dir" "$@" | grep -E '^\||^test figures'
}

case "$experiment" in
  importance)
    train importance-resnet --model resnet $(sized 10000 15) --lr 0.03 --compare sgdm,sgdm+loss,sgdm+upper-bound
    train importance-resnet-presample --model resnet $(sized 10000 15) --lr 0.03 --presample 3 \
      --compare sgdm+upper-bound
    ;;
  gradqueue)
    for b in 128 512 2048; do
      lr=$(python3 -c "print(f'{0.01 * ($b / 32) ** 0.5:.6g}')")
      train "gradqueue-cnn-b$b" --model cnn $(sized 10000 6) --batch-size "$b" --lr "$lr" \
        --compare sgdm,gqsgdm,gqsgdm-k4
    done
    ;;
  rsgd)
    for opt in sgd sgdm adam rsgd; do
      for s in 0.3 1 3; do
        lr=$(python3 -c "d={'sgd':0.1,'adam':1e-3}.get('$opt',0.01); print(f'{d*$s:.6g}')")
        train "rsgd-cnn/$opt-x$s" --model cnn $(sized 15000 4) --lr "$lr" --optimizer "$opt" --no-plot
      done
    done
    ;;
  imbalance)
    for ratio in 100 10; do
      epochs=8
      [[ "$ratio" == 10 ]] && epochs=5
      train "imbalance-cnn-lt$ratio" --model cnn --imbalance "$ratio" \
        --epochs $([[ "$scale" == full ]] && echo $(( epochs * 4 )) || echo "$epochs") \
        --compare sgdm@none,sgdm@ts:5,sgdm@scalarize:5,sgdm@cooldown:5
    done
    ;;
  *) echo "reproduce_cifar10.sh: unknown experiment '$experiment'" >&2; usage ;;
esac
