"""Every hook has a documentation section and a test (as datasette does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from noisyseg.plugins import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
#: the hooks the plugin manager knows (not names guessed from a prefix)
HOOKS = sorted(name for name, caller in vars(build_plugin_manager(entry_points=False).hook).items()
               if caller.spec is not None)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    text = (ROOT / "docs" / "plugin-hooks.md").read_text()
    assert re.search(rf"^## {hook}$", text, re.M), f"docs/plugin-hooks.md has no '## {hook}' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_tested(hook: str) -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py")
    assert re.search(rf"@hookimpl\s*\n\s*def {hook}\(", tests), f"no test implements the hook {hook}"


def test_the_hooks_are_the_kinds_and_two_more() -> None:
    from noisyseg.kinds import KINDS

    assert set(HOOKS) == {kind.hook for kind in KINDS.values()} | {"register_commands", "on_epoch_end"}
