"""The operation table (rnnshap/operations.py) beyond the unary entries, driven by the table: every binary
entry on every engine that names it, against float64 references written from the equations.

Binary entries run on the PyTorch engine (each torch name), as Keras ops on the TensorFlow backend, on JAX
(where this tree takes it) and on the torch backend (each keras name; the torch backend's model is explained
by the PyTorch engine through the torch functions Keras calls, in the session's torch-backend process), and as
TensorFlow ops traced in a ``Lambda`` (each ``tf.raw_ops`` name). One model per engine holds every entry, each in its own slice of
the input: a part where both operands depend on the input, checked against the two-player Shapley values
enumerated in float64,

    φ_a = ½[(f(a, b_r) − f(a_r, b_r)) + (f(a, b) − f(a_r, b))],   φ_b = ½[(f(a_r, b) − f(a_r, b_r)) + (f(a, b) − f(a, b_r))],

and a part where the second operand is a constant ``c``, checked against Rescale, ``φ_a = f(a, c) − f(a_r, c)``;
at points across each function's domain and with small differences (1e-2 to 1e-6, below and above the
smooth rules' threshold) on and straddling its kinks (the diagonal of maximum and minimum, the branch cut
and origin of arctan2, the cone of hypot). A binary entry without a reference fails
``test_every_binary_entry_has_a_reference``; an entry no engine reads fails ``test_every_entry_is_read_by_its_engines``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402
from rnnshap.engines.keras import kops, trace  # noqa: E402
from rnnshap.operations import BINARY, STRUCTURED, Binary, keras_class  # noqa: E402
from rnnshap.rules.catalog import STRUCTURED_RULES  # noqa: E402
from rnnshap.rules.elementwise import Shapley  # noqa: E402
from rnnshap.rules.registry import DEFAULT_REGISTRY, forms  # noqa: E402
from rnnshap.rules.secant import Power  # noqa: E402

from .keras_process import KerasProcess  # noqa: E402
from .models.torch import Function  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _xlogy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(a == 0, 0.0, a * np.log(np.where(a == 0, 1.0, b)))


#: float64 references written from each function's definition, f(a, b), by entry name
BINARY_REFERENCES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "maximum": np.maximum,
    "minimum": np.minimum,
    "fmax": np.fmax,
    "fmin": np.fmin,
    "arctan2": np.arctan2,  # arctan2(a, b): the angle of the point (b, a)
    "hypot": lambda a, b: np.sqrt(a * a + b * b),
    "logaddexp": lambda a, b: np.maximum(a, b) + np.log1p(np.exp(-np.abs(a - b))),
    "logaddexp2": lambda a, b: np.maximum(a, b) + np.log1p(np.exp2(-np.abs(a - b))) / np.log(2),
    "xlogy": _xlogy,
    "squared_difference": lambda a, b: (a - b) ** 2,
    "power": lambda a, b: np.exp(b * np.log(a)),  # (positive bases)
}
#: where each operand lies, if not on [-4, 4]
BINARY_DOMAINS = {"power": ((0.05, 3.0), (-2.0, 2.0)), "xlogy": ((-3.0, 3.0), (0.05, 3.0))}
_DIAGONAL = ((0.3, 0.3), (-1.0, -1.0), (0.0, 0.0), (2.5, 2.5))
#: the points where a function has a kink, cut or cone (straddled there), by entry name
BINARY_KINKS = {
    "maximum": _DIAGONAL, "minimum": _DIAGONAL, "fmax": _DIAGONAL, "fmin": _DIAGONAL,
    "arctan2": ((0.0, -1.0), (0.0, -0.2), (0.0, 0.0)),  # the branch cut (a = 0, b < 0) and the origin
    "hypot": ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0)),  # the cone at the origin
}  # fmt: skip
#: torch names that take their operands the other way round: ``a.__rpow__(b)`` is ``b ** a``
SWAPPED = {"__rpow__"}


def _binary_points(entry: Binary) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, a_r, b_r) in float32: far apart across the domain, and close together (|Δ| from 1e-2 to 1e-6) at
    a point inside it and on each kink, one operand moving, both, and both straddling the kink."""
    (lo_a, hi_a), (lo_b, hi_b) = BINARY_DOMAINS.get(entry.name, ((-4.0, 4.0), (-4.0, 4.0)))
    ga, gb = np.linspace(lo_a, hi_a, 13), np.linspace(lo_b, hi_b, 13)
    a, b, ar, br = [ga, ga[::-1]], [np.roll(gb, 4), gb], [np.roll(ga, 5), np.roll(ga[::-1], 3)], [gb[::-1], np.roll(gb, 7)]
    centre = (0.37 * lo_a + 0.63 * hi_a, 0.61 * lo_b + 0.39 * hi_b)
    for p, q in (centre, *BINARY_KINKS.get(entry.name, ())):
        for d in (1e-2, 3e-3, 1e-3, 1e-4, 1e-6):
            h = d / 2
            a.append(np.array([p + h, p, p + h, p + d, p + h, p + 1.5 * h, p + 1.5 * h]))
            ar.append(np.array([p - h, p, p - h, p, p - h, p - h / 2, p - h / 2]))
            b.append(np.array([q, q + h, q - h, q, q + h, q, q - h / 2]))
            br.append(np.array([q, q - h, q + h, q + d, q + h, q, q + 1.5 * h]))
    return tuple(np.concatenate(v).astype(np.float32) for v in (a, b, ar, br))  # type: ignore[return-value]


def _layout(names: list[tuple[Binary, str]]) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, int, int]]]:
    """The input and reference rows of one model: [a | b | a] and [a_r | b_r | a_r], each entry's points in
    its slice ``[start, stop)`` of every third (the third part's second operand is the constant b)."""
    parts: list[tuple[np.ndarray, ...]] = []
    slices, start = [], 0
    for entry, name in names:
        points = _binary_points(entry)
        if name in SWAPPED:  # the operands the other way round: b's domain for a, and a's for b
            points = (points[1], points[0], points[3], points[2])
        parts.append(points)
        slices.append((entry.name, name, start, start + points[0].size))
        start += points[0].size
    a, b, ar, br = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return np.concatenate([a, b, a]), np.concatenate([ar, br, ar]), slices


def _reference(name: str, op_name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    f = BINARY_REFERENCES[name]
    return (lambda a, b: f(b, a)) if op_name in SWAPPED else f


def _check_binary(
    side: str, x: np.ndarray, r: np.ndarray, slices: list[tuple[str, str, int, int]], values: np.ndarray, corners: dict[str, Any]
) -> None:
    """One engine's attributions against the float64 Shapley values (and Rescale for the constant part), within what
    the engine's own float32 function is off the reference at the four corners (``corners``: f at (a, b), (a_r, b_r),
    (a, b_r), (a_r, b) as the engine's backend computes it)."""
    m = x.size // 3
    for name, op_name, start, stop in slices:
        f = _reference(name, op_name)
        a, b, ar, br = (t[start:stop].astype(np.float64) for t in (x[:m], x[m : 2 * m], r[:m], r[m : 2 * m]))
        exact = [f(a, b), f(ar, br), f(a, br), f(ar, b)]
        own = [np.asarray(c, np.float64) for c in corners[f"{name}:{op_name}"]]
        where = f"{side} {name} ({op_name})"
        for got, want in zip(own, exact, strict=True):  # the side computes the reference's function (to its float32 rounding)
            np.testing.assert_allclose(got, want, rtol=8 * EPS32, atol=8 * EPS32 * max(1.0, np.abs(want).max()), err_msg=where)
        rounding = 2 * sum(np.abs(o - e) for o, e in zip(own, exact, strict=True)) + 4 * EPS32 * np.max(np.abs(exact), 0)
        y, y_r, ab_r, a_rb = exact
        phi_a = ((ab_r - y_r) + (y - a_rb)) / 2
        phi_b = ((a_rb - y_r) + (y - ab_r)) / 2
        rescaled = y - a_rb  # the constant part: f(a, c) − f(a_r, c) with c = b
        size = np.maximum.reduce([*(np.abs(e) for e in exact), np.abs(a - ar), np.abs(b - br)])
        for label, got, want, delta in (
            ("φ_a", values[start:stop], phi_a, a - ar),
            ("φ_b", values[m + start : m + stop], phi_b, b - br),
            ("Rescale φ_a (constant b)", values[2 * m + start : 2 * m + stop], rescaled, a - ar),
        ):
            gap = np.abs(got - want) / (8 * EPS32 * size + rounding)
            worst = int(np.argmax(gap))
            assert gap[worst] <= 1, (
                f"{where} {label} at a={a[worst]!r}, b={b[worst]!r}, a_r={ar[worst]!r}, b_r={br[worst]!r}: "
                f"{got[worst]:.9g}, the Shapley value is {want[worst]:.9g}"
            )
            moved = delta != 0  # the multiplier, where the operand moves: φ/Δ to within the rounding over Δ
            multiplier, exact_multiplier = got[moved] / delta[moved], want[moved] / delta[moved]
            allowed = 1e-4 * np.maximum(1.0, np.abs(exact_multiplier)) + rounding[moved] / np.abs(delta[moved])
            off = np.abs(multiplier - exact_multiplier) / allowed
            if off.size:
                worst = int(np.argmax(off))
                assert off[worst] <= 1, (
                    f"{where} {label}: multiplier {multiplier[worst]:.9g}, exact {exact_multiplier[worst]:.9g}"
                )


def test_every_binary_entry_has_a_reference() -> None:
    assert sorted(e.name for e in BINARY) == sorted(BINARY_REFERENCES)
    assert len({e.name for e in BINARY}) == len(BINARY)


def test_every_entry_is_read_by_its_engines() -> None:
    """Every name an entry gives exists in its library and reaches the entry's rule on that engine; every
    entry names at least one engine."""
    for entry in BINARY:
        assert entry.torch or entry.keras_ops or entry.tf_ops, f"{entry.name}: no engine reads it"
        for name in entry.torch:
            found = forms(name)
            assert found, f"{entry.name}: torch has no {name}"
            for fn in found:
                rule = DEFAULT_REGISTRY.op_rule(fn)
                if entry.rule == "power":
                    assert isinstance(rule, Power), (name, rule)
                else:
                    assert type(rule) is Shapley and rule.smooth == entry.smooth, (name, rule)
        for name in entry.keras_ops:
            assert hasattr(keras.ops, name), f"{entry.name}: keras.ops has no {name}"
            assert kops.BINARY[keras_class(name)] == entry.smooth
        for name in entry.tf_ops:
            assert hasattr(tf.raw_ops, name), f"{entry.name}: tf.raw_ops has no {name}"
            assert trace.TF_BINARY[name] == entry.smooth
        if entry.jax and importlib.util.find_spec("jax") is not None:
            from jax import lax

            from rnnshap.engines.jax import pairs as jax_pairs

            for name in entry.jax:
                assert hasattr(lax, f"{name}_p"), f"{entry.name}: jax.lax has no primitive {name}"
                assert jax_pairs.BINARY_PRIMITIVES[name] == entry.smooth
    for op in STRUCTURED:
        assert op.torch or op.keras_ops or op.tf_ops, f"{op.name}: no engine reads it"
        rules = STRUCTURED_RULES[op.rule](op, forms) if op.torch else {}
        for name in op.torch:
            assert forms(name), f"{op.name}: torch has no {name}"
        for fn, rule in rules.items():
            assert type(DEFAULT_REGISTRY.op_rule(fn)) is type(rule), (op.name, fn)
        for name, klass in zip(op.keras_ops, op.keras_class_names, strict=True):
            assert hasattr(keras.ops, name), f"{op.name}: keras.ops has no {name}"
            assert klass in kops.STRUCTURED | kops.ORDERINGS | kops.PICKS, klass
        for name in op.keras_refused:
            assert hasattr(keras.ops, name) and keras_class(name) not in kops.STRUCTURED | kops.ORDERINGS | kops.PICKS
    # and every engine's binary and structured ops come from the table
    assert set(kops.BINARY) == {keras_class(n) for e in BINARY for n in e.keras_ops}
    assert set(trace.TF_BINARY) == {n for e in BINARY for n in e.tf_ops}
    assert kops.STRUCTURED | kops.ORDERINGS | kops.PICKS == {k for e in STRUCTURED for k in e.keras_class_names}
    assert set(STRUCTURED_RULES) == {e.rule for e in STRUCTURED if e.torch}


def test_the_table_is_data_that_every_engine_reads_where_it_lives() -> None:
    """rnnshap/operations.py imports nothing of rnnshap or of an array library; the Keras engine reads it
    directly, not through the PyTorch engine's view (rnnshap/rules/catalog.py)."""
    package = Path(rnnshap.__file__).parent
    tree = ast.parse((package / "operations.py").read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert imported <= {"__future__", "dataclasses", "typing"}, imported
    for name in ("kops.py", "trace.py", "activations.py"):
        source = (package / "engines" / "keras" / name).read_text()
        assert "from ...operations import" in source and "rules.catalog" not in source, name


# -- the PyTorch engine ------------------------------------------------------------------------------
def _torch_call(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    fn = forms(name)[0]  # as the registry finds it: torch.atan2, torch.Tensor.__pow__, ...
    return lambda a, b: fn(a, b).to(torch.float32)  # (float_power computes in float64)


def test_binary_entries_on_the_pytorch_engine() -> None:
    names = [(entry, name) for entry in BINARY for name in entry.torch]
    x, r, slices = _layout(names)
    m = x.size // 3
    calls = {(n, op): _torch_call(op) for n, op, _, _ in slices}

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.constant = nn.Buffer(torch.tensor(x[m : 2 * m]))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            parts = [calls[n, op](t[:, s:e], t[:, m + s : m + e]) for n, op, s, e in slices]
            parts += [calls[n, op](t[:, 2 * m + s : 2 * m + e], self.constant[s:e]) for n, op, s, e in slices]
            return torch.cat(parts, -1).sum(-1, keepdim=True)

    model = Model()
    before = model(torch.tensor(x[None])).clone()
    values = rnnshap.DeepExplainer(model, torch.tensor(r[None])).shap_values(torch.tensor(x[None]), check_additivity=False)
    assert torch.equal(model(torch.tensor(x[None])), before) and torch.equal(model.constant, torch.tensor(x[m : 2 * m]))
    corners = {}
    for n, op, s, e in slices:
        a, b, ar, br = (torch.tensor(t[s:e]) for t in (x[:m], x[m : 2 * m], r[:m], r[m : 2 * m]))
        corners[f"{n}:{op}"] = [calls[n, op](*pair).numpy() for pair in ((a, b), (ar, br), (a, br), (ar, b))]
    _check_binary("torch", x, r, slices, np.asarray(values, np.float64).reshape(-1)[: x.size], corners)


# -- Keras, on the TensorFlow backend (here) and on the torch backend (the session's torch process) ---
_KERAS_SIDE = """
import json, sys
import numpy as np, keras, rnnshap
data = np.load(sys.argv[1])
x, r = data["x"], data["r"]
slices = json.loads(sys.argv[2])
m = x.size // 3
constant = x[m : 2 * m]
inputs = keras.Input((x.size,))
ops = {op: getattr(keras.ops, op) for _, op, _, _ in slices}
parts = [ops[op](inputs[:, s:e], inputs[:, m + s : m + e]) for _, op, s, e in slices]
parts += [ops[op](inputs[:, 2 * m + s : 2 * m + e], constant[s:e]) for _, op, s, e in slices]
model = keras.Model(inputs, keras.ops.sum(keras.ops.concatenate(parts, -1), -1, keepdims=True))
before = keras.ops.convert_to_numpy(model(x[None]))
values = rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False)
assert np.array_equal(keras.ops.convert_to_numpy(model(x[None])), before)
corners = {}
for name, op, s, e in slices:
    a, b, ar, br = (keras.ops.convert_to_tensor(t[s:e]) for t in (x[:m], x[m : 2 * m], r[:m], r[m : 2 * m]))
    corners[name + ":" + op] = [keras.ops.convert_to_numpy(ops[op](*p)).tolist() for p in ((a, b), (ar, br), (a, br), (ar, b))]
print(json.dumps({"backend": keras.backend.backend(), "values": np.asarray(values, np.float64).reshape(-1).tolist(),
                  "corners": corners}))
"""


def _keras_binary(tmp_path: Path, keras_process: Callable[[str], KerasProcess], backend: str) -> None:
    names = [(entry, name) for entry in BINARY for name in entry.keras_ops]
    x, r, slices = _layout(names)
    np.savez(tmp_path / f"binary-{backend}.npz", x=x, r=r)
    out = keras_process(backend).run(_KERAS_SIDE, str(tmp_path / f"binary-{backend}.npz"), json.dumps(slices))
    found = json.loads(out.strip().splitlines()[-1])
    assert found["backend"] == backend
    _check_binary(f"keras on {backend}", x, r, slices, np.asarray(found["values"])[: x.size], found["corners"])


def test_binary_entries_on_the_jax_engine() -> None:
    """The table's binary entries as JAX primitives in a Flax model (rnnshap/engines/jax): two input-dependent operands,
    and one against a constant, as on the other engines."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax.nnx")
    names = [(entry, name) for entry in BINARY for name in entry.jax]
    x, r, slices = _layout(names)
    m = x.size // 3
    prims = {op: getattr(jax.lax, f"{op}_p") for _, op, _, _ in slices}
    call = {op: (lambda a, b, p=p: p.bind(a, b)) for op, p in prims.items()}
    constant = jax.numpy.asarray(x[m : 2 * m])

    from .models.flax import FlaxFunction

    def model(t: Any) -> Any:
        parts = [call[op](t[:, s:e], t[:, m + s : m + e]) for _, op, s, e in slices]
        parts += [call[op](t[:, 2 * m + s : 2 * m + e], jax.numpy.broadcast_to(constant[s:e], (t.shape[0], e - s)))
                  for _, op, s, e in slices]  # fmt: skip
        return jax.numpy.concatenate(parts, -1).sum(-1, keepdims=True)

    values = rnnshap.DeepExplainer(FlaxFunction(model), r[None]).shap_values(x[None], check_additivity=False)
    corners = {}
    for n, op, s, e in slices:
        a, b, ar, br = (jax.numpy.asarray(t[s:e]) for t in (x[:m], x[m : 2 * m], r[:m], r[m : 2 * m]))
        corners[f"{n}:{op}"] = [np.asarray(call[op](*pair)) for pair in ((a, b), (ar, br), (a, br), (ar, b))]
    _check_binary("jax", x, r, slices, np.asarray(values, np.float64).reshape(-1)[: x.size], corners)


def test_binary_entries_as_keras_ops_on_tensorflow(tmp_path: Path, keras_process: Callable[[str], KerasProcess]) -> None:
    _keras_binary(tmp_path, keras_process, "tensorflow")


def test_binary_entries_as_keras_ops_on_the_torch_backend(tmp_path: Path, keras_process: Callable[[str], KerasProcess]) -> None:
    """Keras on the torch backend is explained by the PyTorch engine through the torch functions its ops call
    (``keras.ops.arctan2`` is ``torch.arctan2``): the same entries, the same references."""
    _keras_binary(tmp_path, keras_process, "torch")


def jax_taken() -> None:
    """Skip where this tree refuses Keras on JAX (rnnshap/engines/registry.py); else the Keras engine runs there."""
    from rnnshap.engines.registry import KERAS_BACKENDS

    if KERAS_BACKENDS.get("jax") is None:
        pytest.skip("this tree refuses Keras on JAX (rnnshap/engines/registry.py)")


@pytest.mark.slow  # (the Keras engine on JAX: about a minute on 2 cores)
def test_binary_entries_as_keras_ops_on_jax(tmp_path: Path, keras_process: Callable[[str], KerasProcess]) -> None:
    jax_taken()
    _keras_binary(tmp_path, keras_process, "jax")


def test_binary_entries_as_traced_tensorflow_ops() -> None:
    names = [(entry, name) for entry in BINARY for name in entry.tf_ops]
    x, r, slices = _layout(names)
    m = x.size // 3
    raws = {}
    for _, op, _, _ in slices:
        raw = getattr(tf.raw_ops, op)
        first, second = list(inspect.signature(raw).parameters)[:2]
        raws[op] = lambda a, b, raw=raw, first=first, second=second: raw(**{first: a, second: b})
    constant = tf.constant(x[m : 2 * m])

    def call(t: Any) -> Any:
        parts = [raws[op](t[:, s:e], t[:, m + s : m + e]) for _, op, s, e in slices]
        parts += [raws[op](t[:, 2 * m + s : 2 * m + e], constant[s:e]) for _, op, s, e in slices]
        return tf.reduce_sum(tf.concat(parts, -1), -1, keepdims=True)

    inputs = keras.Input((x.size,))
    model = keras.Model(inputs, keras.layers.Lambda(call)(inputs))
    values = rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False)
    corners = {}
    for n, op, s, e in slices:
        a, b, ar, br = (tf.constant(t[s:e]) for t in (x[:m], x[m : 2 * m], r[:m], r[m : 2 * m]))
        corners[f"{n}:{op}"] = [raws[op](*pair).numpy() for pair in ((a, b), (ar, br), (a, br), (ar, b))]
    _check_binary("tf_op", x, r, slices, np.asarray(values, np.float64).reshape(-1)[: x.size], corners)


# -- an operand that does not move while what it is made of does -------------------------------------
#: u0 + u1 is 3 on both sides (Δ = 0) and wins the maximum: its multiplier, the derivative at x averaged over
#: b's two values, is 1, so u0 and u1 get their own changes (−1 and +1) and u2 nothing
_STILL_X, _STILL_R = np.array([[1.0, 2.0, 0.2]], np.float32), np.array([[2.0, 1.0, 0.25]], np.float32)


def _still_reference() -> np.ndarray:
    x, r = _STILL_X[0].astype(np.float64), _STILL_R[0].astype(np.float64)
    a, b, br = x[0] + x[1], 10 * x[2], 10 * r[2]
    m_a = (float(a > br) + float(a > b)) / 2  # the piecewise derivative of maximum in a, at a, averaged over b's two values
    return np.array([m_a * (x[0] - r[0]), m_a * (x[1] - r[1]), 0.0])


def test_a_piecewise_binary_operand_that_does_not_move_takes_its_derivative_on_torch() -> None:
    model = Function(lambda t: torch.maximum(t[:, :1] + t[:, 1:2], 10 * t[:, 2:3]))
    values = rnnshap.DeepExplainer(model, torch.tensor(_STILL_R)).shap_values(torch.tensor(_STILL_X))
    np.testing.assert_allclose(np.asarray(values, np.float64).ravel(), _still_reference(), atol=8 * EPS32)


def test_a_piecewise_binary_operand_that_does_not_move_takes_its_derivative_on_keras() -> None:
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.ops.maximum(inputs[:, :1] + inputs[:, 1:2], 10 * inputs[:, 2:3]))
    values = rnnshap.DeepExplainer(model, _STILL_R).shap_values(_STILL_X)
    np.testing.assert_allclose(np.asarray(values, np.float64).ravel(), _still_reference(), atol=8 * EPS32)
