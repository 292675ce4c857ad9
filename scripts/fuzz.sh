#!/usr/bin/env bash
# Fuzzes the data readers with libFuzzer (clang, ASan + UBSan):
#   scripts/fuzz.sh [SECONDS] [idx|cifar10|libsvm ...]
# Builds fuzz/fuzz_<reader>.cpp with the reader sources into build-fuzz/ (only what
# changed), runs each harness for SECONDS (default 60) on a scratch copy of its seed
# corpus fuzz/corpus/<reader>/ (the checked-in corpus never grows), and prints per
# reader the executions and the crashes found (0, or the artifact paths). Exit status
# 1 on any finding: a crash, a sanitizer report, an uncaught exception other than
# c10::Error, a hang (-timeout), or an allocation over 2 GB.
# Needs clang++ with libFuzzer (Debian: clang, libclang-rt-14-dev; scripts/setup.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
seconds="${1:-60}"
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "fuzz: SECONDS must be a positive integer, got '$seconds'" >&2; exit 2; }
(($# > 0)) && shift
readers=("$@")
((${#readers[@]})) || readers=(idx cifar10 libsvm)
for r in "${readers[@]}"; do
  [[ -f "$root/fuzz/fuzz_$r.cpp" ]] || { echo "fuzz: unknown reader '$r' (idx, cifar10, libsvm)" >&2; exit 2; }
done

cxx="${SGDX_FUZZ_CXX:-clang++}"
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (Debian: apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
if [[ -n "${SGDX_LIBTORCH:-}" ]]; then
  torch="$SGDX_LIBTORCH"
else
  torch="$(compgen -G "$root/.venv/lib/python3*/site-packages/torch" | head -n1 || true)"
fi
[[ -n "$torch" && -d "$torch/include/ATen" ]] || { echo "fuzz: no LibTorch found (run scripts/setup.sh)" >&2; exit 1; }

out="${SGDX_FUZZ_BUILD_DIR:-$root/build-fuzz}"
mkdir -p "$out/obj"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags=(-std=c++20 -O1 -g $san -fsanitize=fuzzer-no-link -DFMT_HEADER_ONLY=1
        -I"$root/include" -I"$root/fuzz" -isystem "$torch/include")
# Rebuild everything when the compiler, the flags or LibTorch change.
stamp="$out/flags.stamp"
sig="$("$cxx" --version | head -n1) ${cflags[*]}"
[[ -f "$stamp" && "$(cat "$stamp")" == "$sig" ]] || rm -f "$out"/obj/*.o
headers=("$root"/include/sgdx/data/*.h "$root/fuzz/fuzz_common.h")

# Compiles $1 to $2 when $2 is missing or older than $1 or any reader header.
compile() {
  local src="$1" obj="$2" h
  if [[ -f "$obj" && ! "$src" -nt "$obj" ]]; then
    for h in "${headers[@]}"; do [[ "$h" -nt "$obj" ]] && break; done
    [[ "$h" -nt "$obj" ]] || return 0
  fi
  echo "fuzz: compiling ${src#"$root"/}"
  "$cxx" "${cflags[@]}" -c "$src" -o "$obj.tmp" && mv "$obj.tmp" "$obj"
}
units=(src/data/idx.cpp src/data/cifar10.cpp src/data/libsvm.cpp)
for r in "${readers[@]}"; do units+=("fuzz/fuzz_$r.cpp"); done
pids=()
for u in "${units[@]}"; do
  compile "$root/$u" "$out/obj/$(basename "$u" .cpp).o" &
  pids+=($!)
  if ((${#pids[@]} >= $(nproc))); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
echo "$sig" >"$stamp"
readers_o=("$out/obj/idx.o" "$out/obj/cifar10.o" "$out/obj/libsvm.o")
for r in "${readers[@]}"; do
  bin="$out/fuzz_$r"
  if [[ ! -x "$bin" || "$out/obj/fuzz_$r.o" -nt "$bin" || -n "$(find "${readers_o[@]}" -newer "$bin")" ]]; then
    # libstdc++ ahead of LibTorch: see the note in CMakeLists.txt on its broken std::filesystem copy.
    "$cxx" $san -fsanitize=fuzzer "$out/obj/fuzz_$r.o" "${readers_o[@]}" -o "$bin" \
      -Wl,--push-state,--no-as-needed -lstdc++ -Wl,--pop-state \
      -L"$torch/lib" -Wl,-rpath,"$torch/lib" -ltorch_cpu -lc10 -lz
  fi
done

# LibTorch is not instrumented: its operator new/delete pairs and its caches kept
# until exit are not findings.
export ASAN_OPTIONS="${ASAN_OPTIONS:-alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:detect_leaks=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OMP_NUM_THREADS=1
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for r in "${readers[@]}"; do
  artifacts="$out/artifacts/$r"
  rm -rf "$artifacts" && mkdir -p "$artifacts" "$scratch/$r"
  cp -r "$root/fuzz/corpus/$r/." "$scratch/$r/"
  opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$artifacts/")
  [[ "$r" == cifar10 ]] && opts+=(-max_len=16384)  # a record is 3073 bytes
  [[ -f "$root/fuzz/$r.dict" ]] && opts+=(-dict="$root/fuzz/$r.dict")
  log="$out/$r.log"
  rc=0
  nice -n 10 "$out/fuzz_$r" "${opts[@]}" "$scratch/$r" >"$log" 2>&1 || rc=$?
  execs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
  found=("$artifacts"/*)
  if [[ -e "${found[0]}" ]]; then
    status=1
    echo "fuzz: $r: crashes: ${#found[@]} (${found[*]}) after $execs executions; log $log"
    grep -m3 -E 'ERROR: |runtime error:|invariant failed|terminate called|out-of-memory|deadly signal' "$log" | sed 's/^/  /' || true
  elif ((rc != 0)); then
    status=1
    echo "fuzz: $r: harness exited with status $rc and no artifact; log $log"
    tail -n 5 "$log" | sed 's/^/  /'
  else
    echo "fuzz: $r: $execs executions in ${seconds} s, crashes: 0"
  fi
done
exit "$status"
