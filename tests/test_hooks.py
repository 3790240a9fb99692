"""A throwaway plugin implementing every hook; a run picks up each of its components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from click.testing import CliRunner

from noisyseg import (
    Backbone,
    Dataset,
    LabelCorrector,
    NoiseModel,
    Split,
    Splits,
    build_plugin_manager,
    hookimpl,
    run,
)
from noisyseg.testing import check_backbone, check_corrector, check_dataset, check_noise_model


class TinyBackbone(Backbone):
    """One 3x3 convolution."""

    name = "tiny"

    def build(self, in_channels: int, out_channels: int) -> torch.nn.Module:
        return torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)


class FlipNoise(NoiseModel):
    """Swap foreground and background."""

    name = "flip"

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        return (mask == 0).astype(mask.dtype)


class Squares(Dataset):
    """Bright squares."""

    name = "squares"

    def load(self, seed: int) -> Splits:
        y = np.zeros((12, 16, 16), np.int64)
        y[:, 4:10, 4:10] = 1
        x = (y[:, None] + np.random.default_rng(0).normal(0, 0.1, (12, 1, 16, 16))).astype(np.float32)
        return Splits(Split(x[:8], y[:8]), Split(x[8:10], y[8:10]), Split(x[10:], y[10:]), 2)


class CountingCorrector(LabelCorrector):
    """Counts the predictions it sees."""

    name = "counting"
    observes_predictions = True

    def setup(self, labels: torch.Tensor, run: Any) -> None:
        super().setup(labels, run)
        self.seen = 0

    def observe(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        assert probs.shape[1] == 2 and torch.allclose(probs.sum(1), torch.ones(()))
        self.seen += len(index)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {"seen": float(self.seen)}


class EveryHook:
    def __init__(self) -> None:
        self.epochs: list[tuple[int, float]] = []

    @hookimpl
    def register_backbones(self) -> list[type[Backbone]]:
        return [TinyBackbone]

    @hookimpl
    def register_noise_models(self) -> list[type[NoiseModel]]:
        return [FlipNoise]

    @hookimpl
    def register_datasets(self) -> list[type[Dataset]]:
        return [Squares]

    @hookimpl
    def register_label_correctors(self) -> list[type[LabelCorrector]]:
        return [CountingCorrector]

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command()
        def hello() -> None:
            """Say hello."""
            click.echo("hello from a plugin")

    @hookimpl
    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.epochs.append((epoch, metrics["test_dice"]))


def test_every_hook_reaches_the_run(tmp_path: Path) -> None:
    plugin = EveryHook()
    pm = build_plugin_manager(plugins=[plugin])
    result = run(
        {"dataset": {"name": "squares"}, "backbone": {"name": "tiny"},
         "noise": {"name": "flip", "rate": 0.5}, "corrector": {"name": "counting"},
         "train": {"epochs": 2, "batch_size": 4}, "output": {"dir": str(tmp_path / "r")}},
        plugin_manager=pm, progress=False,
    )
    assert [e for e, _ in plugin.epochs] == [1, 2]
    assert result.history[-1]["seen"] == 2 * (10 // 4) * 4     # 8 train + 2 meta, full batches, 2 epochs
    assert result.history[0]["label_error"] == 0.4             # 4 of 8 train masks flipped, 2 meta clean

    group = click.Group()
    pm.hook.register_commands(cli=group)
    assert CliRunner().invoke(group, ["hello"]).output == "hello from a plugin\n"


def test_the_throwaway_components_pass_the_contracts() -> None:
    check_backbone(TinyBackbone)
    check_noise_model(FlipNoise)
    check_dataset(Squares)
    check_corrector(CountingCorrector)
