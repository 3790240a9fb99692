from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from noisyseg_noise.elastic import ElasticNoise, deform
from noisyseg_noise.morphology import DilationNoise, ErosionNoise, NoNoise, ball, disk
from noisyseg_noise.morphology import dilate as dilate_fn
from noisyseg_noise.morphology import erode as erode_fn
from scipy import ndimage

from noisyseg import Split, Splits
from noisyseg.data import build_train_set, choose_corrupted
from noisyseg.metrics import overlap

binary_masks = arrays(np.int64, st.tuples(st.integers(1, 24), st.integers(1, 24)),
                      elements=st.integers(0, 1))
seeds = st.integers(0, 2**32 - 1)
volume_shapes = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12))
binary_volumes = arrays(np.int64, volume_shapes, elements=st.integers(0, 1))
label_volumes = arrays(np.int64, volume_shapes, elements=st.integers(0, 2))   # 3 classes


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


# --------------------------------------------------------------------------- volumes
def test_ball_sizes() -> None:
    assert ball(1, 3).shape == (3, 3, 3) and ball(1, 3).sum() == 7     # the centre and 6 faces
    assert ball(2, 3).sum() == 33                   # + 12 edges (|o|^2 = 2), 8 corners, 6 at 2
    assert ball(0, 3).shape == (1, 1, 1) and ball(0, 3).all()
    for r in range(5):
        assert np.array_equal(ball(r, 2), disk(r))
    assert disk(3).sum() == 29


@pytest.mark.parametrize("cls", [DilationNoise, ErosionNoise, ElasticNoise, NoNoise])
def test_volume_noise_models_declare_3d(cls: type) -> None:
    assert cls.spatial_dims == (2, 3)


@given(binary_volumes, seeds)
def test_volume_dilation_contains_clean_foreground(mask: np.ndarray, seed: int) -> None:
    out = DilationNoise().corrupt(mask, np.random.default_rng(seed), 2)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert np.all(out[mask == 1] == 1)
    assert set(np.unique(out)) <= {0, 1}


@given(label_volumes, st.integers(0, 4))
def test_volume_dilation_grows_each_class(mask: np.ndarray, radius: int) -> None:
    """Each class keeps its voxels, unless a later class grows over them; labels stay in range."""
    out = dilate_fn(mask, radius, 3)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    for c in (1, 2):
        assert np.all(out[mask == c] >= c)
    assert np.all(out[mask == 2] == 2) and out.min() >= 0 and out.max() <= 2


@given(label_volumes, st.integers(0, 4))
def test_volume_erosion_shrinks_each_class(mask: np.ndarray, radius: int) -> None:
    out = erode_fn(mask, radius, 3)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    for c in (1, 2):
        assert np.all(mask[out == c] == c)
    assert np.all((out == mask) | (out == 0))


@given(binary_volumes, seeds)
def test_volume_erosion_is_contained_in_clean_foreground(mask: np.ndarray, seed: int) -> None:
    out = ErosionNoise().corrupt(mask, np.random.default_rng(seed), 2)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert np.all(mask[out == 1] == 1)


@given(label_volumes)
def test_volume_radius_zero_is_identity(mask: np.ndarray) -> None:
    zero = {"min_radius": 0, "max_radius": 0}
    for cls in (DilationNoise, ErosionNoise):
        out = cls(cls.Options(**zero)).corrupt(mask, np.random.default_rng(0), 3)
        assert np.array_equal(out, mask) and out is not mask
    assert np.array_equal(NoNoise().corrupt(mask, np.random.default_rng(0), 3), mask)


def test_volume_dilation_and_erosion_by_hand() -> None:
    point = np.zeros((15, 15, 15), np.int64)
    point[7, 7, 7] = 1
    for r in range(4):
        assert dilate_fn(point, r, 2).sum() == ball(r, 3).sum()
    cube = np.zeros((12, 12, 12), np.uint8)
    cube[2:10, 2:10, 2:10] = 1                                   # 8^3
    assert dilate_fn(cube, 1, 2).sum() == 8**3 + 6 * 8**2        # one layer on each face
    eroded = erode_fn(cube, 1, 2)
    assert eroded.dtype == np.uint8 and eroded.sum() == 6**3 and eroded[3:9, 3:9, 3:9].all()
    edge = np.ones((5, 5, 5), np.int64)                          # the border counts as background
    assert erode_fn(edge, 1, 2).sum() == 3**3


@pytest.mark.parametrize("cls", [DilationNoise, ErosionNoise, ElasticNoise, NoNoise])
@given(mask=label_volumes, seed=seeds)
def test_volume_noise_keeps_shape_dtype_range_and_is_deterministic(
    cls: type, mask: np.ndarray, seed: int
) -> None:
    before = mask.copy()
    noise = cls()
    a = noise.corrupt(mask, np.random.default_rng(seed), 3)
    b = noise.corrupt(mask, np.random.default_rng(seed), 3)
    assert np.array_equal(mask, before)
    assert a.shape == mask.shape and a.dtype == mask.dtype
    assert a.min() >= 0 and a.max() <= 2
    assert np.array_equal(a, b)


def test_masks_of_other_ranks_are_refused() -> None:
    for noise in (DilationNoise(), ErosionNoise(), ElasticNoise()):
        with pytest.raises(ValueError, match=r"\(D, H, W\) volume mask, got shape \(2, 4, 4, 4\)"):
            noise.corrupt(np.zeros((2, 4, 4, 4), np.int64), np.random.default_rng(0), 2)


def _cube(size: int = 16, lo: int = 4, hi: int = 12) -> np.ndarray:
    mask = np.zeros((size, size, size), np.int64)
    mask[lo:hi, lo:hi, lo:hi] = 1
    return mask


def test_elastic_volume_changes_the_mask_for_nonzero_sigma() -> None:
    only_sigma = {"sigma": (4.0, 4.0), "rotation": 0, "zoom": (1, 1), "translation": 0,
                  "dilation": (0, 0)}
    noise = ElasticNoise(ElasticNoise.Options(**only_sigma))
    for seed in range(5):
        out = noise.corrupt(_cube(), np.random.default_rng(seed), 2)
        assert out.shape == (16, 16, 16) and (out != _cube()).any()
    still = ElasticNoise(ElasticNoise.Options(**{**only_sigma, "sigma": (0, 0)}))
    assert np.array_equal(still.corrupt(_cube(), np.random.default_rng(0), 2), _cube())
    assert (ElasticNoise().corrupt(_cube(), np.random.default_rng(0), 2) != _cube()).any()


def test_elastic_volume_translation_shifts_along_every_axis() -> None:
    shift_only = {"sigma": (0, 0), "rotation": 0, "zoom": (1, 1), "translation": 2,
                  "dilation": (0, 0)}
    noise = ElasticNoise(ElasticNoise.Options(**shift_only))
    moved = set()
    for seed in range(20):
        out = noise.corrupt(_cube(), np.random.default_rng(seed), 2)
        assert out.sum() == 8**3                                      # the cube stays inside
        lows = [int(np.flatnonzero(out.any(axis=tuple(a for a in range(3) if a != k)))[0])
                for k in range(3)]
        moved |= {k for k in range(3) if lows[k] != 4}
    assert moved == {0, 1, 2}


@pytest.mark.parametrize(("angle", "zoom"), [(0.0, 1.0), (20.0, 1.2), (-35.0, 1.0)])
def test_volume_rotation_and_zoom_turn_each_slice_as_in_2d(angle: float, zoom: float) -> None:
    """A stack of equal slices, moved in-plane only, warps slice by slice as the image would."""
    rng = np.random.default_rng(0)
    image = np.zeros((24, 30))
    image[5:15, 8:20], image[18:22, 3:9] = 1, 1
    flat = rng.normal(0, 3, size=(2, 5, 5))
    in_plane = np.zeros((3, 5, 5, 5))
    in_plane[1:] = flat[:, None]
    expected = deform([image], flat, angle, zoom)[0]
    warped = deform([np.repeat(image[None], 8, axis=0)], in_plane, angle, zoom)[0]
    assert warped.shape == (8, 24, 30)
    np.testing.assert_allclose(warped, np.broadcast_to(expected, warped.shape), atol=1e-9)


def test_elastic_2d_draws_its_numbers_in_the_original_order() -> None:
    """2-D results depend on the draw order: sigma, (2, p, p) grid, angle, zoom, 2 shifts, radius."""
    mask = np.zeros((32, 32), np.int64)
    mask[8:20, 10:24] = 1
    noise = ElasticNoise()
    o, rng = noise.options, np.random.default_rng(5)
    sigma = rng.uniform(*o.sigma)
    grid = rng.normal(0.0, sigma, size=(2, o.points, o.points))
    angle, zoom = rng.uniform(-o.rotation, o.rotation), rng.uniform(*o.zoom)
    shift = rng.integers(-o.translation, o.translation + 1, size=2)
    radius = int(rng.integers(o.dilation[0], o.dilation[1] + 1))
    warped = deform([mask.astype(np.float64)], grid, angle, zoom)[0] > 0.5
    moved = ndimage.shift(warped.astype(np.int64), shift, order=0, mode="constant", cval=0)
    expected = dilate_fn(moved, radius, 2)
    assert np.array_equal(noise.corrupt(mask, np.random.default_rng(5), 2), expected)


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
