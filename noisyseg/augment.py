"""Training-time augmentation (the config's ``augment`` section), built on albumentations.

Each training image is transformed together with its masks: the labels it is trained on, its
clean mask and the noise region, so a noisy mask moves with its image and the noise-detection
scores stay honest. The random draws of image ``i`` at step ``s`` are seeded by (seed, s, i):
a run is reproducible, a resumed run draws what the uninterrupted one would have, and several
processes (``--nproc``) draw the same as one.

Where a geometric transform moved the pixels, :class:`Augmented` keeps for every pixel of the
augmented image the pixel of the original it came from (``source``), so what a corrector
observes can be put back where the training set keeps it. Flips and rotations by 90 degrees move
every pixel to exactly one place (:attr:`Augmenter.one_to_one`); affine and elastic transforms do
not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from noisyseg.config import AugmentConfig
from noisyseg.errors import ConfigError

#: transforms that move pixels, and those among them that move each pixel to exactly one place
GEOMETRIC = ("hflip", "vflip", "rotate90", "affine", "elastic")
ONE_TO_ONE = ("hflip", "vflip", "rotate90")
INTENSITY = ("brightness_contrast", "gamma", "noise")
_REFLECT_101 = 4  # cv2.BORDER_REFLECT_101: the border mirrors the image, so no pixel is made up


def enabled(cfg: AugmentConfig) -> list[str]:
    """The transforms the ``augment`` section turns on (probability > 0), geometric first."""
    return [name for name in (*GEOMETRIC, *INTENSITY) if getattr(cfg, name) > 0]


@dataclass
class Augmented:
    """A transformed batch.

    Shape:
        images - (B, C, H, W); masks - each (B, H, W) or None, as given;
        source - (B, H, W) int64 (the original pixel's flat index h * W + w), or None when no
        pixel moved
    """

    images: torch.Tensor
    masks: list[torch.Tensor | None]
    source: torch.Tensor | None


class Augmenter:
    """Applies the ``augment`` section of a config to training batches (on the CPU)."""

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        on = set(enabled(cfg))
        self.active = bool(on)
        self.moves_pixels = bool(on & set(GEOMETRIC))
        #: True when every pixel goes to exactly one place (no affine, no elastic)
        self.one_to_one = not (on & (set(GEOMETRIC) - set(ONE_TO_ONE)))
        self._scales = bool(on & set(INTENSITY))  # albumentations clips floats to [0, 1]
        self._compose = _build(cfg) if self.active else None

    def __call__(self, images: torch.Tensor, masks: list[torch.Tensor | None], step: int,
                 index: torch.Tensor) -> Augmented:
        """Transform every image of the batch with its masks.

        Shape:
            images - (B, C, H, W); masks - each (B, H, W) or None; index - (B,) positions in the
            training set
        """
        if self._compose is None:
            return Augmented(images, list(masks), None)
        b, _, h, w = images.shape
        # masks go through the transforms only when pixels move (intensity ones leave them be),
        # with each pixel's original index as one more mask: exact in float32 below 2^24 pixels
        present = [m for m in masks if m is not None] if self.moves_pixels else []
        coords = np.arange(h * w, dtype=np.float32).reshape(h, w)
        out_images = np.empty(tuple(images.shape), dtype=np.float32)
        out_masks = np.empty((len(present), b, h, w), dtype=np.float32)
        source = np.empty((b, h, w), dtype=np.int64)
        for k in range(b):
            image = images[k].numpy().transpose(1, 2, 0)
            lo, hi = (float(image.min()), float(image.max())) if self._scales else (0.0, 1.0)
            span = hi - lo if hi > lo else 1.0
            self._compose.set_random_seed(_sample_seed(self.seed, step, int(index[k])))
            tracked = {"masks": [coords, *(m[k].numpy().astype(np.float32) for m in present)]}
            done = self._compose(image=np.ascontiguousarray((image - lo) / span, dtype=np.float32),
                                 **(tracked if self.moves_pixels else {}))
            out_images[k] = done["image"].transpose(2, 0, 1) * span + lo
            if self.moves_pixels:
                source[k] = np.asarray(done["masks"][0])
                for j in range(len(present)):
                    out_masks[j, k] = np.asarray(done["masks"][j + 1])
        if not self.moves_pixels:
            return Augmented(torch.from_numpy(out_images), list(masks), None)
        moved = iter(out_masks)
        new_masks = [None if m is None else torch.from_numpy(next(moved).astype(m.numpy().dtype))
                     for m in masks]
        return Augmented(torch.from_numpy(out_images), new_masks, torch.from_numpy(source))


def to_original(values: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """Put per-pixel values of an augmented batch back where the original images have them;
    only for transforms that move each pixel to exactly one place (flips, 90-degree turns).

    Shape:
        values - (B, ..., H, W); source - (B, H, W) or None (nothing moved); returns values' shape
    """
    if source is None:
        return values
    b, h, w = source.shape
    flat = values.reshape(b, -1, h * w)
    out = torch.empty_like(flat)
    out.scatter_(2, source.reshape(b, 1, h * w).expand_as(flat).to(values.device), flat)
    return out.reshape(values.shape)


def _sample_seed(seed: int, step: int, image: int) -> int:
    return int(np.random.SeedSequence([seed, step, image, 0xA06]).generate_state(1)[0])


def _build(cfg: AugmentConfig) -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # nothing goes online at run time
    try:
        import albumentations as A
    except ImportError:
        raise ConfigError("the augment section needs albumentations: pip install albumentations") from None
    transforms = [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.RandomRotate90(p=cfg.rotate90),
        A.Affine(rotate=(-cfg.rotate_limit, cfg.rotate_limit),
                 scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
                 border_mode=_REFLECT_101, p=cfg.affine),
        A.ElasticTransform(alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma,
                           border_mode=_REFLECT_101, p=cfg.elastic),
        A.RandomBrightnessContrast(brightness_limit=cfg.brightness_limit,
                                   contrast_limit=cfg.contrast_limit, p=cfg.brightness_contrast),
        A.RandomGamma(gamma_limit=(100 * (1 - cfg.gamma_limit), 100 * (1 + cfg.gamma_limit)),
                      p=cfg.gamma),
        A.GaussNoise(std_range=(0.0, cfg.noise_std), p=cfg.noise),
    ]
    return A.Compose([t for t in transforms if t.p > 0], seed=0)
