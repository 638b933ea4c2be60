"""Makes the fixture scripts compute the same bits on every run and every x86-64 machine. Import it before torch
(it sets environment variables that torch and MKL read when they load), then call `pin_torch()`.

What differs between machines otherwise, and what pins it:
  - ATen's CPU kernels have one code path per instruction set (AVX-512, AVX2, baseline) that sum vector lanes in
    a different order and fuse multiply-adds differently: ATEN_CPU_CAPABILITY=default takes the baseline path
    everywhere.
  - MKL (the BLAS under libtorch's matrix products and convolutions) dispatches per CPU: MKL_CBWR=COMPATIBLE
    takes its conditional-numerical-reproducibility branch, the same on every x86-64 CPU.
  - oneDNN (mkldnn) and NNPACK convolutions choose JIT kernels per instruction set: both are switched off.
  - Work split over threads sums in a thread-count-dependent order: one thread (OMP, MKL and torch).
  - torch.use_deterministic_algorithms(True) refuses the nondeterministic kernels that remain.
The price is speed, which the small fixture models do not notice. Randomness is separate: every script seeds
its own generators right before each draw (`seeded`).
"""
import os
import sys

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

if "torch" in sys.modules:
    raise ImportError("import reproducible before torch: the pinned environment is read when torch loads")
os.environ.update(PINNED_ENV)


def pin_torch():
    """The in-process half of the pins (see the module doc); call once after importing torch."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)


def seeded(seed):
    """Seeds torch's global generator (module constructors draw their initial weights from it) and returns a numpy
    generator with the same seed for data. numpy's generators give the same numbers on every machine; torch's
    `randn` does not always (its vectorized normal sampler is per instruction set), so data comes from numpy."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def save_npz(path, **arrays):
    """`np.savez` with bytes that depend only on the arrays. np.savez opens each member with force_zip64, and
    Python's zipfile wrote those local headers differently before 3.11.4 (Debian 12's 3.11.2 writes version 20 and
    the real sizes, 3.11.7 version 45 and 0xFFFFFFFF placeholders), so the same arrays gave other file digests on a
    stock Debian 12. Here each member is written whole with a fixed date and mode and no zip64 (the fixture arrays
    are far below 4 GiB), which every zipfile version encodes alike."""
    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=False) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
