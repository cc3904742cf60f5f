"""The package's modules import one another without circles, and no module imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rnnshap"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Each module → the rnnshap modules it imports anywhere (module level, functions, TYPE_CHECKING), with the names."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: list[tuple[str, list[str]]] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:  # `from . import plots`: the submodule itself
                        edges.append((sub, []))
                    elif target in modules:
                        edges.append((target, [alias.name]))
            elif isinstance(node, ast.Import):
                edges += [(alias.name, []) for alias in node.names if alias.name in modules]
        found[name] = [(t, n) for t, n in edges if t != name]
    return found


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_no_module_imports_one_that_imports_it_back() -> None:
    # a package's __init__ re-exporting its own submodules is the one loop Python allows by design
    graph = {m: {t for t, _ in edges if not _is_ancestor(m, t) and not _is_ancestor(t, m)} for m, edges in _imports().items()}
    assert len(graph) > 40
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles: " + "; ".join(" → ".join(c) for c in cycles)


def test_no_module_imports_private_names_of_another() -> None:
    private = [
        f"{module} imports {name} from {target}"
        for module, edges in _imports().items()
        for target, names in edges
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, private
