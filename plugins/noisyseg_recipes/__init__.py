"""Built-in recipes: the chains of runs that help, each one command (``noisyseg run --recipe
NAME``). Measured recoveries are on the leaderboard (docs/leaderboard.md) and the recipes page
(docs/recipes.md).

- ``none``: the run as configured (one stage, nothing changed): the default.
- ``calibrate``: train, then calibrate the decision on a quarter of the meta images set aside
  (``train.calibrate``).
- ``finetune``: train on the noisy labels, then fine-tune on the clean meta images alone at a
  tenth of the learning rate, for a fifth of the first stage's optimiser steps.
- ``finetune_cal``: the same with a quarter of the meta images set aside in both stages and the
  decision calibrated on them.
- ``confusion_finetune_cal``: ``finetune_cal`` whose first stage trains with the ``confusion``
  loss (an annotator model); the fine-tune uses cross-entropy (the meta labels are clean).
- ``relabel_finetune``: relabel what L2RW's meta weights reject (``l2rw`` + ``relabel``), then
  fine-tune as ``finetune``.
- ``mcpm_finetune_cal``: ``finetune_cal`` whose first stage trains with MCPM's meta weights.
- ``nwdice_rounds``: the noise-robust iterative learning of Wang et al. (IEEE TMI 2021): three
  rounds of training with the noise-weighted Dice loss (``nwdice``); rounds 2 and 3 start from
  the previous round's weights and, after their first epoch, replace the labels the model
  contradicts with probability above 0.9 (the ``confident`` corrector), then train on them.
  Round 2 takes half of round 1's optimiser steps, round 3 as many as round 2. Needs no meta set.

The fine-tune's factors (lr x 0.1, a fifth of the steps) and the quarter set aside were chosen
before any result was seen and not tuned on the test split.
"""

from __future__ import annotations

from noisyseg import Recipe, RecipeOptions, Stage, hookimpl

#: the fine-tune stage every *finetune* recipe ends with
FINETUNE = Stage(name="finetune", start_from_previous=True, meta_only=True, lr_factor=0.1,
                 step_share=0.2, set={"train": {"schedule": "cosine"}})
QUARTER = 0.25


def _recipe(name: str, doc: str, stages: list[Stage], share: float | None) -> type[Recipe]:
    """A recipe class whose options default to ``stages`` and ``share``."""
    return type(f"{name.title().replace('_', '')}Recipe", (Recipe,), {
        "name": name, "Options": RecipeOptions.defaults(stages, share), "__doc__": doc,
        "__module__": __name__})


def _train(**components: str) -> Stage:
    return Stage(name="train", set={k: {"name": v} for k, v in components.items()})


def _round(name: str, step_share: float) -> Stage:
    """A later round of ``nwdice_rounds``: from the previous round's weights, its labels replaced
    where the model confidently contradicts them (after the round's first epoch), still nwdice."""
    return Stage(name=name, set={"loss": {"name": "nwdice"}, "corrector": {"name": "confident"}},
                 start_from_previous=True, step_share=step_share)


RECIPES = [
    _recipe("none", "The run as configured: one stage, nothing added.", [Stage(name="train")], None),
    _recipe("calibrate", "Train, then calibrate the decision on a quarter of the meta images.",
            [_train()], QUARTER),
    _recipe("finetune", "Train on the noisy labels, then fine-tune on the clean meta images.",
            [_train(), FINETUNE], None),
    _recipe("finetune_cal", "Train, fine-tune on the clean meta images, calibrate on a quarter "
            "of them set aside.", [_train(), FINETUNE], QUARTER),
    _recipe("confusion_finetune_cal", "finetune_cal whose first stage learns an annotator model "
            "(the confusion loss).", [_train(loss="confusion"), FINETUNE], QUARTER),
    _recipe("relabel_finetune", "Relabel what L2RW's meta weights reject, then fine-tune on the "
            "clean meta images.", [_train(reweighter="l2rw", corrector="relabel"), FINETUNE], None),
    _recipe("mcpm_finetune_cal", "finetune_cal whose first stage trains with MCPM's meta weights.",
            [_train(reweighter="mcpm"), FINETUNE], QUARTER),
    _recipe("nwdice_rounds", "Rounds of noise-weighted Dice training, each relabelling what the "
            "previous round's model confidently contradicts.",
            [Stage(name="round1", set={"loss": {"name": "nwdice"}}), _round("round2", 0.5),
             _round("round3", 1.0)], None),
]


@hookimpl
def register_recipes() -> list[type[Recipe]]:
    return RECIPES
