"""No import cycles inside the attnbench package.

The graph is read from the source with `ast`, not by importing: every `import attnbench.x` and `from attnbench.x
import y` counts, at module level and inside functions alike (a function-level import is a cycle postponed, not
removed). A cycle is a strongly connected component of more than one module; each is reported with its edges."""

from __future__ import annotations

import ast
from pathlib import Path

from attnbench.paths import PACKAGE_DIR

PACKAGE = "attnbench"

# Cycles tolerated for now, each the exact set of modules of one cycle (a NEW cycle, or one of these grown by a
# module, fails). Empty since issue 17's branches removed the last ones (aggregate <-> tables_v1, bundle <-> verify).
KNOWN_CYCLES: list[frozenset[str]] = []


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (a package is its __init__.py)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source. `from attnbench.x import y` is an edge to
    attnbench.x.y when that is a module, else to attnbench.x."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name and t.split(".")[0] == PACKAGE}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & set(component))]
    return "{" + ", ".join(component) + "}: " + "; ".join(edges)


def test_the_detector_finds_a_cycle_and_its_edges():
    """The check itself can fail: a three-module ring and a function-level back edge are both found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "f"]]
    assert describe(["e", "f"], graph) == "{e, f}: e -> f; f -> e"


def test_function_level_imports_count(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "one.py").write_text("from attnbench.sub import two\n")
    (pkg / "sub" / "two.py").write_text("def late():\n    from attnbench.sub.one import x\n")
    graph = import_graph(module_files(pkg))
    assert graph["attnbench.sub.one"] == {"attnbench.sub.two"}
    assert cycles(graph) == [["attnbench.sub.one", "attnbench.sub.two"]]


def test_no_import_cycles():
    graph = import_graph(module_files())
    assert len(graph) > 30  # the walk found the package
    unexpected = [c for c in cycles(graph) if frozenset(c) not in KNOWN_CYCLES]
    print("\n".join(describe(c, graph) for c in cycles(graph)) or "no import cycles")
    assert not unexpected, "import cycles: " + " | ".join(describe(c, graph) for c in unexpected)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_verify_does_not_import_the_run_orchestrator():
    """`attnbench verify` checks a received run's backend with engines.backend, not through run-arm's module (which
    pulls in the sweep, the server and the images)."""
    graph = import_graph(module_files())
    # verify's raw-data checks, the backend's among them, live in bundles/consistency.py
    assert "attnbench.bundles.consistency" in graph["attnbench.bundles.verify"]
    assert "attnbench.engines.backend" in graph["attnbench.bundles.consistency"]
    assert "attnbench.engines.runarm" not in reachable(graph, "attnbench.bundles.verify")
