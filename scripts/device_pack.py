#!/usr/bin/env python3
"""Builds the model and data files the device check carries to a GPU machine (scripts/device_check.sh pack).

    device_pack.py --out DIR [--train N] [--test N]

Writes DIR/cnn.onnx (the demo model's shape, fixture_models.SmallCNN, 1x28x28) and DIR/resnet18.onnx (ResNet-18,
BasicBlocks 2-2-2-2 at full width 64-128-256-512, 3x32x32), both seeded exactly as scripts/device_eager.py rebuilds
them on the GPU machine (fixture_models.seeded_model, seed 0) and exported with BatchNorm folded, one
self-contained file each; DIR/cnn.npz and DIR/resnet18.npz with the first Fashion-MNIST training and test images
as uint8 (for the ResNet padded to 32x32 and repeated to 3 channels), the training images with their true labels
and the test images labelled with the model's own predictions, so every test sample starts correctly classified
and both sides attack every sample (the seeded, untrained models may predict one class for everything: the
robust accuracies are then no measure of anything, the times are); DIR/atypical.npy, the imported
atypicality scores of the BAT epoch (every fifth training sample 1, the rest 0).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
from fixture_models import ResNet18, SmallCNN, export, fold_batchnorm_exactly, seeded_model  # noqa: E402

FULL_WIDTH = (64, 128, 256, 512)


def predictions(model, x):
    with torch.no_grad():
        return torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=2048)
    ap.add_argument("--test", type=int, default=1000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    xtr, ytr = fmnist.load("train", n=args.train)
    xte, _ = fmnist.load("test", n=args.test)
    to_u8 = lambda x: np.rint(x * 255.0).astype(np.uint8)  # noqa: E731  (fmnist.load gives [0,1] floats)
    summary = {}
    for name, make, pad in [("cnn", SmallCNN, False), ("resnet18", lambda: ResNet18(widths=FULL_WIDTH), True)]:
        model = seeded_model(make, 0)
        tr, te = torch.from_numpy(xtr), torch.from_numpy(xte)
        if pad:
            tr = torch.nn.functional.pad(tr, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
            te = torch.nn.functional.pad(te, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
        path = os.path.join(args.out, f"{name}.onnx")
        folded = fold_batchnorm_exactly(model)
        export(model, te[:2], path, "legacy")
        yte = predictions(folded, te)
        np.savez_compressed(os.path.join(args.out, f"{name}.npz"), x=to_u8(tr.numpy()), y=ytr,
                            x_test=to_u8(te.numpy()), y_test=yte)
        summary[name] = {"parameters": sum(p.numel() for p in model.parameters()),
                         "onnx_bytes": os.path.getsize(path), "input": list(te.shape[1:]),
                         "classes_predicted": int(len(np.unique(yte)))}
    scores = (np.arange(args.train) % 5 == 0).astype(np.float32)
    np.save(os.path.join(args.out, "atypical.npy"), scores)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
