"""Attributions to hidden states and layers.

``rnnshap.captum``'s ``LayerDeepLift``, ``LayerDeepLiftShap``, ``NeuronDeepLift`` and ``NeuronDeepLiftShap``,
and ``DeepExplainer((model, layer), data, layer_output=True)``.

Truths: Captum's own classes where Captum's rules are exact (linear layers, convolutions and hooked
activation modules; Captum's layer attributions at the *input* of a hooked activation are not exact, and
are checked to miss); the model's own outputs for additivity (``f(x) − f(b)`` summed over every tensor of
the layer's output); exact zeros where the output cannot read a hidden unit or a step; causality of a
neuron of a recurrent layer (inputs after its step get exactly 0); and the model bit-identical afterwards.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.captum import LayerDeepLift, LayerDeepLiftShap, NeuronDeepLift, NeuronDeepLiftShap

from ..models.torch import Composite, RecurrentHead

pytestmark = pytest.mark.filterwarnings(
    "ignore:Setting forward, backward hooks:UserWarning",
    "ignore:Input Tensor .* did not already require gradients:UserWarning",
    "ignore::FutureWarning",
    "ignore::PendingDeprecationWarning",
)

F64 = torch.float64
Tensor = torch.Tensor
#: float64 rounding of a few thousand operations on values of order 1
ATOL = 1e-12


@pytest.fixture(scope="module")
def captum_attr() -> Any:
    return pytest.importorskip("captum.attr")


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


def cnn() -> nn.Module:
    return Composite(lambda m, x: m.fc(m.relu2(m.conv2(m.pool(m.relu1(m.conv1(x))))).flatten(1)),
                     conv1=nn.Conv2d(2, 4, 3, padding=1), relu1=nn.ReLU(), pool=nn.AvgPool2d(2), conv2=nn.Conv2d(4, 3, 3),
                     relu2=nn.ReLU(), fc=nn.Linear(3 * 2 * 2, 4))  # fmt: skip


def _stacked(m: nn.Module, x: Tensor) -> Tensor:
    out, _ = m.lstm(torch.relu(m.pre(x)))
    _, h = m.gru(m.tap(out) if hasattr(m, "tap") else out)
    return m.head(h[-1])


def stacked(**tap: nn.Module) -> Composite:
    """x (N, T, 3) → Linear → ReLU → LSTM → GRU → final state → Linear (2 outputs); ``tap=nn.Identity()``: on the
    LSTM's hidden states, a one-tensor layer Captum can hook."""
    return Composite(_stacked, pre=nn.Linear(3, 4), lstm=nn.LSTM(4, 5, batch_first=True), gru=nn.GRU(5, 4, batch_first=True),
                     head=nn.Linear(4, 2), **tap)  # fmt: skip


def _tanh_first_units(out: Tensor, state: object) -> Tensor:
    return torch.tanh(out[:, -1, :3])


def last_units() -> RecurrentHead:
    """A 2-layer LSTM whose head reads only units 0-2 of the last step of ``out``."""
    return RecurrentHead("lstm", 3, 5, 2, layers=2, read=_tanh_first_units, head_inputs=3, names="lstm head")


def _state(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], int]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()], hooks


def _assert_unchanged(model: nn.Module, before: tuple[dict[str, Tensor], list[bool], int]) -> None:
    state, flags, hooks = _state(model)
    assert state.keys() == before[0].keys() and all(torch.equal(v, before[0][k]) for k, v in state.items())
    assert flags == before[1] and hooks == before[2]


def _tuple(value: Any) -> tuple[Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def _close(ours: Any, theirs: Any) -> None:
    for a, b in zip(_tuple(ours), _tuple(theirs), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=0, atol=ATOL)


# -- Captum parity where Captum is exact ----------------------------------------------------------
def _parity(
    captum_attr: Any, model: nn.Module, layers: list[tuple[nn.Module, bool, tuple[Any, ...]]], x: Tensor, b: Tensor, bg: Tensor
) -> None:
    """Layer and Neuron classes against Captum's on each (layer, attribute_to_layer_input, neuron index)."""
    before = _state(model)
    for layer, to_input, index in layers:
        options = {"attribute_to_layer_input": to_input, "return_convergence_delta": True}
        ours = LayerDeepLift(model, layer).attribute(x, b, target=1, **options)
        theirs = captum_attr.LayerDeepLift(model, layer).attribute(x, b, target=1, **options)
        _close(ours[0], theirs[0])
        _close(ours[1], theirs[1])
        assert float(ours[1].abs().max()) < ATOL
        ours = LayerDeepLiftShap(model, layer).attribute(x, bg, target=2, **options)
        theirs = captum_attr.LayerDeepLiftShap(model, layer).attribute(x, bg, target=2, **options)
        _close(ours[0], theirs[0])
        assert ours[1].shape == theirs[1].shape == (len(x) * len(bg),)
        _close(ours[1], theirs[1])
        local = LayerDeepLift(model, layer, multiply_by_inputs=False).attribute(x, b, target=0, attribute_to_layer_input=to_input)
        captum_local = captum_attr.LayerDeepLift(model, layer, multiply_by_inputs=False)
        _close(local, captum_local.attribute(x, b, target=0, attribute_to_layer_input=to_input))

        def doubled(
            multipliers: tuple[Tensor, ...], given: tuple[Tensor, ...], reference: tuple[Tensor, ...]
        ) -> tuple[Tensor, ...]:
            return tuple(2 * m * (g - r) for m, g, r in zip(multipliers, given, reference, strict=True))

        custom = {
            "inputs": x, "baselines": bg, "target": 0, "attribute_to_layer_input": to_input, "custom_attribution_func": doubled,
        }  # fmt: skip
        _close(
            LayerDeepLiftShap(model, layer).attribute(**custom),
            captum_attr.LayerDeepLiftShap(model, layer).attribute(**custom),
        )
        for pick in (index, (slice(0, 2), *index[1:])):  # one neuron; the sum over a slice of them
            _close(
                NeuronDeepLift(model, layer).attribute(x, pick, b, attribute_to_neuron_input=to_input),
                captum_attr.NeuronDeepLift(model, layer).attribute(x, pick, b, attribute_to_neuron_input=to_input),
            )
            _close(
                NeuronDeepLiftShap(model, layer).attribute(x, pick, bg, attribute_to_neuron_input=to_input),
                captum_attr.NeuronDeepLiftShap(model, layer).attribute(x, pick, bg, attribute_to_neuron_input=to_input),
            )
    _assert_unchanged(model, before)


def test_captum_parity_on_an_mlp(captum_attr: Any) -> None:
    model = _mlp()
    x, b, bg = _randn(4, 5, seed=1), _randn(4, 5, seed=2), _randn(6, 5, seed=3)
    # every Linear's input and output, and the activations' outputs (not their inputs: see below)
    one = (1,)
    layers = [
        (model[0], True, one), (model[0], False, one), (model[1], False, one), (model[2], True, one), (model[2], False, one),
        (model[3], False, one), (model[4], True, one),
    ]  # fmt: skip
    _parity(captum_attr, model, layers, x, b, bg)


def test_captum_parity_on_a_cnn(captum_attr: Any) -> None:
    torch.manual_seed(1)
    model = cnn().double().eval()
    x, b, bg = _randn(3, 2, 8, 8, seed=4), _randn(3, 2, 8, 8, seed=5), _randn(4, 2, 8, 8, seed=6)
    cell = (1, 0, 1)
    layers = [
        (model.conv1, False, cell), (model.relu1, False, cell), (model.conv2, True, cell), (model.conv2, False, cell),
        (model.fc, True, (3,)),
    ]  # fmt: skip
    _parity(captum_attr, model, layers, x, b, bg)


def test_per_row_arguments_match_captum(captum_attr: Any) -> None:
    """A per-row additional argument reaches the layer: each (row, baseline) pair has its own layer tensors."""

    model = Composite(lambda m, x, scale: m.net(x * scale[:, None]), net=_mlp()).eval()
    x, bg, scale = _randn(3, 5, seed=7), _randn(4, 5, seed=8), torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    for layer in (model.net[1], model.net[2]):
        options = {"additional_forward_args": (scale,), "return_convergence_delta": True}
        ours = LayerDeepLiftShap(model, layer).attribute(x, bg, target=0, **options)
        theirs = captum_attr.LayerDeepLiftShap(model, layer).attribute(x, bg, target=0, **options)
        _close(ours[0], theirs[0])
        _close(ours[1], theirs[1])


def test_captum_misses_at_an_activations_input_where_rnnshap_adds_up(captum_attr: Any) -> None:
    """Captum takes the gradient at the input of a hooked activation module, not its multiplier."""
    model = _mlp()
    x, b = _randn(4, 5, seed=1), _randn(4, 5, seed=2)
    for layer in (model[1], model[3]):
        options = {"attribute_to_layer_input": True, "return_convergence_delta": True}
        ours, delta = LayerDeepLift(model, layer).attribute(x, b, target=1, **options)
        _, theirs = captum_attr.LayerDeepLift(model, layer).attribute(x, b, target=1, **options)
        assert float(delta.abs().max()) < ATOL
        assert float(theirs.detach().abs().max()) > 1e-3  # measured: 0.070 and 0.020


# -- recurrent layers: exact where Captum is not --------------------------------------------------
def test_hidden_states_of_an_lstm_and_a_gru_add_up() -> None:
    torch.manual_seed(2)
    model = stacked().double().eval()
    before = _state(model)
    x, b, bg = _randn(4, 7, 3, seed=9), _randn(4, 7, 3, seed=10), _randn(5, 7, 3, seed=11)
    with torch.no_grad():
        f_x, f_b, f_bg = model(x), model(b), model(bg)
    for layer, hidden in ((model.lstm, 5), (model.gru, 4)):
        values, delta = LayerDeepLift(model, layer).attribute(x, b, target=1, return_convergence_delta=True)
        assert values[0].shape == (4, 7, hidden) and values[1].shape == (4, 1, hidden)  # out, h_n (batch first)
        total = sum(v.reshape(4, -1).sum(1) for v in values)
        np.testing.assert_allclose(total.numpy(), (f_x - f_b)[:, 1].numpy(), rtol=0, atol=ATOL)
        assert float(delta.abs().max()) < ATOL
        shap_values, shap_delta = LayerDeepLiftShap(model, layer).attribute(x, bg, target=0, return_convergence_delta=True)
        total = sum(v.reshape(4, -1).sum(1) for v in shap_values)
        np.testing.assert_allclose(total.numpy(), (f_x[:, 0] - f_bg[:, 0].mean()).numpy(), rtol=0, atol=ATOL)
        assert shap_delta.shape == (20,) and float(shap_delta.abs().max()) < ATOL
        # the front door: the same values, every output at once
        explainer = rnnshap.DeepExplainer((model, layer), bg, layer_output=True)
        front = explainer.shap_values(x)
        assert len(front) == len(shap_values)
        for ours, door in zip(shap_values, front, strict=True):
            np.testing.assert_allclose(ours.numpy(), door[..., 0], rtol=0, atol=ATOL)
        with torch.no_grad():
            states = model.lstm(torch.relu(model.pre(x)))[0]
            if layer is not model.lstm:
                states = model.gru(states)[0]
        if importlib.util.find_spec("shap") is not None:
            explanation = explainer(x)[0]  # an Explanation's data is the layer's output
            np.testing.assert_array_equal(explanation.data, states.numpy())
            np.testing.assert_array_equal(explanation.values, front[0])
    # the LSTM's outputs feed the GRU at every step: each step of the hidden state takes a share
    lstm_out = LayerDeepLiftShap(model, model.lstm).attribute(x, bg, target=0)[0]
    assert (lstm_out.abs().sum((0, 2)) > 0).all()
    _assert_unchanged(model, before)


def test_hidden_states_where_captum_misses(captum_attr: Any) -> None:
    """The LSTM's hidden states feed a GRU: Captum's attributions to them (through an identity tap, since
    it refuses the LSTM's tuple output) miss f(x) − f(b); rnnshap's add up and equal those at ``out``."""
    torch.manual_seed(2)
    model = stacked(tap=nn.Identity()).double().eval()
    x, bg = _randn(4, 7, 3, seed=9), _randn(5, 7, 3, seed=11)
    ours, delta = LayerDeepLiftShap(model, model.tap).attribute(x, bg, target=0, return_convergence_delta=True)
    at_lstm = LayerDeepLiftShap(model, model.lstm).attribute(x, bg, target=0)
    np.testing.assert_allclose(ours.numpy(), at_lstm[0].numpy(), rtol=0, atol=ATOL)
    theirs, captum_delta = captum_attr.LayerDeepLiftShap(model, model.tap).attribute(
        x, bg, target=0, return_convergence_delta=True
    )
    assert float(delta.abs().max()) < ATOL
    assert float(captum_delta.detach().abs().max()) > 1e-4  # measured: 9.3e-4
    assert float((ours - theirs.detach()).abs().max()) > 1e-5  # measured: 1.0e-4
    with pytest.raises(AssertionError):  # Captum cannot take the LSTM's own output, a tuple
        captum_attr.LayerDeepLiftShap(model, model.lstm).attribute(x, bg, target=0)


def test_captum_is_not_exact_before_a_recurrent_layer(captum_attr: Any) -> None:
    torch.manual_seed(2)
    model = stacked().double().eval()
    x, bg = _randn(4, 7, 3, seed=9), _randn(5, 7, 3, seed=11)
    ours, delta = LayerDeepLiftShap(model, model.pre).attribute(x, bg, target=0, return_convergence_delta=True)
    theirs, captum_delta = captum_attr.LayerDeepLiftShap(model, model.pre).attribute(
        x, bg, target=0, return_convergence_delta=True
    )
    with torch.no_grad():
        gap = (model(x)[:, 0] - model(bg)[:, 0].mean()).abs().max()
    assert float(delta.abs().max()) < ATOL
    assert float(captum_delta.detach().abs().max()) > 0.1 * float(gap)  # measured: 0.015, the largest gap 0.014
    assert float((ours - theirs.detach()).abs().max()) > 1e-3  # measured: 0.0047


def test_zeros_where_the_output_cannot_read_a_unit_or_a_step() -> None:
    """The head reads units 0-2 of the last step of ``out``: every other entry of ``out``, and ``h_n`` and
    ``c_n``, get exactly 0. (Earlier steps reach the output only through the recurrence, which runs before
    the cut: attributions to a layer's output measure the paths from that tensor on.)"""
    torch.manual_seed(3)
    model = last_units().double().eval()
    # a background of 2 = the LSTM's 2 layers (h_n is (2, N, 5)), then 3 samples: the batch axis is found, not guessed
    bg, x = _randn(2, 6, 3, seed=12), _randn(3, 6, 3, seed=13)
    out, h_n, c_n = rnnshap.DeepExplainer((model, model.lstm), bg, layer_output=True).shap_values(x)
    assert out.shape == (3, 6, 5, 2) and h_n.shape == c_n.shape == (3, 2, 5, 2)
    assert not out[:, :-1].any() and not out[:, :, 3:].any() and not h_n.any() and not c_n.any()
    assert np.abs(out[:, -1, :3]).min() > 0
    with torch.no_grad():
        gap = (model(x) - model(bg).mean(0)).numpy()
    np.testing.assert_allclose(out.sum((1, 2)), gap, rtol=0, atol=ATOL)


def test_a_neuron_of_a_recurrent_layer_is_causal_and_adds_up() -> None:
    """Unit 3 of the LSTM's hidden state at step 2 depends on steps 0-2 only: later steps get exactly 0."""
    torch.manual_seed(2)
    model = stacked().double().eval()
    before = _state(model)
    x, b, bg = _randn(4, 7, 3, seed=9), _randn(4, 7, 3, seed=10), _randn(5, 7, 3, seed=11)

    def unit(out: Any) -> Tensor:
        return out[0][:, 2, 3]

    with torch.no_grad():
        neuron_x, neuron_b, neuron_bg = (unit(model.lstm(torch.relu(model.pre(v)))) for v in (x, b, bg))
    single = NeuronDeepLift(model, model.lstm).attribute(x, unit, b)
    np.testing.assert_allclose(single.sum((1, 2)).numpy(), (neuron_x - neuron_b).numpy(), rtol=0, atol=ATOL)
    assert not single[:, 3:].any() and single[:, :3].abs().sum() > 0
    shapley = NeuronDeepLiftShap(model, model.lstm).attribute(x, unit, bg)
    np.testing.assert_allclose(shapley.sum((1, 2)).numpy(), (neuron_x - neuron_bg.mean()).numpy(), rtol=0, atol=ATOL)
    assert not shapley[:, 3:].any()
    with pytest.raises(rnnshap.InputError, match="holds 3 floating-point tensors"):
        NeuronDeepLift(model, model.lstm).attribute(x, (2, 3), b)
    _assert_unchanged(model, before)


# -- refusals -------------------------------------------------------------------------------------
def skip() -> nn.Module:
    return Composite(lambda m, x: m.head(torch.cat([m.lstm(x)[0][:, -1], x[:, -1]], 1)),
                     lstm=nn.LSTM(3, 4, batch_first=True), head=nn.Linear(4 + 3, 1))  # fmt: skip


def test_a_layer_that_is_not_a_cut_is_refused() -> None:
    torch.manual_seed(4)
    model = skip().double().eval()
    x, bg = _randn(3, 5, 3, seed=14), _randn(4, 5, 3, seed=15)
    with pytest.raises(rnnshap.InputError, match="other than through the output of the layer 'lstm'"):
        rnnshap.DeepExplainer((model, model.lstm), bg, layer_output=True)
    with pytest.raises(rnnshap.InputError, match="other than through the output of the layer 'lstm'"):
        LayerDeepLiftShap(model, model.lstm).attribute(x, bg)
    with pytest.raises(rnnshap.InputError, match="layer_output=True attributes to the output of a layer"):
        rnnshap.DeepExplainer(model, bg, layer_output=True)
    with pytest.raises(rnnshap.InputError, match="not a submodule"):
        LayerDeepLift(model, nn.Linear(2, 2))
    with pytest.raises(rnnshap.InputError, match="attributes to a layer's output"):
        rnnshap.DeepExplainer((model, model.head), bg, layer_output=True).shapley_values(x)


def test_layer_output_explainer_keeps_the_model_and_its_input_form() -> None:
    torch.manual_seed(3)
    model = last_units().double().eval()
    model.train()  # no dropout: explained as it runs
    before = _state(model)
    bg, x = _randn(3, 6, 3, seed=16), _randn(2, 6, 3, seed=17)
    values = rnnshap.DeepExplainer((model, model.head), bg, layer_output=True).shap_values(x)
    with torch.no_grad():
        gap = (model(x) - model(bg).mean(0)).numpy()
    # the head is the last layer: output j of the head carries all of output j, and nothing of the other
    assert values.shape == (2, 2, 2)
    np.testing.assert_allclose(values, gap[:, :, None] * np.eye(2)[None], rtol=0, atol=ATOL)
    # the input form is unchanged by the output form's code: the head's input, as before
    inputs = rnnshap.DeepExplainer((model, model.head), bg).shap_values(x)
    assert inputs.shape == (2, 3, 2)
    np.testing.assert_allclose(inputs.sum(1), gap, rtol=0, atol=ATOL)
    _assert_unchanged(model, before)
    copy.deepcopy(model)  # no hook or attribute left that would stop a copy
