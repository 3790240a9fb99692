"""``jsrt`` label noise: the noisy-label protocol of PyMIC's JSRT example.

Reference: Wang et al., "PyMIC: A deep learning toolkit for annotation-efficient medical image
segmentation", Computer Methods and Programs in Biomedicine 2023; the noise is the label-noise
script of its JSRT noisy-label example (HiLab-git/PyMIC_examples, ``seg_nll/JSRT``), run with
radii 6-12 px on the JSRT chest X-rays.

Each corrupted mask gets one of, drawn per image and class:

- with probability ``p_dilate`` (0.35): a dilation by r iterations of the 4-neighbour cross (a
  diamond of radius r; ``scipy.ndimage.binary_dilation(label, iterations=r)`` in the original),
  r drawn uniformly from min_radius..max_radius;
- with probability ``p_erode`` (0.35): an erosion by r iterations of the cross (the outside of the
  image counts as background, as in the original);
- otherwise (0.30), an edge distortion: on ``edge_share`` (10%) of the background pixels touching
  the object (drawn without replacement), a disk of a radius drawn from min_radius..max_radius
  per disk is added; then the same on the outline of the result, with the disks removed. A disk
  of radius r is every pixel within Euclidean distance r of its centre (the original: distance
  < r, in a window that misses its last row and column: a few pixels fewer per disk, e.g. 109
  against our 113 at r = 6).

Radii are in pixels: ``min_radius`` and ``max_radius`` scale the protocol to smaller images (the
JSRT images of the example are 256 px across; 48 px patches of small lesions want about 1-2).

Multi-class masks: each foreground class on its own, with its own draws, written back in class
order (:mod:`noisyseg_noise.classwise`); the original binarises the label (all classes as one).

Volumes: the 6-neighbour cross and balls instead of disks.
"""

from __future__ import annotations

import numpy as np
from pydantic import ConfigDict, Field, model_validator
from scipy import ndimage

from noisyseg import NoiseModel
from noisyseg_noise.classwise import check_mask, cross, outer_ring, per_class
from noisyseg_noise.morphology import RadiusOptions


class JSRTOptions(RadiusOptions):
    """Dilation, erosion or edge distortion with radii drawn from min_radius..max_radius."""

    model_config = ConfigDict(extra="forbid")
    min_radius: int = Field(6, ge=0, le=64, description="smallest radius (px) of a dilation, "
                                                        "erosion or disk")
    max_radius: int = Field(12, ge=0, le=64, description="largest radius (px) of a dilation, "
                                                         "erosion or disk")
    p_dilate: float = Field(0.35, ge=0, le=1, description="probability of a dilation")
    p_erode: float = Field(0.35, ge=0, le=1, description="probability of an erosion (the rest: "
                                                         "edge distortion)")
    edge_share: float = Field(0.1, ge=0, le=1, description="share of the outline's pixels that "
                                                           "get a disk in an edge distortion")

    @model_validator(mode="after")
    def _check(self) -> JSRTOptions:  # the radii's order: RadiusOptions
        if self.p_dilate + self.p_erode > 1:
            raise ValueError(f"p_dilate + p_erode = {self.p_dilate + self.p_erode} > 1")
        return self


def disks_on_ring(fg: np.ndarray, rng: np.random.Generator, min_radius: int, max_radius: int,
                  share: float) -> np.ndarray:
    """The union of disks (balls) centred on int(share · n) of the n background pixels touching
    ``fg``, each of a radius drawn from min_radius..max_radius.

    Shape:
        fg - (H, W) or (D, H, W) bool; returns the same shape, bool
    """
    ring = np.flatnonzero(outer_ring(fg))
    k = int(len(ring) * share)
    out = np.zeros(fg.shape, dtype=bool)
    if k == 0:
        return out
    centres = rng.choice(ring, size=k, replace=False)
    radii = rng.integers(min_radius, max_radius + 1, size=k)
    for r in np.unique(radii):
        seeds = np.ones(fg.shape, dtype=bool)
        seeds.reshape(-1)[centres[radii == r]] = False
        out |= ndimage.distance_transform_edt(seeds) <= r
    return out


def edge_distort(fg: np.ndarray, rng: np.random.Generator, min_radius: int, max_radius: int,
                 share: float) -> np.ndarray:
    """Add disks on the outline, then remove disks on the new outline.

    Shape:
        fg - (H, W) or (D, H, W) bool; returns the same shape, bool
    """
    grown = fg | disks_on_ring(fg, rng, min_radius, max_radius, share)
    return grown & ~disks_on_ring(grown, rng, min_radius, max_radius, share)


class JSRTNoise(NoiseModel):
    """PyMIC's JSRT protocol: a dilation (0.35) or erosion (0.35) by 6-12 px, or disks of
    6-12 px added to and cut from the outline (0.30)."""

    name = "jsrt"
    Options = JSRTOptions
    spatial_dims = (2, 3)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype."""
        check_mask(mask, "jsrt noise")
        o = self.options

        def one(fg: np.ndarray) -> np.ndarray:
            u = rng.random()
            if u >= o.p_dilate + o.p_erode:
                return edge_distort(fg, rng, o.min_radius, o.max_radius, o.edge_share)
            r = int(rng.integers(o.min_radius, o.max_radius + 1))
            if r == 0:
                return fg
            if u < o.p_dilate:
                return ndimage.binary_dilation(fg, structure=cross(fg.ndim), iterations=r)
            return ndimage.binary_erosion(fg, structure=cross(fg.ndim), iterations=r)

        return per_class(mask, num_classes, one)
