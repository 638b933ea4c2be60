#!/usr/bin/env python3
"""Exports the small PyTorch classifiers the tests use, with both ONNX exporters, plus reference data.

For every entry of VARIANTS (each architecture in fixture_models.ARCHS with both exporters, plus BatchNorm-kept
and older-opset exports) this writes into OUT:
  <arch>_<variant>.onnx   (dynamo: weights as external data in <arch>_<variant>.onnx.data)
  <arch>_<variant>.npz    x: 8 float32 inputs in [0,1], chosen away from ReLU/ReLU6/max-pool ties (see
                          `choose_inputs`); logits: PyTorch's eval-mode float32 outputs; grad: d(sum of logits * w)/dx
                          for w = grad_weights (fixed random weights); logits_f64, grad_f64: the same model evaluated
                          in float64, the reference the parity tests measure float32 errors against
and OUT/ops/<case>/ single-op models with inputs (scripts/onnx_op_cases.py) for the per-op onnxruntime tests, and
OUT/backend/ the `onnx` package's backend test cases for the supported ops (scripts/onnx_backend_cases.py).

Reproducible to the byte: every model is built right after seeding (fixture_models.seeded_model), data comes from
seeded numpy generators, float arithmetic is pinned to the same code path on every x86-64 CPU (reproducible.py),
and the dynamo exporter's machine-dependent node metadata (stack traces with this checkout's paths) is removed.
tests/fixtures/DIGESTS.sha256 lists the SHA-256 of every file written here, recorded on x86-64 (other
architectures run different float kernels); tests/fixture_digests.rs compares it with what this script wrote and
names each file that differs. A stamp of the inputs' hash skips work on re-runs. Only setup and tests use this
script; robustd never runs Python.
"""
import reproducible  # first: pins the float arithmetic before torch loads

import argparse
import copy
import glob
import hashlib
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fixture_models import ARCHS, ONLY_LISTED, export, seeded_model

# (arch, file suffix, exporter, options). Eval-mode exports fold BatchNorm into the convolutions; the `bnkept`
# variants keep BatchNormalization nodes (legacy: no constant folding; dynamo: no optimizer), which is what
# training with `train_batchnorm` needs. The extra legacy opsets exercise the opset-dependent op forms.
VARIANTS = [(a, e, e, {}) for a in ARCHS if a not in ONLY_LISTED for e in ("legacy", "dynamo")] + [
    ("vgg_bn", "bnkept_legacy", "legacy", {"do_constant_folding": False}),
    ("vgg_bn", "bnkept_dynamo", "dynamo", {"optimize": False}),
    ("mobilenetv2", "legacy_opset11", "legacy", {"opset_version": 11}),
    ("resnet18", "legacy_opset13", "legacy", {"opset_version": 13}),
    ("lenet", "legacy_opset9", "legacy", {"opset_version": 9}),
    ("vit_sdpa", "dynamo_opset23", "dynamo", {"opset_version": 23}),
    # Below opset 17 onnxruntime's optimizers write its contrib LayerNormalization (default domain, version 1).
    ("vit", "legacy_opset14", "legacy", {"opset_version": 14}),
]

SAMPLES = 8
# Smallest distance, relative to the largest |value| of the same activation tensor, that every kink input of a
# reference sample keeps from its kink (ReLU at 0, ReLU6 at 0 and 6, the runner-up of a max-pool window). Float32
# evaluations of these models differ from float64 by at most ~6e-7 of that scale (measured on every fixture);
# closer to a kink, float32 rounding decides which side an input falls on, and with it where the gradient flows,
# so a gradient comparison there measures a coin toss instead of the engine. 3e-6 keeps 5x that error away.
TIE_MARGIN = 3e-6


class KinkDistance(TorchDispatchMode):
    """While active, records for each sample of the batch the smallest relative distance of any ReLU, ReLU6
    (hardtanh) or max-pool input to its kink. Exact ties (ReLU zeros meeting in a pooling window, ReLU6 clipped at
    both ends) are no ties for the gradient: every float evaluation breaks them the same way."""

    def __init__(self, batch):
        super().__init__()
        self.distance = torch.full((batch,), float("inf"), dtype=torch.float64)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        op = func.overloadpacket.__name__.rstrip("_")  # in-place forms too, measured before they overwrite
        z = args[0] if args else None
        d = None
        if op == "relu":
            d = z.abs()
        elif op in ("hardtanh", "relu6"):
            lo, hi = (list(args[1:3]) + [-1.0, 1.0][len(args) - 1:]) if op == "hardtanh" else (0.0, 6.0)
            d = torch.minimum((z - lo).abs(), (z - hi).abs())
        elif op == "max_pool2d_with_indices":
            d = self.pool_gap(z, *args[1:])
        if d is not None:
            scale = z.abs().max().clamp_min(torch.finfo(z.dtype).tiny)
            self.distance = torch.minimum(self.distance, (d / scale).flatten(1).min(1).values)
        return func(*args, **(kwargs or {}))

    @staticmethod
    def pool_gap(z, kernel, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
        """Per window, the gap between the maximum and the largest value below it (inf when all are equal)."""
        assert all(p == 0 for p in padding) and not ceil_mode, "pool_gap: padded/ceil max-pool windows"
        kernel, dilation, stride = (tuple(v) * (3 - len(v)) for v in (kernel, dilation, stride or kernel))
        windows = F.unfold(z, kernel, dilation=dilation, stride=stride)
        windows = windows.view(z.shape[0], z.shape[1], -1, windows.shape[-1])
        top = windows.max(dim=2, keepdim=True).values
        below = torch.where(windows < top, windows, -torch.inf).max(dim=2).values
        return top.squeeze(2) - below


def choose_inputs(model, shape, rng):
    """SAMPLES uniform [0,1] float32 inputs, drawn from `rng` in order, keeping those whose kink distance in a
    float64 evaluation is at least TIE_MARGIN (a few percent to all of the draws, depending on the model)."""
    model64 = copy.deepcopy(model).double()
    kept = []
    for _ in range(1000):
        candidates = rng.random((16, *shape), dtype=np.float32)
        probe = KinkDistance(len(candidates))
        with torch.no_grad(), probe:
            model64(torch.from_numpy(candidates).double())
        kept.extend(candidates[probe.distance.numpy() >= TIE_MARGIN])
        if len(kept) >= SAMPLES:
            return np.stack(kept[:SAMPLES])
    raise RuntimeError(f"{type(model).__name__}: no {SAMPLES} inputs {TIE_MARGIN} away from every kink in 16000 draws")


def references(model, x, w):
    """PyTorch's logits and input gradient of sum(logits * w) for `x`, in float32 and (suffix _f64) in float64."""
    out = {}
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        m = copy.deepcopy(model).to(dtype)
        xg = torch.from_numpy(x).to(dtype).requires_grad_(True)
        logits = m(xg)
        (grad,) = torch.autograd.grad((logits * torch.from_numpy(w).to(dtype)).sum(), xg)
        out["logits" + suffix] = logits.detach().numpy()
        out["grad" + suffix] = grad.numpy()
    return out


def inputs_digest(here, seed):
    """What the files depend on: these scripts, the op tables the backend cases follow, torch's version, the seed."""
    sources = b""
    for name in ("export_fixtures.py", "fixture_models.py", "reproducible.py", "onnx_op_cases.py",
                 "onnx_backend_cases.py"):
        with open(os.path.join(here, name), "rb") as f:
            sources += f.read()
    for table in sorted(glob.glob(os.path.join(here, "..", "src", "onnx", "ops", "*.rs"))):
        with open(table, "rb") as f:
            sources += f.read()
    return hashlib.sha256(sources + torch.__version__.encode() + str(seed).encode()).hexdigest()


def write_models(out, seed=0):
    """Every VARIANTS export and its reference npz into `out`, drawn from `seed` (the committed digests: 0)."""
    models = {}
    for name, (cls, shape, arch_seed) in ARCHS.items():
        arch_seed += 1000 * seed
        model = seeded_model(cls, arch_seed)
        rng = np.random.default_rng(arch_seed)
        x = choose_inputs(model, shape, rng)
        with torch.no_grad():
            classes = model(torch.from_numpy(x[:1])).shape[1]
        w = rng.standard_normal((SAMPLES, classes)).astype(np.float32)
        models[name] = (model, x, dict(x=x, grad_weights=w, **references(model, x, w)))
    for arch, suffix, exporter, options in VARIANTS:
        model, x, ref = models[arch]
        export(model, torch.from_numpy(x[:2]), os.path.join(out, f"{arch}_{suffix}.onnx"), exporter, options)
        reproducible.save_npz(os.path.join(out, f"{arch}_{suffix}.npz"), **ref)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--seed", type=int, default=0,
                    help="draw other models and inputs (the committed digests are for 0), to check that the tests "
                         "hold on any draw")
    args = ap.parse_args()
    reproducible.pin_torch()
    os.makedirs(args.out, exist_ok=True)
    stamp_path = os.path.join(args.out, ".stamp")
    digest = inputs_digest(os.path.dirname(os.path.abspath(__file__)), args.seed)
    if not args.force and os.path.exists(stamp_path) and open(stamp_path).read() == digest:
        return
    write_models(args.out, args.seed)
    import onnx_backend_cases  # noqa: E402 (beside this script)
    import onnx_op_cases  # noqa: E402
    cases = onnx_op_cases.write_all(os.path.join(args.out, "ops"))
    backend = onnx_backend_cases.write_all(os.path.join(args.out, "backend"))
    with open(stamp_path, "w") as f:
        f.write(digest)
    print(f"[fixtures] wrote {len(VARIANTS)} models, {cases} op cases and {sum(backend)} ONNX backend cases to "
          f"{args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
