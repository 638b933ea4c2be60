#!/usr/bin/env python3
"""Trains the demo classifier (fixture_models.SmallCNN) on Fashion-MNIST and exports it to ONNX.

This is the model a user would ship: standard (non-adversarial) training, so it is accurate but not robust;
robustd then measures and fine-tunes it. The same file for a seed on every run and every x86-64 machine: the model
is built right after seeding, the batches come from that seed, and the float arithmetic is pinned
(reproducible.py: baseline kernels, one thread), so the CLI tests' model (`make fixtures`) is listed in
tests/fixtures/DIGESTS.sha256 with the rest. Takes about a minute on 2 CPU cores.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reproducible  # noqa: E402,F401  (first: pins the float arithmetic before torch loads)

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fmnist  # noqa: E402
from fixture_models import SmallCNN, export  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-samples", type=int, default=20000)
    ap.add_argument("--exporter", choices=["legacy", "dynamo"], default="dynamo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    reproducible.pin_torch()
    x, y = fmnist.load("train", n=args.train_samples)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    xt, yt = fmnist.load("test", n=2000)
    xt, yt = torch.from_numpy(xt), torch.from_numpy(yt)
    torch.manual_seed(args.seed)  # right before the draws: the initial weights, then each epoch's permutation
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        print(f"[demo-model] epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} test acc {acc:.3f} "
              f"({time.time() - start:.0f}s)", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export(model, xt[:2], args.out, args.exporter, {})
    print(f"[demo-model] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
