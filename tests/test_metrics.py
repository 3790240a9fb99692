from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from noisyseg.metrics import detection_auroc, evaluate, hausdorff, overlap

masks = arrays(bool, st.tuples(st.integers(1, 16), st.integers(1, 16)))


@given(masks)
def test_dice_of_mask_with_itself_is_one(a: np.ndarray) -> None:
    assert overlap(a, a) == (1.0, 1.0)


@given(st.data())
def test_dice_and_iou_symmetric_and_bounded(data: st.DataObject) -> None:
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
    d1, i1 = overlap(a, b)
    d2, i2 = overlap(b, a)
    assert d1 == d2 and i1 == i2
    assert 0 <= i1 <= d1 <= 1


@given(masks)
def test_hausdorff_of_identical_masks_is_zero(a: np.ndarray) -> None:
    assert hausdorff(a, a) == (0.0, 0.0)


@given(st.data())
def test_hausdorff_symmetric_and_hd95_below_hd(data: st.DataObject) -> None:
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
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
    assert overlap(empty, empty) == (1.0, 1.0)
    assert hausdorff(empty, empty) == (0.0, 0.0)
    assert overlap(empty, full) == (0.0, 0.0)
    assert hausdorff(empty, full) == (5.0, 5.0)     # the image diagonal


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
