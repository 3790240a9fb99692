"""The run's ``deterministic`` setting: what makes a CUDA run repeatable bit for bit.

On the CPU noisyseg's runs are repeatable as they are, and the setting changes nothing there. On
CUDA, with the setting on (the default, because ``--resume`` promises a run that ends exactly as
an uninterrupted one would):

- ``torch.use_deterministic_algorithms(True, warn_only=True)``: ops with a deterministic CUDA
  kernel use it; an op without one runs anyway and torch warns once, naming it (the run is then
  not bit-repeatable). The built-in U-Net's bilinear (and, for volumes, trilinear) upsampling and
  its 3-D max pooling, whose CUDA backwards have no deterministic kernel, switch to exact forms
  (matrix products; the maximum over each window) (``noisyseg_backbones.unet``);
- cuBLAS gets a fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, unless set already; it must
  be set before this process's first matrix product on CUDA, which a run does itself);
- cuDNN picks deterministic algorithms and does not benchmark.

Off, cuDNN benchmarks its algorithms and picks the fastest (``cudnn.benchmark``), so two runs may
differ in the last digits. Every torch setting is put back when the run ends;
``CUBLAS_WORKSPACE_CONFIG`` stays set for the rest of the process (cuBLAS reads it once).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

#: the cuBLAS workspace that makes its matrix products deterministic (NVIDIA's documented value)
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def determinism(on: bool, device: torch.device) -> Iterator[None]:
    """Within the block, CUDA work is deterministic (``on``) or as fast as cuDNN can make it."""
    if device.type != "cuda":
        yield
        return
    from torch.backends import cudnn
    from torch.utils import deterministic

    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             deterministic.fill_uninitialized_memory, cudnn.deterministic, cudnn.benchmark)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on, warn_only=True)
    deterministic.fill_uninitialized_memory = False  # noisyseg reads no uninitialised memory
    cudnn.deterministic, cudnn.benchmark = on, not on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        deterministic.fill_uninitialized_memory = saved[2]
        cudnn.deterministic, cudnn.benchmark = saved[3], saved[4]
