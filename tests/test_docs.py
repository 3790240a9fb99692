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


# --------------------------------------------------------------------- options in the docs
def _builtin_entries() -> list:
    from noisyseg.kinds import KINDS
    from noisyseg.plugins import Registry

    registry = Registry(build_plugin_manager())
    return [e for key in KINDS for e in registry.entries(key) if e.version.startswith("noisyseg ")]


def test_the_option_table_of_the_configuration_page_is_up_to_date() -> None:
    from noisyseg.docgen import PAGE, options_markdown, section

    assert section(PAGE.read_text()) == options_markdown(), (
        "docs/configuration.md's option table is out of date: run python -m noisyseg.docgen")


def test_every_builtin_option_says_what_it_does() -> None:
    from noisyseg.plugins import option_rows

    missing = [f"{e.name}.{row['name']}" for e in _builtin_entries() for row in option_rows(e.cls)
               if not row["description"]]
    assert not missing, f"options without a description: {missing}"


def _documented_defaults() -> list[tuple[str, str, str, str]]:
    """(page, component, option, documented default) from the methods' option tables: a first
    cell of backticked names, then one column of defaults (or one per component, named in the
    header, as in index.md)."""
    found = []
    for page in sorted((ROOT / "docs" / "methods").glob("*.md")):
        header: list[str] = []
        for line in page.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
            if cells and cells[0] == "option":
                header = cells
                continue
            if not cells or not cells[0].startswith("`"):
                continue
            names = re.findall(r"`(\w+)`", cells[0])
            columns = [(h, i) for i, h in enumerate(header) if i > 0 and h not in ("default", "meaning")]
            pairs = columns or [(page.stem, 1)]
            for component, i in pairs:
                parts = cells[i].split(",") if len(names) > 1 else [cells[i]]
                values = [v.strip().strip("`") for v in parts]
                found += [(page.name, component, n, v) for n, v in zip(names, values, strict=False)]
    return found


def test_the_methods_pages_state_the_defaults_the_code_has() -> None:
    import yaml

    from noisyseg.plugins import option_rows

    schema = {(e.name, row["name"]): row["default"] for e in _builtin_entries() for row in option_rows(e.cls)}
    checked, wrong = 0, []
    for page, component, option, shown in _documented_defaults():
        if (component, option) not in schema or shown in ("—", "(always)"):
            continue
        actual = yaml.safe_load(schema[(component, option)])
        try:
            written = yaml.safe_load(shown)
        except yaml.YAMLError:
            continue
        if actual is None or isinstance(written, str) != isinstance(actual, str):
            continue  # a default in words ("the pixel noise rate") or none
        checked += 1
        if (written != actual) if isinstance(actual, (str, bool)) else float(written) != float(actual):
            wrong.append(f"{page}: {component}.{option} is documented as {shown}, the code has {actual}")
    assert checked >= 30, f"only {checked} documented defaults were found to check"
    assert not wrong, "; ".join(wrong)


# --------------------------------------------------------------------- the README's numbers
def test_the_readmes_numbers_come_from_the_results_store() -> None:
    """The README's 'Which method?' quotes numbers only in its generated table, and that table
    is what the committed results store gives (python benchmarks/leaderboard.py)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import leaderboard
    import store

    text = (ROOT / "README.md").read_text()
    section = text.split("## Which method?", 1)[1].split("\n## ", 1)[0]
    table = leaderboard.readme_section(section)
    assert table == leaderboard.readme_table(store.rows(store.STORE)), (
        "the README's table differs from the store: run python benchmarks/leaderboard.py")
    outside = re.sub(r"```.*?```", "", section.replace(table, ""), flags=re.S)  # commands aside
    quoted = re.findall(r"\d+(?:\.\d+)?\s*%|[+-]?0\.\d+", outside)
    assert not quoted, f"'Which method?' quotes {quoted} outside its generated table"


def test_the_leaderboard_page_is_the_store_s() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import leaderboard
    import store

    assert (ROOT / "docs" / "leaderboard.md").read_text() == leaderboard.page(store.rows(store.STORE)), (
        "docs/leaderboard.md is out of date: run python benchmarks/leaderboard.py")


def test_the_noise_pages_suite_tables_are_the_store_s() -> None:
    """docs/noise.md's recovery tables are what the committed store gives
    (python benchmarks/noise_suite.py --docs)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import noise_suite
    import store

    text = (ROOT / "docs" / "noise.md").read_text()
    block = text.split(noise_suite.START, 1)[1].split(noise_suite.END, 1)[0].strip()
    assert block == noise_suite.docs_block(store.rows(store.STORE, preset="cpu")), (
        "docs/noise.md's suite tables are out of date: run python benchmarks/noise_suite.py --docs")
