"""``markov`` label noise: the Markov boundary process of SpatialCorrection.

Reference: Yao et al., "Learning to Segment from Noisy Annotations: A Spatial Correction
Approach", ICLR 2023, Sec. 3 (the label-noise model) and the settings of its experiments (code:
michaelofsbu/SpatialCorrection, ``noise_generator.py``).

For t = 1..T (``steps``) one draw decides: with probability θ1 (``theta1``) the mask grows, each
background pixel with a 4-neighbour (6-neighbour in a volume) in the foreground -- Euclidean
distance exactly 1 from it -- turning foreground with probability θ2 (``theta2``); otherwise it
shrinks, each foreground pixel with a 4-neighbour in the background turning background with
probability θ2 (the outside of the image is not background: the original measures the distance
with a distance transform of the array). The boundary is found again at every step. Then every
pixel flips with probability θ3 (``theta3``), and the mask is blurred with a Gaussian and
thresholded at 0.5: in 2-D a 5x5 window, σ = 2, mirrored at the border (the original's
``cv2.GaussianBlur(noise, (5, 5), 2, 2)``), in 3-D ``scipy.ndimage.gaussian_filter`` with σ = 1
(±4σ, nearest border), as the original's volumes. The outline drifts outward when θ1 > 0.5,
inward when θ1 < 0.5, by more than T·|2θ1 - 1|·θ2 px, since a 4-neighbour outline holds more
pixels than a smooth one and more as it roughens: on a disk of radius 20 px, T = 180, θ2 = 0.05
and θ1 = 0.8 / 0.2 move the outline by about +10 / -11 px (5 seeds; 5.4 px by the simple count).

Their settings (T, θ1, θ2, θ3): JSRT lung and heart (180, 0.8 or 0.2, 0.05, 0.2), clavicle (100,
0.8 or 0.2, 0.02, 0.2); BraTS (80, 0.7 or 0.3, 0.05, 0); ISIC (200, 0.2 or 0.8, 0.05, 0.2). The
defaults here are the JSRT lung/heart setting with θ1 = 0.8 (the growing one, their script's
default).

Each step is vectorised (a binary dilation or erosion and one uniform draw per boundary pixel):
a 48x48 mask with T = 180 takes a few milliseconds.

Multi-class masks: each foreground class on its own, with its own draws, written back in class
order (:mod:`noisyseg_noise.classwise`); the original corrupts binary masks.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from noisyseg import NoiseModel
from noisyseg_noise.classwise import check_mask, inner_ring, outer_ring, per_class


class MarkovOptions(BaseModel):
    """T steps of growing (probability θ1) or shrinking the boundary, flips, blur."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(180, ge=0, le=10_000, description="T, the number of Markov steps")
    theta1: float = Field(0.8, ge=0, le=1, description="θ1, the probability that a step grows the "
                                                       "mask (else it shrinks)")
    theta2: float = Field(0.05, ge=0, le=1, description="θ2, the probability that a boundary pixel "
                                                        "flips in a step")
    theta3: float = Field(0.2, ge=0, le=1, description="θ3, the probability that any pixel flips "
                                                       "after the steps (before the blur)")
    sigma: float | None = Field(None, ge=0, le=16, description="σ of the final Gaussian blur (px); "
                                                               "None: 2 for images, 1 for volumes; 0: none")


def markov_boundary(fg: np.ndarray, rng: np.random.Generator, steps: int, theta1: float,
                    theta2: float, theta3: float, sigma: float | None = None) -> np.ndarray:
    """Run the Markov boundary process on a binary mask (see the module docstring).

    Shape:
        fg - (H, W) or (D, H, W) bool; returns the same shape, bool
    """
    grows = rng.random(steps) < theta1
    cur = fg.copy()
    flat = cur.reshape(-1)  # a view: flips land in ``cur``
    for grow in grows:
        edge = np.flatnonzero(outer_ring(cur) if grow else inner_ring(cur))
        if edge.size:
            flat[edge[rng.random(edge.size) < theta2]] = grow
    if theta3 > 0:
        cur ^= rng.random(cur.shape) < theta3
    sd = (2.0 if cur.ndim == 2 else 1.0) if sigma is None else sigma
    if sd == 0:
        return cur
    if cur.ndim == 2:
        blurred = ndimage.gaussian_filter(cur.astype(np.float32), sd, mode="mirror", radius=2)
    else:
        blurred = ndimage.gaussian_filter(cur.astype(np.float32), sd, mode="nearest")
    return blurred > 0.5


class MarkovNoise(NoiseModel):
    """SpatialCorrection's Markov boundary noise: T steps growing (θ1) or shrinking the outline
    pixel by pixel (θ2), random flips (θ3), a Gaussian blur."""

    name = "markov"
    Options = MarkovOptions
    spatial_dims = (2, 3)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Shape: mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype."""
        check_mask(mask, "markov noise")
        o = self.options
        return per_class(mask, num_classes, lambda fg: markov_boundary(
            fg, rng, o.steps, o.theta1, o.theta2, o.theta3, o.sigma))
