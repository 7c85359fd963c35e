"""No circle of module-level imports between the product's files (issue 11).

A circle makes import order matter and hides which module a concept belongs to. Imports inside
functions (deferred so ``crossdiff --help`` loads no torch) and under ``TYPE_CHECKING`` are not
edges here; ``from pkg import submodule`` is an edge to the submodule, not to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "crossdiff").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _top_level_imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(name, path, child)
                subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in mods]
                if len(subs) < len(child.names):
                    out.add(base)
                out.update(subs)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in out if m in mods and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
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
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_module_level_import_cycles() -> None:
    mods = _modules()
    graph = {m: _top_level_imports(m, p, mods) for m, p in mods.items()}
    assert len(graph) > 50  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# ---- the stages' direction: a reader imports what it reads, never the other way -------------
NOT_IMPORTED_BY: dict[str, tuple[str, ...]] = {
    # the analysis is read by the interpret stage and the report; it imports neither
    "crossdiff.analysis": ("crossdiff.interpret", "crossdiff.report"),
    # the explanations are rendered by the report; the interpret stage does not import it
    "crossdiff.interpret": ("crossdiff.report",),
}


def _all_imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, deferred ones and TYPE_CHECKING ones included."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path, node)
            out.update({base} | {f"{base}.{a.name}" for a in node.names})
    return out


def test_packages_import_only_the_stages_they_read() -> None:
    mods = _modules()
    wrong = sorted(
        f"{name} imports {imported}"
        for package, banned in NOT_IMPORTED_BY.items()
        for name, path in mods.items()
        if name == package or name.startswith(package + ".")
        for imported in _all_imports(name, path)
        if any(imported == b or imported.startswith(b + ".") for b in banned)
    )
    assert wrong == []


def test_the_moved_report_names_are_still_found_where_they_were() -> None:
    import crossdiff
    import crossdiff.analysis
    import crossdiff.report

    for name in ("build_report", "render_report", "show_feature", "format_feature"):
        assert getattr(crossdiff.analysis, name) is getattr(crossdiff.report, name)
    assert crossdiff.build_report is crossdiff.report.build_report
    assert crossdiff.show_feature is crossdiff.report.show_feature
