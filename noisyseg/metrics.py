"""Segmentation metrics per image, averaged over images: Dice, IoU, HD and HD95 (pixels).

Empty-mask conventions (per image and per foreground class):

* prediction and truth both empty: Dice = IoU = 1, HD = HD95 = 0 (nothing to find, nothing found);
* exactly one of them empty: Dice = IoU = 0 and HD = HD95 = the image diagonal, the largest
  distance possible in that image (a finite penalty, so means stay defined).

Hausdorff distances are measured between the masks' boundary pixels (a foreground pixel with a
background 4-neighbour, or on the image border) with scipy's Euclidean distance transform.
HD95 is the larger of the two directed 95th percentiles (the convention of MONAI and medpy).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, stats

METRICS = ("dice", "iou", "hd", "hd95")


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(HD, HD95) between two boolean masks, with the empty-mask conventions above.

    Shape:
        a, b - (H, W) bool
    """
    a_any, b_any = bool(a.any()), bool(b.any())
    if not a_any and not b_any:
        return 0.0, 0.0
    if not (a_any and b_any):
        diag = math.hypot(*a.shape)
        return diag, diag
    sa, sb = _surface(a), _surface(b)
    d_ab = ndimage.distance_transform_edt(~sb)[sa]
    d_ba = ndimage.distance_transform_edt(~sa)[sb]
    hd = max(d_ab.max(), d_ba.max())
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return float(hd), float(hd95)


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks; both empty gives (1, 1).

    Shape:
        a, b - (H, W) bool (any shape works)
    """
    inter = np.logical_and(a, b).sum()
    total = a.sum() + b.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / (total - inter))


def image_metrics(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Metrics of one image per foreground class.

    Shape:
        pred, truth - (H, W) integer labels; returns (num_classes - 1, 4) in METRICS order
    """
    rows = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        rows.append((*overlap(p, t), *hausdorff(p, t)))
    return np.asarray(rows, dtype=np.float64)


def evaluate(
    preds: np.ndarray, truths: np.ndarray, num_classes: int, distances: bool = True
) -> dict[str, float]:
    """Mean metrics over images (and foreground classes); per-class means for K > 2.

    Args:
        distances: also compute HD and HD95 (slower than the overlaps).

    Shape:
        preds, truths - (N, H, W) integer labels
    """
    if preds.shape != truths.shape:
        raise ValueError(f"prediction shape {preds.shape} != truth shape {truths.shape}")
    per_image = []
    for p, t in zip(preds, truths, strict=True):
        if distances:
            per_image.append(image_metrics(p, t, num_classes))
        else:
            rows = [overlap(p == c, t == c) for c in range(1, num_classes)]
            per_image.append(np.asarray(rows, dtype=np.float64))
    table = np.stack(per_image)  # (N, K-1, M)
    names = METRICS if distances else METRICS[:2]
    means = table.mean(axis=0)  # (K-1, M)
    out = {name: float(means[:, j].mean()) for j, name in enumerate(names)}
    if num_classes > 2:
        for c in range(1, num_classes):
            for j, name in enumerate(names):
                out[f"{name}_class{c}"] = float(means[c - 1, j])
    return out


def detection_auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for finding ``positives`` (ties count half).

    Returns NaN when there are no positives or no negatives. Used with scores = 1 - weight and
    positives = corrupted pixels: 1 means every corrupted pixel got a lower weight than every
    clean one, 0.5 is chance.

    Shape:
        scores, positives - any shape, same size
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
