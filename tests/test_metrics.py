from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from noisyseg.metrics import (
    detection_auroc,
    evaluate,
    hausdorff,
    image_metrics,
    image_table,
    overlap,
)
from noisyseg.testing import label_fields, monai_metrics

masks = arrays(bool, st.tuples(st.integers(1, 16), st.integers(1, 16)))
volumes = arrays(bool, st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)))
spacings = st.tuples(*[st.sampled_from([0.25, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0])] * 3)
ANISOTROPIC = (2.0, 1.0, 0.5)


@given(masks)
def test_dice_of_mask_with_itself_is_one(a: np.ndarray) -> None:
    assume(a.any())
    assert overlap(a, a) == (1.0, 1.0)


@given(st.data())
def test_dice_and_iou_symmetric_and_bounded(data: st.DataObject) -> None:
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
    assume(a.any() or b.any())
    d1, i1 = overlap(a, b)
    d2, i2 = overlap(b, a)
    assert d1 == d2 and i1 == i2
    assert 0 <= i1 <= d1 <= 1


@given(masks)
def test_hausdorff_of_identical_masks_is_zero(a: np.ndarray) -> None:
    assume(a.any())
    assert hausdorff(a, a) == (0.0, 0.0)


@given(st.data())
def test_hausdorff_symmetric_and_hd95_below_hd(data: st.DataObject) -> None:
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
    assume(a.any() or b.any())
    hd, hd95 = hausdorff(a, b)
    assert (hd, hd95) == hausdorff(b, a)
    assert 0 <= hd95 <= hd


def test_hand_computed_overlap() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True     # 4 px
    b[:2, :3] = True     # 6 px, 4 shared
    assert overlap(a, b) == pytest.approx((8 / 10, 4 / 6))


def test_hand_computed_hausdorff() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2, 2] = True
    b[2, 7] = True
    assert hausdorff(a, b) == (5.0, 5.0)
    b[2, 2] = True      # b = {(2,2), (2,7)}: a->b is 0, b->a is 5
    assert hausdorff(a, b)[0] == 5.0


def test_empty_mask_conventions() -> None:
    empty, full = np.zeros((3, 4), bool), np.ones((3, 4), bool)
    assert all(math.isnan(v) for v in (*overlap(empty, empty), *hausdorff(empty, empty)))
    assert overlap(empty, full) == (0.0, 0.0)
    assert hausdorff(empty, full) == (5.0, 5.0)     # the image diagonal


def _labels(*rows: str) -> np.ndarray:
    return np.array([[int(ch) for ch in row] for row in rows], np.int64)


def test_a_class_absent_from_an_image_is_left_out_of_it() -> None:
    truth = np.stack([_labels("1100", "1100", "0000", "0000"),     # class 2 absent from image 0
                      _labels("1100", "1100", "0022", "0022")])
    pred = np.stack([truth[0], _labels("1100", "1100", "0002", "0022")])  # class 2: Dice 6/7
    table = image_metrics(pred[0], truth[0], 3)
    assert table[0].tolist() == [1.0, 1.0, 0.0, 0.0] and np.isnan(table[1]).all()
    out = evaluate(pred, truth, 3)
    assert out["dice"] == pytest.approx((1.0 + (1.0 + 6 / 7) / 2) / 2)   # not (1 + 1) / 2 in image 0
    assert out["dice_class1"] == 1.0 and out["dice_class2"] == pytest.approx(6 / 7)  # image 1 only
    assert out["iou_class2"] == pytest.approx(3 / 4) and out["hd_class2"] == 1.0


def test_a_false_positive_class_scores_zero() -> None:
    truth = _labels("1100", "1100", "0000", "0000")
    pred = _labels("1100", "1100", "0000", "0002")      # one stray pixel of class 2
    out = evaluate(pred[None], truth[None], 3)
    assert out["dice_class2"] == 0.0 and out["iou_class2"] == 0.0
    assert out["hd_class2"] == out["hd95_class2"] == pytest.approx(math.hypot(4, 4))
    assert out["dice"] == pytest.approx(0.5)


def test_absent_classes_no_longer_flatter_the_headline() -> None:
    """Labels 0..3, one foreground class per image, a model that finds class 1 only: Dice 1/3
    (each image's one class), where scoring absent classes 1 gave (1 + 2/3 + 2/3) / 3 = 7/9."""
    truth = np.zeros((3, 4, 4), np.int64)
    for c in (1, 2, 3):
        truth[c - 1, :2, :2] = c
    pred = np.where(truth == 1, 1, 0)
    out = evaluate(pred, truth, 4)
    assert out["dice"] == pytest.approx(1 / 3)
    assert [out[f"dice_class{c}"] for c in (1, 2, 3)] == [1.0, 0.0, 0.0]


def test_binary_headline_is_the_foreground_dice_of_the_images_that_hold_foreground() -> None:
    truth = np.zeros((3, 4, 4), np.int64)
    truth[0, :2, :2] = 1
    truth[1, :2, :] = 1
    pred = np.zeros_like(truth)          # image 2: nothing in truth nor prediction, left out
    pred[0, :2, :2] = 1                  # image 1: foreground missed, Dice 0
    out = evaluate(pred, truth, 2)
    assert out["dice"] == 0.5 and out["hd"] == pytest.approx(math.hypot(4, 4) / 2)
    assert set(out) == {"dice", "iou", "hd", "hd95"}


def test_nothing_to_score_is_nan_not_one() -> None:
    empty = np.zeros((2, 4, 4), np.int64)
    assert all(math.isnan(v) for v in evaluate(empty, empty, 3).values())
    assert all(math.isnan(v) for v in evaluate(empty, empty, 2, distances=False).values())


@pytest.mark.parametrize(("num_classes", "size", "close"), [
    (2, 10, lambda ours, theirs: abs(ours - theirs) < 1e-6),
    (4, 10, lambda ours, theirs: abs(ours - theirs) < 1e-6),
    (4, 32, lambda ours, theirs: abs(ours - theirs) < 1e-5 * ours),
])
def test_matches_monai(num_classes: int, size: int, close: Callable[[float, float], bool]) -> None:
    """Dice, IoU, HD and HD95 as MONAI computes them, where every class is in every truth: within
    1e-6 on 10x10 masks, within MONAI's float32 precision on larger ones (see noisyseg.metrics)."""
    truths = label_fields(20, size, num_classes, seed=num_classes)
    preds = label_fields(20, size, num_classes, seed=num_classes + 10)
    ours, theirs = evaluate(preds, truths, num_classes), monai_metrics(preds, truths, num_classes)
    assert set(ours) == set(theirs)
    assert all(close(ours[k], theirs[k]) for k in ours), {k: ours[k] - theirs[k] for k in ours}


def test_evaluate_multiclass_reports_per_class() -> None:
    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, :4] = 1
    truth[:, 4:6] = 2
    pred = truth.copy()
    pred[1, 4:6] = 1          # class 2 missed in image 1
    out = evaluate(pred, truth, num_classes=3)
    assert out["dice_class1"] < 1 and out["dice_class2"] == pytest.approx(0.5)
    assert out["dice"] == pytest.approx((out["dice_class1"] + out["dice_class2"]) / 2)


def test_detection_auroc() -> None:
    pos = np.array([1, 1, 0, 0, 0], bool)
    assert detection_auroc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), pos) == 1.0
    assert detection_auroc(np.array([0.1, 0.2, 0.9, 0.8, 0.7]), pos) == 0.0
    assert detection_auroc(np.ones(5), pos) == 0.5
    assert math.isnan(detection_auroc(np.ones(3), np.zeros(3, bool)))


# --------------------------------------------------------------------------- volumes, spacing
@given(volumes)
def test_volume_dice_of_mask_with_itself_is_one_and_hausdorff_zero(a: np.ndarray) -> None:
    assume(a.any())
    assert overlap(a, a) == (1.0, 1.0)
    assert hausdorff(a, a) == hausdorff(a, a, ANISOTROPIC) == (0.0, 0.0)


@given(st.data())
def test_volume_hausdorff_symmetric_and_hd95_below_hd(data: st.DataObject) -> None:
    a = data.draw(volumes)
    b = data.draw(arrays(bool, a.shape))
    spacing = data.draw(spacings)
    assume(a.any() or b.any())
    hd, hd95 = hausdorff(a, b, spacing)
    assert (hd, hd95) == hausdorff(b, a, spacing)
    assert 0 <= hd95 <= hd


@given(st.data())
def test_isotropic_spacing_scales_the_distances(data: st.DataObject) -> None:
    a = data.draw(volumes)
    b = data.draw(arrays(bool, a.shape))
    assume(a.any() or b.any())
    s = data.draw(st.sampled_from([0.5, 2.0, 3.0]))
    assert hausdorff(a, b, (s, s, s)) == pytest.approx(tuple(s * d for d in hausdorff(a, b)))
    assert hausdorff(a, b, (1, 1, 1)) == hausdorff(a, b)


@given(st.data())
def test_unit_spacing_keeps_2d_distances(data: st.DataObject) -> None:
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
    assume(a.any() or b.any())
    assert hausdorff(a, b, (1.0, 1.0)) == hausdorff(a, b)


def test_hand_computed_volume_overlap() -> None:
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[:2, :2, :2] = True       # 8 voxels
    b[:2, :2, :3] = True       # 12 voxels, 8 shared
    assert overlap(a, b) == pytest.approx((16 / 20, 8 / 12))
    truth = a.astype(np.int64) + 2 * (np.arange(4) == 3)[None, None, :]     # class 2: last column
    pred = truth.copy()
    pred[2, 0, 3] = 0                                                       # class 2: 11 of 12
    table = image_metrics(pred, truth, 3, distances=False)
    assert table.tolist() == [[1.0, 1.0], pytest.approx([22 / 23, 11 / 12])]
    out = evaluate(np.stack([pred, truth]), np.stack([truth, truth]), 3, distances=False)
    assert out["dice_class2"] == pytest.approx((22 / 23 + 1) / 2) and out["dice_class1"] == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_shifting_a_cube_by_k_voxels_gives_k_times_the_spacing(axis: int, k: int) -> None:
    a = np.zeros((16, 16, 16), bool)
    a[4:8, 4:8, 4:8] = True
    b = np.roll(a, k, axis=axis)
    assert hausdorff(a, b) == (k, k)
    assert hausdorff(a, b, ANISOTROPIC) == (k * ANISOTROPIC[axis], k * ANISOTROPIC[axis])
    hd = evaluate(b[None].astype(np.int64), a[None].astype(np.int64), 2, spacing=ANISOTROPIC)["hd"]
    assert hd == k * ANISOTROPIC[axis]


def test_missing_class_costs_the_physical_diagonal() -> None:
    empty, full = np.zeros((2, 3, 4), bool), np.ones((2, 3, 4), bool)
    assert all(math.isnan(v) for v in hausdorff(empty, empty, ANISOTROPIC))
    assert hausdorff(empty, full) == (math.sqrt(4 + 9 + 16),) * 2
    assert hausdorff(full, empty, ANISOTROPIC) == (math.sqrt(4**2 + 3**2 + 2**2),) * 2  # 4, 3, 2 mm
    assert hausdorff(empty[0], full[0], (3.0, 0.5)) == (math.hypot(9, 2),) * 2
    truth = np.zeros((1, 4, 8, 8), np.int64)
    truth[0, :2, :4, :4] = 1
    pred = truth.copy()
    pred[0, 3, 7, 7] = 2                                    # one stray voxel of class 2
    out = evaluate(pred, truth, 3, spacing=(2.5, 1.0, 1.0))
    assert out["dice_class2"] == 0.0 and out["hd_class2"] == pytest.approx(math.sqrt(10**2 + 8**2 + 8**2))


def test_spacing_must_match_the_masks() -> None:
    vols = np.zeros((2, 4, 4, 4), np.int64)
    with pytest.raises(ValueError, match="has 2 values but the masks have 3 spatial axes"):
        evaluate(vols, vols, 2, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive finite"):
        hausdorff(np.ones((2, 2), bool), np.ones((2, 2), bool), (1.0, 0.0))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or of volumes \(N, D, H, W\)"):
        image_table(vols[0, 0], vols[0, 0], 2)


def _label_volumes(n: int, shape: tuple[int, int, int], num_classes: int, seed: int) -> np.ndarray:
    """Smooth random (n, D, H, W) masks, every class in 1/num_classes of each (as label_fields)."""
    from scipy import ndimage

    noise = np.random.default_rng(seed).normal(size=(n, *shape))
    fields = ndimage.gaussian_filter(noise, (0, 1.0, 1.5, 1.5))
    cuts = np.quantile(fields, np.linspace(0, 1, num_classes + 1)[1:-1], axis=(1, 2, 3))  # (K-1, n)
    return (fields[:, None] > cuts.T[:, :, None, None, None]).sum(axis=1)


@pytest.mark.parametrize("spacing", [None, ANISOTROPIC, (1.2, 0.8, 0.8)])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_volumes_match_monai(num_classes: int, spacing: tuple[float, ...] | None) -> None:
    """Per volume and class, Dice and IoU as MONAI's within 1e-6, HD and HD95 (in mm) within its
    float32 precision (1e-5 relative, see noisyseg.metrics), every class in every truth."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    truths = _label_volumes(6, (10, 12, 14), num_classes, seed=num_classes)
    preds = _label_volumes(6, (10, 12, 14), num_classes, seed=num_classes + 10)
    ours = image_table(preds, truths, num_classes, spacing=spacing)      # (N, K-1, 4)

    def one_hot(labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.eye(num_classes, dtype=np.float32)[labels]).permute(0, 4, 1, 2, 3)

    y_pred, y = one_hot(preds), one_hot(truths)
    dice = compute_dice(y_pred, y, include_background=False).numpy()
    iou = compute_iou(y_pred, y, include_background=False).numpy()
    with warnings.catch_warnings():   # MONAI 1.5+ warns about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(y_pred, y, spacing=spacing).numpy()
        hd95 = compute_hausdorff_distance(y_pred, y, spacing=spacing, percentile=95).numpy()
    np.testing.assert_allclose(ours[..., 0], dice, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours[..., 1], iou, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours[..., 2], hd, rtol=1e-5, atol=0)
    np.testing.assert_allclose(ours[..., 3], hd95, rtol=1e-5, atol=0)
    assert np.all(ours[..., 2] > 0)          # the masks differ: not a vacuous comparison
