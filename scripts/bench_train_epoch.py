#!/usr/bin/env python3
"""One PGD-AT, BAT and TRADES training epoch in PyTorch eager: the reference for `cargo bench --bench train_epoch`.

Same work as robustd's loop: the small CNN of tests/train_support (conv 1->8 k5, ReLU, max-pool 2, conv 8->16 k5,
ReLU, max-pool 2, linear 256->10), the first N Fashion-MNIST training images, batch 128, shuffled, PGD-7 with step
0.25*eps from a uniform random start at eps 0.1 (L-inf) crafted in eval mode, loss in train mode, SGD (lr 0.01,
momentum 0.9, weight decay 5e-4) with a per-step cosine rate. BAT as DESIGN.md §BAT (beta = lambda = 1, every fifth
sample atypical); TRADES with beta 6 and PGD on KL(p(x) || p(x')).

    .venv/bin/python scripts/bench_train_epoch.py [--samples 2000] [--reps 5] [--threads 2] [--batch 128]

Reported per method: the fastest and the median wall time of an epoch, and the median process CPU time, which other
processes competing for the cores disturb much less than wall time.
"""

import argparse
import gzip
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def load(n):
    with gzip.open(f"{FASHION_MNIST}/train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16)[: n * 784]
    with gzip.open(f"{FASHION_MNIST}/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    x = torch.from_numpy(x.copy()).float().view(n, 1, 28, 28) / 255.0
    return x, torch.from_numpy(y.astype(np.int64))


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(256, 10),
    )


def pgd(model, x, y, loss_fn, eps=0.1, steps=7, step=0.025):
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv), y).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def batch_loss(method, model, x, y, atypical):
    if method == "trades":
        model.eval()
        with torch.no_grad():
            clean_p = F.softmax(model(x), 1)
        kl = lambda logits, _y: (clean_p * (clean_p.clamp_min(1e-12).log() - F.log_softmax(logits, 1))).sum(1)
        x_adv = pgd(model, x, y, kl)
        model.train()
        clean, adv = model(x), model(x_adv)
        log_p = F.log_softmax(clean, 1)
        robust = (log_p.exp() * (log_p - F.log_softmax(adv, 1))).sum(1).mean()
        return ce(clean, y).mean() + 6.0 * robust
    model.eval()
    x_adv = pgd(model, x, y, ce)
    model.train()
    logits = model(x_adv)
    if method == "pgd-at":
        return ce(logits, y).mean()
    probs = F.softmax(logits, 1)
    p_true = probs.detach().gather(1, y[:, None]).squeeze(1)
    w = torch.where(atypical, p_true.clamp_min(1e-12).pow(1.0), torch.ones_like(p_true))
    w = w / w.mean()
    weighted = (w * ce(logits, y)).sum() / w.sum()
    others = probs.masked_fill(F.one_hot(y, 10).bool(), float("-inf")).amax(1)
    return weighted + 1.0 * others.mean()


def epoch(method, x, y, atypical, batch, seed):
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    n = x.shape[0]
    order = torch.randperm(n)
    steps = math.ceil(n / batch)
    start, cpu_start = time.perf_counter(), time.process_time()
    for b in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.01 * 0.5 * (1 + math.cos(math.pi * b / steps))
        idx = order[b * batch:(b + 1) * batch]
        loss = batch_loss(method, model, x[idx], y[idx], atypical[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss in batch {b}")
    return time.perf_counter() - start, time.process_time() - cpu_start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load(args.samples)
    atypical = torch.arange(args.samples) % 5 == 0
    methods = ["pgd-at", "bat", "trades"]
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    for rep in range(args.reps):
        for m in methods:
            w, c = epoch(m, x, y, atypical, args.batch, rep)
            wall[m].append(w)
            cpu[m].append(c)
    median = lambda v: sorted(v)[len(v) // 2]
    print(f"pytorch eager {torch.__version__}: {args.samples} Fashion-MNIST samples, batch {args.batch}, PGD-7, "
          f"{args.threads} threads, {args.reps} runs each")
    base_min, base_cpu = min(wall["pgd-at"]), median(cpu["pgd-at"])
    for m in methods:
        fastest, cpu_s = min(wall[m]), median(cpu[m])
        print(f"  {m:<8} wall min {fastest:6.3f} s ({args.samples / fastest:6.1f} samples/s, "
              f"{100 * (fastest / base_min - 1):+5.1f}% vs PGD-AT), median {median(wall[m]):6.3f} s; "
              f"CPU median {cpu_s:6.3f} s ({100 * (cpu_s / base_cpu - 1):+5.1f}% vs PGD-AT)")

if __name__ == "__main__":
    main()
