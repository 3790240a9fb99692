"""The ``folder`` dataset's masks written back as the user's own files: the suggested masks of
``noisyseg audit``.

A sample's name (:attr:`noisyseg.Split.names`) is its mask file relative to the dataset's root
(``masks/case01.png``), or ``file:z`` for slice z of a NIfTI volume that holds several. A mask is
written under the same file name into the folder the audit gives (never the user's), in the
same format, with the same kind of values: the mask values that the dataset read as each class
(0/255 masks stay 0/255; a palette PNG keeps its palette), the same integer type, and for NIfTI
the source's affine and header, one volume once all its slices have arrived. JPEG masks (lossy)
are written as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from noisyseg import DataError
from noisyseg.components import MaskWriter

NIFTI = (".nii", ".nii.gz")


def sample_names(files: list[str]) -> list[str]:
    """Each sample's name from its mask file's (one per sample, a volume's slices in order): the
    file, or ``file:z`` for slice z of a file that holds several samples."""
    counts: dict[str, int] = {}
    for f in files:
        counts[f] = counts.get(f, 0) + 1
    seen: dict[str, int] = {}
    names = []
    for f in files:
        if counts[f] == 1:
            names.append(f)
            continue
        z = seen.get(f, 0)
        seen[f] = z + 1
        names.append(f"{f}:{z}")
    return names


def split_name(name: str) -> tuple[str, int | None]:
    """(mask file, slice index or None) of a sample's name."""
    file, _, z = name.rpartition(":")
    if file.lower().endswith(NIFTI) and z.isdigit():
        return file, int(z)
    return name, None


def value_coding(classes: dict[int, int]) -> dict[int, int]:
    """Each class's mask value, from the dataset's value -> class map: the lowest value read as
    background (class 0), the highest read as any other class."""
    coding: dict[int, int] = {}
    for value, c in sorted(classes.items()):
        if c not in coding or c != 0:
            coding[c] = value
    return coding


class FolderMaskWriter(MaskWriter):
    """Masks of the ``folder`` dataset's training samples as files like the user's.

    Args:
        root: the dataset's root (the sample names are relative to it).
        out: the folder the files go to (created when missing).
        coding: each class's mask value (:func:`value_coding`).
    """

    def __init__(self, root: Path, out: Path, coding: dict[int, int]) -> None:
        self.root, self.out = root, out
        top = max(coding, default=1)
        self.values = np.array([coding.get(c, c) for c in range(top + 1)], dtype=np.int64)
        self.volumes: dict[str, dict[str, Any]] = {}  # a NIfTI file's slices until it is whole

    def _raw(self, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, dtype=np.int64)
        if mask.size and mask.max() >= len(self.values):
            raise DataError(f"mask label {int(mask.max())} has no mask value in this dataset")
        return self.values[mask]

    def write(self, name: str, mask: np.ndarray) -> None:
        file, z = split_name(name)
        source = self.root / file
        self.out.mkdir(parents=True, exist_ok=True)
        target = self.out / source.name
        raw = self._raw(mask)
        lower = source.name.lower()
        if lower.endswith(NIFTI):
            self._slice(file, source, target, raw, z or 0)
        elif lower.endswith(".npy"):
            dtype = np.load(source, mmap_mode="r").dtype
            np.save(target, raw.astype(dtype))
        else:
            self._picture(source, target, raw)

    def _picture(self, source: Path, target: Path, raw: np.ndarray) -> None:
        from PIL import Image

        with Image.open(source) as src:
            mode, palette, dtype = src.mode, src.getpalette() if src.mode == "P" else None, \
                np.asarray(src).dtype
        if target.suffix.lower() in (".jpg", ".jpeg"):
            target = target.with_suffix(".png")
        if mode == "1":
            image = Image.fromarray(raw.astype(bool))
        else:
            image = Image.fromarray(raw.astype(dtype))
            if palette is not None:
                image.putpalette(palette)  # an 'L' image with a palette becomes 'P'
        image.save(target)

    def _slice(self, file: str, source: Path, target: Path, raw: np.ndarray, z: int) -> None:
        import nibabel as nib

        held = self.volumes.get(file)
        if held is None:
            img = nib.load(source)
            shape = img.shape if len(img.shape) == 3 else (*img.shape[:2], 1)
            held = self.volumes[file] = {"img": img, "target": target, "left": shape[-1],
                                         "data": np.zeros(shape, dtype=img.get_data_dtype())}
        held["data"][..., z] = raw
        held["left"] -= 1
        if held["left"] <= 0:
            self._save(self.volumes.pop(file))

    @staticmethod
    def _save(held: dict[str, Any]) -> None:
        img = held["img"]
        data = held["data"] if len(img.shape) == 3 else held["data"].reshape(img.shape)
        out = type(img)(data, img.affine, img.header.copy())
        out.set_data_dtype(img.get_data_dtype())
        out.to_filename(held["target"])

    def close(self) -> None:
        for file in list(self.volumes):  # a volume some of whose slices never came: as it is
            self._save(self.volumes.pop(file))
