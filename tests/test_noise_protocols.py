"""The literature's noise protocols: ``alphabeta``, ``markov``, ``jsrt`` and ``pseudo``, and the
NoiseModel hooks they use (``image_share``, ``prepare``, ``corrupt_at``) and the noise metrics."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from noisyseg_noise.alphabeta import AlphaBetaNoise, grow_to, move
from noisyseg_noise.classwise import inner_ring, outer_ring, shift
from noisyseg_noise.jsrt import JSRTNoise, disks_on_ring
from noisyseg_noise.markov import MarkovNoise, markov_boundary
from noisyseg_noise.pseudo import PseudoNoise
from scipy import ndimage

import noisyseg
from noisyseg import DataError, NoiseModel, Split, Splits
from noisyseg.data import build_train_set, choose_corrupted, corrupt_image, prepare_noise
from noisyseg.testing import check_noise_model, tiny_run_config

binary_masks = arrays(np.int64, st.tuples(st.integers(1, 24), st.integers(1, 24)),
                      elements=st.integers(0, 1))
label_masks = arrays(np.int64, st.tuples(st.integers(1, 20), st.integers(1, 20)),
                     elements=st.integers(0, 2))
label_volumes = arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
                       elements=st.integers(0, 2))
seeds = st.integers(0, 2**32 - 1)
#: small settings that keep the tests fast
FAST_PSEUDO = {"images": 4, "epochs": 6, "batch_size": 4, "base_channels": 4, "depth": 1}
GEOMETRIC = [AlphaBetaNoise, MarkovNoise, JSRTNoise]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """The weak models and tiny runs here are far too small to gain from a second thread (and
    lose a lot to it on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --------------------------------------------------------------------------- every one
@pytest.mark.parametrize(("cls", "options"), [(AlphaBetaNoise, {}), (AlphaBetaNoise, {"alpha": 0.3}),
                                              (MarkovNoise, {}), (JSRTNoise, {}),
                                              (PseudoNoise, FAST_PSEUDO)])
def test_passes_the_contract_check(cls: type[NoiseModel], options: dict) -> None:
    check_noise_model(cls, options)


@pytest.mark.parametrize("cls", GEOMETRIC)
@given(mask=label_masks, seed=seeds)
def test_keeps_shape_dtype_range_and_is_deterministic(cls: type[NoiseModel], mask: np.ndarray,
                                                      seed: int) -> None:
    before, noise = mask.copy(), cls()
    a = noise.corrupt(mask, np.random.default_rng(seed), 3)
    b = noise.corrupt(mask, np.random.default_rng(seed), 3)
    assert np.array_equal(mask, before) and np.array_equal(a, b)
    assert a.shape == mask.shape and a.dtype == mask.dtype and a.min() >= 0 and a.max() <= 2


@pytest.mark.parametrize("cls", GEOMETRIC)
@given(mask=label_volumes, seed=seeds)
def test_volumes_keep_shape_dtype_range_and_are_deterministic(cls: type[NoiseModel], mask: np.ndarray,
                                                              seed: int) -> None:
    noise = cls()
    assert 3 in cls.spatial_dims
    a = noise.corrupt(mask, np.random.default_rng(seed), 3)
    assert a.shape == mask.shape and a.dtype == mask.dtype and a.min() >= 0 and a.max() <= 2
    assert np.array_equal(a, noise.corrupt(mask, np.random.default_rng(seed), 3))


@pytest.mark.parametrize("cls", GEOMETRIC)
def test_masks_of_other_ranks_are_refused(cls: type[NoiseModel]) -> None:
    with pytest.raises(ValueError, match=r"\(D, H, W\) volume mask, got shape \(2, 4, 4, 4\)"):
        cls().corrupt(np.zeros((2, 4, 4, 4), np.int64), np.random.default_rng(0), 2)


@pytest.mark.parametrize("cls", GEOMETRIC)
def test_an_empty_mask_stays_empty(cls: type[NoiseModel]) -> None:
    empty = np.zeros((20, 20), np.int64)
    assert not cls().corrupt(empty, np.random.default_rng(0), 2).any()


def test_the_new_models_are_registered(registry) -> None:
    assert {"alphabeta", "markov", "jsrt", "pseudo"} <= set(registry.names("noise"))


# --------------------------------------------------------------------------- alphabeta
@given(st.floats(0, 1), st.floats(0, 1))
def test_alpha_sets_the_image_share_instead_of_the_rate(alpha: float, rate: float) -> None:
    assert AlphaBetaNoise().image_share(rate) == rate
    assert AlphaBetaNoise(AlphaBetaNoise.Options(alpha=alpha)).image_share(rate) == alpha
    assert NoiseModel().image_share(rate) == rate


def test_the_images_of_a_smaller_alpha_are_among_those_of_a_larger_one() -> None:
    shares = [AlphaBetaNoise(AlphaBetaNoise.Options(alpha=a)).image_share(0.9) for a in (0.3, 0.5, 0.7)]
    chosen = [choose_corrupted(101, s, seed=4) for s in shares]
    assert [int(c.sum()) for c in chosen] == [30, 50, 71]  # round(a * N)
    assert not (chosen[0] & ~chosen[1]).any() and not (chosen[1] & ~chosen[2]).any()


def test_alpha_decides_how_many_training_images_are_corrupted() -> None:
    rng = np.random.default_rng(0)
    masks = np.stack([_disk(24, *rng.uniform(8, 16, 2), 4) for _ in range(20)]).astype(np.int64)
    split = Split(rng.normal(size=(20, 1, 24, 24)).astype(np.float32), masks)
    splits = Splits(train=split, meta=Split(split.images[:2], masks[:2]), test=split, num_classes=2)
    noise = AlphaBetaNoise(AlphaBetaNoise.Options(alpha=0.7, beta=0.5))
    train = build_train_set(splits, noise, rate=0.2, seed=1, include_meta=False)
    assert int(train.corrupted.sum()) == 14
    changed = (train.noisy != train.clean).flatten(1).any(1)
    assert changed[train.corrupted].all() and not changed[~train.corrupted].any()


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("grow", [True, False])
def test_dilation_and_erosion_keep_the_closer_of_the_last_two_masks(beta: float, grow: bool) -> None:
    """One cross step at a time until |FG| passes |FG| +- int(beta |FG|): the closer of the last
    two masks (the later one on a tie, as the original)."""
    fg = _disk(64, 31.3, 30.8, 12)
    n = int(fg.sum())
    target = n + int(beta * n) if grow else n - int(beta * n)
    cross = ndimage.generate_binary_structure(2, 1)
    masks = [fg]
    while (masks[-1].sum() < target) if grow else (masks[-1].sum() > target):
        masks.append((ndimage.binary_dilation if grow else ndimage.binary_erosion)(masks[-1], cross))
    gap = lambda m: abs(int(m.sum()) - target)  # noqa: E731
    expected = masks[-2] if len(masks) > 1 and gap(masks[-2]) < gap(masks[-1]) else masks[-1]
    out = grow_to(fg, beta, grow)
    assert np.array_equal(out, expected)
    assert gap(out) <= 2 * np.pi * 16  # within one step (one outline) of the target


@given(binary_masks, st.floats(0, 1), st.booleans())
def test_grow_to_never_empties_or_fills_the_image(mask: np.ndarray, beta: float, grow: bool) -> None:
    fg = mask.astype(bool)
    out = grow_to(fg, beta, grow)
    assert out.shape == fg.shape
    if fg.any() and not fg.all():
        assert out.any() and not (out.all() and not fg.all())
    assert not (fg & ~out).any() if grow else not (out & ~fg).any()


@pytest.mark.parametrize("beta", [0.3, 0.5, 0.7])
def test_a_move_changes_about_beta_of_the_foreground(beta: float) -> None:
    fg = _disk(96, 48, 48, 14)
    for seed in range(6):
        out = move(fg, beta, np.random.default_rng(seed), 30.0, 100, 20)
        changed = np.count_nonzero(out != fg) / fg.sum()
        assert abs(changed - beta) < 0.12, (seed, changed)
        assert abs(int(out.sum()) - int(fg.sum())) < 0.1 * fg.sum()  # moved, not shrunk


def test_a_move_keeps_the_closest_mask_it_tried() -> None:
    """Without rotation, the kept shift's change is the closest to beta of every shift tried."""
    fg = _disk(64, 32, 32, 8)
    out = move(fg, 0.5, np.random.default_rng(3), 0.0, 100, 20)
    got = np.count_nonzero(out != fg) / fg.sum()
    direction = next(d for d in [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
                     if any(np.array_equal(out, shift(fg, (d[0] * k, d[1] * k))) for k in range(20)))
    every = [np.count_nonzero(shift(fg, (direction[0] * k, direction[1] * k)) != fg) / fg.sum()
             for k in range(101)]
    assert abs(got - 0.5) == pytest.approx(min(abs(e - 0.5) for e in every))


def test_alphabeta_uses_each_of_its_three_corruptions() -> None:
    fg = _disk(48, 24, 24, 8).astype(np.int64)
    noise = AlphaBetaNoise(AlphaBetaNoise.Options(beta=0.5))
    grown = shrunk = moved = 0
    for seed in range(30):
        out = noise.corrupt(fg, np.random.default_rng(seed), 2)
        grown += out.sum() > fg.sum() * 1.3 and not (fg & ~out).any()
        shrunk += out.sum() < fg.sum() * 0.7 and not (out & ~fg).any()
        moved += abs(int(out.sum()) - int(fg.sum())) < 0.15 * fg.sum()
    assert grown and shrunk and moved and grown + shrunk + moved == 30


# --------------------------------------------------------------------------- markov
@given(binary_masks)
def test_the_boundary_is_at_distance_exactly_one(mask: np.ndarray) -> None:
    """As the original finds it: distance_transform_edt(1 - mask) == 1 and (mask) == 1."""
    fg = mask.astype(bool)
    if fg.any() and not fg.all():
        assert np.array_equal(outer_ring(fg), ndimage.distance_transform_edt(~fg) == 1)
        assert np.array_equal(inner_ring(fg), ndimage.distance_transform_edt(fg) == 1)


@given(binary_masks, seeds)
def test_markov_only_grows_or_only_shrinks_before_flips_and_blur(mask: np.ndarray, seed: int) -> None:
    fg = mask.astype(bool)
    grown = markov_boundary(fg, np.random.default_rng(seed), 20, 1.0, 0.3, 0.0, 0.0)
    shrunk = markov_boundary(fg, np.random.default_rng(seed), 20, 0.0, 0.3, 0.0, 0.0)
    assert not (fg & ~grown).any() and not (shrunk & ~fg).any()
    assert np.array_equal(markov_boundary(fg, np.random.default_rng(seed), 20, 0.5, 0.0, 0.0, 0.0), fg)


def test_markov_drifts_by_at_least_t_times_2theta1_minus_1_times_theta2() -> None:
    """Each step moves about theta2 of the outline's pixels: at least T |2 theta1 - 1| theta2 =
    5.4 px net, more as the outline roughens (measured +10 / -11 px on this disk)."""
    fg = _disk(96, 48, 48, 20)
    for theta1, sign in ((0.8, 1), (0.2, -1)):
        radii = []
        for seed in range(5):
            out = markov_boundary(fg, np.random.default_rng(seed), 180, theta1, 0.05, 0.0, 0.0)
            radii.append(np.sqrt(out.sum() / np.pi))
        drift = np.mean(radii) - np.sqrt(fg.sum() / np.pi)
        assert 5.4 < sign * drift < 15, drift


def test_markov_blur_cleans_the_random_flips() -> None:
    fg = _disk(64, 32, 32, 14)
    out = markov_boundary(fg, np.random.default_rng(0), 0, 0.5, 0.05, 0.2, None)
    labelled, n = ndimage.label(out)
    sizes = np.bincount(labelled.ravel())[1:]
    assert sizes.max() > 0.9 * fg.sum() and sizes.sum() - sizes.max() < 10  # a speck or two survive
    assert np.count_nonzero(out != fg) < 0.15 * fg.sum()
    noisy = markov_boundary(fg, np.random.default_rng(0), 0, 0.5, 0.05, 0.2, 0.0)
    assert np.count_nonzero(noisy != fg) > 0.15 * noisy.size  # without the blur: salt and pepper


def test_markov_is_fast() -> None:
    """A 48x48 mask with T = 180 in a fraction of a second (vectorised steps; about 17 ms on a
    2-core CPU, a loop over pixels takes seconds): the bound leaves room for a loaded machine."""
    mask = _disk(48, 24, 24, 8).astype(np.int64)
    noise = MarkovNoise(MarkovNoise.Options(steps=180))
    best = np.inf
    for seed in range(5):
        start = time.perf_counter()
        noise.corrupt(mask, np.random.default_rng(seed), 2)
        best = min(best, time.perf_counter() - start)
    assert best < 0.25, best


def test_markov_on_volumes_grows_a_ball() -> None:
    ball = (sum((g - 8) ** 2 for g in np.indices((16, 16, 16))) <= 25).astype(np.int64)
    noise = MarkovNoise(MarkovNoise.Options(steps=40, theta1=1.0, theta2=0.1, theta3=0.0))
    out = noise.corrupt(ball, np.random.default_rng(0), 2)
    assert out.sum() > ball.sum()


# --------------------------------------------------------------------------- jsrt
@pytest.mark.parametrize("radius", [1, 3, 6])
def test_jsrt_dilation_and_erosion_are_r_cross_steps(radius: int) -> None:
    fg = _disk(64, 31.5, 32.2, 12)
    one = {"min_radius": radius, "max_radius": radius}
    grow = JSRTNoise(JSRTNoise.Options(p_dilate=1.0, p_erode=0.0, **one))
    shrink = JSRTNoise(JSRTNoise.Options(p_dilate=0.0, p_erode=1.0, **one))
    cross = ndimage.generate_binary_structure(2, 1)
    m = fg.astype(np.int64)
    assert np.array_equal(grow.corrupt(m, np.random.default_rng(0), 2) == 1,
                          ndimage.binary_dilation(fg, cross, iterations=radius))
    assert np.array_equal(shrink.corrupt(m, np.random.default_rng(0), 2) == 1,
                          ndimage.binary_erosion(fg, cross, iterations=radius))


@given(binary_masks, seeds)
def test_jsrt_edge_distortion_stays_within_a_radius_of_the_outline(mask: np.ndarray, seed: int) -> None:
    noise = JSRTNoise(JSRTNoise.Options(p_dilate=0.0, p_erode=0.0, min_radius=1, max_radius=2,
                                        edge_share=0.3))
    out = noise.corrupt(mask, np.random.default_rng(seed), 2)
    changed = out != mask
    if changed.any():
        fg = mask == 1
        outline = outer_ring(fg) | inner_ring(fg)
        # a disk of radius <= 2 on the outer ring (of the mask, or of the grown mask) reaches <= 5 px
        assert ndimage.distance_transform_edt(~outline)[changed].max() <= 5


def test_jsrt_disks_sit_on_a_tenth_of_the_outline() -> None:
    fg = _disk(64, 32, 32, 15)
    ring = outer_ring(fg)
    disks = disks_on_ring(fg, np.random.default_rng(1), 0, 0, 0.1)  # radius 0: the centres alone
    assert disks.sum() == int(ring.sum() * 0.1) and not (disks & ~ring).any()


def test_jsrt_radii_scale_the_damage() -> None:
    fg = _disk(48, 24, 24, 8).astype(np.int64)
    small = JSRTNoise(JSRTNoise.Options(min_radius=1, max_radius=2))
    large = JSRTNoise()
    hurt = lambda noise: np.mean([np.count_nonzero(noise.corrupt(fg, np.random.default_rng(s), 2) != fg)  # noqa: E731
                                  for s in range(20)])
    assert hurt(small) < hurt(large) / 3
    with pytest.raises(ValueError, match="min_radius"):
        JSRTNoise.Options(min_radius=3, max_radius=2)
    with pytest.raises(ValueError, match="p_dilate"):
        JSRTNoise.Options(p_dilate=0.6, p_erode=0.6)


# --------------------------------------------------------------------------- pseudo
def _splits(n_train: int = 12, n_meta: int = 6, size: int = 24, seed: int = 0) -> Splits:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        masks = np.stack([_disk(size, *rng.uniform(7, size - 7, 2), rng.uniform(3, 6))
                          for _ in range(n)]).astype(np.int64)
        images = masks[:, None] + 0.3 * rng.normal(size=(n, 1, size, size))
        return Split(images.astype(np.float32), masks)

    return Splits(train=split(n_train), meta=split(n_meta), test=split(2), num_classes=2)


def test_pseudo_labels_are_the_weak_model_s_predictions_of_the_images(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NOISYSEG_CACHE", str(tmp_path))
    splits = _splits()
    noise = PseudoNoise(PseudoNoise.Options(**FAST_PSEUDO))
    with pytest.raises(DataError, match="prepare"):
        noise.corrupt_at(splits.train.masks[0], 0, np.random.default_rng(0), 2)
    with pytest.raises(DataError, match="prepare"):
        noise.corrupt(splits.train.masks[0], np.random.default_rng(0), 2)
    noise.prepare(splits, 0)
    labels = np.stack([noise.corrupt_at(m, i, np.random.default_rng(0), 2)
                       for i, m in enumerate(splits.train.masks)])
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= {0, 1}
    # out of sample: the training masks play no part (the weak model never saw them)
    other = Splits(train=Split(splits.train.images, 1 - splits.train.masks), meta=splits.meta,
                   test=splits.test, num_classes=2)
    again = PseudoNoise(PseudoNoise.Options(**FAST_PSEUDO, cache=False))
    again.prepare(other, 0)
    relabelled = [again.corrupt_at(m, i, None, 2) for i, m in enumerate(other.train.masks)]
    assert np.array_equal(np.stack(relabelled), labels)


def test_pseudo_labels_are_cached_per_data_and_seed(tmp_path: Path, monkeypatch) -> None:
    import noisyseg_noise.pseudo as pseudo

    monkeypatch.setenv("NOISYSEG_CACHE", str(tmp_path))
    splits = _splits()
    first = PseudoNoise(PseudoNoise.Options(**FAST_PSEUDO))
    first.prepare(splits, 0)
    assert len(list(tmp_path.glob("pseudo-*/done.json"))) == 1

    def no_training(*args: object) -> None:
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(pseudo, "train_weak_model", no_training)
    second = PseudoNoise(PseudoNoise.Options(**FAST_PSEUDO))
    second.prepare(splits, 0)
    for i, m in enumerate(splits.train.masks):
        assert np.array_equal(first.corrupt_at(m, i, None, 2), second.corrupt_at(m, i, None, 2))
    monkeypatch.undo()
    monkeypatch.setenv("NOISYSEG_CACHE", str(tmp_path))
    PseudoNoise(PseudoNoise.Options(**FAST_PSEUDO)).prepare(splits, 1)      # another seed
    PseudoNoise(PseudoNoise.Options(**FAST_PSEUDO)).prepare(_splits(seed=5), 0)  # other data
    assert len(list(tmp_path.glob("pseudo-*/done.json"))) == 3


def test_pseudo_needs_a_meta_split() -> None:
    splits = _splits()
    empty = Splits(train=splits.train, meta=Split(splits.meta.images[:0], splits.meta.masks[:0]),
                   test=splits.test, num_classes=2)
    with pytest.raises(DataError, match="meta split is empty"):
        PseudoNoise(PseudoNoise.Options(**FAST_PSEUDO)).prepare(empty, 0)


def test_prepare_runs_only_when_some_image_is_corrupted() -> None:
    calls = []

    class Counting(NoiseModel):
        name = "counting"

        def prepare(self, splits: Splits, seed: int) -> None:
            calls.append(seed)

        def corrupt_at(self, mask: np.ndarray, index: int, rng: np.random.Generator,
                       num_classes: int) -> np.ndarray:
            return np.full_like(mask, index % num_classes)

    splits = _splits()
    prepare_noise(Counting(), splits, 0.0, 3)
    assert calls == []
    prepare_noise(Counting(), splits, 0.5, 3)
    assert calls == [3]
    # the core passes the image's index through corrupt_at
    assert (corrupt_image(splits.train.masks[5], 5, Counting(), 0, 2) == 1).all()


# --------------------------------------------------------------------------- runs
def test_the_command_line_takes_alpha_and_beta_and_the_run_reports_the_noise(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from noisyseg.cli import cli

    out = tmp_path / "r"
    result = CliRunner().invoke(cli, [
        "run", "--noise", "alphabeta", "--set", "noise.options.alpha=0.5",
        "--set", "noise.options.beta=0.7", "--noise-rate", "0.2", "--out", str(out), "-q",
        "--epochs", "1", "--batch-size", "8",
        "--set", "dataset.options={size: 32, n_train: 24, n_meta: 8, n_test: 4}",
        "--set", "backbone.options={base_channels: 4, depth: 2}", "--set", "output.figure_images=0",
    ])
    assert result.exit_code == 0, result.output
    saved = (out / "config.yaml").read_text()
    assert "alpha: 0.5" in saved and "beta: 0.7" in saved
    m = json.loads((out / "metrics.json").read_text())
    assert m["noise_image_share"] == pytest.approx(12 / 32)  # alpha: 12 of 24 training images (+ 8 meta)
    assert m["noise_fp_share"] > 0 and m["noise_fn_share"] > 0
    # binary masks: every changed pixel is a false positive or a false negative
    assert m["noise_fp_share"] + m["noise_fn_share"] == pytest.approx(m["train_label_error_initial"])


def test_a_run_and_an_audit_train_on_the_same_pseudo_labels(tmp_path: Path) -> None:
    noise = {"name": "pseudo", "rate": 0.5, "options": FAST_PSEUDO}
    config = tiny_run_config(noise=noise, train={"max_steps": 1},
                             output={"dir": str(tmp_path / "audit"), "figure_images": 0})
    seen: dict[int, np.ndarray] = {}

    def observe(index: np.ndarray, probs: np.ndarray, given: np.ndarray, clean: np.ndarray) -> None:
        seen.update(zip(index.tolist(), given, strict=True))

    noisyseg.audit(config, folds=2, progress=False, top=0, observe=observe)
    registry = noisyseg.Registry(noisyseg.build_plugin_manager())
    splits = registry.build("dataset", "synthetic", config["dataset"]["options"]).load(0)
    model = registry.build("noise", "pseudo", FAST_PSEUDO)
    prepare_noise(model, splits, 0.5, 0)
    train = build_train_set(splits, model, 0.5, 0, include_meta=False)
    assert int(train.corrupted.sum()) == 12
    assert np.array_equal(np.stack([seen[i] for i in range(len(splits.train))]), train.noisy.numpy())
