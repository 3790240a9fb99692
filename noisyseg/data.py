"""Training data with known corruption: clean and noisy masks side by side.

The noise model is applied once, when the run starts, to exactly ``round(share * N)`` training
images chosen by the seed (share: :meth:`NoiseModel.image_share` of ``noise.rate``, the rate
itself unless the model sets its own); each chosen image gets its own generator seeded by (seed,
index), so the corruption of one image does not depend on the others. A model that needs the
images sees the splits first (:func:`prepare_noise`).

The checks of a dataset's splits are :mod:`noisyseg.split_checks`, the batches of an epoch
:mod:`noisyseg.batching` (both importable from here too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from noisyseg.batching import MIN_META, MIN_STEPS, Cycler, batches, size_warnings, steps_per_epoch
from noisyseg.components import NoiseModel, Split, Splits
from noisyseg.errors import DataError
from noisyseg.scratch import Scratch, as_tensor, chunks, streams
from noisyseg.split_checks import check_splits

__all__ = [  # the second row lives in noisyseg.batching and noisyseg.split_checks
    "NoisyTrainSet", "build_train_set", "choose_corrupted", "corrupt_image", "corrupt_split", "fold_of",
    "noise_region", "prepare_noise",
    "MIN_META", "MIN_STEPS", "Cycler", "batches", "check_splits", "size_warnings", "steps_per_epoch",
]


@dataclass
class NoisyTrainSet:
    """Training images with their noisy masks, clean masks and a flag per corrupted image.

    ``region`` marks where noise can be (see :func:`noise_region`); None when nothing is
    corrupted. ``scratch`` says where set-sized arrays go (files, for a dataset that streams).
    ``noise_rate``: the fraction of pixels whose noisy label is wrong, counted once here (the
    noisy labels never change; a corrector changes its own copy); in the same pass ``noise_fp``
    and ``noise_fn``, the fractions of pixels the noise made foreground (clean: background) and
    made background (clean: foreground).

    Shape:
        images - (N, C, H, W) float32; noisy, clean - (N, H, W) integer labels (int64, or uint8
        from a streaming dataset); corrupted - (N,) bool; region - (N, H, W) bool or None
    """

    images: torch.Tensor
    noisy: torch.Tensor
    clean: torch.Tensor
    corrupted: torch.Tensor
    region: torch.Tensor | None = None
    scratch: Scratch | None = None
    noise_rate: float = field(init=False)
    noise_fp: float = field(init=False)
    noise_fn: float = field(init=False)

    def __post_init__(self) -> None:
        if self.scratch is None:
            self.scratch = Scratch()
        self.noise_rate, self.noise_fp, self.noise_fn = self._label_changes()
        if self.region is None and self.noise_rate > 0:
            region = self.scratch.empty(tuple(self.clean.shape), bool)
            noise_region(self.clean.numpy(), self.noisy.numpy(), out=region)
            self.region = torch.from_numpy(region)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def label_error(self, labels: torch.Tensor | None = None) -> float:
        """Fraction of training pixels whose label (default: the noisy one) is not the clean one
        (counted a chunk of images at a time).

        Shape:
            labels - (N, H, W) or None
        """
        labels = self.noisy if labels is None else labels
        if not len(labels):
            return 0.0
        wrong = sum(int((labels[p] != self.clean[p]).sum()) for p in chunks(len(labels)))
        return wrong / labels.numel()

    def _label_changes(self) -> tuple[float, float, float]:
        """(changed, made foreground, made background): fractions of the training pixels whose
        noisy label differs from the clean one, is foreground where the clean one is background,
        is background where the clean one is foreground (one pass, a chunk of images at a time)."""
        if not len(self.noisy):
            return 0.0, 0.0, 0.0
        wrong = fp = fn = 0
        for p in chunks(len(self.noisy)):
            noisy, clean = self.noisy[p], self.clean[p]
            wrong += int((noisy != clean).sum())
            fp += int(((noisy > 0) & (clean == 0)).sum())
            fn += int(((noisy == 0) & (clean > 0)).sum())
        n = self.noisy.numel()
        return wrong / n, fp / n, fn / n


def noise_region(clean: np.ndarray, noisy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Where label noise can be: the union of the clean and noisy foreground, dilated by the
    noise's largest radius R (the farthest any changed pixel lies from the clean mask's boundary:
    its foreground pixels with a 4-neighbour of another label or outside the image; over the
    whole set, at least 1 px). Written into ``out`` when given (one image at a time).

    Noise-detection scores inside this region are not flattered by the easy background far
    from any object, which dominates scores over all pixels.

    Shape:
        clean, noisy - (N, H, W) or (N, D, H, W) integer labels; returns the same shape, bool
    """
    radius = 1.0
    cross = ndimage.generate_binary_structure(clean.ndim - 1, 1)  # 4- (6- in volumes) neighbours
    for c, n in zip(clean, noisy, strict=True):
        ch = n != c
        if ch.any():  # boundary: foreground pixels with a 4-neighbour of another label
            boundary = (c > 0) & (ndimage.maximum_filter(c, footprint=cross, mode="constant")
                                  != ndimage.minimum_filter(c, footprint=cross, mode="constant"))
            if boundary.any():  # (an image with no clean object: its changed pixels are the seed)
                radius = max(radius, float(ndimage.distance_transform_edt(~boundary)[ch].max()))
    region = np.zeros(clean.shape, dtype=bool) if out is None else out
    for i, (c, n) in enumerate(zip(clean, noisy, strict=True)):
        union = (c > 0) | (n > 0) | (n != c)
        region[i] = ndimage.distance_transform_edt(~union) <= radius if union.any() else False
    return region


def choose_corrupted(n: int, rate: float, seed: int) -> np.ndarray:
    """Boolean mask (n,) with exactly round(rate * n) True entries chosen by ``seed``."""
    k = int(round(rate * n))
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng([seed, 0x5EED]).permutation(n)[:k]] = True
    return chosen


def prepare_noise(noise: NoiseModel, splits: Splits, rate: float, seed: int) -> None:
    """``noise.prepare(splits, seed)`` when the noise model will corrupt any training image:
    what a run (and an audit) calls once, with the splits as the dataset gave them, before
    :func:`build_train_set` (or :func:`corrupt_image`)."""
    if choose_corrupted(len(splits.train), noise.image_share(rate), seed).any():
        noise.prepare(splits, seed)


def corrupt_split(
    split: Split, noise: NoiseModel, rate: float, seed: int, num_classes: int,
    scratch: Scratch | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy masks, corrupted flags) for a split; the clean masks are left untouched.
    The noisy masks keep the clean masks' integer type and go to ``scratch`` (default: memory)."""
    chosen = choose_corrupted(len(split), noise.image_share(rate), seed)
    noisy = (scratch or Scratch()).copy(split.masks)
    for i in np.flatnonzero(chosen):
        noisy[i] = corrupt_image(split.masks[i], int(i), noise, seed, num_classes)
    return noisy, chosen


def corrupt_image(mask: np.ndarray, index: int, noise: NoiseModel, seed: int,
                  num_classes: int) -> np.ndarray:
    """The noisy mask of the chosen training image ``index`` (its generator seeded by (seed,
    index)), checked: what :func:`corrupt_split` puts there, one image at a time.

    Shape:
        mask - (H, W) or (D, H, W) integer labels; returns the same shape
    """
    mask = np.array(mask)  # a copy: the noise model may change it
    out = noise.corrupt_at(mask, index, np.random.default_rng([seed, index]), num_classes)
    if out.shape != mask.shape:
        raise DataError(
            f"noise model '{noise.name}' changed the mask shape {mask.shape} -> {out.shape}"
        )
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise DataError(f"noise model '{noise.name}' produced labels outside [0, {num_classes})")
    return out


def fold_of(n: int, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Each of ``n`` training images' fold (n,) in 0..k-1: the groups (default: each image its
    own; see :attr:`Split.groups`) in an order drawn from ``seed``, dealt out in turn, so a
    group's images share a fold and every fold gets a group at least.

    Raises:
        DataError: fewer groups than folds.
    """
    unique, inverse = np.unique(np.arange(n) if groups is None else np.asarray(groups),
                                return_inverse=True)
    if len(unique) < k:
        what = "training images" if groups is None else "groups of training images (a file's slices)"
        raise DataError(f"{k} folds need at least {k} {what}, and there are {len(unique)}")
    fold = np.empty(len(unique), dtype=np.int64)
    fold[np.random.default_rng([seed, 0xF01D, k]).permutation(len(unique))] = np.arange(len(unique)) % k
    return fold[inverse.ravel()]


def build_train_set(
    splits: Splits, noise: NoiseModel, rate: float, seed: int, include_meta: bool,
    meta_only: bool = False, exclude_fold: tuple[int, int] | None = None,
) -> NoisyTrainSet:
    """Corrupt the train split; optionally append the clean meta images (never corrupted).
    ``meta_only``: the clean meta images alone. ``exclude_fold`` ([f, K]): leave fold f of K of
    the train split out (:func:`fold_of`; each kept image corrupted as in the whole split; masks
    as uint8 up to 256 classes, as a streaming dataset's). A dataset that streams from disk (its
    arrays are mapped files) keeps streaming: the set-sized arrays made here go to files too.
    A noise model that needs the images must have been prepared (:func:`prepare_noise`)."""
    scratch = Scratch(on_disk=streams(splits.train.images) or streams(splits.train.masks))
    if meta_only:
        if not len(splits.meta):
            raise DataError("train.meta_only asks to train on the meta split, which is empty")
        meta = splits.meta
        return NoisyTrainSet(
            images=as_tensor(_float32(meta.images)), noisy=as_tensor(meta.masks),
            clean=as_tensor(meta.masks), corrupted=torch.zeros(len(meta), dtype=torch.bool),
            scratch=scratch,
        )
    if exclude_fold is None:
        noisy, chosen = corrupt_split(splits.train, noise, rate, seed, splits.num_classes, scratch)
        images, clean = splits.train.images, splits.train.masks
        if include_meta and len(splits.meta):
            images = scratch.concatenate([images, splits.meta.images])
            clean = scratch.concatenate([clean, splits.meta.masks])
            noisy = scratch.concatenate([noisy, splits.meta.masks])
            chosen = np.concatenate([chosen, np.zeros(len(splits.meta), dtype=bool)])
    else:  # the kept images (then the meta images), one copy each; labels as bytes when they fit
        keep = np.flatnonzero(fold_of(len(splits.train), exclude_fold[1], seed,
                                      splits.train.groups) != exclude_fold[0])
        meta = splits.meta if include_meta else Split(splits.meta.images[:0], splits.meta.masks[:0])
        small = np.uint8 if splits.num_classes <= 256 else None
        images = _take(splits.train.images, keep, scratch, then=meta.images)
        clean = _take(splits.train.masks, keep, scratch, small, then=meta.masks)
        noisy = scratch.copy(clean)
        chosen = np.zeros(len(clean), dtype=bool)
        chosen[: len(keep)] = choose_corrupted(len(splits.train), noise.image_share(rate), seed)[keep]
        for j in np.flatnonzero(chosen):
            noisy[j] = corrupt_image(splits.train.masks[keep[j]], int(keep[j]), noise, seed,
                                     splits.num_classes)
    return NoisyTrainSet(
        images=as_tensor(_float32(images)), noisy=as_tensor(noisy), clean=as_tensor(clean),
        corrupted=torch.from_numpy(chosen), scratch=scratch,
    )


def _take(array: np.ndarray, index: np.ndarray, scratch: Scratch, dtype: Any = None,
          then: np.ndarray | None = None) -> np.ndarray:
    """``array[index]``, followed by ``then`` when given, in ``scratch`` (as ``dtype``, default
    the array's), a chunk of images at a time."""
    more = 0 if then is None else len(then)
    out = scratch.empty((len(index) + more, *array.shape[1:]), dtype or array.dtype)
    for part in chunks(len(index)):
        out[part] = array[index[part]]
    for part in chunks(more):
        out[len(index) + part.start : len(index) + part.stop] = then[part]
    return out


def _float32(images: np.ndarray) -> np.ndarray:
    return images if images.dtype == np.float32 and images.flags.c_contiguous else \
        np.ascontiguousarray(images, dtype=np.float32)
