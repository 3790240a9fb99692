"""Errors that noisyseg reports to users as one readable line."""

from __future__ import annotations


class NoisysegError(Exception):
    """Base class of every error noisyseg raises on purpose (bad input, bad config, bad plugin)."""

    #: the command line's exit status: 2 for usage errors (click's convention), 1 for failures
    exit_code = 2


class ConfigError(NoisysegError):
    """A configuration value is missing, unknown or out of range."""


class PluginError(NoisysegError):
    """A plugin is broken: duplicate component name, a hook that returns a non-component..."""


class DataError(NoisysegError):
    """A dataset cannot be read or does not hold what it should."""


class CheckpointError(NoisysegError):
    """A checkpoint is missing, unreadable or does not fit the run it should resume."""


class DataWarning(UserWarning):
    """A dataset holds something suspicious but usable: constant images, masks without foreground."""


class NumericalError(NoisysegError):
    """The loss became NaN or infinite."""

    exit_code = 1
