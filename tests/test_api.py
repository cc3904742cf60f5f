"""The public API: ``explainer(X)`` → ``shap.Explanation``, errors that say what failed, rank orders."""

from __future__ import annotations

import re
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from .conftest import ADDITIVITY_TOL, additivity_excess, assert_adds_up_to, assert_rounding_close, model_outputs
from .models.torch import Composite

shap = pytest.importorskip("shap")

Tensor = torch.Tensor


def two_inputs() -> nn.Module:
    return Composite(lambda m, a, b: m.head(torch.tanh(m.a(a) + m.b(b))),
                     a=nn.Linear(4, 6), b=nn.Linear(3, 6), head=nn.Linear(6, 2))  # fmt: skip


def _mlp(k: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, k)).eval()


# -- explainer(X) ---------------------------------------------------------------------------------------------------
def test_call_returns_explanation_with_values_base_values_and_data() -> None:
    model = _mlp()
    background, X = torch.randn(6, 5), torch.randn(4, 5)
    explanation = rnnshap.DeepExplainer(model, background)(X)
    assert isinstance(explanation, shap.Explanation)
    values = np.asarray(explanation.values)
    base = np.asarray(explanation.base_values)
    assert values.shape == (4, 5, 3)
    assert base.shape == (4, 3)
    assert_rounding_close(base, np.broadcast_to(model_outputs(model, background).mean(0), (4, 3)), torch.float32, what="E[f]")
    np.testing.assert_array_equal(np.asarray(explanation.data), X.numpy())
    # the explanation adds up on its own: base + Σ values = f(x)
    assert_adds_up_to(base + values.sum(1), model_outputs(model, X), torch.float32)


def test_call_with_feature_names() -> None:
    names = [f"f{i}" for i in range(5)]
    explanation = rnnshap.DeepExplainer(_mlp(), torch.randn(6, 5))(torch.randn(2, 5), feature_names=names)
    assert list(explanation.feature_names) == names


def test_call_on_multi_input_model_returns_one_explanation_per_input() -> None:
    model = two_inputs().eval()
    background = [torch.randn(5, 4), torch.randn(5, 3)]
    X = [torch.randn(3, 4), torch.randn(3, 3)]
    explanations = rnnshap.DeepExplainer(model, background)(X)
    assert isinstance(explanations, list) and len(explanations) == 2
    for explanation, x in zip(explanations, X, strict=True):
        assert isinstance(explanation, shap.Explanation)
        assert np.asarray(explanation.values).shape == (*x.shape, 2)
        assert np.asarray(explanation.base_values).shape == (3, 2)
        np.testing.assert_array_equal(np.asarray(explanation.data), x.numpy())
    total = sum(np.asarray(e.values).reshape(3, -1, 2).sum(1) for e in explanations)
    assert_adds_up_to(np.asarray(explanations[0].base_values) + total, model_outputs(model, X), torch.float32)


def test_call_without_shap_raises_import_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    explainer = rnnshap.DeepExplainer(_mlp(), torch.randn(6, 5))
    X = torch.randn(2, 5)
    monkeypatch.setitem(sys.modules, "shap", None)  # `import shap` now raises ImportError
    with pytest.raises(ImportError, match=re.escape("rnnshap[shap]")):
        explainer(X)
    values = explainer.shap_values(X)
    assert isinstance(values, np.ndarray) and values.shape == (2, 5, 3)


def test_numpy_inputs_give_the_same_values_as_tensors() -> None:
    model = _mlp()
    background, X = torch.randn(6, 5), torch.randn(3, 5)
    from_tensors = rnnshap.DeepExplainer(model, background).shap_values(X)
    from_arrays = rnnshap.DeepExplainer(model, background.numpy()).shap_values(X.numpy())
    assert isinstance(from_arrays, np.ndarray)
    np.testing.assert_array_equal(from_arrays, from_tensors)
    assert additivity_excess(from_arrays, model, X, background).max() <= ADDITIVITY_TOL[torch.float32]


def test_multi_input_numpy_and_tuple_inputs() -> None:
    model = two_inputs().eval()
    background = (
        np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32),
        np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32),
    )
    X = [
        np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32),
        np.random.default_rng(3).normal(size=(2, 3)).astype(np.float32),
    ]
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert isinstance(values, list) and [v.shape for v in values] == [(2, 4, 2), (2, 3, 2)]
    tensors = [torch.from_numpy(x) for x in X]
    excess = additivity_excess(values, model, tensors, [torch.from_numpy(b) for b in background])
    assert excess.max() <= ADDITIVITY_TOL[torch.float32]


# -- additivity errors --------------------------------------------------------------------------------------------------
def test_wrong_custom_rule_raises_additivity_error_naming_sample_and_output() -> None:
    """Linear() for tanh is the plain gradient: the values cannot add up, and the error says where."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(3)
    background, X = torch.randn(6, 5, dtype=torch.float64) * 2, torch.randn(4, 5, dtype=torch.float64) * 2
    explainer = rnnshap.DeepExplainer(model, background, rules={torch.tanh: rnnshap.rules.Linear()})
    with pytest.raises(rnnshap.AdditivityError) as info:
        explainer.shap_values(X)
    assert isinstance(info.value, AssertionError)  # shap users catch AssertionError
    match = re.search(r"sample (\d+), output (\d+)", str(info.value))
    assert match, f"no sample/output in: {info.value}"
    sample, output = int(match.group(1)), int(match.group(2))

    values = explainer.shap_values(X, check_additivity=False)
    assert isinstance(values, np.ndarray) and values.shape == (4, 5, 3)
    excess = additivity_excess(values, model, X, background)
    assert excess.max() > 1e-3
    # the pair the message names is the worst one (or at least one that fails)
    assert excess[sample, output] > 1e-6
    assert excess[sample, output] >= 0.5 * excess.max()


def test_nan_attributions_fail_the_additivity_check() -> None:
    """NaN compares false with everything: the check must treat it as a failure, not a pass."""

    class NanTanh(rnnshap.rules.Rule):
        def attribute(self, call: rnnshap.rules.OpCall) -> Tensor:
            (x,) = call.inputs
            y = torch.tanh(x)
            return rnnshap.rules.with_multipliers(y, [x], [torch.full_like(y, float("nan"))])

    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    explainer = rnnshap.DeepExplainer(model, torch.randn(3, 5), rules={torch.tanh: NanTanh()})
    with pytest.raises(rnnshap.AdditivityError, match="do not add up") as info:
        explainer.shap_values(torch.randn(2, 5))
    assert "not finite" in str(info.value) and "-inf mask" in str(info.value)  # the causes that fit
    assert np.isnan(explainer.shap_values(torch.randn(2, 5), check_additivity=False)).all()


def test_a_small_float32_additivity_error_names_rounding_as_a_cause() -> None:
    class SlightlyOff(rnnshap.rules.Rule):
        """tanh's Rescale multiplier, 0.1 % too large: a float32-sized error."""

        def attribute(self, call: rnnshap.rules.OpCall) -> Tensor:
            (x,), (r,) = call.inputs, call.references
            output, ref_output = torch.tanh(x.detach()), torch.tanh(r)
            return rnnshap.rules.with_multipliers(output, [x], [(output - ref_output) / (x.detach() - r) * 1.001])

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    explainer = rnnshap.DeepExplainer(model, torch.randn(3, 5), rules={torch.tanh: SlightlyOff()})
    with pytest.raises(rnnshap.AdditivityError) as info:
        explainer.shap_values(torch.randn(2, 5))
    assert "float32 rounding" in str(info.value) and "model.double()" in str(info.value)


def test_an_ill_conditioned_sum_is_refused_with_its_conditioning_not_accepted_because_the_values_are_large() -> None:
    """Values of 1e6 that cancel to an output of about 1 (float32 carries 7 digits of each): their sum misses
    f(x) − E[f] by far more than 1e-4 of the output, which the check refuses whatever the values' magnitudes."""
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1e6, -1e6]]))
        model.bias.zero_()
    g = torch.Generator().manual_seed(0)
    background = 1 + torch.rand(4, 1, generator=g).expand(4, 2) + 1e-6 * torch.randn(4, 2, generator=g)
    X = 1 + torch.rand(3, 1, generator=g).expand(3, 2) + 1e-6 * torch.randn(3, 2, generator=g)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X, check_additivity=False)
    gap = model(X).detach().numpy() - explainer.expected_value
    miss, scale = np.abs(values.sum(1) - gap), np.maximum(np.abs(model(X).detach().numpy()), np.abs(explainer.expected_value))
    assert (miss > 1e-3 * scale).any()  # the answer float32 can give: the check must not pass it
    with pytest.raises(rnnshap.AdditivityError, match=r"ill-conditioned") as info:
        explainer.shap_values(X)
    assert re.search(r"\d+ times the output's scale", str(info.value)) and "model.double()" in str(info.value)
    model64 = nn.Linear(2, 1).double()
    model64.load_state_dict(model.state_dict())
    explainer64 = rnnshap.DeepExplainer(model64, background.double())
    explainer64.shap_values(X.double())  # float64 carries it: the same check passes


def test_a_sum_the_dtype_cannot_carry_is_refused_even_where_its_rounding_happens_to_land_within_the_tolerance() -> None:
    """Values of 7500 that cancel to an output of 0.6 on inputs float32 holds exactly: their sum lands on
    f(x) − E[f] (the rounding happens to cancel), but float32 carries each value to about 1e-7 of itself, and their
    magnitudes sum to 2.5e4 times the output: the sum could miss by 3e-3 of it, far beyond the tolerance, and that it
    lands is chance (another CPU, another order of the sum, need not). The check refuses it as ill-conditioned; the
    float64 copy it advises passes."""
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1e4, -1e4]]))
        model.bias.zero_()
    background = torch.tensor([[0.0, 0.0], [0.5, 0.5]])
    X = torch.tensor([[1.0, 1.0 - 2.0**-14]])
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X, check_additivity=False)
    gap = model(X).detach().numpy() - explainer.expected_value
    assert np.abs(values.sum(1) - gap).max() <= 1e-4 * np.abs(model(X).detach().numpy()).max()  # (it lands)
    with pytest.raises(rnnshap.AdditivityError, match=r"ill-conditioned") as info:
        explainer.shap_values(X)
    assert re.search(r"\d+ times the output's scale", str(info.value)) and "model.double()" in str(info.value)
    model64 = nn.Linear(2, 1).double()
    model64.load_state_dict(model.state_dict())
    rnnshap.DeepExplainer(model64, background.double()).shap_values(X.double())


def test_additivity_error_when_the_output_is_multidimensional_names_a_valid_output() -> None:
    grid = Composite(lambda m, x: torch.tanh(m.lin(x) * 3).reshape(-1, 2, 3), lin=nn.Linear(5, 6))
    background, X = torch.randn(6, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(grid.double().eval(), background, rules={torch.tanh: rnnshap.rules.Linear()})
    with pytest.raises(rnnshap.AdditivityError, match=r"sample [01], output [0-5]\b"):
        explainer.shap_values(X)
    assert explainer.shap_values(X, check_additivity=False).shape == (2, 5, 2, 3)


# -- ranked outputs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["max", "min", "max_abs"])
def test_ranked_outputs_select_by_order_and_match_unranked_values(order: str) -> None:
    torch.manual_seed(0)
    model = _mlp(k=5)
    background, X = torch.randn(6, 5), torch.randn(4, 5)
    explainer = rnnshap.DeepExplainer(model, background)
    values, ranks = explainer.shap_values(X, ranked_outputs=2, output_rank_order=order)
    scores = model_outputs(model, X)
    key = {"max": -scores, "min": scores, "max_abs": -np.abs(scores)}[order]
    assert isinstance(ranks, torch.Tensor)
    np.testing.assert_array_equal(ranks.numpy(), np.argsort(key, axis=1, kind="stable")[:, :2])
    assert values.shape == (4, 5, 2)
    full = explainer.shap_values(X)  # (4, 5, 5)
    for i in range(4):
        for c in range(2):
            assert_rounding_close(values[i, :, c], full[i, :, int(ranks[i, c])], torch.float32, what="ranked against full")


def test_bad_rank_order_is_rejected() -> None:
    explainer = rnnshap.DeepExplainer(_mlp(), torch.randn(6, 5))
    with pytest.raises(ValueError, match="output_rank_order"):
        explainer.shap_values(torch.randn(2, 5), ranked_outputs=1, output_rank_order="median")


def test_expected_value_is_background_mean_of_outputs() -> None:
    model = _mlp()
    background = torch.randn(7, 5)
    explainer = rnnshap.DeepExplainer(model, background)
    assert isinstance(explainer.expected_value, np.ndarray)
    assert_rounding_close(explainer.expected_value, model_outputs(model, background).mean(0), torch.float32, what="E[f]")


# -- models that return several tensors ------------------------------------------------------------------
def _several(m: nn.Module, x: torch.Tensor) -> object:
    states = m.lstm(x)[0]
    per_step, final = m.per_step(states), m.final(states[:, -1])
    if m.how == "dict":
        return {"per_step": per_step, "final": final}
    return (per_step, final) if m.how == "tuple" else [per_step, final]


def _concatenated(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    states = m.lstm(x)[0]
    return torch.cat([m.final(states[:, -1]), m.per_step(states).flatten(1)], 1)


def several_outputs(how: str, forward: Any = _several) -> Composite:
    """An LSTM with a per-step head and a final head, returned as a tuple, a list or a dict (``forward=_concatenated``:
    the same parts, their outputs concatenated into one tensor)."""
    return Composite(forward, how=how, lstm=nn.LSTM(3, 4, batch_first=True), per_step=nn.Linear(4, 2), final=nn.Linear(4, 1))


@pytest.mark.parametrize("how", ["tuple", "list", "dict"])
def test_several_output_tensors_are_one_flat_vector_or_one_by_name(how: str) -> None:
    """All of them: the values of the same model returning one concatenated tensor (a dict's in sorted
    key order: "final" first); ``output=`` picks one by name or index, with its own shape."""
    torch.manual_seed(0)
    model = several_outputs(how).double().eval()
    concatenated = several_outputs(how, _concatenated).double().eval()
    concatenated.load_state_dict(model.state_dict())
    background, X = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    order = ["final", "per_step"] if how == "dict" else ["output_0", "output_1"]
    assert [name for name, *_ in explainer.engine.output_layout] == order
    values = explainer.shap_values(X)
    if how == "dict":
        np.testing.assert_allclose(values, rnnshap.DeepExplainer(concatenated, background).shap_values(X), rtol=1e-12, atol=1e-14)
    else:
        assert values.shape == (2, 5, 3, 11)
    final = rnnshap.DeepExplainer(model, background, output="final" if how == "dict" else 1)
    assert final.output_shape == (1,)
    final_column = explainer.engine.output_layout[0 if how == "dict" else 1][2]  # (name, shape, start, stop)
    np.testing.assert_allclose(final.shap_values(X)[..., 0], values[..., final_column], rtol=1e-12, atol=1e-14)  # (N, 1) output
    with pytest.raises(rnnshap.InputError, match="output"):
        rnnshap.DeepExplainer(model, background, output=5 if how != "dict" else "missing")


def test_output_takes_numpy_integers() -> None:
    torch.manual_seed(0)
    model = several_outputs("tuple").double().eval()
    background = torch.randn(3, 5, 3, dtype=torch.float64)
    assert rnnshap.DeepExplainer(model, background, output=np.int64(1)).output_shape == (1,)


def test_a_read_only_array_is_taken_without_a_warning() -> None:
    """Ray hands batches as read-only arrays; torch warns on them unless they are copied."""
    import warnings

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
    background = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    background.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer = rnnshap.DeepExplainer(model, background)
        values = explainer.shap_values(background[:2])
    assert values.shape == (2, 3, 2)


def test_the_multipliers_door_checks_no_additivity_and_leaves_the_engine_as_it_was() -> None:
    """``attribution(multipliers=True)`` (Captum's ``multiply_by_inputs=False``): the multipliers, which do
    not add up to f(x) − E[f] by themselves, so no additivity check (with the default check it would raise);
    multiplier × (x − r) equals the plain attributions; the engine holds no setting for it (an argument of the call)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double().eval()
    background, x = torch.randn(1, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    explainer = rnnshap.DeepExplainer(model, background)
    inputs = explainer.engine.inputs(x, "X")
    multipliers = explainer.attribution(inputs, multipliers=True).values[0]
    plain = explainer.attribution(inputs).values[0]
    np.testing.assert_allclose(multipliers * (x - background).numpy()[..., None], plain, rtol=1e-12, atol=1e-15)
    assert not hasattr(explainer.engine, "multipliers")
