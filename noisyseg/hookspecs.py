"""The hooks a noisyseg plugin may implement.

Every ``register_*`` hook returns a list of component *classes* (subclasses of the bases in
:mod:`noisyseg.components`), each carrying a unique ``name``. The core never names a method:
``--reweighter mcpm`` is looked up among the classes these hooks return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from noisyseg.components import (
        Backbone,
        Dataset,
        LabelCorrector,
        NoiseModel,
        Reweighter,
    )

hookspec = pluggy.HookspecMarker("noisyseg")
hookimpl = pluggy.HookimplMarker("noisyseg")


@hookspec
def register_backbones() -> list[type[Backbone]]:
    """Return backbone classes: each builds an nn.Module mapping images to logits."""


@hookspec
def register_noise_models() -> list[type[NoiseModel]]:
    """Return noise-model classes: each corrupts one clean mask."""


@hookspec
def register_reweighters() -> list[type[Reweighter]]:
    """Return reweighter classes: each turns a per-pixel loss map into a weight map."""


@hookspec
def register_label_correctors() -> list[type[LabelCorrector]]:
    """Return label-corrector classes: each owns and may rewrite the training labels."""


@hookspec
def register_datasets() -> list[type[Dataset]]:
    """Return dataset classes: each loads train / meta / test splits."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``noisyseg`` command line."""


@hookspec
def on_epoch_end(epoch: int, metrics: dict[str, Any], run_dir: str) -> None:
    """Called after each epoch's evaluation with that epoch's metrics (read-only)."""
