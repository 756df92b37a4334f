"""The package's modules depend on one another without a circle (imports
made inside functions and for type checking count too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "macvtap_hook"


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
