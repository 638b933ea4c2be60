#!/usr/bin/env python3
"""Cross-checks robustd's robust accuracies with an independent implementation (torchattacks).

Two protocols:
- default: torchattacks' PGD, APGD-CE, APGD-DLR and Square, each on every clean-correct sample ("standalone", what
  `robustd eval --mode standalone` does), with the same eps and budgets as robustd's `fast` preset;
- --autoattack standard: torchattacks' `AutoAttack(version='standard')` (APGD-CE, APGD-T, FAB-T, Square as an
  ensemble: each attack only on the points still robust), next to `robustd eval --preset autoattack-standard`.
  torchattacks 3.5 builds that suite with its own defaults, 10 iterations for APGD, APGD-T and FAB-T and a rescaled
  Square schedule, where AutoAttack itself (fra31/auto-attack) runs 100 iterations and Square's schedule unscaled:
  --budgets published (the default) sets AutoAttack's budgets on torchattacks' attack objects, --budgets torchattacks
  keeps the library's.

The first N Fashion-MNIST test images are used. The model is read from the ONNX file into PyTorch by a small
interpreter in this script (torch functional ops, no robustd code), whose logits are checked against onnxruntime
before any attack.

With --robustd-npz (the per-sample file of a companion robustd run on the same model, N and eps) it prints both
tools' robust accuracies side by side, the differences in percentage points, and on how many samples the two tools'
verdicts differ. A measurement, not a test: `make crosscheck` runs it on a standard and an adversarially trained CNN.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchattacks
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402


class OnnxModule(torch.nn.Module):
    """Evaluates a (small, feed-forward) ONNX graph with torch functional ops, differentiably."""

    def __init__(self, path):
        super().__init__()
        model = onnx.load(path)  # external data is read from beside the file
        self.nodes = list(model.graph.node)
        self.consts = {}
        for i, init in enumerate(model.graph.initializer):
            t = torch.from_numpy(numpy_helper.to_array(init).copy())
            name = f"init{i}"
            if t.is_floating_point():  # parameters (frozen), so torchattacks finds the model's device
                self.register_parameter(name, torch.nn.Parameter(t, requires_grad=False))
            else:
                self.register_buffer(name, t)
            self.consts[init.name] = name
        inits = {i.name for i in model.graph.initializer}
        self.input_name = next(i.name for i in model.graph.input if i.name not in inits)
        self.output_name = model.graph.output[0].name
        unknown = sorted({n.op_type for n in self.nodes} - set(OPS))
        if unknown:
            raise SystemExit(f"{path}: ops not supported by this reference interpreter: {unknown}")

    def forward(self, x):
        env = {name: getattr(self, buf) for name, buf in self.consts.items()}
        env[self.input_name] = x
        for node in self.nodes:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            args = [env[i] if i else None for i in node.input]
            out = OPS[node.op_type](args, attrs)
            outs = out if isinstance(out, tuple) else (out,)
            for name, value in zip(node.output, outs):
                env[name] = value
        return env[self.output_name]


def _pads(x, attrs, dims=2, value=0.0):
    """Applies ONNX pads [b1, b2, e1, e2] with F.pad (which takes the last dimension first)."""
    pads = attrs.get("pads", [0] * 2 * dims)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise SystemExit(f"auto_pad {attrs['auto_pad']} is not supported")
    torch_pads = []
    for d in reversed(range(dims)):
        torch_pads += [pads[d], pads[d + dims]]
    return F.pad(x, torch_pads, value=value) if any(torch_pads) else x


def _conv(args, attrs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    return F.conv2d(_pads(x, attrs), w, b, stride=attrs.get("strides", 1), dilation=attrs.get("dilations", 1),
                    groups=attrs.get("group", 1))


def _maxpool(args, attrs):
    x = _pads(args[0], attrs, value=float("-inf"))
    return F.max_pool2d(x, attrs["kernel_shape"], stride=attrs.get("strides", 1),
                        dilation=attrs.get("dilations", 1), ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _avgpool(args, attrs):
    if attrs.get("count_include_pad", 0) == 0 and any(attrs.get("pads", [0])):
        raise SystemExit("AveragePool with padding excluded from the count is not supported")
    x = _pads(args[0], attrs)
    return F.avg_pool2d(x, attrs["kernel_shape"], stride=attrs.get("strides", 1),
                        ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _reshape(args, attrs):
    x, shape = args
    shape = [int(s) for s in shape.tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _gemm(args, attrs):
    a, b = args[0], args[1]
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = attrs.get("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + attrs.get("beta", 1.0) * args[2]
    return y


def _batchnorm(args, attrs):
    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


def _clip(args, attrs):
    lo = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
    hi = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
    return torch.clamp(args[0], min=lo, max=hi)


OPS = {
    "Conv": _conv,
    "Relu": lambda a, _: F.relu(a[0]),
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": lambda a, _: a[0].mean(dim=(2, 3), keepdim=True),
    "Flatten": lambda a, at: a[0].flatten(at.get("axis", 1)) if at.get("axis", 1) == 1 else a[0].reshape(
        int(np.prod(a[0].shape[:at["axis"]])), -1),
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": lambda a, _: a[0] @ a[1],
    "Add": lambda a, _: a[0] + a[1],
    "Sub": lambda a, _: a[0] - a[1],
    "Mul": lambda a, _: a[0] * a[1],
    "Div": lambda a, _: a[0] / a[1],
    "BatchNormalization": _batchnorm,
    "Clip": _clip,
    "Sigmoid": lambda a, _: torch.sigmoid(a[0]),
    "Tanh": lambda a, _: torch.tanh(a[0]),
    "Identity": lambda a, _: a[0],
    "Dropout": lambda a, _: a[0],
    "Transpose": lambda a, at: a[0].permute(*at["perm"]),
    "Constant": lambda _, at: torch.from_numpy(numpy_helper.to_array(at["value"]).copy()),
}


def check_against_onnxruntime(model, path, x, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ours = model(x).numpy()
    diff = float(np.abs(ours - expected).max())
    if diff > 1e-4:
        raise SystemExit(f"{path}: the reference interpreter disagrees with onnxruntime (max |logit diff| {diff})")
    return diff


def make_attack(name, model, args):
    linf = args.norm == "linf"
    if name == "pgd":
        alpha = args.pgd_step_size_factor * args.eps
        cls = torchattacks.PGD if linf else torchattacks.PGDL2
        return cls(model, eps=args.eps, alpha=alpha, steps=args.pgd_steps, random_start=True)
    if name in ("apgd-ce", "apgd-dlr"):
        return torchattacks.APGD(model, norm="Linf" if linf else "L2", eps=args.eps, steps=args.apgd_steps,
                                 n_restarts=1, seed=args.seed, loss=name.split("-")[1], rho=0.75)
    if name == "square":
        return torchattacks.Square(model, norm="Linf" if linf else "L2", eps=args.eps, n_queries=args.square_queries,
                                   n_restarts=1, p_init=args.square_p_init, loss="margin", resc_schedule=True,
                                   seed=args.seed)
    raise SystemExit(f"unknown attack {name}")


# AutoAttack's budgets (fra31/auto-attack, autoattack.py, version 'standard'): 100 iterations for APGD-CE, APGD-T and
# FAB-T, 9 target classes, one restart, Square with 5000 queries, p_init 0.8 and its schedule not rescaled.
PUBLISHED_ITERATIONS = 100
# torchattacks' attack classes -> robustd's names, in the order AutoAttack runs them.
AUTOATTACK_NAMES = {"APGD": "apgd-ce", "APGDT": "apgd-t", "FAB": "fab-t", "Square": "square"}


def autoattack_suite(model, args, classes):
    """torchattacks' AutoAttack(version='standard') components, with AutoAttack's published budgets unless
    --budgets torchattacks."""
    aa = torchattacks.AutoAttack(model, norm="Linf" if args.norm == "linf" else "L2", eps=args.eps,
                                 version=args.autoattack, n_classes=classes, seed=args.seed)
    attacks = aa._autoattack.attacks
    if args.budgets == "published":
        for attack in attacks:
            if hasattr(attack, "steps"):
                attack.steps = PUBLISHED_ITERATIONS
            if isinstance(attack, torchattacks.Square):
                attack.rescale_schedule = False
    return [(AUTOATTACK_NAMES[type(a).__name__], a) for a in attacks]


def run_autoattack(model, x, y, clean_correct, args, classes):
    """The suite as torchattacks' MultiAttack runs it (each attack on the points still robust, its examples judged by
    the model), batch by batch, recording robust accuracy after each attack and its time."""
    robust = clean_correct.clone()
    after, seconds, budgets = {}, {}, {}
    for name, attack in autoattack_suite(model, args, classes):
        budgets[name] = {k: getattr(attack, k) for k in ("steps", "n_queries", "n_restarts", "n_target_classes",
                                                          "p_init", "rescale_schedule") if hasattr(attack, k)}
        started = time.time()
        idx = robust.nonzero().flatten()
        for i in range(0, len(idx), args.batch):
            b = idx[i:i + args.batch]
            adv = attack(x[b], y[b]).detach()
            if args.norm == "linf":
                assert float((adv - x[b]).abs().max()) <= args.eps + 1e-6
            robust[b] = predict(model, adv, args.batch) == y[b]
        after[name] = robust.float().mean().item()
        seconds[name] = time.time() - started
        print(f"[reference] {name:9s} robust acc after it {100 * after[name]:6.2f} %  ({seconds[name]:.0f} s)",
              file=sys.stderr)
    return robust, after, seconds, budgets


def compare_autoattack(results, robust, y, args):
    """Both tools' robust accuracy after each attack of the ensemble, from robustd's per-sample file."""
    ours = np.load(args.robustd_npz)
    if not np.array_equal(ours["index"], np.arange(args.n)) or not np.array_equal(ours["label"], y.numpy()):
        raise SystemExit(f"{args.robustd_npz} is not an evaluation of the first {args.n} test images")
    ours_robust = ours["clean_pred"] == ours["label"]
    rows = [("clean", results["clean_acc"], ours_robust.mean())]
    for name in results["attacks"]:
        if f"attack_{name}" not in ours.files:
            raise SystemExit(f"{args.robustd_npz} has no results for {name}: run robustd eval --preset "
                             f"autoattack-{args.autoattack}")
        ours_robust = ours_robust & (ours[f"attack_{name}"] != 1)
        rows.append((name, results["attacks"][name], ours_robust.mean()))
    differ = int((ours_robust != robust.numpy()).sum())
    print(f"{'after':10s} {'torchattacks':>12s} {'robustd':>8s} {'diff (pts)':>10s}")
    for name, ref, mine in rows:
        print(f"{name:10s} {100 * ref:12.2f} {100 * mine:8.2f} {100 * (mine - ref):+10.2f}")
    print(f"final verdicts differ on {differ} of {args.n} samples; "
          f"time: torchattacks {results['total_seconds']:.0f} s"
          + (f", robustd {args.robustd_seconds:.0f} s" if args.robustd_seconds else ""))
    results["robustd"] = {name: float(mine) for name, _, mine in rows}
    results["robustd_seconds"] = args.robustd_seconds
    results["verdicts_differing"] = differ
    gap = abs(rows[-1][2] - rows[-1][1])
    print(f"robust accuracy difference {100 * gap:.2f} points (goal: within 1)")


def predict_logits(model, x):
    with torch.no_grad():
        return model(x)


def predict(model, x, batch):
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX file taking [N,1,28,28] images in [0,1]")
    ap.add_argument("--n", type=int, default=1000, help="first N test images")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--norm", choices=["linf", "l2"], default="linf")
    ap.add_argument("--attacks", default="pgd,apgd-ce,apgd-dlr,square")
    ap.add_argument("--autoattack", choices=["standard"],
                    help="run torchattacks' AutoAttack of this version (ensemble) instead of --attacks")
    ap.add_argument("--budgets", choices=["published", "torchattacks"], default="published",
                    help="with --autoattack: AutoAttack's own budgets, or torchattacks' defaults (10 iterations)")
    ap.add_argument("--robustd-seconds", type=float, help="wall time of the companion robustd run, for the table")
    # Budgets: robustd's defaults (configs/default.yaml, eval.*).
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--pgd-step-size-factor", type=float, default=0.125)
    ap.add_argument("--apgd-steps", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=1000)
    ap.add_argument("--square-p-init", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dataset-dir", default=fmnist.DEFAULT_DIR)
    ap.add_argument("--robustd-npz", help="per_sample_before.npz of the companion robustd run on the same model (`eval "
                                          "--mode standalone`, or `eval --preset autoattack-standard` with --autoattack)")
    ap.add_argument("--out", help="write the numbers here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x, y = fmnist.load("test", args.dataset_dir)
    x, y = torch.from_numpy(x[: args.n]), torch.from_numpy(y[: args.n])
    model = OnnxModule(args.model).eval()
    parity = check_against_onnxruntime(model, args.model, x[:256], args.threads)
    clean_correct = predict(model, x, args.batch) == y
    idx = clean_correct.nonzero().flatten()
    results = {"model": args.model, "n": args.n, "eps": args.eps, "norm": args.norm, "ort_parity": parity,
               "clean_acc": clean_correct.float().mean().item(), "attacks": {}, "seconds": {}}
    if args.autoattack:
        classes = int(predict_logits(model, x[:1]).shape[1])
        started = time.time()
        robust, after, seconds, budgets = run_autoattack(model, x, y, clean_correct, args, classes)
        results.update(protocol=f"autoattack-{args.autoattack}", budgets_used=args.budgets, budgets=budgets,
                       attacks=after, seconds=seconds, worst_case_acc=robust.float().mean().item(),
                       total_seconds=time.time() - started, threads=args.threads)
        print(f"model {args.model}: first {args.n} Fashion-MNIST test images, {args.norm} eps {args.eps}, "
              f"torchattacks AutoAttack({args.autoattack}) with {args.budgets} budgets, {args.threads} threads")
        if args.robustd_npz:
            compare_autoattack(results, robust, y, args)
        else:
            for name, acc in after.items():
                print(f"{name:10s} {100 * acc:6.2f}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
        return
    held_all = clean_correct.clone()
    held_by = {}
    for name in args.attacks.split(","):
        attack = make_attack(name, model, args)
        started = time.time()
        held = torch.zeros(args.n, dtype=torch.bool)
        for i in range(0, len(idx), args.batch):
            b = idx[i:i + args.batch]
            adv = attack(x[b], y[b]).detach()
            assert float((adv - x[b]).abs().max()) <= args.eps + 1e-6 or args.norm == "l2"
            held[b] = predict(model, adv, args.batch) == y[b]
        held_by[name] = held
        held_all &= held
        results["attacks"][name] = held.float().mean().item()
        results["seconds"][name] = time.time() - started
        print(f"[reference] {name:9s} robust acc {100 * results['attacks'][name]:6.2f} %  "
              f"({results['seconds'][name]:.0f} s)", file=sys.stderr)
    results["worst_case_acc"] = held_all.float().mean().item()

    print(f"model {args.model}: first {args.n} Fashion-MNIST test images, {args.norm} eps {args.eps}, standalone; "
          f"reference interpreter vs onnxruntime max |logit diff| {parity:.1e}")
    if args.robustd_npz:
        ours = np.load(args.robustd_npz)
        if not np.array_equal(ours["index"], np.arange(args.n)) or not np.array_equal(ours["label"], y.numpy()):
            raise SystemExit(f"{args.robustd_npz} is not an evaluation of the first {args.n} test images")
        ours_clean = ours["clean_pred"] == ours["label"]
        for name in args.attacks.split(","):
            if f"attack_{name}" not in ours.files:
                raise SystemExit(f"{args.robustd_npz} has no results for {name}: run robustd eval --attacks "
                                 f"{args.attacks}")
            if (ours[f"attack_{name}"][ours_clean] == -1).any():
                raise SystemExit(f"{args.robustd_npz} comes from an ensemble evaluation (later attacks skip broken "
                                 "points): run robustd eval --mode standalone")
        rows = [("clean", results["clean_acc"], ours_clean.mean(), int((ours_clean != clean_correct.numpy()).sum()))]
        ours_all = ours_clean.copy()
        for name in args.attacks.split(","):
            held = ours_clean & (ours[f"attack_{name}"] != 1)
            ours_all &= held
            rows.append((name, results["attacks"][name], held.mean(), int((held != held_by[name].numpy()).sum())))
        rows.append(("worst", results["worst_case_acc"], ours_all.mean(),
                     int((ours_all != held_all.numpy()).sum())))
        print(f"{'':10s} {'torchattacks':>12s} {'robustd':>8s} {'diff (pts)':>10s} {'samples differing':>18s}")
        for name, ref, mine, differ in rows:
            print(f"{name:10s} {100 * ref:12.2f} {100 * mine:8.2f} {100 * (mine - ref):+10.2f} {differ:18d}")
        results["robustd"] = {name: float(mine) for name, _, mine, _ in rows}
        worst_gap = max(abs(mine - ref) for _, ref, mine, _ in rows)
        print(f"largest difference {100 * worst_gap:.2f} points (goal: within 1.5)")
    else:
        for name, acc in results["attacks"].items():
            print(f"{name:10s} {100 * acc:6.2f}")
        print(f"{'worst':10s} {100 * results['worst_case_acc']:6.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
