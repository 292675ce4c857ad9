#!/usr/bin/env bash
# The GPU check. Runs ON a lent GPU machine, from the repository root, with the bundle
# that scripts/gpu_bundle.sh made here carried along (nothing is configured or compiled
# there): the CUDA tests, the four CUDA benchmarks and the training-throughput comparison,
# each step under its own timeout (together at most 240 s), never stopping at a failure.
# Everything goes to $OUT (default out/gpu-check): summary.md (one PASS/FAIL/TIMEOUT/
# SKIPPED line per step with its wall time), logs/, gtest/, the benchmarks' JSON,
# train_gpu.json, gpu.txt, nvidia-smi.txt, ldd.txt, manifest.txt, and cuda.md
# (scripts/summarize_cuda.py, also written to docs/results/cuda.md in this tree).
#   gpu_check.sh [--bundle DIR] [--only REGEX] [--timeout S] [--torch-lib DIR]
#   gpu_check.sh --dry-run --torch-lib DIR [--bundle DIR]
#   gpu_check.sh --list-programs   (the programs the steps run: what gpu_bundle.sh stages)
# --only REGEX   run only the steps whose name matches (gpu-info and summarize always run)
# --timeout S    every selected step gets S seconds (a rerun of a step that timed out)
# --torch-lib    the torch/lib folder (default: that of python3's torch)
# --dry-run      here, without a GPU: proves the carried tree is complete (bundle files
#                match the manifest, the manifest's sources match this tree, every program
#                loads with only LD_LIBRARY_PATH=DIR and no rpath, the gtest filters select
#                tests, every step's inputs exist, the bundle is <= 64 MiB, the timeouts sum
#                to <= 240 s). Exits non-zero, naming each problem, otherwise.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
bundle=.gpu-bundle
only=""
timeout_override=""
torch_lib=""
dry_run=0
list_programs=0
budget_s=240
carry_limit=$((64 * 1024 * 1024))
die() { echo "gpu_check: $*" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --bundle) bundle="${2:?--bundle needs a folder}"; shift 2 ;;
    --only) only="${2:?--only needs a pattern}"; shift 2 ;;
    --timeout) timeout_override="${2:?--timeout needs seconds}"; shift 2 ;;
    --torch-lib) torch_lib="${2:?--torch-lib needs a folder}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --list-programs) list_programs=1; shift ;;
    -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$bundle" = /* ]] || bundle="$root/$bundle"
B="$bundle/bin"
OUT="${OUT:-$root/out/gpu-check}"
((dry_run)) && OUT="$(mktemp -d)" && trap 'rm -rf "$OUT"' EXIT

# --- the steps: name, limit in seconds, inputs, command ---------------------------------
# An input "?PATH" is optional (missing: the step is SKIPPED); "device:CMD" is a command
# that only the device needs (not checked by --dry-run); the programs are in $B.
names=()
declare -A limit inputs cmd gtest_bin gtest_filter bench_json
step() { names+=("$1"); limit[$1]=$2; inputs[$1]=$3; cmd[$1]=$4; }
q() { printf '%q' "$1"; }
gtest_step() {  # NAME SECONDS PROGRAM FILTER
  gtest_bin[$1]="$B/$3"; gtest_filter[$1]="$4"
  step "$1" "$2" "$B/$3" "$(q "$B/$3") $(q "--gtest_filter=$4") $(q "--gtest_output=json:$OUT/gtest/$1.json")"
}
bench_step() {  # NAME SECONDS JSON
  bench_json[$1]="$3"
  step "$1" "$2" "$B/$1" "$(q "$B/$1") $(q "$OUT/$3")"
}
step gpu-info 5 "device:nvidia-smi" \
  "nvidia-smi >$(q "$OUT/nvidia-smi.txt") && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $(q "$OUT/gpu.txt")"
# Every suite of tests/cuda/ and every suite named *Cuda elsewhere (the dry run checks this).
# The first program to start loads the CUDA libraries from a cold disk: a little more time.
gtest_step test_rsgd_step_cuda 20 test_rsgd_step_cuda 'RSGDStepCuda.*'
gtest_step test_gradqueue_step_cuda 15 test_gradqueue_step_cuda 'GradQueueStepCuda.*'
gtest_step test_per_sample_cuda 20 test_per_sample_cuda 'PerSampleNormsCuda.*'
gtest_step test_kmeans_cuda 15 test_kmeans_cuda 'KMeansCuda.*'
gtest_step test_gradqueue_cluster_cuda 15 test_gradqueue_cluster_cuda 'GradQueueClusterStats.*'
gtest_step test_gradqueue_sgdm_cuda 20 test_gradqueue 'GradQueueSGDMCuda.*'
gtest_step test_grad_scaler_cuda 10 test_grad_scaler 'GradScalerCuda.*'
gtest_step test_rsgd_cuda 5 test_rsgd 'RSGDCuda.*'
bench_step bench_rsgd_step_cuda 15 rsgd_step_cuda.json
bench_step bench_gradqueue_cuda 20 gradqueue_step_cuda.json
bench_step bench_per_sample_cuda 15 per_sample_cuda.json
bench_step bench_kmeans_cuda 10 kmeans_cuda.json
mnist="$bundle/data/mnist"
step train_throughput 50 \
  "$B/sgdx-train $root/scripts/bench_train_gpu.sh $root/scripts/train_torch_reference.py device:python3 ?$mnist/train-images-idx3-ubyte.gz ?$mnist/train-labels-idx1-ubyte.gz ?$mnist/t10k-images-idx3-ubyte.gz ?$mnist/t10k-labels-idx1-ubyte.gz" \
  "$(q "$root/scripts/bench_train_gpu.sh") $(q "$B/sgdx-train") $(q "$mnist") $(q "$OUT") 3 cuda 0"
step summarize 5 "$root/scripts/summarize_cuda.py python3" \
  "python3 $(q "$root/scripts/summarize_cuda.py") $(q "$OUT") $(q "$OUT/cuda.md") >/dev/null && cp -f $(q "$OUT/cuda.md") $(q "$root/docs/results/cuda.md")"
always="^(gpu-info|summarize)$"

if ((list_programs)); then
  for n in "${names[@]}"; do
    for i in ${inputs[$n]}; do [[ "$i" == "$B"/* ]] && echo "${i#"$B"/}"; done
  done | awk '!seen[$0]++'
  exit 0
fi

[[ -f "$bundle/manifest.txt" ]] || die "no bundle at $bundle (make it here with scripts/gpu_bundle.sh and carry it)"
if [[ -z "$torch_lib" ]]; then
  ((dry_run)) && die "--dry-run needs --torch-lib DIR (the torch/lib the device has, e.g. .venv's)"
  # find_spec locates torch without importing it (an import loads the CUDA libraries: seconds).
  torch_lib="$(python3 -c 'import importlib.util as u, os; print(os.path.join(u.find_spec("torch").submodule_search_locations[0], "lib"))')" ||
    die "python3 has no torch: pass --torch-lib DIR"
fi
[[ -f "$torch_lib/libtorch.so" ]] || die "$torch_lib has no libtorch.so"
torch_lib="$(cd "$torch_lib" && pwd)"
# torch/lib, and the CUDA libraries the wheel keeps beside torch (site-packages/nvidia/*/lib).
lib_path="$torch_lib"
for d in "$torch_lib"/../../nvidia/*/lib; do
  [[ -d "$d" ]] && lib_path+=":$(cd "$d" && pwd)"
done
# Prints the inputs of step $1 that are missing; "?" marks optional ones.
missing_inputs() {
  local i
  for i in ${inputs[$1]}; do
    case "$i" in
      device:*) ((dry_run)) || command -v "${i#device:}" >/dev/null || echo "$i" ;;
      \?*) [[ -e "${i#\?}" ]] || echo "$i" ;;
      /*) [[ -e "$i" ]] || echo "$i" ;;
      *) command -v "$i" >/dev/null || echo "$i" ;;
    esac
  done
}

# --- checks shared by the dry run and the device run -----------------------------------
problems=()
problem() { problems+=("$*"); echo "gpu_check: PROBLEM: $*" >&2; }
check_bundle() {
  local kind sha _size path
  while read -r kind sha _size path; do
    [[ "$kind" == file ]] || continue
    if [[ ! -f "$bundle/$path" ]]; then problem "bundle file $path is missing"
    elif [[ "$(sha256sum "$bundle/$path" | cut -d' ' -f1)" != "$sha" ]]; then problem "bundle file $path differs from its manifest sha256"
    fi
  done <"$bundle/manifest.txt"
  local extra
  extra="$(cd "$bundle" && find . -type f ! -name manifest.txt -printf '%P\n' | while read -r f; do
    grep -q " $f\$" manifest.txt || echo "$f"; done)"
  [[ -z "$extra" ]] || problem "bundle files not in its manifest: $(echo $extra)"
  local total
  total="$(find "$bundle" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
  echo "gpu_check: bundle $bundle: $(awk -v t="$total" 'BEGIN {printf "%.2f MiB", t / 1048576}') (limit 64 MiB)"
  ((total <= carry_limit)) || problem "bundle is $total bytes, over the 64 MiB a run can carry"
}
# The manifest's source hashes against this tree: the programs were built from those.
sources_match=yes
check_sources() {
  local kind sha path changed=()
  while read -r kind sha path; do
    [[ "$kind" == source ]] || continue
    [[ -f "$path" && "$(sha256sum "$path" | cut -d' ' -f1)" == "$sha" ]] || changed+=("$path")
  done <"$bundle/manifest.txt"
  local now
  now="$(find cuda include/sgdx/detail -type f | LC_ALL=C sort)"
  for path in $now; do grep -q " $path\$" "$bundle/manifest.txt" || changed+=("$path (new)"); done
  if ((${#changed[@]})); then
    sources_match="no: ${changed[*]}"
    echo "gpu_check: the bundle was built from other sources than this tree's: ${changed[*]}" >&2
  fi
}
base_libs='^(libc|libm|libdl|libpthread|librt|libutil|libstdc\+\+|libgcc_s|libz)\.so\.[0-9]+$'
# ldd of every bundled program with nothing but LD_LIBRARY_PATH (no rpath, no environment).
check_libraries() {
  local b report="$1"
  : >"$report"
  for b in "$B"/*; do
    local dyn
    dyn="$(readelf -d "$b" 2>&1)" || { problem "$(basename "$b"): not an ELF program"; continue; }
    grep -qE '\((RPATH|RUNPATH)\)' <<<"$dyn" && problem "$(basename "$b") still has an rpath (gpu_bundle.sh removes it)"
    local out
    out="$(env -i LD_LIBRARY_PATH="$lib_path" ldd "$b" 2>&1)"
    { echo "== $(basename "$b")"; echo "$out"; } >>"$report"
    # The driver (libcuda.so.1) exists only on a machine with a GPU.
    local bad
    bad="$(grep -E 'not found|version .* not found' <<<"$out" | grep -v 'libcuda\.so\.1 ' || true)"
    [[ -z "$bad" ]] || problem "$(basename "$b") does not load with LD_LIBRARY_PATH=$lib_path: $(echo $bad)"
    # Anything but the base system libraries must come from the torch wheel's folders: a
    # library found here elsewhere (e.g. /usr/local/lib/libcudart.so.13 of the CUDA
    # toolkit) is missing on the device.
    local name arrow path rest stray=()
    while read -r name arrow path rest; do
      [[ "$arrow" == "=>" && "$path" == /* ]] || continue
      # (the torch libraries' own rpath finds the wheel's CUDA libraries as torch/lib/../../nvidia/...)
      [[ ":$lib_path:" == *":$(dirname "$path"):"* || "$path" == "$torch_lib"/* ]] && continue
      [[ "$name" =~ $base_libs ]] || stray+=("$name => $path")
    done <<<"$out"
    ((${#stray[@]} == 0)) || problem "$(basename "$b") takes libraries from outside the torch wheel: ${stray[*]}"
  done
}

# --- dry run ----------------------------------------------------------------------------
if ((dry_run)); then
  echo "gpu_check: dry run of $bundle against $torch_lib"
  check_bundle
  check_sources
  [[ "$sources_match" == yes ]] || problem "stale bundle: sources changed since it was made (rerun scripts/gpu_bundle.sh after building)"
  check_libraries "$OUT/ldd.txt"
  if ! grep -q "^file " "$bundle/manifest.txt"; then problem "the manifest lists no files"; fi
  sum=0
  for n in "${names[@]}"; do
    sum=$((sum + limit[$n]))
    miss="$(missing_inputs "$n")"
    req="$(grep -v '^?' <<<"$miss" || true)"
    if [[ -n "$req" ]]; then problem "step $n: missing $(echo $req)"
    elif [[ -n "$miss" ]]; then echo "gpu_check: step $n would be SKIPPED: no $(echo ${miss//\?/})"
    fi
    if [[ -n "${gtest_bin[$n]:-}" && -x "${gtest_bin[$n]}" ]]; then
      # Runs the program (static initialisation, gtest) with nothing but LD_LIBRARY_PATH.
      list="$(env -i LD_LIBRARY_PATH="$lib_path" timeout 60 "${gtest_bin[$n]}" --gtest_list_tests "--gtest_filter=${gtest_filter[$n]}" 2>&1)" ||
        { problem "step $n: $(basename "${gtest_bin[$n]}") --gtest_list_tests failed: $(tail -3 <<<"$list")"; continue; }
      count="$(grep -c '^  ' <<<"$list" || true)"
      ((count > 0)) || problem "step $n: --gtest_filter=${gtest_filter[$n]} selects no test in $(basename "${gtest_bin[$n]}")"
      echo "gpu_check: step $n: $count tests ($(basename "${gtest_bin[$n]}") --gtest_filter=${gtest_filter[$n]})"
    fi
  done
  # Every suite of tests/cuda/ and every suite named *Cuda elsewhere belongs to some step.
  while read -r f suite; do
    covered=0
    for n in "${!gtest_filter[@]}"; do [[ ":${gtest_filter[$n]}:" == *":$suite.*:"* ]] && covered=1; done
    ((covered)) || problem "GPU test suite $suite ($f) is run by no step: add a gtest_step to scripts/gpu_check.sh"
  done < <(grep -rHoE '^TEST(_F)?\([A-Za-z0-9_]+,' tests --include='*.cpp' | sed -E 's/:TEST(_F)?\(/ /; s/,$//' |
    awk '$1 ~ /^tests\/cuda\// || $2 ~ /Cuda$/' | sort -u)
  for f in bench/bench_*_cuda.cpp; do
    [[ -n "${limit[$(basename "$f" .cpp)]:-}" ]] || problem "benchmark $f is run by no step: add a bench_step to scripts/gpu_check.sh"
  done
  echo "gpu_check: the device needs $(objdump -T "$B"/* 2>/dev/null | grep -oE 'GLIBC_[0-9.]+|GLIBCXX_[0-9.]+' |
    sort -uV | awk -F_ '{v[$1] = $2} END {printf "glibc >= %s, libstdc++ with GLIBCXX_%s", v["GLIBC"], v["GLIBCXX"]}'), libz.so.1"
  echo "gpu_check: ${#names[@]} steps, timeouts sum to $sum s (limit $budget_s s)"
  ((sum <= budget_s)) || problem "the step timeouts sum to $sum s, over $budget_s s"
  if ((${#problems[@]})); then
    echo "gpu_check: dry run FAILED (${#problems[@]} problems):" >&2
    printf '  - %s\n' "${problems[@]}" >&2
    exit 1
  fi
  echo "gpu_check: dry run passed"
  exit 0
fi

# --- the device run ---------------------------------------------------------------------
export LD_LIBRARY_PATH="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$OUT/logs" "$OUT/gtest"
cp -f "$bundle/manifest.txt" "$OUT/manifest.txt"
check_bundle
check_sources
check_libraries "$OUT/ldd.txt"
summary="$OUT/summary.md"
{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo
  echo "- bundle: $(sed -n 's/^git-head //p' "$bundle/manifest.txt") (made $(sed -n 's/^created //p' "$bundle/manifest.txt")), sources match this tree: $sources_match"
  echo "- torch libraries: $torch_lib"
  ((${#problems[@]})) && printf -- '- problem: %s\n' "${problems[@]}"
  [[ -n "$only" ]] && echo "- only steps matching \`$only\`${timeout_override:+, timeout $timeout_override s each}"
  echo
  echo "| step | result | wall s | limit s | note |"
  echo "|---|---|---|---|---|"
} >"$summary"

gtest_counts() {
  python3 - "$1" <<'PY' 2>/dev/null
import json, sys
j = json.load(open(sys.argv[1]))
skipped = sum(t.get("result") == "SKIPPED" for s in j.get("testsuites", []) for t in s.get("testsuite", []))
print(f"{j['tests']} tests, {j['failures']} failed, {skipped} skipped")
PY
}
status=0
record() {  # NAME RESULT WALL LIMIT NOTE
  echo "| $1 | $2 | $3 | $4 | $5 |" >>"$summary"
  printf 'gpu_check: %-28s %-7s %6s s  %s\n' "$1" "$2" "$3" "$5"
  [[ "$2" == PASS || "$2" == SKIPPED ]] || status=1
}
for n in "${names[@]}"; do
  if [[ -n "$only" && ! "$n" =~ $only && ! "$n" =~ $always ]]; then
    continue
  fi
  t="${limit[$n]}"
  [[ -n "$timeout_override" && ! "$n" =~ $always ]] && t="$timeout_override"
  miss="$(missing_inputs "$n")"
  if [[ -n "$miss" ]]; then
    if grep -qv '^?' <<<"$miss"; then record "$n" FAIL 0 "$t" "missing $(echo $miss)"
    else record "$n" SKIPPED 0 "$t" "no $(echo ${miss//\?/})"
    fi
    continue
  fi
  log="$OUT/logs/$n.log"
  t0=$EPOCHREALTIME
  timeout -k 5 "$t" bash -c "${cmd[$n]}" >"$log" 2>&1
  rc=$?
  wall="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')"
  note=""
  if [[ -n "${gtest_bin[$n]:-}" && -f "$OUT/gtest/$n.json" ]]; then
    note="$(gtest_counts "$OUT/gtest/$n.json")"
    # A CUDA test that skips for want of a device has checked nothing.
    if ((rc == 0)) && grep -q "no CUDA device" "$log"; then rc=1; note+="; skipped: no CUDA device seen"; fi
  fi
  if [[ -n "${bench_json[$n]:-}" ]] && ((rc == 0)) && grep -q '"skipped": *true' "$OUT/${bench_json[$n]}" 2>/dev/null; then
    rc=1; note="skipped itself: no CUDA device seen"
  fi
  case $rc in
    0) record "$n" PASS "$wall" "$t" "$note" ;;
    124 | 137) record "$n" TIMEOUT "$wall" "$t" "$note${note:+; }log: logs/$n.log" ;;
    *)
      last="$(tail -1 "$log")"
      # gtest: the failed tests' names rather than its last line
      [[ -n "${gtest_bin[$n]:-}" ]] && last="$(sed -n 's/^\[  FAILED  \] \([A-Za-z0-9_]*\.[A-Za-z0-9_]*\).*/\1/p' "$log" | sort -u | head -3 | xargs)"
      record "$n" FAIL "$wall" "$t" "exit $rc${note:+; $note}${last:+; $(echo "$last" | tr '|' '/' | cut -c1-120)}" ;;
  esac
done
echo "gpu_check: summary in $summary, results in $OUT"
exit $status
