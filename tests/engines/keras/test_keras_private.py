"""The Keras engine's reliance on private Keras is in one module (rnnshap/engines/keras/private.py), and the
engine refuses a Keras release outside the ones it was verified on, naming them."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[3]
ENGINE = ROOT / "rnnshap" / "engines" / "keras"


def _private_uses(path: Path) -> list[str]:
    """Each ``keras.src`` import, ``x._name`` read (not on self/cls, not a dunder) and ``getattr(x, "_name")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("keras.src")]
        elif isinstance(node, ast.Attribute) and re.fullmatch(r"_[a-z]\w*", node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: ._{node.attr[1:]}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr"):
            owner = node.args[0] if node.args else None
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and re.fullmatch(r"_[a-z]\w*", name.value):
                found.append(f"line {node.lineno}: {node.func.id}(..., {name.value!r})")
    return found


def test_only_private_py_reaches_into_keras_private_parts() -> None:
    modules = sorted(ENGINE.glob("*.py"))
    assert len(modules) > 10
    offending = {p.name: uses for p in modules if p.name != "private.py" and (uses := _private_uses(p))}
    assert offending == {}
    assert _private_uses(ENGINE / "private.py")  # the check sees what it looks for (private.py has them all)


def test_the_check_finds_a_private_read_written_anywhere(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from keras.src import tree\nimport keras.src.ops\nx = layer._call_has_mask_arg\ny = getattr(m, '_functional')\n"
        "z = self._graph\nw = t.__name__\n"
    )
    assert len(_private_uses(sample)) == 4


def test_the_verified_range_holds_the_pinned_keras() -> None:
    from rnnshap.engines.keras.private import VERIFIED, release

    pin = re.search(r"^keras==(\S+)", (ROOT / "constraints" / "cpu-torch.txt").read_text(), re.M)
    assert pin is not None
    low, high = VERIFIED
    assert low <= release(pin.group(1)) < high


def test_a_keras_outside_the_verified_range_is_refused_naming_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    keras = pytest.importorskip("keras")
    from rnnshap.engines.keras import private

    low, high = private.VERIFIED
    assert private.check_version() == keras.__version__  # the installed one is verified
    below = f"{low[0]}.{low[1] - 1}.0" if low[1] > 0 else f"{low[0] - 1}.99.0"
    for version in (below, ".".join(map(str, high)) + ".0"):
        with pytest.raises(private.UnverifiedKerasError) as caught:
            private.check_version(version)
        message = str(caught.value)
        assert version in message and f"keras>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}" in message

    monkeypatch.setattr(keras, "__version__", ".".join(map(str, high)) + ".0")
    import numpy as np

    import rnnshap

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(private.UnverifiedKerasError, match="verified on keras"):
        rnnshap.DeepExplainer(model, np.zeros((2, 3), np.float32))


def test_pyprojects_keras_bounds_are_the_verified_range() -> None:
    """pip installs no Keras the engine would refuse: every extra's ``keras`` requirement is the verified series."""
    from rnnshap.engines.keras.private import VERIFIED

    low, high = (".".join(map(str, v)) for v in VERIFIED)
    found = re.findall(r'"keras([<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert found, "pyproject.toml names keras in its extras"
    assert set(found) == {f">={low},<{high}"}


_ENGINE = "rnnshap.engines.keras."


@pytest.fixture
def engine_modules_put_back(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After the test, the Keras engine's modules as they were before it: in ``sys.modules`` (those the test imported
    anew dropped) and as their packages' attributes, which an import run again replaces. Left so, later tests in the
    process would meet two of each class (a Dual made by one module, tested against the other's)."""
    import sys

    before = {name: module for name, module in sys.modules.items() if name.startswith(_ENGINE)}
    missing = object()
    attributes = {}
    for name in before:
        package, _, child = name.rpartition(".")
        attributes[name] = getattr(sys.modules.get(package), child, missing)
    yield
    for name in [n for n in sys.modules if n.startswith(_ENGINE) and n not in before]:
        del sys.modules[name]
    sys.modules.update(before)
    for name, value in attributes.items():
        package, _, child = name.rpartition(".")
        if value is not missing and package in sys.modules:
            setattr(sys.modules[package], child, value)


def _forget_the_engines_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Keras engine's modules out of ``sys.modules`` for this test, so that an import runs them again (put back
    by :func:`engine_modules_put_back`)."""
    import sys

    for name in [m for m in sys.modules if m.startswith(_ENGINE) and m != "rnnshap.engines.keras.datasets"]:
        monkeypatch.delitem(sys.modules, name)


def test_an_unverified_keras_gets_rnnshaps_message_before_any_keras_src_import(
    monkeypatch: pytest.MonkeyPatch, engine_modules_put_back: None
) -> None:
    """A Keras whose private layout moved (here: keras.src cannot be imported at all) is refused by the version check,
    not by an ImportError from keras.src."""
    import sys

    keras = pytest.importorskip("keras")
    from rnnshap.engines.keras import private

    low, high = private.VERIFIED
    _forget_the_engines_modules(monkeypatch)
    for name in [m for m in sys.modules if m == "keras.src" or m.startswith("keras.src.")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    monkeypatch.setitem(sys.modules, "keras.src", None)
    monkeypatch.setattr(keras, "__version__", ".".join(map(str, high)) + ".0")
    from rnnshap.versions import UnverifiedVersionError

    with pytest.raises(UnverifiedVersionError, match=r"verified on keras") as caught:  # (the re-imported module's class)
        import rnnshap.engines.keras.engine  # noqa: F401
    assert type(caught.value).__name__ == "UnverifiedKerasError" and isinstance(caught.value, ImportError)
    assert f"keras>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}" in str(caught.value)


def test_an_unverified_keras_whose_layout_holds_is_refused_by_the_keras_engine_only(
    monkeypatch: pytest.MonkeyPatch, engine_modules_put_back: None
) -> None:
    """The refusal's advice is the torch backend (and the Shapley mode): their calls read a layer's nodes through
    private.py, whose import must not refuse a Keras whose private layout still imports."""

    keras = pytest.importorskip("keras")
    from rnnshap.engines.keras import private

    high = private.VERIFIED[1]
    _forget_the_engines_modules(monkeypatch)
    monkeypatch.setattr(keras, "__version__", ".".join(map(str, high)) + ".0")
    import importlib

    again = importlib.import_module("rnnshap.engines.keras.private")  # (training_calls' reads: torch backend, Shapley)
    assert again is not private

    with pytest.raises(again.UnverifiedKerasError, match=r"verified on keras"):
        again.check_version()
