"""The contract can fail: the check kit catches a state that misses a key and a preview that
learns; a run stops on negative or NaN weights; options are recorded and discoverable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

import noisyseg
from noisyseg import NoisysegError, Reweighter, StepContext, build_plugin_manager, hookimpl, rundir
from noisyseg.cli import cli
from noisyseg.testing import check_reweighter, tiny_run_config


class Counting(Reweighter):
    """Weights that grow with every step it has seen (it learns: a counter)."""

    name = "counting"

    def setup(self, run: Any) -> None:
        self.steps = torch.zeros(())

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        self.steps += 1
        return torch.ones_like(ctx.loss_map) * (1 + self.steps)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"].clone()


class Forgetful(Counting):
    """The same, but its state misses the counter."""

    name = "forgetful"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PeekingPreview(Counting):
    """Its preview takes a step too."""

    name = "peeking"

    def preview(self, ctx: StepContext) -> torch.Tensor:
        return self.weigh(ctx)


def test_the_check_kit_passes_a_complete_state_and_fails_a_missing_key() -> None:
    check_reweighter(Counting)
    with pytest.raises(AssertionError, match="forgetful: a fresh instance loaded with state_dict"):
        check_reweighter(Forgetful)


def test_the_check_kit_fails_a_preview_that_learns() -> None:
    with pytest.raises(AssertionError, match="peeking: state after preview"):
        check_reweighter(PeekingPreview)


class Negative(Reweighter):
    """Weights of -1 from the second step on."""

    name = "negative"
    value = -1.0

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        return torch.full_like(ctx.loss_map, self.value if ctx.step >= 1 else 1.0)


class NotANumber(Negative):
    """NaN weights from the second step on."""

    name = "notanumber"
    value = float("nan")


class BadWeights:
    @hookimpl
    def register_reweighters(self) -> list[type[Reweighter]]:
        return [Negative, NotANumber]


@pytest.mark.parametrize(("name", "shown"), [("negative", "-1.0"), ("notanumber", "nan")])
def test_a_negative_or_nan_weight_stops_the_run_naming_the_reweighter(
        tmp_path: Path, name: str, shown: str) -> None:
    pm = build_plugin_manager(plugins=[BadWeights()])
    cfg = tiny_run_config(reweighter={"name": name}, output={"dir": str(tmp_path / name)})
    with pytest.raises(NoisysegError) as caught:
        noisyseg.run(cfg, plugin_manager=pm, progress=False)
    message = str(caught.value)
    assert f"reweighter '{name}' returned" in message and "at step 1 (epoch 1)" in message
    assert f"e.g. {shown}" in message and "\n" not in message


def test_a_runs_config_yaml_holds_every_option_of_every_component(tmp_path: Path) -> None:
    out = tmp_path / "run"
    noisyseg.run(tiny_run_config(reweighter={"name": "mcpm", "options": {"alpha": 0.02}},
                                 output={"dir": str(out)}), progress=False)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert set(checkpoint) == set(rundir.CHECKPOINT_KEYS)          # one list of what it holds
    assert checkpoint["config"]["reweighter"]["options"]["alpha"] == 0.02
    assert saved["reweighter"]["options"]["alpha"] == 0.02          # given
    assert saved["reweighter"]["options"]["meta_lr"] == 0.01        # a default, written down
    assert saved["dataset"]["options"]["noise_std"] == 0.06
    assert saved["noise"]["options"] == {"min_radius": 0.0, "max_radius": 6.0}
    assert saved["corrector"] == {"name": "relabel", "options": {  # mcpm's pairing, written down
        "warmup_epochs": 2, "momentum": 0.5, "threshold": 0.3, "confidence": 0.5}}
    shown = yaml.safe_load(CliRunner().invoke(cli, ["config"]).output)
    assert shown["reweighter"]["options"] == {} and shown["backbone"]["options"]["base_channels"] == 16


def test_plugins_options_lists_types_defaults_and_descriptions() -> None:
    result = CliRunner().invoke(cli, ["plugins", "--options", "mcpm"])
    assert result.exit_code == 0, result.output
    assert "reweighter 'mcpm'" in result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("alpha"))
    assert "float" in line and "default 0.01" in line
    assert "learning rate of the virtual step" in result.output
    unknown = CliRunner().invoke(cli, ["plugins", "--options", "mpcm"])
    assert unknown.exit_code == 2 and "no component is called 'mpcm'" in unknown.output
