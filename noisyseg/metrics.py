"""Segmentation metrics per image (or volume), averaged over images: Dice, IoU, HD and HD95.

Images are (H, W) label arrays, volumes (D, H, W); batches (N, H, W) or (N, D, H, W). Distances
are in pixels (voxels), or in mm given ``spacing``, the size of a pixel (voxel) along each spatial
axis, e.g. (2.0, 1.0, 1.0) for 2 mm slices of 1 mm voxels; ``spacing=None`` is 1 per axis.

Which classes count (per image and per foreground class c; background is never scored):

* c absent from both prediction and truth: nothing to find, nothing found; the class is left out
  of that image (NaN), not scored 1 (Dice) or 0 (distances), which would flatter a model on
  every image that does not hold c;
* c in exactly one of them: Dice = IoU = 0 and HD = HD95 = the image's physical diagonal,
  sqrt(sum_i (size_i * spacing_i)^2) (sqrt(H^2 + W^2) pixels without spacing), the largest
  distance possible in that image (a finite penalty, so means stay defined).

The headline value of a metric is the mean over images of each image's mean over the foreground
classes that count in it; an image where no class counts does not count either, and when nothing
counts at all the headline is NaN. For K > 2 classes, ``dice_class{c}`` (and ``iou_``, ``hd_``,
``hd95_``) is the mean over the images where class c counts.

Hausdorff distances are measured between the masks' boundary pixels (voxels): a foreground
pixel with a background face-neighbour (4-neighbour in an image, 6-neighbour in a volume), or on
the array's border; with scipy's exact Euclidean distance transform, scaled by ``spacing``
(its ``sampling``). HD95 is the larger of the two directed 95th percentiles (linear
interpolation).

Against MONAI 1.6 (``DiceMetric``, ``MeanIoU`` and ``HausdorffDistanceMetric`` with
``include_background=False`` and their default ``ignore_empty=True``; for volumes and spacing
``compute_hausdorff_distance(..., spacing=)``), checked in tests/test_metrics.py and
benchmarks/own_data.py:

* the boundaries are the same pixels: ``get_mask_edges`` crops to the union's bounding box with a
  1-pixel zero margin and takes ``mask ^ binary_erosion(mask)`` (scipy's cross, border 0), in 2-D
  and in 3-D; MONAI measures the distances between them with a KD-tree over the boundary
  coordinates times the spacing, the same exact distances;
* MONAI rounds the distances to float32 and takes HD95 with ``torch.quantile`` in float32 (where
  0.95 is 0.949999988), so its HD95 differed from ours by up to 1.4e-6 relative in our checks
  (4.9e-6 px on 64x64 masks, under 1e-6 px on 10x10 ones); our boundary distances put through
  the same float32 steps gave its values exactly;
* the one difference in convention: a class absent from the truth is NaN in MONAI whatever the
  prediction, while here a class found only in the prediction scores Dice = IoU = 0 and
  HD = HD95 = the diagonal (MONAI: infinite distance) - a false positive costs something.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, stats

METRICS = ("dice", "iou", "hd", "hd95")


Spacing = tuple[float, ...]


def check_spacing(spacing: Spacing | None, ndim: int) -> Spacing | None:
    """``spacing`` as floats, after checking it has one positive, finite value per spatial axis.

    Raises:
        ValueError: the wrong number of values, or one that is not a positive finite number.
    """
    if spacing is None:
        return None
    values = tuple(float(v) for v in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(values)} values but the masks have "
                         f"{ndim} spatial axes; give one size (mm) per axis, "
                         f"{'(D, H, W)' if ndim == 3 else '(H, W)'}, or None")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing {tuple(spacing)}: every size must be a positive finite number")
    return values


def diagonal(shape: tuple[int, ...], spacing: Spacing | None = None) -> float:
    """The physical diagonal of an image or volume, sqrt(sum_i (size_i * spacing_i)^2): the
    distance that scores a class found in only one of prediction and truth.

    Shape:
        shape - (H, W) or (D, H, W)
    """
    if spacing is None:
        return math.hypot(*shape)
    return math.hypot(*(n * s for n, s in zip(shape, spacing, strict=True)))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground elements with a background face-neighbour, or on the border."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff(a: np.ndarray, b: np.ndarray,
              spacing: Spacing | None = None) -> tuple[float, float]:
    """(HD, HD95) between two boolean masks, with the conventions above: NaN when both are empty.

    Args:
        spacing: the size (mm) of a pixel (voxel) along each axis; None: 1, distances in pixels.

    Shape:
        a, b - (H, W) or (D, H, W) bool, the same shape
    """
    spacing = check_spacing(spacing, a.ndim)
    a_any, b_any = bool(a.any()), bool(b.any())
    if not a_any and not b_any:
        return math.nan, math.nan
    if not (a_any and b_any):
        diag = diagonal(a.shape, spacing)
        return diag, diag
    sa, sb = _surface(a), _surface(b)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    hd = max(d_ab.max(), d_ba.max())
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return float(hd), float(hd95)


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks; NaN when both are empty.

    Shape:
        a, b - (H, W) or (D, H, W) bool (any shape works)
    """
    inter = np.logical_and(a, b).sum()
    total = a.sum() + b.sum()
    if total == 0:
        return math.nan, math.nan
    return float(2 * inter / total), float(inter / (total - inter))


def image_metrics(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, distances: bool = True,
    spacing: Spacing | None = None,
) -> np.ndarray:
    """Metrics of one image (or volume) per foreground class; NaN rows for the classes left out.

    Args:
        spacing: the size (mm) of a pixel (voxel) along each axis, for HD and HD95 in mm;
            None: 1, distances in pixels.

    Shape:
        pred, truth - (H, W) or (D, H, W) integer labels; returns (num_classes - 1, 4) in METRICS
        order, or (num_classes - 1, 2) (Dice, IoU) without ``distances``
    """
    spacing = check_spacing(spacing, truth.ndim)
    rows = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        rows.append((*overlap(p, t), *hausdorff(p, t, spacing)) if distances else overlap(p, t))
    return np.asarray(rows, dtype=np.float64)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the non-NaN values along ``axis``; NaN (and no warning) where there are none."""
    counted = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted, values, 0).sum(axis) / counted.sum(axis)


def evaluate(
    preds: np.ndarray, truths: np.ndarray, num_classes: int, distances: bool = True,
    spacing: Spacing | None = None,
) -> dict[str, float]:
    """Headline metrics (mean over images of the mean over the foreground classes that count)
    and, for K > 2, per-class means; NaN where nothing counts (see the module docstring).

    Args:
        distances: also compute HD and HD95 (slower than the overlaps).
        spacing: the size (mm) of a pixel (voxel) along each spatial axis, the same for every
            image, for HD and HD95 in mm; None: 1, distances in pixels.

    Shape:
        preds, truths - (N, H, W) or (N, D, H, W) integer labels
    """
    table = image_table(preds, truths, num_classes, distances, spacing=spacing)
    return summarise(table, num_classes, distances)


def image_table(
    preds: np.ndarray, truths: np.ndarray, num_classes: int, distances: bool = True,
    spacing: Spacing | None = None,
) -> np.ndarray:
    """Every image's metrics per foreground class (NaN where a class is left out); tables of
    several chunks of a split, concatenated, summarise like the whole split's.

    Args:
        spacing: the size (mm) of a pixel (voxel) along each spatial axis, for HD and HD95 in mm;
            None: 1, distances in pixels.

    Shape:
        preds, truths - (N, H, W) or (N, D, H, W) integer labels; returns (N, K-1, M), M = 4
        with distances, else 2
    """
    if preds.shape != truths.shape:
        raise ValueError(f"prediction shape {preds.shape} != truth shape {truths.shape}")
    if preds.ndim not in (3, 4):
        raise ValueError(f"expected a batch of images (N, H, W) or of volumes (N, D, H, W), got "
                         f"shape {preds.shape}")
    spacing = check_spacing(spacing, preds.ndim - 1)
    width = len(METRICS) if distances else 2
    if len(preds) == 0:
        return np.zeros((0, num_classes - 1, width))
    return np.stack([image_metrics(p, t, num_classes, distances, spacing)
                     for p, t in zip(preds, truths, strict=True)])


def summarise(table: np.ndarray, num_classes: int, distances: bool = True) -> dict[str, float]:
    """:func:`evaluate`'s numbers from an :func:`image_table`.

    Shape:
        table - (N, K-1, M)
    """
    names = METRICS if distances else METRICS[:2]
    headline = _nanmean(_nanmean(table, axis=1), axis=0)  # (M,)
    out = {name: float(headline[j]) for j, name in enumerate(names)}
    if num_classes > 2:
        per_class = _nanmean(table, axis=0)  # (K-1, M)
        for c in range(1, num_classes):
            for j, name in enumerate(names):
                out[f"{name}_class{c}"] = float(per_class[c - 1, j])
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


def best_epoch_dice(history: list[dict]) -> float:
    """The best test Dice of a run's epochs (``RunResult.history``), over the epochs that were
    scored (``train.eval_every``); NaN when none was."""
    return max((h["test_dice"] for h in history if "test_dice" in h), default=math.nan)
