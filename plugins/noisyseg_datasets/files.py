"""File helpers of the ``folder`` dataset (:mod:`noisyseg_datasets.folder`) and its volumes
(:mod:`noisyseg_datasets.volumes`): which files are images, a file's name without its extension,
a file read as an array, and an array checked and turned into an image or a mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from noisyseg import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")


def stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_array(path: Path) -> np.ndarray:
    """A file as an array: (H, W), (H, W, C) for pictures, (H, W, D) for NIfTI volumes."""
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return np.asarray(nib.load(path).dataobj)
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img)
    except Exception as exc:  # a corrupt or unreadable file
        raise DataError(f"cannot read {path}: {exc}") from None


def to_image(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W) float32; integer types scaled to [0, 1]."""
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]  # drop alpha
    scaled = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        scaled /= max(np.iinfo(array.dtype).max, 1)
    elif array.dtype == bool:
        pass
    return scaled[None] if scaled.ndim == 2 else np.moveaxis(scaled, -1, 0)


def check_finite(array: np.ndarray, name: str) -> None:
    """A NaN or infinite pixel is an error naming the file, the first such pixel and the count."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"image {name} holds {int(bad.sum())} non-finite pixel value(s), the first "
                        f"{array[index]} at index {index}; replace them (e.g. np.nan_to_num) or "
                        "remove the image")


def to_mask(array: np.ndarray, name: str) -> np.ndarray:
    """The mask's values as int64; non-integer values are an error."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"mask {name} holds non-integer values; masks must hold class labels")
    return array.astype(np.int64)
