"""Every hook has a documentation section and a test (as datasette does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from noisyseg import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in dir(hookspecs)
               if name.startswith(("register_", "on_")) and callable(getattr(hookspecs, name)))


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    text = (ROOT / "docs" / "plugin-hooks.md").read_text()
    assert re.search(rf"^## {hook}$", text, re.M), f"docs/plugin-hooks.md has no '## {hook}' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_tested(hook: str) -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py")
    assert f"def {hook}(" in tests, f"no test implements the hook {hook}"
