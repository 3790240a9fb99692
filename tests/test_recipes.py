"""Recipes: named chains of stages run as one command into one run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import noisyseg.loop
from noisyseg import ConfigError, Recipe, RecipeOptions, Stage, build_plugin_manager, hookimpl, run
from noisyseg.cli import cli
from noisyseg.rundir import TIMINGS
from noisyseg.testing import check_recipe, tiny_run_config
from tests.test_resume import _interrupt_at_step


def _config(tmp_path: Path, name: str, recipe: str = "finetune_cal", train: dict | None = None,
            **extra: object) -> dict:
    return tiny_run_config(seed=3, recipe={"name": recipe}, train={"epochs": 3, **(train or {})},
                           output={"dir": str(tmp_path / name)}, **extra)


def _comparable(metrics: dict) -> dict:
    """Final metrics without the timings, NaN (never equal to itself) as None."""
    return {k: _comparable(v) if isinstance(v, dict) else None if v != v else v
            for k, v in metrics.items() if k not in TIMINGS}


def test_finetune_cal_runs_every_stage_into_one_directory(tmp_path: Path) -> None:
    result = run(_config(tmp_path, "r"), progress=False)
    top = tmp_path / "r"
    first, second = top / "1-train", top / "2-finetune"
    assert {p.name for p in top.iterdir()} == {"config.yaml", "metrics.json", "1-train", "2-finetune"}
    for stage in (first, second):
        assert {"config.yaml", "metrics.json", "metrics.jsonl", "checkpoint.pt"} <= {
            p.name for p in stage.iterdir()}
    # the top config repeats the whole recipe; the stages' configs follow its rules
    top_config = (top / "config.yaml").read_text()
    assert "name: finetune_cal" in top_config and "step_share: 0.2" in top_config
    one = json.loads((first / "metrics.json").read_text())
    two_cfg = noisyseg.config.resolve(noisyseg.config.load_file(second / "config.yaml"))
    one_cfg = noisyseg.config.resolve(noisyseg.config.load_file(first / "config.yaml"))
    assert two_cfg.train.init_from == first and two_cfg.train.meta_only
    assert two_cfg.train.lr == pytest.approx(one_cfg.train.lr * 0.1)
    assert two_cfg.train.steps == max(1, round(0.2 * one["steps"]))
    assert one_cfg.train.calibration_share == two_cfg.train.calibration_share == 0.25
    assert one_cfg.recipe.name == two_cfg.recipe.name == "none"
    assert (one_cfg.dataset, one_cfg.backbone, one_cfg.seed) == (two_cfg.dataset, two_cfg.backbone, 3)
    # the same calibration images in both stages
    aside = [torch.load(s / "checkpoint.pt", weights_only=False)["calibration_aside"]
             for s in (first, second)]
    assert aside[0] is not None and aside[0] == aside[1]
    # one final metrics.json with every stage's
    final = json.loads((top / "metrics.json").read_text())
    assert set(final["stages"]) == {"1-train", "2-finetune"}
    assert final["dice"] == final["stages"]["2-finetune"]["dice"] == result.metrics["dice"]
    assert {h["stage"] for h in result.history} == {"train", "finetune"}


def test_resume_goes_on_in_stage_two_bit_identically(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, "cut")
    config["recipe"]["options"] = {"stages": [  # a longer stage 2: two epochs at least
        {"name": "train"},
        {"name": "finetune", "start_from_previous": True, "meta_only": True, "lr_factor": 0.1,
         "step_share": 0.5, "set": {"train": {"schedule": "cosine"}}}]}
    whole = run({**config, "output": {"dir": str(tmp_path / "whole2")}}, progress=False)
    assert whole.metrics["stages"]["2-finetune"]["epochs"] >= 2
    steps_one = whole.metrics["stages"]["1-train"]["steps"]
    original = _interrupt_at_step(monkeypatch, steps_one + 2)  # the second epoch of stage 2
    with pytest.raises(KeyboardInterrupt) as info:
        run(config, progress=False)
    assert f"noisyseg run --resume {tmp_path / 'cut'}" in " ".join(info.value.__notes__)
    cut = tmp_path / "cut"
    assert (cut / "1-train" / "metrics.json").exists() and not (cut / "metrics.json").exists()
    assert (cut / "2-finetune" / "checkpoint.pt").exists()
    monkeypatch.setattr(noisyseg.loop, "train_step", original)
    resumed = run(resume=cut, progress=False)
    assert _comparable(resumed.metrics) == _comparable(whole.metrics)
    assert _comparable(json.loads((cut / "metrics.json").read_text())) == _comparable(
        json.loads((tmp_path / "whole2" / "metrics.json").read_text()))
    for stage in ("1-train", "2-finetune"):
        wa = torch.load(cut / stage / "checkpoint.pt", weights_only=False)["model"]
        wb = torch.load(tmp_path / "whole2" / stage / "checkpoint.pt", weights_only=False)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="finished run"):
        run(resume=cut, progress=False)


@pytest.mark.parametrize(("recipe", "extra", "named"), [
    ("finetune_cal", {"train": {"calibrate": True, "calibration_share": 0.5}},
     "train.calibration_share = 0.5 contradicts recipe 'finetune_cal', stage 1 'train'"),
    ("confusion_finetune_cal", {"loss": {"name": "tloss"}},
     "loss.name = tloss contradicts recipe 'confusion_finetune_cal', stage 1 'train'"),
    ("finetune", {"train": {"steps": 5}},
     "train.steps = 5 contradicts recipe 'finetune', stage 2 'finetune'"),
])
def test_a_setting_that_contradicts_a_stage_is_one_line(tmp_path: Path, recipe: str, extra: dict,
                                                        named: str) -> None:
    with pytest.raises(ConfigError) as info:
        run(_config(tmp_path, "x", recipe=recipe, **extra), progress=False)
    assert named in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x").exists() or not (tmp_path / "x" / "2-finetune").exists()


def test_the_runs_components_reach_stage_one_and_the_data_every_stage(tmp_path: Path) -> None:
    result = run(_config(tmp_path, "r", recipe="finetune", reweighter={"name": "l2rw"},
                         noise={"name": "erosion", "rate": 0.5}), progress=False)
    one = noisyseg.config.resolve(noisyseg.config.load_file(result.run_dir / "1-train" / "config.yaml"))
    two = noisyseg.config.resolve(noisyseg.config.load_file(result.run_dir / "2-finetune" / "config.yaml"))
    assert one.reweighter.name == "l2rw" and two.reweighter.name == "none"
    assert one.noise == two.noise and one.noise.name == "erosion"
    assert one.train.epochs == 3 and two.train.epochs == max(1, round(0.2 * result.metrics[
        "stages"]["1-train"]["steps"]))  # 6 meta images: one step per epoch


def test_a_recipe_of_one_stage_runs_in_the_run_directory(tmp_path: Path) -> None:
    result = run(_config(tmp_path, "one", recipe="calibrate"), progress=False)
    assert (tmp_path / "one" / "checkpoint.pt").exists()
    assert "dice_uncalibrated" in result.metrics and result.config.train.calibration_share == 0.25


def test_a_third_party_recipe_registers_through_the_hook(tmp_path: Path) -> None:
    class TwiceRecipe(Recipe):
        """Train, then train again from the weights at half the lr."""

        name = "twice"
        Options = RecipeOptions.defaults([Stage(name="first"), Stage(
            name="again", start_from_previous=True, lr_factor=0.5)])

    class Plugin:
        @hookimpl
        def register_recipes(self) -> list[type[Recipe]]:
            return [TwiceRecipe]

    check_recipe(TwiceRecipe)
    pm = build_plugin_manager(plugins=[Plugin()])
    result = run(_config(tmp_path, "t", recipe="twice"), plugin_manager=pm, progress=False)
    assert set(result.metrics["stages"]) == {"1-first", "2-again"}
    again = noisyseg.config.resolve(noisyseg.config.load_file(result.run_dir / "2-again" / "config.yaml"))
    assert again.train.epochs == 3 and again.train.lr == pytest.approx(5e-4)


def test_stage_options_are_checked() -> None:
    with pytest.raises(ValueError, match="no stage before it"):
        RecipeOptions(stages=[Stage(name="a", start_from_previous=True)])
    with pytest.raises(ValueError, match="must differ"):
        RecipeOptions(stages=[Stage(name="a"), Stage(name="a")])


def test_cli_runs_a_recipe_and_plugins_lists_its_stages(tmp_path: Path, folder_dataset: Path) -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["plugins"])
    assert listing.exit_code == 0
    assert "finetune_cal" in listing.output and "2. finetune (" in listing.output
    options = runner.invoke(cli, ["plugins", "--options", "finetune_cal"])
    assert "calibration_share" in options.output and "1. train" in options.output
    out = tmp_path / "cli"
    done = runner.invoke(cli, [
        "run", "--recipe", "finetune_cal", "--dataset", "folder", "--epochs", "2", "-q",
        "--set", f"dataset.options.root={folder_dataset}", "--set", "dataset.options.meta_fraction=0.3",
        "--set", "backbone.options.base_channels=4", "--set", "backbone.options.depth=2",
        "--batch-size", "2", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "stage 1-train: test Dice" in done.output and "stage 2-finetune: test Dice" in done.output
    assert (out / "2-finetune" / "metrics.json").exists()
    bad = runner.invoke(cli, ["run", "--recipe", "finetune_cal", "--set",
                              "train.calibration_share=0.5", "--set", "train.calibrate=true",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "contradicts" in bad.output
