"""The hooks a noisyseg plugin may implement.

Every ``register_*`` hook returns a list of component *classes* (subclasses of the bases in
:mod:`noisyseg.components`), each carrying a unique ``name``. The core never names a method:
``--reweighter mcpm`` is looked up among the classes these hooks return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from noisyseg.kinds import KINDS, Kind

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker("noisyseg")
hookimpl = pluggy.HookimplMarker("noisyseg")


def _register_hook(kind: Kind) -> Any:
    """The ``register_*`` hookspec of one kind of component."""

    def register() -> list[type]:
        """(filled below)"""

    register.__name__ = register.__qualname__ = kind.hook
    register.__doc__ = (f"Return the {kind.title} a plugin provides: subclasses of "
                        f"noisyseg.{kind.base_name}, each with a unique name.")
    return hookspec(register)


# one register_* hook per kind of component: register_datasets, register_noise_models,
# register_backbones, register_reweighters, register_label_correctors (noisyseg.kinds)
for _kind in KINDS.values():
    globals()[_kind.hook] = _register_hook(_kind)


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``noisyseg`` command line."""


@hookspec
def on_epoch_end(epoch: int, metrics: dict[str, Any], run_dir: str) -> None:
    """Called at the end of each epoch with that epoch's metrics (read-only); the test scores
    are there on the epochs ``train.eval_every`` scores."""
