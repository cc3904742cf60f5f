"""PyTorch models as they are deployed and served: hooks left from training, dynamic
quantization, random draws that never reach the output, TorchScript freezing, the meta device,
torch.compile, dataclass outputs, NaN, data containers, and outputs beside the explained one.

Every test checks that explaining leaves the model as it was (:func:`snapshot` before, ``unchanged`` after).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.errors import InputError, ModelStateError, RnnShapError, UnsupportedOperationError

from ...conftest import assert_adds_up_to, assert_rounding_close, model_outputs
from ...models.torch import Composite, RecurrentHead

T, F = 5, 3


class Recurrent(nn.Module):
    """A small LSTM classifier: the model most tests dress up."""

    def __init__(self, hidden: int = 4, outputs: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(F, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(torch.tanh(out[:, -1]))


def _frozen(value: Any) -> Any:
    """A copy of a state_dict entry to compare later: tensors (quantized ones by their integers and scales)
    cloned, tuples entry by entry, anything else as it is."""
    if isinstance(value, torch.Tensor):
        if value.is_quantized:
            return ("quantized", value.int_repr().clone(), value.q_per_channel_scales().clone()
                    if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) else value.q_scale())
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return tuple(_frozen(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
        return same and (a.is_meta or bool(torch.equal(a, b)))  # (meta tensors have no values to compare)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything explaining must leave as it was: every parameter and buffer (values and objects), the
    training flags and the hooks."""
    return {
        "state": {k: _frozen(v) for k, v in model.state_dict(keep_vars=True).items()},
        "objects": [id(t) for t in [*model.parameters(), *model.buffers()]],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks), dict(m._backward_pre_hooks))
            for m in model.modules()
        ],
    }


def unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert _same(after["state"][key], value), f"{key} changed"
    assert after["objects"] == before["objects"], "a parameter or buffer was replaced"
    assert after["training"] == before["training"], "a training flag changed"
    assert after["hooks"] == before["hooks"], "the model's hooks changed"


def data(n: int = 8, m: int = 3, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(n, T, F, generator=generator, dtype=dtype), torch.randn(m, T, F, generator=generator, dtype=dtype))


# -- 2: backward hooks left on the model from training ------------------------------------------------
def _scale_grad_input(module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
    return tuple(None if g is None else 3.0 * g for g in grad_input)


def _clamp_grad_output(module: nn.Module, grad_output: Any) -> Any:
    return tuple(None if g is None else g.clamp(-1e-3, 1e-3) for g in grad_output)


def _norm_monitor(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
    module.seen.append(float(grad_output[0].norm()))  # type: ignore[union-attr,operator]


HOOKS = {
    "scales grad_input": lambda m: m.head.register_full_backward_hook(_scale_grad_input),
    "clamps grad_output": lambda m: m.lstm.register_full_backward_pre_hook(_clamp_grad_output),
    "a gradient-norm monitor": lambda m: m.lstm.register_full_backward_hook(_norm_monitor),
    "a global hook": lambda m: nn.modules.module.register_module_full_backward_hook(_scale_grad_input),
}


@pytest.mark.parametrize("hook", HOOKS)
def test_backward_hooks_left_from_training_do_not_run_in_the_passes(hook: str) -> None:
    """The user's backward hooks belong to training: the values are those of the model without them,
    computed exactly, and the hooks are still there afterwards (and run in the user's own backward)."""
    model = Recurrent().double().eval()
    twin = Recurrent().double().eval()
    twin.load_state_dict(model.state_dict())
    model.lstm.seen = []  # type: ignore[assignment]
    background, x = data()
    handle = HOOKS[hook](model)
    try:
        before = snapshot(model)
        explainer = rnnshap.DeepExplainer(model, background)
        values = explainer.shap_values(x)  # the additivity check runs
        unchanged(model, before)
        assert model.lstm.seen == []  # type: ignore[comparison-overlap]
        expected = rnnshap.DeepExplainer(twin, background).shap_values(x)
        np.testing.assert_array_equal(values, expected)
        # the hook is still the model's: the user's own backward runs it
        x.requires_grad_(True)
        model(x).sum().backward()
        if hook == "a gradient-norm monitor":
            assert len(model.lstm.seen) == 1  # type: ignore[arg-type]
    finally:
        handle.remove()


@pytest.mark.parametrize("kind", ["register_hook", "register_post_accumulate_grad_hook"])
def test_a_tensor_hook_a_forward_hook_registers_is_set_aside_in_the_passes(kind: str) -> None:
    """A gradient-norm monitor registered as a tensor hook from a forward hook (``out.register_hook(lambda g:
    norms.append(g.norm().item()))``) crashed the batched backward ("Batching rule not implemented for aten::item"):
    tensor hooks added during rnnshap's passes belong to training and are set aside, as backward hooks
    are; the values are the model's without them, and the user's own backward still runs the monitor."""
    model = Recurrent().double().eval()
    twin = Recurrent().double().eval()
    twin.load_state_dict(model.state_dict())
    norms: list[float] = []

    def monitor(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if output.requires_grad:
            if kind == "register_hook":
                output.register_hook(lambda g: norms.append(g.norm().item()))
            else:  # on a leaf: the parameter's gradient once accumulated
                module.weight.register_post_accumulate_grad_hook(lambda p: norms.append(p.grad.norm().item()))

    handle = model.head.register_forward_hook(monitor)
    try:
        background, x = data()
        values = rnnshap.DeepExplainer(model, background).shap_values(x)  # the additivity check runs
        assert norms == []
        np.testing.assert_array_equal(values, rnnshap.DeepExplainer(twin, background).shap_values(x))
        model(x).sum().backward()
        assert len(norms) == 1
    finally:
        handle.remove()


# -- 3: rows that interact (dynamic quantization) in the forward-only door -----------------------------
def _quantized() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(T * F, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def test_a_dynamically_quantized_model_is_refused_by_the_forward_only_door() -> None:
    """One scale per batch: each row's output depends on the other rows, so a coalition's value would depend
    on the batch it runs in. Refused, with rows alone (batch_size=1) as the way to explain it."""
    model = _quantized()
    background, x = data(dtype=torch.float32)
    with torch.no_grad():  # the independent fact: a row alone and the same row among others differ
        assert not torch.equal(model(background)[:1], model(background[:1]))
    before = snapshot(model)
    with pytest.raises(InputError, match="depends on the other rows.*batch_size=1"):
        rnnshap.ShapleyExplainer(model, background)
    unchanged(model, before)


def test_a_dynamically_quantized_model_is_explained_row_by_row_with_batch_size_1() -> None:
    """batch_size=1 runs every row alone, the background too: the game of the model on one row is played,
    and its values are exact (every coalition enumerated) and add up to the model's own outputs."""
    model = _quantized()
    background, x = data(n=4, m=2, dtype=torch.float32)
    before = snapshot(model)
    explainer = rnnshap.ShapleyExplainer(model, background, batch_size=1)
    estimate = explainer.shapley_values(x, players="steps", time_axis=1)
    unchanged(model, before)
    with torch.no_grad():
        alone = np.stack([model(x[i : i + 1])[0].double().numpy() for i in range(len(x))])
        base = np.mean([model(background[i : i + 1])[0].double().numpy() for i in range(len(background))], 0)
    assert bool(np.all(estimate.exact))
    np.testing.assert_allclose(estimate.base_values, np.broadcast_to(base, estimate.base_values.shape), rtol=0, atol=1e-12)
    assert_adds_up_to(estimate.base_values + estimate.values.sum(1), alone, "float32")


def test_deepshap_refuses_a_quantized_model_with_advice_that_fits_quantization() -> None:
    """A quantized kernel runs integer arithmetic outside torch's float operations: DeepSHAP refuses it, and the
    advice names quantization (explain the float model, or rows alone in the Shapley mode), not a Rescale rule
    that would fit neither a fused recurrent kernel nor a matrix product."""

    background, _ = data(dtype=torch.float32)
    for model in (_quantized(), RecurrentHead("lstm", F, 8, 2, names="lstm head").eval()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
        with torch.no_grad():  # packed quantized weights do not compare: the outputs and flags stand for them
            before = (quantized(background), [m.training for m in quantized.modules()])
        with pytest.raises(UnsupportedOperationError) as refused:
            rnnshap.DeepExplainer(quantized, background)
        with torch.no_grad():
            assert torch.equal(quantized(background), before[0]) and [m.training for m in quantized.modules()] == before[1]
        message = str(refused.value)
        assert "quantized" in message and "float model" in message and "batch_size=1" in message
        assert "Rescale" not in message and "elementwise rule" not in message
        assert message.count("ShapleyExplainer(") == message.count("batch_size=1") == 1  # rows alone, or refused again


def test_a_model_whose_rows_are_independent_passes_the_check_at_any_batch_size() -> None:
    model = Recurrent().eval()
    background, x = data(dtype=torch.float32)
    before = snapshot(model)
    small = rnnshap.ShapleyExplainer(model, background, batch_size=5).shapley_values(x, time_axis=1, random_state=0)
    large = rnnshap.ShapleyExplainer(model, background, batch_size=2048).shapley_values(x, time_axis=1, random_state=0)
    unchanged(model, before)
    assert_rounding_close(small.values, large.values, "float32")


def test_the_rows_check_holds_at_a_small_batch_size_and_for_a_model_that_cannot_run_one_row() -> None:
    """batch_size=2 would run coalitions in pairs: a quantized model is refused all the same. A model that squeezes
    its output (one row: a scalar) is checked in pairs of rows, and explained."""
    background, x = data(dtype=torch.float32)
    quantized = _quantized()
    before = snapshot(quantized)
    with pytest.raises(InputError, match="depends on the other rows"):
        rnnshap.ShapleyExplainer(quantized, background, batch_size=2)
    unchanged(quantized, before)

    squeezed = RecurrentHead("lstm", F, 4, 1, read="tanh_last", names="lstm head", output=torch.squeeze)
    model = squeezed.double().eval()
    background, x = data()
    before = snapshot(model)
    estimate = rnnshap.ShapleyExplainer(model, background).shapley_values(x, time_axis=1)
    unchanged(model, before)
    predicted = estimate.base_values.reshape(-1) + estimate.values.sum(1).reshape(-1)
    assert_adds_up_to(predicted, model_outputs(model, x).reshape(-1), "float64")


# -- 4: random draws that never reach the output --------------------------------------------------------
def unused_draw(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Draws a dropout mask at every call and uses it only in training (Keras' recurrent layers do so)."""
    mask = nn.functional.dropout(torch.ones_like(x[:, 0]), 0.3, training=True)
    noise = torch.randn(3)
    m.cached = mask  # (kept on the module, as Keras caches its masks)
    del noise
    out = m.inner(x)
    return out * mask.sum(1, keepdim=True) if m.training else out


def used_draw(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.inner(x) + 0.01 * torch.randn(x.shape[0], 2, dtype=x.dtype)


def branch_on_draw(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Teacher forcing decided by a draw: its value never reaches the output as a tensor, its decision does."""
    out = m.inner(x)
    return out if bool(torch.rand(()) < 0.5) else -out


def test_a_draw_whose_result_never_reaches_the_output_is_not_randomness_of_the_function() -> None:
    model = Composite(unused_draw, inner=Recurrent()).double().eval()
    background, x = data()
    before = snapshot(model)
    state = torch.get_rng_state()
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    shapley = rnnshap.ShapleyExplainer(model, background).shapley_values(x, time_axis=1)
    unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), state), "torch's global random state changed"
    expected = rnnshap.DeepExplainer(model.inner, background).shap_values(x)
    np.testing.assert_array_equal(values, expected)
    assert_adds_up_to(shapley.base_values + shapley.values.sum(1), model_outputs(model.inner, x), "float64")


@pytest.mark.parametrize("forward", [used_draw, branch_on_draw], ids=["UsedDraw", "BranchOnDraw"])
@pytest.mark.parametrize("door", ["deep", "shapley"])
def test_a_draw_that_reaches_the_output_is_still_refused(forward: Any, door: str) -> None:
    model = Composite(forward, inner=Recurrent()).double().eval()
    background, _ = data()
    before = snapshot(model)
    explainer = rnnshap.DeepExplainer if door == "deep" else rnnshap.ShapleyExplainer
    with pytest.raises(ModelStateError, match="draws random numbers"):
        explainer(model, background)
    unchanged(model, before)


def test_the_deep_door_names_the_draw_that_reaches_the_output() -> None:
    model = Composite(used_draw, inner=Recurrent()).double().eval()
    background, _ = data()
    before = snapshot(model)
    with pytest.raises(RnnShapError, match="randn"):
        rnnshap.DeepExplainer(model, background)
    unchanged(model, before)


# -- 5: TorchScript frozen or optimized for inference ---------------------------------------------------
@pytest.mark.parametrize("freeze", ["freeze", "optimize_for_inference"])
def test_a_frozen_torchscript_model_is_refused_by_name_and_played_by_the_forward_only_door(freeze: str) -> None:
    eager = Recurrent().double().eval()
    scripted = torch.jit.script(eager)
    frozen = torch.jit.freeze(scripted) if freeze == "freeze" else torch.jit.optimize_for_inference(scripted)
    background, x = data()
    before = snapshot(eager)
    with torch.no_grad():
        frozen_before = frozen(x).clone()
    with pytest.raises(ModelStateError, match="TorchScript"):
        rnnshap.DeepExplainer(frozen, background)
    estimate = rnnshap.ShapleyExplainer(frozen, background).shapley_values(x, time_axis=1)
    unchanged(eager, before)
    with torch.no_grad():
        assert torch.equal(frozen(x), frozen_before)  # (a frozen module's constants are out of Python's reach)
    assert bool(np.all(estimate.exact))
    assert_adds_up_to(estimate.base_values + estimate.values.sum(1), model_outputs(eager, x), "float64")


# -- 6, 7: the meta device --------------------------------------------------------------------------------
def test_a_model_on_the_meta_device_is_refused_by_name_by_both_doors() -> None:
    with torch.device("meta"):
        model = Recurrent().eval()
    background, _ = data(dtype=torch.float32)
    before = snapshot(model)
    for door in (rnnshap.DeepExplainer, rnnshap.ShapleyExplainer):
        with pytest.raises(ModelStateError, match="'lstm' \\(LSTM\\).*meta device"):
            door(model, background)
    unchanged(model, before)


def ensemble_mean(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    outs = [
        torch.func.functional_call(m.skeleton, {n: w[i] for n, w in zip(m.names, m.weights, strict=True)}, (x,))
        for i in range(m.count)
    ]
    return torch.stack(outs).mean(0)


def ensemble(members: list[nn.Module]) -> nn.Module:
    """torch.func's model-ensembling recipe: a meta-device skeleton called through functional_call with the
    stacked weights of several real models."""
    params, buffers = torch.func.stack_module_state(members)  # type: ignore[arg-type]
    return Composite(ensemble_mean, names=list(params), weights=nn.ParameterList([nn.Parameter(p) for p in params.values()]),
                     skeleton=Recurrent().double().to("meta").eval(), count=len(members))  # fmt: skip


def test_the_functional_call_ensembling_recipe_is_explained_exactly() -> None:
    members = [Recurrent().double().eval() for _ in range(3)]
    model = ensemble(members).eval()
    background, x = data()
    before = snapshot(model)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(x)
    unchanged(model, before)
    # the ensemble's own output is the members' mean: the values add up to it, and are the members' mean values
    direct = np.mean([model_outputs(m, x) for m in members], 0)
    assert_adds_up_to(explainer.expected_value + np.asarray(values).reshape(len(x), -1, 2).sum(1), direct, "float64")
    each = np.mean([rnnshap.DeepExplainer(m, background).shap_values(x) for m in members], 0)
    assert_rounding_close(values, each, "float64")


# -- 8, 9: torch.compile ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["submodule wrapped", "whole model wrapped", "in place"])
def test_compiled_modules_are_explained_as_their_original_modules_without_compiling(how: str) -> None:
    import torch._dynamo.utils as dynamo_utils

    eager = Recurrent().double().eval()
    model = Recurrent().double().eval()
    model.load_state_dict(eager.state_dict())
    if how == "submodule wrapped":
        model.lstm = torch.compile(model.lstm)  # type: ignore[assignment]
    elif how == "whole model wrapped":
        model = torch.compile(model)  # type: ignore[assignment]
    else:
        model.compile()
    background, x = data()
    before = snapshot(model)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    shapley = rnnshap.ShapleyExplainer(model, background).shapley_values(x, time_axis=1)
    assert not dynamo_utils.counters["frames"], "a frame was compiled while explaining"
    unchanged(model, before)
    np.testing.assert_array_equal(values, rnnshap.DeepExplainer(eager, background).shap_values(x))
    assert_adds_up_to(shapley.base_values + shapley.values.sum(1), model_outputs(eager, x), "float64")


# -- 10: a dataclass output ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    states: torch.Tensor
    note: str | None = None


def predict(m: nn.Module, x: torch.Tensor) -> Prediction:
    out, _ = m.lstm(x)
    return Prediction(m.head(torch.tanh(out[:, -1])), out.sum(1))


@pytest.mark.parametrize("door", ["deep", "shapley"])
def test_dataclass_outputs_are_taken_by_field_name(door: str) -> None:
    model = Composite(predict, lstm=nn.LSTM(F, 4, batch_first=True), head=nn.Linear(4, 2)).double().eval()
    plain = Recurrent().double().eval()
    plain.load_state_dict(model.state_dict())
    background, x = data()
    before = snapshot(model)
    if door == "deep":
        values = rnnshap.DeepExplainer(model, background, output="logits").shap_values(x)
        np.testing.assert_array_equal(values, rnnshap.DeepExplainer(plain, background).shap_values(x))
    else:
        estimate = rnnshap.ShapleyExplainer(model, background, output="logits").shapley_values(x, time_axis=1)
        assert_adds_up_to(estimate.base_values + estimate.values.sum(1), model_outputs(plain, x), "float64")
    unchanged(model, before)


# -- 11: NaN --------------------------------------------------------------------------------------------------
def test_nan_that_reaches_the_output_is_refused_naming_the_sample() -> None:
    model = Recurrent().double().eval()
    background, x = data()
    x[1, 2, 0] = float("nan")
    explainer = rnnshap.ShapleyExplainer(model, background)
    before = snapshot(model)
    with pytest.raises(InputError, match="output is nan for sample 1"):
        explainer.shapley_values(x, time_axis=1)
    unchanged(model, before)


def test_nan_inputs_a_model_takes_as_missing_are_played() -> None:
    # reads NaN as missing (a mask and zeros), as the foundation forecasters do
    takes_missing = RecurrentHead("lstm", F, 4, 2, read="tanh_last", names="lstm head",
                                  prepare=lambda x: torch.nan_to_num(x, nan=0.0))  # fmt: skip
    model = takes_missing.double().eval()
    background, x = data()
    x[1, 2, 0] = float("nan")
    before = snapshot(model)
    estimate = rnnshap.ShapleyExplainer(model, background).shapley_values(x, time_axis=1)
    unchanged(model, before)
    assert np.isfinite(estimate.values).all()
    assert_adds_up_to(estimate.base_values + estimate.values.sum(1), model_outputs(model, x), "float64")


# -- 14: a pandas DataFrame -------------------------------------------------------------------------------------
def test_a_dataframe_is_taken_as_rows_by_columns_and_the_error_says_so() -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(np.random.default_rng(0).normal(size=(7, F)), columns=["a", "b", "c"])
    tabular = nn.Sequential(nn.Linear(F, 4), nn.Tanh(), nn.Linear(4, 1)).double().eval()
    values = rnnshap.DeepExplainer(tabular, frame).shap_values(frame.iloc[:2])
    assert np.asarray(values).shape == (2, F, 1)
    model = Recurrent().double().eval()
    before = snapshot(model)
    with pytest.raises(InputError, match=r"pandas DataFrame.*7 rows \(the batch\) by 3 columns.*sliding_window_view") as error:
        rnnshap.DeepExplainer(model, frame)
    assert "x[None]" not in str(error.value)
    unchanged(model, before)


# -- 19: a norm over every dimension that feeds only a second output (pyhealth's ConCare) ------------------------
def logits_and_decov(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    states, _ = m.gru(x)
    last = states[:, -1]
    centered = last - last.mean(0, keepdim=True)
    covariance = centered.T @ centered / max(x.shape[0] - 1, 1)
    decov = 0.5 * (torch.norm(covariance, p="fro") ** 2 - torch.norm(torch.diagonal(covariance)) ** 2)
    return torch.sigmoid(m.head(last)), decov


def con_care_like() -> nn.Module:
    """Logits beside a DeCov loss computed over the batch (a Frobenius norm of the hidden states' covariance)."""
    return Composite(logits_and_decov, gru=nn.GRU(F, 4, batch_first=True), head=nn.Linear(4, 1))


def test_a_norm_over_every_dimension_that_only_feeds_a_loss_beside_the_output_is_not_refused() -> None:
    model = con_care_like().double().eval()
    background, x = data()
    before = snapshot(model)
    explainer = rnnshap.DeepExplainer(model, background, output=0)
    values = explainer.shap_values(x)  # (the additivity check runs)
    unchanged(model, before)
    with torch.no_grad():
        direct = model(x)[0].numpy()
    assert_adds_up_to(explainer.expected_value + np.asarray(values).reshape(len(x), -1).sum(1, keepdims=True), direct, "float64")


def test_the_norm_is_still_refused_by_name_where_the_output_reads_it() -> None:
    model = con_care_like().double().eval()
    background, _ = data()
    before = snapshot(model)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="norm over every dimension"):
        rnnshap.DeepExplainer(model, background, output=1)
    unchanged(model, before)


# -- 13, 16: interactions: a default budget a user can wait for, counted; values that add up from v(∅) --------------
def test_interactions_add_up_from_the_mean_output_in_shapiqs_own_sums() -> None:
    """shapiq's baseline_value and the empty coalition's value are v(∅), so that shapiq's sums and plots
    start from the mean output (an efficient index adds up to f(x))."""
    pytest.importorskip("shapiq")
    generator = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.GRU(F, 4, batch_first=True)).double().eval()

    net = Composite(lambda m, x: m.head(m.gru(x)[0][:, -1]), gru=model[0], head=nn.Linear(4, 1).double()).eval()

    background = torch.randn(6, T, F, generator=generator, dtype=torch.float64)
    x = torch.randn(2, T, F, generator=generator, dtype=torch.float64)
    before = snapshot(net)
    result = rnnshap.DeepExplainer(net, background).shapley_interactions(x, players="steps", index="k-SII")
    unchanged(net, before)
    direct = model_outputs(net, x)
    mean = model_outputs(net, background).mean(0)
    assert bool(np.all(result.exact))
    for i, per_output in enumerate(result.interactions):
        values = per_output[0]
        assert values.baseline_value == pytest.approx(float(mean[0]), abs=1e-12)
        assert values.dict_values[()] == pytest.approx(float(mean[0]), abs=1e-12)
        assert sum(values.dict_values.values()) == pytest.approx(float(direct[i, 0]), abs=1e-10)
    # the matrix still adds up to f(x) − v(∅)
    np.testing.assert_allclose(result.matrix().sum((1, 2)), direct - mean, atol=1e-10)


def test_the_default_interaction_budget_is_counted_said_and_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 steps against 100 background rows (the README's quickstart): the default is 4 coalitions per pair or
    step, the rows run never exceed the count the progress bar is given, and a run of more than a million rows
    says its count before it starts."""
    pytest.importorskip("shapiq")
    from rnnshap.shapley import interactions

    assert interactions.default_interaction_budget(20, 100) == 100 * 4 * (20 + 190)
    assert interactions.default_interaction_budget(8, 100) == 100 * 2**8  # every coalition: exact
    counted: list[tuple[int, list[int]]] = []

    class Recorder:
        def __init__(self, total: int) -> None:
            self.total, self.steps = total, []  # type: ignore[var-annotated]
            counted.append((total, self.steps))

        def update(self, count: int) -> None:
            self.steps.append(count)

        def close(self) -> None:
            pass

    monkeypatch.setattr(interactions, "progress_counter", lambda total, enabled, **kwargs: Recorder(total))
    model = Recurrent(outputs=1).eval()
    generator = torch.Generator().manual_seed(3)
    background, x = torch.randn(10, 12, F, generator=generator), torch.randn(2, 12, F, generator=generator)
    before = snapshot(model)
    explainer = rnnshap.DeepExplainer(model, background)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a default run of 2 × 31,400 rows is not announced
        result = explainer.shapley_interactions(x, players="steps", random_state=0)
    unchanged(model, before)
    per_sample = 10 * (4 * (12 + 66) + 2)
    assert counted and counted[0][0] == 2 * per_sample
    assert sum(counted[0][1]) == int(result.n_evals.sum()) and (result.n_evals <= per_sample).all()
    monkeypatch.setattr(interactions, "ANNOUNCED_ROWS", 1000)
    with pytest.warns(UserWarning, match=r"no budget given, so 312 coalitions of 12 players.*budget= sets the rows"):
        explainer.shapley_interactions(x, players="steps", random_state=0)
    unchanged(model, before)
