"""``alphabeta`` label noise: the α/β protocol of the superpixel-guided noisy-label work, reused
by T-Loss.

References: Li, Gao and He, "Superpixel-guided Iterative Learning from Noisy Labels for Medical
Image Segmentation", MICCAI 2021, Sec. 3 (code: gaozhitong/SP_guided_Noisy_Label_Seg,
``data_process/noise_generation.py``); Gonzalez-Jimenez et al., "Robust T-Loss for Medical Image
Segmentation", MICCAI 2023, Sec. 4 (the same protocol, α in {0.3, 0.5, 0.7}, β in {0.5, 0.7}).

α is the share of training images corrupted (:meth:`AlphaBetaNoise.image_share`; the core takes
the first round(α·N) images of a seeded permutation, so the images of α = 0.3 are among those of
α = 0.5; the original takes int(α·N)), β the share of each corrupted object's foreground area
changed. Each corrupted image is, uniformly at random:

- dilated (:func:`grow_to`): one-pixel binary steps with the cross element until |FG| reaches
  the target |FG| + int(β·|FG|); of the last two masks the one closer to the target is kept
  (never the whole image);
- eroded: the mirror image, target |FG| - int(β·|FG|) (never an empty mask);
- moved (:func:`move`): rotated by an angle drawn from U(-max_angle, max_angle) about the centre
  (linear interpolation, thresholded at 0.5), then translated in one of the 8 directions (a unit
  step along one or both axes) by a length binary-searched in [0, max_shift] px (at most
  ``search_steps`` tries) so that (FP + FN) / |FG| against the clean mask is near β. The mask
  tried closest to β is kept. (The original keeps the last mask tried, turns with a truncating
  cast, which shrinks the mask, and lists one diagonal twice and the other not at all.)

Multi-class masks: each foreground class on its own, with its own draws, written back in class
order (:mod:`noisyseg_noise.classwise`); the original corrupts each class's binary mask the same
way (JSRT: lung, heart, clavicle).

Volumes: a (D, H, W) mask is dilated and eroded with the 6-neighbour cross; a move turns it in
its (H, W) plane and translates it in one of the 8 in-plane directions (each slice moves as the
image would; volumes are often anisotropic, as :mod:`noisyseg_noise.elastic` explains).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from noisyseg import NoiseModel
from noisyseg_noise.classwise import check_mask, cross, per_class, shift

#: the 8 translation directions (row, column): a unit step along one axis or along both
DIRECTIONS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1),
)
#: the corruptions, drawn uniformly per corrupted class
KINDS: tuple[str, ...] = ("dilate", "erode", "move")


class AlphaBetaOptions(BaseModel):
    """α (the image share, optional) and β (the area share changed per object)."""

    model_config = ConfigDict(extra="forbid")
    alpha: float | None = Field(None, ge=0, le=1, description="share of training images corrupted, "
                                                              "instead of noise.rate (None: noise.rate)")
    beta: float = Field(0.5, ge=0, le=1, description="share of each object's foreground area changed")
    max_angle: float = Field(30.0, ge=0, le=180, description="largest rotation of a move (deg); "
                                                             "their JSRT: 15 lung and heart, 2 clavicle")
    max_shift: int = Field(100, ge=0, le=4096, description="longest translation of a move (px "
                                                           "along each axis)")
    search_steps: int = Field(20, ge=1, le=64, description="most translation lengths a move tries")


def grow_to(fg: np.ndarray, beta: float, grow: bool) -> np.ndarray:
    """Dilate (``grow``) or erode ``fg`` one cross step at a time until its area reaches
    |FG| ± int(β·|FG|); the closer of the last two masks, never the whole image or an empty one.

    Shape:
        fg - (H, W) or (D, H, W) bool; returns the same shape, bool
    """
    n = int(fg.sum())
    target = n + int(beta * n) if grow else n - int(beta * n)
    element = cross(fg.ndim)
    prev, cur, size = fg, fg, n
    while (size < target) if grow else (size > target):
        nxt = (ndimage.binary_dilation(cur, structure=element) if grow
               else ndimage.binary_erosion(cur, structure=element))
        new = int(nxt.sum())
        if new in (0, fg.size) or new == size:  # empty, the whole image, or stuck: stop before
            return cur
        prev, cur, size = cur, nxt, new
    return prev if abs(int(prev.sum()) - target) < abs(size - target) else cur


def move(fg: np.ndarray, beta: float, rng: np.random.Generator, max_angle: float,
         max_shift: int, search_steps: int) -> np.ndarray:
    """Rotate ``fg`` in its (H, W) plane by U(-max_angle, max_angle) degrees and translate it in
    one of 8 directions by the length in [0, max_shift] (binary search, ``search_steps`` tries at
    most) whose (FP + FN) / |FG| is closest to β.

    Shape:
        fg - (H, W) or (D, H, W) bool; returns the same shape, bool
    """
    angle = rng.uniform(-max_angle, max_angle)
    dy, dx = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    n = int(fg.sum())
    if n == 0:
        return fg.copy()
    turned = ndimage.rotate(fg.astype(np.float32), angle, axes=(-1, -2), reshape=False, order=1,
                            mode="constant", cval=0.0) > 0.5
    best, best_gap = turned, np.inf
    lo, hi = 0, max_shift
    for _ in range(search_steps):
        if lo > hi:
            break
        mid = (lo + hi) // 2
        tried = shift(turned, (dy * mid, dx * mid))
        changed = int(np.count_nonzero(tried != fg)) / n
        if abs(changed - beta) < best_gap:
            best, best_gap = tried, abs(changed - beta)
        if changed > beta:
            hi = mid - 1
        elif changed < beta:
            lo = mid + 1
        else:
            break
    return best


class AlphaBetaNoise(NoiseModel):
    """The α/β protocol (SP-guided noisy labels, T-Loss): α of the images, each dilated, eroded
    or moved until β of its foreground area is wrong."""

    name = "alphabeta"
    Options = AlphaBetaOptions
    spatial_dims = (2, 3)

    def image_share(self, rate: float) -> float:
        """α when it is set, else ``noise.rate``."""
        return rate if self.options.alpha is None else float(self.options.alpha)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype."""
        check_mask(mask, "alphabeta noise")
        o = self.options

        def one(fg: np.ndarray) -> np.ndarray:
            kind = KINDS[int(rng.integers(len(KINDS)))]
            if kind == "move":
                return move(fg, o.beta, rng, o.max_angle, o.max_shift, o.search_steps)
            return grow_to(fg, o.beta, grow=kind == "dilate")

        return per_class(mask, num_classes, one)
