"""Helpers shared by the literature's noise protocols (``alphabeta``, ``markov``, ``jsrt``), which
were all written for binary masks.

Multi-class masks: each foreground class c = 1..K-1 present in the mask is corrupted on its own,
as a binary mask, with its own random draws (in class order), and the results are written back
in class order: where two corrupted classes overlap the later class wins, and a pixel no
corrupted class claims becomes background. An absent class stays absent (nothing is drawn for it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


def check_mask(mask: np.ndarray, who: str) -> None:
    """Refuse masks that are neither one image nor one volume.

    Shape:
        mask - (H, W) or (D, H, W)
    """
    if mask.ndim not in (2, 3):
        raise ValueError(f"{who} takes an (H, W) image mask or a (D, H, W) volume mask, got shape "
                         f"{mask.shape}; corrupt one mask at a time")


def cross(ndim: int) -> np.ndarray:
    """The 4-neighbour (6-neighbour in a volume) structuring element.

    Shape:
        returns (3,) * ndim bool
    """
    return ndimage.generate_binary_structure(ndim, 1)


def per_class(mask: np.ndarray, num_classes: int,
              corrupt_fg: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Corrupt each foreground class present as a binary mask with ``corrupt_fg`` and write the
    results back in class order (see the module docstring).

    Shape:
        mask - (H, W) or (D, H, W) integer labels; ``corrupt_fg`` maps a bool mask of that shape
        to one of the same shape; returns the labels' shape and dtype
    """
    out = np.zeros_like(mask)
    for c in range(1, num_classes):
        fg = mask == c
        if fg.any():
            out[corrupt_fg(fg)] = c
    return out


def outer_ring(fg: np.ndarray) -> np.ndarray:
    """The background pixels with a 4-neighbour (6-neighbour) in ``fg``.

    Shape:
        fg - (H, W) or (D, H, W) bool; returns the same shape
    """
    return ndimage.binary_dilation(fg, structure=cross(fg.ndim)) & ~fg


def inner_ring(fg: np.ndarray) -> np.ndarray:
    """The pixels of ``fg`` with a 4-neighbour (6-neighbour) in the background; the outside of
    the image does not count as background.

    Shape:
        fg - (H, W) or (D, H, W) bool; returns the same shape
    """
    return fg & ~ndimage.binary_erosion(fg, structure=cross(fg.ndim), border_value=1)


def shift(mask: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
    """Move ``mask`` by whole pixels along its last axes (zeros come in, what leaves is lost).

    Shape:
        mask - (..., H, W); offset - one integer per moved axis, the last axes; returns the same
        shape
    """
    out = np.zeros_like(mask)
    src: list[slice] = [slice(None)] * mask.ndim
    dst: list[slice] = [slice(None)] * mask.ndim
    for k, d in enumerate(offset):
        axis = mask.ndim - len(offset) + k
        n = mask.shape[axis]
        if abs(d) >= n:
            return out
        src[axis] = slice(max(0, -d), n - max(0, d))
        dst[axis] = slice(max(0, d), n - max(0, -d))
    out[tuple(dst)] = mask[tuple(src)]
    return out
