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

    def timed(step):
        times = []
        for i in range(args.iters + 3):
            start = time.perf_counter()
            step()
            if i >= 3:
                times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times), min(times)

    def forward_backward():
        nn.functional.cross_entropy(model(x), y).backward()

    with torch.no_grad():
        forward_only, _ = timed(lambda: model(x))
    median, fastest = timed(forward_backward)
    print(f"pytorch eager    {args.arch} batch {args.batch} threads {args.threads}: median {median:.2f} ms"
          f" (min {fastest:.2f}) per forward+backward; forward alone (no grad) {forward_only:.2f} ms")


if __name__ == "__main__":
    main()
