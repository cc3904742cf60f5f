"""The engine contract is closed, and the engine registry is the one place an engine is chosen.

- The front door and the doors (every module outside the engines' own packages) use an engine only
  through what :class:`rnnshap.engines.base.Engine` declares: no ``getattr``/``hasattr`` probing, no
  test of an engine's name, no attribute of an engine set from outside (an AST test).
- An engine written against the contract alone, added to the registry as one entry, goes through every
  door: ``shap_values``, ``explainer(X)``-free ``attribution``, ``summarize``, ``shapley_values``.
- The registry's Keras entry chooses by the Keras backend, in one table.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.engines import registry
from rnnshap.engines.base import Block, BlockResult, Engine
from rnnshap.engines.outputs import OutputLayout

from ..models.torch import Composite

PACKAGE = Path(rnnshap.__file__).resolve().parent
#: the engines' own packages: inside them an engine reads its own attributes
ENGINE_PACKAGES = (PACKAGE / "engines" / "pytorch", PACKAGE / "engines" / "keras")


def _door_modules() -> list[Path]:
    """Every module of the package outside the engines' own packages: the front door, the doors, the registry."""
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not any(p.is_relative_to(e) for e in ENGINE_PACKAGES)]


def _engine_expression(node: ast.AST) -> bool:
    """Whether ``node`` names an engine: ``engine``, ``self.engine``, ``explainer.engine``, ``view.engine``..."""
    if isinstance(node, ast.Name):
        return node.id == "engine"
    return isinstance(node, ast.Attribute) and node.attr == "engine"


def _probes(source: str, label: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{label}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            if node.func.id in ("getattr", "hasattr", "setattr", "delattr", "isinstance", "type") and _engine_expression(
                node.args[0]
            ):
                found.append(f"{where}: {node.func.id}() on an engine")
        elif isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if isinstance(side, ast.Attribute) and side.attr == "name" and _engine_expression(side.value):
                    found.append(f"{where}: a test of an engine's name")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            flat = [t for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            for target in flat:
                if isinstance(target, ast.Attribute) and _engine_expression(target.value):
                    found.append(f"{where}: the engine's {target.attr} set from outside")
    return found


def test_the_front_door_and_the_doors_never_probe_an_engine() -> None:
    modules = _door_modules()
    assert PACKAGE / "explainer.py" in modules and PACKAGE / "shapley" / "door.py" in modules
    probes = [p for path in modules for p in _probes(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert not probes, probes


def test_the_probe_finder_finds_each_kind_of_probe() -> None:
    """The AST test above can fail: each form it forbids is found in a module written with it."""
    source = (
        "names = getattr(self.engine, 'input_names', None)\n"
        "if engine.name != 'pytorch':\n    pass\n"
        "before, engine.multipliers = engine.multipliers, True\n"
        "explainer.engine.dtype = 'float64'\n"
        "ok = hasattr(engine, 'side')\n"
    )
    kinds = sorted(probe.split(": ", 1)[1] for probe in _probes(source, "example.py"))
    assert kinds == sorted(
        [
            "getattr() on an engine",
            "a test of an engine's name",
            "the engine's multipliers set from outside",
            "the engine's dtype set from outside",
            "hasattr() on an engine",
        ]
    )


def _declared(name: str) -> bool:
    return hasattr(Engine, name) or any(name in getattr(k, "__annotations__", {}) for k in Engine.__mro__)


def test_every_engine_member_the_doors_use_is_declared_by_the_contract() -> None:
    used: dict[str, str] = {}
    for path in _door_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and _engine_expression(node.value):
                used.setdefault(node.attr, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    # the members the front door reads at least (a test that finds nothing cannot fail)
    assert {"inputs", "attribute", "predict", "input_names", "precision_note", "side"} <= set(used)
    undeclared = {name: where for name, where in used.items() if not _declared(name)}
    assert not undeclared, undeclared


def test_the_contract_declares_what_it_promises_and_holds_no_switch_for_the_doors() -> None:
    for name in ("input_names", "precision_note", "side", "gives_multipliers", "attributes_model_inputs", "name"):
        assert _declared(name), name
    assert not _declared("multipliers")  # an argument of attribute(), not a state flipped around a call
    assert "multipliers" in Engine.attribute.__code__.co_varnames


# -- an engine written against the contract alone, added as one registry entry ---------------------------------------
class Weights:
    """A model no framework knows: f(x) = x @ W, on numpy arrays of shape (n, F)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights


class LinearEngine(Engine):
    """DeepSHAP of f(x) = x @ W (exact: the multipliers are W), from the contract's members only."""

    name = "linear (numpy)"

    def __init__(self, model: Weights, data: Any) -> None:
        self.model = model
        self.multi_input = False
        self.token_inputs = []
        self.dtype = "float64"
        self.outputs = OutputLayout(None)
        self.background = [np.asarray(data, dtype=np.float64)]
        self.references = self.background[0].shape[0]
        self.output_shape = (model.weights.shape[1],)
        self.background_outputs = self.predict(self.background)
        self.precision_note = "(a note from the linear engine)"

    def inputs(self, X: Any, what: str) -> list[Any]:
        return [np.asarray(X, dtype=np.float64)]

    def predict(self, inputs: list[Any]) -> np.ndarray:
        return np.asarray(inputs[0] @ self.model.weights, dtype=np.float64)

    def to_numpy(self, inputs: list[Any]) -> list[np.ndarray]:
        return list(inputs)

    def attribute(
        self, inputs: list[Any], block: Block, columns: np.ndarray, per_pair: bool = False, multipliers: bool = False
    ) -> BlockResult:
        x = inputs[0][block.s0 : block.s1, None, :]  # (s, 1, F)
        r = self.background[0][None, block.r0 : block.r1, :]  # (1, R, F)
        w = self.model.weights[:, columns].transpose(2, 1, 0)[:, :, None, :]  # (k, s, 1, F)
        pairs = w * np.broadcast_to(x - r, (x.shape[0], r.shape[1], x.shape[2]))[None]  # (k, s, R, F)
        sums = pairs if per_pair else pairs.sum(2)
        outputs = self.predict([inputs[0][block.s0 : block.s1]])
        reference = np.repeat(self.predict([self.background[0][block.r0 : block.r1]]).sum(0, keepdims=True), block.samples, 0)
        return BlockResult([sums], outputs, reference)


@pytest.fixture
def linear_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = registry.Entry(
        kind="a numpy linear model",
        recognises=lambda model: isinstance(model, Weights),
        deep=lambda model, data, setup: LinearEngine(model, data),
        forward=None,
        refusal="give ShapleyExplainer the function x -> x @ W",
    )
    monkeypatch.setattr(registry, "ENTRIES", (entry, *registry.ENTRIES))


def test_one_registry_entry_adds_an_engine_that_every_door_serves(linear_entry: None) -> None:
    rng = np.random.default_rng(0)
    weights, background, x = rng.normal(size=(4, 3)), rng.normal(size=(5, 4)), rng.normal(size=(2, 4))
    explainer = rnnshap.DeepExplainer(Weights(weights), background)
    assert isinstance(explainer.engine, LinearEngine)
    values = explainer.shap_values(x)  # additivity checked on the way
    # the closed form of a linear model: W[f, j] · (x_f − mean over the background of r_f)
    truth = weights[None] * (x - background.mean(0))[:, :, None]
    np.testing.assert_allclose(values, truth, rtol=1e-12, atol=1e-12)
    summary = explainer.summarize(x, batch_size=1)
    np.testing.assert_allclose(summary.mean_abs, np.abs(truth).mean(0), rtol=1e-12, atol=1e-12)
    shapley = explainer.shapley_values(x, players="cells")
    np.testing.assert_allclose(shapley.values, truth, rtol=1e-9, atol=1e-12)  # a linear game: every coalition, exact
    with pytest.raises(rnnshap.InputError, match=r"multipliers.*not for linear \(numpy\)"):
        explainer.attribution(explainer.engine.inputs(x, "X"), multipliers=True)
    with pytest.raises(rnnshap.InputError, match="give ShapleyExplainer the function x -> x @ W"):
        rnnshap.ShapleyExplainer(Weights(weights), background)


@pytest.mark.parametrize("mode", ["auto", "trace", True])
def test_an_engine_that_runs_its_pass_as_one_takes_the_default_and_refuses_tracing_by_name(
    linear_entry: None, mode: object
) -> None:
    """``compile=None`` (the default) and False leave an engine other than PyTorch's as it is; a mode that traces a
    PyTorch pass is refused with the engine's name and advice (the Keras and JAX engines run theirs as one)."""
    rng = np.random.default_rng(2)
    weights, background = Weights(rng.normal(size=(3, 2))), rng.normal(size=(4, 3))
    for given in (None, False):
        rnnshap.DeepExplainer(weights, background, compile=given)  # type: ignore[arg-type]
    with pytest.raises(rnnshap.InputError, match="compile= traces a PyTorch model's pass into one program; the linear"):
        rnnshap.DeepExplainer(weights, background, compile=mode)  # type: ignore[arg-type]


def test_the_additivity_report_carries_the_engines_precision_note(linear_entry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    explainer = rnnshap.DeepExplainer(Weights(rng.normal(size=(3, 2))), rng.normal(size=(4, 3)))
    real = LinearEngine.attribute

    def off(self: LinearEngine, *args: Any, **kwargs: Any) -> BlockResult:
        result = real(self, *args, **kwargs)
        return BlockResult([s + 1.0 for s in result.sums], result.outputs, result.reference_outputs)

    monkeypatch.setattr(LinearEngine, "attribute", off)
    with pytest.raises(rnnshap.AdditivityError, match=r"\(a note from the linear engine\)"):
        explainer.shap_values(rng.normal(size=(2, 3)))


# -- the registry's entries --------------------------------------------------------------------------------------------
def test_each_kind_of_model_finds_its_entry_and_a_function_is_refused_by_deepshap_with_advice() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).double().eval()
    assert registry.entry_for(model).kind == "a PyTorch nn.Module"
    assert registry.entry_for((model, model[0])).kind.startswith("a PyTorch model and one of its layers")
    assert registry.entry_for(lambda x: x).kind == "a function of numpy arrays"
    assert registry.entry_for(3) is None
    with pytest.raises(TypeError, match="Wrap a function in an nn.Module"):
        rnnshap.DeepExplainer(lambda x: x.sum(1), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="takes a torch.nn.Module, a Keras model or a Flax NNX module, not int"):
        rnnshap.DeepExplainer(3, np.zeros((2, 3)))
    with pytest.raises(rnnshap.InputError, match="ShapleyExplainer takes an nn.Module, a Keras model or a function"):
        rnnshap.ShapleyExplainer(3, np.zeros((2, 3)))
    with pytest.raises(rnnshap.InputError, match=r"plays the model's own inputs.*\(module, layer\)"):
        rnnshap.ShapleyExplainer((model, model[0]), np.zeros((2, 3)))


def test_a_model_of_a_kind_deepshap_does_not_take_is_refused_as_rnnshaps_error_and_still_a_type_error() -> None:
    """A function (a jitted JAX one too), a number, a tuple that is neither of shap's forms: code catching rnnshap's
    errors catches the refusal (an InputError), and code catching TypeError as before still does."""
    refused: list[Any] = [lambda x: x.sum(1), 3, (1, 2)]
    jax = pytest.importorskip("jax")
    refused.append(jax.jit(lambda x: x.sum(1)))
    for model in refused:
        with pytest.raises(rnnshap.InputError, match="DeepExplainer takes") as error:
            rnnshap.DeepExplainer(model, np.zeros((2, 3), np.float32))
        assert isinstance(error.value, TypeError)
    with pytest.raises(rnnshap.InputError, match="The PyTorch engine takes a torch.nn.Module"):
        from rnnshap.engines.pytorch.safety import check_model

        check_model(lambda x: x)


def test_a_model_called_with_a_dict_gets_its_input_names_from_the_engines_constructor() -> None:
    by_name = Composite(lambda m, batch: torch.tanh(m.a(batch["a"])) + m.b(batch["b"]),
                        a=nn.Linear(2, 1).double(), b=nn.Linear(3, 1).double())  # fmt: skip

    torch.manual_seed(0)
    background = {"b": torch.randn(3, 3, dtype=torch.float64), "a": torch.randn(3, 2, dtype=torch.float64)}
    explainer = rnnshap.DeepExplainer(by_name.eval(), background)
    assert explainer.engine.input_names == ["b", "a"]
    values = explainer.shap_values({"a": torch.randn(2, 2, dtype=torch.float64), "b": torch.randn(2, 3, dtype=torch.float64)})
    assert [v.shape for v in values] == [(2, 3, 1), (2, 2, 1)]  # in the background's key order


def test_the_keras_backends_are_one_table_and_an_unknown_backend_is_refused_naming_the_ones_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keras = pytest.importorskip("keras")
    assert set(registry.KERAS_BACKENDS) == {"tensorflow", "torch", "jax"}
    monkeypatch.setattr(keras.backend, "backend", lambda: "openvino")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    taken = " or ".join(sorted(b for b, build in registry.KERAS_BACKENDS.items() if build is not None))
    with pytest.raises(rnnshap.InputError, match=f"'openvino'.*KERAS_BACKEND={taken} set before keras is imported"):
        rnnshap.DeepExplainer(model, np.zeros((2, 3), dtype=np.float32))


def test_the_multipliers_are_an_argument_of_the_call_and_the_engine_holds_no_switch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    background, x = torch.randn(3, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.gives_multipliers
    inputs = explainer.engine.inputs(x, "X")
    columns = np.array([[0, 1], [1, 0]])
    block = Block(0, 2, 0, 3)
    plain = explainer.engine.attribute(inputs, block, columns, per_pair=True)
    multipliers = explainer.engine.attribute(inputs, block, columns, per_pair=True, multipliers=True)
    delta = (x[:, None] - background[None]).numpy()  # (s, R, F)
    np.testing.assert_allclose(multipliers.sums[0] * delta[None], plain.sums[0], rtol=1e-12, atol=1e-15)
    assert not hasattr(explainer.engine, "multipliers")


def test_every_call_runs_tensorflows_float32_products_in_full_and_leaves_its_switch_as_it_was() -> None:
    """TensorFlow computes float32 products at TF32 on an NVIDIA GPU by default (docs/performance.md, "On a GPU"):
    :func:`normal_mode`, the context of every call into an engine, turns that off inside and back after."""
    tf = pytest.importorskip("tensorflow")
    from rnnshap.engines.base import normal_mode

    config = tf.config.experimental
    for callers in (True, False):
        config.enable_tensor_float_32_execution(callers)
        try:
            with normal_mode():
                assert not config.tensor_float_32_execution_enabled()
            assert config.tensor_float_32_execution_enabled() is callers
        finally:
            config.enable_tensor_float_32_execution(True)
