#!/usr/bin/env bash
# Shared-CPU benchmark: wall time of a fixed small sgdx-train job alone and next to one
# competing single-thread CPU-bound process, with the programs' start-up policy for taken
# cores (after: passive OpenMP wait, one thread per free core; examples/common/process_setup.h)
# and without it (before: SGDX_NO_PASSIVE_WAIT=1), interleaved round by round
# in a rotating order. Prints a table of medians and ratios; writes JSON.
#
#   bench/contention.sh [ROUNDS]     (default 5; env: SGDX_TRAIN, CONTENTION_ARGS, CONTENTION_JSON)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
bin=${SGDX_TRAIN:-build/examples/sgdx-train}
json=${CONTENTION_JSON:-bench/results/contention.json}
read -r -a job <<<"${CONTENTION_ARGS:---dataset fashion-mnist --epochs 2 --device cpu --no-progress --no-plot}"
out=$(mktemp -d)
hog=""
cleanup() {
  if [[ -n "$hog" ]]; then kill "$hog" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT

[[ -x "$bin" ]] || { echo "contention.sh: error: $bin not found or not executable (build sgdx-train first)" >&2; exit 1; }
if [[ -n "${OMP_WAIT_POLICY:-}${GOMP_SPINCOUNT:-}${OMP_NUM_THREADS:-}" ]]; then
  echo "contention.sh: error: unset OMP_WAIT_POLICY, GOMP_SPINCOUNT and OMP_NUM_THREADS: they override what is compared" >&2
  exit 1
fi

# One timed run: prints seconds. $1: before|after.
run_job() {
  local t0 t1
  t0=$EPOCHREALTIME
  if [[ $1 == before ]]; then
    SGDX_NO_PASSIVE_WAIT=1 "$bin" "${job[@]}" --out "$out/run" >/dev/null 2>&1
  else
    "$bin" "${job[@]}" --out "$out/run" >/dev/null 2>&1
  fi
  t1=$EPOCHREALTIME
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

start_hog() {
  python3 -c 'while True: pass' &
  hog=$!
  sleep 0.2
}
stop_hog() {
  kill "$hog"
  wait "$hog" 2>/dev/null || true
  hog=""
}

configs=("after alone" "before alone" "after contended" "before contended")
declare -A times
run_job after >/dev/null  # warm-up: page cache, dataset files
for ((r = 0; r < rounds; r++)); do
  for ((k = 0; k < 4; k++)); do
    c=${configs[$(((k + r) % 4))]}
    read -r mode load <<<"$c"
    [[ $load == contended ]] && start_hog
    t=$(run_job "$mode")
    [[ $load == contended ]] && stop_hog
    times[$c]+="$t "
    printf 'round %d/%d  %-17s %7.2f s\n' $((r + 1)) "$rounds" "$c" "$t" >&2
  done
done

mkdir -p "$(dirname "$json")"
python3 - "$json" "$rounds" "$bin" "${job[*]}" "${times[after alone]}" "${times[before alone]}" \
  "${times[after contended]}" "${times[before contended]}" <<'PY'
import json, os, platform, statistics, sys
path, rounds, binary, job = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {k: [float(x) for x in v.split()] for k, v in zip(
    ["after_alone", "before_alone", "after_contended", "before_contended"], sys.argv[5:9])}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
stats = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v} for k, v in runs.items()}
med = {k: s["median"] for k, s in stats.items()}
result = {
    "name": "contention",
    "command": f"{binary} {job}",
    "competitor": "one single-thread CPU-bound process (python3 busy loop, nice 0)",
    "device": "cpu", "cpu_model": cpu, "cores": os.cpu_count(),
    "isa": "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "other"),
    "rounds": rounds,
    "after": "default: if another task is runnable at start-up, OMP_WAIT_POLICY=passive and one OpenMP thread per free core",
    "before": "SGDX_NO_PASSIVE_WAIT=1: libgomp defaults (spin 300000, one thread per core)",
    "seconds": stats,
    "ratio_contended_over_alone": {"after": med["after_contended"] / med["after_alone"],
                                   "before": med["before_contended"] / med["before_alone"]},
    "ratio_after_over_before": {"alone": med["after_alone"] / med["before_alone"],
                                "contended": med["after_contended"] / med["before_contended"]},
    "targets": {"contended_over_alone_max": 1.8, "alone_after_over_before_max": 1.05},
}
json.dump(result, open(path, "w"), indent=2)
r = result
print(f"CPU: {cpu} ({os.cpu_count()} cores), {rounds} rounds, median wall seconds [min-max]")
print(f"{'':8}{'alone':>22}{'contended':>22}{'contended/alone':>18}")
for m in ("before", "after"):
    a, c = stats[f"{m}_alone"], stats[f"{m}_contended"]
    print(f"{m:8}{a['median']:8.2f} [{a['min']:5.2f}-{a['max']:5.2f}]{c['median']:8.2f} [{c['min']:5.2f}-{c['max']:5.2f}]"
          f"{r['ratio_contended_over_alone'][m]:17.2f}x")
print(f"after/before: alone {r['ratio_after_over_before']['alone']:.3f}x, "
      f"contended {r['ratio_after_over_before']['contended']:.3f}x  -> {path}")
PY
