"""The text of ``noisyseg plugins``: every installed component by kind, and one component's
options, from the plugin index (:mod:`noisyseg.plugin_index`, no plugin imported)."""

from __future__ import annotations

from typing import Any

from noisyseg.errors import ConfigError
from noisyseg.kinds import AUTO, KINDS
from noisyseg.plugin_index import entries


def table(index: dict[str, Any]) -> list[str]:
    """Per kind, one line per component: name, entry point (package and version), summary;
    a recipe's stages below it."""
    lines = []
    for key, kind in KINDS.items():
        lines.append(f"{kind.title}:")
        found = entries(index, key)
        width = max([12, *(len(e["name"]) for e in found)])
        for e in found:
            source = f"{e['plugin']} ({e['version']})" if e["version"] else e["plugin"]
            lines.append(f"  {e['name']:<{width}} {source:<28} {e['description']}")
            lines += [f"  {'':<{width}}   {line}" for line in e["details"]]
    return lines


def table_json(index: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {key: [{"name": e["name"], "plugin": e["plugin"], "version": e["version"],
                   "description": e["description"], **({"details": e["details"]} if e["details"] else {})}
                  for e in entries(index, key)] for key in KINDS}


def named(index: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, entry) of every component called ``name``; none is an error listing the names."""
    found = [(key, e) for key in KINDS for e in entries(index, key) if e["name"] == name]
    if not found:
        known = sorted({e["name"] for key in KINDS for e in entries(index, key)})
        raise ConfigError(f"no component is called '{name}'; installed: {', '.join(known)}")
    return found


def options(index: dict[str, Any], name: str) -> list[str]:
    """Every option of the component(s) called ``name``: type, default, what it does."""
    lines = []
    for kind, e in named(index, name):
        lines.append(f"{kind} '{e['name']}' ({e['description']}): set with --set {kind}.options.NAME=VALUE")
        lines += [f"  {line}" for line in e["details"]]
        if not e["options"]:
            lines.append("  (no options)")
        for row in e["options"]:
            default = row["default"] if len(row["default"]) <= 60 else "(above)"
            lines.append(f"  {row['name']:<16} {row['type']:<24} default {default}")
            if row["description"]:
                lines.append(f"  {'':<16} {row['description']}")
    return lines


def options_json(index: dict[str, Any], name: str) -> dict[str, Any]:
    return {kind: e["options"] for kind, e in named(index, name)}


def default_config(index: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Config data with every component section's options filled in with the component's
    defaults, corrector "auto" and train.train_on_meta as the reweighter decides them when unset
    (what ``noisyseg config`` shows, as :func:`noisyseg.build.with_options` does), from the
    index."""
    out = dict(data)
    for key in KINDS:
        section = dict(out.get(key) or {})
        name = section.get("name", KINDS[key].default)
        found = [e for e in entries(index, key) if e["name"] == name]
        defaults = found[0]["defaults"] if found and found[0]["defaults"] is not None else {}
        out[key] = {**section, "name": name, "options": {**defaults, **section.get("options", {})}}
        if key == "reweighter" and found:  # what the reweighter decides when the config does not
            if (out.get("train") or {}).get("train_on_meta") is None:
                out["train"] = {**(out.get("train") or {}), "train_on_meta": found[0]["trains_on_meta"]}
            corrector = dict(out.get("corrector") or {})
            if corrector.get("name", AUTO) == AUTO:
                out["corrector"] = {**corrector, "name": found[0]["default_corrector"]}
    return out
