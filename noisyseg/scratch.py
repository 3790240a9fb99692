"""Arrays the size of the training set, for datasets that fit in memory and for those that
stream from disk.

A dataset streams when its arrays are files mapped into memory (``numpy.load(...,
mmap_mode="c")``, a :class:`numpy.memmap`): the operating system then keeps only the pages in
use, and several processes (``--nproc``) share them. The arrays the run makes from them (noisy
labels, the corrector's labels, the noise region) then go to files too, in a :class:`Scratch`
folder, and whole-set passes go a chunk of images at a time, so memory does not grow with the
set.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: images handled at once by the whole-set passes (checks, copies, label error)
CHUNK = 256


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    """Slices covering range(n) in pieces of ``size``."""
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def streams(array: np.ndarray | torch.Tensor) -> bool:
    """Whether an array lives in a file mapped into memory (a dataset that streams from disk)."""
    if isinstance(array, torch.Tensor):
        return False
    base: Any = array
    while base is not None:
        if isinstance(base, np.memmap):
            return True
        base = getattr(base, "base", None)
    return False


class Scratch:
    """Where arrays the size of the training set are kept: in memory, or, for a dataset that
    streams from disk, in files of a temporary folder (under ``$TMPDIR``, deleted when the run
    ends) mapped into memory, so the operating system keeps only the pages in use."""

    def __init__(self, on_disk: bool = False) -> None:
        self.dir: Path | None = None
        if on_disk:
            self.dir = Path(tempfile.mkdtemp(prefix="noisyseg-scratch-"))
            weakref.finalize(self, shutil.rmtree, self.dir, True)
        self._count = 0

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if self.dir is None:
            return np.empty(shape, dtype=dtype)
        self._count += 1
        return np.lib.format.open_memmap(self.dir / f"{self._count}.npy", mode="w+", dtype=dtype,
                                         shape=shape)

    def copy(self, array: np.ndarray | torch.Tensor) -> np.ndarray:
        """A copy of ``array`` here, made a chunk at a time."""
        source = array.numpy() if isinstance(array, torch.Tensor) else array
        out = self.empty(tuple(source.shape), source.dtype)
        for part in chunks(len(source)):
            out[part] = source[part]
        return out

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype, fill: float = 0) -> torch.Tensor:
        """A tensor filled with ``fill``, here (e.g. a corrector's per-pixel state)."""
        out = torch.from_numpy(self.empty(shape, torch.empty(0, dtype=dtype).numpy().dtype))
        for part in chunks(len(out)):
            out[part] = fill
        return out

    def clone(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of a CPU tensor, here."""
        return torch.from_numpy(self.copy(tensor))

    def concatenate(self, arrays: list[np.ndarray]) -> np.ndarray:
        out = self.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), arrays[0].dtype)
        start = 0
        for a in arrays:
            for part in chunks(len(a)):
                out[start + part.start : start + part.stop] = a[part]
            start += len(a)
        return out


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (a mapped file stays a mapped file; open it with
    ``mmap_mode="c"`` or ``"r+"``: a read-only array is copied into memory)."""
    return torch.from_numpy(array if array.flags.writeable else np.array(array))
