"""examples/python/train.py runs end to end (a short run on the embedded Fashion-MNIST)."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("args", [["--optimizer", "rsgd", "--sampler", "importance", "--workers", "2"],
                                  ["--optimizer", "svrg", "--sampler", "cooldown"]])
def test_example_trains_and_writes_metrics(tmp_path, args):
    cmd = [sys.executable, os.path.join(ROOT, "examples", "python", "train.py"), "--limit", "1000", "--epochs", "2",
           "--threads", "1", "--quiet", "--out", str(tmp_path)] + args
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2
    assert all(math.isfinite(row["train_loss"]) for row in metrics["epochs"])
    assert (tmp_path / "metrics.csv").exists()
