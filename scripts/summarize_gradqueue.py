#!/usr/bin/env python3
"""Summary of the GradQueue batch-size sweep (scripts/reproduce_gradqueue.sh).

Reads <dir>/<dataset>-<model>-b<B>/metrics.csv, takes every run's final-epoch
test accuracy, and writes <dir>/summary.md (mean +- std over seeds per batch size
and method, the gain over SGD-momentum in points, and a check of the claim
"GQ >= SGDM once the batch exceeds SGDM's best batch size") and one PNG per
dataset (<dir>/<dataset>-<model>-accuracy.png, gnuplot). Standard library only."""
import csv
import math
import os
import re
import subprocess
import sys
from collections import defaultdict

METHODS = ["sgdm", "gqsgdm", "gqsgdm-k2", "gqsgdm-k4", "gqsgdm-k8"]


def mean_std(v):
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def main(d):
    acc = defaultdict(lambda: defaultdict(dict))  # (ds, model) -> B -> method -> [acc per seed]
    for name in sorted(os.listdir(d)):
        m = re.fullmatch(r"(.+)-(mlp|cnn|resnet)-b(\d+)", name)
        path = os.path.join(d, name, "metrics.csv")
        if not m or not os.path.exists(path):
            continue
        key, b = (m.group(1), m.group(2)), int(m.group(3))
        last = {}
        with open(path) as f:
            for row in csv.DictReader(f):
                k = (row["optimizer"], row["seed"])
                if k not in last or int(row["epoch"]) > int(last[k]["epoch"]):
                    last[k] = row
        for (opt, _), row in last.items():
            acc[key][b].setdefault(opt, []).append(100 * float(row["test_accuracy"]))
    out = ["# GradQueue batch-size sweep: final test accuracy (%)", ""]
    for (ds, model), by_b in sorted(acc.items()):
        bs = sorted(by_b)
        methods = [m for m in METHODS if any(m in by_b[b] for b in bs)]
        seeds = max(len(v) for b in bs for v in by_b[b].values())
        out += [f"## {ds} / {model} ({seeds} seeds, mean ± std)", ""]
        out.append("| batch | " + " | ".join(methods) + " |")
        out.append("|---" * (len(methods) + 1) + "|")
        for b in bs:
            cells = []
            for m in methods:
                if m not in by_b[b]:
                    cells.append("-")
                    continue
                mu, sd = mean_std(by_b[b][m])
                cell = f"{mu:.2f} ± {sd:.2f}"
                if m != "sgdm" and "sgdm" in by_b[b]:
                    cell += f" ({mu - mean_std(by_b[b]['sgdm'])[0]:+.2f})"
                cells.append(cell)
            out.append(f"| {b} | " + " | ".join(cells) + " |")
        # The claim: beyond SGDM's best batch size, GQ >= SGDM.
        sg = {b: mean_std(by_b[b]["sgdm"])[0] for b in bs if "sgdm" in by_b[b]}
        if sg:
            best_b = max(sg, key=sg.get)
            beyond = [b for b in bs if b > best_b]
            out += ["", f"SGD-momentum's best batch size: {best_b} ({sg[best_b]:.2f} %)."]
            for m in methods[1:]:
                wins = [b for b in beyond if m in by_b[b] and mean_std(by_b[b][m])[0] >= sg[b]]
                below = [b for b in bs if b <= best_b and m in by_b[b] and mean_std(by_b[b][m])[0] >= sg[b]]
                out.append(f"- {m}: >= SGDM at {len(wins)}/{len(beyond)} batch sizes above it "
                           f"({', '.join(map(str, wins)) or 'none'}); at or below it: {len(below)}/"
                           f"{len([b for b in bs if b <= best_b])}")
        out.append("")
        plot(d, ds, model, bs, methods, by_b)
        out += [f"![accuracy vs batch size]({ds}-{model}-accuracy.png)", ""]
    text = "\n".join(out)
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def plot(d, ds, model, bs, methods, by_b):
    data = os.path.join(d, f"{ds}-{model}-accuracy.dat")
    with open(data, "w") as f:
        for m in methods:
            f.write(f'"{m}"\n')
            for b in bs:
                if m in by_b[b]:
                    mu, sd = mean_std(by_b[b][m])
                    f.write(f"{b} {mu:.4f} {sd:.4f}\n")
            f.write("\n\n")
    png = os.path.join(d, f"{ds}-{model}-accuracy.png")
    script = f"""set terminal pngcairo size 900,560 noenhanced
set output '{png}'
set title '{ds} / {model}: final test accuracy vs batch size (lr = 0.01 sqrt(B/32), same epochs)'
set logscale x 2
set xlabel 'batch size'
set ylabel 'test accuracy (%)'
set key bottom left
set grid
plot for [i=0:{len(methods) - 1}] '{data}' index i using 1:2:3 with yerrorlines title columnheader(1)
"""
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"warning: no plot ({e})", file=sys.stderr)
    os.remove(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/gradqueue")
