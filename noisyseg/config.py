"""The one typed configuration that a TOML/YAML file, the CLI and the Python API all fill.

Component sections, one per kind of :data:`noisyseg.kinds.KINDS` (``dataset``, ``noise``,
``backbone``, ``loss``, ``reweighter``, ``corrector``, ``recipe``), hold a ``name`` and free
``options``; the options are validated by the chosen component's own ``Options`` model when the
run is built, so a plugin brings its own settings (and the run's config.yaml records them all).
The sections' models are :mod:`noisyseg.config_sections`; this module puts them together into
``Config`` and reads, merges, resolves and writes configs.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, create_model

from noisyseg.config_sections import (
    AugmentConfig,
    ComponentSpec,
    NoiseSpec,
    OutputConfig,
    TrainConfig,
    _Run,
)
from noisyseg.errors import ConfigError
from noisyseg.kinds import KINDS

__all__ = [  # the sections are defined in noisyseg.config_sections
    "AugmentConfig", "ComponentSpec", "Config", "NoiseSpec", "OutputConfig", "TrainConfig", "dump",
    "format_errors", "load_file", "merge", "parse_assignment", "resolve", "validate",
]


#: the one section with fields besides name and options
_SECTION_BASES: dict[str, type[ComponentSpec]] = {"noise": NoiseSpec}


def _component_sections() -> dict[str, Any]:
    """One config section per kind of component (:data:`noisyseg.kinds.KINDS`), its name
    defaulting to the kind's default."""
    sections = {}
    for key, kind in KINDS.items():
        spec = create_model(f"{key.capitalize()}Spec", __base__=_SECTION_BASES.get(key, ComponentSpec),
                            __doc__=f"The {kind.label} picked by name, with its options.",
                            name=(str, kind.default))
        sections[key] = (spec, Field(default_factory=spec))
    return sections


#: a whole run: seed, device, one section per kind of component, then train, augment, output
Config = create_model(
    "Config", __base__=_Run, __module__=__name__, __doc__=_Run.__doc__,
    **_component_sections(),
    train=(TrainConfig, Field(default_factory=TrainConfig)),
    augment=(AugmentConfig, Field(default_factory=AugmentConfig)),
    output=(OutputConfig, Field(default_factory=OutputConfig)),
)


def validate(data: dict[str, Any]) -> Config:
    """Build a Config from plain data; errors name the field and what is allowed."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def format_errors(exc: ValidationError, prefix: str = "", head: str = "invalid config") -> str:
    """One line naming every offending field (``prefix`` is put before each field path)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "") or "config"
        got = err.get("input")
        shown = "" if "input" not in err or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{loc}: {err['msg']}{shown}")
    return f"{head}: " + "; ".join(parts)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into plain data."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml, .yml or .json file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/mapping at the top level")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (override wins)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_assignment(text: str) -> dict[str, Any]:
    """Turn ``"reweighter.options.alpha=0.01"`` into nested data; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.001), got {text!r}")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for k in reversed(keys):
        value = {k: value}
    return value


def resolve(
    config: Config | dict[str, Any] | str | Path | None = None, **overrides: Any
) -> Config:
    """Any accepted form -> a validated Config. ``overrides`` use dotted keys with ``__``
    (``train__epochs=3``) or nested dicts (``train={"epochs": 3}``)."""
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, Config):
        data = config.model_dump()
    elif isinstance(config, dict):
        data = config
    else:
        data = load_file(config)
    for key, value in overrides.items():
        nested: Any = value
        for k in reversed(key.split("__")):
            nested = {k: nested}
        data = merge(data, nested)
    return validate(data)


def dump(config: Config) -> str:
    """The resolved config as YAML (what is saved in the run directory)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
