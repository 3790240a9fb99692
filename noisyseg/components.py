"""The component interfaces: what a backbone, noise model, dataset, loss, reweighter, label
corrector and recipe must provide. Plugins subclass these; the engine only ever talks to these
bases. The table of kinds (:mod:`noisyseg.kinds`) names each base with its hook, config section
and check.

Every component class carries a unique ``name`` and an ``Options`` pydantic model holding its
typed settings; the registry validates the user's options against it before building.

The bases live in modules of their own, gathered here (import them from here or from
:mod:`noisyseg`):

- :mod:`noisyseg.component`: :class:`Component`, the base of every kind, and :class:`NoOptions`;
- :mod:`noisyseg.data_kinds`: :class:`Dataset`, :class:`MaskWriter`, :class:`NoiseModel` and
  :class:`Backbone`, the kinds a run picks once for all its stages;
- :mod:`noisyseg.splits`: :class:`Split` and :class:`Splits`, what a dataset gives;
- :mod:`noisyseg.method_kinds`: :class:`Loss`, :class:`Reweighter` (with :func:`mean_one`) and
  :class:`LabelCorrector`, the kinds of a training method;
- :mod:`noisyseg.contexts`: :class:`RunContext` and :class:`StepContext`, what they are told;
- :mod:`noisyseg.recipe_kind`: :class:`Recipe`, :class:`RecipeOptions` and :class:`Stage`.

This module adds :class:`Components`, a run's set of them.
"""

from __future__ import annotations

from typing import Any

from noisyseg.component import Component, NoOptions
from noisyseg.contexts import LossFn, RunContext, StepContext
from noisyseg.data_kinds import Backbone, Dataset, MaskWriter, NoiseModel
from noisyseg.method_kinds import LabelCorrector, Loss, Reweighter, mean_one
from noisyseg.recipe_kind import Recipe, RecipeOptions, Stage
from noisyseg.splits import Split, Splits

__all__ = [
    "Backbone", "Component", "Components", "Dataset", "LabelCorrector", "Loss", "LossFn",
    "MaskWriter", "NoOptions", "NoiseModel", "Recipe", "RecipeOptions", "Reweighter", "RunContext",
    "Split", "Splits", "Stage", "StepContext", "mean_one",
]


class Components:
    """The run's components, one per kind of :data:`noisyseg.kinds.KINDS`, by its key
    (``parts.reweighter``). The annotations below are for readers and type checkers; a kind
    added to the table is here as well."""

    dataset: Dataset
    noise: NoiseModel
    backbone: Backbone
    loss: Loss
    reweighter: Reweighter
    corrector: LabelCorrector
    recipe: Recipe

    def __init__(self, built: dict[str, Any]) -> None:
        self.__dict__.update(built)
