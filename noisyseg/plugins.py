"""Build a plugin manager and the registry of components it supplies.

Built-in methods and third-party ones load the same way: through the ``noisyseg`` entry-point
group. A fresh manager is built per run (there is no global). Set ``NOISYSEG_DISABLE_PLUGIN_AUTOLOAD=1``
to load only the plugins shipped with noisyseg itself.
"""

from __future__ import annotations

import fnmatch
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from noisyseg import hookspecs
from noisyseg.component import Component
from noisyseg.config import format_errors
from noisyseg.errors import ConfigError, PluginError
from noisyseg.kinds import KINDS

GROUP = "noisyseg"
AUTOLOAD_ENV = "NOISYSEG_DISABLE_PLUGIN_AUTOLOAD"

class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus, per plugin name, the distribution and version that supplied it."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self.distributions: dict[str, tuple[str, str]] = {}


def build_plugin_manager(
    *, entry_points: bool = True, plugins: Iterable[Any] = (), only: Iterable[str] | None = None
) -> PluginManager:
    """A fresh manager with the hookspecs, entry-point plugins and the given extra ``plugins``.

    Args:
        entry_points: load the ``noisyseg`` entry-point group (built-ins included). With the
            environment variable ``NOISYSEG_DISABLE_PLUGIN_AUTOLOAD`` set, only noisyseg's own
            entry points load.
        plugins: extra plugin objects (modules or instances with ``@hookimpl`` methods).
        only: load just these entry points (by name), e.g. the plugins that add commands.
    """
    pm = PluginManager()
    wanted = set(only) if only is not None else None
    if entry_points:
        only_builtin = bool(os.environ.get(AUTOLOAD_ENV))
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            if (only_builtin and dist != "noisyseg") or (wanted is not None and ep.name not in wanted):
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                warnings.warn(
                    f"plugin '{ep.name}' ({dist}) failed to import and was skipped: "
                    f"{type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            pm.register(plugin, name=ep.name)
            if ep.dist is not None:
                pm.distributions[ep.name] = (ep.dist.name, ep.dist.version)
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        if pm.get_plugin(name) is not None:
            name = f"{name}-{id(plugin)}"
        pm.register(plugin, name=name)
    pm.check_pending()
    return pm


@dataclass(frozen=True)
class Entry:
    """One registered component and where it came from."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str
    version: str


class Registry:
    """Name -> component class, per kind, built from a plugin manager's ``register_*`` hooks."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        versions = {
            name: f"{dist} {version}"
            for name, (dist, version) in getattr(pm, "distributions", {}).items()
        }
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for kind, row in KINDS.items():
            base, hook_name = row.base, row.hook
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                result = impl.function()
                if not isinstance(result, (list, tuple)):
                    raise PluginError(
                        f"plugin '{plugin}': {hook_name}() must return a list of classes, "
                        f"got {type(result).__name__}"
                    )
                for cls in result:
                    self._add(kind, base, cls, plugin, versions.get(plugin, ""), hook_name)

    def _add(
        self, kind: str, base: type, cls: Any, plugin: str, version: str, hook: str
    ) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin '{plugin}': {hook}() returned {cls!r}, which is not a subclass of "
                f"noisyseg.components.{base.__name__}"
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}': {cls.__name__} has no `name` string")
        if not (isinstance(cls.Options, type) and issubclass(cls.Options, BaseModel)):
            raise PluginError(f"plugin '{plugin}': {cls.__name__}.Options is not a pydantic model")
        known = self._entries[kind].get(name)
        if known is not None:
            raise PluginError(
                f"duplicate {KINDS[kind].label} name '{name}': supplied by plugin '{known.plugin}' "
                f"({known.cls.__qualname__}) and by plugin '{plugin}' ({cls.__qualname__})"
            )
        self._entries[kind][name] = Entry(kind, name, cls, plugin, version)

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of one kind, filtered by a shell-style ``pattern``."""
        return sorted(n for n in self._entries[kind] if fnmatch.fnmatch(n, pattern))

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> type[Component]:
        """The class registered as ``name``; unknown names fail listing the valid ones."""
        try:
            return self._entries[kind][name].cls
        except KeyError:
            label = KINDS[kind].label
            raise ConfigError(
                f"unknown {label} '{name}'; choose one of: {', '.join(self.names(kind))}"
            ) from None

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """Instantiate ``name`` with validated ``options`` (errors name the offending field)."""
        cls = self.get(kind, name)
        try:
            opts = cls.Options.model_validate(options or {})
        except ValidationError as exc:
            raise ConfigError(
                format_errors(exc, f"{kind}.options", f"invalid options for '{name}'")
            ) from None
        return cls(opts)


def option_rows(cls: type[Component]) -> list[dict[str, str]]:
    """A component's options from its ``Options`` schema: name, type, default, description."""
    rows = []
    for name, field in cls.Options.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            default = json.dumps(_plain(field.get_default(call_default_factory=True)), default=str)
        rows.append({"name": name, "type": _type_name(field.annotation), "default": default,
                     "description": field.description or ""})
    return rows


def _plain(value: Any) -> Any:
    """A default as plain data; a model (a recipe's stage) without its fields left at default."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation)
    for prefix in ("typing.", "pathlib.", "collections.abc.", "noisyseg.components.",
                   "noisyseg.recipe_kind."):
        text = text.replace(prefix, "")
    return text.replace("NoneType", "None")
