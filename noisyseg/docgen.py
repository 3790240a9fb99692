"""The option tables of docs/configuration.md, generated from the components' ``Options``
schemas so they cannot drift (tests/test_docs.py compares them).

    python -m noisyseg.docgen        # rewrite the table in docs/configuration.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from noisyseg.kinds import KINDS
from noisyseg.plugins import Registry, build_plugin_manager, option_rows

START, END = "<!-- options:start (python -m noisyseg.docgen) -->", "<!-- options:end -->"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def options_markdown(registry: Registry | None = None) -> str:
    """One table row per option of every built-in component, kind by kind."""
    registry = registry or Registry(build_plugin_manager(entry_points=True))
    lines = ["| component | option | type | default | what it does |", "|---|---|---|---|---|"]
    for key, kind in KINDS.items():
        for entry in registry.entries(key):
            if entry.version and not entry.version.startswith("noisyseg "):
                continue  # third-party plugins document themselves
            rows = option_rows(entry.cls)
            if not rows:
                lines.append(f"| {kind.label} `{entry.name}` | (none) | | | |")
            for row in rows:
                cells = [f"{kind.label} `{entry.name}`", f"`{row['name']}`", row["type"],
                         f"`{row['default']}`", row["description"]]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def section(text: str) -> str:
    """What lies between the markers of a page."""
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> None:
    text = PAGE.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(f"{head}{START}\n{options_markdown()}\n{END}{tail}")
    print(f"wrote the option table of {PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
