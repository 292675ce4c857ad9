#!/usr/bin/env bash
# CPU training throughput: sgdx-train (C++, LibTorch) against the same model, batch and
# optimizer trained by PyTorch's Python API (scripts/train_torch_reference.py), for the
# models mlp, cnn and resnet (issue #18 item 4: goal images/s ratio sgdx/PyTorch >= 1.0).
#
#   bench/train_throughput.sh [SGDX_TRAIN|BUILD_DIR] [OUT_JSON]
#     (defaults: build/examples/sgdx-train, bench/results/train_throughput_cpu.json)
#
# Both sides: SGD + momentum 0.9, lr 0.01, batch 128, Fashion-MNIST (standardised), a fresh
# random order per epoch, the loss read every step, the same thread count (OMP_NUM_THREADS
# and MKL_NUM_THREADS for both, sgdx-train --threads, torch.set_num_threads) and the same
# LibTorch when sgdx is built against the Python wheel's (checked, written to the JSON).
# What is timed: the training loop only. sgdx-train writes the cumulative training seconds
# of each epoch (metrics.json runs[0].epochs[].seconds, a steady clock around the epoch's
# step loop; its per-epoch evaluation on the test set runs outside it); the reference times
# its epoch loop the same way. images/s = images of epochs 2..E / their seconds: the first
# epoch (oneDNN primitive creation, allocator warm-up) is left out and reported apart.
# Each model runs REPEATS pairs, sgdx then PyTorch, alternating (A B A B ...); the JSON has
# every run, the medians, the median of the per-pair ratios and the ratio of the medians.
#
# Environment:
#   THREADS      threads of both sides (default: nproc)
#   REPEATS      pairs per model (default 3)
#   MODELS       default "mlp cnn resnet"
#   SIZES        per-model "model:epochs:train_subset" (subset 0: all 60000), default
#                "mlp:8:0 cnn:3:8192 resnet:3:8192" (~10-30 s a run on 2 quiet cores)
#   DATA_DIR     MNIST-family IDX files (default $SGDX_DATA_DIR/fashion-mnist when it exists,
#                else Debian's /usr/share/datasets/fashion-mnist)
#   SGDX_PYTHON  Python with torch (default .venv/bin/python when present, else python3)
#   NOTE         free text written to the JSON (e.g. "smoke run under load")
#   KEEP_OMP_POLICY=1  leave sgdx-train's start-up policy for busy cores on (by default
#                SGDX_NO_PASSIVE_WAIT=1: both sides then run libgomp's defaults, as a busy
#                machine would otherwise make sgdx alone switch to a passive wait / fewer threads)
# A quiet machine is assumed: the load average at the start and the end is written to the JSON.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
train="${1:-build/examples/sgdx-train}"
[[ -d "$train" ]] && train="$train/examples/sgdx-train"
[[ -x "$train" ]] || { echo "train_throughput: no sgdx-train program at $train (build it first)" >&2; exit 1; }
out_json="${2:-bench/results/train_throughput_cpu.json}"
threads="${THREADS:-$(nproc)}"
repeats="${REPEATS:-3}"
models="${MODELS:-mlp cnn resnet}"
sizes="${SIZES:-mlp:8:0 cnn:3:8192 resnet:3:8192}"
if [[ -z "${DATA_DIR:-}" ]]; then
  if [[ -n "${SGDX_DATA_DIR:-}" && -d "$SGDX_DATA_DIR/fashion-mnist" ]]; then
    DATA_DIR="$SGDX_DATA_DIR/fashion-mnist"
  elif [[ -d "$root/../shared/data/fashion-mnist" ]]; then
    DATA_DIR="$root/../shared/data/fashion-mnist"
  else
    DATA_DIR=/usr/share/datasets/fashion-mnist
  fi
fi
[[ -d "$DATA_DIR" ]] || { echo "train_throughput: no data directory $DATA_DIR (install dataset-fashion-mnist or set DATA_DIR)" >&2; exit 1; }
python="${SGDX_PYTHON:-}"
[[ -z "$python" && -x "$root/.venv/bin/python" ]] && python="$root/.venv/bin/python"
python="${python:-python3}"
"$python" -c "import torch" 2>/dev/null || { echo "train_throughput: $python has no torch (set SGDX_PYTHON)" >&2; exit 1; }

export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
[[ "${KEEP_OMP_POLICY:-0}" == 1 ]] || export SGDX_NO_PASSIVE_WAIT=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

size_of() {  # model -> "epochs subset"
  local s
  for s in $sizes; do
    [[ "${s%%:*}" == "$1" ]] && { s="${s#*:}"; echo "${s%%:*} ${s#*:}"; return; }
  done
  echo "train_throughput: no SIZES entry for model $1" >&2
  exit 1
}

for model in $models; do
  read -r epochs subset < <(size_of "$model")
  (( epochs >= 2 )) || { echo "train_throughput: $model needs >= 2 epochs (the first is left out)" >&2; exit 1; }
  for ((r = 1; r <= repeats; r++)); do
    d="$work/$model/$r"
    mkdir -p "$d"
    "$train" --dataset fashion-mnist --data-dir "$DATA_DIR" --model "$model" --optimizer sgdm --lr 0.01 \
      --momentum 0.9 --batch-size 128 --epochs "$epochs" --seeds 1 --device cpu --threads "$threads" \
      --train-subset "$subset" --no-progress --no-plot --out "$d/sgdx" >"$d/sgdx.log" 2>&1 ||
      { tail -20 "$d/sgdx.log" >&2; exit 1; }
    "$python" -W ignore "$root/scripts/train_torch_reference.py" --data-dir "$DATA_DIR" --model "$model" \
      --epochs "$epochs" --batch-size 128 --lr 0.01 --device cpu --threads "$threads" \
      --train-subset "$subset" --out "$d/torch.json" >"$d/torch.log" 2>&1 ||
      { tail -20 "$d/torch.log" >&2; exit 1; }
    "$python" - "$d" "$model" "$r" <<'PY'
import json, sys
d, model, r = sys.argv[1:]
sg = json.load(open(f"{d}/sgdx/metrics.json"))
n = sg["config"]["train_examples"]
secs = [e["seconds"] for e in sg["runs"][0]["epochs"]]
ref = json.load(open(f"{d}/torch.json"))
s, t = n * (len(secs) - 1) / (secs[-1] - secs[0]), ref["images_per_second_after_first_epoch"]
print(f"{model} pair {r}: sgdx {s:.0f} images/s, PyTorch {t:.0f} images/s, ratio {s / t:.3f}", flush=True)
PY
  done
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

"$python" - "$work" "$out_json" "$train" "$threads" "$repeats" "$load_start" "$load_end" "$models" "$DATA_DIR" "$sizes" <<'PY'
import datetime, json, os, platform, statistics, subprocess, sys
import torch
work, out_json, train, threads, repeats, load_start, load_end, models, data_dir, sizes = sys.argv[1:]
threads, repeats = int(threads), int(repeats)

def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()

def sgdx_libtorch():
    try:
        ldd = subprocess.run(["ldd", train], capture_output=True, text=True).stdout
    except OSError:
        return None
    for line in ldd.splitlines():
        if "libtorch_cpu.so" in line and "=>" in line:
            return os.path.realpath(line.split("=>")[1].split("(")[0].strip())
    return None

py_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
sg_lib = sgdx_libtorch()
res = {"name": "train_throughput_cpu",
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "what": "sgdx-train vs PyTorch Python API (scripts/train_torch_reference.py), training-loop images/s "
               "of epochs 2..E (evaluation and the first epoch excluded), SGD momentum 0.9, lr 0.01, batch 128, "
               "Fashion-MNIST, CPU; pairs run alternately sgdx, PyTorch",
       "cpu_model": cpu_model(), "cores": os.cpu_count(), "threads": threads,
       "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
       "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
       "torch": torch.__version__, "python_libtorch": py_lib, "sgdx_libtorch": sg_lib,
       "same_libtorch": sg_lib == py_lib,
       "omp": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
               "SGDX_NO_PASSIVE_WAIT": os.environ.get("SGDX_NO_PASSIVE_WAIT")},
       "loadavg_start": load_start, "loadavg_end": load_end, "repeats": repeats, "sizes": sizes,
       "note": os.environ.get("NOTE", ""), "models": {}}
ratios_of_medians = []
for model in models.split():
    runs = []
    for r in range(1, repeats + 1):
        d = f"{work}/{model}/{r}"
        sg = json.load(open(f"{d}/sgdx/metrics.json"))
        n = sg["config"]["train_examples"]
        secs = [e["seconds"] for e in sg["runs"][0]["epochs"]]
        ref = json.load(open(f"{d}/torch.json"))
        s = n * (len(secs) - 1) / (secs[-1] - secs[0])
        t = ref["images_per_second_after_first_epoch"]
        runs.append({"sgdx_images_per_second": s, "torch_images_per_second": t, "ratio": s / t,
                     "sgdx_first_epoch_images_per_second": n / secs[0],
                     "torch_first_epoch_images_per_second": ref["epochs"][0]["images_per_second"],
                     "sgdx_train_seconds": secs[-1], "torch_train_seconds": sum(e["seconds"] for e in ref["epochs"]),
                     "sgdx_threads": sg["config"]["threads"], "torch_threads": ref.get("threads")})
    med = lambda k: statistics.median(x[k] for x in runs)
    m = {"epochs": len(secs), "train_examples": n, "measured_images_per_run": n * (len(secs) - 1),
         "batch_size": 128, "optimizer": "sgdm (momentum 0.9, lr 0.01)",
         "sgdx_images_per_second_median": med("sgdx_images_per_second"),
         "torch_images_per_second_median": med("torch_images_per_second"),
         "ratio_median_of_pairs": med("ratio"),
         "sgdx_first_epoch_images_per_second_median": med("sgdx_first_epoch_images_per_second"),
         "torch_first_epoch_images_per_second_median": med("torch_first_epoch_images_per_second"),
         "runs": runs}
    m["ratio_of_medians"] = m["sgdx_images_per_second_median"] / m["torch_images_per_second_median"]
    m["goal_met"] = m["ratio_median_of_pairs"] >= 1.0
    res["models"][model] = m
res["goal"] = "ratio sgdx/PyTorch >= 1.0 for every model"
res["goal_met"] = all(m["goal_met"] for m in res["models"].values())
os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
json.dump(res, open(out_json, "w"), indent=2)
print(f"\n{'model':8} {'sgdx img/s':>12} {'PyTorch img/s':>14} {'ratio':>7}   (medians of {repeats} pairs, "
      f"{threads} threads, {res['aten_cpu_capability']}, load {load_start} -> {load_end})")
for model, m in res["models"].items():
    print(f"{model:8} {m['sgdx_images_per_second_median']:12.0f} {m['torch_images_per_second_median']:14.0f} "
          f"{m['ratio_median_of_pairs']:7.3f}")
print(f"wrote {out_json}")
PY
