"""The shape of the code, checked: no import cycles, the study's schema read and written in one module, Optuna's
private API in one module, and every import inside a function a deliberate, commented lazy one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autoeff"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:` (never executed)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The autoeff modules an import statement loads (a `from pkg import sub` names the submodule)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if node.level:  # relative imports: resolved against the importing module's package
        base = module.split(".")[: -node.level] if module in MODULES else []
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{name}.{alias.name}"
        if sub in MODULES:
            out.add(sub)
        elif name in MODULES:
            out.add(name)
    return out


def _with_packages(module: str, targets: set[str]) -> set[str]:
    """Importing `a.b.c` first runs the `__init__` of `a.b` (and `a`) unless the importer is inside them."""
    out = set(targets)
    for t in targets:
        parts = t.split(".")
        for i in range(1, len(parts)):
            package = ".".join(parts[:i])
            if package in MODULES and not (module == package or module.startswith(package + ".")):
                out.add(package)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {m: _with_packages(m, {t for node in _imports(ast.parse(p.read_text())) for t in _targets(m, node)})
             - {m} for m, p in MODULES.items()}
    # `autoeff.search_spaces` imports its knob modules by name (importlib): the edges a parser cannot see
    from autoeff.search_spaces import KNOB_MODULES

    graph["autoeff.search_spaces"] |= set(KNOB_MODULES)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    # importing a package's submodule from outside runs the package's __init__ first; from inside it does not
    assert _with_packages("autoeff.recipe", {"autoeff.search_spaces.base"}) == {
        "autoeff.search_spaces.base", "autoeff.search_spaces"}
    assert _with_packages("autoeff.search_spaces.solver", {"autoeff.search_spaces.base"}) == {
        "autoeff.search_spaces.base"}


def test_autoeff_has_no_import_cycles():
    """Every import counts, function-local ones included: a lazy import is still a dependency."""
    graph = import_graph()
    assert "autoeff.study" in graph["autoeff.run"]  # the graph sees real edges
    assert "autoeff.search_spaces.cache" in graph["autoeff.search_spaces"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _attribute_uses(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(PACKAGE.parent)}:{n.lineno} .{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in names]


def test_study_and_trial_attributes_are_read_and_written_only_in_the_schema_module():
    """No module but `autoeff/study.py` touches an Optuna user attribute (the stored schema has one home)."""
    names = {"user_attrs", "set_user_attr", "set_trial_user_attr", "set_study_user_attr"}
    offenders = [use for m, p in MODULES.items() if m != "autoeff.study" for use in _attribute_uses(p, names)]
    assert offenders == []
    assert _attribute_uses(MODULES["autoeff.study"], names)  # the check would see them


def test_optunas_private_api_is_used_only_in_the_adapter():
    names = {"_storage", "_trial_id", "_get_stale_trial_ids", "scoped_session"}
    offenders = [use for m, p in MODULES.items() if m != "autoeff.optuna_compat" for use in _attribute_uses(p, names)]
    private_imports = [f"{m}: {node.module}" for m, p in MODULES.items() if m != "autoeff.optuna_compat"
                       for node in _imports(ast.parse(p.read_text()))
                       if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna")
                       and any(part.startswith("_") for part in (node.module or "").split("."))]
    assert offenders == [] and private_imports == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_inside_functions_are_commented_lazy_imports(module):
    """Imports belong at the top of a module; one inside a function is a deliberate lazy import (heavy or
    optional) whose group says why in a comment on its first line or the line above."""
    path = MODULES[module]
    lines = path.read_text().splitlines()
    tree = ast.parse(path.read_text())
    bare = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for block in ast.walk(fn):
            body = getattr(block, "body", None)
            if not isinstance(body, list):
                continue
            first_of_group = None
            for stmt in body:
                if isinstance(stmt, ast.Import | ast.ImportFrom):
                    if first_of_group is None:
                        first_of_group = stmt
                        line, above = lines[stmt.lineno - 1], lines[stmt.lineno - 2].strip()
                        if "#" not in line and not above.startswith("#"):
                            bare.append(f"{path.name}:{stmt.lineno}: {line.strip()}")
                else:
                    first_of_group = None
    assert bare == [], "uncommented function-local imports (move them to the top, or say why they are lazy)"
