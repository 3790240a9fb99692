"""``synthetic``: CT-like lesion patches generated on the fly, deterministic by seed.

Each patch has a textured background (smoothed noise plus a slow gradient), one to three
irregular blobs (star-shaped outlines r(t) = r0 (1 + sum_k a_k cos(k t + phi_k))), a blur that
softens the lesion edges, and additive Gaussian noise. The masks are the blobs before blurring.
Small lesions are the default on purpose: a 0-6 px dilation then changes them a lot, as it does
to the LIDC-IDRI nodules of the MCPM paper. ``dims = 3`` makes volumes the same way, with
star-shaped 3-D lesions.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator
from scipy import ndimage

from noisyseg import Dataset, Split, Splits
from noisyseg_datasets.volumes import VolumeDefaults


class SyntheticOptions(VolumeDefaults):
    model_config = ConfigDict(extra="forbid")
    #: the defaults that differ for volumes (dims = 3), where the option is not given
    VOLUME_DEFAULTS: ClassVar[dict[str, Any]] = {"size": 32, "min_radius": 3.0, "max_radius": 7.0}
    dims: Literal[2, 3] = Field(2, description="2: square patches; 3: cubic volumes with 3-D "
                                               "lesions (defaults size 32, radii 3-7)")
    size: int = Field(64, ge=16, le=1024, description="patch side (px)")
    n_train: int = Field(1000, ge=1, description="training patches")
    n_meta: int = Field(100, ge=0, description="clean meta patches")
    n_test: int = Field(400, ge=1, description="test patches")
    min_radius: float = Field(3.0, gt=0, description="smallest mean lesion radius (px)")
    max_radius: float = Field(9.0, gt=0, description="largest mean lesion radius (px)")
    max_blobs: int = Field(3, ge=1, le=10, description="lesions per patch: 1 to this many")
    contrast: tuple[float, float] = Field((0.15, 0.35), description="lesion brightness range")
    blur: tuple[float, float] = Field((0.6, 1.4), description="edge blur sigma range (px)")
    noise_std: float = Field(0.06, ge=0, description="standard deviation of the image noise")
    data_seed: int = Field(0, description="seed of the images themselves (the run seed does not change them)")

    @model_validator(mode="after")
    def _check(self) -> SyntheticOptions:
        if self.min_radius > self.max_radius:
            raise ValueError(f"min_radius ({self.min_radius}) > max_radius ({self.max_radius})")
        if self.max_radius * 2 >= self.size:
            raise ValueError(f"max_radius ({self.max_radius}) too large for size {self.size}")
        return self


def blob(size: int, rng: np.random.Generator, min_r: float, max_r: float) -> np.ndarray:
    """One irregular star-shaped blob mask (size, size) at a random position."""
    r0 = rng.uniform(min_r, max_r)
    margin = r0 * 1.6 + 1
    cy, cx = rng.uniform(margin, size - margin, size=2)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(theta, r0)
    for k in (2, 3, 4, 5):
        radius += r0 * rng.uniform(0, 0.25 / (k - 1) ** 0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) <= radius


def make_patch(rng: np.random.Generator, o: SyntheticOptions) -> tuple[np.ndarray, np.ndarray]:
    """One (image (1, S, S) float32 in about [0, 1], mask (S, S) int64) pair."""
    s = o.size
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (s, s)), rng.uniform(1.5, 3.5))
    texture /= texture.std() + 1e-8
    yy, xx = np.mgrid[:s, :s] / s
    gradient = rng.uniform(-0.1, 0.1) * yy + rng.uniform(-0.1, 0.1) * xx
    image = 0.4 + 0.05 * texture + gradient
    mask = np.zeros((s, s), dtype=bool)
    for _ in range(int(rng.integers(1, o.max_blobs + 1))):
        b = blob(s, rng, o.min_radius, o.max_radius)
        mask |= b
        lesion_texture = 1 + 0.15 * ndimage.gaussian_filter(rng.normal(0, 1, (s, s)), 1.0)
        image = image + rng.uniform(*o.contrast) * b * lesion_texture
    image = ndimage.gaussian_filter(image, rng.uniform(*o.blur))
    image = image + rng.normal(0, o.noise_std, (s, s))
    return image[None].astype(np.float32), mask.astype(np.int64)


def blob3d(size: int, rng: np.random.Generator, min_r: float, max_r: float) -> np.ndarray:
    """One irregular star-shaped 3-D lesion (size, size, size): a sphere whose radius varies with
    the direction, r(theta, phi) = r0 (1 + sum_k a_k cos(k theta + phi_k) + b_k cos(k phi + psi_k))."""
    r0 = rng.uniform(min_r, max_r)
    margin = r0 * 1.6 + 1
    centre = rng.uniform(margin, size - margin, size=3)
    zz, yy, xx = (g - c for g, c in zip(np.mgrid[:size, :size, :size].astype(np.float64), centre,
                                        strict=True))
    distance = np.sqrt(zz * zz + yy * yy + xx * xx)
    theta = np.arctan2(yy, xx)
    phi = np.arccos(np.clip(zz / np.maximum(distance, 1e-9), -1, 1))
    radius = np.full_like(theta, r0)
    for k in (2, 3, 4):
        radius += r0 * rng.uniform(0, 0.2 / (k - 1) ** 0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        radius += r0 * rng.uniform(0, 0.2 / (k - 1) ** 0.5) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return distance <= radius


def make_volume(rng: np.random.Generator, o: SyntheticOptions) -> tuple[np.ndarray, np.ndarray]:
    """One (image (1, S, S, S) float32, mask (S, S, S) int64) pair: the 2-D recipe in 3-D."""
    s, shape = o.size, (o.size,) * 3
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), rng.uniform(1.5, 3.5))
    texture /= texture.std() + 1e-8
    zz, yy, xx = np.mgrid[:s, :s, :s] / s
    gradient = sum(rng.uniform(-0.1, 0.1) * g for g in (zz, yy, xx))
    image = 0.4 + 0.05 * texture + gradient
    mask = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, o.max_blobs + 1))):
        b = blob3d(s, rng, o.min_radius, o.max_radius)
        mask |= b
        lesion_texture = 1 + 0.15 * ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.0)
        image = image + rng.uniform(*o.contrast) * b * lesion_texture
    image = ndimage.gaussian_filter(image, rng.uniform(*o.blur))
    image = image + rng.normal(0, o.noise_std, shape)
    return image[None].astype(np.float32), mask.astype(np.int64)


def make_split(n: int, rng: np.random.Generator, o: SyntheticOptions) -> Split:
    pairs = [(make_volume if o.dims == 3 else make_patch)(rng, o) for _ in range(n)]
    if not pairs:
        shape = (o.size,) * o.dims
        return Split(np.zeros((0, 1, *shape), np.float32), np.zeros((0, *shape), np.int64))
    images, masks = zip(*pairs, strict=True)
    return Split(np.stack(images), np.stack(masks))


class SyntheticDataset(Dataset):
    """CT-like 64x64 lesion patches or 32^3 volumes (1-3 irregular lesions, texture, blur, noise)."""

    name = "synthetic"
    Options = SyntheticOptions
    generated = True  # cached on disk by its options (noisyseg.datacache)
    seeded = False  # the images come from data_seed, not from the run's seed

    def load(self, seed: int) -> Splits:
        o = self.options
        # one independent stream per split, so changing n_train leaves meta and test unchanged
        train, meta, test = (np.random.default_rng([o.data_seed, k]) for k in range(3))
        return Splits(
            train=make_split(o.n_train, train, o),
            meta=make_split(o.n_meta, meta, o),
            test=make_split(o.n_test, test, o),
            num_classes=2,
            class_names=["background", "lesion"],
            spacing=(1.0, 1.0, 1.0) if o.dims == 3 else None,  # voxels of 1 mm, as in a CT
        )
