#!/usr/bin/env python3
"""The Python side of `make bench` (benches/suite.rs): PyTorch eager and torchattacks doing the same work as robustd.

One workload per process, so its peak RSS is its own; each prints one JSON object on stdout. The suite runs the
robustd side of every workload the same way (its own worker processes), on the same ONNX file, data, batch and
thread count, and computes the ratios.

    bench_reference.py export  --out DIR                      writes DIR/{small_cnn,resnet18}.{onnx,pt}
    bench_reference.py pgd-eval --model DIR/NAME.onnx --n N --batch B --steps S --eps E --step-size A --reps R
    bench_reference.py epoch   --model DIR/NAME.onnx --method pgd-at|bat --samples N --batch B --reps R
    bench_reference.py forward --model DIR/NAME.onnx --batches 1,32,256 --iters I
    bench_reference.py square  --model DIR/NAME.onnx --n N --queries Q --eps E --p-init P --reps R
    bench_reference.py autoattack --model DIR/NAME.onnx --n N --eps E --reps R

Models (see MODELS): `small_cnn` is the demo model's shape (fixture_models.SmallCNN, ~0.1 M parameters) and
`resnet18` the ResNet-18 topology (BasicBlocks 2-2-2-2, widths 16-32-64-128, ~0.7 M parameters); for the attack
loop on activations those two lack, `act_cnn` (LeakyReLU, ELU, average pooling, SiLU), `mobilenet_hs` (depthwise
convolutions, hard-swish) and `vit` (a small vision transformer: LayerNorm, softmax attention, GELU); all on 1x28x28
Fashion-MNIST images, each given one epoch of standard training on 3000 images at export (so the attacks meet real
decision boundaries; NAME.pt keeps the weights). BatchNorm is folded into the convolutions in both the exported
ONNX file and the eager module, so both sides compute the same graph. Labels for
the attack workloads are the model's own clean predictions, so every sample starts correctly classified, as with
an accurate model.
"""

import argparse
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
from fixture_models import ActCNN, MobileNetHS, ResNet18, SmallCNN, ViT, export, seeded_model  # noqa: E402


def resnet18_gray():
    model = ResNet18()
    model.stem[0] = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
    return model


MODELS = {"small_cnn": SmallCNN, "resnet18": resnet18_gray, "act_cnn": ActCNN, "mobilenet_hs": MobileNetHS,
          "vit": ViT}
SEED = 0


def build(onnx_path):
    """The exported model (weights from the .pt beside the ONNX file) in eval mode with BatchNorm folded, exactly
    the graph the ONNX file holds."""
    from torch.fx.experimental.optimization import fuse

    name = os.path.splitext(os.path.basename(onnx_path))[0]
    model = MODELS[name]()
    model.load_state_dict(torch.load(os.path.splitext(onnx_path)[0] + ".pt"))
    model = model.eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model = fuse(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def train_briefly(make_model, samples=3000, batch=64):
    """`make_model()` built from SEED, then one epoch of standard training (SGD, lr 0.05), BatchNorm in train mode."""
    model = seeded_model(make_model, SEED)
    x, y = fmnist.load("train", n=samples)
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for i in range(0, samples, batch):
        loss = F.cross_entropy(model(x[i:i + batch]), y[i:i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(**fields):
    fields.update(peak_rss_mb=peak_rss_mb(), torch=torch.__version__, threads=torch.get_num_threads())
    print(json.dumps(fields))


def test_images(n):
    x, _ = fmnist.load("test", n=n)
    return torch.from_numpy(x)


def own_predictions(model, x, batch):
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def cmd_export(args):
    os.makedirs(args.out, exist_ok=True)
    for name in MODELS:
        path = os.path.join(args.out, f"{name}.onnx")
        # The legacy exporter writes one self-contained file; the suite re-exports only when a model is missing.
        if not os.path.exists(path):
            torch.save(train_briefly(MODELS[name]).state_dict(), os.path.join(args.out, f"{name}.pt"))
            export(build(path), torch.rand(2, 1, 28, 28), path, "legacy")
        model = build(path)
        xt, yt = fmnist.load("test")
        acc = (own_predictions(model, torch.from_numpy(xt[:1000]), 250) == torch.from_numpy(yt[:1000])).float()
        print(json.dumps({"model": name, "path": path, "parameters": sum(p.numel() for p in model.parameters()),
                          "test_acc": acc.mean().item()}))


def cmd_pgd_eval(args):
    import torchattacks

    model = build(args.model)
    x = test_images(args.n)
    y = own_predictions(model, x, args.batch)
    attack = torchattacks.PGD(model, eps=args.eps, alpha=args.step_size, steps=args.steps, random_start=True)
    walls, cpus, robust = [], [], 0
    for rep in range(args.reps):
        torch.manual_seed(rep)

        def run():
            correct = 0
            for i in range(0, args.n, args.batch):
                xb, yb = x[i:i + args.batch], y[i:i + args.batch]
                x_adv = attack(xb, yb)
                with torch.no_grad():
                    correct += (model(x_adv).argmax(1) == yb).sum().item()
            return correct

        wall, cpu, robust = timed(run)
        walls.append(wall)
        cpus.append(cpu)
    emit(workload="pgd-eval", wall_s=walls, cpu_s=cpus, samples=args.n, robust_acc=robust / args.n)


def pgd(model, x, y, loss_fn, eps, steps, step):
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


def batch_loss(method, model, x, y, atypical, eps):
    """PGD-AT (Madry) or BAT (DESIGN.md §BAT, beta = lambda = 1) on PGD-7 examples with step 0.25*eps, as robustd's
    `train:` defaults. With BatchNorm folded the model has no train/eval difference, like robustd's default of
    frozen BatchNorm statistics."""
    x_adv = pgd(model, x, y, ce, eps, 7, 0.25 * eps)
    logits = model(x_adv)
    if method == "pgd-at":
        return ce(logits, y).mean()
    probs = F.softmax(logits, 1)
    p_true = probs.detach().gather(1, y[:, None]).squeeze(1)
    w = torch.where(atypical, p_true.clamp_min(1e-12), torch.ones_like(p_true))
    w = w / w.mean()
    weighted = (w * ce(logits, y)).sum() / w.sum()
    others = probs.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return weighted + others.mean()


def cmd_epoch(args):
    """One epoch: shuffled batches, SGD (lr 0.01, momentum 0.9, weight decay 5e-4) with a per-step cosine rate, the
    `train:` defaults; every fifth sample atypical for BAT."""
    x, y = fmnist.load("train", n=args.samples)
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    atypical = torch.arange(args.samples) % 5 == 0
    walls, cpus = [], []
    for rep in range(args.reps):
        torch.manual_seed(rep)
        model = build(args.model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        order = torch.randperm(args.samples)
        steps = math.ceil(args.samples / args.batch)

        def run():
            for b in range(steps):
                for group in opt.param_groups:
                    group["lr"] = 0.01 * 0.5 * (1 + math.cos(math.pi * b / steps))
                idx = order[b * args.batch:(b + 1) * args.batch]
                loss = batch_loss(args.method, model, x[idx], y[idx], atypical[idx], args.eps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"non-finite loss in batch {b}")

        wall, cpu, _ = timed(run)
        walls.append(wall)
        cpus.append(cpu)
    emit(workload=f"epoch-{args.method}", wall_s=walls, cpu_s=cpus, samples=args.samples)


def cmd_forward(args):
    model = build(args.model)
    x_all = test_images(max(args.batches))
    per_batch = {}
    with torch.no_grad():
        for batch in args.batches:
            x = x_all[:batch]
            for _ in range(3):
                model(x)
            times = []
            for _ in range(args.iters):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
            per_batch[str(batch)] = times
    emit(workload="forward", seconds_per_batch=per_batch)


def cmd_square(args):
    import torchattacks

    model = build(args.model)
    x = test_images(args.n)
    y = own_predictions(model, x, 256)
    attack = torchattacks.Square(model, norm="Linf", eps=args.eps, n_queries=args.queries, n_restarts=1,
                                 p_init=args.p_init, loss="margin", resc_schedule=True, seed=0)
    walls, cpus, robust = [], [], 0
    for rep in range(args.reps):
        attack.seed = rep

        def run():
            x_adv = attack(x, y)
            with torch.no_grad():
                return (model(x_adv).argmax(1) == y).sum().item()

        wall, cpu, robust = timed(run)
        walls.append(wall)
        cpus.append(cpu)
    # torchattacks does not report queries; at this eps (far below any margin) no sample is broken, so every
    # sample spends the whole budget (the robust accuracy printed confirms it). It is credited n x budget queries,
    # although it runs a couple of extra forward passes per sample (initial margins, its clean check): that
    # understates its rate by under 1.5 % at these budgets.
    emit(workload="square", wall_s=walls, cpu_s=cpus, samples=args.n, queries=args.n * args.queries,
         robust_acc=robust / args.n)


def cmd_autoattack(args):
    """torchattacks' AutoAttack(version='standard') at AutoAttack's published budgets (100 iterations for APGD, APGD-T
    and FAB-T, Square's schedule unscaled: see reference_eval.py), on the model's own predictions."""
    import torchattacks

    model = build(args.model)
    x = test_images(args.n)
    y = own_predictions(model, x, 256)
    walls, cpus, robust = [], [], 0
    for rep in range(args.reps):
        aa = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard", n_classes=10, seed=rep)
        for attack in aa._autoattack.attacks:
            if hasattr(attack, "steps"):
                attack.steps = 100
            if isinstance(attack, torchattacks.Square):
                attack.rescale_schedule = False

        def run():
            x_adv = aa(x, y)
            with torch.no_grad():
                return (model(x_adv).argmax(1) == y).sum().item()

        wall, cpu, robust = timed(run)
        walls.append(wall)
        cpus.append(cpu)
    emit(workload="autoattack", wall_s=walls, cpu_s=cpus, samples=args.n, robust_acc=robust / args.n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export")
    p.add_argument("--out", required=True)
    for name in ("pgd-eval", "epoch", "forward", "square", "autoattack"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="DIR/NAME.onnx written by `export`")
        p.add_argument("--reps", type=int, default=3)
        p.add_argument("--eps", type=float, default=0.1)
        if name == "pgd-eval":
            p.add_argument("--n", type=int, default=500)
            p.add_argument("--batch", type=int, default=250)
            p.add_argument("--steps", type=int, default=20)
            p.add_argument("--step-size", type=float, default=0.0125)
        if name == "epoch":
            p.add_argument("--method", choices=["pgd-at", "bat"], required=True)
            p.add_argument("--samples", type=int, default=2048)
            p.add_argument("--batch", type=int, default=128)
        if name == "forward":
            p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 32, 256])
            p.add_argument("--iters", type=int, default=30)
        if name == "autoattack":
            p.add_argument("--n", type=int, default=100)
        if name == "square":
            p.add_argument("--n", type=int, default=200)
            p.add_argument("--queries", type=int, default=300)
            p.add_argument("--p-init", type=float, default=0.3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"export": cmd_export, "pgd-eval": cmd_pgd_eval, "epoch": cmd_epoch, "forward": cmd_forward,
     "square": cmd_square, "autoattack": cmd_autoattack}[args.cmd](args)


if __name__ == "__main__":
    main()
