"""The core reads top to bottom: no module in noisyseg/ over 300 lines, no function over 60, and
no import cycle among the modules of noisyseg/ and plugins/ (module-level imports only: an import
inside a function, or under ``if TYPE_CHECKING:``, runs later or never)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "noisyseg"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    """The dotted module name of ``path``: its folders up to the first one that is no package."""
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", _sources(CORE), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_are_short(path: Path) -> None:
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_MODULE_LINES}): split it by job")
    long = [f"{f.name} (line {f.lineno}): {f.end_lineno - f.lineno + 1} lines"
            for f in _functions(ast.parse(text)) if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, (f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines (from "
                      f"def to the last line): {'; '.join(long)}")


# --------------------------------------------------------------------- the import graph
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: its top level, the branches of its ``if``
    and ``try`` statements (not ``if TYPE_CHECKING:``) and class bodies; not function bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            found += ([] if _is_type_checking(node.test) else _module_level_imports(node.body))
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += _module_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found += _module_level_imports(node.body)
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Every dotted name ``node`` may import: ``from a import b`` may be module ``a.b``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module -> the modules among ``paths`` it imports at module level."""
    modules = {_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for node in _module_level_imports(ast.parse(path.read_text()).body):
            for target in _targets(node, module, path.name == "__init__.py"):
                while target and target not in modules:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the path being followed, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_noisyseg_and_plugins() -> None:
    graph = import_graph(_sources(CORE) + _sources(ROOT / "plugins"))
    # the graph is read, not empty: a few edges that hold by design
    assert "noisyseg.loop" in graph["noisyseg.engine"]
    assert "noisyseg.kinds" in graph["noisyseg.config"]
    assert "noisyseg_datasets.files" in graph["noisyseg_datasets.volumes"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_type_checking_imports_and_function_bodies_are_not_edges() -> None:
    tree = ast.parse("import a\nif TYPE_CHECKING:\n    import b\ndef f():\n    import c\n"
                     "class K:\n    import d\ntry:\n    import e\nexcept ImportError:\n    import g\n")
    names = [alias.name for node in _module_level_imports(tree.body) for alias in node.names]
    assert names == ["a", "d", "e", "g"]
