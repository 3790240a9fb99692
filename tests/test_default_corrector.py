"""corrector "auto", the default: a run pairs its reweighter with the corrector the reweighter
names (``Reweighter.default_corrector``; mcpm: relabel), records the one it built, and each
stage of a recipe pairs with its own reweighter."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from noisyseg import ConfigError, Registry, build_plugin_manager, run
from noisyseg.build import build_components, with_options
from noisyseg.cli import cli
from noisyseg.config import load_file, resolve
from noisyseg.fixtures import tiny_run_config


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(build_plugin_manager())


@pytest.mark.parametrize(("sections", "built"), [
    ({}, "none"),
    ({"reweighter": {"name": "l2rw"}}, "none"),
    ({"reweighter": {"name": "mcpm"}}, "relabel"),
    ({"reweighter": {"name": "mcpm"}, "corrector": {"name": "none"}}, "none"),  # asked: kept
    ({"reweighter": {"name": "mcpm"}, "corrector": {"name": "plc"}}, "plc"),
    ({"reweighter": {"name": "mcpm"}, "corrector": {"options": {"threshold": 0.2}}}, "relabel"),
])
def test_the_corrector_follows_the_reweighter_unless_the_config_names_one(
        registry: Registry, sections: dict, built: str) -> None:
    cfg = resolve(tiny_run_config(**sections))
    parts = build_components(cfg, registry)
    assert parts.corrector.name == built
    recorded = with_options(cfg, parts)  # what config.yaml says: the corrector built
    assert recorded.corrector.name == built
    assert recorded.corrector.options == parts.corrector.options.model_dump(mode="json")
    if built == "relabel":
        given = sections.get("corrector", {}).get("options", {}).get("threshold", 0.3)
        assert recorded.corrector.options["threshold"] == given
    kept = with_options(cfg, parts, keep_auto=True).corrector
    assert kept.name == cfg.corrector.name


def test_a_recipe_s_stages_each_pair_with_their_own_reweighter(tmp_path: Path) -> None:
    """mcpm_finetune_cal: MCPM's stage relabels, the fine-tune (no reweighter) does not; the
    recipe's own config.yaml keeps "auto", so a resumed run pairs them the same way."""
    result = run(tiny_run_config(recipe={"name": "mcpm_finetune_cal"},
                                 output={"dir": str(tmp_path / "r")}), progress=False)
    read = {name: resolve(load_file(result.run_dir / name / "config.yaml")).corrector.name
            for name in ("1-train", "2-finetune", ".")}
    assert read == {"1-train": "relabel", "2-finetune": "none", ".": "auto"}
    assert "train_label_error_final" in result.metrics["stages"]["1-train"]


def test_the_help_says_what_auto_means_and_an_augment_error_names_the_pairing(tmp_path: Path) -> None:
    help_text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "(default: auto: the one the reweighter pairs with, else none)" in help_text
    config = tiny_run_config(reweighter={"name": "mcpm"}, augment={"affine": 0.5},
                             output={"dir": str(tmp_path / "a")})
    with pytest.raises(ConfigError, match="corrector 'relabel' \\(the one reweighter 'mcpm' "
                                          "pairs with.*corrector.name=none turns it off"):
        run(config, progress=False)
    config["corrector"] = {"name": "none"}  # asked for none: the affine warp is fine
    assert run(config, progress=False).config.corrector.name == "none"
