"""The base every component kind shares: a ``name`` to pick it by and typed ``Options``.

The bases of the kinds build on it (:mod:`noisyseg.components` gathers them). This module
imports pydantic alone, not torch.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class NoOptions(BaseModel):
    """Options of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


class Component:
    """Base of every component: a ``name`` to pick it by and typed ``Options``."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def describe(cls) -> str:
        """First line of the class docstring, for listings."""
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    @classmethod
    def details(cls) -> list[str]:
        """More lines for listings (a recipe's stages); none by default."""
        return []
