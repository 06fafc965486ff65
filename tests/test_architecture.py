"""The package's shape: imports run one way down the pipeline, with no cycle.

Every `import` / `from ... import` in every module of `vtcr` counts, at module level and inside
functions alike (a deferred import is still a dependency: it only moves the failure to run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import vtcr

PACKAGE_DIR = Path(vtcr.__file__).resolve().parent

# Lower layers never import higher ones (same-layer imports are allowed when they make no cycle).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vtcr", "vtcr._lazy", "vtcr._io", "vtcr._cpu"),
    ("vtcr.render",),
    ("vtcr.tokens", "vtcr.cost", "vtcr.prompts", "vtcr.sample", "vtcr.grade"),
    ("vtcr.data",),
    ("vtcr.models",),
    ("vtcr.train",),
    ("vtcr.engine",),
    ("vtcr.evaluate",),
    ("vtcr.bench", "vtcr.builtin", "vtcr.env"),
    ("vtcr.commands", "vtcr.cli"),
)


def module_files() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name the module imports (`from a import b` gives `a` and `a.b`)."""
    names: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the vtcr modules it imports (a name resolves to its longest module prefix)."""
    mods = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        deps = set()
        for name in imported_names(module, path):
            parts = name.split(".")
            while parts and ".".join(parts) not in mods:
                parts.pop()
            target = ".".join(parts)
            if target and target != module:
                deps.add(target)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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


def layer_of(module: str) -> int:
    best = None
    for rank, members in enumerate(LAYERS):
        for prefix in members:
            if module == prefix or (prefix != "vtcr" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"module {module} belongs to no layer: add its package to LAYERS")
    return best[0]


def test_the_walker_sees_deferred_and_relative_imports():
    graph = import_graph()
    # deferred (inside a function) and relative imports are both edges
    assert "vtcr.render.config" in graph["vtcr.render.presets"]
    assert any(d.startswith("vtcr.render") for d in graph["vtcr.commands.render"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (module level or inside functions): " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_run_down_the_pipeline():
    upward = []
    for module, deps in sorted(import_graph().items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(module):
                upward.append(f"{module} imports {dep}")
    assert not upward, "imports that run up the pipeline:\n" + "\n".join(upward)
