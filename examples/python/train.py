"""Trains a small classifier on Fashion-MNIST with sgdx's optimizers and samplers.

The Python counterpart of the C++ trainer (examples/train): the same default data
(Debian's dataset-fashion-mnist, standardised with the training file's mean and
standard deviation), the same MLP and CNN, the same default learning rates. Usage,
from the repository root:

    .venv/bin/python examples/python/train.py --optimizer rsgd --sampler importance --epochs 1
    .venv/bin/python examples/python/train.py --optimizer gradqueue --model cnn --workers 2
    .venv/bin/python examples/python/train.py --optimizer svrg --limit 2000 --epochs 3
    .venv/bin/python examples/python/train.py --optimizer sgd --sampler cooldown --imbalance 10
    .venv/bin/python examples/python/train.py --data-dir /work/shared/data/mnist --out runs/mnist

Optimizers: rsgd (sgdx.optim.RSGD), gradqueue (sgdx.optim.GradQueueSGDM), svrg
(sgdx.optim.SVRG, with a full-gradient closure over the training set) and sgd
(torch.optim.SGD with momentum, the baseline). Samplers: uniform (a shuffled
DataLoader), importance (sgdx.data.ImportanceSampler with unbiasing weights),
temperature (sgdx.data.TemperatureSampler over the class labels at --tau) and cooldown
(the same with TemperatureSchedule.cooldown(total_steps, --tau, 1)).

Every epoch's train loss, test loss, test accuracy and seconds go to OUT/metrics.csv and
OUT/metrics.json, and the curves to OUT/curves.png (matplotlib when it is installed,
else gnuplot; neither: no plot, with a message).
"""
import argparse
import csv
import gzip
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import sgdx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist, as in C++
OPTIMIZERS = ("rsgd", "gradqueue", "sgd", "svrg")
SAMPLERS = ("uniform", "importance", "temperature", "cooldown")
# The C++ trainer's defaults (examples/train/options.cpp): 0.01 for the momentum-like methods and SVRG.
DEFAULT_LR = {"rsgd": 0.01, "gradqueue": 0.01, "sgd": 0.01, "svrg": 0.01}
EVAL_CHUNK = 2000  # examples per forward pass when evaluating and in SVRG's full gradient


class DataError(Exception):
    """A dataset that cannot be read; the message names the file or directory."""


# --- data

def read_idx(path: str) -> torch.Tensor:
    """An IDX file of unsigned bytes (gzip-compressed or not) as a uint8 tensor."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read IDX file '{path}': {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"IDX file '{path}' is a corrupt gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"IDX file '{path}' has a bad magic number (first bytes {raw[:4].hex()})")
    kind, ndim = raw[2], raw[3]
    if kind != 0x08:
        raise DataError(f"IDX file '{path}' has element type 0x{kind:02x}; only unsigned bytes (0x08) are read")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"IDX file '{path}' has a truncated or empty header ({ndim} dimensions, {len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(f"IDX file '{path}' has {len(raw)} bytes but its header {list(dims)} needs {expected}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(dims)


def find_split_file(directory: str, stem: str) -> str:
    for suffix in ("", ".gz"):
        path = os.path.join(directory, stem + suffix)
        if os.path.exists(path):
            return path
    raise DataError(f"dataset file '{os.path.join(directory, stem)}[.gz]' not found")


def load_split(directory: str, prefix: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, H, W] in [0, 1] and labels [N] of one split (prefix "train" or "t10k")."""
    images_path = find_split_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = find_split_file(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3:
        raise DataError(f"IDX file '{images_path}' holds {images.dim()}-d data, not images [N, H, W]")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"'{labels_path}' has {labels.shape[0]} labels for {images.shape[0]} images")
    return images.unsqueeze(1).float().div_(255.0), labels.long()


def load_mnist_family(directory: str) -> Dict[str, torch.Tensor]:
    """Both splits, standardised with the whole training file's mean and standard
    deviation (as sgdx::data::load_dataset does)."""
    if not os.path.isdir(directory):
        hint = " (install Debian's dataset-fashion-mnist or pass --data-dir)" if directory == FASHION_MNIST_DIR else ""
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise DataError(f"data directory '{directory}' {what}{hint}")
    train_x, train_y = load_split(directory, "train")
    test_x, test_y = load_split(directory, "t10k")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"data directory '{directory}': training images are {tuple(train_x.shape[1:])}, "
                        f"test images {tuple(test_x.shape[1:])}")
    images64 = train_x.double()
    mean, std = images64.mean().item(), images64.std().item()
    if not std > 0:
        raise DataError(f"data directory '{directory}': the training images are constant, so they cannot be "
                        "standardised")
    return {"train_x": train_x.sub_(mean).div_(std), "train_y": train_y,
            "test_x": test_x.sub_(mean).div_(std), "test_y": test_y}


# --- models

class MLP(nn.Module):
    """in -> 256 -> 128 -> classes with ReLUs (sgdx::models::MLP's default widths)."""

    def __init__(self, in_features: int, classes: int, hidden: Sequence[int] = (256, 128)):
        super().__init__()
        layers: List[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 5x5 conv + max-pool stages (32, 64 channels), then 128 -> classes (sgdx::models::SmallCNN)."""

    def __init__(self, channels: int, height: int, width: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU(),
                                  nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_model(name: str, input_shape: Sequence[int], classes: int) -> nn.Module:
    if name == "mlp":
        return MLP(math.prod(input_shape), classes)
    return SmallCNN(*input_shape, classes)


# --- optimizers and samplers

def make_optimizer(args: argparse.Namespace, model: nn.Module, n_train: int) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if args.optimizer == "rsgd":
        return sgdx.optim.RSGD(params, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
    if args.optimizer == "gradqueue":
        return sgdx.optim.GradQueueSGDM(params, lr=args.lr, momentum=args.momentum,
                                        weight_decay=args.weight_decay, seed=args.seed)
    if args.optimizer == "svrg":
        # n components, minibatches of b; one stage (a full gradient) every ceil(2n/b) steps.
        return sgdx.optim.SVRG(params, lr=args.lr, n=n_train, b=min(args.batch_size, n_train),
                               l2=args.weight_decay, seed=args.seed)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def _one_thread_per_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers only index tensors; leave the cores to the training loop


def make_loader(args: argparse.Namespace, dataset: torch.utils.data.TensorDataset, steps_per_epoch: int):
    """The training DataLoader and the importance sampler (None for the other samplers).
    Batches are (x, y); with the importance sampler (x, y, index, weight): sgdx.data.WithWeights
    appends each example's index (for the score update) and unbiasing weight (for the loss)."""
    common = dict(num_workers=args.workers, worker_init_fn=_one_thread_per_worker if args.workers else None)
    if args.sampler == "uniform":
        generator = torch.Generator().manual_seed(args.seed)
        return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                           generator=generator, **common), None
    if args.sampler == "importance":
        sampler = sgdx.data.ImportanceSampler(len(dataset), args.batch_size, mix=args.mix, seed=args.seed)
        return torch.utils.data.DataLoader(sgdx.data.WithWeights(dataset), batch_sampler=sampler, **common), sampler
    if args.sampler == "cooldown":
        schedule = sgdx.data.TemperatureSchedule.cooldown(args.epochs * steps_per_epoch, args.tau, 1.0)
    else:
        schedule = args.tau
    sampler = sgdx.data.TemperatureSampler(dataset.tensors[1], args.batch_size, schedule, seed=args.seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common), None


# --- progress

class ProgressBar:
    """One line on stderr, redrawn with '\\r' at most ten times a second."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled = total, label, enabled
        self.start = self.last_draw = time.monotonic()
        self.width = 0

    def update(self, done: int, loss: float) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last_draw < 0.1 and done < self.total):
            return
        self.last_draw = now
        rate = done / max(now - self.start, 1e-9)
        tail = f" {done}/{self.total} loss {loss:.4f} {rate:.1f} it/s"
        columns = shutil.get_terminal_size((80, 24)).columns
        bar_width = max(10, min(40, columns - len(self.label) - len(tail) - 4))
        filled = bar_width * done // max(self.total, 1)
        line = f"{self.label} [{'#' * filled}{'.' * (bar_width - filled)}]{tail}"[:columns - 1]
        self.width = max(self.width, len(line))
        sys.stderr.write("\r" + line.ljust(self.width))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


# --- training

def full_gradient_closure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """SVRG's full gradient: grad F = (1/n) sum_i grad f_i into .grad, F returned."""
    n = labels.shape[0]

    def full_gradient() -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, EVAL_CHUNK):
            x = images[start:start + EVAL_CHUNK].to(device)
            y = labels[start:start + EVAL_CHUNK].to(device)
            loss = F.cross_entropy(model(x), y, reduction="sum") / n
            loss.backward()
            total += loss.detach().double().cpu()
        return total

    return full_gradient


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               weights: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step; returns the minimised loss, the per-sample losses and the logits (both
    detached, at the parameters before the step)."""
    last: Dict[str, torch.Tensor] = {}

    def forward_backward() -> torch.Tensor:
        logits = model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        loss = losses.mean() if weights is None else sgdx.data.weighted_mean_loss(losses, weights)
        loss.backward()
        last.update(logits=logits.detach(), losses=losses.detach(), loss=loss.detach())
        return loss

    if isinstance(optimizer, sgdx.optim.SVRG):
        # SVRG calls the closure at the snapshot, then at the current point (the same minibatch both times).
        optimizer.step(forward_backward)
    else:
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        if isinstance(optimizer, sgdx.optim.GradQueueSGDM):
            optimizer.observe_loss(last["loss"].item())  # the batch loss moves its window length
        optimizer.step()
    return last["loss"], last["losses"], last["logits"]


def train_epoch(args: argparse.Namespace, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                loader, importance: Optional[sgdx.data.ImportanceSampler], device: torch.device,
                show_progress: bool) -> float:
    """One pass of the loader; returns the mean minimised loss per example."""
    model.train()
    bar = ProgressBar(len(loader), f"epoch {epoch}/{args.epochs}", show_progress)
    total, count = 0.0, 0
    try:
        for step, batch in enumerate(loader, 1):
            x, y = batch[0].to(device), batch[1].to(device)
            weights = batch[3].to(device) if importance is not None else None
            loss, losses, logits = train_step(model, optimizer, x, y, weights)
            value = loss.item()
            if not math.isfinite(value):
                raise SystemExit(f"train.py: the training loss is {value} at epoch {epoch}, step {step}; "
                                 f"lower --lr (now {args.lr})")
            if importance is not None:
                scores = losses if args.score == "loss" else sgdx.ops.upper_bound_scores(logits, y)
                importance.update(batch[2], scores)
            total += value * y.shape[0]
            count += y.shape[0]
            bar.update(step, total / count)
    finally:
        bar.close()
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) over a whole split."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, labels.shape[0], EVAL_CHUNK):
        x = images[start:start + EVAL_CHUNK].to(device)
        y = labels[start:start + EVAL_CHUNK].to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / labels.shape[0], correct / labels.shape[0]


# --- results

METRIC_FIELDS = ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds")


def write_metrics(out: str, rows: List[Dict[str, Any]], config: Dict[str, Any]) -> None:
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"config": config, "epochs": rows}, f, indent=2)
        f.write("\n")


def gnuplot_string(text: str) -> str:
    """A gnuplot single-quoted string literal: '' is its escaped quote; no newlines."""
    return "'" + " ".join(text.splitlines()).replace("'", "''") + "'"


def plot_with_matplotlib(path: str, rows: List[Dict[str, Any]], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    left.plot(epochs, [r["test_loss"] for r in rows], "s-", label="test")
    left.set(xlabel="epoch", ylabel="cross-entropy")
    left.legend()
    right.plot(epochs, [100 * r["test_accuracy"] for r in rows], "o-", label="test")
    right.set(xlabel="epoch", ylabel="test accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_with_gnuplot(path: str, csv_path: str, title: str, epochs: int) -> None:
    script = "\n".join([
        "set terminal pngcairo size 1000,400 noenhanced",
        f"set xrange [0.5:{epochs + 0.5}]", "set xtics 1" if epochs <= 20 else "set xtics", "set grid",
        f"set output {gnuplot_string(path)}",
        "set datafile separator ','",
        f"set multiplot layout 1,2 title {gnuplot_string(title)}",
        "set xlabel 'epoch'", "set ylabel 'cross-entropy'", "set key top right",
        f"plot {gnuplot_string(csv_path)} using 1:2 skip 1 with linespoints title 'train', "
        "'' using 1:3 skip 1 with linespoints title 'test'",
        "set ylabel 'test accuracy (%)'",
        f"plot {gnuplot_string(csv_path)} using 1:($4*100) skip 1 with linespoints title 'test'",
        "unset multiplot", ""])
    result = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if result.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"gnuplot failed (exit {result.returncode}): {result.stderr.strip()}")


def plot_curves(out: str, rows: List[Dict[str, Any]], title: str) -> Optional[str]:
    """OUT/curves.png by matplotlib or gnuplot; None (with a message) when neither works."""
    path = os.path.join(out, "curves.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if shutil.which("gnuplot") is None:
            print("no plot: neither matplotlib nor gnuplot is installed", file=sys.stderr)
            return None
        try:
            plot_with_gnuplot(path, os.path.join(out, "metrics.csv"), title, len(rows))
        except (RuntimeError, OSError) as e:
            print(f"no plot: {e}", file=sys.stderr)
            return None
        return path
    plot_with_matplotlib(path, rows, title)
    return path


# --- command line

def int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, refused as 'expected <what>, got ...'."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


positive_int = int_at_least(1, "a positive integer")
nonnegative_int = int_at_least(0, "an integer >= 0")


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """A float type for argparse: finite and in the interval (brackets as in its message)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text}")
        return value

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    data = p.add_argument_group("data and model")
    data.add_argument("--data-dir", default=FASHION_MNIST_DIR,
                      help="directory of IDX files train/t10k-{images-idx3,labels-idx1}-ubyte[.gz] "
                           "(e.g. MNIST in /work/shared/data/mnist)")
    data.add_argument("--limit", type=positive_int, default=None,
                      help="train on the first N training images only (quick runs); default: all")
    data.add_argument("--imbalance", type=float_in(1, math.inf, low_open=True, high_open=True), default=None,
                      help="make the training set long-tailed with this head/tail class ratio "
                           "(sgdx.data.long_tailed_indices), for the temperature samplers")
    data.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="MLP 256-128 or a two-conv CNN")
    opt = p.add_argument_group("optimizer")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="rsgd",
                     help="rsgd, gradqueue (GradQueue-SGDM), svrg, or sgd (torch.optim.SGD with momentum)")
    opt.add_argument("--lr", type=float_in(0, math.inf, low_open=True, high_open=True), default=None,
                     help="learning rate (default: 0.01 for every optimizer, as the C++ trainer)")
    opt.add_argument("--momentum", type=float_in(0, 1, high_open=True), default=0.9, help="sgd and gradqueue")
    opt.add_argument("--weight-decay", type=float_in(0, math.inf, high_open=True), default=0.0, help="L2 weight decay")
    smp = p.add_argument_group("sampling")
    smp.add_argument("--sampler", choices=SAMPLERS, default="uniform", help="how the training batches are drawn")
    smp.add_argument("--tau", type=float_in(0, math.inf, low_open=True, high_open=True), default=5.0,
                     help="temperature: tau; cooldown: tau at the start (1 at the end)")
    smp.add_argument("--score", choices=("loss", "upper-bound"), default="loss",
                     help="importance: per-sample loss, or ||softmax - onehot|| (sgdx.ops.upper_bound_scores)")
    smp.add_argument("--mix", type=float_in(0, 1), default=0.1, help="importance: uniform mixing")
    run = p.add_argument_group("run")
    run.add_argument("--epochs", type=positive_int, default=5, help="passes over the training set")
    run.add_argument("--batch-size", type=positive_int, default=128, help="examples per step")
    run.add_argument("--seed", type=nonnegative_int, default=0, help="model init, data order, optimizer draws")
    run.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    run.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads; default: torch's")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: cuda when available")
    run.add_argument("--out", default=None, help="output directory (default: runs/<model>-<optimizer>-<sampler>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar (the per-epoch lines remain)")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.out is None:
        args.out = os.path.join("runs", f"{args.model}-{args.optimizer}-{args.sampler}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda requested, but torch.cuda.is_available() is False")
    return args


def prepare_data(args: argparse.Namespace) -> Dict[str, torch.Tensor]:
    data = load_mnist_family(args.data_dir)
    n = data["train_y"].shape[0]
    if args.limit is not None:
        if args.limit > n:
            raise DataError(f"--limit {args.limit} exceeds the {n} training images in '{args.data_dir}'")
        data["train_x"], data["train_y"] = data["train_x"][:args.limit], data["train_y"][:args.limit]
    if args.imbalance is not None:
        kept = sgdx.data.long_tailed_indices(data["train_y"], args.imbalance, args.seed)
        data["train_x"], data["train_y"] = data["train_x"][kept], data["train_y"][kept]
    if args.batch_size > data["train_y"].shape[0]:
        raise DataError(f"--batch-size {args.batch_size} exceeds the {data['train_y'].shape[0]} training examples")
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    try:
        data = prepare_data(args)
    except DataError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 1
    train_set = torch.utils.data.TensorDataset(data["train_x"], data["train_y"])
    n_train, classes = len(train_set), int(data["train_y"].max()) + 1
    steps_per_epoch = -(-n_train // args.batch_size)

    model = make_model(args.model, tuple(data["train_x"].shape[1:]), classes).to(device)
    optimizer = make_optimizer(args, model, n_train)
    if isinstance(optimizer, sgdx.optim.SVRG):
        optimizer.set_full_gradient_closure(full_gradient_closure(model, data["train_x"], data["train_y"], device))
    loader, importance = make_loader(args, train_set, steps_per_epoch)

    os.makedirs(args.out, exist_ok=True)
    title = (f"{os.path.basename(os.path.normpath(args.data_dir))}, {args.model}, {args.optimizer} "
             f"(lr {args.lr:g}), {args.sampler} sampling, {n_train} training examples")
    print(f"{title}; {steps_per_epoch} steps per epoch on {device}", flush=True)
    show_progress = not args.quiet and sys.stderr.isatty()
    rows: List[Dict[str, Any]] = []
    for epoch in range(1, args.epochs + 1):
        start = time.monotonic()
        train_loss = train_epoch(args, epoch, model, optimizer, loader, importance, device, show_progress)
        seconds = time.monotonic() - start
        test_loss, test_accuracy = evaluate(model, data["test_x"], data["test_y"], device)
        rows.append(dict(epoch=epoch, train_loss=train_loss, test_loss=test_loss, test_accuracy=test_accuracy,
                         seconds=round(seconds, 3)))
        print(f"epoch {epoch}/{args.epochs}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
              f"test accuracy {100 * test_accuracy:.2f}%  {seconds:.2f} s", flush=True)
        write_metrics(args.out, rows, dict(vars(args), device=str(device), n_train=n_train))

    plot = plot_curves(args.out, rows, title)
    print(f"wrote {os.path.join(args.out, 'metrics.csv')}, metrics.json" + (", curves.png" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
