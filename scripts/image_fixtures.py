#!/usr/bin/env python3
"""Writes the image-file datasets the tests use, and torchvision's tensors for them (the parity reference).

Into OUT (default tests/fixtures/generated/images):
  fmnist/train/<class>/<i>.png     12 Fashion-MNIST test images per class, PNG (gray)
  fmnist/test/<class>/<i>.jpg      6 more per class, JPEG quality 90 (gray)
  fmnist/train.csv, fmnist/test.jsonl   the same files as a manifest (CSV with header; JSON lines)
  odd/train|val/<class>/*          RGB images of odd sizes and orientations made with Pillow: landscape and portrait
                                   JPEGs with EXIF orientation 3/6/8, RGBA, gray, 16-bit gray and palette PNGs,
                                   lossless WebP, BMP
  tiny224.onnx                     a small CNN taking 3x224x224 (10 classes; legacy exporter, one file)
  parity/<case>.npy + parity.json  torchvision's ImageFolder + transforms on those files, as uint8 (ToTensor's
                                   value x 255, exact), with the file list and labels of each case
The reference loader is torchvision's pil_loader plus ImageOps.exif_transpose (robustd applies EXIF orientation;
torchvision's default loader does not) and 16-bit to 8-bit scaling round(v / 257) (PIL would clip). A stamp of
this script's hash skips work on re-runs. Only setup and tests use this script.
"""
import argparse
import hashlib
import io
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reproducible  # noqa: E402,F401  (before torch: the fixtures are byte-identical on every x86-64 machine)
import fmnist  # noqa: E402

FMNIST_CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle-boot"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 12, 6


def write_fmnist(out):
    x, y = fmnist.load("test")
    root = os.path.join(out, "fmnist")
    counts = {c: 0 for c in range(10)}
    rows = {"train": [], "test": []}
    for i in range(len(y)):
        c = int(y[i])
        k = counts[c]
        if k >= TRAIN_PER_CLASS + TEST_PER_CLASS:
            continue
        counts[c] += 1
        split = "train" if k < TRAIN_PER_CLASS else "test"
        folder = f"{c}_{FMNIST_CLASSES[c]}"
        ext = "png" if split == "train" else "jpg"
        rel = os.path.join(split, folder, f"{i:05d}.{ext}")
        os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        img = Image.fromarray((x[i, 0] * 255).round().astype(np.uint8))
        if ext == "png":
            img.save(os.path.join(root, rel))
        else:
            img.save(os.path.join(root, rel), quality=90)
        rows[split].append((rel, c))
        if all(v == TRAIN_PER_CLASS + TEST_PER_CLASS for v in counts.values()):
            break
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("path,label\n")
        for rel, c in sorted(rows["train"]):
            f.write(f"{rel},{c}\n")
    with open(os.path.join(root, "test.jsonl"), "w") as f:
        for rel, c in sorted(rows["test"]):
            f.write(json.dumps({"path": rel, "label": c}) + "\n")


def pattern(h, w, seed):
    """A smooth RGB pattern with texture, so resampling differences show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for ch in range(3):
        fy, fx, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.3)
        img[..., ch] = 127.5 + 100 * np.sin(fy * yy + ph) * np.cos(fx * xx) + rng.normal(0, 12, (h, w))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def exif_jpeg(arr, orientation, path):
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif.tobytes())


def write_odd(out):
    root = os.path.join(out, "odd")
    # (class, name, size (h, w), kind)
    specs = [
        ("a_waves", "landscape.jpg", (97, 181), "jpeg"),
        ("a_waves", "portrait_exif6.jpg", (120, 77), "exif6"),
        ("a_waves", "rgba.png", (53, 37), "rgba"),
        ("a_waves", "gray.png", (64, 90), "gray"),
        ("b_noise", "rotated_exif3.jpg", (71, 150), "exif3"),
        ("b_noise", "palette.png", (130, 130), "palette"),
        ("b_noise", "lossless.webp", (45, 300), "webp"),
        ("b_noise", "deep16.png", (88, 66), "gray16"),
        ("c_sweep", "exif8.jpg", (200, 61), "exif8"),
        ("c_sweep", "bitmap.bmp", (33, 47), "bmp"),
        ("c_sweep", "exact.png", (224, 224), "png"),
        ("c_sweep", "sub/nested.png", (257, 300), "png"),
    ]
    for split, offset in (("train", 0), ("val", 100)):
        for k, (cls, name, (h, w), kind) in enumerate(specs):
            path = os.path.join(root, split, cls, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            arr = pattern(h + (split == "val"), w, seed=offset + k)
            if kind == "jpeg":
                Image.fromarray(arr).save(path, quality=92)
            elif kind.startswith("exif"):
                exif_jpeg(arr, int(kind[4:]), path)
            elif kind == "rgba":
                alpha = np.linspace(0, 255, arr.shape[0] * arr.shape[1]).reshape(arr.shape[:2]).astype(np.uint8)
                Image.fromarray(np.dstack([arr, alpha])).save(path)
            elif kind == "gray":
                Image.fromarray(arr[..., 1]).save(path)
            elif kind == "gray16":
                deep = np.minimum(arr[..., 0].astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)
                Image.fromarray(deep).save(path)
            elif kind == "palette":
                Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path)
            elif kind == "webp":
                Image.fromarray(arr).save(path, lossless=True)
            elif kind == "bmp":
                Image.fromarray(arr).save(path)
            else:
                Image.fromarray(arr).save(path)


def reference_loader(path):
    """pil_loader + EXIF orientation + 16-bit scaling (what robustd does; see the module doc)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I"):
            arr = np.array(img, dtype=np.uint32)
            img = Image.fromarray(((arr + 128) // 257).astype(np.uint8))
        return img.convert("RGB")


def write_parity(out):
    import torch
    from torchvision import datasets, transforms as T
    cases = {
        # name: (folder, split, transform, loader)
        "fmnist_png_gray": ("fmnist", "train", T.Compose([T.Grayscale(1), T.ToTensor()])),
        "fmnist_jpeg_gray": ("fmnist", "test", T.Compose([T.Grayscale(1), T.ToTensor()])),
        "fmnist_png_rgb224": ("fmnist", "train", T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor()])),
        "odd_shorter256_crop224": ("odd", "train", T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])),
        "odd_shorter_crop64x48": ("odd", "val", T.Compose([T.Resize(64), T.CenterCrop((64, 48)), T.ToTensor()])),
        "odd_exact40x56": ("odd", "train", T.Compose([T.Resize((40, 56)), T.ToTensor()])),
        "odd_gray_shorter32": ("odd", "train", T.Compose([T.Grayscale(1), T.Resize(32), T.CenterCrop(32),
                                                          T.ToTensor()])),
        "odd_bicubic_shorter96": ("odd", "train", T.Compose([T.Resize(96, interpolation=T.InterpolationMode.BICUBIC),
                                                             T.CenterCrop(96), T.ToTensor()])),
    }
    pdir = os.path.join(out, "parity")
    os.makedirs(pdir, exist_ok=True)
    index = {}
    for name, (folder, split, transform) in cases.items():
        root = os.path.join(out, folder)
        ds = datasets.ImageFolder(os.path.join(root, split), transform=transform, loader=reference_loader)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        pixels = (x * 255).round().to(torch.uint8).numpy()
        np.save(os.path.join(pdir, f"{name}.npy"), pixels)
        index[name] = {
            "folder": folder,
            "split": split,
            "classes": ds.classes,
            "files": [os.path.relpath(p, root) for p, _ in ds.samples],
            "labels": [int(c) for _, c in ds.samples],
            "shape": list(pixels.shape),
        }
    with open(os.path.join(out, "parity.json"), "w") as f:
        json.dump(index, f, indent=1)


def write_model(out):
    import torch
    import torch.nn as nn
    import warnings
    import contextlib

    reproducible.pin_torch()
    torch.manual_seed(224)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    x = torch.rand(2, 3, 224, 224)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), os.path.join(out, "tiny224.onnx"), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/generated/images")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stamp = os.path.join(args.out, ".stamp")
    scripts = ("image_fixtures.py", "fmnist.py", "reproducible.py")
    sources = b"".join(open(os.path.join(HERE, f), "rb").read() for f in scripts)
    digest = hashlib.sha256(sources).hexdigest()
    if not args.force and os.path.exists(stamp) and open(stamp).read() == digest:
        return
    write_fmnist(args.out)
    write_odd(args.out)
    write_parity(args.out)
    write_model(args.out)
    with open(stamp, "w") as f:
        f.write(digest)
    print(f"[fixtures] wrote the image datasets, their torchvision references and tiny224.onnx to {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
