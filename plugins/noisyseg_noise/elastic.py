"""``elastic`` label noise: a random elastic deformation with rotation, zoom and translation,
then an optional dilation — the MCPM paper's "ElasticDeform" setting.

Reference: Wang et al., MICCAI 2020, Sec. 4.1; the deformation is elasticdeform's
``deform_grid`` (van Tulder), driven by a displacement grid drawn from the given generator so the
result is deterministic by seed (``deform_random_grid`` would use NumPy's global state).

Volumes: a (D, H, W) mask gets a (3, p, p, p) displacement grid, an isotropic zoom about the
centre, a rotation in the (H, W) plane only (about the first axis, D: each slice turns as an image
would; volumes are often anisotropic, with thick slices along D, so the angle is not spread over
axes of different resolution) and a shift along all three axes. elasticdeform's ``rotate`` and
``zoom`` are 2-D only, so for volumes they are given as its ``affine``. All sizes are in pixels
(voxels).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import ndimage

from noisyseg import NoiseModel
from noisyseg_noise.morphology import dilate


class ElasticOptions(BaseModel):
    """Ranges are [low, high], each setting drawn uniformly per corrupted image."""

    model_config = ConfigDict(extra="forbid")
    sigma: tuple[float, float] = Field((2.0, 5.0), description="std (px) of the grid displacements")
    points: int = Field(5, ge=2, le=32, description="control points per axis")
    rotation: float = Field(15.0, ge=0, le=180, description="max rotation (deg), about the centre "
                                                            "(volumes: in the (H, W) plane)")
    zoom: tuple[float, float] = Field((0.9, 1.4), description="scale factor range")
    translation: int = Field(3, ge=0, le=64, description="max shift (px) along each axis")
    dilation: tuple[int, int] = Field((0, 2), description="dilation radius range after warping")

    @field_validator("sigma", "zoom", "dilation")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if low < 0 or low > high:
            raise ValueError(f"expected 0 <= low <= high, got {list(value)}")
        return value


def rotation_zoom_affine(angle: float, zoom: float, shape: tuple[int, ...]) -> np.ndarray:
    """The output affine of a rotation by ``angle`` degrees in the (H, W) plane (about the first
    axis) and an isotropic ``zoom``, both about the volume's centre: elasticdeform's 2-D
    ``rotate`` and ``zoom``, applied to every slice, with the zoom along D too.

    Shape:
        shape - (D, H, W); returns (3, 4), as ``deform_grid(..., affine=)`` takes it
    """
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    linear = zoom * np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    centre = np.asarray(shape, dtype=np.float64) / 2 - 0.5  # as elasticdeform centres its rotate
    return np.concatenate([linear, (centre - linear @ centre)[:, None]], axis=1)


def deform(channels: list[np.ndarray], displacement: np.ndarray, angle: float,
           zoom: float) -> list[np.ndarray]:
    """Warp each channel by the displacement grid (linear interpolation, zero outside), rotated
    by ``angle`` degrees (in the (H, W) plane for a volume) and zoomed by ``zoom`` about the
    centre.

    Shape:
        channels - K of (H, W) or (D, H, W) float; displacement - (2, p, p) or (3, p, p, p);
        returns K arrays of the channels' shape
    """
    import elasticdeform  # imported here: the other noise models work without it

    common = {"order": 1, "mode": "constant", "cval": 0.0, "prefilter": False}
    if displacement.shape[0] == 2:
        return elasticdeform.deform_grid(channels, displacement, rotate=angle, zoom=zoom, **common)
    affine = rotation_zoom_affine(angle, zoom, channels[0].shape)
    return elasticdeform.deform_grid(channels, displacement, affine=affine, **common)


class ElasticNoise(NoiseModel):
    """Elastic deformation + rotation + zoom + translation (+ dilation) of the mask; a volume
    turns in its (H, W) plane only (see the module docstring)."""

    name = "elastic"
    Options = ElasticOptions
    spatial_dims = (2, 3)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype."""
        if mask.ndim not in (2, 3):
            raise ValueError(f"elastic noise takes an (H, W) image mask or a (D, H, W) volume "
                             f"mask, got shape {mask.shape}; corrupt one mask at a time")
        o, ndim = self.options, mask.ndim
        # drawn in this order whatever ndim: 2-D masks get the same numbers as before volumes
        sigma = rng.uniform(*o.sigma)
        displacement = rng.normal(0.0, sigma, size=(ndim, *(o.points,) * ndim))
        angle = rng.uniform(-o.rotation, o.rotation)
        zoom = rng.uniform(*o.zoom)
        shift = rng.integers(-o.translation, o.translation + 1, size=ndim)
        radius = int(rng.integers(o.dilation[0], o.dilation[1] + 1))

        channels = [(mask == c).astype(np.float64) for c in range(1, num_classes)]
        fg = np.stack(deform(channels, displacement, angle, zoom))  # (K-1, *mask.shape)
        labels = np.where(fg.max(axis=0) > 0.5, fg.argmax(axis=0) + 1, 0)
        labels = ndimage.shift(labels, shift, order=0, mode="constant", cval=0)
        return dilate(labels.astype(mask.dtype), radius, num_classes)
