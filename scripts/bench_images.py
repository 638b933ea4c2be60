#!/usr/bin/env python3
"""The reference side of the image-loading benchmark (`make bench`, benches/suite/images.rs).

  make --out DIR --images N [--distinct K]   writes an ImageFolder tree DIR/{train,test}/<class>/*.jpg: K distinct
                                             ImageNet-sized JPEGs (375x500 and 500x375, quality 90) made with Pillow,
                                             hard-linked to reach N training files (the loader still opens, reads
                                             and decodes every one); a stamp skips the work on re-runs
  run --root DIR --workers W --batch B --reps R
                                             torchvision ImageFolder + Resize(256) + CenterCrop(224) + ToTensor
                                             through a DataLoader with W worker processes; prints one JSON line:
                                             {"seconds": [...], "images": N}
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def make(out, images, distinct):
    from PIL import Image
    stamp = os.path.join(out, ".stamp")
    want = f"{images} {distinct} v1"
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    rng = np.random.default_rng(13)
    classes = [f"class_{c:02d}" for c in range(10)]
    sources = []
    src_dir = os.path.join(out, "distinct")
    os.makedirs(src_dir, exist_ok=True)
    for k in range(distinct):
        h, w = (375, 500) if k % 2 == 0 else (500, 375)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.zeros((h, w, 3), np.float32)
        for ch in range(3):
            img[..., ch] = 128 + 90 * np.sin(rng.uniform(0.01, 0.2) * yy + rng.uniform(0, 6)) * \
                np.cos(rng.uniform(0.01, 0.2) * xx)
        img += rng.normal(0, 10, img.shape)
        path = os.path.join(src_dir, f"{k:05d}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        sources.append(path)
    for split, n in (("train", images), ("test", max(10, images // 50))):
        for c in classes:
            os.makedirs(os.path.join(out, split, c), exist_ok=True)
        for i in range(n):
            target = os.path.join(out, split, classes[i % 10], f"{i:06d}.jpg")
            if not os.path.exists(target):
                os.link(sources[i % distinct], target)
    with open(stamp, "w") as f:
        f.write(want)


def run(root, workers, batch, reps):
    import torch
    from torchvision import datasets, transforms as T
    torch.set_num_threads(1)
    ds = datasets.ImageFolder(os.path.join(root, "train"),
                              transform=T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]))
    seconds = []
    for _ in range(reps):
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=False)
        t0 = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += x.shape[0]
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds, "images": n}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--images", type=int, required=True)
    m.add_argument("--distinct", type=int, default=500)
    r = sub.add_parser("run")
    r.add_argument("--root", required=True)
    r.add_argument("--workers", type=int, required=True)
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.out, args.images, args.distinct)
    else:
        run(args.root, args.workers, args.batch, args.reps)


if __name__ == "__main__":
    sys.exit(main())
