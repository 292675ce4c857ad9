#!/usr/bin/env bash
# Stages, here and after scripts/build.sh, everything scripts/gpu_check.sh needs on a
# lent GPU machine, where nothing can be configured or compiled: the CUDA test and
# benchmark programs and sgdx-train, stripped and without rpath (there they find the
# device's torch libraries through LD_LIBRARY_PATH), a small MNIST subset for the
# training-throughput comparison, and manifest.txt (the sha256 of every bundled file
# and of the sources the programs were built from). Carry the folder to the device.
#   gpu_bundle.sh [--build-dir build] [--out .gpu-bundle] [--train-images 10000] [--test-images 2000]
# MNIST comes from $SGDX_DATA_DIR/mnist (default ../shared/data/mnist); without it no
# data is bundled and gpu_check.sh skips the throughput step. Fails above 64 MiB.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
out="$root/.gpu-bundle"
train_images=10000
test_images=2000
limit=$((64 * 1024 * 1024))
die() { echo "gpu_bundle: $*" >&2; exit 1; }
while (($#)); do
  case "$1" in
    --build-dir) build="$(cd "${2:?--build-dir needs a folder}" && pwd)"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --train-images) train_images="${2:?}"; shift 2 ;;
    --test-images) test_images="${2:?}"; shift 2 ;;
    -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v patchelf >/dev/null || die "patchelf not found (Debian package patchelf; scripts/setup.sh installs it)"
grep -qs '^#define SGDX_WITH_CUDA 1' "$build/include/sgdx/config.h" ||
  die "$build was not configured with CUDA (no '#define SGDX_WITH_CUDA 1' in $build/include/sgdx/config.h)"

# The programs gpu_check.sh's steps run, from the build's tests/, bench/ or examples/.
bins=()
for name in $("$root/scripts/gpu_check.sh" --list-programs); do
  found=""
  for d in tests bench examples; do
    [[ -x "$build/$d/$name" ]] && found="$build/$d/$name" && break
  done
  [[ -n "$found" ]] || die "no program $name in $build/{tests,bench,examples}: build first (scripts/build.sh)"
  bins+=("$found")
done

# Programs older than a source they may include are a stale build: say so (others may be
# editing the tree), but bundle anyway, as the manifest records the sources' hashes.
oldest_bin="$(ls -tr "${bins[@]}" | head -1)"
stale="$(find "$root/cuda" "$root/include" "$root/src" "$root/tests/cuda" "$root/bench" "$root/examples" \
  -type f -newer "$oldest_bin" -printf '%p ' 2>/dev/null || true)"
stale="${stale//$root\//}"
[[ -z "$stale" ]] || echo "gpu_bundle: warning: sources newer than $oldest_bin: ${stale:0:300}(rebuild?)" >&2

[[ "$out" = /* ]] || out="$PWD/$out"
if [[ -e "$out" ]]; then
  [[ -z "$(ls -A "$out")" || -f "$out/manifest.txt" ]] || die "$out exists and is not a bundle (no manifest.txt): not touching it"
  rm -rf "$out"
fi
mkdir -p "$out/bin"

for b in "${bins[@]}"; do
  strip --strip-unneeded -o "$out/bin/$(basename "$b")" "$b"
  patchelf --remove-rpath "$out/bin/$(basename "$b")"
done

data="${SGDX_DATA_DIR:-$root/../shared/data}/mnist"
if [[ -e "$data/train-images-idx3-ubyte.gz" || -e "$data/train-images-idx3-ubyte" ]]; then
  mkdir -p "$out/data/mnist"
  python3 - "$data" "$out/data/mnist" "$train_images" "$test_images" <<'PY'
# The first N images/labels of each split, re-encoded as gzipped IDX (same header layout).
import gzip, os, sys
src, dst, counts = sys.argv[1], sys.argv[2], {"train": int(sys.argv[3]), "t10k": int(sys.argv[4])}
for split, n in counts.items():
    for kind, item in (("images-idx3", 28 * 28), ("labels-idx1", 1)):
        name = f"{split}-{kind}-ubyte"
        path = os.path.join(src, name)
        raw = gzip.open(path + ".gz").read() if os.path.exists(path + ".gz") else open(path, "rb").read()
        ndim = raw[3]
        total = int.from_bytes(raw[4:8], "big")
        if n > total:
            sys.exit(f"gpu_bundle: {path} has {total} records, {n} asked")
        header = raw[:4] + n.to_bytes(4, "big") + raw[8:4 + 4 * ndim]
        body = raw[4 + 4 * ndim: 4 + 4 * ndim + n * item]
        with open(os.path.join(dst, name + ".gz"), "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g:
            g.write(header + body)
PY
else
  echo "gpu_bundle: no MNIST in $data: no data bundled, gpu_check.sh will skip the throughput step"
fi

cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" | head -1; }
torch_lib_dir="$(dirname "$(cache_value TORCH_LIBRARY)")"
torch_dist="$(ls -d "$torch_lib_dir"/../../torch-*.dist-info 2>/dev/null | head -1)"
{
  echo "# sgdx GPU bundle (scripts/gpu_bundle.sh); checked by scripts/gpu_check.sh (--dry-run here)"
  echo "created $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build-dir $build"
  echo "git-head $(git -C "$root" rev-parse HEAD)"
  echo "git-status-porcelain-sha256 $(git -C "$root" status --porcelain | sha256sum | cut -d' ' -f1)"
  echo "git-diff-head-sha256 $(git -C "$root" diff HEAD | sha256sum | cut -d' ' -f1)"
  echo "torch ${torch_dist:+$(basename "$torch_dist" .dist-info | sed 's/^torch-//')}"
  echo "cuda-architectures $(cache_value SGDX_CUDA_ARCHITECTURES)"
  # The per-kernel source hashes the programs compile in (cuda/verified_kernels.txt).
  [[ -x "$root/scripts/kernel_hashes.sh" ]] && "$root/scripts/kernel_hashes.sh" | sed 's/^/kernel /'
  (cd "$out" && find . -type f ! -name manifest.txt | sed 's|^\./||' | LC_ALL=C sort | while read -r f; do
    echo "file $(sha256sum "$f" | cut -d' ' -f1) $(stat -c %s "$f") $f"
  done)
  (cd "$root" && find cuda include/sgdx/detail -type f | LC_ALL=C sort | while read -r f; do
    echo "source $(sha256sum "$f" | cut -d' ' -f1) $f"
  done)
} >"$out/manifest.txt"

echo "gpu_bundle: $out"
(cd "$out" && find . -type f -printf '%s %P\n' | LC_ALL=C sort -k2 | awk '{printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}')
total="$(find "$out" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
awk -v t="$total" 'BEGIN {printf "gpu_bundle: total %.2f MiB (limit 64 MiB)\n", t / 1048576}'
((total <= limit)) || die "bundle is $total bytes, over the 64 MiB a device run can carry (see docs/cuda.md)"
