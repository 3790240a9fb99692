"""noisyseg: train segmentation networks when the pixel labels are wrong.

Plugin authors write ``from noisyseg import hookimpl`` and subclass the bases in
:mod:`noisyseg.components`; users call :func:`noisyseg.run`.

The names below load on first use (PEP 562), so that ``import noisyseg.cli`` and the command
line's own work do not import torch until a run or a component needs it.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

#: every public name and the module that defines it
_EXPORTS = {
    **dict.fromkeys(("Backbone", "Dataset", "LabelCorrector", "Loss", "MaskWriter", "NoiseModel",
                     "Recipe", "RecipeOptions", "Reweighter", "RunContext", "Split", "Splits",
                     "Stage", "StepContext", "mean_one"),
                    "noisyseg.components"),
    "AuditResult": "noisyseg.auditor",
    "audit": "noisyseg.auditor",
    "Config": "noisyseg.config",
    "RunResult": "noisyseg.engine",
    "run": "noisyseg.api",
    **dict.fromkeys(("CheckpointError", "ConfigError", "DataError", "DataWarning", "NoisysegError",
                     "NumericalError", "PluginError"), "noisyseg.errors"),
    "hookimpl": "noisyseg.hookspecs",
    "Registry": "noisyseg.plugins",
    "build_plugin_manager": "noisyseg.plugins",
}

if TYPE_CHECKING:
    from noisyseg.api import run
    from noisyseg.auditor import AuditResult, audit
    from noisyseg.components import (
        Backbone,
        Dataset,
        LabelCorrector,
        Loss,
        MaskWriter,
        NoiseModel,
        Recipe,
        RecipeOptions,
        Reweighter,
        RunContext,
        Split,
        Splits,
        Stage,
        StepContext,
        mean_one,
    )
    from noisyseg.config import Config
    from noisyseg.engine import RunResult
    from noisyseg.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        DataWarning,
        NoisysegError,
        NumericalError,
        PluginError,
    )
    from noisyseg.hookspecs import hookimpl
    from noisyseg.plugins import Registry, build_plugin_manager

try:
    __version__ = metadata.version("noisyseg")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [  # the same names as _EXPORTS (a test compares them)
    "AuditResult", "Backbone", "CheckpointError", "Config", "ConfigError", "DataError", "DataWarning",
    "Dataset", "LabelCorrector", "Loss", "MaskWriter", "NoiseModel", "NoisysegError", "NumericalError",
    "PluginError", "Recipe",
    "RecipeOptions", "Registry", "Reweighter", "RunContext", "RunResult", "Split", "Splits", "Stage",
    "StepContext",
    "audit", "build_plugin_manager", "hookimpl", "mean_one", "run",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'noisyseg' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
