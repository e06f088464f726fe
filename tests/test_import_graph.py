"""The library's import graph, read statically (every ``import`` statement, at module level or
inside a function): no circle among the packages of ``pipeline/``, and the layering the
architecture promises (heads below training and evaluation; the lean packages import nothing
heavy on import)."""
from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "pipeline"


def package_of(module: str) -> str:
    """``pipeline.heads.psp`` -> ``heads``; a top-level module (``pipeline.config``) is its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(path: Path) -> set[str]:
    """The ``pipeline.*`` modules ``path`` imports (relative imports resolved)."""
    rel = path.relative_to(REPO).with_suffix("")
    here = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            if base == "pipeline":  # from pipeline import heads, layout
                out |= {f"pipeline.{a.name}" for a in node.names}
            elif base.startswith("pipeline"):
                out.add(base)
    return out


def package_graph(lib: Path = LIB) -> dict[str, set[str]]:
    """Package -> the other packages it imports."""
    graph: dict[str, set[str]] = {}
    for f in lib.rglob("*.py"):
        src = package_of(".".join(f.relative_to(lib.parent).with_suffix("").parts))
        deps = {package_of(m) for m in imports(f)} - {src}
        graph.setdefault(src, set()).update(deps)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of the graph (``[a, b, a]``), or ``[]``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_resolves_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "pipeline" / "x"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("from .y import a\nfrom pipeline import heads\n"
                              "def f():\n    import pipeline.media.decode\n")
    global REPO
    old, REPO = REPO, tmp_path
    try:
        assert imports(pkg / "m.py") == {"pipeline.x.y", "pipeline.heads", "pipeline.media.decode"}
    finally:
        REPO = old


# At 9763deb: heads -> training.tasks -> heads, heads (m2n) -> evaluation.metrics, and
# training.tasks -> evaluation.metrics while evaluation -> training (issue 27). The settings now
# sit below heads, training and evaluation.
def test_no_import_circle_among_library_packages():
    cycle = find_cycle(package_graph())
    assert not cycle, " -> ".join(cycle)


def test_heads_import_neither_training_nor_evaluation():
    assert not package_graph()["heads"] & {"training", "evaluation"}, package_graph()["heads"]


def test_lean_packages_import_nothing_on_import():
    """``import pipeline.features`` (or encoders, media) runs no import: reading the feature
    store does not load the encoders or the decoder."""
    for pkg in ("features", "encoders", "media", "training", "evaluation", "finetune", "data"):
        assert not imports(LIB / pkg / "__init__.py"), pkg
