"""The kinds of component, one row each.

Everything that differs between kinds is in this table, and every other place is derived from
it: the config's sections (:mod:`noisyseg.config`), the plugin hooks (:mod:`noisyseg.hookspecs`),
the registry (:mod:`noisyseg.plugins`), the run's components (:mod:`noisyseg.engine`), the command
line's flags and listings (:mod:`noisyseg.cli`) and the check kit (:mod:`noisyseg.testing`). A new
kind is one row here, its base class in :mod:`noisyseg.components` and its check in the check kit
(:mod:`noisyseg.contract_data` or :mod:`noisyseg.contract_methods`, exported by
:mod:`noisyseg.testing`).

This module imports nothing heavy, so the command line can read it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class Kind:
    """One kind of component."""

    #: the config section, the registry key and the command-line flag (``--corrector``)
    key: str
    #: its base class, by name, in :mod:`noisyseg.components`
    base_name: str
    #: the plugin hook that returns its classes
    hook: str
    #: one of them, in messages ("unknown label corrector 'x'")
    label: str
    #: several, in listings (``noisyseg plugins``)
    title: str
    #: the name a run uses when the config gives none
    default: str
    #: its contract check, by name, in :mod:`noisyseg.testing` (whose ``CHECKS`` maps each kind
    #: to it; this table does not import the check kit)
    check_name: str
    #: in a recipe of several stages: True when each stage picks its own (the training method:
    #: loss, reweighter, corrector), False when the run's choice reaches every stage (the data,
    #: the noise, the network)
    per_stage: bool = False
    #: what the default stands for, when it is not a component's name (the help text says it)
    default_means: str = ""

    @property
    def base(self) -> Any:
        """The base class (imports :mod:`noisyseg.components`, hence torch)."""
        return getattr(import_module("noisyseg.components"), self.base_name)


#: the corrector a run uses unless its config names one: the reweighter's pick
#: (``Reweighter.default_corrector``), resolved where the components are built
AUTO = "auto"

KINDS: dict[str, Kind] = {kind.key: kind for kind in (
    Kind("dataset", "Dataset", "register_datasets", "dataset", "datasets", "synthetic",
         "check_dataset"),
    Kind("noise", "NoiseModel", "register_noise_models", "noise model", "noise models", "dilation",
         "check_noise_model"),
    Kind("backbone", "Backbone", "register_backbones", "backbone", "backbones", "unet",
         "check_backbone"),
    Kind("loss", "Loss", "register_losses", "loss", "losses", "ce", "check_loss", per_stage=True),
    Kind("reweighter", "Reweighter", "register_reweighters", "reweighter", "reweighters", "none",
         "check_reweighter", per_stage=True),
    Kind("corrector", "LabelCorrector", "register_label_correctors", "label corrector",
         "label correctors", AUTO, "check_corrector", per_stage=True,
         default_means="the one the reweighter pairs with, else none"),
    Kind("recipe", "Recipe", "register_recipes", "recipe", "recipes", "none", "check_recipe",
         per_stage=True),
)}
