"""docs/architecture.md says where things are, and is kept true by this test: every file and module it names
exists (every name after a module defined in it), and its import graph is the one the code has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .test_imports import _imports

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"


def layer_of(module: str) -> str:
    """The part of the package a module belongs to, as the page's import graph names it: a top-level module or
    package (``explainer``, ``rules``), an engine's package (``engines.pytorch``, ``engines.keras``), or one of
    the engines' shared modules (``engines.registry``); ``rnnshap`` for the package's own ``__init__``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "rnnshap"
    if parts[1] == "engines" and len(parts) > 2:
        return f"engines.{parts[2]}"
    return parts[1]


def code_graph() -> dict[str, set[str]]:
    """What imports what, between the parts :func:`layer_of` names, read from the code (imports anywhere in a
    module: at its top, in functions, under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for module, edges in _imports().items():
        source = layer_of(module)
        for target, _ in edges:
            if layer_of(target) != source:
                graph.setdefault(source, set()).add(layer_of(target))
    return graph


def page_graph() -> dict[str, set[str]]:
    block = re.search(r"<!-- import graph -->\n```text\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    assert block, "docs/architecture.md has no import graph block"
    graph: dict[str, set[str]] = {}
    for line in block.group(1).splitlines():
        if line.strip():
            source, _, targets = line.partition("->")
            graph[source.strip()] = {t.strip() for t in targets.split(",") if t.strip()}
    return graph


def graph_text(graph: dict[str, set[str]]) -> str:
    width = max(map(len, graph)) + 1
    return "\n".join(f"{source:<{width}}-> {', '.join(sorted(graph[source]))}" for source in sorted(graph))


def test_the_page_draws_the_import_graph_the_code_has() -> None:
    code, page = code_graph(), page_graph()
    assert len(code) > 15
    assert page == code, f"docs/architecture.md's import graph is stale; the code's:\n{graph_text(code)}"


def _names(text: str) -> list[str]:
    return re.findall(r"`([^`\s]+)`", text)


def _is_path(name: str) -> bool:
    return "/" in name and re.fullmatch(r"[\w./-]+", name) is not None and not name.startswith(("http", "/"))


def _defined(path: Path) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _module_file(dotted: list[str]) -> Path | None:
    base = ROOT.joinpath(*dotted)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def missing_names(text: str) -> list[str]:
    """The files (paths from the repository's root, a trailing ``/`` for a folder) and the ``rnnshap.…`` modules
    and names a page mentions in code spans that do not exist."""
    missing = []
    for name in _names(text):
        if _is_path(name):
            path = ROOT / name.split("#")[0].split("::")[0]
            if not path.exists():
                missing.append(name)
        elif re.fullmatch(r"rnnshap(\.\w+)+", name):
            parts = name.split(".")
            cut = max((i for i in range(1, len(parts) + 1) if _module_file(parts[:i]) is not None), default=0)
            if cut == 0:
                missing.append(name)
            elif cut < len(parts):
                module = _module_file(parts[:cut])
                assert module is not None
                defined = _defined(module)
                if parts[cut] not in defined and _module_file(parts[: cut + 1]) is None:
                    missing.append(name)
    return missing


def test_every_file_and_module_the_page_names_exists() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert len([n for n in _names(text) if _is_path(n)]) > 30  # the page names the files it maps
    assert not missing_names(text)


def test_the_name_check_finds_names_that_do_not_exist() -> None:
    text = (
        "`rnnshap/engines/registry.py` `rnnshap/engines/no_such.py` `rnnshap.engines.registry.ENTRIES` "
        "`rnnshap.engines.registry.NONE` `rnnshap.nothing`"
    )
    assert missing_names(text) == ["rnnshap/engines/no_such.py", "rnnshap.engines.registry.NONE", "rnnshap.nothing"]


def test_the_page_is_in_the_sidebar_and_linked_from_the_readme_and_the_contributors_notes() -> None:
    assert re.search(r"```\{toctree\}[^`]*\narchitecture\n", (ROOT / "docs" / "index.md").read_text())
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
    assert "architecture.md" in (ROOT / "docs" / "custom_rules.md").read_text()


def test_the_test_folders_mirror_the_package() -> None:
    """tests/README.md's rule: a test of ``rnnshap/X/y.py`` lives in ``tests/X/``, so every folder of tests names a
    folder of the package (the zoo, the shared models, the reference and the fuzzer's grammars aside)."""
    tests = ROOT / "tests"
    shared = {tests / name for name in ("zoo", "models", "reference", "fuzz")}
    folders = {path.parent for path in tests.rglob("test_*.py")} - {tests}
    stray = [
        str(folder.relative_to(ROOT))
        for folder in sorted(folders)
        if not shared & ({folder} | set(folder.parents)) and not (ROOT / "rnnshap" / folder.relative_to(tests)).is_dir()
    ]
    assert not stray, f"test folders with no package folder of the same name: {stray} (tests/README.md)"
    assert all((folder / "__init__.py").is_file() for folder in folders), "every test folder is a package"
