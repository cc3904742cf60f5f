"""The unary elementwise operations of the operation table (rnnshap/operations.py), checked on every engine.

Every entry of ``ELEMENTWISE`` runs on the PyTorch engine, as a Keras op, as a TensorFlow op traced in a
``Lambda`` and as a Keras activation (TensorFlow backend), as Keras ops and activations on Keras's torch
backend, and as a JAX primitive in a Flax model (the JAX engine), where it has those names, against a
float64 numpy reference written from the function's definition (``REFERENCES`` below), at points that
include its kinks and small differences straddling them. Adding a catalog entry without a reference fails
``test_every_entry_has_a_reference``; with one, the entry is checked here with no other change.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from math import erf as _erf
from math import lgamma as _lgamma
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
from rnnshap.operations import ELEMENTWISE, Elementwise  # noqa: E402
from rnnshap.rules.registry import forms  # noqa: E402

from .keras_process import KerasProcess  # noqa: E402
from .models.torch import Function  # noqa: E402


def _selu_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dense(2→3) → selu → Dense(3→1) weights whose pre-activations straddle 0 with small differences."""
    w1 = np.array([[1.0, -0.5, 0.25], [0.5, 1.0, -1.0]])
    b1 = np.zeros(3)
    w2 = np.array([[1.0], [-2.0], [0.5]])
    b2 = np.zeros(1)
    return w1, b1, w2, b2


def test_keras_selu_model_straddling_zero_adds_up_as_the_torch_one_does() -> None:
    """selu has a kink at 0 (slopes 1.05 and 1.76 there); the midpoint derivative of a
    smooth rule is off by a fraction of Δ where x and r straddle it. Both engines must add up."""
    w1, b1, w2, b2 = _selu_weights()
    x = np.array([[1e-3, 2e-3], [-2e-3, 1.5e-3]], np.float32)
    background = np.array([[-1e-3, -1e-3], [1e-3, -2e-3]], np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), keras.layers.Activation("selu"), keras.layers.Dense(1)])
    model.layers[0].set_weights([w1.astype(np.float32), b1.astype(np.float32)])
    model.layers[2].set_weights([w2.astype(np.float32), b2.astype(np.float32)])
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x), np.float64).reshape(2, -1)
    gap = np.asarray(model(x), np.float64)[:, 0] - np.asarray(model(background), np.float64).mean()
    torch_model = nn.Sequential(nn.Linear(2, 3), nn.SELU(), nn.Linear(3, 1))
    with torch.no_grad():
        torch_model[0].weight.copy_(torch.tensor(w1.T)), torch_model[0].bias.zero_()
        torch_model[2].weight.copy_(torch.tensor(w2.T)), torch_model[2].bias.zero_()
    explainer = rnnshap.DeepExplainer(torch_model, torch.tensor(background))
    torch_values = np.asarray(explainer.shap_values(torch.tensor(x)), np.float64)
    torch_values = torch_values.reshape(2, -1)
    scale = np.abs(gap).max()
    assert np.abs(values.sum(1) - gap).max() <= 1e-5 * scale
    assert np.abs(torch_values.sum(1) - gap).max() <= 1e-5 * scale
    np.testing.assert_allclose(values, torch_values, rtol=1e-4, atol=1e-6 * scale)


# -- the catalog, entry by entry ---------------------------------------------------------------------
_erf_v = np.vectorize(_erf, otypes=[np.float64])
_lgamma_v = np.vectorize(_lgamma, otypes=[np.float64])  # log|Γ(x)|


def _digamma(x: np.ndarray) -> np.ndarray:
    """ψ(x) = Γ'(x)/Γ(x), by mpmath at 30 digits."""
    import mpmath

    with mpmath.workdps(30):
        return np.vectorize(lambda v: float(mpmath.digamma(v)), otypes=[np.float64])(x)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / 2))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


#: float64 references written from each function's definition, by entry name; a dict gives one per side
#: where the sides' defaults differ ("torch", "keras_op", "keras_activation")
REFERENCES: dict[str, object] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "exp": np.exp,
    "exp2": np.exp2,
    "expm1": np.expm1,
    "log": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "reciprocal": lambda x: 1 / x,
    "square": lambda x: x * x,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "arctan": np.arctan,
    "arcsinh": np.arcsinh,
    "arctanh": np.arctanh,
    "arcsin": np.arcsin,
    "arccos": np.arccos,
    "erf": _erf_v,
    "erfc": lambda x: 1 - _erf_v(x),
    "sinc": np.sinc,  # sin(πx)/(πx)
    "gelu": {"torch": lambda x: x / 2 * (1 + _erf_v(x / np.sqrt(2))), "keras_op": _gelu_tanh,
             "keras_activation": lambda x: x / 2 * (1 + _erf_v(x / np.sqrt(2)))},  # fmt: skip
    "silu": lambda x: x * _sigmoid(x),
    "softplus": _softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "log_sigmoid": lambda x: -_softplus(-x),
    "tanh_shrink": lambda x: x - np.tanh(x),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4)) / 2,
    "sparse_plus": lambda x: np.where(x <= -1, 0.0, np.where(x >= 1, x, (x + 1) ** 2 / 4)),
    "cbrt": np.cbrt,
    "abs": np.abs,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": _relu6,
    "leaky_relu": {
        "torch": lambda x: np.where(x > 0, x, 0.01 * x),
        "keras_op": lambda x: np.where(x > 0, x, 0.2 * x),
        "keras_activation": lambda x: np.where(x > 0, x, 0.2 * x),
        "tf_op": lambda x: np.where(x > 0, x, 0.2 * x),
    },
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "hard_silu": lambda x: x * _relu6(x + 3) / 6,
    "hard_sigmoid": lambda x: _relu6(x + 3) / 6,
    "hard_tanh": lambda x: np.clip(x, -1.0, 1.0),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0.0),
    "soft_shrink": lambda x: np.sign(x) * np.maximum(np.abs(x) - 0.5, 0.0),
    "sparse_sigmoid": lambda x: np.clip((x + 1) / 2, 0.0, 1.0),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "lgamma": _lgamma_v,
    "digamma": _digamma,
}
#: where each function is defined and well conditioned, if not on [-4, 4]
DOMAINS = {
    "log": (0.05, 4.0), "log2": (0.05, 4.0), "log10": (0.05, 4.0), "sqrt": (0.05, 4.0), "rsqrt": (0.05, 4.0),
    "reciprocal": (0.05, 4.0), "log1p": (-0.9, 4.0), "arctanh": (-0.9, 0.9), "arcsin": (-0.9, 0.9),
    "arccos": (-0.9, 0.9), "tan": (-1.3, 1.3), "lgamma": (0.05, 4.0), "digamma": (0.05, 4.0),
}  # fmt: skip
#: where a function has a singular point just outside its domain (log at 0, log1p at -1): tested close to it
SINGULAR = {"log": 0.0, "log2": 0.0, "log10": 0.0, "sqrt": 0.0, "rsqrt": 0.0, "reciprocal": 0.0, "log1p": -1.0}
EPS32 = float(np.finfo(np.float32).eps)
#: where activations have their kinks (0; ±0.5 for the shrinks; ±1, ±3, 6 for the hard ones): straddled for every entry
USUAL_KINKS = (0.0, -0.5, 0.5, -1.0, 1.0, -3.0, 3.0, 6.0)


def _reference(entry: Elementwise, side: str) -> object:
    ref = REFERENCES[entry.name]
    if isinstance(ref, dict) and side == "jax":  # jax.nn's defaults are torch's (leaky_relu's slope 0.01)
        side = "torch"
    return ref[side] if isinstance(ref, dict) else ref


def _pairs(entry: Elementwise) -> tuple[np.ndarray, np.ndarray]:
    """(x, r) in float32: far apart across the domain; close together (|Δ| from 1e-2 to 1e-6, below and
    above the smooth rules' threshold of 5e-3) at a point inside it, and on each kink (the entry's, and
    :data:`USUAL_KINKS` in its domain) and straddling it."""
    low, high = DOMAINS.get(entry.name, (-4.0, 4.0))
    grid = np.linspace(low, high, 13)
    xs, rs = [grid, grid[::-1]], []
    rs.append(np.roll(grid, 5))
    rs.append(np.roll(grid[::-1], 3))
    centre = 0.37 * low + 0.63 * high
    # the catalog's kinks, and the usual places of kinks whether the catalog names them or not
    points = {centre, *(k for k in entry.kinks if np.isfinite(k)), *(p for p in USUAL_KINKS if low < p < high)}  # (-inf: poles)
    for point in sorted(points):
        for delta in (1e-2, 3e-3, 1e-3, 1e-4, 1e-6):
            xs.append(np.array([point + delta / 2, point - delta / 2, point, point, point + delta, point - delta]))
            rs.append(np.array([point - delta / 2, point + delta / 2, point + delta, point - delta, point, point]))
    edge = SINGULAR.get(entry.name)
    if edge is not None:  # near a singular point the curvature is on the scale of the argument: |Δ| of 5 % there
        for scale in (1e-4, 1e-3, 1e-2):
            xs.append(np.array([edge + scale, edge + 1.05 * scale]))
            rs.append(np.array([edge + 1.05 * scale, edge + scale]))
    x, r = (np.concatenate(v).astype(np.float32) for v in (xs, rs))
    keep = x != r
    return x[keep], r[keep]


def _check(
    side: str, entry: Elementwise, x: np.ndarray, r: np.ndarray, values: np.ndarray, out_x: np.ndarray, out_r: np.ndarray
) -> None:
    """One engine's attributions φ = m·Δ against the model's own outputs and the float64 reference."""
    ref = _reference(entry, side)
    fx, fr = ref(x.astype(np.float64)), ref(r.astype(np.float64))  # type: ignore[operator]
    for out, exact in ((out_x, fx), (out_r, fr)):  # the side computes the reference's function (to its float32 rounding)
        np.testing.assert_allclose(
            out, exact, rtol=4e-6, atol=4e-6 * max(1.0, float(np.abs(exact).max())),
            err_msg=f"{side} {entry.name}: not the reference function",
        )
    delta = x.astype(np.float64) - r.astype(np.float64)
    # what the side's float32 function is off the reference (erf-based gelu in its tail, expm1 written as exp − 1):
    # no rule can do better than the function it explains, evaluated again; twice that is allowed for it
    rounding = 2 * (np.abs(out_x - fx) + np.abs(out_r - fr)) + 4 * EPS32 * np.maximum(np.abs(fx), np.abs(fr))
    # additivity: Δ·m is f(x) − f(r)
    size = np.maximum.reduce([np.abs(fx), np.abs(fr), np.abs(delta)])  # (x − tanh x near 0: f is Δ³, its error Δ·eps)
    gap = np.abs(values - (fx - fr)) / (2e-5 * size + rounding)
    worst = int(np.argmax(gap))
    assert gap[worst] <= 1, (
        f"{side} {entry.name} at x={x[worst]!r}, r={r[worst]!r}: Δ·m = {values[worst]:.8g}, "
        f"f(x) − f(r) = {fx[worst] - fr[worst]:.8g}"
    )
    # exactness: the multiplier is the float64 secant, to within that rounding
    secant, multiplier = (fx - fr) / delta, values / delta
    allowed = 1e-4 * np.maximum(1.0, np.abs(secant)) + rounding / np.abs(delta)
    off = np.abs(multiplier - secant) / allowed
    worst = int(np.argmax(off))
    assert off[worst] <= 1, (
        f"{side} {entry.name} at x={x[worst]!r}, r={r[worst]!r}: multiplier {multiplier[worst]:.8g}, secant {secant[worst]:.8g}"
    )


def test_every_entry_has_a_reference() -> None:
    assert sorted(e.name for e in ELEMENTWISE) == sorted(REFERENCES)
    assert len({e.name for e in ELEMENTWISE}) == len(ELEMENTWISE)


@pytest.mark.parametrize("entry", ELEMENTWISE, ids=lambda e: e.name)
def test_entry_on_both_engines(entry: Elementwise) -> None:
    x, r = _pairs(entry)
    n = x.size
    sides = 0
    for torch_name in entry.torch_names:
        fn = forms(torch_name)[0]  # as the registry finds it: torch.selu, torch._C._nn.log_sigmoid, ...

        model = Function(lambda t, fn=fn: fn(t).sum(-1, keepdim=True))
        values = rnnshap.DeepExplainer(model, torch.tensor(r[None])).shap_values(torch.tensor(x[None]), check_additivity=False)
        outputs = [fn(torch.tensor(t)).double().numpy() for t in (x, r)]
        _check("torch", entry, x, r, np.asarray(values, np.float64).reshape(-1)[:n], *outputs)
        sides += 1
    for op_name in entry.keras_op_names:
        op = getattr(keras.ops, op_name, None)
        if op is None:
            continue
        inputs = keras.Input((n,))
        model = keras.Model(inputs, keras.ops.sum(op(inputs), axis=-1, keepdims=True))
        values = rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False)
        outputs = [np.asarray(op(tf.constant(t)), np.float64) for t in (x, r)]
        _check("keras_op", entry, x, r, np.asarray(values, np.float64).reshape(-1)[:n], *outputs)
        sides += 1
    for op_type in entry.tf_op_names:  # a TensorFlow op in a Lambda: traced (rnnshap/engines/keras/trace.py)
        raw = getattr(tf.raw_ops, op_type, None)
        if raw is None:
            continue
        argument = next(iter(inspect.signature(raw).parameters))

        def call(t: tf.Tensor, raw=raw, argument=argument) -> tf.Tensor:  # noqa: ANN001
            return raw(**{argument: t})

        inputs = keras.Input((n,))
        model = keras.Model(inputs, keras.layers.Lambda(lambda t, call=call: tf.reduce_sum(call(t), -1, keepdims=True))(inputs))
        values = rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False)
        outputs = [np.asarray(call(tf.constant(t)), np.float64) for t in (x, r)]
        _check("tf_op", entry, x, r, np.asarray(values, np.float64).reshape(-1)[:n], *outputs)
        sides += 1
    activation = entry.keras_activation_name
    if activation and hasattr(keras.activations, activation):
        model = keras.Sequential([keras.Input((n,)), keras.layers.Activation(activation)])
        values = np.asarray(rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False), np.float64)
        outputs = [np.asarray(keras.activations.get(activation)(tf.constant(t)), np.float64) for t in (x, r)]
        _check("keras_activation", entry, x, r, np.diagonal(values.reshape(n, n)), *outputs)
        sides += 1
    assert sides, f"catalog entry {entry.name} names nothing that either engine has"


def _jax_function(name: str) -> Callable[[object], object] | None:
    """``jax.lax``'s function of the primitive ``name`` (which writes that primitive into a jaxpr), where lax has both."""
    lax = pytest.importorskip("jax").lax
    return getattr(lax, name, None) if hasattr(lax, f"{name}_p") else None


def _named_call(name: str) -> Callable[[Any], Any] | None:
    """``jax.nn``'s function ``name`` where a jaxpr holds it as one call of that name (``jit[name=elu]``)."""
    import jax

    fn = getattr(jax.nn, name, None)
    if fn is None:
        return None
    eqns = jax.make_jaxpr(fn)(jax.numpy.ones(3)).jaxpr.eqns
    return fn if len(eqns) == 1 and eqns[0].params.get("name") == name else None


def _on_jax() -> list[Elementwise]:
    """The entries a jaxpr holds as one primitive or as one named call of ``jax.nn`` (gelu's tanh form, written
    with several primitives there, is not one)."""
    if importlib.util.find_spec("jax") is None:
        return []
    from jax import lax

    return [
        e for e in ELEMENTWISE
        if any(hasattr(lax, f"{name}_p") for name in e.jax_names) or any(_named_call(n) for n in e.jax_function_names)
    ]  # fmt: skip


@pytest.mark.parametrize("entry", _on_jax(), ids=lambda e: e.name)
def test_entry_on_the_jax_engine(entry: Elementwise) -> None:
    """The entry as a JAX primitive in a Flax model (rnnshap/engines/jax)."""
    pytest.importorskip("flax.nnx")
    from .models.flax import FlaxFunction

    x, r = _pairs(entry)
    n = x.size
    found = [f for f in (_jax_function(name) for name in entry.jax_names) if f is not None]
    found += [f for f in (_named_call(name) for name in entry.jax_function_names) if f is not None]
    assert found, entry.name
    for fn in found:

        model = FlaxFunction(lambda t, fn=fn: fn(t).sum(-1, keepdims=True))
        values = rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False)
        outputs = [np.asarray(fn(t), np.float64) for t in (x, r)]
        _check("jax", entry, x, r, np.asarray(values, np.float64).reshape(-1)[:n], *outputs)


_OTHER_BACKEND = """
import json, sys
import numpy as np, keras, rnnshap
from rnnshap.operations import ELEMENTWISE
assert keras.backend.backend() == sys.argv[2]
pairs = np.load(sys.argv[1])
found = {}
for entry in ELEMENTWISE:
    if entry.name + ":x" not in pairs:
        continue
    x, r = pairs[entry.name + ":x"], pairs[entry.name + ":r"]
    n = x.size
    for op_name in entry.keras_op_names:
        op = getattr(keras.ops, op_name, None)
        if op is None:
            continue
        inputs = keras.Input((n,))
        model = keras.Model(inputs, keras.ops.sum(op(inputs), axis=-1, keepdims=True))
        try:
            values = rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False)
        except Exception as error:  # reported by name in the test
            found[entry.name + ":keras_op:" + op_name] = str(error)
            continue
        outputs = [keras.ops.convert_to_numpy(op(keras.ops.convert_to_tensor(t))).tolist() for t in (x, r)]
        found[entry.name + ":keras_op:" + op_name] = [np.asarray(values, np.float64).reshape(-1)[:n].tolist(), *outputs]
    activation = entry.keras_activation_name
    if activation and hasattr(keras.activations, activation):
        model = keras.Sequential([keras.Input((n,)), keras.layers.Activation(activation)])
        try:
            values = np.asarray(rnnshap.DeepExplainer(model, r[None]).shap_values(x[None], check_additivity=False), np.float64)
        except Exception as error:  # reported by name in the test
            found[entry.name + ":keras_activation"] = str(error)
            continue
        fn = keras.activations.get(activation)
        outputs = [keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(t))).tolist() for t in (x, r)]
        found[entry.name + ":keras_activation"] = [np.diagonal(values.reshape(n, n)).tolist(), *outputs]
print(json.dumps(found))
"""


def _on_backend(tmp_path: Path, keras_process: Callable[[str], KerasProcess], backend: str) -> dict[str, str]:
    """Every entry's Keras ops and activations on ``backend`` against the references; returns the refusals
    (by ``entry:side:name``, their first line)."""
    pairs = {entry.name: _pairs(entry) for entry in ELEMENTWISE}
    np.savez(tmp_path / "pairs.npz", **{f"{name}:{k}": v for name, (x, r) in pairs.items() for k, v in (("x", x), ("r", r))})
    found = json.loads(keras_process(backend).run(_OTHER_BACKEND, str(tmp_path / "pairs.npz"), backend).strip().splitlines()[-1])
    by_name = {entry.name: entry for entry in ELEMENTWISE}
    for key, answer in found.items():
        if isinstance(answer, str):
            continue
        values, out_x, out_r = answer
        name, side = key.split(":")[:2]
        x, r = pairs[name]
        _check(side, by_name[name], x, r, np.asarray(values), np.asarray(out_x, np.float64), np.asarray(out_r, np.float64))
    assert any(key.startswith("selu:keras_activation") for key in found)
    return {key: why.splitlines()[1] if "\n" in why else why for key, why in found.items() if isinstance(why, str)}


def test_every_entry_as_keras_on_the_torch_backend(tmp_path: Path, keras_process: Callable[[str], KerasProcess]) -> None:
    """The Keras ops and activations of the catalog on Keras's torch backend (a model there is an
    nn.Module, explained by the PyTorch engine through the torch functions Keras calls), against the
    same references, in the session's torch-backend process."""
    refused = _on_backend(tmp_path, keras_process, "torch")
    # Keras's torch backend writes cbrt as sign(x)·|x|^(1/3): torch.sign is refused by name there (a step function)
    assert set(refused) == {"cbrt:keras_op:cbrt"} and "torch.sign" in refused["cbrt:keras_op:cbrt"], refused


@pytest.mark.slow  # (the Keras engine on JAX: about a minute on 2 cores)
def test_every_entry_as_keras_on_jax(tmp_path: Path, keras_process: Callable[[str], KerasProcess]) -> None:
    """The same on Keras's JAX backend, explained by the Keras engine (as on TensorFlow), where this tree takes it."""
    from rnnshap.engines.registry import KERAS_BACKENDS

    if KERAS_BACKENDS.get("jax") is None:
        pytest.skip("this tree refuses Keras on JAX (rnnshap/engines/registry.py)")
    assert _on_backend(tmp_path, keras_process, "jax") == {}
