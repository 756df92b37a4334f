"""The package's modules depend on one another without a circle (imports
made inside functions and for type checking count too); test modules take
what they share from helper modules, never from another test module or a
conftest."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "macvtap_hook"
TESTS = PACKAGE.parent / "tests"


def dependencies() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    found: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "macvtap_hook":
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("macvtap_hook."):
                deps.add((node.module or "").split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("macvtap_hook.")}
        found[name] = (deps & modules) - {name}
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself, with one way round."""
    found = []
    for start in sorted(graph):
        seen, stack = set(), [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph[node]):
                if dep == start:
                    found.append([*path, start])
                    stack.clear()
                    break
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    return found


def test_no_module_depends_on_itself_through_others() -> None:
    assert circles(dependencies()) == []


def test_the_circle_finder_finds_one() -> None:
    assert circles({"cli": {"installer"}, "installer": {"manpage"}, "manpage": {"cli"}, "x": set()}) == [
        ["cli", "installer", "manpage", "cli"],
        ["installer", "manpage", "cli", "installer"],
        ["manpage", "cli", "installer", "manpage"],
    ]


def imported_test_modules(source: str) -> set[str]:
    """The test modules and conftests an import in `source` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    last = {n: n.rsplit(".", 1)[-1] for n in names}
    return {n for n, leaf in last.items() if leaf.startswith("test_") or leaf == "conftest"}


def test_no_test_module_imports_another_or_a_conftest() -> None:
    found = {
        str(path.relative_to(TESTS)): hits
        for path in sorted(TESTS.rglob("*.py"))
        if (hits := imported_test_modules(path.read_text()))
    }
    assert found == {}


def test_the_test_import_finder_finds_one() -> None:
    src = "from tests.integration.test_hook import booted\nimport conftest\nfrom tests.fakes import World\n"
    assert imported_test_modules(src) == {"tests.integration.test_hook", "conftest"}
