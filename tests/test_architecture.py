"""The package's import graph has no circle, and each stage imports only the stages below it.

Every ``import`` counts, also one deferred into a function body (a deferred import hides a
circle from Python but not from a reader), and importing ``a.b.c`` imports the packages
``a`` and ``a.b`` too, so that a circle through a package's ``__init__`` is found.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The metamodal modules that ``path`` imports, with the packages above them that the
    import runs (all but those above ``path`` itself, which are already being imported)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        explicit: list[str] = []
        if isinstance(node, ast.Import):
            explicit = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = [f"{base}.{alias.name}" for alias in node.names
                          if f"{base}.{alias.name}" in modules]
            # ``from pkg import name`` runs pkg's __init__ unless every name is a submodule
            explicit = submodules + ([base] if len(submodules) < len(node.names) else [])
        for target in explicit:
            if target in modules and target != name:
                found.add(target)
            parts = target.split(".")
            for end in range(1, len(parts)):
                prefix = ".".join(parts[:end])
                # a package above the importer is already being imported: no new edge
                if prefix in modules and not name.startswith(prefix + "."):
                    found.add(prefix)
    return found
    return found


def import_graph() -> dict[str, set[str]]:
    """Module name -> the metamodal modules it imports (anywhere in its body)."""
    files = {_module_name(p): p for p in (SRC / "metamodal").rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_circle_through_a_package() -> None:
    graph = {"p": {"p.a"}, "p.a": {"q.b", "q"}, "q": {"q.b", "p"}, "q.b": set()}
    assert _cycles(graph) == [["p", "p.a", "q"]]


def test_the_command_line_imports_only_the_api_the_errors_and_the_config_types() -> None:
    graph = import_graph()
    allowed = {"metamodal", "metamodal.api", "metamodal.api.fields", "metamodal.errors",
               "metamodal.config"}
    assert graph["metamodal.cli"] <= allowed, graph["metamodal.cli"] - allowed


def test_the_demo_calls_only_api_verbs() -> None:
    """The demo composes the verbs of `metamodal.api`; it may name result and config types,
    but the work is done by api functions."""
    graph = import_graph()
    allowed = {"metamodal.api", "metamodal.config", "metamodal.datasets.synthetic",
               "metamodal.evaluate.report", "metamodal.evaluate.protocol",
               "metamodal.evaluate.retrieval", "metamodal.evaluate.zeroshot"}
    allowed |= {m.rpartition(".")[0] for m in allowed}  # their packages, run on the way
    outside = {m for m in graph["metamodal.api.demo"]
               if not m.startswith("metamodal.api.") and m not in allowed}
    assert not outside, outside
