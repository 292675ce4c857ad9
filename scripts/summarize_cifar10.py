#!/usr/bin/env python3
"""Tables and plots of the CIFAR-10 experiments (scripts/reproduce_cifar10.sh).

Reads <dir>/<experiment folders>/metrics.csv and writes <dir>/summary.md and
<dir>/gradqueue-accuracy.png, <dir>/rsgd-lr.png (gnuplot). Means +- sample std
over seeds of each run's final epoch. Test figures are on the first 1,000 CIFAR-10
test images (all that shared/data holds); validation: 5,000 held-out training
images. Standard library only."""
import csv
import math
import os
import re
import subprocess
import sys
from collections import defaultdict

from summarize_runs import interp, mean, time_to  # one definition of time-to-target

TEST = "test (first 1,000 images)"


def read(path):
    runs = defaultdict(list)  # (label, seed) -> rows in epoch order
    with open(path) as f:
        for row in csv.DictReader(f):
            runs[(row["optimizer"], row["seed"])].append(row)
    return runs


def by_label(runs):
    out = defaultdict(list)
    for (label, _), rows in runs.items():
        out[label].append(rows)
    return out


def ms(v, scale=100.0, digits=2):
    v = [scale * x for x in v if x is not None and not math.isnan(x)]
    if not v:
        return "-"
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def last(rows, key):
    return float(rows[-1][key])


def best_val(rows):
    """(best validation accuracy, test accuracy at that epoch): the first epoch of the best."""
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    return float(best["val_accuracy"]), float(best["test_accuracy"])


def gnuplot(script):
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
        return True
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"summarize_cifar10.py: no plot ({e})", file=sys.stderr)
        return False


def curves(png, title, groups, panels):
    """One PNG of panels (xlabel, xkey, ylabel, ykey, scale, log): every group's mean over
    seeds per epoch."""
    blocks, names = [], list(groups)
    for name in names:
        seeds = groups[name]
        n = min(len(r) for r in seeds)
        keys = sorted({k for p in panels for k in (p[1], p[3])})
        rows = []
        for e in range(n):
            vals = [mean([float(r[e][k]) for r in seeds]) for k in keys]
            rows.append(" ".join(f"{v:.6g}" for v in vals))
        blocks.append((keys, "\n".join(rows) + "\ne\n"))
    cols = (len(panels) + 1) // 2
    script = (f"set terminal pngcairo noenhanced size 1400,{450 * cols} font 'sans,11'\nset output '{png}'\n"
              f"set multiplot layout {cols},2 title '{title}'\nset grid\nset key bottom right\n")
    for xlabel, xkey, ylabel, ykey, scale, log in panels:
        script += f"set xlabel '{xlabel}'\nset ylabel '{ylabel}'\n" + ("set logscale y\n" if log else "unset logscale y\n")
        parts = []
        for name, (keys, _) in zip(names, blocks):
            xi, yi = keys.index(xkey) + 1, keys.index(ykey) + 1
            parts.append(f"'-' using {xi}:(${yi}*{scale}) with linespoints title '{name}'")
        script += "plot " + ", ".join(parts) + "\n" + "".join(b for _, b in blocks)
    script += "unset multiplot\n"
    return gnuplot(script)


VAL_TEST = [("epoch", "epoch", "validation accuracy (%)", "val_accuracy", 100, False),
            ("epoch", "epoch", "test accuracy (%), first 1,000 images", "test_accuracy", 100, False),
            ("training seconds", "seconds", "validation accuracy (%)", "val_accuracy", 100, False),
            ("training seconds", "seconds", "train loss", "train_loss", 1, True)]


def importance(d, out):
    path = os.path.join(d, "importance-resnet", "metrics.csv")
    if not os.path.exists(path):
        return
    groups = by_label(read(path))
    pre = os.path.join(d, "importance-resnet-presample", "metrics.csv")
    if os.path.exists(pre):
        for label, rows in by_label(read(pre)).items():
            groups[label + " (presample R=3)"] = rows
    base = groups["sgdm"]
    best = mean([max(float(r["val_accuracy"]) for r in rows) for rows in base])
    target = best - 0.005
    end_time = min(last(rows, "seconds") for seeds in groups.values() for rows in seeds)  # every run reaches it
    out.append("## Importance sampling (ResNet, SGD-momentum)\n")
    out.append(f"Target: validation accuracy {100 * target:.2f} % (uniform's best, {100 * best:.2f} %, minus 0.5 "
               f"points). Equal time: {end_time:.0f} s of training (the shortest run).\n")
    out.append("Final epoch, and the epoch of each run's best validation accuracy (early stopping by validation).\n")
    out.append(f"| sampling | seeds | {TEST} acc. (%) | validation acc. (%) | best val. (%) | test at best val. (%) | "
               "seconds to target | val. acc. at equal time (%) | train loss at equal time | Q (final) | tau (final) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, seeds in groups.items():
        tt, acc_eq, loss_eq = [], [], []
        for rows in seeds:
            xs = [float(r["seconds"]) for r in rows]
            va = [float(r["val_accuracy"]) for r in rows]
            tt.append(time_to(xs, va, target))
            acc_eq.append(interp(xs, va, end_time))
            loss_eq.append(interp(xs, [float(r["train_loss"]) for r in rows], end_time))
        reached = sum(t is not None for t in tt)
        ttt = "-" if reached == 0 else f"{mean(tt):.0f}" + ("" if reached == len(tt) else f" ({reached}/{len(tt)} seeds)")
        q = [last(r, "quality") for r in seeds]
        out.append(f"| {label} | {len(seeds)} | {ms([last(r, 'test_accuracy') for r in seeds])} | "
                   f"{ms([last(r, 'val_accuracy') for r in seeds])} | {ms([best_val(r)[0] for r in seeds])} | "
                   f"{ms([best_val(r)[1] for r in seeds])} | {ttt} | {ms(acc_eq)} | "
                   f"{ms(loss_eq, 1, 4)} | {ms(q, 1, 3)} | {ms([last(r, 'tau') for r in seeds], 1, 2)} |")
    png = os.path.join(d, "importance-resnet.png")
    if curves(png, "CIFAR-10 ResNet, SGD-momentum: importance sampling (mean of seeds)", groups,
              VAL_TEST + [("epoch", "epoch", "quality Q", "quality", 1, False),
                          ("epoch", "epoch", "tau", "tau", 1, False)]):
        out.append("\nPlot: [importance-resnet.png](importance-resnet.png)")
    out.append("")


def gradqueue(d, out):
    table = defaultdict(dict)  # batch -> method -> (test, val)
    for name in sorted(os.listdir(d)):
        m = re.fullmatch(r"gradqueue-cnn-b(\d+)", name)
        if not m or not os.path.exists(os.path.join(d, name, "metrics.csv")):
            continue
        groups = by_label(read(os.path.join(d, name, "metrics.csv")))
        for label, seeds in groups.items():
            table[int(m.group(1))][label] = seeds
        curves(os.path.join(d, f"{name}.png"), f"CIFAR-10 CNN, batch {m.group(1)}: SGDM vs GradQueue (mean of seeds)",
               groups, VAL_TEST)
    if not table:
        return
    methods = ["sgdm", "gqsgdm", "gqsgdm-k4"]
    out.append("## GradQueue-SGDM (CNN, batch-size sweep, lr = 0.01 sqrt(B/32))\n")
    out.append(f"Final-epoch validation / {TEST} accuracy (%), mean ± std over seeds.\n")
    out.append("| batch | " + " | ".join(f"{m} val. | {m} test" for m in methods) + " |")
    out.append("|---|" + "---|---|" * len(methods))
    dat = []
    for b in sorted(table):
        cells, row = [], [str(b)]
        for m in methods:
            seeds = table[b].get(m, [])
            cells += [ms([last(r, "val_accuracy") for r in seeds]), ms([last(r, "test_accuracy") for r in seeds])]
            row.append(f"{100 * mean([last(r, 'val_accuracy') for r in seeds]):.3f}" if seeds else "NaN")
        out.append(f"| {b} | " + " | ".join(cells) + " |")
        dat.append(" ".join(row))
    png = os.path.join(d, "gradqueue-accuracy.png")
    data = "\n".join(dat)
    plots = ", ".join(f"'-' using 1:{i + 2} with linespoints title '{m}'" for i, m in enumerate(methods))
    if gnuplot("set terminal pngcairo noenhanced size 900,600 font 'sans,11'\n"
               f"set output '{png}'\nset logscale x 2\nset grid\nset key bottom left\n"
               "set title 'CIFAR-10 CNN: final validation accuracy vs batch size (mean of seeds)'\n"
               "set xlabel 'batch size'\nset ylabel 'validation accuracy (%)'\n"
               f"plot {plots}\n" + "".join(data + "\ne\n" for _ in methods)):
        out.append("\nPlots: [gradqueue-accuracy.png](gradqueue-accuracy.png); curves per batch: " +
                   ", ".join(f"[b{b}](gradqueue-cnn-b{b}.png)" for b in sorted(table)))
    out.append("")


def rsgd(d, out):
    root = os.path.join(d, "rsgd-cnn")
    if not os.path.isdir(root):
        return
    grid = defaultdict(dict)  # optimizer -> scale -> seeds
    for name in sorted(os.listdir(root)):
        m = re.fullmatch(r"(\w+)-x([\d.]+)", name)
        path = os.path.join(root, name, "metrics.csv")
        if m and os.path.exists(path):
            grid[m.group(1)][float(m.group(2))] = list(by_label(read(path)).values())[0]
    out.append("## R-SGD against SGD, SGDM and Adam (CNN)\n")
    out.append("Each optimizer at 0.3x, 1x and 3x its default lr (sgd 0.1, sgdm and rsgd 0.01, adam 0.001); "
               "*tuned* is the lr with the best mean validation accuracy, and its test accuracy is reported.\n")
    out.append(f"| optimizer | default lr: val. (%) | default lr: {TEST} (%) | tuned lr | tuned: val. (%) | "
               f"tuned: {TEST} (%) |")
    out.append("|---|---|---|---|---|---|")
    dat = defaultdict(dict)
    for opt in ["sgd", "sgdm", "adam", "rsgd"]:
        if opt not in grid:
            continue
        val = {s: mean([last(r, "val_accuracy") for r in seeds]) for s, seeds in grid[opt].items()}
        best = max(val, key=val.get)
        d0 = grid[opt].get(1.0, [])
        lr0 = {"sgd": 0.1, "adam": 1e-3}.get(opt, 0.01)
        out.append(f"| {opt} | {ms([last(r, 'val_accuracy') for r in d0])} | {ms([last(r, 'test_accuracy') for r in d0])} | "
                   f"{lr0 * best:g} ({best:g}x) | {ms([last(r, 'val_accuracy') for r in grid[opt][best]])} | "
                   f"{ms([last(r, 'test_accuracy') for r in grid[opt][best]])} |")
        for s, v in val.items():
            dat[opt][s] = 100 * v
    png = os.path.join(d, "rsgd-lr.png")
    opts = list(dat)
    blocks = "".join("\n".join(f"{s} {dat[o][s]:.3f}" for s in sorted(dat[o])) + "\ne\n" for o in opts)
    plots = ", ".join(f"'-' using 1:2 with linespoints title '{o}'" for o in opts)
    if opts and gnuplot("set terminal pngcairo noenhanced size 900,600 font 'sans,11'\n"
                        f"set output '{png}'\nset logscale x\nset grid\nset key bottom left\n"
                        "set title 'CIFAR-10 CNN: final validation accuracy vs lr / default lr (mean of seeds)'\n"
                        "set xlabel 'lr multiple of the default'\nset ylabel 'validation accuracy (%)'\n"
                        f"plot {plots}\n" + blocks):
        out.append("\nPlot: [rsgd-lr.png](rsgd-lr.png)")
    out.append("")


def imbalance(d, out):
    for ratio in (100, 10):
        path = os.path.join(d, f"imbalance-cnn-lt{ratio}", "metrics.csv")
        if not os.path.exists(path):
            continue
        if ratio == 100:
            out.append("## Temperature sampling vs scalarization, Cooldown (CNN, CIFAR-10-LT, tau = 5)\n")
            out.append("Head classes: the 5 largest in training; tail: the 5 smallest. Validation and test sets are "
                       "balanced. Gradient-norm variance: the variance of the minibatch gradient norm over an "
                       "epoch's steps, averaged over epochs.\n")
        out.append(f"### Imbalance ratio {ratio}\n")
        out.append(f"| run | seeds | {TEST} acc. (%) | head (%) | tail (%) | validation acc. (%) | grad-norm variance |")
        out.append("|---|---|---|---|---|---|---|")
        for label, seeds in by_label(read(path)).items():
            gv = [mean([float(r["grad_norm_var"]) for r in rows]) for rows in seeds]
            out.append(f"| {label} | {len(seeds)} | {ms([last(r, 'test_accuracy') for r in seeds])} | "
                       f"{ms([last(r, 'head_accuracy') for r in seeds])} | {ms([last(r, 'tail_accuracy') for r in seeds])} | "
                       f"{ms([last(r, 'val_accuracy') for r in seeds])} | {ms(gv, 1, 4)} |")
        png = os.path.join(d, f"imbalance-cnn-lt{ratio}.png")
        if curves(png, f"CIFAR-10-LT (ratio {ratio}) CNN, SGDM: TS vs S vs Cooldown, tau 5 (mean of seeds)",
                  by_label(read(path)),
                  [("epoch", "epoch", "test accuracy (%), first 1,000 images", "test_accuracy", 100, False),
                   ("epoch", "epoch", "train loss", "train_loss", 1, True),
                   ("epoch", "epoch", "head-class test accuracy (%)", "head_accuracy", 100, False),
                   ("epoch", "epoch", "tail-class test accuracy (%)", "tail_accuracy", 100, False),
                   ("epoch", "epoch", "minibatch grad-norm variance", "grad_norm_var", 1, True),
                   ("epoch", "epoch", "validation accuracy (%)", "val_accuracy", 100, False)]):
            out.append(f"\nPlot: [imbalance-cnn-lt{ratio}.png](imbalance-cnn-lt{ratio}.png)\n")


def main(d):
    out = ["# CIFAR-10 experiments\n",
           "Written by scripts/summarize_cifar10.py from the runs of scripts/reproduce_cifar10.sh. "
           "**Test figures are on the first 1,000 of the 10,000 CIFAR-10 test images** (all that shared/data "
           "holds), so one image is 0.1 point; validation: 5,000 training images held out (seed 0).\n"]
    importance(d, out)
    gradqueue(d, out)
    rsgd(d, out)
    imbalance(d, out)
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs", "results", "cifar10"))
