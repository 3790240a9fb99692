"""The base of the ``recipe`` kind: a named sequence of training stages (:class:`Stage`), held
in the recipe's options (:class:`RecipeOptions`). :mod:`noisyseg.recipes` runs them. This module
imports pydantic alone, not torch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from noisyseg.component import Component


class Stage(BaseModel):
    """One stage of a recipe: a config overlay plus rules relative to the stage before it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="names the stage's run directory")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="config overlay, nested as in a config file, e.g. {'loss': {'name': 'confusion'}}")
    start_from_previous: bool = Field(
        False, description="start from the network weights the previous stage ended with")
    meta_only: bool = Field(False, description="train on the clean meta images alone")
    lr_factor: float | None = Field(
        None, gt=0, description="learning rate: the previous stage's times this")
    step_share: float | None = Field(
        None, gt=0, description="optimiser steps: this share of the previous stage's, rounded to "
        "whole epochs (at least one)")

    def rules(self) -> list[str]:
        """The stage's overlay and rules in few words, for listings."""
        said = _leaves(self.set)
        said += ["from the previous stage's weights"] * self.start_from_previous
        said += ["meta images only"] * self.meta_only
        if self.lr_factor is not None:
            said.append(f"lr x{self.lr_factor:g}")
        if self.step_share is not None:
            said.append(f"{self.step_share:.0%} of its steps")
        return said


def _leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    """``{'loss': {'name': 'confusion'}}`` -> ``['loss=confusion']``."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix.removesuffix('.') if key == 'name' else prefix + key}={value}")
    return out


_STAGES = "the stages, run in order"
_SHARE = ("set this share of the meta images aside in every stage (the same images: same seed "
          "and dataset) and calibrate each stage on them (train.calibrate)")


class RecipeOptions(BaseModel):
    """What every recipe's ``Options`` holds; :meth:`defaults` makes a recipe's own."""

    model_config = ConfigDict(extra="forbid")

    stages: list[Stage] = Field(default_factory=lambda: [Stage(name="train")], min_length=1,
                                description=_STAGES)
    calibration_share: float | None = Field(None, gt=0, lt=1, description=_SHARE)

    @classmethod
    def defaults(cls, stages: list[Stage], calibration_share: float | None = None) -> type[RecipeOptions]:
        """The options class of a recipe whose defaults are these stages and share, e.g.
        ``Options = RecipeOptions.defaults([Stage(name="train"), FINETUNE], 0.25)``."""
        return create_model(
            "Options", __base__=cls,
            stages=(list[Stage], Field(default_factory=lambda: [s.model_copy(deep=True) for s in stages],
                                       min_length=1, description=_STAGES)),
            calibration_share=(float | None, Field(calibration_share, gt=0, lt=1, description=_SHARE)),
        )

    @model_validator(mode="after")
    def _stages_fit(self) -> RecipeOptions:
        first = self.stages[0]
        if first.start_from_previous or first.lr_factor is not None or first.step_share is not None:
            raise ValueError(f"stage 1 '{first.name}' has no stage before it: it cannot start "
                             "from its weights, scale its lr or share its steps")
        names = [s.name for s in self.stages]
        if len(set(names)) < len(names):
            raise ValueError(f"stage names must differ (got {', '.join(names)})")
        return self


class Recipe(Component):
    """A named sequence of training stages, each a run of its own that may start where the
    stage before it ended (:mod:`noisyseg.recipes` runs them). Its ``Options`` (a subclass of
    :class:`RecipeOptions`) hold the stages, so a config file can change them."""

    Options: ClassVar[type[BaseModel]] = RecipeOptions

    @property
    def stages(self) -> list[Stage]:
        return list(self.options.stages)

    @property
    def plain(self) -> bool:
        """One stage that changes nothing: the run as configured."""
        stage = self.stages[0]
        return (len(self.stages) == 1 and not stage.set and not stage.meta_only
                and self.options.calibration_share is None)

    @classmethod
    def details(cls) -> list[str]:
        """The default stages, one line each."""
        options = cls.Options()
        lines = [f"{i}. {s.name}" + (f" ({', '.join(s.rules())})" if s.rules() else "")
                 for i, s in enumerate(options.stages, 1)]
        if options.calibration_share is not None:
            lines.append(f"every stage: {options.calibration_share:.0%} of the meta images set "
                         "aside, calibrated on")
        return lines
