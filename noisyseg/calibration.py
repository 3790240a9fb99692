"""Calibrate the decision on the clean meta images: one offset per class added to the log-
probabilities before the argmax, chosen to maximise the meta split's Dice (``train.calibrate``).

Systematic label noise biases a network's decision: trained on masks drawn too large (dilation,
generous annotators) it over-segments, on masks drawn too small it under-segments. The clean meta
images, kept out of training, show where the decision should be. Moving it is a shift of the
class priors (Saerens et al., *Adjusting the outputs of a classifier to new a priori
probabilities*, Neural Computation 2002); choosing the shift on held-out labelled data for the
metric that is reported is the threshold selection of Lipton et al., *Thresholding classifiers to
maximize F1 score* (ECML PKDD 2014), here for Dice, the F1 score of pixels.

For a binary (one-logit) net the offsets are one number added to the logit: a threshold on the
foreground probability of sigmoid(-offset). For K classes, offset c is added to logit c.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from noisyseg.components import Split, Splits
from noisyseg.errors import ConfigError
from noisyseg.metrics import evaluate
from noisyseg.precision import upcast

#: the offsets tried for each class, in log-probability units (a binary threshold between
#: sigmoid(-4) = 0.018 and 0.982), and the rounds of coordinate ascent for K > 2 classes
GRID = np.round(np.linspace(-4.0, 4.0, 81), 6)
ROUNDS = 2
#: the prior shift is fitted on at most this many pixels (every k-th), to bound its memory
PRIOR_PIXELS = 1_000_000


class Calibrated(nn.Module):
    """A network whose logits get the calibration offsets: ``Calibrated(net, offsets)(x)`` =
    ``net(x) + offsets``; predictions, probabilities and the sliding window follow.

    Args:
        net: the trained network (its weights are ``net``'s: ``state_dict`` keys start ``net.``).
        offsets: (num_classes,) offsets of the log-probabilities; a one-logit net gets
            ``offsets[1] - offsets[0]``.

    Shape:
        x - (N, C, *spatial); returns the net's logits (N, K, *spatial), offset
    """

    def __init__(self, net: nn.Module, offsets: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("offsets", offsets.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = upcast(self.net(x))  # the offsets were fitted on float32 logits
        shift = self.offsets.to(logits.device, logits.dtype)
        if logits.shape[1] == 1:
            shift = (shift[1] - shift[0]).reshape(1)
        return logits + shift.view(1, -1, *[1] * (logits.ndim - 2))


def offset_logits(logits: torch.Tensor, offsets: np.ndarray) -> torch.Tensor:
    """Labels of ``logits`` with ``offsets`` added (as :class:`Calibrated` does).

    Shape:
        logits - (N, K, *spatial), K = 1 or num_classes; offsets - (num_classes,); returns
        (N, *spatial) int64
    """
    if logits.shape[1] == 1:
        return (logits[:, 0] + float(offsets[1] - offsets[0]) > 0).long()
    shift = torch.as_tensor(offsets, dtype=logits.dtype, device=logits.device)
    shift = shift.view(1, -1, *[1] * (logits.ndim - 2))
    return (logits + shift).argmax(1)


def fit_offsets(logits: torch.Tensor, masks: np.ndarray, num_classes: int) -> tuple[np.ndarray, float, float]:
    """The offsets that maximise the mean foreground Dice of ``logits`` against ``masks`` (the
    headline Dice of :func:`noisyseg.metrics.evaluate`), by a grid search: over all of
    :data:`GRID` for a binary net; for K > 2 classes by coordinate ascent over classes 1..K-1
    (class 0 fixed at 0) from :func:`prior_shift`'s offsets, which keeps the greedy search out
    of the local optima where one class's move spoils another boundary. Ties keep the starting
    offsets (binary: 0, then the nearest to 0), so an already calibrated net is left as it is.
    A class with no pixel in ``masks`` keeps offset 0: these images say nothing about it.

    Returns:
        (offsets (num_classes,), Dice at offsets 0, Dice at the offsets found)

    Shape:
        logits - (N, K, *spatial) on the CPU; masks - (N, *spatial) integer labels
    """
    offsets = np.zeros(num_classes)

    def dice(o: np.ndarray) -> float:  # never NaN: some image holds a present class
        return evaluate(offset_logits(logits, o).numpy(), masks, num_classes, distances=False)["dice"]

    present = classes_present(masks, num_classes)
    if not present:  # no foreground to score: nothing to calibrate on
        return offsets, math.nan, math.nan
    start = best = dice(offsets)
    if num_classes > 2:  # the greedy search starts from the cross-entropy's best prior shift
        shifted = np.clip(np.round(prior_shift(logits, masks), 1), GRID[0], GRID[-1])
        d = dice(shifted)
        if d > best:
            best, offsets = d, shifted
    order = np.argsort(np.abs(GRID), kind="stable")  # 0 first, then the nearest: ties keep small
    for _ in range(ROUNDS if num_classes > 2 else 1):
        moved = False
        for c in present:  # a class absent from the masks would only learn never to be predicted
            for value in GRID[order]:
                trial = offsets.copy()
                trial[c] = value
                d = dice(trial)
                if d > best:
                    best, offsets, moved = d, trial, True
        if not moved:
            break
    return offsets, start, best


def classes_present(masks: np.ndarray, num_classes: int) -> list[int]:
    """The foreground classes with at least one pixel in ``masks``: those calibration can move.

    Shape:
        masks - (N, *spatial) integer labels
    """
    found = set(np.unique(np.asarray(masks)).tolist())
    return [c for c in range(1, num_classes) if c in found]


def prior_shift(logits: torch.Tensor, masks: np.ndarray, steps: int = 50) -> np.ndarray:
    """The offsets (class 0 at 0) that minimise the mean cross-entropy of ``logits`` + offsets on
    ``masks``: a convex problem, solved by L-BFGS; the maximum-likelihood prior shift. Fitted on
    at most :data:`PRIOR_PIXELS` evenly spread pixels; classes absent from ``masks`` keep 0.

    Shape:
        logits - (N, K, *spatial), K > 1; masks - (N, *spatial); returns (K,)
    """
    k = logits.shape[1]
    keep = [0, *classes_present(masks, k)]  # absent classes: offset 0
    stride = max(1, math.ceil(masks.size / PRIOR_PIXELS))  # evenly spread pixels, bounded memory
    x = logits.detach().float().movedim(1, -1).reshape(-1, k)[::stride][:, keep]
    y = torch.from_numpy(np.asarray(masks, dtype=np.int64)).reshape(-1)[::stride]
    y = torch.as_tensor(np.searchsorted(keep, y.numpy()))  # class -> its column among keep
    b = torch.zeros(len(keep), requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    fitted = b.detach().numpy().astype(np.float64)
    out = np.zeros(k)
    out[keep] = fitted - fitted[0]
    return out


def aside_count(n_meta: int, share: float) -> int:
    """How many of ``n_meta`` meta images :func:`hold_out` sets aside: ``share`` of them, rounded,
    at least one and at least one left."""
    return min(max(1, round(share * n_meta)), n_meta - 1)


def fingerprint(split: Split) -> str:
    """A digest of a split's images and masks: a fine-tune run checks with it that it sets aside
    the very images the run it starts from set aside."""
    digest = hashlib.sha256()  # of the values, whatever the dtype a dataset stores them in
    for array, dtype in ((split.images, np.float32), (split.masks, np.int64)):
        values = np.ascontiguousarray(array, dtype=dtype)
        digest.update(repr(values.shape).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def hold_out(splits: Splits, share: float, seed: int) -> tuple[Splits, Split]:
    """Set ``share`` of the meta images (at least one, at least one left) aside for calibration:
    the splits with the rest as their meta split, and the images set aside. The same seed sets
    the same images aside, so a fine-tune run never calibrates on images its start trained on.

    Shape:
        the meta split's images (M, C, *spatial) become (M - n, ...) and (n, ...)
    """
    meta = splits.meta
    if len(meta) < 2:
        raise ConfigError(f"train.calibration_share sets meta images aside for calibration, and the "
                          f"meta split has {len(meta)}; give the dataset a meta split of at least 2 "
                          "images, or leave calibration_share unset")
    n = aside_count(len(meta), share)
    aside = np.sort(np.random.default_rng([seed, 0xCA11B]).permutation(len(meta))[:n])
    rest = np.setdiff1d(np.arange(len(meta)), aside)

    def take(index: np.ndarray) -> Split:
        return Split(np.asarray(meta.images[index]), np.asarray(meta.masks[index]))

    return replace(splits, meta=take(rest)), take(aside)
