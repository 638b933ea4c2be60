#!/usr/bin/env python3
"""The PyTorch side of the memorization recall benchmark (benches/memo_recall.rs, `make memo-recall`).

The sanity check every memorization estimator must pass: on real Fashion-MNIST with a few percent of the training
labels moved to another class, the moved samples can only be fitted by memorizing them, so they must rank at the
top of the scores. This script implements robustd's estimators in plain PyTorch on exactly the same data and prints,
per estimator and budget, the share of flipped samples in the top decile of the scores (recall), the time, and the
self-checks robustd reports:

- learning-speed: one model from fresh weights trained E epochs on all scored samples; per sample the mean over the
  epochs' training passes of p(y|x) (soft: score 1 - mean p) and of correctness (hard: 1 - mean correctness);
- feldman-zhang: K models on a balanced subset design (every sample in round(ratio*K) subsets), each trained until
  its running training accuracy on its subset reaches the fit target (or the epoch cap); mem = E[. | in] -
  E[. | out] of p(y|x) (soft) and of correctness (hard);
- holdout: K=2 halves; score 1 - p(y|x) (soft) / misclassified (hard) under the half model that never saw it.

Data (the same rule as the Rust side, benches/memo_recall.rs): the first N training images; sample i (0-based) is
flipped when i % period == 0, to class (y + 1 + (i // period) % 9) % 10. Ties in the ranking are broken by
position, as robustd's deciles do.

    memo_recall_reference.py --arch mlp|cnn --samples 3000 --period 33 --estimator learning-speed --epochs 12
    memo_recall_reference.py --arch cnn --estimator feldman-zhang --k 8 --ratio 0.7 --fit-target 0.99 --max-epochs 60
    memo_recall_reference.py table RESULTS.jsonl      # both sides' JSON lines as a Markdown table
Prints one JSON object per run on stdout.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402


class MLP(nn.Module):
    """tests/fixtures/generated/mlp_legacy.onnx: 784 -> 64 -> 10."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """The demo CNN as exported (export_fixtures.SmallCNN with BatchNorm folded into the convolutions)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


ARCHS = {"mlp": MLP, "cnn": CNN}


def flipped_data(n, period):
    x, y = fmnist.load("train", n=n)
    y = y.copy()
    flipped = np.array([i for i in range(len(y)) if i % period == 0], dtype=np.int64)
    for i in flipped:
        y[i] = (y[i] + 1 + (i // period) % 9) % 10
    return torch.from_numpy(x), torch.from_numpy(y), flipped


def cosine_lr(base, step, total):
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def train(model, x, y, epochs, args, seed, fit_target=None, observe=None):
    """SGD (momentum 0.9, weight decay 5e-4), cosine over `epochs`, batch args.batch; stops after the first epoch
    whose running training accuracy reaches fit_target. observe(epoch, idx, p_label, correct) sees every batch.
    Returns (epochs run, last epoch's running accuracy)."""
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    batches = math.ceil(n / args.batch)
    total = epochs * batches
    acc = 0.0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        right = 0
        for b in range(batches):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            for g in opt.param_groups:
                g["lr"] = cosine_lr(args.lr, epoch * batches + b, total)
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                p = logits.softmax(1).gather(1, y[idx][:, None])[:, 0]
                correct = logits.argmax(1) == y[idx]
                right += int(correct.sum())
                if observe is not None:
                    observe(epoch, idx, p, correct)
        acc = right / n
        if fit_target is not None and acc >= fit_target:
            return epoch + 1, acc
    return epochs, acc


@torch.no_grad()
def label_probs(model, x, y):
    model.eval()
    out = []
    for i in range(0, len(x), 1024):
        out.append(model(x[i:i + 1024]).softmax(1).gather(1, y[i:i + 1024][:, None])[:, 0])
    return torch.cat(out)


def fresh(arch, seed):
    torch.manual_seed(seed)
    return ARCHS[arch]()


def top_decile_recall(scores, flipped):
    """Share of flipped samples in the top 10 % of scores; ties broken by position (later = higher)."""
    n = len(scores)
    order = np.lexsort((np.arange(n), scores))  # by score, then position
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    top = (rank * 10 // n) == 9
    return float(top[flipped].mean())


def top_decile_overlap(a, b):
    """Share of a's top decile also in b's (ties by position); chance 0.1."""
    def top(v):
        n = len(v)
        order = np.lexsort((np.arange(n), v))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        return (rank * 10 // n) == 9
    ta, tb = top(np.asarray(a, float)), top(np.asarray(b, float))
    return float((ta & tb).sum() / max(ta.sum(), 1))


def spearman(a, b):
    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        sv = v[order]
        i = 0
        while i < len(v):
            j = i + 1
            while j < len(v) and sv[j] == sv[i]:
                j += 1
            r[order[i:j]] = (i + j + 1) / 2.0
            i = j
        return r
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else None


def learning_speed(args, x, y, xt, yt):
    n = len(x)
    p_sum = torch.zeros(n, dtype=torch.float64)
    c_sum = torch.zeros(n, dtype=torch.float64)
    half = [torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)]

    def observe(epoch, idx, p, correct):
        p_sum[idx] += p.double()
        c_sum[idx] += correct.double()
        half[epoch % 2][idx] += p.double()

    model = fresh(args.arch, args.seed)
    start = time.time()
    epochs, acc = train(model, x, y, args.epochs, args, args.seed, observe=observe)
    seconds = time.time() - start
    soft = (1.0 - p_sum / epochs).numpy()
    hard = (1.0 - c_sum / epochs).numpy()
    test_acc = test_accuracy(model, xt, yt)
    even, odd = 1.0 - half[0].numpy() / ((epochs + 1) // 2), 1.0 - half[1].numpy() / max(epochs // 2, 1)
    return {"soft": soft, "hard": hard}, {
        "seconds": seconds, "epochs": epochs, "final_train_acc": acc, "test_acc": test_acc,
        "split_half_spearman": spearman(even, odd) if epochs >= 2 else None,
        "split_half_top_decile": top_decile_overlap(even, odd) if epochs >= 2 else None,
    }


@torch.no_grad()
def test_accuracy(model, xt, yt):
    model.eval()
    return float((model(xt).argmax(1) == yt).float().mean())


def balanced_design(n, k, ratio, seed):
    """robustd's design (src/memo/design.rs): every sample in round(ratio*k) subsets; for an even k >= 4 in
    round(ratio*k/2) of each half, so each half of the models scores every sample."""
    groups, size = (2, k // 2) if k >= 4 and k % 2 == 0 else (1, k)
    m = min(max(int(math.floor(ratio * size + 0.5)), 1), size - 1)
    rng = np.random.default_rng(seed)
    members = np.zeros((k, n), dtype=bool)
    for i in range(n):
        for g in range(groups):
            members[g * size + rng.choice(size, m, replace=False), i] = True
    return members


def subset_models(args, x, y, xt, yt, k, ratio, fit_target, max_epochs):
    """Trains the K subset models; returns membership [K, N], p(y|x) [K, N], correctness [K, N] and the fits."""
    n = len(x)
    members = balanced_design(n, k, ratio, args.seed)
    probs = np.zeros((k, n))
    right = np.zeros((k, n), dtype=bool)
    fits = []
    for model_index in range(k):
        subset = torch.from_numpy(np.nonzero(members[model_index])[0])
        seed = args.seed * 1000 + model_index + 1
        model = fresh(args.arch, seed)
        epochs, _ = train(model, x[subset], y[subset], max_epochs, args, seed, fit_target=fit_target)
        probs[model_index] = label_probs(model, x, y).double().numpy()
        right[model_index] = predictions_right(model, x, y)
        member = members[model_index]
        fits.append({"in_subset_acc": float(right[model_index][member].mean()),
                     "held_out_acc": float(right[model_index][~member].mean()),
                     "test_acc": test_accuracy(model, xt, yt), "epochs": epochs})
    return members, probs, right, fits


def side_means(members, values, rows):
    """Per sample: mean of `values` over the models in `rows` that saw it, and over those that did not."""
    sub_m, sub_v = members[rows], values[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sub_v * sub_m).sum(0) / sub_m.sum(0), (sub_v * ~sub_m).sum(0) / (~sub_m).sum(0)


def fit_checks(fits, seconds):
    return {"seconds": seconds, "models": fits,
            "in_subset_acc_mean": float(np.mean([f["in_subset_acc"] for f in fits])),
            "held_out_acc_mean": float(np.mean([f["held_out_acc"] for f in fits]))}


def feldman_zhang(args, x, y, xt, yt):
    start = time.time()
    k = args.k
    members, probs, right, fits = subset_models(args, x, y, xt, yt, k, args.ratio, args.fit_target,
                                                args.max_epochs)
    checks = fit_checks(fits, time.time() - start)

    def mem(values, rows):
        inside, outside = side_means(members, values, rows)
        return inside - outside

    rows = np.arange(k)
    scores = {"soft": mem(probs, rows), "hard": mem(right.astype(float), rows)}
    a, b = mem(probs, rows[: k // 2]), mem(probs, rows[k // 2:])
    both = np.isfinite(a) & np.isfinite(b)
    checks["split_half_spearman"] = spearman(a[both], b[both]) if both.sum() > 2 else None
    checks["split_half_top_decile"] = top_decile_overlap(a[both], b[both]) if both.sum() >= 10 else None
    checks["split_half_samples"] = int(both.sum())
    return scores, checks


def holdout(args, x, y, xt, yt):
    start = time.time()
    members, probs, right, fits = subset_models(args, x, y, xt, yt, 2, 0.5, None, args.epochs)
    rows = np.arange(2)
    _, out_p = side_means(members, probs, rows)
    _, out_right = side_means(members, right.astype(float), rows)
    return {"soft": 1.0 - out_p, "hard": 1.0 - out_right}, fit_checks(fits, time.time() - start)


@torch.no_grad()
def predictions_right(model, x, y):
    model.eval()
    out = []
    for i in range(0, len(x), 1024):
        out.append(model(x[i:i + 1024]).argmax(1) == y[i:i + 1024])
    return torch.cat(out).numpy()


def table(path):
    """Markdown: one row per (arch, estimator, budget), robustd and PyTorch side by side."""
    rows = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        # Both sides' budgets as numbers (one prints 1, the other 1.0).
        budget = {k: float(v) for k, v in r["budget"].items()}
        key = (r["arch"], r["estimator"], json.dumps(budget, sort_keys=True), r["samples"])
        rows.setdefault(key, {})[r["side"]] = r

    def pct(v):
        return "–" if v is None else f"{100 * v:.0f} %"

    def cost(r):
        if r is None:
            return "–"
        c = r["checks"]
        cpu = c.get("cpu_seconds", float("nan"))
        return f"{c['seconds']:.0f} s ({cpu:.1f} s CPU)" if cpu < 10 else f"{c['seconds']:.0f} s ({cpu:.0f} s CPU)"

    def fit(r):
        if r is None:
            return "–"
        c = r["checks"]
        parts = []
        if c.get("in_subset_acc_mean") is not None:
            parts.append(f"fit {100 * c['in_subset_acc_mean']:.1f} %")
        if c.get("final_train_acc") is not None:
            parts.append(f"fit {100 * c['final_train_acc']:.1f} %")
        if c.get("split_half_spearman") is not None:
            parts.append(f"halves ρ {c['split_half_spearman']:.2f}")
        if c.get("split_half_top_decile") is not None:
            parts.append(f"top-decile agreement {100 * c['split_half_top_decile']:.0f} %")
        if c.get("reliable") is False:
            parts.append("**unreliable**")
        return ", ".join(parts) or "–"

    out = ["| model | N | estimator | budget | robustd recall soft / 0-1 | PyTorch recall soft / 0-1 | robustd time "
           "| PyTorch time | robustd self-check | PyTorch fit |", "|---|---:|---|---|---:|---:|---:|---:|---|---|"]
    for (arch, est, budget, n), sides in rows.items():
        rs, py = sides.get("robustd"), sides.get("pytorch")
        b = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in json.loads(budget).items())
        rec = lambda r: "–" if r is None else f"{pct(r['recall']['soft'])} / {pct(r['recall']['hard'])}"  # noqa: E731
        out.append(f"| {arch} | {n} | {est} | {b} | {rec(rs)} | {rec(py)} | {cost(rs)} | {cost(py)} | {fit(rs)} "
                   f"| {fit(py)} |")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        sys.stdout.write(table(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="mlp")
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--period", type=int, default=33, help="flip every PERIOD-th label (33: 3 %%)")
    ap.add_argument("--estimator", choices=["learning-speed", "feldman-zhang", "holdout"], required=True)
    ap.add_argument("--epochs", type=int, default=12, help="learning-speed / holdout epochs")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--ratio", type=float, default=0.7)
    ap.add_argument("--fit-target", type=float, default=0.99)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y, flipped = flipped_data(args.samples, args.period)
    xt, yt = (torch.from_numpy(a) for a in fmnist.load("test", n=args.test))
    cpu = time.process_time()
    if args.estimator == "learning-speed":
        scores, checks = learning_speed(args, x, y, xt, yt)
        budget = {"epochs": args.epochs}
    elif args.estimator == "feldman-zhang":
        scores, checks = feldman_zhang(args, x, y, xt, yt)
        budget = {"k": args.k, "ratio": args.ratio, "fit_target": args.fit_target, "max_epochs": args.max_epochs}
    else:
        scores, checks = holdout(args, x, y, xt, yt)
        budget = {"epochs": args.epochs}
    checks["cpu_seconds"] = time.process_time() - cpu
    recall = {kind: top_decile_recall(np.nan_to_num(s, nan=-np.inf), flipped) for kind, s in scores.items()}
    print(json.dumps({
        "side": "pytorch", "arch": args.arch, "estimator": args.estimator, "samples": args.samples,
        "flipped": int(len(flipped)), "budget": budget, "recall": recall, "checks": checks,
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
