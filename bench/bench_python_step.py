"""Python optimizer step vs the C++ step of the same optimizer, ResNet-18 parameter set.

Usage:
    .venv/bin/python bench/bench_python_step.py [--reps 100] [--warmup 5] [--threads 1,2] [--overhead-reps 2000]
        [--device cpu|cuda] [--shapes auto|torchvision|builtin] [--json OUT]

What is timed, on the parameter set of a torchvision ResNet-18 (11.7M float32
parameters in 62 tensors; from ``torchvision.models.resnet18()`` when it imports, else
the shape list of ``bench/bench_util.h``; the output says which), with fixed random
gradients set once in ``.grad`` (the steps do not need fresh gradients):

* **Python step**: ``opt.step()`` of ``sgdx.optim.RSGD`` / ``sgdx.optim.GradQueueSGDM``,
  i.e. the ``torch.optim.Optimizer`` path: PyTorch's step wrapper (profiler record and
  step hooks), ``_SgdxOptimizer.step`` (option sync, AMP attributes, closure adapter),
  then the pybind11 call below.
* **C++ step**: ``opt._impl.step(None)`` on the *same* optimizer object: the C++
  optimizer's ``step()`` entered through one pybind11 call that releases the GIL
  around it (``python/src/module.cpp``, ``bind_optimizer``) -- no Python in between.
  Both paths step the same C++ optimizer over the same tensors, so their difference
  is exactly the Python call overhead.
* ``torch.optim.SGD(foreach=True, momentum=0.9)`` on its own copy of the parameter set,
  beside them for scale.

Variants: RSGD (per-element Bernoulli, defaults), GradQueueSGDM storage="exact" and
storage="ema" (element granularity, defaults). Every variant runs ``--warmup`` times
(the first, lazy-state step included), then ``--reps`` rounds in each of which every
variant runs once; the order rotates by one every two rounds and is reversed on odd
rounds (A B C, C B A, B C A, A C B, ..), so that no variant always follows the same
one (a plain rotation would always run the C++ step right after the Python step of the
same optimizer, on tensors still in cache). On CUDA each call is bracketed by
``torch.cuda.synchronize()``.

Reported per thread count (``--threads``; default 1 and ``torch.get_num_threads()``):
median/min/max per variant; per optimizer the median of the per-round ratios
Python / C++ with a bootstrap 95% interval of that median and the per-round min/max,
the ratio of medians and the median per-round difference (the overhead in us); each
variant's median over torch's SGD. Beside them, the call overhead alone
(``--overhead-reps`` interleaved rounds of both paths on 62 one-element tensors, where
the step itself costs next to nothing): the difference the ratio should reflect. Target: Python step / C++ step <= 1.05.

The ISA line: sgdx's CPU kernels pick avx512 / avx2 / baseline at start-up
(``include/sgdx/cpu_isa.h``; SGDX_CPU_ISA overrides); the line reports sgdx's own choice
(``sgdx._C.cpu_isa()``); SGDX_CPU_ISA=avx2 runs the AVX2 path on an AVX-512 machine.
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

import sgdx
import sgdx.optim

TARGET = 1.05


# --- parameter set
def resnet18_shapes_builtin() -> List[Tuple[int, ...]]:
    """bench_util.h's resnet18_shapes(), the same list in the same order."""
    s: List[Tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin_stage = 64
    for out in (64, 128, 256, 512):
        for block in range(2):
            cin = cin_stage if block == 0 else out
            s += [(out, cin, 3, 3), (out,), (out,), (out, out, 3, 3), (out,), (out,)]
            if block == 0 and cin != out:
                s += [(out, cin, 1, 1), (out,), (out,)]
        cin_stage = out
    s += [(1000, 512), (1000,)]
    return s


def resnet18_shapes(which: str) -> Tuple[List[Tuple[int, ...]], str]:
    if which in ("auto", "torchvision"):
        try:
            import torchvision  # noqa: F401

            model = torchvision.models.resnet18()
            shapes = [tuple(p.shape) for p in model.parameters()]
            return shapes, f"torchvision {torchvision.__version__} models.resnet18()"
        except ImportError:
            if which == "torchvision":
                raise
    return resnet18_shapes_builtin(), "built-in shape list (bench/bench_util.h resnet18_shapes)"


def make_params(shapes: Sequence[Tuple[int, ...]], device: torch.device, seed: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ps = []
    for shape in shapes:
        p = torch.randn(shape, generator=g).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=g).to(device)
        ps.append(p)
    return ps


# --- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa() -> Dict[str, str]:
    """The variant sgdx's CPU kernels run (sgdx's own choice, include/sgdx/cpu_isa.h)."""
    return {"cpu_isa_active": sgdx._C.cpu_isa(), "cpu_isa_source": "sgdx._C.cpu_isa()",
            "cpu_flags_avx512f": str("avx512f" in cpu_flags()), "cpu_flags_avx2": str("avx2" in cpu_flags())}


# --- timing
def timed(fn: Callable[[], object], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_rounds(candidates: List[Callable[[], object]], reps: int, warmup: int, cuda: bool) -> List[List[float]]:
    for _ in range(warmup):
        for c in candidates:
            c()
    if cuda:
        torch.cuda.synchronize()
    n = len(candidates)
    times: List[List[float]] = [[0.0] * reps for _ in range(n)]
    for r in range(reps):
        for i in round_order(n, r):
            times[i][r] = timed(candidates[i], cuda)
    return times


def round_order(n: int, r: int) -> List[int]:
    """Round r's order: rotated by r // 2, reversed on odd rounds. A pure rotation keeps
    every variant's predecessor fixed (the Python step would always follow another
    optimizer, its C++ step always its own Python step, whose tensors are still in cache);
    reversing every other round gives each variant both neighbours equally often."""
    order = [(k + r // 2) % n for k in range(n)]
    return order[::-1] if r % 2 else order


def summary(t: List[float]) -> Dict[str, float]:
    return {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}


def bootstrap_median_ci(x: List[float], n_boot: int = 2000, seed: int = 0) -> Tuple[float, float]:
    rng = random.Random(seed)
    n = len(x)
    meds = sorted(statistics.median(rng.choices(x, k=n)) for _ in range(n_boot))
    return meds[int(0.025 * (n_boot - 1))], meds[int(0.975 * (n_boot - 1))]


def call_overhead(make_opt: Callable[[List[torch.Tensor]], torch.optim.Optimizer], n_tensors: int,
                  device: torch.device, reps: int, cuda: bool) -> Dict[str, float]:
    """Python step minus C++ step on n_tensors one-element tensors: the call overhead
    alone, where the steps themselves cost next to nothing."""
    ps = [torch.zeros(1, device=device, requires_grad=True) for _ in range(n_tensors)]
    for p in ps:
        p.grad = torch.ones(1, device=device)
    opt = make_opt(ps)
    times = run_rounds([opt.step, lambda: opt._impl.step(None)], reps, 20, cuda)
    py, cx = statistics.median(times[0]), statistics.median(times[1])
    return {"python_median_s": py, "cxx_median_s": cx,
            "overhead_median_s": statistics.median(a - b for a, b in zip(*times))}


# --- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=100, help="interleaved rounds (default 100)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up rounds (default 5)")
    ap.add_argument("--threads", default=None,
                    help="comma-separated intra-op thread counts (default: 1 and torch.get_num_threads())")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", default="auto", choices=["auto", "torchvision", "builtin"],
                    help="parameter shapes: torchvision's resnet18 when importable (auto), or bench_util.h's list")
    ap.add_argument("--overhead-reps", type=int, default=2000,
                    help="rounds of the call-overhead check on one-element tensors (0: skip; default 2000)")
    ap.add_argument("--lr", type=float, default=1e-6, help="learning rate of every optimizer (small: params stay put)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 1:
        ap.error("--reps and --warmup must be >= 1 (warm-up takes the lazy first step)")

    default_threads = torch.get_num_threads()
    if args.threads:
        thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    else:
        thread_counts = sorted({1, default_threads})
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    device = torch.device(args.device)

    torch.manual_seed(0)
    shapes, shapes_source = resnet18_shapes(args.shapes)
    n_params = sum(int(torch.Size(s).numel()) for s in shapes)
    isa = cpu_isa()
    dev_name = f"cpu: {cpu_model()}" if not cuda else f"cuda: {torch.cuda.get_device_name(device)}"

    lr = args.lr
    rsgd = sgdx.optim.RSGD(make_params(shapes, device, 1), lr=lr)
    gq_exact = sgdx.optim.GradQueueSGDM(make_params(shapes, device, 2), lr=lr, storage="exact")
    gq_ema = sgdx.optim.GradQueueSGDM(make_params(shapes, device, 3), lr=lr, storage="ema")
    sgd = torch.optim.SGD(make_params(shapes, device, 4), lr=lr, momentum=0.9, foreach=True)

    sgdx_opts = [("RSGD", "RSGD (element)", rsgd),
                 ("GradQueueSGDM_exact", "GradQueueSGDM storage=exact", gq_exact),
                 ("GradQueueSGDM_ema", "GradQueueSGDM storage=ema", gq_ema)]
    makers = {"RSGD": lambda ps: sgdx.optim.RSGD(ps, lr=lr),
              "GradQueueSGDM_exact": lambda ps: sgdx.optim.GradQueueSGDM(ps, lr=lr, storage="exact"),
              "GradQueueSGDM_ema": lambda ps: sgdx.optim.GradQueueSGDM(ps, lr=lr, storage="ema")}
    # (key, label, callable); python and C++ variants of one optimizer share its object.
    variants: List[Tuple[str, str, Callable[[], object]]] = [
        ("torch_sgd_foreach", "torch.optim.SGD foreach, momentum 0.9", sgd.step)]
    for key, label, opt in sgdx_opts:
        variants.append((f"{key}/python", f"{label}: opt.step()", opt.step))
        variants.append((f"{key}/cxx", f"{label}: opt._impl.step(None)", lambda o=opt: o._impl.step(None)))

    print(f"# Python step vs C++ step, ResNet-18 parameter set ({n_params} float32 parameters in "
          f"{len(shapes)} tensors)")
    print(f"- shapes: {shapes_source}")
    print(f"- device: {dev_name}; sgdx ISA: {isa['cpu_isa_active']} ({isa['cpu_isa_source']})")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}, sgdx {sgdx.__version__}; "
          f"reps {args.reps}, warm-up {args.warmup}, order rotating, reversed every other round")
    print("- C++ step = opt._impl.step(None): the C++ optimizer's step() in one pybind11 call, GIL released; "
          "Python step = opt.step() on the same optimizer object")

    results = []
    passed_all = True
    for threads in thread_counts:
        torch.set_num_threads(threads)
        times = run_rounds([v[2] for v in variants], args.reps, args.warmup, cuda)
        by_key = {v[0]: t for v, t in zip(variants, times)}
        ref_med = statistics.median(by_key["torch_sgd_foreach"])

        print(f"\n## {threads} thread(s) (torch.get_num_threads() = {torch.get_num_threads()})\n")
        print("| variant | median ms | min ms | max ms | / torch SGD |")
        print("|---|---:|---:|---:|---:|")
        vjson = {}
        for key, label, _ in variants:
            s = summary(by_key[key])
            s["ratio_vs_torch_sgd_foreach"] = s["median_s"] / ref_med
            vjson[key] = s
            print(f"| {label} | {1e3 * s['median_s']:.3f} | {1e3 * s['min_s']:.3f} | {1e3 * s['max_s']:.3f} | "
                  f"{s['ratio_vs_torch_sgd_foreach']:.3f} |")

        floor = {}
        if args.overhead_reps > 0:
            for key, _, _ in sgdx_opts:
                floor[key] = call_overhead(makers[key], len(shapes), device, args.overhead_reps, cuda)
        print(f"\n| optimizer | Python / C++ (median of per-round ratios) | bootstrap 95% | per-round min..max "
              f"| ratio of medians | overhead us (median diff) | call overhead us ({len(shapes)} x 1 element) "
              f"| <= {TARGET} |")
        print("|---|---:|---:|---:|---:|---:|---:|:---:|")
        rjson = {}
        for key, label, _ in sgdx_opts:
            py, cx = by_key[f"{key}/python"], by_key[f"{key}/cxx"]
            ratios = [a / b for a, b in zip(py, cx)]
            diffs = [a - b for a, b in zip(py, cx)]
            med = statistics.median(ratios)
            lo, hi = bootstrap_median_ci(ratios)
            rom = statistics.median(py) / statistics.median(cx)
            ok = med <= TARGET
            passed_all &= ok
            rjson[key] = {"ratio_median_of_rounds": med, "ratio_bootstrap95": [lo, hi],
                          "ratio_round_min": min(ratios), "ratio_round_max": max(ratios),
                          "ratio_of_medians": rom, "overhead_median_s": statistics.median(diffs),
                          "target": TARGET, "pass": ok}
            if key in floor:
                rjson[key]["call_overhead_one_element_tensors"] = floor[key]
            fl = f"{1e6 * floor[key]['overhead_median_s']:.1f}" if key in floor else "-"
            print(f"| {label} | {med:.4f} | {lo:.4f}..{hi:.4f} | {min(ratios):.3f}..{max(ratios):.3f} | "
                  f"{rom:.4f} | {1e6 * statistics.median(diffs):.1f} | {fl} | {'yes' if ok else 'NO'} |")
        results.append({"threads": threads, "variants": vjson, "python_over_cxx": rjson,
                        "reference_torch_sgd_foreach": summary(by_key["torch_sgd_foreach"])})

    extra = {"GradQueueSGDM_exact_state_bytes": gq_exact.state_bytes(),
             "GradQueueSGDM_ema_state_bytes": gq_ema.state_bytes()}
    print(f"\ntarget: Python step / C++ step <= {TARGET} (median of per-round ratios), every optimizer, "
          f"every thread count: {'met' if passed_all else 'NOT met'}")
    if args.json:
        j = {"name": "python_step_resnet18", "device": dev_name, "dtype": "float32", "parameters": n_params,
             "tensors": len(shapes), "shapes_source": shapes_source, "reps": args.reps, "warmup": args.warmup,
             "lr": lr, "torch_version": torch.__version__, "python_version": platform.python_version(),
             "sgdx_version": sgdx.__version__, "default_threads": default_threads,
             "cxx_step": "opt._impl.step(None): C++ optimizer step() in one pybind11 call, GIL released",
             "python_step": "opt.step() (torch.optim.Optimizer path) on the same optimizer object",
             "results": results, "target": TARGET, "pass": passed_all, **isa, **extra}
        with open(args.json, "w") as f:
            json.dump(j, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
