"""The ``folder`` dataset's volumes (``dims = 3``): each NIfTI file (or 3-D .npy array) is one
volume. Train and meta volumes are cut into cubes of ``patch`` voxels every ``stride`` voxels
(the last cube flush with the volume's end, so every voxel is in some cube); test volumes stay
whole and are predicted by a sliding window of the cube (:mod:`noisyseg.window`).

Axes: a NIfTI volume is turned to the closest RAS orientation, then its array (x, y, z) becomes
(z, x, y) = (D, H, W), axial slices first, and its voxel size in mm (the header's zooms, assumed
in mm) the run's spacing: every volume must have the same voxel size
(resample them first), so that HD and HD95 come in mm. A .npy volume is (D, H, W) as stored,
with no spacing (distances in voxels) unless NIfTI files give one.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, model_validator

from noisyseg import DataError, Split
from noisyseg.window import starts
from noisyseg_datasets.files import check_finite, read_array, to_mask

if TYPE_CHECKING:
    from noisyseg_datasets.folder import FolderDataset

class VolumeDefaults(BaseModel):
    """Options of a dataset whose defaults differ for volumes: with ``dims = 3`` the options not
    given take their value from the class's ``VOLUME_DEFAULTS``."""

    VOLUME_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _volume_defaults(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("dims") == 3:
            return {**cls.VOLUME_DEFAULTS, **data}
        return data


#: voxel sizes that differ by less than this (mm) count as equal
SPACING_TOLERANCE = 1e-3


def read_volume(path: Path, is_mask: bool) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A file as a (D, H, W) volume (images may carry channels last: (x, y, z, C) for NIfTI,
    (D, H, W, C) for .npy, returned (C, D, H, W)) and its voxel size in mm, or None. A NIfTI
    volume is first turned to the closest RAS orientation (``nibabel.as_closest_canonical``)."""
    name = path.name.lower()
    spacing: tuple[float, ...] | None = None
    nifti = name.endswith((".nii", ".nii.gz"))
    if nifti:
        import nibabel as nib

        try:  # turned to the closest RAS orientation: files stored otherwise line up
            image = nib.as_closest_canonical(nib.load(path))
        except Exception as exc:  # a corrupt or unreadable file
            raise DataError(f"cannot read {path}: {exc}") from None
        array = np.asarray(image.dataobj)
        zooms = tuple(round(float(z), 6) for z in image.header.get_zooms()[:3])  # float32
        spacing = (zooms[2], zooms[0], zooms[1])
    else:
        array = read_array(path)
    if array.ndim == 4 and is_mask and array.shape[-1] == 1:
        array = array[..., 0]  # (x, y, z, 1)
    if array.ndim == 3:
        return (np.moveaxis(array, 2, 0) if nifti else array), spacing
    if array.ndim == 4 and not is_mask:
        volume = np.moveaxis(array, 2, 0) if nifti else array   # channels last in both
        return np.moveaxis(volume, -1, 0), spacing
    raise DataError(f"{path}: cannot use an array of shape {array.shape} as a 3-D "
                    f"{'mask' if is_mask else 'image'} (dims = 3 reads one volume per file)")


def read_volumes(dataset: FolderDataset, folder: Path, root: Path
                 ) -> list[tuple[np.ndarray, np.ndarray, str, tuple[float, ...] | None]]:
    """Every (image (C, D, H, W) float32, mask's raw values (D, H, W) int64, mask name, spacing)
    under ``folder``, checked."""
    out = []
    channels = None
    for image_path, mask_path in dataset.pairs(folder):
        image, spacing = read_volume(image_path, is_mask=False)
        mask, mask_spacing = read_volume(mask_path, is_mask=True)
        if spacing is not None and mask_spacing is not None and not np.allclose(
                spacing, mask_spacing, atol=SPACING_TOLERANCE):
            raise DataError(f"image {image_path.name} has voxels of {spacing} mm and its mask "
                            f"{mask_path.name} {mask_spacing} mm: they must match")
        check_finite(image, str(image_path.relative_to(root)))
        image = image[None] if image.ndim == 3 else image
        if image.shape[1:] != mask.shape:
            raise DataError(f"image {image_path.name} {image.shape[1:]} and mask {mask_path.name} "
                            f"{mask.shape} differ in size")
        if channels is None:
            channels = image.shape[0]
        elif image.shape[0] != channels:
            raise DataError(f"all volumes must have one channel count: {image_path.name} has "
                            f"{image.shape[0]}, others {channels}")
        scaled = image.astype(np.float32)
        if np.issubdtype(image.dtype, np.integer):
            scaled /= max(np.iinfo(image.dtype).max, 1)
        name = str(mask_path.relative_to(root))
        out.append((scaled, to_mask(mask, name), name, spacing))
    return out


def common_spacing(volumes: list[tuple[np.ndarray, np.ndarray, str, tuple[float, ...] | None]]
                   ) -> tuple[float, ...] | None:
    """The one voxel size of every volume that has one (an error when they differ)."""
    known = [(name, s) for _, _, name, s in volumes if s is not None]
    if not known:
        return None
    first_name, first = known[0]
    for name, s in known[1:]:
        if any(abs(a - b) > SPACING_TOLERANCE for a, b in zip(s, first, strict=True)):
            raise DataError(f"volumes must share one voxel size for distances in mm: {first_name} "
                            f"has {first} mm, {name} has {s} mm; resample them first")
    return first


def cubes(volumes: list[tuple[np.ndarray, np.ndarray, str, tuple[float, ...] | None]],
          patch: int, stride: int) -> Split:
    """Cubes of ``patch`` voxels every ``stride`` voxels of each volume (images (N, C, p, p, p),
    raw mask values (N, p, p, p))."""
    images, masks = [], []
    for image, mask, name, _ in volumes:
        if min(mask.shape) < patch:
            raise DataError(f"volume {name} {mask.shape} is smaller than the patch ({patch} "
                            "voxels) along some axis: lower dataset.options.patch")
        for corner in itertools.product(*(starts(s, patch, stride) for s in mask.shape)):
            cut = tuple(slice(c, c + patch) for c in corner)
            images.append(image[(slice(None), *cut)])
            masks.append(mask[cut])
    if not images:
        return Split(np.zeros((0, 1, patch, patch, patch), np.float32),
                     np.zeros((0, patch, patch, patch), np.int64))
    return Split(np.stack(images), np.stack(masks))


def whole(volumes: list[tuple[np.ndarray, np.ndarray, str, tuple[float, ...] | None]],
          patch: int) -> Split:
    """The test volumes as they are: they must share one size, at least the patch's."""
    shapes = {v[1].shape for v in volumes}
    if len(shapes) > 1:
        listed = ", ".join(f"{name} {mask.shape}" for _, mask, name, _ in volumes[:4])
        raise DataError(f"test volumes must share one size (they are predicted whole, by a sliding "
                        f"window): {listed}; crop or pad them to one size first")
    shape = next(iter(shapes))
    if min(shape) < patch:
        raise DataError(f"test volumes {shape} are smaller than the patch ({patch} voxels) along "
                        "some axis: lower dataset.options.patch")
    return Split(np.stack([v[0] for v in volumes]), np.stack([v[1] for v in volumes]))
