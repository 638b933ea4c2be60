"""The small PyTorch classifiers behind the test fixtures, how each is built from its seed, and how it is exported.

Shared by scripts/export_fixtures.py (the fixtures), scripts/train_demo_cnn.py (the demo model) and
scripts/bench_reference.py (the benchmark's PyTorch side). Importing this module pins nothing: the fixture scripts
import `reproducible` first; the benchmark measures PyTorch as users run it.
"""
import contextlib
import copy
import io
import math
import warnings

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


class ActCNN(nn.Module):
    """A Fashion-MNIST CNN on activations the other models lack: LeakyReLU, ELU, average pooling, SiLU."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.LeakyReLU(0.1), nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ELU(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.SiLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class MobileNetHS(nn.Module):
    """MobileNetV3-style on 1x28x28: depthwise-separable inverted residuals with hard-swish, BatchNorm."""

    def __init__(self, classes=10):
        super().__init__()

        def block(cin, cout, stride, expand):
            hidden = cin * expand
            return nn.Sequential(
                nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                nn.Hardswish(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(block(16, 24, 2, 4), block(24, 24, 1, 4), block(24, 40, 2, 4))
        self.head = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish())
        self.fc = nn.Linear(96, classes)

    def forward(self, x):
        h = self.blocks[0](self.stem(x))
        h = h + self.blocks[1](h)
        return self.fc(self.head(self.blocks[2](h)).mean([2, 3]))


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


# name -> (module class, one input's shape, seed). Each architecture has its own seed, so adding one changes no
# other fixture.
ARCHS = {
    "mlp": (MLP, (1, 28, 28), 3),
    "cnn_bn": (SmallCNN, (1, 28, 28), 0),
    "resdw": (ResDW, (1, 28, 28), 6),
    "lenet": (LeNet, (1, 28, 28), 1),
    "resnet18": (ResNet18, (3, 32, 32), 7),
    "mobilenetv2": (MobileNetV2, (3, 32, 32), 5),
    "vgg_bn": (VGGBN, (3, 32, 32), 8),
    "lenet_nhwc": (LeNetNHWC, (28, 28, 1), 2),
    "mlp_flat": (FlatMLP, (784,), 4),
    "vit": (ViT, (1, 28, 28), 9),
    "vit_sdpa": (SdpaViT, (1, 28, 28), 10),
    # A binary classifier (two logits): the evaluation's few-class path (no DLR, one target class).
    "mlp_binary": (lambda: MLP(classes=2), (1, 28, 28), 20),
}
# Architectures exported only as export_fixtures.VARIANTS lists them (not with both exporters).
ONLY_LISTED = {"vit_sdpa"}


def seeded_model(cls, seed):
    """`cls()` built right after `torch.manual_seed(seed)` (the constructor draws the conv/linear weights), with
    non-trivial BatchNorm statistics drawn next, in eval mode: the same weights on every run and machine."""
    torch.manual_seed(seed)
    model = cls()
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
    return model.eval()


# Node metadata the dynamo exporter writes that depends on where the files are, not on the model: the Python
# stack of each traced op (absolute paths of this checkout and of the venv, line numbers).
MACHINE_DEPENDENT_NODE_METADATA = ("pkg.torch.onnx.stack_trace",)


def export(model, x, path, exporter, options=None):
    """Exports `model` (traced on `x`) to `path` with the legacy or the dynamo exporter (weights as external data
    in `path`.data), batch dimension dynamic; the file depends only on the model, not on the checkout's path."""
    options = options or {}
    names = dict(input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            kw = {"opset_version": 17, **options}
            if kw.get("do_constant_folding", True) and any(
                    isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                model = fold_batchnorm_exactly(model)
            torch.onnx.export(model, (x,), path, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names, **kw)
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=True,
                              dynamic_shapes={"x": {0: batch}}, verbose=False, **names, **options)
            strip_node_metadata(path, MACHINE_DEPENDENT_NODE_METADATA)


def fold_batchnorm_exactly(model):
    """A copy of `model` with every BatchNorm that follows a Conv folded into that Conv's weight and bias, computed
    in float64 with numpy and rounded once to float32.

    The legacy exporter folds these pairs itself when constant folding is on, but its float32 arithmetic (ATen/MKL
    kernels chosen per CPU, outside what reproducible.py can pin) gave other last bits on another x86-64 machine,
    so the legacy files' digests differed between machines (issue 21). IEEE float64 multiply, divide and sqrt are
    exact-rounded on every CPU, so this fold gives the same bytes everywhere; the exported graph is the one the
    exporter would have written (a Conv with the folded parameters, no BatchNormalization node)."""
    import numpy as np
    import torch.fx as fx

    gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules[src.target], nn.Conv2d)):
            continue
        conv, bn = modules[src.target], modules[node.target]
        f64 = lambda t: t.detach().to(torch.float64).numpy()  # noqa: E731
        channels = conv.out_channels
        w = f64(conv.weight)
        b = f64(conv.bias) if conv.bias is not None else np.zeros(channels)
        gamma = f64(bn.weight) if bn.affine else np.ones(channels)
        beta = f64(bn.bias) if bn.affine else np.zeros(channels)
        scale = gamma / np.sqrt(f64(bn.running_var) + bn.eps)
        conv.weight = nn.Parameter(torch.from_numpy((w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)))
        conv.bias = nn.Parameter(torch.from_numpy(((b - f64(bn.running_mean)) * scale + beta).astype(np.float32)))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def strip_node_metadata(path, keys):
    """Removes node metadata entries named `keys` from the ONNX file at `path`, in place; external data (the .data
    file and each initializer's reference into it) stays exactly as written."""
    import onnx  # only here: a script that imports this module for its models does not pay for onnx

    model = onnx.load(path, load_external_data=False)
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key not in keys]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, path)
