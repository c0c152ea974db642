"""Imports run one way: every `import` of a dive module (at module level or inside a function), in
every module of dive/ and in app.py, goes to its own layer or a lower one, and no two packages
import each other (directly or round a loop)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The layers, lowest first. A module imports only from its own layer or below. The names are the
#: packages (or top-level modules) under dive/; "dive" is dive/__init__.py, "__main__" is
#: dive/__main__.py, "app" is app.py.
LAYERS: list[tuple[str, ...]] = [
    ("dive", "utils", "defaults"),
    ("data",),
    ("checkpoint", "base"),
    ("caption", "train"),
    ("generate",),
    ("export", "baselines"),
    ("check",),
    ("reid", "metrics"),
    ("bench",),
    ("studio", "cli", "__main__", "app"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    """dive/generate/run.py -> dive.generate.run; dive/cli/__init__.py -> dive.cli; app.py -> app."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    """The layer-table name of a module: dive.generate.run -> generate; dive -> dive; app -> app."""
    parts = module.split(".")
    if parts[0] != "dive":
        return parts[0]
    return parts[1] if len(parts) > 1 else "dive"


def source_files() -> list[Path]:
    return sorted((ROOT / "dive").rglob("*.py")) + [ROOT / "app.py"]


def dive_imports(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported dive module) for every import of a dive module in `source`, anywhere in it.
    `from X import name` counts as importing X.name when that is a module, else X."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if sub in known else target))
    return sorted({(line, t) for line, t in found if t == "dive" or t.startswith("dive.")})


def import_graph() -> list[tuple[str, int, str, str, str]]:
    """(file, line, importing package, imported package, imported module) for every dive import."""
    files = source_files()
    known = {module_name(p) for p in files}
    edges = []
    for path in files:
        module = module_name(path)
        for line, target in dive_imports(path.read_text(), module, path.name == "__init__.py", known):
            edges.append((str(path.relative_to(ROOT)), line, package_of(module), package_of(target), target))
    return edges


def layer_violations(edges) -> list[str]:
    return [f"{file}:{line}: {src} (layer {LAYER_OF[src]}) imports {target} (layer {LAYER_OF[dst]}); "
            f"move the shared piece down to layer {LAYER_OF[src]} or lower"
            for file, line, src, dst, target in edges
            if src in LAYER_OF and dst in LAYER_OF and LAYER_OF[dst] > LAYER_OF[src]]


def package_cycles(edges) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for _, _, src, dst, _ in edges:
        graph.setdefault(src, set())
        graph.setdefault(dst, set())
        if src != dst:
            graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _cycle_detail(edges, group: list[str]) -> str:
    inside = sorted({f"  {file}:{line}: {src} -> {target}" for file, line, src, dst, target in edges
                     if src in group and dst in group and src != dst})
    return f"cycle between {' <-> '.join(group)}:\n" + "\n".join(inside)


def test_every_package_has_a_layer():
    packages = {package_of(module_name(p)) for p in source_files()}
    missing = sorted(packages - set(LAYER_OF))
    assert not missing, f"packages with no place in tests/test_imports.py LAYERS: {missing}"


def test_imports_go_to_the_same_layer_or_below():
    edges = import_graph()
    assert len(edges) > 100  # the scan sees the project's imports
    bad = layer_violations(edges)
    assert not bad, "imports that go up a layer:\n" + "\n".join(bad)


def test_no_package_level_cycle():
    edges = import_graph()
    groups = package_cycles(edges)
    assert not groups, "\n".join(_cycle_detail(edges, g) for g in groups)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    known = {"dive.bench", "dive.bench.run", "dive.utils", "dive.utils.io", "dive.caption", "dive.train"}
    # an upward import inside a function, and a relative one, are both seen
    src = "def f():\n    from dive.bench.run import run_bench\nfrom ..bench import run\n"
    found = dive_imports(src, "dive.utils.io", False, known)
    assert found == [(2, "dive.bench.run"), (3, "dive.bench.run")]
    edges = [("dive/utils/io.py", line, "utils", "bench", t) for line, t in found]
    assert len(layer_violations(edges)) == 2
    same_layer = [("a.py", 1, "caption", "train", "dive.train"), ("b.py", 1, "train", "caption", "dive.caption")]
    assert not layer_violations(same_layer)
    assert package_cycles(same_layer) == [["caption", "train"]]
    assert package_cycles(same_layer[:1]) == []
