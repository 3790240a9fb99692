"""The bases of the kinds a run picks once for all its stages: the data (:class:`Dataset`, which
gives :class:`~noisyseg.splits.Splits` and may write masks back with a :class:`MaskWriter`), the
label noise added to it (:class:`NoiseModel`) and the network (:class:`Backbone`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import nn

from noisyseg.component import Component
from noisyseg.splits import Splits


class Backbone(Component):
    """Builds a segmentation network."""

    #: the spatial dimensions its networks handle: (2,) images only, (2, 3) images and volumes
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)

    def build(self, in_channels: int, out_channels: int, dims: int = 2) -> nn.Module:
        """Return a module mapping images (or, with ``dims = 3``, volumes) to logits. The engine
        passes ``dims`` only for volumes, and only to a backbone whose ``spatial_dims`` has 3.

        Shape:
            input - (N, in_channels, H, W) or (N, in_channels, D, H, W); output - (N,
            out_channels, H, W) or (N, out_channels, D, H, W)
        """
        raise NotImplementedError

    def build_for(self, in_channels: int, out_channels: int, spatial_dims: int) -> nn.Module:
        """:meth:`build` for data of ``spatial_dims`` (2 or 3), passing ``dims`` only for volumes,
        so a 2-D backbone's ``build`` need not take it (what the engine and the check kit call)."""
        volumes = {"dims": 3} if spatial_dims == 3 else {}
        return self.build(in_channels, out_channels, **volumes)


class NoiseModel(Component):
    """Corrupts one clean mask (the truth is kept beside the result).

    The core calls, once per run: :meth:`image_share` (how many training images to corrupt),
    :meth:`prepare` (when any is), then :meth:`corrupt_at` for each chosen image, which calls
    :meth:`corrupt` unless a model overrides it. Most models implement :meth:`corrupt` alone.
    """

    #: the mask dimensions it corrupts: (2,) images only, (2, 3) images and volumes
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Return a corrupted copy of ``mask``: same shape and dtype, labels in [0, num_classes).

        Shape:
            mask - (H, W) integer labels, or (D, H, W) for a volume; returns the same shape
        """
        raise NotImplementedError

    def image_share(self, rate: float) -> float:
        """The share of training images to corrupt, given the config's ``noise.rate``: ``rate``
        itself by default; a protocol that sets its own share (``alphabeta``'s alpha) returns
        that. The core corrupts the first round(share * N) images of a permutation drawn from
        the seed, so the images of a smaller share are among those of a larger one."""
        return rate

    def prepare(self, splits: Splits, seed: int) -> None:
        """Called once by the core before any mask is corrupted (and only when some will be),
        with the splits as the dataset gave them (before meta images are set aside for
        calibration) and the run's seed, for a model that needs the images or the whole data set
        (``pseudo`` trains a network on the meta split). Must not change ``splits``; may be
        called again with the same arguments (an audit does). Does nothing by default.

        Shape:
            splits - see :class:`Splits`: images (N, C, H, W) or (N, C, D, H, W), masks without C
        """

    def corrupt_at(self, mask: np.ndarray, index: int, rng: np.random.Generator,
                   num_classes: int) -> np.ndarray:
        """The corrupted copy of the mask of training image ``index`` (its position in the train
        split given to :meth:`prepare`): what the core calls. By default ``corrupt(mask, rng,
        num_classes)``; a model that labels images by what :meth:`prepare` saw overrides it.

        Shape:
            mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype
        """
        return self.corrupt(mask, rng, num_classes)


class Dataset(Component):
    """Loads train / meta / test splits, deterministically for a seed."""

    #: True: the splits are computed from the options (and the seed) alone, reading no files that
    #: may change; runs then cache them on disk (:mod:`noisyseg.datacache`)
    generated: ClassVar[bool] = False
    #: False: the run's seed does not change the splits (one cache entry for every seed)
    seeded: ClassVar[bool] = True

    def load(self, seed: int) -> Splits:
        raise NotImplementedError

    def mask_writer(self, folder: Path) -> MaskWriter | None:
        """A writer of train-split masks into ``folder`` in this dataset's own file format (the
        suggested masks of ``noisyseg audit``), for splits this instance has loaded; None (the
        default): PNG files named by each sample's name."""
        return None


class MaskWriter:
    """Writes masks of the train split as files, one sample at a time in the split's order
    (so a volume's slices arrive together), then :meth:`close`.

    Shape:
        mask - (H, W) integer class labels
    """

    def write(self, name: str, mask: np.ndarray) -> None:
        """Write (or keep, until its volume is whole) the mask of the sample called ``name``
        (:attr:`Split.names`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Write what is still held."""
