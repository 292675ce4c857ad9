#!/usr/bin/env bash
# GPU training throughput: sgdx-train (C++, LibTorch) against the same model,
# batch and optimizer trained by PyTorch's Python API (scripts/train_torch_reference.py)
# on the same machine, one after the other (never concurrently).
#   bench_train_gpu.sh BUILD_DIR|SGDX_TRAIN DATA_DIR OUT_DIR [EPOCHS] [DEVICE] [TRAIN_SUBSET]
# (the first argument: a build folder, or the sgdx-train program itself, as in the
# bundle scripts/gpu_check.sh runs on a lent GPU).
# (DEVICE cpu and a small TRAIN_SUBSET give a quick check of the plumbing.)
# DATA_DIR holds MNIST-family IDX files (train-images-idx3-ubyte[.gz], ...).
# Writes OUT_DIR/train_gpu.json with images/s of both (epochs after the first;
# the first includes cuDNN autotuning) and their ratio (goal >= 1.0).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
train="${1:?build dir or sgdx-train}"
[[ -d "$train" ]] && train="$train/examples/sgdx-train"
[[ -x "$train" ]] || { echo "bench_train_gpu: no sgdx-train program at $train" >&2; exit 1; }
data="${2:?data dir with MNIST-family IDX files}"
out="${3:?output dir}"
epochs="${4:-3}"
device="${5:-cuda}"
subset="${6:-0}"
python="${SGDX_PYTHON:-python3}"
mkdir -p "$out"
"$train" --dataset mnist --data-dir "$data" --model resnet --optimizer sgdm --lr 0.01 \
  --batch-size 128 --epochs "$epochs" --seeds 1 --device "$device" --train-subset "$subset" --no-progress --no-plot --out "$out/train_gpu_sgdx" \
  >"$out/train_gpu_sgdx.log" 2>&1 || { tail -20 "$out/train_gpu_sgdx.log"; exit 1; }
"$python" "$root/scripts/train_torch_reference.py" --data-dir "$data" --epochs "$epochs" --batch-size 128 \
  --lr 0.01 --device "$device" --train-subset "$subset" --out "$out/train_gpu_torch.json" | tee "$out/train_gpu_torch.log"
# GradQueue-SGDM (4 clusters) with and without sgdx's fused kernels, one epoch each; a
# failure here still leaves the comparison above in train_gpu.json (and exits 1).
gq_status=0
for fused in "" "--fused-cuda"; do
  tag=gqsgdm-k4${fused:+-fused}
  rm -rf "$out/train_gpu_$tag"
  "$train" --dataset mnist --data-dir "$data" --model resnet --optimizer gqsgdm --clusters 4 \
    --batch-size 128 --epochs 1 --seeds 1 --device "$device" --train-subset "$subset" $fused --no-progress --no-plot \
    --out "$out/train_gpu_$tag" >"$out/train_gpu_$tag.log" 2>&1 || { tail -20 "$out/train_gpu_$tag.log"; gq_status=1; }
done
"$python" - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
sg = json.load(open(f"{out}/train_gpu_sgdx/metrics.json"))
n = sg["config"]["train_examples"]
secs = [e["seconds"] for e in sg["runs"][0]["epochs"]]  # cumulative training seconds
sgdx_ips = n * (len(secs) - 1) / (secs[-1] - secs[0]) if len(secs) > 1 else n / secs[0]
ref = json.load(open(f"{out}/train_gpu_torch.json"))
ref_ips = ref["images_per_second_after_first_epoch"] or ref["epochs"][0]["images_per_second"]
res = {"name": "train_gpu", "device": ref["device_name"], "torch": ref["torch"], "model": "resnet",
       "batch_size": 128, "train_examples": n, "epochs": len(secs),
       "sgdx_images_per_second": sgdx_ips, "torch_python_images_per_second": ref_ips,
       "ratio_sgdx_vs_torch_python": sgdx_ips / ref_ips}
for tag in ("gqsgdm-k4", "gqsgdm-k4-fused"):
    path = f"{out}/train_gpu_{tag}/metrics.json"
    if os.path.exists(path):
        g = json.load(open(path))
        res[f"{tag.replace('-', '_')}_images_per_second"] = n / g["runs"][0]["epochs"][0]["seconds"]
json.dump(res, open(f"{out}/train_gpu.json", "w"), indent=2)
print(f"sgdx-train {sgdx_ips:.0f} images/s, PyTorch Python {ref_ips:.0f} images/s, ratio {sgdx_ips / ref_ips:.2f} (goal >= 1.0)")
PY
exit $gq_status
