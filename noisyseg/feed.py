"""Where the training loop's batches come from: the training set's arrays, kept on the training
device when they fit there, so that a step gathers its batch where it trains instead of copying
it from the host.

On the CPU nothing moves. On a GPU the images, the clean masks and the noise region move there
once, before the first step (:func:`resident`), when

- the dataset does not stream from disk (its arrays are then files, read a batch at a time),
- the config does not augment (augmentation runs on the CPU, in albumentations), and
- they take at most :data:`FREE_SHARE` of the device's free memory.

The labels trained on move with them when the corrector never changes them (the ``none``
corrector, so every reweighter-only run); a corrector that changes labels keeps them on the
CPU, and a batch's labels then cross once per step. Each epoch's shuffled order crosses once, so
a step copies no index. What stays per step: the reads and writes of a corrector that observes
the predictions or the weights (its state is on the CPU). The step's checks are read every few
steps (:class:`noisyseg.step.DeferredChecks`), not at each one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from noisyseg.batching import batches
from noisyseg.data import NoisyTrainSet
from noisyseg.distributed import World
from noisyseg.method_kinds import LabelCorrector

#: the training arrays move to the device when they take at most this share of its free memory
FREE_SHARE = 0.25


@dataclass
class FeedBatch:
    """One step's batch before augmentation, this process's share of it.

    Shape:
        index - (B,) positions in the training set, on the CPU; images - (B, C, H, W); labels,
        clean, region - (B, H, W) (region None when nothing is corrupted); on the training device
        when the feed is resident, else on the CPU
    """

    index: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    clean: torch.Tensor
    region: torch.Tensor | None


def resident(train: NoisyTrainSet, device: torch.device, augmenting: bool) -> bool:
    """Whether the training arrays are kept on ``device`` (see the module's description)."""
    if device.type != "cuda" or augmenting:
        return False
    if train.scratch is not None and train.scratch.dir is not None:  # it streams from disk
        return False
    sizes = [train.images, train.clean] + ([train.region] if train.region is not None else [])
    need = sum(a.numel() * a.element_size() for a in sizes) + train.noisy.numel() * 8  # int64
    free, _ = torch.cuda.mem_get_info(device)
    return need <= FREE_SHARE * free


class Feed:
    """The batches of the training set, gathered on the device when :attr:`on_device`."""

    def __init__(self, train: NoisyTrainSet, corrector: LabelCorrector, batch_size: int,
                 device: torch.device, on_device: bool, world: World | None = None) -> None:
        self.train, self.corrector, self.batch_size = train, corrector, batch_size
        self.device = device
        self.world = world or World()
        self.on_device = on_device
        self.images, self.clean, self.region = (
            a if a is None or not on_device else a.to(device)
            for a in (train.images, train.clean, train.region))
        #: the labels trained on, on the device, when the corrector never changes them; made at
        #: the first epoch (after a checkpoint restored the corrector)
        self._labels: torch.Tensor | None = None

    def epoch(self, generator: torch.Generator) -> Iterator[FeedBatch]:
        """One shuffled epoch of batches (:func:`noisyseg.batching.batches`), this process's share
        of each; the order crosses to the device once."""
        order = batches(len(self.train), self.batch_size, generator)
        moved = torch.stack(order).to(self.device) if self.on_device else None
        if self.on_device and self._labels is None and not self.corrector.changes_labels \
                and type(self.corrector).labels is LabelCorrector.labels:
            self._labels = self.corrector.store.to(self.device).long()
        for i, index in enumerate(order):
            yield self.batch(index, None if moved is None else moved[i])

    def batch(self, index: torch.Tensor, moved: torch.Tensor | None = None) -> FeedBatch:
        """The batch of training-set positions ``index`` (CPU), ``moved`` the same on the device."""
        index = self.world.shard(index)
        at = index if moved is None else self.world.shard(moved)
        if self._labels is not None:
            labels = self._labels[at]
        else:  # the corrector's labels, on the CPU: the batch's one copy to the device
            labels = self.corrector.labels(index)
            labels = labels.to(self.device, non_blocking=True) if self.on_device else labels
        return FeedBatch(index, self.images[at], labels, self.clean[at],
                         None if self.region is None else self.region[at])

