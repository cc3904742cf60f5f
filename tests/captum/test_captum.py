"""rnnshap.captum: Captum's DeepLift / DeepLiftShap call, answered by rnnshap's exact rules.

Where Captum's rules are exact too (linear layers and hooked nn.ReLU / nn.Tanh modules) the values
equal Captum's; on recurrent layers Captum's convergence delta is large and rnnshap's is rounding.
Shapes, dtypes, devices and the tensor/tuple form of the results follow Captum's.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
import rnnshap.captum
from rnnshap.captum import DeepLift, DeepLiftShap

from ..conftest import ADDITIVITY_TOL, assert_adds_up_to, assert_rounding_close, eps, rounding_tol
from ..models.torch import Composite, Dense, RecurrentHead

pytestmark = pytest.mark.filterwarnings(
    "ignore:Setting forward, backward hooks:UserWarning", "ignore:Input Tensor .* did not already require gradients:UserWarning"
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: ours against Captum's: the same formula computed in another order, so rounding apart, relative to
#: max(1, |value|) like the additivity check; a convergence delta is Σφ − Δ, within the additivity
#: tolerance (the outputs of these small models are below 1, so max(1, |Δ|) is 1)
TOLERANCE = ADDITIVITY_TOL
DELTA_TOL = ADDITIVITY_TOL[torch.float32]


@pytest.fixture(scope="module")
def captum_attr() -> Any:
    return pytest.importorskip("captum.attr")


def mlp(activation: type[nn.Module], dtype: torch.dtype = torch.float32) -> nn.Module:
    """Linear layers and activation modules only: Captum's DeepLIFT rules are exact on it too."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), activation(), nn.Linear(12, 8), activation(), nn.Linear(8, 3)).eval().to(dtype)


def recurrent(layer: type[nn.RNNBase] = nn.LSTM) -> nn.Module:
    torch.manual_seed(0)
    return RecurrentHead({nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}[layer], 4, 12, 3).eval()


def _two_inputs_forward(m: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: Any = 1.0, mode: str = "sum") -> torch.Tensor:
    """forward(x, y, scale=..., mode=...): two attributed inputs and additional arguments."""
    return m.out(m.relu(m.a(x)) + m.tanh(m.b(y)) if mode == "sum" else m.relu(m.a(x))) * scale


def two_inputs() -> nn.Module:
    torch.manual_seed(0)
    return Composite(_two_inputs_forward, a=nn.Linear(5, 8), b=nn.Linear(3, 8), relu=nn.ReLU(), tanh=nn.Tanh(),
                     out=nn.Linear(8, 2)).eval()  # fmt: skip


def data(*shape: int, n: int = 5, baselines: int = 4, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=generator, dtype=dtype)
    return x, torch.randn(baselines, *shape, generator=generator, dtype=dtype)


def assert_close(ours: Any, theirs: Any, atol: float) -> None:
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert_close(a, b, atol)
        return
    assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert_rounding_close(ours.numpy(), theirs.detach().numpy(), ours.dtype, ulps=atol / eps(ours.dtype))


# -- values: equal to Captum's where Captum's rules are exact -------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
def test_deeplift_shap_equals_captum_on_an_mlp(captum_attr: Any, activation: type[nn.Module], dtype: torch.dtype) -> None:
    model = mlp(activation, dtype)
    x, background = data(6, n=6, baselines=5, dtype=dtype)
    targets = [0, 2, 1, 1, 0, 2]
    ours, delta = DeepLiftShap(model).attribute(x, baselines=background, target=targets, return_convergence_delta=True)
    theirs, their_delta = captum_attr.DeepLiftShap(model).attribute(
        x, baselines=background, target=targets, return_convergence_delta=True
    )
    assert_close(ours, theirs, TOLERANCE[dtype])
    assert_close(delta, their_delta, TOLERANCE[dtype])
    # and it is DeepExplainer's DeepSHAP, value for value
    same = DeepLiftShap(model).attribute(x, baselines=background, target=1)
    expected = rnnshap.DeepExplainer(model, background).shap_values(x, outputs=[1])[..., 0]
    assert_rounding_close(same.numpy(), expected, dtype, ulps=TOLERANCE[dtype] / eps(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
@pytest.mark.parametrize("baselines", ["none", "scalar", "one_row", "zeros_like", "per_row"])
def test_deeplift_equals_captum_on_an_mlp(
    captum_attr: Any, activation: type[nn.Module], dtype: torch.dtype, baselines: str
) -> None:
    model = mlp(activation, dtype)
    x, background = data(6, n=6, baselines=6, dtype=dtype)
    forms = {"none": None, "scalar": 0.25, "one_row": background[:1], "zeros_like": torch.zeros_like(x), "per_row": background}
    given = forms[baselines]
    ours, delta = DeepLift(model).attribute(x, baselines=given, target=2, return_convergence_delta=True)
    theirs, their_delta = captum_attr.DeepLift(model).attribute(x, baselines=given, target=2, return_convergence_delta=True)
    assert_close(ours, theirs, TOLERANCE[dtype])
    assert_close(delta, their_delta, TOLERANCE[dtype])


def test_deeplift_pairs_each_row_with_its_own_baseline(captum_attr: Any) -> None:
    """Per-row baselines give each row DeepLIFT against its own baseline row, not an average."""
    model = mlp(nn.ReLU, torch.float64)
    x, background = data(6, n=4, baselines=4, dtype=torch.float64)
    per_row = DeepLift(model).attribute(x, baselines=background, target=0)
    for i in range(4):
        alone = DeepLift(model).attribute(x[i : i + 1], baselines=background[i : i + 1], target=0)
        np.testing.assert_allclose(per_row[i : i + 1].numpy(), alone.numpy(), rtol=0, atol=1e-12)


# -- recurrent layers: rnnshap adds up, Captum does not ---------------------------------------------------
@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_on_recurrent_layers_the_delta_is_rounding_where_captums_is_not(captum_attr: Any, layer: type[nn.RNNBase]) -> None:
    model = recurrent(layer)
    x, background = data(7, 4, n=4, baselines=3)
    ours, delta = DeepLiftShap(model).attribute(x, baselines=background, target=1, return_convergence_delta=True)
    theirs, their_delta = captum_attr.DeepLiftShap(model).attribute(
        x, baselines=background, target=1, return_convergence_delta=True
    )
    assert delta.shape == their_delta.shape == (4 * 3,)
    assert delta.abs().max() < DELTA_TOL
    # A documented fact, not a wish: Captum takes plain gradients through the gates of nn.LSTM / nn.GRU
    # (it hooks activation modules only), so its attributions miss f(x) - f(b) by percents.
    assert their_delta.abs().max() > 1e-2
    assert (ours - theirs).abs().max() > 1e-3
    single, single_delta = DeepLift(model).attribute(x, baselines=background[:1], target=1, return_convergence_delta=True)
    _, captum_single_delta = captum_attr.DeepLift(model).attribute(
        x, baselines=background[:1], target=1, return_convergence_delta=True
    )
    assert single_delta.abs().max() < DELTA_TOL and captum_single_delta.abs().max() > 1e-2
    # the attributions of every row add up to f(x) - f(b) for its own baseline
    with torch.no_grad():
        gap = model(x)[:, 1] - model(background[:1])[:, 1]
    assert_adds_up_to(single.sum((1, 2)).numpy(), gap.numpy(), torch.float32, what="Σφ against f(x) − f(b)")


def test_the_delta_of_deeplift_shap_is_each_pairs_own() -> None:
    """With the delta, DeepLiftShap runs every (row, baseline) pair as a pair: its delta is that pair's
    DeepLift delta, in Captum's order (row-major), and its values are the mean of the pairs'."""
    model = recurrent().double()
    x, background = data(6, 4, n=3, baselines=4, dtype=torch.float64)
    values, delta = DeepLiftShap(model).attribute(x, baselines=background, target=2, return_convergence_delta=True)
    plain = DeepLiftShap(model).attribute(x, baselines=background, target=2)
    np.testing.assert_allclose(values.numpy(), plain.numpy(), rtol=0, atol=1e-12)
    rows, references = x.repeat_interleave(4, dim=0), background.repeat(3, 1, 1)
    pairs, pair_delta = DeepLift(model).attribute(rows, baselines=references, target=2, return_convergence_delta=True)
    np.testing.assert_allclose(values.numpy(), pairs.reshape(3, 4, 6, 4).mean(1).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(delta.numpy(), pair_delta.numpy(), rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-12
    # a pair's delta is its own: Σφ of pair (i, j) - (f(x_i) - f(b_j))
    with torch.no_grad():
        gap = model(rows)[:, 2] - model(references)[:, 2]
    np.testing.assert_allclose(pairs.sum((1, 2)).numpy() - gap.numpy(), delta.numpy(), rtol=0, atol=1e-12)


# -- shapes, dtypes, devices, forms ----------------------------------------------------------------------
def _first(y: torch.Tensor) -> torch.Tensor:
    return y[:, 0]


def _sequence_output() -> nn.Module:
    torch.manual_seed(0)
    return Dense(4, 6, 3).eval()  # outputs (N, T, K): targets are tuples (t, k)


def _one_output(keep: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return Dense(6, 5, 1, output=None if keep else _first).eval()  # outputs (N, 1) or (N,): no target needed

    return make


TARGETS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], Any]] = [
    ("int", lambda: mlp(nn.ReLU), (6,), 1),
    ("negative int", lambda: mlp(nn.ReLU), (6,), -1),
    ("one-element tensor", lambda: mlp(nn.ReLU), (6,), torch.tensor(2)),
    ("list of ints", lambda: mlp(nn.ReLU), (6,), [0, 1, 2, 1, 0]),
    ("tensor per sample", lambda: mlp(nn.ReLU), (6,), torch.tensor([2, 2, 0, 1, 0])),
    ("tuple", _sequence_output, (7, 4), (3, 2)),
    ("list of tuples", _sequence_output, (7, 4), [(0, 1), (6, 2), (3, 0), (3, 0), (1, 1)]),
    ("None, (N,) output", _one_output(False), (6,), None),
    ("None, (N, 1) output", _one_output(True), (6,), None),
]


@pytest.mark.parametrize("method", ["DeepLift", "DeepLiftShap"])
@pytest.mark.parametrize(("make", "shape", "target"), [t[1:] for t in TARGETS], ids=[t[0] for t in TARGETS])
def test_every_target_form_gives_captums_values_and_shapes(
    captum_attr: Any, method: str, make: Callable[[], nn.Module], shape: tuple[int, ...], target: Any
) -> None:
    model = make()
    x, background = data(*shape, n=5, baselines=3)
    baselines = background if method == "DeepLiftShap" else background[:1]
    options = {"baselines": baselines, "target": target, "return_convergence_delta": True}
    ours, delta = getattr(rnnshap.captum, method)(model).attribute(x, **options)
    theirs, their_delta = getattr(captum_attr, method)(model).attribute(x, **options)
    assert_close(ours, theirs, TOLERANCE[torch.float32])
    assert delta.shape == their_delta.shape and delta.dtype == their_delta.dtype and delta.device == their_delta.device
    assert delta.abs().max() < DELTA_TOL


@pytest.mark.parametrize("method", ["DeepLift", "DeepLiftShap"])
@pytest.mark.parametrize("form", ["tensor", "tuple of one", "tuple of two"])
def test_tensor_in_tensor_out_tuple_in_tuple_out(captum_attr: Any, method: str, form: str) -> None:
    if form == "tuple of two":
        model = two_inputs()
        (x, bx), (y, by) = data(5, n=4, baselines=3), data(3, n=4, baselines=3)
        inputs: Any = (x, y)
        baselines: Any = (bx, by) if method == "DeepLiftShap" else (bx[:1], 0.5)
    else:
        model = mlp(nn.Tanh)
        x, bx = data(6, n=4, baselines=3)
        inputs = x if form == "tensor" else (x,)
        one = bx if method == "DeepLiftShap" else bx[:1]
        baselines = one if form == "tensor" else (one,)
    ours = getattr(rnnshap.captum, method)(model).attribute(inputs, baselines=baselines, target=1)
    theirs = getattr(captum_attr, method)(model).attribute(inputs, baselines=baselines, target=1)
    assert type(ours) is type(theirs)
    assert_close(ours, theirs, TOLERANCE[torch.float32])
    as_tuple = [value if isinstance(value, tuple) else (value,) for value in (ours, inputs)]
    for tensor, given in zip(*as_tuple, strict=True):
        assert tensor.device == given.device and not tensor.requires_grad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_results_come_back_on_the_inputs_device() -> None:
    model = recurrent().cuda()
    x, background = (t.cuda() for t in data(5, 4, n=3, baselines=3))
    values, delta = DeepLiftShap(model).attribute(x, baselines=background, target=0, return_convergence_delta=True)
    assert values.device == x.device == delta.device and values.dtype == torch.float32 and values.shape == x.shape
    values, delta = DeepLift(model).attribute(x, baselines=background, target=0, return_convergence_delta=True)
    assert values.device == x.device == delta.device and delta.abs().max() < DELTA_TOL


def test_baselines_may_be_a_callable(captum_attr: Any) -> None:
    model = mlp(nn.ReLU)
    x, background = data(6, n=3, baselines=4)
    for baselines in (lambda: background, lambda inputs: background + 0 * inputs[:1]):
        ours = DeepLiftShap(model).attribute(x, baselines=baselines, target=0)
        theirs = captum_attr.DeepLiftShap(model).attribute(x, baselines=baselines, target=0)
        assert_close(ours, theirs, TOLERANCE[torch.float32])


# -- additional_forward_args -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["DeepLift", "DeepLiftShap"])
@pytest.mark.parametrize("extra", ["constants", "a tensor per row", "a single tensor"])
def test_additional_forward_args_are_passed_and_not_attributed(captum_attr: Any, method: str, extra: str) -> None:
    model = two_inputs().double()
    (x, bx), (y, by) = data(5, n=4, baselines=3, dtype=torch.float64), data(3, n=4, baselines=3, dtype=torch.float64)
    scale = torch.linspace(0.5, 2.0, 4, dtype=torch.float64)[:, None]
    args = {"constants": (2.0, "sum"), "a tensor per row": (scale, "sum"), "a single tensor": scale}[extra]
    baselines = (bx, by) if method == "DeepLiftShap" else (bx[2:3], by[2:3])
    ours, delta = getattr(rnnshap.captum, method)(model).attribute(
        (x, y), baselines=baselines, target=[0, 1, 1, 0], additional_forward_args=args, return_convergence_delta=True
    )
    # Captum's DeepLiftShap iterates a bare tensor argument row by row (its DeepLift takes it): give it a tuple
    their_args = (args,) if method == "DeepLiftShap" and not isinstance(args, tuple) else args
    theirs, their_delta = getattr(captum_attr, method)(model).attribute(
        (x, y), baselines=baselines, target=[0, 1, 1, 0], additional_forward_args=their_args, return_convergence_delta=True
    )
    assert_close(ours, theirs, 1e-10)
    assert_close(delta, their_delta, 1e-10)
    # the argument changes the values: row i's scale multiplies row i's attributions
    unscaled = getattr(rnnshap.captum, method)(model).attribute((x, y), baselines=baselines, target=[0, 1, 1, 0])
    factor = 2.0 if extra == "constants" else scale
    np.testing.assert_allclose(ours[0].numpy(), (unscaled[0] * factor).numpy(), rtol=0, atol=1e-12)


def _packed(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """An LSTM over packed sequences, with lengths and token ids given as additional arguments."""
    z = torch.cat([x, m.embedding(tokens)], -1)
    packed = nn.utils.rnn.pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, (h, _) = m.lstm(packed)
    return m.head(h[-1])


def test_integer_additional_args_are_context_row_by_row() -> None:
    """Lengths and token ids in additional_forward_args are used as given, row by row, on both sides of
    every pair (even when they feed an embedding): the attributions of each pair add up."""
    torch.manual_seed(0)
    model = Composite(_packed, embedding=nn.Embedding(10, 3), lstm=nn.LSTM(4 + 3, 8, batch_first=True), head=nn.Linear(8, 2))
    model = model.eval()
    x, background = data(6, 4, n=4, baselines=3)
    lengths, tokens = torch.tensor([6, 3, 5, 2]), torch.randint(0, 10, (4, 6), generator=torch.Generator().manual_seed(2))
    extra = {"additional_forward_args": (lengths, tokens), "return_convergence_delta": True}
    values, delta = DeepLiftShap(model).attribute(x, baselines=background, target=1, **extra)
    assert delta.shape == (12,) and delta.abs().max() < DELTA_TOL
    assert values[1, 3:].abs().max() == 0 and values[3, 2:].abs().max() == 0  # steps past a row's length
    values, delta = DeepLift(model).attribute(x, baselines=background[:1], target=1, **extra)
    assert delta.abs().max() < DELTA_TOL
    # per-row baselines with per-row arguments: each row is its own pair
    _, delta = DeepLift(model).attribute(x, baselines=torch.cat([background, background[:1]]), target=0, **extra)
    assert delta.shape == (4,) and delta.abs().max() < DELTA_TOL


def test_compute_convergence_delta_is_captums(captum_attr: Any) -> None:
    model = recurrent()
    x, background = data(5, 4, n=3, baselines=3)
    values = DeepLift(model).attribute(x, baselines=background, target=[0, 1, 2])
    ours = DeepLift(model).compute_convergence_delta(values, background, x, target=[0, 1, 2])
    theirs = captum_attr.DeepLift(model).compute_convergence_delta(values, background, x, target=[0, 1, 2])
    assert_close(ours, theirs, rounding_tol(torch.float32))  # the same sums in another order


# -- Captum's whole signature: multipliers, custom functions, never raising on additivity ------------------
@pytest.mark.parametrize("method", ["DeepLift", "DeepLiftShap"])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
def test_multipliers_equal_captums_local_attributions(captum_attr: Any, method: str, activation: type[nn.Module]) -> None:
    model = mlp(activation, torch.float64)
    x, background = data(6, n=5, baselines=5, dtype=torch.float64)
    ours = getattr(rnnshap.captum, method)(model, multiply_by_inputs=False).attribute(x, baselines=background, target=1)
    theirs = getattr(captum_attr, method)(model, multiply_by_inputs=False).attribute(x, baselines=background, target=1)
    assert_close(ours, theirs, 1e-10)
    assert not getattr(rnnshap.captum, method)(model, multiply_by_inputs=False).multiplies_by_inputs


def test_multipliers_times_the_step_are_the_attributions_on_a_recurrent_model() -> None:
    """Where Captum's rules are not exact (an LSTM), the truth is rnnshap's own additive attributions:
    multiplier × (x − b) per row gives them back, and a row equal to its baseline keeps its multiplier."""
    model = recurrent().double()
    x, background = data(6, 4, n=4, baselines=4, dtype=torch.float64)
    background[2] = x[2]  # a row equal to its baseline: attributions 0, multipliers not
    multipliers = DeepLift(model, multiply_by_inputs=False).attribute(x, baselines=background, target=0)
    values, delta = DeepLift(model).attribute(x, baselines=background, target=0, return_convergence_delta=True)
    np.testing.assert_allclose((multipliers * (x - background)).numpy(), values.numpy(), rtol=0, atol=1e-13)
    assert delta.abs().max() < 1e-12 and float(multipliers[2].abs().max()) > 1e-3
    # DeepLiftShap: the mean over the baselines of each pair's multipliers
    shap_multipliers = DeepLiftShap(model, multiply_by_inputs=False).attribute(x, baselines=background, target=0)
    pairs = [DeepLift(model, multiply_by_inputs=False).attribute(x, baselines=background[j : j + 1], target=0) for j in range(4)]
    np.testing.assert_allclose(shap_multipliers.numpy(), torch.stack(pairs).mean(0).numpy(), rtol=0, atol=1e-13)


def _times_step(
    multipliers: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...], baselines: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    return tuple(m * (x - b) for m, x, b in zip(multipliers, inputs, baselines, strict=True))


def _hypothetical(
    multipliers: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...], baselines: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Hypothetical contributions of one-hot inputs (DeepLIFT's genomics use): feature k set to 1."""
    out = []
    for m, x, b in zip(multipliers, inputs, baselines, strict=True):
        parts = torch.zeros_like(x)
        for k in range(x.shape[-1]):
            one_hot = torch.zeros_like(x)
            one_hot[..., k] = 1.0
            parts[..., k] = ((one_hot - b) * m).sum(-1)
        out.append(parts)
    return tuple(out)


@pytest.mark.parametrize("method", ["DeepLift", "DeepLiftShap"])
def test_custom_attribution_func_gets_multipliers_inputs_and_baselines(captum_attr: Any, method: str) -> None:
    model = mlp(nn.Tanh, torch.float64)
    x, background = data(6, n=4, baselines=4, dtype=torch.float64)
    explainer = getattr(rnnshap.captum, method)(model)
    # multiplier × (x − b) as a custom function is the default attribution
    custom = explainer.attribute(x, baselines=background, target=2, custom_attribution_func=_times_step)
    np.testing.assert_allclose(custom.numpy(), explainer.attribute(x, baselines=background, target=2).numpy(), rtol=0, atol=1e-13)
    ours, delta = explainer.attribute(
        x, baselines=background, target=2, custom_attribution_func=_hypothetical, return_convergence_delta=True
    )
    theirs, their_delta = getattr(captum_attr, method)(model).attribute(
        x, baselines=background, target=2, custom_attribution_func=_hypothetical, return_convergence_delta=True
    )
    assert_close(ours, theirs, 1e-10)
    assert_close(delta, their_delta, 1e-10)
    with pytest.raises(ValueError, match="one tensor per input"):
        explainer.attribute(x, baselines=background, target=2, custom_attribution_func=lambda m, i, b: m[0][:1])


def test_the_delta_is_compute_convergence_delta_bit_for_bit_and_attribute_never_raises() -> None:
    """Logits near 1e5 in float32 (Captum's classification models): the outputs' differences are
    rounding, the values come back with their delta, which is compute_convergence_delta's exactly."""
    model = mlp(nn.ReLU)
    with torch.no_grad():
        model[-1].weight.mul_(3e4)
        model[-1].bias.add_(7.6e4)
    x, background = data(6, n=5, baselines=5)
    for baselines in (background, background[:1], 0.5, None):
        values, delta = DeepLift(model).attribute(x, baselines=baselines, target=[0, 1, 2, 0, 1], return_convergence_delta=True)
        start = baselines if baselines is not None else 0.0
        external = DeepLift(model).compute_convergence_delta(values, start, x, target=[0, 1, 2, 0, 1])
        assert torch.equal(delta, external)
    values, delta = DeepLiftShap(model).attribute(x, baselines=background, target=1, return_convergence_delta=True)
    assert torch.equal(values, DeepLiftShap(model).attribute(x, baselines=background, target=1))  # the same values
    scale = float(model(x).abs().max())
    assert delta.shape == (25,) and float(delta.abs().max()) <= 64 * torch.finfo(torch.float32).eps * scale
    with pytest.raises(rnnshap.AdditivityError):  # opt-in: rnnshap's own check at rnnshap's float32 tolerance
        DeepLift(model, check_additivity=1e-12).attribute(x, baselines=background, target=0)


def test_what_is_refused_is_refused_clearly() -> None:
    model = mlp(nn.ReLU)
    x, background = data(6, n=3, baselines=3)
    with pytest.raises(AssertionError, match="at least 2 baselines"):  # Captum asserts: so does rnnshap
        DeepLiftShap(model).attribute(x, baselines=background[:1], target=0)
    with pytest.raises(AssertionError, match="distribution"):
        DeepLiftShap(model).attribute(x, baselines=0.0, target=0)
    with pytest.raises(rnnshap.captum.BaselineError, match="distribution"):
        DeepLiftShap(model).attribute(x, baselines=lambda: ([[0.0] * 6, [1.0] * 6],), target=0)
    with pytest.raises(NotImplementedError):
        DeepLift(model).attribute_future()
    with pytest.raises(ValueError, match="give target="):
        DeepLift(model).attribute(x)
    with pytest.raises(ValueError, match="out of range"):
        DeepLift(model).attribute(x, target=3)
    with pytest.raises(ValueError, match="one target per sample"):
        DeepLift(model).attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match="pairs each input row"):
        DeepLift(model).attribute(x, baselines=background[:2], target=0)
    with pytest.raises(TypeError, match="floating-point"):
        DeepLift(model).attribute(x.long(), target=0)


def test_later_calls_with_the_same_baselines_reuse_the_explainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DeepLift or DeepLiftShap object answers a later call whose baselines have the same values (a new tensor
    included) from the explainer its first call built, as a kept DeepExplainer answers (its reference pass kept):
    the values of a fresh object's call bit for bit; other baselines build another explainer; weights changed in
    place between calls are followed (the additivity against the changed model's own outputs, and a fresh object's
    values bit for bit)."""
    built: list[int] = []
    make = rnnshap.captum.deeplift.DeepExplainer
    monkeypatch.setattr(rnnshap.captum.deeplift, "DeepExplainer", lambda *a, **k: built.append(1) or make(*a, **k))
    model = recurrent(nn.LSTM)
    x, background = data(7, 4, n=5, baselines=6)
    door = DeepLiftShap(model)
    door.attribute(x, baselines=background, target=1)
    again = door.attribute(x[:3], baselines=background.clone(), target=2)
    assert len(built) == 1
    assert torch.equal(again, DeepLiftShap(model).attribute(x[:3], baselines=background, target=2))
    assert len(built) == 2  # (the fresh object's)
    other = door.attribute(x, baselines=background * 0.5, target=0)
    assert len(built) == 3
    assert torch.equal(other, DeepLiftShap(model).attribute(x, baselines=background * 0.5, target=0))

    count = len(built)
    unkept = DeepLiftShap(model, keep_explainers=0)
    unkept.attribute(x, baselines=background, target=1)
    unkept.attribute(x, baselines=background, target=1)
    assert len(built) == count + 2

    single = DeepLift(model)  # one baseline for every row (default zeros): reused the same way
    first = single.attribute(x, target=1)
    count = len(built)
    assert torch.equal(single.attribute(x, target=1), first) and len(built) == count

    with torch.no_grad():
        model.head.weight.mul_(1.5)  # trained in place between calls
    changed = door.attribute(x, baselines=background, target=1)
    assert len(built) == count  # (the explainer the first call built, its kept reference pass dropped)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(background)[:, 1].mean()
    assert_adds_up_to(changed.double().sum((1, 2)).numpy(), gap.double().numpy(), torch.float32)
    assert torch.equal(changed, DeepLiftShap(model).attribute(x, baselines=background, target=1))


def test_a_kept_explainer_answers_only_what_a_fresh_object_would() -> None:
    """What a door's kept explainer would get wrong, each answered as a fresh object's call answers it, bit for bit:
    baselines written into after the call that built it (it keeps a copy), the door given another model, the model
    made float64 or put in train mode in place (a new explainer), an attribute forward() reads changed (not seen by
    the model's version: the kept reference pass is checked against a plain forward and run again), bfloat16
    baselines (their bytes have no numpy dtype)."""
    torch.manual_seed(0)
    model = Composite(
        lambda m, x: m.head(m.drop(m.rnn(x * m.scale)[0][:, -1])),
        scale=1.0, rnn=nn.LSTM(4, 6, batch_first=True), drop=nn.Dropout(0.25), head=nn.Linear(6, 3),
    ).eval()  # fmt: skip
    x, background = data(7, 4, n=4, baselines=5)
    door = DeepLiftShap(model)

    def fresh(baselines: torch.Tensor, target: int = 1) -> torch.Tensor:
        return DeepLiftShap(model).attribute(x.to(baselines.dtype), baselines=baselines, target=target)

    mine = background.clone()
    door.attribute(x, baselines=mine, target=1)
    before = mine.clone()
    mine.mul_(0.5)
    assert torch.equal(door.attribute(x, baselines=mine, target=1), fresh(mine))
    assert torch.equal(door.attribute(x, baselines=before, target=1), fresh(before))

    model.scale = 1.5  # read by forward(), unseen by the parameters' versions
    assert torch.equal(door.attribute(x, baselines=background, target=2), fresh(background, 2))

    other = copy.deepcopy(model)  # (the same modules, other weights)
    with torch.no_grad():
        other.head.weight.mul_(-2.0)
    swapped = DeepLiftShap(model)
    swapped.attribute(x, baselines=background, target=0)
    swapped.model = swapped.forward_func = other
    assert torch.equal(swapped.attribute(x, baselines=background, target=0), DeepLiftShap(other).attribute(x, background, 0))

    model.double()  # (float32 inputs and baselines, as before: the explainer casts them to the model's dtype)
    assert torch.equal(door.attribute(x, baselines=background, target=1), fresh(background))
    model.float().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the door puts a model in train mode into eval mode for the call, and says so)
        got, want = door.attribute(x, baselines=background, target=1), fresh(background)
    assert torch.equal(got, want)
    model.eval()
    half = background.to(torch.bfloat16)
    assert torch.equal(door.attribute(x.to(torch.bfloat16), baselines=half, target=1), fresh(half))


def test_the_module_does_not_need_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "captum" or m.startswith("captum.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "captum", None)  # import captum now raises ImportError
    try:
        module = importlib.reload(rnnshap.captum)
        x, background = data(6, n=2, baselines=2)
        values = module.DeepLiftShap(mlp(nn.ReLU)).attribute(x, baselines=background, target=0)
        assert values.shape == x.shape
    finally:
        monkeypatch.undo()
        importlib.reload(rnnshap.captum)


def test_the_examples_of_the_docs_page_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "captum.md").read_text(), flags=re.S)
    assert blocks
    namespace: dict[str, object] = {"__name__": "docs_captum"}
    for number, block in enumerate(blocks, 1):
        if "captum.attr" in block and importlib.util.find_spec("captum") is None:
            continue
        try:
            exec(compile(block, f"captum.md, example {number}", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            raise AssertionError(f"example {number} of docs/captum.md fails: {error!r}\n{block}") from error
