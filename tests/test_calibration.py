"""Calibration on the clean meta images (train.calibrate): the offset search, the Calibrated
network, and a run that uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import noisyseg
from noisyseg import ConfigError
from noisyseg.calibration import Calibrated, fit_offsets, offset_logits
from noisyseg.metrics import evaluate
from noisyseg.outputs import predict

TINY = {
    "dataset": {"name": "synthetic", "options": {"n_train": 32, "n_meta": 8, "n_test": 8, "size": 32,
                                                 "max_radius": 6.0}},
    "backbone": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
    "train": {"epochs": 2, "batch_size": 8, "train_on_meta": False},
    "noise": {"rate": 0.8},
    "output": {"figure_images": 0, "overwrite": True},
}


def ramp(n: int = 4, size: int = 16, dims: int = 2) -> torch.Tensor:
    """A smooth score per pixel, different in every image.

    Shape:
        returns (n, *[size] * dims)
    """
    g = torch.Generator().manual_seed(0)
    return torch.randn((n, *[size] * dims), generator=g).cumsum(-1) / 2


@pytest.mark.parametrize("dims", [2, 3])
def test_a_biased_binary_net_gets_the_offset_that_undoes_its_bias(dims: int) -> None:
    score = ramp(dims=dims, size=16 if dims == 2 else 8)
    truth = (score > 0).long().numpy()
    logits = (score + 1.5).unsqueeze(1)  # over-segments: its decision is 1.5 too generous
    offsets, before, after = fit_offsets(logits, truth, 2)
    assert offsets[0] == 0 and offsets[1] - offsets[0] == pytest.approx(-1.5, abs=0.05)
    assert after == 1.0 > before
    assert before == evaluate((logits[:, 0] > 0).long().numpy(), truth, 2, distances=False)["dice"]


def test_a_calibrated_net_keeps_offset_zero() -> None:
    score = ramp()
    offsets, before, after = fit_offsets(score.unsqueeze(1), (score > 0).long().numpy(), 2)
    assert (offsets == 0).all() and before == after == 1.0


def test_three_classes_each_get_their_offset() -> None:
    score = ramp(n=6, size=24)
    truth = torch.bucketize(score, torch.tensor([-0.5, 0.5])).numpy()  # 0 | 1 | 2 by score
    centres = torch.tensor([-1.0, 0.0, 1.0])
    logits = -(score.unsqueeze(1) - centres.view(1, 3, 1, 1)) ** 2  # nearest centre wins: exact
    logits[:, 2] += 0.6  # class 2 takes too much
    assert (offset_logits(logits, np.zeros(3)).numpy() != truth).any()
    offsets, before, after = fit_offsets(logits, truth, 3)
    assert offsets[2] < -0.3 and after > 0.98 > before + 0.1  # greedy from 0 stopped at 0.945


def test_a_class_absent_from_the_calibration_images_keeps_offset_zero() -> None:
    score = ramp(n=4, size=16)
    truth = (score > 0).long().numpy()  # classes 0 and 1 only
    logits = torch.stack([-score, score + 0.8, torch.zeros_like(score) - 1], dim=1)
    offsets, before, after = fit_offsets(logits, truth, 3)
    assert offsets[2] == 0 and offsets[1] < 0 and after > before  # not pushed down to GRID[0]


def test_the_fingerprint_reads_values_not_storage() -> None:
    from noisyseg.calibration import fingerprint
    from noisyseg.components import Split

    images = np.random.default_rng(0).random((3, 1, 4, 4))
    masks = np.eye(4, dtype=np.int64)[None].repeat(3, 0)
    a = fingerprint(Split(images.astype(np.float32), masks))
    assert a == fingerprint(Split(images.astype(np.float32).astype(np.float64), masks.astype(np.uint8)))
    assert a != fingerprint(Split(images.astype(np.float32), masks[::-1].copy() * 0))
    assert a != fingerprint(Split(images.astype(np.float32).reshape(3, 1, 2, 8), masks.reshape(3, 2, 8)))


def test_nothing_to_score_leaves_the_offsets_at_zero() -> None:
    offsets, before, after = fit_offsets(torch.randn(2, 1, 8, 8), np.zeros((2, 8, 8), np.int64), 2)
    assert (offsets == 0).all() and before != before and after != after


@pytest.mark.parametrize("channels", [1, 3])
def test_calibrated_adds_the_offsets_to_the_logits(channels: int) -> None:
    net = torch.nn.Conv2d(2, channels, 1)
    offsets = torch.tensor([0.2, -0.7, 0.4][: max(channels, 2)])
    x = torch.randn(3, 2, 5, 5)
    calibrated = Calibrated(net, offsets)
    assert torch.equal(predict(calibrated(x)), offset_logits(net(x).detach(), offsets.numpy()))
    shift = (offsets[1] - offsets[0]) if channels == 1 else offsets.view(1, -1, 1, 1)
    torch.testing.assert_close(calibrated(x), net(x) + shift)
    assert set(calibrated.state_dict()) == {"net.weight", "net.bias", "offsets"}


def test_a_calibrated_run_trains_as_an_uncalibrated_one_and_reports_both(tmp_path: Path) -> None:
    plain = noisyseg.run(TINY, output={"dir": str(tmp_path / "p")}, progress=False)
    calibrated = noisyseg.run(TINY, train={**TINY["train"], "calibrate": True},
                              output={"dir": str(tmp_path / "c")}, progress=False)
    m = calibrated.metrics
    assert m["dice_uncalibrated"] == plain.metrics["dice"]  # training is the same; only the decision moves
    assert isinstance(calibrated.model, Calibrated) and not isinstance(plain.model, Calibrated)
    assert m["calibration_offset"] == pytest.approx(float(calibrated.model.offsets[1]))
    assert m["meta_dice_calibrated"] >= m["meta_dice_uncalibrated"]
    assert "calibration_offset" in (tmp_path / "c" / "metrics.json").read_text()
    bare = calibrated.model.net  # the reported Dice is the calibrated model's, scored afresh here
    from noisyseg import Registry, build_plugin_manager
    from noisyseg.datacache import load_splits
    from noisyseg.step import predict_all

    splits = load_splits(Registry(build_plugin_manager()).build(
        "dataset", "synthetic", TINY["dataset"]["options"]), 0)
    images = torch.from_numpy(np.asarray(splits.test.images))
    for model, key in ((calibrated.model, "dice"), (bare, "dice_uncalibrated")):
        pred = predict_all(model, images, torch.device("cpu"))
        scored = evaluate(pred, np.asarray(splits.test.masks), 2, distances=False)["dice"]
        assert scored == pytest.approx(m[key])
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, bare.state_dict()[k]), k


def test_calibrate_refuses_meta_images_that_were_trained_on(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.calibrate .*train.train_on_meta=false"):
        noisyseg.run(TINY, train={"epochs": 1, "calibrate": True, "train_on_meta": None},
                     output={"dir": str(tmp_path / "x")}, progress=False)
    with pytest.raises(ConfigError, match="train.calibrate needs a meta split"):
        noisyseg.run({**TINY, "dataset": {"name": "synthetic", "options": {
            "n_train": 16, "n_meta": 0, "n_test": 4, "size": 32}}},
            train={"epochs": 1, "calibrate": True, "train_on_meta": False},
            output={"dir": str(tmp_path / "y")}, progress=False)


def test_calibration_share_sets_the_same_meta_images_aside_for_every_run_of_a_seed(tmp_path: Path) -> None:
    from noisyseg import Registry, build_plugin_manager
    from noisyseg.calibration import hold_out
    from noisyseg.datacache import load_splits

    dataset = Registry(build_plugin_manager()).build("dataset", "synthetic", TINY["dataset"]["options"])
    splits = load_splits(dataset, 0)
    rest, aside = hold_out(splits, 0.25, seed=3)
    assert len(aside) == 2 and len(rest.meta) == 6 and len(rest.train) == len(splits.train)
    seen = {m.tobytes() for m in rest.meta.masks}
    assert not seen & {m.tobytes() for m in aside.masks}  # disjoint, and together the meta split
    assert sorted(seen | {m.tobytes() for m in aside.masks}) == sorted(m.tobytes() for m in splits.meta.masks)
    again = hold_out(splits, 0.25, seed=3)[1]
    assert np.array_equal(again.images, aside.images)
    assert len(hold_out(splits, 0.01, seed=3)[1]) == 1 and len(hold_out(splits, 0.99, seed=3)[0].meta) == 1


def test_with_a_calibration_share_the_rest_of_the_meta_split_may_be_trained_on(tmp_path: Path) -> None:
    share = {**TINY["train"], "calibrate": True, "calibration_share": 0.25, "train_on_meta": True}
    result = noisyseg.run(TINY, train=share, output={"dir": str(tmp_path / "s")}, progress=False)
    assert result.metrics["calibration_images"] == 2
    from noisyseg.data import steps_per_epoch

    assert result.metrics["steps"] == 2 * steps_per_epoch(32 + 6, 8)  # the 2 set aside: not trained on
    tuned = noisyseg.run(TINY, train={**share, "meta_only": True, "init_from": str(tmp_path / "s")},
                         output={"dir": str(tmp_path / "f")}, progress=False)
    assert tuned.metrics["calibration_images"] == 2 and "calibration_offset" in tuned.metrics
    assert tuned.metrics["steps"] == 2 * steps_per_epoch(6, 8)  # meta_only: the 6 left
    with pytest.raises(ConfigError, match="calibrate is false"):
        noisyseg.run(TINY, train={**share, "calibrate": False}, output={"dir": str(tmp_path / "x")},
                     progress=False)


def test_calibration_never_fits_on_images_a_network_of_the_run_learned_from(tmp_path: Path) -> None:
    """A meta reweighter learns from the meta images; a fine-tune's start run may have trained on
    them: both need images set aside, the same ones for a fine-tune and its start."""
    with pytest.raises(ConfigError, match="reweighter 'l2rw' learns its weights from them"):
        noisyseg.run(TINY, reweighter={"name": "l2rw"}, train={**TINY["train"], "calibrate": True},
                     output={"dir": str(tmp_path / "x")}, progress=False)
    share = {**TINY["train"], "epochs": 1, "calibrate": True, "calibration_share": 0.25}
    noisyseg.run(TINY, train={**TINY["train"], "epochs": 1, "train_on_meta": True},
                 output={"dir": str(tmp_path / "plain")}, progress=False)
    noisyseg.run(TINY, seed=1, train=share, output={"dir": str(tmp_path / "seed1")}, progress=False)
    for start in ("plain", "seed1"):  # trained on all meta images; set other images aside
        with pytest.raises(ConfigError, match="may have trained on the meta images"):
            noisyseg.run(TINY, train={**share, "meta_only": True, "init_from": str(tmp_path / start)},
                         output={"dir": str(tmp_path / f"ft-{start}")}, progress=False)
    with pytest.raises(ConfigError, match="may have trained on the meta images"):  # no share
        noisyseg.run(TINY, train={**TINY["train"], "calibrate": True,
                                  "init_from": str(tmp_path / "seed1")},
                     output={"dir": str(tmp_path / "ft-noshare")}, progress=False)
