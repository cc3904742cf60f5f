"""Parity with ``shap.DeepExplainer`` (0.51) on the models where shap's rules are exact.

shap hooks leaf ``nn.Module``\\ s by class name, so every model here uses module forms only, each
module used once. Max-pool windows do not overlap (shap's unpool rule is wrong for overlapping
windows).

In float32, shap's Rescale quotient (Δy/Δx for every |Δx| ≥ 1e-6) loses precision to cancellation
when Δx is small: on sigmoid/tanh MLPs it is off the exact (float64) values by up to ~5e-5 of
max|φ|, while rnnshap's float32 values stay within ~3e-6. So for smooth nonlinearities the float32
values are compared with shap run on a float64 copy of the model (where shap is exact); for
piecewise-linear models (ReLU, conv, max-pool) shap's float32 values are exact and are compared
directly. Shapes, types, ranks and expected values are always compared with shap's float32 run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from .conftest import ADDITIVITY_TOL, as_list, assert_additive, assert_rounding_close, relative_to_max
from .models.torch import Composite

shap = pytest.importorskip("shap")

#: φ against shap's or the float64 reference, relative to max|φ|: the additivity tolerance of the dtype
PARITY_TOL_F32 = ADDITIVITY_TOL[torch.float32]
PARITY_TOL_F64 = ADDITIVITY_TOL[torch.float64]


def two_input_net(d1: int = 4, d2: int = 3, k: int = 3) -> nn.Module:
    """Two inputs, each through its own Linear, joined (linear cat) then a ReLU MLP."""
    return Composite(lambda m, x1, x2: m.head(m.act2(m.mix(m.act(torch.cat([m.a(x1), m.b(x2)], dim=1))))),
                     a=nn.Linear(d1, 6), b=nn.Linear(d2, 5), act=nn.ReLU(), mix=nn.Linear(11, 8), act2=nn.Tanh(),
                     head=nn.Linear(8, k))  # fmt: skip


def conv_image_net() -> nn.Module:
    """Conv2d + BatchNorm (eval, with non-trivial running stats) + ReLU + MaxPool2d(2) + Linear."""
    model = Composite(lambda m, x: m.head(m.drop(m.flat(m.pool(m.act(m.bn(m.conv(x))))))),
                      conv=nn.Conv2d(2, 4, 3, padding=1), bn=nn.BatchNorm2d(4), act=nn.ReLU(), pool=nn.MaxPool2d(2),
                      flat=nn.Flatten(), drop=nn.Dropout(0.3), head=nn.Linear(4 * 4 * 4, 3))  # fmt: skip
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
    return model


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]  # per model input, without the batch
    smooth: bool  # has smooth nonlinearities (sigmoid/tanh/...): float32 reference is shap in float64
    n_background: int = 16
    n_samples: int = 5

    @property
    def multi_input(self) -> bool:
        return len(self.input_shapes) > 1


CASES = [
    Case(
        "mlp_relu",
        lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)),
        ((6,),),
        smooth=False,
    ),
    Case("mlp_sigmoid", lambda: nn.Sequential(nn.Linear(6, 16), nn.Sigmoid(), nn.Linear(16, 3)), ((6,),), smooth=True),
    Case(
        "mlp_tanh",
        lambda: nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)),
        ((6,),),
        smooth=True,
    ),
    Case(
        "mlp_mixed",
        lambda: nn.Sequential(
            nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 4)
        ),
        ((6,),),
        smooth=True,
    ),
    Case(
        "mlp_other_activations",
        lambda: nn.Sequential(
            nn.Linear(5, 10), nn.ELU(), nn.Linear(10, 10), nn.LeakyReLU(0.1), nn.Linear(10, 10), nn.Softplus(), nn.Linear(10, 2)
        ),
        ((5,),),
        smooth=True,
    ),
    Case("mlp_single_output", lambda: nn.Sequential(nn.Linear(6, 12), nn.Sigmoid(), nn.Linear(12, 1)), ((6,),), smooth=True),
    Case(
        "conv1d_maxpool",
        lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4 * 7, 3)),
        ((2, 16),),
        smooth=False,
    ),
    Case(
        "conv1d_maxpool_stride_eq_kernel3",
        lambda: nn.Sequential(nn.Conv1d(3, 5, 2), nn.MaxPool1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 5, 2)),
        ((3, 16),),
        smooth=False,
    ),
    Case("conv2d_bn_maxpool", conv_image_net, ((2, 8, 8),), smooth=False),
    Case(
        "conv2d_maxpool_tanh_head",
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 6), nn.Tanh(), nn.Linear(6, 3)
        ),
        ((1, 8, 8),),
        smooth=True,
    ),
    Case("two_inputs", two_input_net, ((4,), (3,)), smooth=True),
]


def _data(case: Case, dtype: torch.dtype) -> tuple[object, object]:
    background = [torch.randn(case.n_background, *s, dtype=dtype) for s in case.input_shapes]
    X = [torch.randn(case.n_samples, *s, dtype=dtype) for s in case.input_shapes]
    if case.multi_input:
        return background, X
    return background[0], X[0]


def _cast(data: object, dtype: torch.dtype) -> object:
    if isinstance(data, list):
        return [d.to(dtype) for d in data]
    return data.to(dtype)  # type: ignore[attr-defined]


def _model(case: Case, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return case.build().eval()


def _exact_reference(model: nn.Module, background: object, X: object, **kwargs: object) -> object:
    """shap run on a float64 copy of the model, where its rules are exact."""
    model64 = copy.deepcopy(model).double()
    explainer = shap.DeepExplainer(model64, _cast(background, torch.float64))
    return explainer.shap_values(_cast(X, torch.float64), **kwargs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float32_values_match_shap(case: Case) -> None:
    model = _model(case)
    background, X = _data(case, torch.float32)
    ours = rnnshap.DeepExplainer(model, background)
    theirs = shap.DeepExplainer(model, background)
    values = ours.shap_values(X)
    shap_values = theirs.shap_values(X)

    # same container types and shapes as shap
    assert type(values) is type(shap_values)
    for v, s in zip(as_list(values), as_list(shap_values), strict=True):
        assert isinstance(v, np.ndarray) and isinstance(s, np.ndarray)
        assert v.shape == s.shape
    assert_rounding_close(np.asarray(ours.expected_value), np.asarray(theirs.expected_value), torch.float32, what="E[f]")

    reference = _exact_reference(model, background, X) if case.smooth else shap_values
    error = relative_to_max(values, reference)
    assert error <= PARITY_TOL_F32, f"max |φ − φ_shap| = {error:.3g} of max|φ|"
    assert_additive(values, model, X, background, torch.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float64_values_match_shap(case: Case) -> None:
    model = _model(case).double()
    background, X = _data(case, torch.float64)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    shap_values = shap.DeepExplainer(model, background).shap_values(X)
    assert relative_to_max(values, shap_values) <= PARITY_TOL_F64


@pytest.mark.parametrize("order", ["max", "min", "max_abs"])
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name in ("mlp_mixed", "conv2d_bn_maxpool", "two_inputs")], ids=lambda c: c.name
)
def test_ranked_outputs_match_shap(case: Case, order: str) -> None:
    model = _model(case)
    background, X = _data(case, torch.float32)
    k = 2
    values, ranks = rnnshap.DeepExplainer(model, background).shap_values(X, ranked_outputs=k, output_rank_order=order)
    # shap's own additivity check is broken with ranked outputs
    shap_values, shap_ranks = shap.DeepExplainer(model, background).shap_values(
        X, ranked_outputs=k, output_rank_order=order, check_additivity=False
    )
    assert isinstance(ranks, torch.Tensor) and isinstance(shap_ranks, torch.Tensor)
    assert torch.equal(ranks.to(torch.int64), shap_ranks.to(torch.int64))
    assert type(values) is type(shap_values)
    for v, s in zip(as_list(values), as_list(shap_values), strict=True):
        assert isinstance(v, np.ndarray) and v.shape == s.shape
    reference = (
        _exact_reference(model, background, X, ranked_outputs=k, output_rank_order=order, check_additivity=False)[0]
        if case.smooth
        else shap_values
    )
    assert relative_to_max(values, reference) <= PARITY_TOL_F32


def test_ranks_are_the_model_outputs_sorted() -> None:
    """Ranks checked against a plain argsort of the model's outputs, independently of shap."""
    model = _model(CASES[3])
    background, X = torch.randn(8, 6), torch.randn(6, 6)
    with torch.no_grad():
        scores = model(X).numpy()
    explainer = rnnshap.DeepExplainer(model, background)
    for order, key in (("max", -scores), ("min", scores), ("max_abs", -np.abs(scores))):
        _, ranks = explainer.shap_values(X, ranked_outputs=3, output_rank_order=order)
        np.testing.assert_array_equal(ranks.numpy(), np.argsort(key, axis=1, kind="stable")[:, :3])


def test_one_dimensional_output_gives_values_shaped_like_input() -> None:
    """A model whose output is (n,) (shap crashes on it): values have X's shape and add up."""

    model = Composite(lambda m, x: m.net(x).squeeze(1), net=nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))).eval()
    background, X = torch.randn(10, 5), torch.randn(4, 5)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X)
    assert isinstance(values, np.ndarray) and values.shape == X.shape
    with torch.no_grad():
        expected = float(model(background).mean())
    assert np.ndim(explainer.expected_value) == 0
    assert_rounding_close(float(explainer.expected_value), expected, torch.float32, what="E[f]")
    assert_additive(values, model, X, background, torch.float32)
    # and the values are those of the same network with a (n, 1) output, computed by shap in float64
    reference = _exact_reference(model.net, background, X)
    assert relative_to_max(values, np.asarray(reference)[..., 0]) <= PARITY_TOL_F32
