"""A traced program is never replayed on a model that changed since it was traced.

A program (``compile="trace"``, ``compile=True``, the default wherever it traces) keeps the model as it was traced: its
Python code and state, the rules registered, the default dtype. Each test traces a program, changes the model (or
the process) in one way a forward can read, and asks for values again: they must be a fresh intercepted explainer's
on the model as it is now, within the additivity check's tolerance per output. The model's outputs are of very
different scales (one near 1e3, the one that changes near 0.1), so that a check scaled by the largest output cannot
see the change.
"""

from __future__ import annotations

import copy
import functools
import pickle
import threading
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.rules import Shapley

from ...models.torch import Composite, Function

T, F = 5, 4

#: module-level state a forward reads
SETTINGS = {"bound": 10.0}
BOUND = 10.0


class Activation(nn.Module):
    """tanh(a + b) · b: its operations' rules by default (a sum, a secant, a product); under ``Shapley`` the exact
    two-player Shapley values of the whole (which add up too, with other values)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a + b) * b


def _clamp(bound: float) -> Function:
    return Function(functools.partial(torch.clamp, min=-bound, max=bound))


class Reader(nn.Module):
    """An LSTM head with two outputs: one near 1e3, and one near 0.1 that reads Python state of every kind.

    Each piece of state is a bound at 10 on the inputs of the small output, changed to 1: the background lies in
    [0, 0.5], where no bound binds (the references' outputs, which vet a kept reference pass, do not move), and the
    explained inputs reach past 1."""

    factor = 10.0  # (a class attribute)

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.small = nn.LSTM(F, 6, batch_first=True), nn.LSTM(F, 6, batch_first=True)
        self.head = nn.Linear(6, 1)
        self.act = Activation()
        self.config = {"bound": 10.0, "table": torch.tensor([10.0])}
        self.tensors = [torch.tensor(10.0)]
        self.fn = functools.partial(torch.nn.functional.hardtanh, min_val=-10.0, max_val=10.0)
        object.__setattr__(self, "hidden", _clamp(10.0))  # (a submodule the module does not register)
        object.__setattr__(self, "out", nn.Linear(3, 1))
        self.host_reads = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = 1000.0 + 100.0 * self.head(self.lstm(x)[0][:, -1])
        z = self.hidden(self.fn(x)).clamp(-self.config["bound"], self.config["bound"])
        z = z.clamp(-SETTINGS["bound"], SETTINGS["bound"]).clamp(-BOUND, BOUND)
        z = z.clamp(-type(self).factor, type(self).factor)
        z = torch.minimum(torch.maximum(z, -self.tensors[0]), self.tensors[0])
        if self.host_reads:  # (which torch.compile's capture cannot write into a graph)
            z = z.clamp(-float(self.config["table"].numpy()[0]), self.config["table"].tolist()[0])
        h = self.small(z)[0][:, -1]
        small = 0.1 * self.out(self.act(h[:, :3], h[:, 3:]))
        return torch.cat([big, small], 1)


def _global(value: float) -> None:
    global BOUND
    BOUND = value


CHANGES: dict[str, Callable[[Reader], Any]] = {
    "a value in a config dict": lambda m: m.config.__setitem__("bound", 1.0),
    "a module-level dict": lambda m: SETTINGS.__setitem__("bound", 1.0),
    "a module-level global": lambda m: _global(1.0),
    "a class attribute": lambda m: setattr(Reader, "factor", 1.0),
    "a function attribute swapped": lambda m: setattr(m, "fn", torch.nn.functional.hardtanh),
    "a submodule's forward swapped": lambda m: setattr(m.hidden, "forward", lambda x: x.clamp(-1.0, 1.0)),
    "an item of a list of tensors replaced": lambda m: m.tensors.__setitem__(0, torch.tensor(1.0)),
    "an unregistered submodule replaced": lambda m: object.__setattr__(m, "hidden", _clamp(1.0)),
    "an unregistered submodule hooked": lambda m: m.hidden.register_forward_hook(lambda mod, i, o: o.clamp(-1.0, 1.0)),
    "a tensor read through numpy() and tolist() replaced": lambda m: m.config.__setitem__("table", torch.tensor([1.0])),
    "a rule registered": lambda m: rnnshap.register_rule(Activation, Shapley()),
}


@pytest.fixture(autouse=True)
def _module_state_put_back() -> Any:
    yield
    SETTINGS["bound"] = 10.0
    _global(10.0)
    Reader.factor = 10.0


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, T, F, generator=g).abs().clamp(max=0.5), 3 * torch.randn(4, T, F, generator=g)


def _close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> bool:
    """Equal within ``rtol`` of each output's own scale (the additivity check's float32 tolerance, per output)."""
    scale = np.abs(want).reshape(-1, want.shape[-1]).max(0) + 1e-30
    return bool((np.abs(got - want).reshape(-1, want.shape[-1]).max(0) <= rtol * scale).all())


def _traced(model: nn.Module, background: torch.Tensor, X: torch.Tensor, mode: Any = "trace") -> rnnshap.DeepExplainer:
    explainer = rnnshap.DeepExplainer(model, background, compile=mode)
    for _ in range(3):
        explainer.shap_values(X)
    assert explainer.pass_path.startswith("traced:"), explainer.pass_path
    return explainer


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_to_what_the_forward_reads_is_seen_by_the_next_call(change: str) -> None:
    torch.manual_seed(0)
    model = Reader().eval()
    background, X = _data()
    program = _traced(model, background, X)
    handle = CHANGES[change](model)
    try:
        fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        for call in range(3):
            assert _close(program.shap_values(X), fresh), (change, call, program.pass_path)
        with torch.no_grad():
            mean = model(background).mean(0).numpy()
        np.testing.assert_allclose(program.expected_value, mean, rtol=1e-6)
    finally:
        if isinstance(handle, rnnshap.rules.registry.RuleHandle):
            handle.remove()


def test_each_change_moves_the_values_it_is_tested_on() -> None:
    """The changes above would be missed by a stale program: each moves the small output's values by far more than
    the tolerance (else the test above could not fail)."""
    background, X = _data()
    for change, apply in CHANGES.items():
        torch.manual_seed(0)
        model = Reader().eval()
        before = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        handle = apply(model)
        try:
            after = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        finally:
            if isinstance(handle, rnnshap.rules.registry.RuleHandle):
                handle.remove()
            SETTINGS["bound"], Reader.factor = 10.0, 10.0
            _global(10.0)
        assert not _close(before[..., 1:], after[..., 1:], rtol=1e-2), change


def test_a_rule_removed_after_tracing_is_seen() -> None:
    torch.manual_seed(0)
    model = Reader().eval()
    background, X = _data()
    with rnnshap.register_rule(Activation, Shapley()):
        program = _traced(model, background, X)
    fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    assert _close(program.shap_values(X), fresh)


def test_the_expected_value_follows_a_write_through_data() -> None:
    """``p.data`` is written without bumping the parameter's version counter: the expected value is still the mean of
    the model's outputs on the background as it is now, on both paths."""
    background, X = _data()
    for mode in (False, "trace"):
        torch.manual_seed(0)
        model = Reader().eval()
        explainer = rnnshap.DeepExplainer(model, background, compile=mode)
        for _ in range(3):
            explainer.shap_values(X)
        model.head.bias.data += 1.0
        with torch.no_grad():
            mean = model(background).mean(0).numpy()
        np.testing.assert_allclose(explainer.expected_value, mean, rtol=1e-6)
        values = explainer.shap_values(X)
        with torch.no_grad():
            gap = (model(X) - model(background).mean(0)).numpy()
        np.testing.assert_allclose(values.sum((1, 2)), gap, rtol=1e-4, atol=1e-4)


def _made(m: Composite, x: torch.Tensor) -> torch.Tensor:
    """A forward that makes a tensor without a dtype (the process's default dtype)."""
    scale = torch.tensor(2.0)
    return m.head(m.lstm(x)[0][:, -1]) * scale.to(x.dtype)


def test_a_default_dtype_changed_after_tracing_gives_values_or_a_clear_error() -> None:
    torch.manual_seed(0)
    model = Composite(_made, lstm=nn.LSTM(F, 6, batch_first=True), head=nn.Linear(6, 2)).eval()
    background, X = _data()
    program = _traced(model, background, X)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        assert _close(program.shap_values(X), fresh), program.pass_path
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("mode", [False, "trace"])
def test_a_model_moved_to_float64_after_the_explainer_was_built_is_explained_or_refused_by_name(mode: Any) -> None:
    torch.manual_seed(0)
    model = Reader().eval()
    background, X = _data()
    explainer = _traced(model, background, X) if mode else rnnshap.DeepExplainer(model, background, compile=False)
    model.double()
    try:
        values = explainer.shap_values(X.double())
    except rnnshap.errors.RnnShapError as error:
        assert "float64" in str(error) and "DeepExplainer" in str(error), error
    else:
        fresh = rnnshap.DeepExplainer(model, background.double(), compile=False).shap_values(X.double())
        assert _close(values, fresh, rtol=1e-9)


@pytest.mark.parametrize("mode", [False, "trace"])
def test_an_explainer_pickles_and_gives_the_same_values(mode: Any) -> None:
    torch.manual_seed(0)
    model = Reader().eval()
    background, X = _data()
    explainer = rnnshap.DeepExplainer(model, background, compile=mode)
    for _ in range(3):
        want = explainer.shap_values(X)
    copied = pickle.loads(pickle.dumps(explainer))
    assert _close(copied.shap_values(X), want)
    assert _close(copy.deepcopy(explainer).shap_values(X), want)
    # the copy explains its own copy of the model
    assert copied.model is not model


def test_two_threads_tracing_one_shape_at_once_leave_it_traceable() -> None:
    torch.manual_seed(0)
    model = Reader().eval()
    background, X = _data()
    explainer = rnnshap.DeepExplainer(model, background, compile="trace")
    explainer.shap_values(X)  # (the first call: the second traces)
    want = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    got: list[np.ndarray] = []
    start = threading.Barrier(2)

    def call() -> None:
        start.wait()
        got.append(explainer.shap_values(X))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 2 and all(_close(v, want) for v in got)
    assert not explainer.engine._traced.untraceable, explainer.engine._traced.untraceable
    explainer.shap_values(X)
    assert explainer.pass_path.startswith("traced:"), explainer.pass_path
