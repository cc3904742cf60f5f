"""The package's modules import one another without circles, and no module uses another's private names:
neither by importing them (``from x import _y``) nor by attribute access (``obj._method()``, ``module._helper``)."""

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


#: private names that belong to a third-party library, by the rnnshap modules that define or use them
#: as the library's: there they are neither an rnnshap module's private (a definition) nor a reach into one
#: (a use). Keep it small; an rnnshap name goes public instead.
EXTERNAL_PROTOCOL: dict[str, set[str]] = {
    # darts' ShapExplainer calls self._explain, which the adapter overrides
    "_explain": {"rnnshap.forecasting.darts.adapter"},
    # aeon's BaseDeepClassifier._predict_proba / BaseDeepRegressor._predict: the code rnnshap.aeon rebuilds
    "_predict": {"rnnshap.classifiers.aeon"},
    # torch.Tensor._version, the in-place version counter read to notice changed tensors
    "_version": {"rnnshap.engines.pytorch.state", "rnnshap.engines.pytorch.tape"},
    # torch's OpOverload._op, an aten operation's entry without its Python wrapper (a traced program's calls)
    "_op": {"rnnshap.engines.pytorch.traced"},
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names_defined(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes and methods, assigned names, imports
    ``as _name``, and attributes it sets on ``self`` or ``cls``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _on_self(node):
            names.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname for alias in node.names if alias.asname)
    return {name for name in names if _is_private(name)}


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def test_no_module_uses_private_attributes_of_another() -> None:
    # `obj._name` (read, set or deleted) in module A, where `_name` is a private name another rnnshap
    # module defines and A does not: A reaches into that module's objects (`explainer._explain(...)`,
    # `kops._both(...)`, `engine._refuse(...)`). Give what A needs a public name instead.
    trees = {_module(p): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")}
    external = {module: {name for name, users in EXTERNAL_PROTOCOL.items() if module in users} for module in trees}
    defined = {module: _private_names_defined(tree) - external[module] for module, tree in trees.items()}
    owners: dict[str, set[str]] = {}
    for module, names in defined.items():
        for name in names:
            owners.setdefault(name, set()).add(module)
    uses = sorted(
        f"{module}:{node.lineno} .{node.attr} (defined in {', '.join(sorted(owners[node.attr]))})"
        for module, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in owners
        and not _on_self(node)
        and node.attr not in defined[module]
        and node.attr not in external[module]
    )
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


def test_the_external_protocol_list_holds_no_stale_entry() -> None:
    # every allow-listed name still appears, as an attribute or a definition, in each module it is listed for
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    stale = []
    for name, modules in EXTERNAL_PROTOCOL.items():
        for module in modules:
            if module not in paths:
                stale.append(f"{name} in {module} (no such module)")
                continue
            tree = ast.parse(paths[module].read_text(encoding="utf-8"))
            spelled = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | _private_names_defined(tree)
            if name not in spelled:
                stale.append(f"{name} in {module}")
    assert not stale, stale
