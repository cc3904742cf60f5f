"""One home per formula: the rules' formulas that the engines once wrote again each (the σ/tanh secant's
where-form and blend, the picked-index selection's two parts, the normalisations' marks) live in
``rnnshap/formulas/`` only; the engines under ``rnnshap/engines/`` (and the recurrent layers) call them.

Each formula is found by the shape of its arithmetic in the code's AST, written back as source (whitespace and
parentheses normalised), whatever its variables are named: a copy that comes back under ``engines/`` fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import rnnshap

PACKAGE = Path(rnnshap.__file__).resolve().parent
ID = r"[\w.]+"

#: formula → (where it lives, the pattern of its body in ``ast.unparse``'s spelling)
FORMULAS = {
    # the where-form's test of a small Δ on Δ² (columns_secant) and its closed form (κ − (y_x − μ)(y_r − μ))(1 − cΔ²)
    "secant where-form": ("formulas/secant.py", rf"where\({ID} <= {ID} \* {ID}, {ID}, {ID}\)"),
    "secant closed form": ("formulas/secant.py", rf"\({ID}( \* {ID})? - {ID}( \* {ID})? \* {ID}\) \* \(1 - {ID} \* {ID}\)"),
    # the blend (Δa Δu³ + ε⁴F) / (Δu⁴ + ε⁴), in place
    "secant blend": ("formulas/secant.py", rf"{ID}\.addcmul_\({ID}, {ID}\)"),
    # the selector's change s(h̄, i_x) − s(h̄, i_r) and the selected tensor's mean selection
    "selector change": ("formulas/orderings.py", r"(\w+)\((\w+), index_x\) - \1\(\2, index_r\)"),
    "selected share": ("formulas/orderings.py", r"\((\w+)\((\w+), index_x\) \+ \1\(\2, index_r\)\) / 2"),
    # the marks: an inverted mark, and the choice of the scale-weighted rule
    "inverted mark": ("formulas/marks.py", r"return -prior\b"),
    "scale-weighted choice": ("formulas/marks.py", rf"\.count\({ID}\) == 1 and {ID}\.count\(None\) == 1"),
}


def _source(path: Path) -> str:
    return ast.unparse(ast.parse(path.read_text()))


@pytest.mark.parametrize("formula", list(FORMULAS))
def test_a_formula_lives_in_rnnshap_formulas_only(formula: str) -> None:
    home, pattern = FORMULAS[formula]
    assert re.search(pattern, _source(PACKAGE / home)), f"{formula}: not found in its home {home}"
    again = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "formulas"):
            continue
        if re.search(pattern, _source(path)):
            again.append(str(path.relative_to(PACKAGE)))
    assert again == [], f"{formula} written again outside rnnshap/formulas/: {again}"


def _reverse_time_loops(path: Path) -> list[int]:
    """The lines of ``for ... in reversed(range(...))`` loops in ``path``: a loop over time steps run backwards."""
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.For) and re.match(r"reversed\((range|list\(enumerate)\(", ast.unparse(node.iter))
    ]


def test_the_reverse_time_recurrence_lives_in_rnnshap_formulas_only() -> None:
    """The fused LSTM, GRU and Elman layers' reverse-time recurrence (its loop over the steps backwards and each
    layer's step) is written once, in formulas/recurrence.py; the PyTorch engine (recurrent/reverse.py) and the Keras
    one (engines/keras/fused.py) bind it (tests/recurrent/test_recurrent.py and tests/engines/keras/test_keras_fused.py
    see both call its steps). Before, each wrote its own loops over reversed(range(steps))."""
    home = PACKAGE / "formulas" / "recurrence.py"
    assert _reverse_time_loops(home), "the loop is not in formulas/recurrence.py"
    again = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != home and (lines := _reverse_time_loops(path))
    }
    assert again == {}, f"a reverse-time loop written again outside rnnshap/formulas/recurrence.py: {again}"
