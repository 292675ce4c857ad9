#!/usr/bin/env python3
"""Per-sample gradient norms at batch 128 on CPU: the Python peers of sgdx.

The Python side of bench/bench_per_sample.cpp (issue #18). Builds the same
models as sgdx::models::make_model (src/models/models.cpp) layer for layer --
mlp and cnn on 1x28x28 inputs, resnet (ResNetCifar, GroupNorm) on 3x32x32,
10 classes -- takes a batch of 128 randn inputs and random labels with
cross-entropy (mean), and times, interleaved in one process with the same
scheme as bench/bench_util.h (warm-up rounds, then `reps` rounds in which every
candidate runs once in rotating order, median/min/max):

  plain         forward + backward (the baseline of every overhead ratio)
  torch_func    torch.func vmap(grad) per-sample gradients, then their norms
                (no batch gradient is formed)
  opacus_gsm    Opacus GradSampleModule (hooks): forward + backward, then the
                norms of every parameter's .grad_sample
  opacus_ghost  Opacus GradSampleModuleFastGradientClipping with
                use_ghost_clipping=True: forward + backward, then the
                per-sample norms (ghost norms for Linear, Opacus's fast
                gradient clipping for the other layers); the clipped second
                backward of DP training is not run
  backpack      BackPACK BatchL2Grad on the extended model and loss:
                forward + backward in `with backpack(BatchL2Grad())`,
                sqrt of the sum of every parameter's batch_l2

All norms are ||grad_theta l_i|| of the per-sample loss l_i (what sgdx's
PerSampleGradients::norms() returns), and before timing each method's norms
are checked against torch.func's: max relative error <= --tol (1e-4). A
method that raises or disagrees on a model is reported as
"fails: <reason>" and left out of that model's timing.

With --sgdx-json (the output of build/bench/bench_per_sample) the output JSON
also holds sgdx's results and the printed table puts both side by side
(bench/peers/run.sh does this).

Usage: per_sample_peers.py [--out FILE] [--reps 15] [--threads N]
       [--models mlp,cnn,resnet] [--sgdx-json FILE]
"""
import argparse
import copy
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 128
CLASSES = 10
SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28), "resnet": (3, 32, 32)}
METHODS = ["torch_func", "opacus_gsm", "opacus_ghost", "backpack"]


# ---------------------------------------------------------------- the models
# The mirrors of src/models/models.cpp that the training-throughput reference
# uses (scripts/train_torch_reference.py): one definition for both.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from train_torch_reference import make_model as reference_model  # noqa: E402


def make_model(name, shape, classes=CLASSES):
    if name not in SHAPES:
        raise SystemExit(f"unknown model '{name}' (choose from {', '.join(SHAPES)})")
    return reference_model(name, shape, classes)


# ---------------------------------------------------------------- the methods
# Each builder returns a callable that runs one forward+backward (or the
# vmap'd equivalent) on (x, y) and returns the per-sample norms, shape [B].

def build_plain(model):
    def run(x, y):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return run


def build_torch_func(model):
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def run(x, y):
        g = per_sample(params, x, y)
        sq = torch.stack([t.flatten(1).pow(2).sum(1) for t in g.values()]).sum(0)
        return sq.sqrt()
    return run


def build_opacus_gsm(model):
    from opacus import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(model), batch_first=True, loss_reduction="mean")
    params = [p for p in gsm.parameters() if p.requires_grad]

    def run(x, y):
        gsm.zero_grad(set_to_none=True)
        F.cross_entropy(gsm(x), y).backward()
        sq = torch.stack([p.grad_sample.flatten(1).pow(2).sum(1) for p in params]).sum(0)
        return sq.sqrt()
    return run


def build_opacus_ghost(model):
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    gsm = GradSampleModuleFastGradientClipping(copy.deepcopy(model), batch_first=True,
                                               loss_reduction="mean", max_grad_norm=1.0,
                                               use_ghost_clipping=True)

    def run(x, y):
        gsm.zero_grad(set_to_none=True)
        F.cross_entropy(gsm(x), y).backward()
        return gsm.get_norm_sample()
    return run


def build_backpack(model):
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    bp_model = extend(copy.deepcopy(model))
    lossfn = extend(nn.CrossEntropyLoss(reduction="mean"))
    params = [p for p in bp_model.parameters() if p.requires_grad]
    owner = {id(p): type(mod).__name__ for mod in bp_model.modules() for p in mod.parameters(recurse=False)}

    def run(x, y):
        bp_model.zero_grad(set_to_none=True)
        loss = lossfn(bp_model(x), y)
        with backpack(BatchL2Grad()):
            loss.backward()
        missing = sorted({owner[id(p)] for p in params if not hasattr(p, "batch_l2")})
        if missing:
            raise NotImplementedError("BatchL2Grad has no extension for " + ", ".join(missing)
                                      + " (no batch_l2 on its parameters)")
        # batch_l2 is ||grad (l_i / B)||^2 for a mean loss: rescale to ||grad l_i||
        sq = torch.stack([p.batch_l2 for p in params]).sum(0)
        return sq.sqrt() * x.shape[0]
    return run


def brute_force_norms(model, x, y):
    """One backward per sample: the fallback reference when torch.func fails."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
        out.append(sum(t.pow(2).sum() for t in g).sqrt())
    return torch.stack(out).detach().double()


BUILDERS = {"torch_func": build_torch_func, "opacus_gsm": build_opacus_gsm,
            "opacus_ghost": build_opacus_ghost, "backpack": build_backpack}


# ---------------------------------------------------------------- timing
# The scheme of bench/bench_util.h: compare().

def summarize(t):
    t = sorted(t)
    return {"median_s": t[len(t) // 2], "min_s": t[0], "max_s": t[-1]}


def compare(candidates, reps, warmup=3):
    for _ in range(warmup):
        for c in candidates:
            c()
    times = [[] for _ in candidates]
    for r in range(reps):
        for k in range(len(candidates)):
            i = (k + r) % len(candidates)
            start = time.perf_counter()
            candidates[i]()
            times[i].append(time.perf_counter() - start)
    return [summarize(t) for t in times]


def cpu_device_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def pkg_version(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def short_reason(e):
    msg = f"{type(e).__name__}: {e}".strip().splitlines()
    msg = msg[0] if msg else type(e).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


# ---------------------------------------------------------------- main

def bench_model(name, reps, tol, verbose):
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = make_model(name, shape).train()
    x = torch.randn(BATCH, *shape)
    y = torch.randint(0, CLASSES, (BATCH,))
    n_params = sum(p.numel() for p in model.parameters())

    entry = {"model": name, "batch": BATCH, "input_shape": list(shape), "parameters": n_params,
             "parameter_tensors": len(list(model.parameters()))}
    methods = {}
    runners = {}
    # The check runs in float64 (copies of the model and batch): it asks whether a
    # method computes the same quantity as torch.func, free of float32 rounding.
    # The timed float32 runner's error against the float64 reference is recorded too.
    model64, x64 = copy.deepcopy(model).double(), x.double()
    ref64, ref_name = None, "torch_func"

    def rel_err(a, b):
        return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item()

    for m in METHODS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                n64 = BUILDERS[m](model64)(x64, y).detach()
                if n64.shape != (BATCH,):
                    raise RuntimeError(f"norms have shape {tuple(n64.shape)}, expected ({BATCH},)")
                if ref64 is None:
                    if m == "torch_func":
                        ref64 = n64
                    else:  # torch.func failed: check against one backward per sample
                        ref64, ref_name = brute_force_norms(model64, x64, y), "brute_force"
                rel64 = rel_err(n64.double(), ref64)
                if not rel64 <= tol:
                    raise RuntimeError(f"norms differ from {ref_name} (float64): max relative error "
                                       f"{rel64:.3g} > {tol:g}")
                run = BUILDERS[m](model)
                rel32 = rel_err(run(x, y).detach().double(), ref64)
            methods[m] = {"ok": True, "checked_against": ref_name, "max_rel_err_float64": rel64,
                          "max_rel_err_float32": rel32}
            runners[m] = run
            note = f" -- float32 error above {tol:g}" if rel32 > tol else ""
            print(f"  {name:7s} {m:13s} ok (max rel err vs {ref_name}: float64 {rel64:.1e},"
                  f" float32 {rel32:.1e}{note})", flush=True)
        except Exception as e:  # a peer that cannot do this model is a result, not a crash
            reason = short_reason(e)
            methods[m] = {"ok": False, "fails": reason}
            print(f"  {name:7s} {m:13s} fails: {reason}", flush=True)
            if verbose:
                traceback.print_exc()

    plain_run = build_plain(model)
    sink = [0.0]

    def plain():
        plain_run(x, y)

    def timed(run):
        def call():
            sink[0] += float(run(x, y).sum())
        return call

    names = ["plain"] + list(runners)
    timings = compare([plain] + [timed(runners[m]) for m in runners], reps)
    entry["plain"] = timings[0]
    for m, t in zip(names[1:], timings[1:]):
        methods[m].update(t)
        methods[m]["overhead_vs_plain"] = t["median_s"] / timings[0]["median_s"]
    entry["methods"] = methods
    return entry


def fmt_ms(s):
    return f"{1e3 * s:10.2f}"


def print_table(results, sgdx=None):
    sgdx_by_model = {r["model"]: r for r in (sgdx or {}).get("results", [])}
    print()
    print(f"{'model':7s} {'method':15s} {'median ms':>10s} {'plain ms':>10s} {'overhead':>9s} {'vs sgdx':>8s}")
    for r in results:
        s = sgdx_by_model.get(r["model"])
        sgdx_t = s["capture_and_norms"]["median_s"] if s else None
        if s:
            print(f"{r['model']:7s} {'sgdx capture':15s} {fmt_ms(sgdx_t)} {fmt_ms(s['plain']['median_s'])}"
                  f" {s['overhead_vs_plain']:8.2f}x {1.0:7.2f}x")
        for m in METHODS:
            d = r["methods"][m]
            if not d["ok"]:
                print(f"{r['model']:7s} {m:15s} fails: {d['fails']}")
                continue
            vs = f"{d['median_s'] / sgdx_t:7.2f}x" if sgdx_t else f"{'-':>8s}"
            print(f"{r['model']:7s} {m:15s} {fmt_ms(d['median_s'])} {fmt_ms(r['plain']['median_s'])}"
                  f" {d['overhead_vs_plain']:8.2f}x {vs}")
    print("overhead: median over plain forward+backward of the same model, measured in the same process"
          " (sgdx: C++ process, peers: Python process); vs sgdx: median over sgdx's capture median")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="per_sample_peers.json", help="output JSON")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch.set_num_threads (default: torch.get_num_threads())")
    ap.add_argument("--models", default="mlp,cnn,resnet")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="max relative error of a method's norms vs torch.func's")
    ap.add_argument("--sgdx-json", default="", help="bench_per_sample output to merge into --out and the table")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failing methods")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    # hooks on modules whose inputs need no grad (the first layer), and BackPACK on
    # the top-level model "with parameters": expected, not news
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Extension saving to")
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in SHAPES:
            raise SystemExit(f"per_sample_peers.py: unknown model '{m}' (choose from mlp, cnn, resnet)")

    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "opacus": pkg_version("opacus"), "backpack-for-pytorch": pkg_version("backpack-for-pytorch")}
    device = cpu_device_name()
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"per-sample gradient norm peers, batch {BATCH}, {torch.get_num_threads()} threads ({device}, ATen {capability})")
    print("  " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    results = [bench_model(m, args.reps, args.tol, args.verbose) for m in models]

    peers = {"name": "per_sample_peers", "device": device, "aten_cpu_capability": capability,
             "threads": torch.get_num_threads(), "reps": args.reps, "batch": BATCH,
             "tolerance_vs_torch_func": args.tol, "versions": versions, "results": results}
    out = peers
    sgdx = None
    if args.sgdx_json:
        with open(args.sgdx_json) as f:
            sgdx = json.load(f)
        if sgdx.get("threads") != peers["threads"]:
            print(f"warning: sgdx ran with {sgdx.get('threads')} threads, the peers with {peers['threads']}",
                  file=sys.stderr)
        merged = []
        sgdx_by_model = {r["model"]: r for r in sgdx.get("results", [])}
        for r in results:
            s = sgdx_by_model.get(r["model"])
            row = {"model": r["model"], "batch": BATCH, "sgdx": s, "peers": r}
            if s:
                row["peer_median_over_sgdx_capture"] = {
                    m: d["median_s"] / s["capture_and_norms"]["median_s"]
                    for m, d in r["methods"].items() if d["ok"]}
            merged.append(row)
        out = {"name": "per_sample_peers", "device": device, "aten_cpu_capability": capability,
               "threads": peers["threads"], "sgdx_threads": sgdx.get("threads"), "reps": args.reps,
               "batch": BATCH, "versions": versions,
               "sgdx_run": {k: v for k, v in sgdx.items() if k != "results"},
               "peers_run": {k: v for k, v in peers.items() if k != "results"},
               "results": merged}
    print_table(results, sgdx)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
