#!/usr/bin/env python3
"""Exports the small PyTorch classifiers the tests use, with both ONNX exporters, plus reference data.

For every entry of VARIANTS (each architecture in ARCHS with both exporters, plus BatchNorm-kept and older-opset
exports) this writes into OUT:
  <arch>_<variant>.onnx       (dynamo: weights as external data in <arch>_<variant>.onnx.data)
  <arch>_<variant>.npz        x: float32 inputs in [0,1], logits: PyTorch's eval-mode outputs,
                              grad: d(sum of logits * w)/dx for w = fixed random weights (input-gradient parity)
  <arch>.pt                   the PyTorch state dict (for reference scripts)
and OUT/ops/<case>/ single-op models with inputs (scripts/onnx_op_cases.py) for the per-op onnxruntime tests, and
OUT/backend/ the `onnx` package's backend test cases for the supported ops (scripts/onnx_backend_cases.py).
Weights are seeded, so the files are reproducible; a stamp of this script's hash skips work on re-runs.
Only setup and tests use this script; robustd never runs Python.
"""
import argparse
import contextlib
import hashlib
import io
import math
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


class LeNet(nn.Module):
    """LeNet-5 on 28x28 (average pooling, as in the original)."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                  nn.Linear(84, classes))

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
    """ResNet-18 topology (BasicBlocks 2-2-2-2) at reduced width for 32x32 inputs."""

    def __init__(self, classes=10, widths=(16, 32, 64, 128)):
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


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 structure (inverted residuals, depthwise convs, ReLU6 clips) at reduced width."""

    def __init__(self, classes=10):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 1, 2)]
        layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
        cin = 16
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean([2, 3]))


class VGGBN(nn.Module):
    """VGG-style conv-BN-ReLU stacks with max pooling and a dropout head."""

    def __init__(self, classes=10, cfg=(16, "M", 32, "M", 64, 64, "M")):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(64, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class LeNetNHWC(LeNet):
    """LeNet taking channels-last input (a TensorFlow-style layout), for the NHWC input adapter."""

    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (separate q/k/v projections, matmul, scale, softmax) as Hugging Face
    ViT does: the pattern onnxruntime's transformers optimizer fuses into Attention / MultiHeadAttention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        weights = (torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)).softmax(-1)
        context = torch.matmul(weights, v).permute(0, 2, 1, 3).contiguous()
        return self.out(context.view(context.shape[0], context.shape[1], -1))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; `act` picks the MLP activation (erf GELU, tanh GELU or QuickGELU), so the
    optimizer writes BiasGelu, FastGelu and QuickGelu."""

    def __init__(self, dim, heads, hidden, act):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), SelfAttention(dim, heads), nn.LayerNorm(dim)
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), act

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        h = self.fc1(self.norm2(x))
        if self.act == "tanh":
            h = F.gelu(h, approximate="tanh")
        elif self.act == "quick":
            h = h * torch.sigmoid(1.702 * h)
        else:
            h = F.gelu(h)
        return x + self.fc2(h)


class ViT(nn.Module):
    """A small vision transformer on 28x28: 7x7 patches, class token, three blocks (one per GELU form)."""

    def __init__(self, classes=10, dim=32, heads=2, hidden=64, patch=7):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, patch, patch)
        tokens = (28 // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, hidden, a) for a in ("erf", "tanh", "quick")))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class SdpaViT(nn.Module):
    """A ViT block with RMSNorm and F.scaled_dot_product_attention: at opset 23 the dynamo exporter writes the
    ONNX RMSNormalization and Attention ops."""

    def __init__(self, classes=10, dim=32, heads=2, patch=7):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(1, dim, patch, patch)
        self.norm = nn.RMSNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm(h)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.head((h + self.out(a)).mean(1))


class FlatMLP(nn.Module):
    """An MLP taking flattened images [N, 784], for the Flat input adapter."""

    def __init__(self, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.net(x)


# name -> (module class, one input's shape)
ARCHS = {
    "mlp": (MLP, (1, 28, 28)),
    "cnn_bn": (SmallCNN, (1, 28, 28)),
    "resdw": (ResDW, (1, 28, 28)),
    "lenet": (LeNet, (1, 28, 28)),
    "resnet18": (ResNet18, (3, 32, 32)),
    "mobilenetv2": (MobileNetV2, (3, 32, 32)),
    "vgg_bn": (VGGBN, (3, 32, 32)),
    "lenet_nhwc": (LeNetNHWC, (28, 28, 1)),
    "mlp_flat": (FlatMLP, (784,)),
    "vit": (ViT, (1, 28, 28)),
    "vit_sdpa": (SdpaViT, (1, 28, 28)),
}
# Architectures exported only as listed in VARIANTS (not with both exporters).
ONLY_LISTED = {"vit_sdpa"}

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


def init_weights(model, seed):
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            # Non-trivial affine parameters, so a fused normalization that ignored them would show.
            m.weight.data.uniform_(0.5, 1.5)
            if getattr(m, "bias", None) is not None:
                m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, nn.BatchNorm2d):
            # Non-trivial running statistics, so BatchNorm folding/evaluation is really exercised.
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def export(model, x, path, exporter, options=None):
    options = options or {}
    names = dict(input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            kw = {"opset_version": 17, **options}
            torch.onnx.export(model, (x,), path, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names, **kw)
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=True,
                              dynamic_shapes={"x": {0: batch}}, verbose=False, **names, **options)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stamp_path = os.path.join(args.out, ".stamp")
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    sources = b"".join(open(os.path.join(here, f), "rb").read() for f in ("export_fixtures.py", "onnx_op_cases.py",
                                                                         "onnx_backend_cases.py"))
    # The backend cases written depend on the op tables robustd registers.
    import glob  # noqa: E402
    for table in sorted(glob.glob(os.path.join(here, "..", "src", "onnx", "ops", "*.rs"))):
        sources += open(table, "rb").read()
    digest = hashlib.sha256(sources + torch.__version__.encode()).hexdigest()
    if not args.force and os.path.exists(stamp_path) and open(stamp_path).read() == digest:
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    models = {}
    for i, (name, (cls, shape)) in enumerate(sorted(ARCHS.items())):
        model = cls()
        init_weights(model, seed=i)
        model.eval()
        torch.save(model.state_dict(), os.path.join(args.out, f"{name}.pt"))
        gen = torch.Generator().manual_seed(100 + i)
        x = torch.rand(8, *shape, generator=gen)
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        w = torch.randn(logits.shape, generator=gen)
        (grad,) = torch.autograd.grad((logits * w).sum(), xg)
        models[name] = (model, x, dict(x=x.numpy(), logits=logits.detach().numpy(), grad_weights=w.numpy(),
                                       grad=grad.numpy()))
    for arch, suffix, exporter, options in VARIANTS:
        model, x, ref = models[arch]
        export(model, x[:2], os.path.join(args.out, f"{arch}_{suffix}.onnx"), exporter, options)
        np.savez(os.path.join(args.out, f"{arch}_{suffix}.npz"), **ref)
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
