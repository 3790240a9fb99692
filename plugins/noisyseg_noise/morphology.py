"""Morphological label noise: ``dilation`` (the MCPM paper's main setting) and ``erosion``.

Reference: Wang et al., "Meta Corrupted Pixels Mining for Medical Image Segmentation",
MICCAI 2020, Sec. 4.1 "Synthesizing Noisy Annotations": the foreground is extended by a number
of pixels drawn from [0, 6].

Multi-class masks: each foreground class c = 1..K-1 is grown (or shrunk) in turn; a grown class
is written over its neighbours, a shrunk class gives its rim to the background.

Images and volumes: an (H, W) mask is grown or shrunk with a disk, a (D, H, W) volume with a ball
of the same radius in voxels (the grid's own units: an anisotropic voxel spacing is not taken into
account, so on a volume with thick slices the rim is thicker in mm along D).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from noisyseg import NoiseModel


def ball(radius: int, ndim: int = 2) -> np.ndarray:
    """Ball structuring element: the offsets o with |o|^2 <= radius^2 (radius 0 is one element).

    Shape:
        returns (2r+1,) * ndim bool: (2r+1, 2r+1) a disk, (2r+1, 2r+1, 2r+1) a ball
    """
    if radius < 0 or ndim < 1:
        raise ValueError(f"ball needs radius >= 0 and ndim >= 1, got radius={radius}, ndim={ndim}")
    axes = np.ogrid[(slice(-radius, radius + 1),) * ndim]
    return sum(a * a for a in axes) <= radius * radius


def disk(radius: int) -> np.ndarray:
    """Disk structuring element of the given radius: ``ball(radius, 2)``.

    Shape:
        returns (2r+1, 2r+1) bool
    """
    return ball(radius, 2)


class RadiusOptions(BaseModel):
    """A radius drawn uniformly from the integers min_radius..max_radius (inclusive)."""

    model_config = ConfigDict(extra="forbid")
    min_radius: int = Field(0, ge=0, le=64, description="smallest disk radius (px), drawn per "
                                                        "image; volumes: a ball, in voxels")
    max_radius: int = Field(6, ge=0, le=64, description="largest disk radius (px), drawn per "
                                                        "image; volumes: a ball, in voxels")

    @model_validator(mode="after")
    def _ordered(self) -> RadiusOptions:
        if self.min_radius > self.max_radius:
            raise ValueError(f"min_radius ({self.min_radius}) > max_radius ({self.max_radius})")
        return self


def _check_mask(mask: np.ndarray, who: str) -> None:
    if mask.ndim not in (2, 3):
        raise ValueError(f"{who} takes an (H, W) image mask or a (D, H, W) volume mask, got shape "
                         f"{mask.shape}; corrupt one mask at a time")


def dilate(mask: np.ndarray, radius: int, num_classes: int) -> np.ndarray:
    """Grow every foreground class by ``radius`` pixels (voxels): a disk for an image, a ball
    for a volume.

    Shape:
        mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype
    """
    _check_mask(mask, "dilate")
    if radius == 0:
        return mask.copy()
    out, element = mask.copy(), ball(radius, mask.ndim)
    for c in range(1, num_classes):
        region = mask == c
        if region.any():
            out[ndimage.binary_dilation(region, structure=element)] = c
    return out


def erode(mask: np.ndarray, radius: int, num_classes: int) -> np.ndarray:
    """Shrink every foreground class by ``radius`` pixels (voxels), a disk for an image, a ball
    for a volume; the lost rim becomes background.

    Shape:
        mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype
    """
    _check_mask(mask, "erode")
    if radius == 0:
        return mask.copy()
    out, element = mask.copy(), ball(radius, mask.ndim)
    for c in range(1, num_classes):
        region = mask == c
        if region.any():
            out[region & ~ndimage.binary_erosion(region, structure=element)] = 0
    return out


class DilationNoise(NoiseModel):
    """Dilate the foreground by a radius drawn uniformly from [min_radius, max_radius] (a disk;
    a ball for volumes)."""

    name = "dilation"
    Options = RadiusOptions
    spatial_dims = (2, 3)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype."""
        r = int(rng.integers(self.options.min_radius, self.options.max_radius + 1))
        return dilate(mask, r, num_classes)


class ErosionNoise(NoiseModel):
    """Erode the foreground by a radius drawn uniformly from [min_radius, max_radius] (a disk;
    a ball for volumes)."""

    name = "erosion"
    Options = RadiusOptions
    spatial_dims = (2, 3)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype."""
        r = int(rng.integers(self.options.min_radius, self.options.max_radius + 1))
        return erode(mask, r, num_classes)


class NoNoise(NoiseModel):
    """No corruption: the clean masks are used (the oracle, whatever the rate)."""

    name = "none"
    spatial_dims = (2, 3)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype."""
        return mask.copy()
