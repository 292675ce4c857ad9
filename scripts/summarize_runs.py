#!/usr/bin/env python3
"""Time-to-target and equal-time comparisons from sgdx-train metrics.csv files.

For each file: the target is the best test accuracy the *uniform* run (the label
without '+') reaches, minus 0.5 points; for every run, the mean over seeds of
  - the training seconds at the first epoch whose test accuracy >= target
    (linear interpolation between epochs; '-' if never reached),
  - the test accuracy and training loss at the uniform run's total time
    (interpolated along each run's own curve; '-' if the run ended earlier).
Standard library only."""
import csv
import sys
from collections import defaultdict


def interp(xs, ys, x):
    if not xs or x > xs[-1] + 1e-9:
        return None
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if xs[i] >= x:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] > xs[i - 1] else 1.0
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


def time_to(xs, accs, target):
    prev_t, prev_a = 0.0, None
    for t, a in zip(xs, accs):
        if a >= target:
            if prev_a is None or a == prev_a:
                return t
            return prev_t + (target - prev_a) / (a - prev_a) * (t - prev_t)
        prev_t, prev_a = t, a
    return None


def mean(v):
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(paths):
    # A folder NAME-presample holds presampling runs whose uniform baseline is in NAME:
    # the two are read together, the presampling labels marked.
    groups = defaultdict(list)
    for path in paths:
        folder = path.split("/")[-2]
        base = folder[: -len("-presample")] if folder.endswith("-presample") else folder
        groups[(path.rsplit("/", 2)[0], base)].append((path, folder != base))

    for (parent, base_name), files in sorted(groups.items()):
        path = f"{parent}/{base_name}/metrics.csv"
        runs = defaultdict(lambda: defaultdict(list))  # label -> seed -> rows
        for file, presample in sorted(files, key=lambda x: x[1]):
            with open(file) as f:
                for row in csv.DictReader(f):
                    label = row["optimizer"] + (" (presample 3)" if presample else "")
                    runs[label][row["seed"]].append(row)
        uniform = [k for k in runs if "+" not in k]
        if not uniform:
            continue
        base = uniform[0]
        best = mean([max(float(r["test_accuracy"]) for r in rows) for rows in runs[base].values()])
        target = best - 0.005
        end_time = mean([float(rows[-1]["seconds"]) for rows in runs[base].values()])
        print(f"### {path.split('/')[-2]}\n")
        print(f"target test accuracy {100 * target:.2f} % (uniform best {100 * best:.2f} % minus 0.5); "
              f"equal time = uniform's {end_time:.1f} s\n")
        print("| run | seconds to target | test acc. at equal time (%) | train loss at equal time | final Q | final tau |")
        print("|---|---|---|---|---|---|")
        for label, seeds in runs.items():
            tt, acc_eq, loss_eq, q, tau = [], [], [], [], []
            for rows in seeds.values():
                xs = [float(r["seconds"]) for r in rows]
                accs = [float(r["test_accuracy"]) for r in rows]
                losses = [float(r["train_loss"]) for r in rows]
                tt.append(time_to(xs, accs, target))
                a = interp(xs, accs, end_time)
                acc_eq.append(None if a is None else 100 * a)
                loss_eq.append(interp(xs, losses, end_time))
                qv = rows[-1].get("quality", "nan")
                q.append(None if qv in ("nan", "") else float(qv))
                tau.append(float(rows[-1].get("tau", 0) or 0))
            reached = sum(t is not None for t in tt)
            tt_text = fmt(mean(tt), ".1f") + ("" if reached == len(tt) else f" ({reached}/{len(tt)} seeds)")
            print(f"| {label} | {tt_text} | {fmt(mean(acc_eq), '.2f')} | {fmt(mean(loss_eq), '.4f')} | "
                  f"{fmt(mean(q), '.3f')} | {fmt(mean(tau), '.2f')} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
