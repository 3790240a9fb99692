"""What the command line shows about the installed plugins, without importing them.

Importing a plugin imports torch (seconds). ``noisyseg --help``, ``noisyseg plugins`` and
``noisyseg config`` only need each component's name, kind, plugin, summary and options, so they
read them from an index: a JSON file written the first time the plugins are imported, in the
cache folder (``$NOISYSEG_CACHE``, default ``~/.cache/noisyseg/generated``). The index carries a
fingerprint of what it was made from — the ``noisyseg`` entry points with their distributions'
versions, and the size and modification time of every Python file of their packages and of
noisyseg itself — so installing, removing or editing a plugin makes it stale, and the next
command rebuilds it (importing the plugins once). Plugins need nothing new for this.

This module imports nothing heavy: it must stay free of torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from importlib import metadata, util
from pathlib import Path
from typing import Any

#: bump when the index's layout changes
LAYOUT = 3
GROUP = "noisyseg"
AUTOLOAD_ENV = "NOISYSEG_DISABLE_PLUGIN_AUTOLOAD"


def cache_folder() -> Path | None:
    """The folder of generated data (the plugin index, datacache's entries), or None with
    ``NOISYSEG_CACHE=off``."""
    setting = os.environ.get("NOISYSEG_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "noisyseg" / "generated"


def fingerprint() -> str:
    """A digest of everything the index is made from (entry points, versions, files)."""
    digest = hashlib.sha256(f"{LAYOUT} {sys.version} {os.environ.get(AUTOLOAD_ENV, '')}".encode())
    tops = {"noisyseg"}
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        dist = ep.dist
        digest.update(f"{ep.name}={ep.value} {dist.name if dist else ''} {dist.version if dist else ''}\n"
                      .encode())
        tops.add(ep.value.split(":")[0].split(".")[0])
    for top in sorted(tops):
        for path in _files(top):
            stat = path.stat()
            digest.update(f"{path} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _files(module: str) -> list[Path]:
    """The Python files of a top-level module or package, found without importing it."""
    try:
        spec = util.find_spec(module)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.py"))
    return [Path(spec.origin)] if spec.origin and os.path.exists(spec.origin) else []


def load() -> dict[str, Any]:
    """The index: read when fresh, else built (importing the plugins) and written. The
    warnings of plugins that failed to import are given again each time."""
    key = fingerprint()
    folder = cache_folder()
    path = folder / f"plugin-index-{key[:16]}.json" if folder is not None else None
    if path is not None and path.is_file():
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError):
            index = None
        if index and index.get("fingerprint") == key:
            for message in index["warnings"]:
                warnings.warn(message, stacklevel=2)
            return index
    index = build()
    index["fingerprint"] = key
    if path is not None:
        _write(path, index)
    return index


def build() -> dict[str, Any]:
    """The index, from the plugins themselves (imports them, hence torch)."""
    from noisyseg.build import trains_on_meta_by_default
    from noisyseg.kinds import KINDS
    from noisyseg.plugins import Registry, build_plugin_manager, option_rows

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = build_plugin_manager()
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    registry = Registry(pm)
    kinds = {}
    for key in KINDS:
        kinds[key] = [{
            "name": e.name, "plugin": e.plugin, "version": e.version,
            "description": e.cls.describe(), "details": e.cls.details(),
            "options": option_rows(e.cls),
            "defaults": e.cls.Options().model_dump(mode="json") if _has_defaults(e.cls) else None,
            **({"trains_on_meta": trains_on_meta_by_default(e.cls),
                "default_corrector": e.cls.default_corrector} if key == "reweighter" else {}),
        } for e in registry.entries(key)]
    commands = sorted(impl.plugin_name for impl in pm.hook.register_commands.get_hookimpls())
    return {"layout": LAYOUT, "kinds": kinds, "commands": commands,
            "warnings": [str(w.message) for w in caught]}


def _has_defaults(cls: Any) -> bool:
    """Whether every option has a default (a required option has none to show)."""
    return not any(f.is_required() for f in cls.Options.model_fields.values())


def _write(path: Path, index: dict[str, Any]) -> None:
    """Write the index beside its final name, then rename (no half-written file); old indexes go."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plugin-index-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(index, fh)
        os.replace(tmp, path)
        for old in path.parent.glob("plugin-index-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:  # a read-only cache: the next command builds it again
        pass


def entries(index: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """One kind's components, sorted by name."""
    return index["kinds"].get(kind, [])
