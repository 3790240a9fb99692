from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from noisyseg_noise.elastic import ElasticNoise
from noisyseg_noise.morphology import DilationNoise, ErosionNoise, disk
from noisyseg_noise.morphology import dilate as dilate_fn

from noisyseg import Split, Splits
from noisyseg.data import build_train_set, choose_corrupted
from noisyseg.metrics import overlap

binary_masks = arrays(np.int64, st.tuples(st.integers(1, 24), st.integers(1, 24)),
                      elements=st.integers(0, 1))
seeds = st.integers(0, 2**32 - 1)


@given(binary_masks, seeds)
def test_dilation_contains_clean_foreground(mask: np.ndarray, seed: int) -> None:
    out = DilationNoise().corrupt(mask, np.random.default_rng(seed), 2)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert np.all(out[mask == 1] == 1)


@given(binary_masks, seeds)
def test_erosion_is_contained_in_clean_foreground(mask: np.ndarray, seed: int) -> None:
    out = ErosionNoise().corrupt(mask, np.random.default_rng(seed), 2)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert np.all(mask[out == 1] == 1)


@given(binary_masks, seeds)
def test_elastic_keeps_shape_and_range(mask: np.ndarray, seed: int) -> None:
    out = ElasticNoise().corrupt(mask, np.random.default_rng(seed), 2)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert set(np.unique(out)) <= {0, 1}


def test_dilation_radius_follows_options() -> None:
    mask = np.zeros((21, 21), np.int64)
    mask[10, 10] = 1
    out = DilationNoise(DilationNoise.Options(min_radius=3, max_radius=3)).corrupt(
        mask, np.random.default_rng(0), 2
    )
    assert out.sum() == disk(3).sum() == 29


def test_dilation_radii_cover_zero_to_six() -> None:
    mask = np.zeros((31, 31), np.int64)
    mask[15, 15] = 1
    areas = {int(DilationNoise().corrupt(mask, np.random.default_rng(s), 2).sum()) for s in range(200)}
    assert areas == {int(disk(r).sum()) for r in range(7)}


def test_multiclass_dilation_grows_each_class() -> None:
    mask = np.zeros((20, 20), np.int64)
    mask[5, 5], mask[14, 14] = 1, 2
    out = dilate_fn(mask, 2, 3)
    assert (out == 1).sum() == disk(2).sum() and (out == 2).sum() == disk(2).sum()


def test_elastic_really_corrupts_lesion_masks() -> None:
    """Default elastic noise must change a 64x64 lesion mask a lot (mean Dice well below 1)."""
    from noisyseg_datasets.synthetic import SyntheticDataset

    masks = SyntheticDataset(SyntheticDataset.Options(n_train=40, n_meta=0, n_test=1)).load(0).train.masks
    noise = ElasticNoise()
    dice = [overlap(noise.corrupt(m, np.random.default_rng(i), 2) == 1, m == 1)[0]
            for i, m in enumerate(masks)]
    assert np.mean(dice) < 0.8


@pytest.mark.parametrize("n", [0, 1, 7, 10, 1000])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.55, 1.0])
def test_rate_corrupts_exactly_round_rn_images(n: int, rate: float) -> None:
    chosen = choose_corrupted(n, rate, seed=3)
    assert chosen.sum() == round(rate * n)
    assert np.array_equal(chosen, choose_corrupted(n, rate, seed=3))


def test_train_set_keeps_clean_beside_noisy_and_appends_clean_meta() -> None:
    rng = np.random.default_rng(0)
    masks = (rng.uniform(size=(10, 16, 16)) > 0.8).astype(np.int64)
    split = Split(rng.normal(size=(10, 1, 16, 16)).astype(np.float32), masks)
    meta = Split(split.images[:3], masks[:3])
    splits = Splits(train=split, meta=meta, test=split, num_classes=2)
    noise = DilationNoise(DilationNoise.Options(min_radius=1, max_radius=1))
    ts = build_train_set(splits, noise, rate=0.4, seed=0, include_meta=True)
    assert len(ts) == 13 and int(ts.corrupted.sum()) == 4
    assert np.array_equal(ts.clean[:10].numpy(), masks)
    changed = (ts.noisy != ts.clean).flatten(1).any(1)
    assert not changed[~ts.corrupted].any()          # untouched images stay clean
    assert changed[ts.corrupted].all()               # radius 1 changes every non-empty mask
    assert not ts.corrupted[10:].any()               # meta images are never corrupted
