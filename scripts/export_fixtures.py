#!/usr/bin/env python3
"""Exports the small PyTorch classifiers the tests use, with both ONNX exporters, plus reference data.

For every architecture in ARCHS and each exporter this writes into OUT:
  <arch>_<exporter>.onnx      (dynamo: weights as external data in <arch>_dynamo.onnx.data)
  <arch>_<exporter>.npz       x: float32 inputs in [0,1], logits: PyTorch's eval-mode outputs,
                              grad: d(sum of logits * w)/dx for w = fixed random weights (input-gradient parity)
  <arch>.pt                   the PyTorch state dict (for reference scripts)
Weights are seeded, so the files are reproducible; a stamp of this script's hash skips work on re-runs.
Only setup and tests use this script; robustd never runs Python.
"""
import argparse
import hashlib
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-pool twice, then two linear layers: the shape of the demo model."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.features(x))


class ResDW(nn.Module):
    """A residual block with a depthwise-separable conv and ReLU6, then global average pooling."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.stem(x))
        r = self.pw(F.relu6(self.bn(self.dw(h))))
        h = F.relu(h + r)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


ARCHS = {"mlp": MLP, "cnn_bn": SmallCNN, "resdw": ResDW}


def init_weights(model, seed):
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            # Non-trivial running statistics, so BatchNorm folding/evaluation is really exercised.
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def export(model, x, path, exporter):
    names = dict(input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=True,
                              dynamic_shapes={"x": {0: batch}}, verbose=False, **names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stamp_path = os.path.join(args.out, ".stamp")
    digest = hashlib.sha256(open(__file__, "rb").read() + torch.__version__.encode()).hexdigest()
    if not args.force and os.path.exists(stamp_path) and open(stamp_path).read() == digest:
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for i, (name, cls) in enumerate(sorted(ARCHS.items())):
        model = cls()
        init_weights(model, seed=i)
        model.eval()
        torch.save(model.state_dict(), os.path.join(args.out, f"{name}.pt"))
        gen = torch.Generator().manual_seed(100 + i)
        x = torch.rand(8, 1, 28, 28, generator=gen)
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        w = torch.randn(logits.shape, generator=gen)
        (grad,) = torch.autograd.grad((logits * w).sum(), xg)
        for exporter in ("legacy", "dynamo"):
            path = os.path.join(args.out, f"{name}_{exporter}.onnx")
            export(model, x[:2], path, exporter)
            np.savez(os.path.join(args.out, f"{name}_{exporter}.npz"), x=x.numpy(), logits=logits.detach().numpy(),
                     grad_weights=w.numpy(), grad=grad.numpy())
    with open(stamp_path, "w") as f:
        f.write(digest)
    print(f"[fixtures] wrote {len(ARCHS) * 2} models to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
