"""Reads Fashion-MNIST (or MNIST) IDX files, gzipped or not, into float32 NCHW arrays in [0,1].

Shared by the Python reference scripts (demo model training, reference evaluation, benchmarks) so they all see
exactly the samples robustd sees. Default location: the Debian package dataset-fashion-mnist.
"""
import gzip
import os

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(directory, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{stem}(.gz) not in {directory} (apt-get install dataset-fashion-mnist)")


def load(split="train", directory=DEFAULT_DIR, n=None):
    """Returns (x float32 [N,1,28,28] in [0,1], y int64 [N]) for split 'train' or 'test': the first `n` samples
    (all when None), sliced before the float conversion so a small subset does not cost the whole split's memory."""
    prefix = "train" if split == "train" else "t10k"
    x = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))[:n]
    y = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))[:n]
    return (x.astype(np.float32) / 255.0)[:, None, :, :], y.astype(np.int64)
