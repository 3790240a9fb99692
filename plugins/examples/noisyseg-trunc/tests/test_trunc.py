"""The plugin's own tests: noisyseg's exported contract suite, and what trunc promises."""

from __future__ import annotations

from pathlib import Path

import torch
from noisyseg_trunc import TruncFinetuneRecipe, TruncReweighter

from noisyseg import Registry, StepContext, build_plugin_manager
from noisyseg.testing import check_recipe, check_reweighter, tiny_run_config


def test_passes_the_core_contract_suite() -> None:
    check_reweighter(TruncReweighter)
    check_reweighter(TruncReweighter, {"q": 50, "warmup_epochs": 0})


def test_is_found_through_the_entry_point() -> None:
    registry = Registry(build_plugin_manager())
    assert registry.get("reweighter", "trunc") is TruncReweighter
    assert registry.get("recipe", "trunc_finetune") is TruncFinetuneRecipe


def test_the_recipe_passes_the_core_contract_suite() -> None:
    check_recipe(TruncFinetuneRecipe)


def test_zeroes_exactly_the_largest_losses_of_each_image() -> None:
    loss = torch.tensor([[[0.1, 0.9], [0.5, 0.2]], [[3.0, 1.0], [2.0, 0.0]]])
    ctx = StepContext(model=None, optimizer=None, images=None, labels=None, logits=None,
                      loss_map=loss, step=0, epoch=1)
    weights = TruncReweighter(TruncReweighter.Options(q=50, warmup_epochs=0)).weigh(ctx)
    assert weights.tolist() == [[[1, 0], [0, 1]], [[0, 1], [0, 1]]]
    warm = TruncReweighter(TruncReweighter.Options(q=50, warmup_epochs=2)).weigh(ctx)
    assert warm.eq(1).all()


def test_a_tiny_run_uses_it(tmp_path: Path) -> None:
    import noisyseg

    config = tiny_run_config(reweighter={"name": "trunc", "options": {"warmup_epochs": 0}},
                             train={"epochs": 2}, output={"dir": str(tmp_path / "run")})
    result = noisyseg.run(config, progress=False)
    assert result.history[-1]["weight_mean_clean"] < 1  # some pixels were dropped
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_the_recipe_runs_both_stages(tmp_path: Path) -> None:
    import noisyseg

    config = tiny_run_config(recipe={"name": "trunc_finetune"}, train={"epochs": 2},
                             output={"dir": str(tmp_path / "recipe")})
    result = noisyseg.run(config, progress=False)
    assert set(result.metrics["stages"]) == {"1-train", "2-finetune"}
