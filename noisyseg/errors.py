"""Errors that noisyseg reports to users as one readable line."""

from __future__ import annotations


class NoisysegError(Exception):
    """Base class of every error noisyseg raises on purpose (bad input, bad config, bad plugin)."""


class ConfigError(NoisysegError):
    """A configuration value is missing, unknown or out of range."""


class PluginError(NoisysegError):
    """A plugin is broken: duplicate component name, a hook that returns a non-component..."""


class DataError(NoisysegError):
    """A dataset cannot be read or does not hold what it should."""
