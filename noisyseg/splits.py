"""What a dataset gives: the images and masks of each split, with what the run needs to know
about them (classes, pixel size). Plain NumPy arrays; this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    """Images and masks of one split: 2-D images, or volumes.

    Shape:
        images - (N, C, H, W) float32; masks - (N, H, W) int64 labels in [0, num_classes);
        volumes: images (N, C, D, H, W), masks (N, D, H, W); names - N strings or None;
        groups - (N,) integers or None
    """

    images: np.ndarray
    masks: np.ndarray
    #: each sample's name as a person finds it (a file: ``masks/case01.png``; a volume's slice:
    #: ``masks/brain.nii.gz:12``), or None (the audit then says ``train-00042``)
    names: list[str] | None = None
    #: samples with the same group (a file's slices, a block of neighbouring slices) are near
    #: copies: they go to the same fold of the audit; None: every sample is its own group
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Splits:
    """The three splits a dataset provides; ``meta`` holds the few clean images."""

    train: Split
    meta: Split
    test: Split
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    #: the size of a pixel (voxel) along each spatial axis, in mm, e.g. (2.0, 2.0, 2.0); None:
    #: unknown, distances are then in pixels
    spacing: tuple[float, ...] | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return int(self.train.masks.ndim - 1)
