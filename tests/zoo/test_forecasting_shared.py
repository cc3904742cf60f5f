"""The parts the forecasting adapters share: the model put back after explaining, the scaler probe, the
version check that refuses a library version the adapter was not verified on."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from rnnshap.forecasting import VERIFIED, UnverifiedVersionError, affine_probe, check_version, preserved


class _Cached(nn.Module):
    """A module whose forward caches a tensor and a flag on itself, as darts' TFT does."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.1))
        self.register_buffer("counter", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cached = x.detach()
        return self.inner(x)


def _state(model: nn.Module) -> list[tuple[Any, ...]]:
    out = []
    for name, m in model.named_modules():
        out.append((name, m.training, sorted(k for k in m.__dict__ if not k.startswith("_"))))
        for key, p in m._parameters.items():
            out.append((name, key, id(p), p.dtype, p.requires_grad, p.detach().double().numpy().tobytes()))
        for key, b in m._buffers.items():
            out.append((name, key, id(b), b.dtype, None if b is None else b.double().numpy().tobytes()))
    return out


def test_preserved_puts_back_parameters_buffers_flags_requires_grad_and_dtype_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = _Cached().train()
    model.inner[0].bias.requires_grad_(False)
    before = _state(model)
    weight = model.inner[0].weight
    with preserved(model):
        model.eval()
        model.double()  # replaces every parameter's data: float64 inside
        for p in model.parameters():
            p.requires_grad_(not p.requires_grad)
        model.counter = torch.ones(2, dtype=torch.float64)  # a buffer replaced
        model.inner[1].running_mean = torch.full((4,), 7.0, dtype=torch.float64)
        model(torch.randn(5, 3, dtype=torch.float64))  # an attribute cached by the forward
        assert model.inner[0].weight.dtype == torch.float64 and hasattr(model, "cached")
    assert _state(model) == before
    assert model.inner[0].weight is weight and weight.dtype == torch.float32 and not hasattr(model, "cached")


def test_preserved_restores_on_an_error_too() -> None:
    model = _Cached().train()
    before = _state(model)
    with pytest.raises(RuntimeError), preserved(model):
        model.eval()
        raise RuntimeError("inside")
    assert _state(model) == before


def test_affine_probe_reads_intercept_and_slope_and_tells_a_map_that_is_not_affine() -> None:
    like = np.zeros((1, 3))
    zero, slope, affine = affine_probe(lambda x: 2.5 * x - 1.0, like)
    np.testing.assert_array_equal(zero, [[-1.0] * 3])
    np.testing.assert_array_equal(slope, [[2.5] * 3])
    assert affine
    assert not affine_probe(np.log1p, like)[2]


ADAPTERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "darts": ("rnnshap.darts", lambda module: module.ShapExplainer(object())),
    "neuralforecast": ("rnnshap.neuralforecast", lambda module: module.explain(object())),
    "pytorch-forecasting": ("rnnshap.pytorch_forecasting", lambda module: module.explain(object(), None)),
}


@pytest.mark.parametrize("distribution", sorted(ADAPTERS))  # the foundation forecasters' door has its own tests
def test_an_unverified_library_version_is_refused_with_both_versions_named(
    distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(distribution.replace("-", "_"))
    adapter, call = ADAPTERS[distribution]
    module = importlib.import_module(adapter)
    low, high = VERIFIED[distribution]
    real = metadata.version
    for unverified in (".".join(map(str, high)) + ".0", ".".join(map(str, (*low[:-1], low[-1] - 1))) + ".9"):
        monkeypatch.setattr(metadata, "version", lambda name, v=unverified: v if name == distribution else real(name))
        with pytest.raises(UnverifiedVersionError) as refused:
            call(module)
        message = str(refused.value)
        assert f"{distribution} {'.'.join(map(str, low))}.x" in message and unverified in message
        assert isinstance(refused.value, ImportError)
    within = ".".join(map(str, low)) + ".7"
    monkeypatch.setattr(metadata, "version", lambda name: within if name == distribution else real(name))
    assert check_version(distribution) == within
    with pytest.raises(Exception) as other:  # past the version check: refused for the object given, not the version
        call(module)
    assert not isinstance(other.value, UnverifiedVersionError)


@pytest.mark.parametrize("distribution", sorted(VERIFIED))
def test_the_installed_library_is_within_the_verified_versions(distribution: str) -> None:
    # by distribution, not module name: tirex-ts is imported as tirex, granite-tsfm as tsfm_public, ...
    names = (distribution, "u8darts") if distribution == "darts" else (distribution,)
    if not any(_installed(name) for name in names):
        pytest.skip(f"{distribution} is not installed")
    check_version(distribution)


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_darts_published_as_u8darts_is_read_by_that_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """darts also ships as ``u8darts`` (same module, another distribution name): its version is read from
    there, not refused for a missing ``darts`` distribution."""
    real = metadata.version

    def version(name: str) -> str:
        if name == "darts":
            raise metadata.PackageNotFoundError(name)
        return "0.48.3" if name == "u8darts" else real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert check_version("darts") == "0.48.3"
