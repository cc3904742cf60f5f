"""The shared test models (tests/models) stay shared: a bound on the model classes the test files still define
themselves. A class that expresses one case (a forward that writes in place, a hook, a draw) stays in its
file; a recurrent head, a dense net, a one-function model or one forward over a few layers (Composite) comes from
tests/models. The bound is the count when it was set: lower it as files move to the zoo, never raise it."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
BOUND = 35  # (368 before tests/models, 302 before Composite, 207, then 49 before the second and third passes; tests/zoo counted)
BASES = {"Module", "Model", "Layer"}  # nn.Module, torch.nn.Module, nnx.Module, linen.Module, keras.Model, keras.layers.Layer


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return _name(node.func) if isinstance(node, ast.Call) else None


def model_classes(root: Path = TESTS) -> list[str]:
    """``path:line name`` of every class in the test files under ``root`` (tests/models aside) whose base is a model
    or layer base, or another such class (by name, in any test file)."""
    zoo = root / "models"
    trees = {path: ast.parse(path.read_text()) for path in sorted(root.rglob("*.py")) if zoo not in path.parents}
    classes = [(path, node) for path, tree in trees.items() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    models: set[str] = set()
    while True:  # subclasses of subclasses, across files
        found = {node.name for _, node in classes if {_name(b) for b in node.bases} & (BASES | models)}
        if found <= models:
            break
        models |= found
    picked = [(path, node) for path, node in classes if {_name(b) for b in node.bases} & (BASES | models)]
    return [f"{path.relative_to(root)}:{node.lineno} {node.name}" for path, node in picked]


def test_the_test_files_define_at_most_the_bound_of_model_classes() -> None:
    found = model_classes()
    assert len(found) <= BOUND, (
        f"{len(found)} model classes in the test files, above the bound {BOUND}: take the new ones from tests/models "
        "(RecurrentHead, Dense, Function, Composite, FlaxRecurrent, FlaxFunction, FlaxComposite), "
        "or add to the zoo what several files need"
    )


def test_the_count_sees_model_classes_and_their_subclasses_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "torch.py").write_text("class Shared(nn.Module): pass\n")  # the zoo: not counted
    (tmp_path / "test_a.py").write_text(
        "class A(nn.Module): pass\nclass B(A): pass\nclass C: pass\nclass D(keras.layers.Layer): pass\n"
        "def f():\n    class E(torch.nn.Module): pass\n"
    )
    (tmp_path / "test_b.py").write_text("from .test_a import B\nclass F(B): pass\nclass G(Exception): pass\n")
    names = sorted(entry.split()[-1] for entry in model_classes(tmp_path))
    assert names == ["A", "B", "D", "E", "F"]
