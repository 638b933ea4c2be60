#!/usr/bin/env python3
"""PyTorch eager reference for benches/onnx_vs_eager.rs: the same network (the fixture's PyTorch module with
BatchNorm folded into the convolutions, as in the exported ONNX), same threads and batch, forward + backward of the
cross-entropy to the parameters and the input. Prints the median milliseconds per iteration."""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_fixtures  # noqa: E402


def fold_batchnorm(module):
    """Folds every BatchNorm into the convolution before it (torch.fx), as the eval-mode ONNX export does."""
    from torch.fx.experimental.optimization import fuse
    return fuse(module)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="cnn_bn")
    ap.add_argument("--fixtures", default="tests/fixtures/generated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cls, shape = export_fixtures.ARCHS[args.arch]
    model = cls()
    model.load_state_dict(torch.load(os.path.join(args.fixtures, f"{args.arch}.pt")))
    model = fold_batchnorm(model.eval())
    torch.manual_seed(0)
    x = torch.rand(args.batch, *shape, requires_grad=True)
    y = torch.randint(10, (args.batch,))
    times = []
    for i in range(args.iters + 5):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        elapsed = (time.perf_counter() - start) * 1e3
        if i >= 5:
            times.append(elapsed)
    print(f"pytorch eager    {args.arch} batch {args.batch} threads {args.threads}: median {statistics.median(times):.2f} ms"
          f" (min {min(times):.2f}) per forward+backward")


if __name__ == "__main__":
    main()
