"""Every bad input gets one readable line on stderr, exit code 2, no traceback and no output.

Each case runs the real command line; where a broken plugin is needed, the engine's plugin
manager is swapped for one that also holds the throwaway plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import noisyseg.engine
from noisyseg import Backbone, DataError, DataWarning, Split, Splits, build_plugin_manager, hookimpl
from noisyseg.cli import cli
from noisyseg.data import check_splits
from noisyseg.testing import tiny_run_config
from tests.conftest import write_folder_dataset

TINY_DATA = ["--set", "dataset.options.size=32", "--set", "dataset.options.n_train=8",
             "--set", "dataset.options.n_meta=4", "--set", "dataset.options.n_test=4",
             "--epochs", "1", "--batch-size", "4", "-q"]
TINY = [*TINY_DATA, "--set", "backbone.options.base_channels=4", "--set", "backbone.options.depth=2"]


def _folder(root: Path, change: Callable[[Path], None]) -> list[str]:
    change(root)
    return ["--dataset", "folder", "--set", f"dataset.options.root={root}", "--epochs", "1", "-q"]


def _mismatched_sizes(root: Path) -> None:
    write_folder_dataset(root, n=6)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case01.png")


def _label_out_of_range(root: Path) -> None:
    write_folder_dataset(root, n=6, fg=1)
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(root / "masks" / "case01.png")


def _non_integer_mask(root: Path) -> None:
    write_folder_dataset(root, n=6)
    (root / "masks" / "case01.png").unlink()
    np.save(root / "masks" / "case01.npy", np.full((24, 24), 0.5))


def _anti_aliased_mask(root: Path) -> None:
    write_folder_dataset(root, n=6)
    mask = np.asarray(Image.open(root / "masks" / "case04.png")).copy()
    mask[0, :2] = 128, 254
    Image.fromarray(mask).save(root / "masks" / "case04.png")


def _nan_image(root: Path) -> None:
    write_folder_dataset(root, n=6)
    (root / "images" / "case02.png").unlink()
    image = np.zeros((24, 24), np.float32)
    image[3, 4] = np.nan
    np.save(root / "images" / "case02.npy", image)


def _empty_folder(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()


CASES = {
    "unknown component": (lambda r: ["--reweighter", "mcmp"],
                          "unknown reweighter 'mcmp'; choose one of: coteaching, distil, gce, l2rw, mcpm, "
                          "mwnet, none, oracle"),
    "noise rate above 1": (lambda r: ["--noise-rate", "1.5"],
                           "noise.rate: Input should be less than or equal to 1"),
    "negative lr": (lambda r: ["--lr", "-0.1"], "train.lr: Input should be greater than 0"),
    "zero batch size": (lambda r: ["--batch-size", "0"],
                        "train.batch_size: Input should be greater than or equal to 1"),
    "unknown option of a component": (lambda r: ["--set", "noise.options.radius=3"],
                                      "noise.options.radius: Extra inputs are not permitted"),
    "image and mask sizes differ": (lambda r: _folder(r, _mismatched_sizes), "differ in size"),
    "label outside the class range": (lambda r: [*_folder(r, _label_out_of_range), "--set",
                                                 "dataset.options.num_classes=3"],
                                      "mask masks/case01.png holds label 7 outside the class range 0..2"),
    "non-integer mask": (lambda r: _folder(r, _non_integer_mask), "holds non-integer values"),
    "anti-aliased mask": (lambda r: _folder(r, _anti_aliased_mask),
                          "mask masks/case04.png holds values 128, 254 besides 0 and 255"),
    "NaN in an image": (lambda r: _folder(r, _nan_image),
                        "image images/case02.npy holds 1 non-finite pixel value(s), the first nan at "
                        "index (3, 4)"),
    "empty dataset folder": (lambda r: _folder(r, _empty_folder), "no images found"),
    "missing dataset folder": (lambda r: _folder(r, lambda p: None), "does not exist"),
    "meta method without a meta set": (lambda r: [*TINY, "--reweighter", "mcpm", "--set",
                                                  "dataset.options.n_meta=0"],
                                       "reweighter 'mcpm' needs a clean meta set"),
    "missing config file": (lambda r: ["--config", str(r / "nope.toml")], "config file not found"),
}


def _check_one_line_error(result: object, expected: str, out: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists(), f"left behind: {sorted(p.name for p in out.rglob('*'))}"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    args, expected = CASES[case]
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", *args(tmp_path / "data"), "--out", str(out)])
    _check_one_line_error(result, expected, out)


def _splits(images: np.ndarray, masks: np.ndarray) -> Splits:
    """The same images and masks as train and test split."""
    return Splits(train=Split(images, masks), meta=Split(images[:0], masks[:0]),
                  test=Split(images, masks), num_classes=2)


def test_any_dataset_with_non_finite_pixels_is_an_error() -> None:
    images, masks = np.zeros((3, 2, 4, 4), np.float32), np.ones((3, 4, 4), np.int64)
    images[1, 1, 2, 3] = np.inf
    with pytest.raises(DataError, match=r"^dataset 'mine' train split: image #1 holds a non-finite pixel "
                       r"value \(inf at \(channel, row, column\) \(1, 2, 3\)\); fix or remove that image$"):
        check_splits(_splits(images, masks), "mine")


def test_constant_images_and_empty_masks_are_counted_per_split() -> None:
    images = np.random.default_rng(0).random((8, 1, 4, 4)).astype(np.float32)
    masks = np.ones((8, 4, 4), np.int64)
    images[[1, 6]] = 0.5
    masks[[0, 2, 3, 4, 5, 7]] = 0
    with pytest.warns(DataWarning) as caught:
        check_splits(_splits(images, masks), "mine")
    assert [str(w.message) for w in caught] == [
        f"dataset 'mine' {split} split: 2 constant images (#1, #6), 6 empty masks (#0, #2, #3, #4, #5, ...)"
        for split in ("train", "test")
    ]


def test_the_command_line_shows_a_data_warning_as_one_line(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "data", n=6)
    Image.fromarray(np.full((24, 24), 9, np.uint8)).save(root / "images" / "case03.png")
    done = subprocess.run(
        [sys.executable, "-m", "noisyseg", "run", *_folder(root, lambda r: None), *TINY[-4:],
         "--batch-size", "2", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "Warning: dataset 'folder' test split: 1 constant image (#0)"
    assert len(lines) == 2 and lines[1].startswith("Warning: this run takes only 2 optimiser steps")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--reweighter", "mcmp", "--debug"])
    assert result.exit_code != 0 and isinstance(result.exception, noisyseg.ConfigError)


class _NoDoubleBackward(torch.autograd.Function):
    """ReLU whose backward fails when differentiated again, with the message torch gives for an
    operation that has no double-backward formula."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("derivative for aten::my_relu_backward is not implemented")
        (x,) = ctx.saved_tensors
        return grad * (x > 0)


class _FirstOrderNet(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(in_channels, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_NoDoubleBackward.apply(self.a(x)))


class FirstOrderBackbone(Backbone):
    """A network without second derivatives."""

    name = "firstorder"

    def build(self, in_channels: int, out_channels: int) -> torch.nn.Module:
        return _FirstOrderNet(in_channels, out_channels)


class NotAComponent:
    @hookimpl
    def register_reweighters(self) -> list[object]:
        return [dict]


class FirstOrderPlugin:
    @hookimpl
    def register_backbones(self) -> list[type[Backbone]]:
        return [FirstOrderBackbone]


@pytest.mark.parametrize(("plugin", "args", "expected"), [
    (FirstOrderPlugin(), [*TINY_DATA, "--backbone", "firstorder", "--reweighter", "mcpm", "--set",
                          "reweighter.options.method=higher"],
     "this backbone cannot be differentiated twice, which the meta reweighters need"),
    (NotAComponent(), TINY, "is not a subclass of noisyseg.components.Reweighter"),
])
def test_broken_plugins_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin: object,
                                     args: list[str], expected: str) -> None:
    monkeypatch.setattr(noisyseg.engine, "build_plugin_manager",
                        lambda: build_plugin_manager(plugins=[plugin]))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", *args, "--out", str(out)])
    _check_one_line_error(result, expected, out)


def test_nan_loss_stops_with_the_step_and_the_last_checkpoint(tmp_path: Path) -> None:
    class NaNAtStep5(noisyseg.Reweighter):
        """Weights so large at step 5 that the loss overflows (the weights themselves are valid:
        finite and >= 0; invalid ones are the reweighter's fault, see test_contract_checks)."""

        name = "nanat5"

        def weigh(self, ctx: noisyseg.StepContext) -> torch.Tensor:
            w = torch.ones_like(ctx.loss_map)
            return w * 3e38 if ctx.step == 5 else w

    class Plugin:
        @hookimpl
        def register_reweighters(self) -> list[type[noisyseg.Reweighter]]:
            return [NaNAtStep5]

    pm = build_plugin_manager(plugins=[Plugin()])
    config = tiny_run_config(reweighter={"name": "nanat5"}, train={"epochs": 3},
                             output={"dir": str(tmp_path / "stop")})
    with pytest.raises(noisyseg.NumericalError,
                       match=r"loss is inf at step 5 \(epoch 2\); the last good checkpoint is .*stop"):
        noisyseg.run(config, plugin_manager=pm, progress=False)
    assert torch.load(tmp_path / "stop" / "checkpoint.pt", weights_only=False)["epoch"] == 1

    config["output"]["dir"] = str(tmp_path / "skip")
    config["train"]["on_nonfinite"] = "skip"
    result = noisyseg.run(config, plugin_manager=pm, progress=False)
    assert [h["skipped_steps"] for h in result.history] == [0, 1, 0]
    assert all(h["train_loss"] == h["train_loss"] for h in result.history)  # no NaN


def test_small_sets_and_tiny_meta_sets_are_warned_with_the_number_to_use() -> None:
    from noisyseg.data import size_warnings

    small = size_warnings(81, 8, 16, 10, None, uses_meta=True)
    assert len(small) == 2
    assert "only 50 optimiser steps" in small[0] and "--epochs 40" in small[0]
    assert "only 8 image(s)" in small[1]
    assert size_warnings(1000, 100, 16, 10, None, uses_meta=True) == []
    assert "only 100 optimiser" in size_warnings(1000, 100, 16, 10, 100, uses_meta=False)[0]
