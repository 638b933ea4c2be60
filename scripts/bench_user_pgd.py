#!/usr/bin/env python3
"""The `eval-process` row of `make bench`: what a PyTorch user runs to get a PGD-20 robust accuracy, timed by the
suite from outside as a whole process (interpreter start and imports included), against `robustd eval MODEL
--attacks pgd --n N` timed the same way.

    bench_user_pgd.py --model DIR/NAME.onnx --n N --batch B --eps E --threads T

It loads the model the ONNX file was exported from (bench_reference.build: the same weights, BatchNorm folded),
the first N Fashion-MNIST test images with their true labels, and runs torchattacks' PGD (20 steps of eps/8, random
start) batch by batch, then prints one JSON line: clean and robust accuracy.
"""

import argparse
import json
import os
import sys

import torch
import torchattacks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
from bench_reference import build  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.model)
    x, y = fmnist.load("test", n=args.n)
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    attack = torchattacks.PGD(model, eps=args.eps, alpha=args.eps / 8, steps=20, random_start=True)
    clean = robust = 0
    for i in range(0, args.n, args.batch):
        xb, yb = x[i:i + args.batch], y[i:i + args.batch]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        x_adv = attack(xb, yb)
        with torch.no_grad():
            robust += ((model(x_adv).argmax(1) == yb) & correct).sum().item()
        clean += correct.sum().item()
    print(json.dumps({"clean_acc": clean / args.n, "robust_acc": robust / args.n}))


if __name__ == "__main__":
    main()
