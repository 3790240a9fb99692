"""Morphological label noise: ``dilation`` (the MCPM paper's main setting) and ``erosion``.

Reference: Wang et al., "Meta Corrupted Pixels Mining for Medical Image Segmentation",
MICCAI 2020, Sec. 4.1 "Synthesizing Noisy Annotations": the foreground is extended by a number
of pixels drawn from [0, 6].

Multi-class masks: each foreground class c = 1..K-1 is grown (or shrunk) in turn; a grown class
is written over its neighbours, a shrunk class gives its rim to the background.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage

from noisyseg import NoiseModel


def disk(radius: int) -> np.ndarray:
    """Disk structuring element of the given radius ((2r+1) x (2r+1) bool; radius 0 is 1x1)."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


class RadiusOptions(BaseModel):
    """A radius drawn uniformly from the integers min_radius..max_radius (inclusive)."""

    model_config = ConfigDict(extra="forbid")
    min_radius: int = Field(0, ge=0, le=64, description="smallest disk radius (px), drawn per image")
    max_radius: int = Field(6, ge=0, le=64, description="largest disk radius (px), drawn per image")

    @model_validator(mode="after")
    def _ordered(self) -> RadiusOptions:
        if self.min_radius > self.max_radius:
            raise ValueError(f"min_radius ({self.min_radius}) > max_radius ({self.max_radius})")
        return self


def dilate(mask: np.ndarray, radius: int, num_classes: int) -> np.ndarray:
    """Grow every foreground class by ``radius`` pixels (disk element).

    Shape:
        mask - (H, W) integer labels; returns (H, W), same dtype
    """
    if radius == 0:
        return mask.copy()
    out, element = mask.copy(), disk(radius)
    for c in range(1, num_classes):
        region = mask == c
        if region.any():
            out[ndimage.binary_dilation(region, structure=element)] = c
    return out


def erode(mask: np.ndarray, radius: int, num_classes: int) -> np.ndarray:
    """Shrink every foreground class by ``radius`` pixels; the lost rim becomes background.

    Shape:
        mask - (H, W) integer labels; returns (H, W), same dtype
    """
    if radius == 0:
        return mask.copy()
    out, element = mask.copy(), disk(radius)
    for c in range(1, num_classes):
        region = mask == c
        if region.any():
            out[region & ~ndimage.binary_erosion(region, structure=element)] = 0
    return out


class DilationNoise(NoiseModel):
    """Dilate the foreground by a radius drawn uniformly from [min_radius, max_radius] (disk)."""

    name = "dilation"
    Options = RadiusOptions

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        r = int(rng.integers(self.options.min_radius, self.options.max_radius + 1))
        return dilate(mask, r, num_classes)


class ErosionNoise(NoiseModel):
    """Erode the foreground by a radius drawn uniformly from [min_radius, max_radius] (disk)."""

    name = "erosion"
    Options = RadiusOptions

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        r = int(rng.integers(self.options.min_radius, self.options.max_radius + 1))
        return erode(mask, r, num_classes)


class NoNoise(NoiseModel):
    """No corruption: the clean masks are used (the oracle, whatever the rate)."""

    name = "none"

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        return mask.copy()
