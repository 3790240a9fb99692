"""noisyseg: train segmentation networks when the pixel labels are wrong.

Plugin authors write ``from noisyseg import hookimpl`` and subclass the bases in
:mod:`noisyseg.components`; users call :func:`noisyseg.run`.
"""

from __future__ import annotations

from importlib import metadata

from noisyseg.components import (
    Backbone,
    Dataset,
    LabelCorrector,
    NoiseModel,
    Reweighter,
    RunContext,
    Split,
    Splits,
    StepContext,
    mean_one,
)
from noisyseg.config import Config
from noisyseg.engine import RunResult, run
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

__all__ = [
    "Backbone",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "DataWarning",
    "Dataset",
    "LabelCorrector",
    "NoiseModel",
    "NoisysegError",
    "NumericalError",
    "PluginError",
    "Registry",
    "Reweighter",
    "RunContext",
    "RunResult",
    "Split",
    "Splits",
    "StepContext",
    "build_plugin_manager",
    "hookimpl",
    "mean_one",
    "run",
]
