#!/usr/bin/env python3
"""PyTorch eager doing the device check's workloads (scripts/device_check.sh), on the same card as robustd.

Needs only torch and numpy (the GPU machine has no onnx and no torchattacks): the models are rebuilt here from
their seeds, exactly as scripts/device_pack.py built the ONNX files robustd runs (same classes and seeded
initialization, BatchNorm folded), and the data and labels come from the same npz files.

    device_eager.py eval  --model cnn|resnet18 --data D.npz --n N --batch B [--amp] [--channels-last]
    device_eager.py epoch --model cnn|resnet18 --data D.npz --samples N --batch B [--amp] [--channels-last]

Each prints one JSON object. `eval` times PGD-20 (CE, step 0.125 eps, random start) and APGD-CE (--apgd-steps, default 100,
Croce & Hein's step-size schedule) on every sample, the work robustd does with `eval.mode: standalone` on samples
that all start correctly classified; `epoch` times one BAT epoch (PGD-7 examples at step 0.25 eps, beta = lambda
= 1, every fifth sample atypical, SGD with momentum and a cosine rate), robustd's `train:` defaults.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCNN(nn.Module):
    """scripts/fixture_models.py SmallCNN: the demo model's shape."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18 (BasicBlocks 2-2-2-2) for 32x32 inputs; full width 64-128-256-512 (11.2 M parameters)."""

    def __init__(self, classes=10, widths=(64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(2):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


MODELS = {"cnn": SmallCNN, "resnet18": ResNet18}
SEED = 0


def seeded_model(cls, seed=SEED):
    """As scripts/fixture_models.py seeded_model: weights drawn after manual_seed, then BatchNorm statistics."""
    torch.manual_seed(seed)
    model = cls()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def build(name, device, channels_last):
    """The model robustd runs (BatchNorm folded into the convolutions, as in the exported graph), trainable."""
    from torch.fx.experimental.optimization import fuse

    model = fuse(seeded_model(MODELS[name])).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def load(path, device, channels, n=None):
    data = np.load(path)
    x = torch.from_numpy(data["x_test" if "x_test" in data else "x"][:n].astype(np.float32) / 255.0)
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(data["y_test" if "y_test" in data else "y"][:n].astype(np.int64))
    assert x.shape[1] == channels, f"{path}: {x.shape[1]} channels, model takes {channels}"
    return x.to(device), y.to(device)


def autocast(device, amp):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)


def loss_grad(model, x, y, amp, device):
    x = x.detach().requires_grad_(True)
    with autocast(device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach()


def project(x_adv, x, eps):
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def pgd(model, x, y, eps, steps, step, amp, device):
    x_adv = project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    for _ in range(steps):
        _, grad = loss_grad(model, x_adv, y, amp, device)
        x_adv = project(x_adv + step * grad.sign(), x, eps)
    return x_adv


def apgd_ce(model, x, y, eps, steps, amp, device, rho=0.75):
    """APGD-CE (Croce & Hein 2020, L-inf): momentum 0.75, step size halved at the checkpoints where too few steps
    improved the loss (or nothing changed), restarting from the best point."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    checkpoints = sorted({math.ceil(q * steps) for q in p[1:] if math.ceil(q * steps) <= steps})
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    step = torch.full(shape, 2 * eps, device=x.device)
    x_adv = project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    loss, grad = loss_grad(model, x_adv, y, amp, device)
    x_best, loss_best, x_prev = x_adv.clone(), loss.clone(), x_adv.clone()
    improved = torch.zeros(n, device=x.device)
    last_ckpt, loss_at_ckpt = 0, loss_best.clone()
    reduced_at_ckpt = torch.ones(n, dtype=torch.bool, device=x.device)
    for k in range(steps):
        z = project(x_adv + step * grad.sign(), x, eps)
        alpha = 0.75 if k > 0 else 1.0
        x_new = project(x_adv + alpha * (z - x_adv) + (1 - alpha) * (x_adv - x_prev), x, eps)
        x_prev, x_adv = x_adv, x_new
        loss, grad = loss_grad(model, x_adv, y, amp, device)
        better = loss > loss_best
        improved += better.float()
        x_best = torch.where(better.view(shape), x_adv, x_best)
        loss_best = torch.where(better, loss, loss_best)
        if k + 1 in checkpoints:
            too_few = improved < rho * (k + 1 - last_ckpt)
            stalled = (~reduced_at_ckpt) & (loss_best <= loss_at_ckpt)
            reduce = too_few | stalled
            step = torch.where(reduce.view(shape), step / 2, step)
            x_adv = torch.where(reduce.view(shape), x_best, x_adv)
            reduced_at_ckpt, loss_at_ckpt, last_ckpt = reduce, loss_best.clone(), k + 1
            improved.zero_()
    return x_best


def synced(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def robust(model, x_adv, y, amp, device, batch):
    with torch.no_grad(), autocast(device, amp):
        return sum((model(x_adv[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
                   for i in range(0, len(x_adv), batch)) / len(x_adv)


def cmd_eval(args, device):
    model = build(args.model, device, args.channels_last)
    x, y = load(args.data, device, 1 if args.model == "cnn" else 3, args.n)
    eps = args.eps
    out = {}
    for name, attack in [("pgd-20", lambda xb, yb: pgd(model, xb, yb, eps, 20, 0.125 * eps, args.amp, device)),
                         ("apgd-ce", lambda xb, yb: apgd_ce(model, xb, yb, eps, args.apgd_steps, args.amp, device))]:
        torch.manual_seed(0)
        # Warm-up (cuDNN algorithm choice, allocator), not timed.
        attack(x[:args.batch], y[:args.batch])
        seconds, x_adv = synced(device, lambda: torch.cat([attack(x[i:i + args.batch], y[i:i + args.batch])
                                                           for i in range(0, len(x), args.batch)]))
        out[name] = {"seconds": seconds, "robust_acc": robust(model, x_adv, y, args.amp, device, args.batch)}
    return out


def cmd_epoch(args, device):
    model = build(args.model, device, args.channels_last)
    data = np.load(args.data)
    x = torch.from_numpy(data["x"][:args.samples].astype(np.float32) / 255.0)
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()
    x, y = x.to(device), torch.from_numpy(data["y"][:args.samples].astype(np.int64)).to(device)
    atypical = (torch.arange(len(x), device=device) % 5) == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    eps, steps = args.eps, math.ceil(len(x) / args.batch)
    torch.manual_seed(0)
    order = torch.randperm(len(x), device=device)

    def batch_loss(xb, yb, ab):
        x_adv = pgd(model, xb, yb, eps, 7, 0.25 * eps, args.amp, device)
        with autocast(device, args.amp):
            logits = model(x_adv).float()
        probs = F.softmax(logits, 1)
        p_true = probs.detach().gather(1, yb[:, None]).squeeze(1)
        w = torch.where(ab, p_true.clamp_min(1e-12), torch.ones_like(p_true))
        w = w / w.mean()
        ce = F.cross_entropy(logits, yb, reduction="none")
        others = probs.masked_fill(F.one_hot(yb, logits.shape[1]).bool(), float("-inf")).amax(1)
        return (w * ce).sum() / w.sum() + others.mean()

    def run(count):
        for b in range(count):
            for group in opt.param_groups:
                group["lr"] = 0.01 * 0.5 * (1 + math.cos(math.pi * b / steps))
            idx = order[b * args.batch:(b + 1) * args.batch]
            loss = batch_loss(x[idx], y[idx], atypical[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()

    run(2)  # warm-up, not timed
    seconds, loss = synced(device, lambda: run(steps))
    return {"bat-epoch": {"seconds": seconds, "samples": len(x), "final_loss": loss}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["eval", "epoch"])
    ap.add_argument("--model", choices=list(MODELS), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--apgd-steps", type=int, default=100)
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    result = {"eval": cmd_eval, "epoch": cmd_epoch}[args.cmd](args, device)
    print(json.dumps({"side": "eager", "cmd": args.cmd, "model": args.model, "device": str(device),
                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "amp": args.amp, "channels_last": args.channels_last, "torch": torch.__version__,
                      "batch": args.batch, "results": result}))


if __name__ == "__main__":
    main()
