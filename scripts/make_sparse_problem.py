#!/usr/bin/env python3
"""Writes a generated sparse binary classification problem in LIBSVM format (issue #21's
benchmark data: not committed, regenerated from the seed).

    scripts/make_sparse_problem.py OUT [--rows 500000] [--features 1000000] [--per-row 50] [--seed 1]

Each row has --per-row distinct columns drawn uniformly, values 1 (scaled to unit norm
by sgdx-erm unless --no-normalize); the label is the sign of a hidden linear model plus
noise (30 % of the model's spread), so the problem is not separable.
"""
import argparse
import random
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=500000)
    ap.add_argument("--features", type=int, default=1000000)
    ap.add_argument("--per-row", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.rows <= 0 or a.features <= 0 or not 0 < a.per_row <= a.features:
        ap.error(f"need rows > 0, features > 0 and 0 < per-row <= features, got {a.rows}, {a.features}, {a.per_row}")
    rng = random.Random(a.seed)
    truth = [rng.gauss(0, 1) for _ in range(a.features)]
    with open(a.out, "w") as f:
        for _ in range(a.rows):
            cols = sorted(rng.sample(range(a.features), a.per_row))
            z = sum(truth[j] for j in cols) / a.per_row ** 0.5
            label = "+1" if z + 0.3 * rng.gauss(0, 1) > 0 else "-1"
            f.write(label + "".join(f" {j + 1}:1" for j in cols) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
