#!/usr/bin/env python3
"""The PyTorch (Python API) side of the sgdx-train throughput comparisons
(scripts/bench_train_gpu.sh on a GPU, bench/train_throughput.sh on the CPU).

Trains the same model as `sgdx-train --model M`, layer for layer as
src/models/models.cpp builds it:
  mlp     sgdx::models::MLP: flatten, Linear(784, 256), ReLU, Linear(256, 128),
          ReLU, Linear(128, classes);
  cnn     sgdx::models::SmallCNN: Conv2d(c, 32, 5, pad 2), ReLU, MaxPool2d(2),
          Conv2d(32, 64, 5, pad 2), ReLU, MaxPool2d(2), Flatten, Linear(64*H/4*W/4,
          128), ReLU, Linear(128, classes);
  resnet  sgdx::models::ResNetCifar: 3x3 conv 16 + GroupNorm + ReLU, three stages
          of one BasicBlock each at widths 16/32/64 with GroupNorm(min(8, width)),
          1x1 conv shortcuts, global average pool, Linear (the default).
with SGD + momentum 0.9 on MNIST-family IDX files, batch 128, the inputs scaled
to [0, 1] and standardised with the training set's mean and standard deviation
as sgdx does (sgdx::data::load_dataset), a fresh random order per epoch, the
batch gathered with index_select and moved to the device per step and the loss
read (.item()) every step as the sgdx trainer does. Prints and writes JSON with
images/s of the training loop (evaluation excluded, GPU synchronised at the end
of each epoch).

Usage: train_torch_reference.py --data-dir DIR [--model resnet] [--epochs 2]
       [--batch-size 128] [--lr 0.01] [--device cuda] [--threads N]
       [--train-subset N] [--out result.json]
"""
import argparse
import gzip
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    for candidate in (path, path + ".gz"):
        if os.path.exists(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rb") as f:
                data = f.read()
            break
    else:
        raise SystemExit(f"train_torch_reference.py: missing dataset file {path}[.gz]")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


class MLP(nn.Module):
    """sgdx::models::MLP(in_features, {256, 128}, classes)."""

    def __init__(self, in_features, classes, hidden=(256, 128)):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """sgdx::models::SmallCNN(channels, height, width, classes)."""

    def __init__(self, channels, height, width, classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU(),
                                  nn.Linear(128, classes))

    def forward(self, x):
        return self.head(self.features(x))


def groupnorm(width):
    return nn.GroupNorm(min(8, width), width)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = groupnorm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = groupnorm(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNetCifar(nn.Module):
    def __init__(self, channels, classes, width=16):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 3, padding=1, bias=False), groupnorm(width), nn.ReLU()]
        cin = width
        for stage in range(3):
            cout = width << stage
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 else 1))
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.body(x))


MODEL_DESCRIPTIONS = {"mlp": "mlp (MLP 784-256-128-10)", "cnn": "cnn (SmallCNN, conv 32/64 5x5, maxpool)",
                      "resnet": "resnet (ResNetCifar, GroupNorm)"}


def make_model(name, shape, classes):
    """sgdx::models::make_model: the same models for the same names."""
    c, h, w = shape
    if name == "mlp":
        return MLP(c * h * w, classes)
    if name == "cnn":
        return SmallCNN(c, h, w, classes)
    return ResNetCifar(c, classes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="directory with train-images-idx3-ubyte[.gz] etc.")
    ap.add_argument("--model", choices=sorted(MODEL_DESCRIPTIONS), default="resnet")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads(N) for the CPU (0: PyTorch's default)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=0, help="use only the first N examples (0: all)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    images = read_idx(os.path.join(args.data_dir, "train-images-idx3-ubyte")).unsqueeze(1).float().div_(255.0)
    # sgdx standardises with the whole training set's mean and deviation (before any subset)
    images.sub_(images.mean().item()).div_(images.std().item())
    labels = read_idx(os.path.join(args.data_dir, "train-labels-idx1-ubyte")).long()
    if args.train_subset > 0:
        images, labels = images[:args.train_subset], labels[:args.train_subset]
    n = images.shape[0]
    model = make_model(args.model, tuple(images.shape[1:]), 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    epochs = []
    total_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(n)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss_sum = 0.0
        for i in range(0, n, args.batch_size):
            idx = order[i:i + args.batch_size]
            x = images.index_select(0, idx).to(device)
            y = labels.index_select(0, idx).to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        total_seconds += seconds
        epochs.append({"epoch": epoch, "seconds": seconds, "images_per_second": n / seconds,
                       "train_loss": loss_sum / n})
        print(f"epoch {epoch}: {seconds:.2f} s, {n / seconds:.0f} images/s, train loss {loss_sum / n:.4f}", flush=True)
    result = {"name": "torch_python_reference", "torch": torch.__version__, "device": str(device),
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "model": MODEL_DESCRIPTIONS[args.model], "model_name": args.model,
              "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "batch_size": args.batch_size, "train_examples": n,
              "epochs": epochs,
              # the first epoch includes cuDNN autotuning and allocator warm-up
              "images_per_second_after_first_epoch":
                  (n * (len(epochs) - 1) / sum(e["seconds"] for e in epochs[1:])) if len(epochs) > 1 else None}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
