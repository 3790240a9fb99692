"""The audit's scores: of each pixel, of each image, and of a ranking against the known truth.

With p(c) the predicted probability of class c at a pixel, y the given label and ŷ = argmax p the
prediction:

* pixel score: 1 - p(y), cleanlab's pixel score turned around (high: likely wrong); a pixel is
  flagged where ŷ differs from y, and the suggested mask is ŷ;
* image scores (:data:`SIGNALS`; each is computed, ``signal`` picks the ranking):
  ``boundary`` = the number of flagged pixels over the mean outline length of the given and the
  predicted mask (Σ over foreground classes c of (|∂[y = c]| + |∂[ŷ = c]|) / 2, ∂: the pixels
  with a 4-neighbour outside the class or on the border): the area between the two outlines
  per unit of outline, i.e. how far (px) the given outline lies from the predicted one on
  average, whatever the object's size;
  ``dice`` = 1 - Dice(ŷ, y) over the foreground classes either holds (0 when neither holds any);
  ``confidence`` = the mean pixel score over the pixels that y or ŷ calls foreground;
  ``softmin`` = 1 - cleanlab's image quality, Σ p(y) e^((1 - p(y))/T) / Σ e^((1 - p(y))/T) over
  every pixel, T = 0.1 (``cleanlab.segmentation.rank.get_label_quality_scores``).
* suspected kind, from the given foreground G and the predicted foreground P: ``missing`` when
  most of what the prediction adds lies in objects the mask lacks altogether (or the mask is
  empty); ``misplaced`` when at least half of G lies outside P and half of P outside G; else
  ``too large`` when |G \\ P| >= 2 |P \\ G|, ``too small`` when |P \\ G| >= 2 |G \\ P|,
  ``misplaced`` otherwise (a class swap inside the foreground too); empty when nothing is flagged.

With known truth, a ranking is scored by precision at k (:func:`precision_at_k`) and the pixel
score by the areas under its curves from fixed-size histograms (:class:`PixelCurve`: constant
memory; 4096 bins). NumPy and SciPy only: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: the image scores, by name: what each measures (high: the mask is likely wrong)
SIGNALS: dict[str, str] = {
    "boundary": "pixels where prediction and given mask differ, per outline pixel: how far (px) "
                "the given outline lies from the predicted one, on average",
    "dice": "1 - Dice(prediction, given mask) over the foreground classes",
    "confidence": "mean of 1 - p(given label) over the pixels either mask calls foreground",
    "softmin": "1 - cleanlab's image quality (softmin of p(given label), temperature 0.1)",
}
#: the ranking by default: the signal that ranked best on benchmarks/audit.py (docs/audit.md)
DEFAULT_SIGNAL = "boundary"
#: 4-neighbours within each image of a batch (B, H, W), none across images
_CROSS = np.array([np.zeros((3, 3)), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3))], dtype=bool)
#: cleanlab's softmin temperature
SOFTMIN_T = 0.1


@dataclass
class BatchScores:
    """The scores of a batch of images.

    Shape:
        signals - {name: (B,)}; pixel, pred - (B, H, W); wrong_share - (B,); kinds - B strings
    """

    signals: dict[str, np.ndarray]
    pixel: np.ndarray
    pred: np.ndarray
    wrong_share: np.ndarray
    kinds: list[str]


def _mean_counted(values: np.ndarray, counted: np.ndarray, empty: float) -> np.ndarray:
    """Mean over axis 0 of ``values`` where ``counted``; ``empty`` where nothing is."""
    n = counted.sum(0)
    total = np.where(counted, values, 0).sum(0)
    return np.where(n > 0, total / np.maximum(n, 1), empty)


def score_batch(probs: np.ndarray, given: np.ndarray) -> BatchScores:
    """Every signal of :data:`SIGNALS`, the pixel scores, the prediction and the suspected kind
    of each image (see the module's docstring).

    Shape:
        probs - (B, K, H, W) class probabilities (K >= 2); given - (B, H, W) integer labels
    """
    probs = np.asarray(probs, dtype=np.float32)
    given = np.asarray(given, dtype=np.int64)
    b, k = probs.shape[:2]
    axes = tuple(range(1, given.ndim))
    pred = probs.argmax(1)
    p_given = np.take_along_axis(probs, given[:, None], 1)[:, 0]
    pixel = 1.0 - p_given
    hard, counted = [], []
    outline = np.zeros(b)
    for c in range(1, k):
        g, q = given == c, pred == c
        gs, qs = g.sum(axes), q.sum(axes)
        hard.append(2.0 * (g & q).sum(axes) / np.maximum(gs + qs, 1))
        counted.append(gs + qs > 0)
        outline += (_outline(g).sum(axes) + _outline(q).sum(axes)) / 2
    flagged = pred != given
    region = (given > 0) | (pred > 0)
    inside = region.sum(axes)
    confidence = np.where(inside > 0, (pixel * region).sum(axes) / np.maximum(inside, 1),
                          pixel.mean(axes))
    x = p_given.reshape(b, -1).astype(np.float64)
    e = (1.0 - x) / SOFTMIN_T
    w = np.exp(e - e.max(1, keepdims=True))
    quality = (x * w).sum(1) / w.sum(1)
    signals = {
        "boundary": flagged.sum(axes) / np.maximum(outline, 1.0),
        "dice": 1.0 - _mean_counted(np.array(hard), np.array(counted), 1.0),
        "confidence": confidence.astype(np.float64),
        "softmin": 1.0 - quality,
    }
    kinds = [suspected_kind(given[i] > 0, pred[i] > 0) if flagged[i].any() else ""
             for i in range(b)]
    return BatchScores(signals, pixel, pred, flagged.mean(axes), kinds)


def _outline(masks: np.ndarray) -> np.ndarray:
    """The foreground pixels of each mask with a background 4-neighbour or on the border (as
    :mod:`noisyseg.metrics` draws boundaries).

    Shape:
        masks - (B, H, W) bool; returns the same
    """
    return masks & ~ndimage.binary_erosion(masks, structure=_CROSS, border_value=0)


def suspected_kind(given: np.ndarray, pred: np.ndarray) -> str:
    """What looks wrong with a mask whose prediction differs from it (see the module's
    docstring): too large, too small, misplaced or missing.

    Shape:
        given, pred - (H, W) bool foreground
    """
    extra, lack = int((given & ~pred).sum()), int((pred & ~given).sum())
    if lack and not given.any():
        return "missing"
    if lack > extra:
        parts, n = ndimage.label(pred)
        touching = np.unique(parts[given & pred])
        apart = int(np.isin(parts, touching, invert=True)[pred].sum()) if n else 0
        if 2 * apart >= lack:
            return "missing"
    if 2 * extra >= given.sum() and 2 * lack >= pred.sum():  # each mostly outside the other
        return "misplaced"
    if extra >= 2 * lack:
        return "too large"
    if lack >= 2 * extra:
        return "too small"
    return "misplaced"


class PixelCurve:
    """The scores of wrong and right pixels counted in fixed bins over [0, 1]: the area under the
    precision-recall curve (average precision, each bin one threshold) and under the ROC curve
    (ties count half) in constant memory, whatever the number of pixels."""

    def __init__(self, bins: int = 4096) -> None:
        self.bins = bins
        self.wrong = np.zeros(bins, dtype=np.int64)
        self.right = np.zeros(bins, dtype=np.int64)

    def add(self, scores: np.ndarray, wrong: np.ndarray) -> None:
        """Shape: scores, wrong - any shape, the same"""
        at = np.clip((np.asarray(scores, dtype=np.float64).ravel() * self.bins).astype(np.int64),
                     0, self.bins - 1)
        wrong = np.asarray(wrong, dtype=bool).ravel()
        self.wrong += np.bincount(at[wrong], minlength=self.bins)
        self.right += np.bincount(at[~wrong], minlength=self.bins)

    def auprc(self) -> float:
        pos = int(self.wrong.sum())
        if pos == 0 or not self.right.sum():
            return math.nan
        tp, fp = np.cumsum(self.wrong[::-1]), np.cumsum(self.right[::-1])
        precision = tp / np.maximum(tp + fp, 1)
        return float((precision * self.wrong[::-1]).sum() / pos)

    def auroc(self) -> float:
        pos, neg = int(self.wrong.sum()), int(self.right.sum())
        if pos == 0 or neg == 0:
            return math.nan
        above = np.cumsum(self.wrong[::-1])[::-1] - self.wrong  # wrong pixels in higher bins
        return float((self.right * (above + 0.5 * self.wrong)).sum() / (pos * neg))


def precision_at_k(scores: np.ndarray, positives: np.ndarray, k: int | None = None) -> float:
    """The share of positives among the ``k`` highest scores (default k: the number of
    positives; ties: the earlier image first); NaN when k is 0.

    Shape:
        scores, positives - (N,)
    """
    positives = np.asarray(positives, dtype=bool)
    k = int(positives.sum()) if k is None else k
    if k == 0:
        return math.nan
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return float(positives[top].mean())
