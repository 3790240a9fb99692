"""``elastic`` label noise: a random elastic deformation with rotation, zoom and translation,
then an optional dilation — the MCPM paper's "ElasticDeform" setting.

Reference: Wang et al., MICCAI 2020, Sec. 4.1; the deformation is elasticdeform's
``deform_grid`` (van Tulder), driven by a displacement grid drawn from the given generator so the
result is deterministic by seed (``deform_random_grid`` would use NumPy's global state).
"""

from __future__ import annotations

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
    rotation: float = Field(15.0, ge=0, le=180, description="max rotation (deg), about the centre")
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


class ElasticNoise(NoiseModel):
    """Elastic deformation + rotation + zoom + translation (+ dilation) of the mask."""

    name = "elastic"
    Options = ElasticOptions

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) integer labels; returns (H, W), same dtype."""
        o = self.options
        sigma = rng.uniform(*o.sigma)
        displacement = rng.normal(0.0, sigma, size=(2, o.points, o.points))
        angle = rng.uniform(-o.rotation, o.rotation)
        zoom = rng.uniform(*o.zoom)
        shift = rng.integers(-o.translation, o.translation + 1, size=2)
        radius = int(rng.integers(o.dilation[0], o.dilation[1] + 1))

        import elasticdeform  # imported here: the other noise models work without it

        channels = [(mask == c).astype(np.float64) for c in range(1, num_classes)]
        warped = elasticdeform.deform_grid(
            channels, displacement, order=1, mode="constant", cval=0.0,
            prefilter=False, rotate=angle, zoom=zoom,
        )
        fg = np.stack(warped)  # (K-1, H, W)
        labels = np.where(fg.max(axis=0) > 0.5, fg.argmax(axis=0) + 1, 0)
        labels = ndimage.shift(labels, shift, order=0, mode="constant", cval=0)
        return dilate(labels.astype(mask.dtype), radius, num_classes)
