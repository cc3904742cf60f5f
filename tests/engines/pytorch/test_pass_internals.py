"""The per-operation shortcuts of the PyTorch pass keep what they stand for.

- ``enclosing_function`` (functions.py) looks at frames only while torch runs a ``Function.apply`` in this
  thread, and then still names the Function whose ``forward()`` torch is running;
- a model under its own ``torch.no_grad()`` (every foundation forecaster's forward) is followed as under
  ``detach()`` in the input pass: the values are those of the same model without ``no_grad()``, which the
  input pass now flattens once per operation;
- ``run_pass`` takes its options as one ``PassSettings``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

import rnnshap
from rnnshap.engines.pytorch.functions import enclosing_function, original_apply

from ...models.torch import Composite


class _Double(torch.autograd.Function):
    seen: list[Any] = []

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        _Double.seen.append(enclosing_function())
        return 2 * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return 2 * grad


def test_enclosing_function_names_the_function_torch_runs() -> None:
    _Double.seen.clear()
    original_apply(_Double, torch.ones(3, requires_grad=True))
    assert _Double.seen == [_Double]
    assert enclosing_function() is None  # (none running: no frame looked at)


def _scaled(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().mean(-1, keepdim=True) + 1.0  # (a statistic, as the forecasters' scaling computes)
    return m.out(torch.tanh(m.layer(x / scale))) * scale


def _under_its_own_no_grad(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if m.no_grad:
        with torch.no_grad():
            return _scaled(m, x)
    return _scaled(m, x)


def _head(no_grad: bool) -> nn.Module:
    """The same weights at every build (seeded here); ``no_grad``: its forward runs under its own ``torch.no_grad()``."""
    torch.manual_seed(0)
    return Composite(_under_its_own_no_grad, layer=nn.Linear(5, 8), out=nn.Linear(8, 2), no_grad=no_grad)


def test_a_model_under_its_own_no_grad_gets_the_values_of_the_same_model_without() -> None:
    x, background = torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), torch.randn(6, 5)
    model = _head(no_grad=True).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    under = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    plain = np.asarray(rnnshap.DeepExplainer(_head(no_grad=False).eval(), background).shap_values(x))
    assert np.array_equal(under, plain)
    with torch.no_grad():
        gap = model(x) - model(background).mean(0)
    eps = torch.finfo(torch.float32).eps
    assert under.shape == (4, 5, 2)  # (samples, features, outputs)
    assert np.allclose(under.sum(1), gap.numpy(), rtol=0, atol=64 * eps * float(gap.abs().max() + 1))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model unchanged


def test_run_pass_takes_its_options_as_pass_settings() -> None:
    from rnnshap.engines.pytorch.runner import PassSettings, run_pass
    from rnnshap.engines.pytorch.tape import Tape
    from rnnshap.rules.registry import DEFAULT_REGISTRY

    model, rows = _head(no_grad=False).eval(), torch.randn(3, 5)
    tape = Tape()
    with torch.no_grad():
        out, _ = run_pass(model, [rows.clone()], DEFAULT_REGISTRY, tape, PassSettings(replay=False))
    assert torch.equal(out, model(rows))
    replayed, _ = run_pass(model, [rows.clone()], DEFAULT_REGISTRY, tape, PassSettings(replay=True))
    assert torch.equal(replayed.detach(), out)  # (the same rows on both sides: the rules give the forward's values)


def test_module_rules_are_found_only_where_the_registry_holds_some() -> None:
    from rnnshap.engines.pytorch.runner import ModuleRules
    from rnnshap.rules.registry import DEFAULT_REGISTRY

    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).eval()
    assert ModuleRules(model, DEFAULT_REGISTRY).targets == []
    registry = DEFAULT_REGISTRY.merged({nn.Tanh: rnnshap.rules.Rescale()})
    assert [m for m, _ in ModuleRules(model, registry).targets] == [model[1]]
    x, background = torch.randn(3, 5), torch.randn(4, 5)
    values = np.asarray(rnnshap.DeepExplainer(model, background, rules={nn.Tanh: rnnshap.rules.Rescale()}).shap_values(x))
    with torch.no_grad():
        gap = (model(x) - model(background).mean(0)).numpy()
    eps = torch.finfo(torch.float32).eps
    assert np.allclose(values.reshape(3, 5).sum(1), gap[:, 0], rtol=0, atol=64 * eps * float(np.abs(gap).max() + 1))
