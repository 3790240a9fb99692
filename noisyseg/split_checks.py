"""What a dataset's splits must be for the engine to train on them, checked once when a run
loads them (:func:`check_splits`): shapes, label range, finite pixels; warnings about constant
images and empty masks.
"""

from __future__ import annotations

import warnings

import numpy as np

from noisyseg.errors import DataError, DataWarning
from noisyseg.scratch import chunks
from noisyseg.splits import Split, Splits


def check_splits(splits: Splits, source: str) -> None:
    """Fail clearly when a dataset returns splits the engine cannot train on (wrong shapes, labels
    out of range, NaN or infinite pixels); warn (:class:`DataWarning`, one line per split) about
    constant images and masks without foreground. A chunk of images at a time."""
    for name in ("train", "test"):
        if len(getattr(splits, name)) == 0:
            raise DataError(f"dataset '{source}' has an empty {name} split")
    shape = splits.train.images.shape[1:]
    dims = splits.train.images.ndim - 2
    if splits.spacing is not None and (len(splits.spacing) != dims
                                       or not all(s > 0 for s in splits.spacing)):
        raise DataError(f"dataset '{source}': spacing {splits.spacing} must hold {dims} positive "
                        "sizes (mm), one per spatial axis")
    for name in ("train", "meta", "test"):
        split: Split = getattr(splits, name)
        if len(split) == 0:
            continue
        if split.images.ndim not in (4, 5) or split.masks.ndim != split.images.ndim - 1:
            raise DataError(
                f"dataset '{source}' {name} split: images must be (N, C, H, W) and masks "
                f"(N, H, W), or volumes (N, C, D, H, W) and (N, D, H, W), got "
                f"{split.images.shape} and {split.masks.shape}"
            )
        if split.images.shape[2:] != split.masks.shape[1:]:
            raise DataError(f"dataset '{source}' {name} split: images {split.images.shape[1:]} "
                            f"and masks {split.masks.shape[1:]} differ in size")
        # the test split may hold larger volumes (predicted by a sliding window): same channels
        same = (split.images.shape[1:] == shape if name != "test" else
                split.images.ndim - 2 == dims and split.images.shape[1] == shape[0]
                and all(a >= b for a, b in zip(split.images.shape[2:], shape[1:], strict=True)))
        if not same:
            raise DataError(
                f"dataset '{source}' {name} split: every image must be {tuple(shape)}"
                + (" (test images may be larger, with as many channels and axes)"
                   if name == "test" else "") + f", got {split.images.shape[1:]}"
            )
        if not np.issubdtype(split.masks.dtype, np.integer):
            raise DataError(f"dataset '{source}' {name} split: masks must hold integer labels, "
                            f"got {split.masks.dtype}")
        low = min(int(split.masks[p].min()) for p in chunks(len(split)))
        high = max(int(split.masks[p].max()) for p in chunks(len(split)))
        if low < 0 or high >= splits.num_classes:
            raise DataError(
                f"dataset '{source}' {name} split holds labels outside [0, {splits.num_classes})"
            )
        _check_pixels(split, f"dataset '{source}' {name} split")


def _numbers(indices: np.ndarray) -> str:
    shown = ", ".join(f"#{i}" for i in indices[:5].tolist())
    return f"{shown}, ..." if len(indices) > 5 else shown


def _check_pixels(split: Split, where: str) -> None:
    """NaN or infinite pixels are an error; constant images and empty masks a warning.

    Shape:
        split.images - (N, C, H, W); split.masks - (N, H, W)
    """
    constant, empty = [], []
    for part in chunks(len(split)):
        images = np.asarray(split.images[part]).reshape(part.stop - part.start, -1)
        finite = np.isfinite(images)
        if not finite.all():
            i, j = np.argwhere(~finite)[0]
            pixel = tuple(int(k) for k in np.unravel_index(j, split.images.shape[1:]))
            axes = "(channel, row, column)" if len(pixel) == 3 else "(channel, slice, row, column)"
            raise DataError(f"{where}: image #{part.start + i} holds a non-finite pixel value "
                            f"({images[i, j]} at {axes} {pixel}); fix or remove that image")
        constant.append(part.start + np.flatnonzero(images.min(axis=1) == images.max(axis=1)))
        masks = np.asarray(split.masks[part]).reshape(part.stop - part.start, -1)
        empty.append(part.start + np.flatnonzero(masks.max(axis=1) == 0))
    found = [f"{len(ix)} {what}{'s' * (len(ix) > 1)} ({_numbers(ix)})"
             for ix, what in ((np.concatenate(constant), "constant image"),
                              (np.concatenate(empty), "empty mask")) if len(ix)]
    if found:
        warnings.warn(f"{where}: {', '.join(found)}", DataWarning, stacklevel=3)
