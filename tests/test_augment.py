"""Augmentation: masks move with their image, draws are seeded by (seed, step, image), pixels
can be put back, and a run with augmentation is reproducible and refuses what it cannot do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import noisyseg
from noisyseg import ConfigError
from noisyseg.augment import Augmenter, to_original
from noisyseg.config import AugmentConfig
from noisyseg.testing import random_masks, tiny_run_config

ALL = {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5, "affine": 0.5, "elastic": 0.5,
       "brightness_contrast": 0.5, "gamma": 0.5, "noise": 0.5}


def batch(n: int = 4, size: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = torch.from_numpy(random_masks(n, size, 3, seed=2))
    images = torch.rand(n, 2, size, size) + labels[:, None].float()  # the mask is visible
    return images, labels, labels > 0


def test_a_flip_moves_image_and_every_mask_together_and_can_be_undone() -> None:
    images, labels, region = batch()
    out = Augmenter(AugmentConfig(hflip=1.0), seed=0)(images, [labels, None, region], 0,
                                                       torch.arange(4))
    assert torch.equal(out.images, images.flip(-1))
    assert torch.equal(out.masks[0], labels.flip(-1)) and out.masks[0].dtype == torch.int64
    assert out.masks[1] is None
    assert torch.equal(out.masks[2], region.flip(-1)) and out.masks[2].dtype == torch.bool
    assert torch.equal(to_original(out.images, out.source), images)
    assert torch.equal(to_original(out.masks[0], out.source), labels)


@pytest.mark.parametrize("name", ["rotate90", "affine", "elastic"])
def test_labels_follow_the_pixels_they_came_from(name: str) -> None:
    images, labels, _ = batch()
    aug = Augmenter(AugmentConfig(**{name: 1.0}), seed=3)
    out = aug(images, [labels], 7, torch.arange(4))
    flat = labels.reshape(4, -1)
    assert torch.equal(out.masks[0].reshape(4, -1), flat.gather(1, out.source.reshape(4, -1)))
    assert set(out.masks[0].unique().tolist()) <= set(labels.unique().tolist())
    assert aug.one_to_one == (name == "rotate90")
    if aug.one_to_one:
        assert torch.equal(to_original(out.masks[0], out.source), labels)


def test_draws_depend_on_seed_step_and_image_not_on_the_batch() -> None:
    images, labels, _ = batch()
    aug = Augmenter(AugmentConfig(**ALL), seed=1)
    whole = aug(images, [labels], 5, torch.tensor([10, 11, 12, 13]))
    again = aug(images, [labels], 5, torch.tensor([10, 11, 12, 13]))
    alone = aug(images[2:3], [labels[2:3]], 5, torch.tensor([12]))
    assert torch.equal(whole.images, again.images) and torch.equal(whole.masks[0], again.masks[0])
    assert torch.equal(whole.images[2:3], alone.images)
    later = aug(images, [labels], 6, torch.tensor([10, 11, 12, 13]))
    other_seed = Augmenter(AugmentConfig(**ALL), seed=2)(images, [labels], 5, torch.tensor([10, 11, 12, 13]))
    assert not torch.equal(whole.images, later.images)
    assert not torch.equal(whole.images, other_seed.images)


def test_intensity_transforms_keep_the_images_own_range() -> None:
    images = torch.linspace(-5, 5, 16 * 16).reshape(1, 1, 16, 16)
    out = Augmenter(AugmentConfig(brightness_contrast=1.0, brightness_limit=0.2), seed=0)(
        images, [], 0, torch.tensor([0]))
    assert out.source is None
    assert out.images.min() < -4 and out.images.max() > 4  # not clipped to [0, 1]
    assert not torch.allclose(out.images, images)


def test_off_by_default_and_then_a_no_op() -> None:
    images, labels, _ = batch()
    aug = Augmenter(AugmentConfig(), seed=0)
    out = aug(images, [labels], 0, torch.arange(4))
    assert not aug.active and out.images is images and out.masks[0] is labels and out.source is None


def test_a_run_with_augmentation_is_reproducible_and_differs_from_one_without(tmp_path: Path) -> None:
    def once(name: str, augment: dict) -> dict:
        cfg = tiny_run_config(seed=3, augment=augment, corrector={"name": "plc"},
                              output={"dir": str(tmp_path / name)})
        result = noisyseg.run(cfg, progress=False)
        return {**result.metrics, "loss": result.history[-1]["train_loss"]}

    a, b = once("a", ALL), once("b", ALL)
    plain = once("plain", {})
    for key in ("loss", "dice", "train_label_error_final"):
        assert a[key] == b[key], key
    assert a["loss"] != plain["loss"]


def test_a_corrector_that_keeps_weights_per_pixel_refuses_merging_transforms(tmp_path: Path) -> None:
    cfg = tiny_run_config(reweighter={"name": "l2rw"}, corrector={"name": "relabel"},
                          augment={"elastic": 0.5}, output={"dir": str(tmp_path / "x")})
    with pytest.raises(ConfigError, match="augment.elastic"):
        noisyseg.run(cfg, progress=False)
    assert not (tmp_path / "x").exists()
    cfg["augment"] = {"hflip": 0.5, "rotate90": 0.5, "gamma": 0.5}
    result = noisyseg.run(cfg, progress=False)
    assert np.isfinite(result.metrics["dice"])


def test_augment_options_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match=r"augment\.hflip"):
        noisyseg.config.resolve(augment={"hflip": 1.5})
    with pytest.raises(ConfigError, match=r"augment\.flip"):
        noisyseg.config.resolve(augment={"flip": 0.5})


def test_the_command_line_sets_augmentation_and_the_run_shows_and_records_it(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from noisyseg.cli import cli

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config()))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "run", "--config", str(config), "--out", str(out), "-q",
        "--set", "augment.hflip=0.5", "--set", "augment.elastic=0.3",
    ])
    assert result.exit_code == 0, result.output
    assert (out / "augment.png").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())["augment"]
    assert saved["hflip"] == 0.5 and saved["elastic"] == 0.3 and saved["vflip"] == 0.0
    bad = CliRunner().invoke(cli, ["run", "--config", str(config), "--set", "augment.hflip=2"])
    assert bad.exit_code == 2 and "augment.hflip" in bad.output
