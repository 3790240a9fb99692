"""Sliding-window prediction: images (or volumes) larger than the training patches are predicted
one patch-sized window at a time, windows overlapping by half, and the class probabilities of
overlapping windows averaged. The network never sees more than a batch of patches at once, so its
activations take the memory of training patches however large the volume; what grows with the
volume is the image itself and one probability map per class beside it (on the image's device).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from noisyseg.outputs import class_probs
from noisyseg.precision import upcast


def starts(size: int, window: int, step: int) -> list[int]:
    """Window offsets along one axis, ``step`` apart, the last window flush with the end (so
    every position is covered); one window at 0 when the axis is not longer than the window."""
    if size <= window:
        return [0]
    offsets = list(range(0, size - window + 1, max(1, step)))
    return offsets if offsets[-1] == size - window else [*offsets, size - window]


@torch.no_grad()
def sliding_probs(model: nn.Module, image: torch.Tensor, window: tuple[int, ...],
                  batch_size: int = 8, overlap: float = 0.5) -> torch.Tensor:
    """Class probabilities of one image, averaged over the overlapping windows (the model in the
    mode it is in; ``image`` on the model's device).

    Shape:
        image - (C, *spatial) with len(window) spatial axes; returns (num_classes, *spatial) on the
        image's device (2 classes for a one-logit net)
    """
    spatial = image.shape[1:]
    corners = list(itertools.product(*(starts(s, min(w, s), int(min(w, s) * (1 - overlap)))
                                       for s, w in zip(spatial, window, strict=True))))
    sizes = [min(w, s) for s, w in zip(spatial, window, strict=True)]
    total: torch.Tensor | None = None
    count = torch.zeros(spatial, device=image.device)
    for i in range(0, len(corners), batch_size):
        group = corners[i : i + batch_size]
        cuts = [tuple(slice(c, c + n) for c, n in zip(corner, sizes, strict=True)) for corner in group]
        logits = model(torch.stack([image[(slice(None), *cut)] for cut in cuts]))
        probs = class_probs(upcast(logits))  # float32 under autocast too (train.precision)
        if total is None:
            total = torch.zeros((probs.shape[1], *spatial), device=image.device, dtype=probs.dtype)
        for p, cut in zip(probs, cuts, strict=True):
            total[(slice(None), *cut)] += p
            count[cut] += 1
    assert total is not None
    return total / count
