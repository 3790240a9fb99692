"""Training data with known corruption: clean and noisy masks side by side.

The noise model is applied once, when the run starts, to exactly ``round(share * N)`` training
images chosen by the seed (share: :meth:`NoiseModel.image_share` of ``noise.rate``, the rate
itself unless the model sets its own); each chosen image gets its own generator seeded by (seed,
index), so the corruption of one image does not depend on the others. A model that needs the
images sees the splits first (:func:`prepare_noise`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from noisyseg.components import NoiseModel, Split, Splits
from noisyseg.errors import DataError, DataWarning
from noisyseg.scratch import Scratch, as_tensor, chunks, streams


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


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch of :func:`batches`: full batches only, at least one."""
    return max(n // batch_size, 1)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled index batches (the last, smaller batch is dropped if n > batch)."""
    order = torch.randperm(n, generator=generator)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps_per_epoch(n, batch_size))]


class Cycler:
    """Endless shuffled batches from a fixed set of tensors (used for the meta set)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> None:
        self.tensors = tensors
        self.batch_size = min(batch_size, len(tensors[0]))
        self.generator = torch.Generator().manual_seed(seed)
        self._queue: list[torch.Tensor] = []

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if not self._queue:
            self._queue = batches(len(self.tensors[0]), self.batch_size, self.generator)
        index = self._queue.pop(0)
        return tuple(t[index] for t in self.tensors)

    def state_dict(self) -> dict[str, Any]:
        """Where the cycle stands: the generator and the batches left in the current pass."""
        return {"generator": self.generator.get_state(), "queue": [q.clone() for q in self._queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._queue = [q.clone() for q in state["queue"]]


#: fewer optimiser steps than this in a whole run and a U-Net has barely started to segment
MIN_STEPS = 200
#: a meta set smaller than this gives a meta reweighter little to learn from
MIN_META = 10


def size_warnings(n_train: int, n_meta: int, batch_size: int, epochs: int, max_steps: int | None,
                  uses_meta: bool) -> list[str]:
    """What is too small about a run's data for its training to mean much, one message each."""
    messages = []
    per_epoch = steps_per_epoch(n_train, batch_size)
    steps = epochs * per_epoch if max_steps is None else min(epochs * per_epoch, max_steps)
    if steps < MIN_STEPS:
        need = -(-MIN_STEPS // per_epoch)
        messages.append(
            f"this run takes only {steps} optimiser steps ({epochs} epochs of {per_epoch} batches of "
            f"{batch_size} on {n_train} training images); small sets need more steps to learn "
            f"anything: set train.epochs to at least {need} (--epochs {need})"
        )
    if uses_meta and n_meta < MIN_META:
        messages.append(
            f"the meta split holds only {n_meta} image(s), and the reweighter learns from it alone; "
            f"give it at least {MIN_META} clean images"
        )
    return messages
