"""rnnshap leaves the model as it found it, and refuses what it cannot explain exactly.

- The model is unchanged after explaining: parameters (bitwise, same objects), buffers, the
  ``training`` flag of every module, ``requires_grad``, ``.grad``, hooks, no patched ``forward``,
  no attributes left behind; also after a registered module rule and after an error mid-pass.
- Refusals: train-mode dropout / batch norm, functional dropout with ``training=True``,
  TorchScript, ``torch.compile``, bad inputs, unsupported ops (all named in one error),
  data-dependent control flow, ``detach``.
- Custom rules: a registered op rule makes an unsupported op work; a module rule replaces the
  decomposition of the module's inside.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap
from rnnshap.rules import Rescale

from ...conftest import assert_additive, output_gap, phi_totals
from ...models.torch import Composite

Tensor = torch.Tensor


# -- models --------------------------------------------------------------------------------------------
class ErfinvAct(nn.Module):
    """An elementwise activation built on an op rnnshap has no rule for (torch.special.erfinv)."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.special.erfinv(torch.tanh(z) * 0.9)


def _rich_forward(m: nn.Module, x: Tensor) -> Tensor:
    h = m.act(m.bn(m.inp(x)))
    h = m.relu(m.mid(h) + m.offset)
    return m.out(m.drop(h))


def rich(act: nn.Module | None = None) -> nn.Module:
    """Parameters (one frozen), buffers (batch norm in eval, an offset), a custom activation, hooks' targets."""
    model = Composite(_rich_forward, inp=nn.Linear(5, 8), bn=nn.BatchNorm1d(8), act=act if act is not None else nn.Tanh(),
                      mid=nn.Linear(8, 8), relu=nn.ReLU(inplace=True), drop=nn.Dropout(0.5), out=nn.Linear(8, 3),
                      offset=nn.Buffer(torch.randn(8)))  # fmt: skip
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.mid.bias.requires_grad_(False)
    return model


def _prepare(model: nn.Module) -> nn.Module:
    """eval mode, except a submodule without randomness left in train mode; some grads set."""
    model.eval()
    model.inp.train()  # a Linear in train mode is harmless, and its flag must survive
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("out"):
            p.grad = torch.randn_like(p)
    return model


def _snapshot(model: nn.Module) -> dict[str, Any]:
    modules = dict(model.named_modules())
    return {
        "param_objects": {n: p for n, p in model.named_parameters()},
        "params": {n: (p.detach().clone(), p.dtype, p.device) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in modules.items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "hooks": {
            n: tuple(
                dict(getattr(m, attr))
                for attr in (
                    "_forward_hooks",
                    "_forward_pre_hooks",
                    "_backward_hooks",
                    "_backward_pre_hooks",
                    "_forward_hooks_with_kwargs",
                )
            )
            for n, m in modules.items()
        },
        "own_attributes": {n: set(m.__dict__) for n, m in modules.items()},
        "forward_in_dict": {n: "forward" in m.__dict__ for n, m in modules.items()},
        "grad_enabled": torch.is_grad_enabled(),
        "function_modes": torch._C._len_torch_function_stack(),
    }


def _assert_unchanged(before: dict[str, Any], model: nn.Module) -> None:
    after = _snapshot(model)
    for name, p in model.named_parameters():
        assert p is before["param_objects"][name], f"parameter {name} was replaced"
        value, dtype, device = before["params"][name]
        assert p.dtype == dtype and p.device == device
        assert torch.equal(p.detach(), value), f"parameter {name} changed"
    assert before["buffers"].keys() == after["buffers"].keys()
    for name, b in before["buffers"].items():
        assert torch.equal(after["buffers"][name], b), f"buffer {name} changed"
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, g in before["grads"].items():
        now = after["grads"][name]
        assert (g is None) == (now is None), f".grad of {name} appeared or vanished"
        if g is not None:
            assert torch.equal(now, g), f".grad of {name} changed"
    assert after["hooks"] == before["hooks"]
    assert after["own_attributes"] == before["own_attributes"], "attributes were added to or removed from a module"
    assert after["forward_in_dict"] == before["forward_in_dict"], "a forward() was left patched"
    assert after["grad_enabled"] == before["grad_enabled"]
    assert after["function_modes"] == before["function_modes"], "a TorchFunctionMode was left on the stack"


# -- the model is unchanged ------------------------------------------------------------------------------
def test_explaining_leaves_the_model_unchanged() -> None:
    model = _prepare(rich())
    calls: list[str] = []
    model.act.register_forward_hook(lambda m, i, o: calls.append("fwd"))
    model.mid.register_forward_pre_hook(lambda m, i: None)
    before = _snapshot(model)
    background, X = torch.randn(6, 5), torch.randn(4, 5)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X)
    _assert_unchanged(before, model)
    assert calls, "the user's forward hook should see the model run"
    # and the values are right despite the mixed training flags and stale grads
    assert_additive(values, model, X, background, torch.float32)


@pytest.mark.parametrize("kind", ["full", "full_pre", "global_full"])
def test_explaining_with_backward_hooks_works_and_leaves_them_in_place(kind: str) -> None:
    model = _prepare(rich())
    handles = []
    if kind == "full":
        handles.append(model.out.register_full_backward_hook(lambda m, gi, go: None))
    elif kind == "full_pre":
        handles.append(model.mid.register_full_backward_pre_hook(lambda m, go: None))
    else:
        # with a global full backward hook even plain torch refuses nn.ReLU(inplace=True) (it modifies the
        # view BackwardHookFunction returns), so this model gets an out-of-place ReLU
        model.relu = nn.ReLU()
        handles.append(nn.modules.module.register_module_full_backward_hook(lambda m, gi, go: None))
    try:
        before = _snapshot(model)
        background, X = torch.randn(6, 5), torch.randn(3, 5)
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
        _assert_unchanged(before, model)
        assert_additive(values, model, X, background, torch.float32)
    finally:
        for handle in handles:
            handle.remove()


def test_module_rule_is_applied_and_removed_without_trace() -> None:
    model = _prepare(rich(act=ErfinvAct()))
    before = _snapshot(model)
    background, X = torch.randn(6, 5), torch.randn(4, 5)
    handle = rnnshap.register_rule(ErfinvAct, Rescale())
    try:
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
        assert "forward" not in model.act.__dict__
    finally:
        handle.remove()
    _assert_unchanged(before, model)
    assert_additive(values, model, X, background, torch.float32)
    # with the handle removed, the inside of the module is seen again (and refused)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="erfinv"):
        rnnshap.DeepExplainer(model, background)
    _assert_unchanged(before, model)


def test_module_rule_as_context_manager_is_removed_on_exit() -> None:
    model = nn.Sequential(nn.Linear(5, 4), ErfinvAct(), nn.Linear(4, 2)).eval()
    background = torch.randn(4, 5)
    with rnnshap.register_rule(ErfinvAct, Rescale()):
        rnnshap.DeepExplainer(model, background)
    with pytest.raises(rnnshap.UnsupportedOperationError):
        rnnshap.DeepExplainer(model, background)


def test_model_unchanged_after_an_error_in_the_middle_of_a_pass() -> None:
    """A module rule is installed when the model's forward raises: it must be uninstalled anyway."""

    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 4)
            self.act = ErfinvAct()
            self.calls = 0

        def forward(self, x: Tensor) -> Tensor:
            self.calls += 1
            h = self.act(self.lin(x))
            if self.calls > 1:
                raise ValueError("boom")
            return h

    model = Fails().eval()
    with rnnshap.register_rule(ErfinvAct, Rescale()):
        explainer = rnnshap.DeepExplainer(model, torch.randn(4, 5))
        before = _snapshot(model)
        with pytest.raises(ValueError, match="boom"):
            explainer.shap_values(torch.randn(2, 5))
    _assert_unchanged(before, model)


def test_explainer_rules_do_not_leak_into_other_explainers() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)).double().eval()
    background, X = torch.randn(5, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    rnnshap.DeepExplainer(model, background, rules={torch.tanh: rnnshap.rules.Linear()})
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float64)


# -- the user's data is unchanged ------------------------------------------------------------------------------
def modifies_its_input(m: nn.Module, x: Tensor) -> Tensor:
    """forward() modifies its input in place, as some preprocessing code does."""
    x.mul_(2.0)
    x += 0.5
    return m.lin(torch.tanh(x))


@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensor", "numpy"])
def test_user_background_and_inputs_are_not_modified(as_numpy: bool) -> None:
    background, X = torch.randn(5, 4), torch.randn(3, 4)
    if as_numpy:
        background, X = background.numpy(), X.numpy()  # type: ignore[assignment]
    original = (background.copy(), X.copy()) if as_numpy else (background.clone(), X.clone())
    explainer = rnnshap.DeepExplainer(Composite(modifies_its_input, lin=nn.Linear(4, 2)).eval(), background)
    explainer.shap_values(X, check_additivity=False)
    equal = np.array_equal if as_numpy else torch.equal
    assert equal(background, original[0]), "the background was modified"
    assert equal(X, original[1]), "X was modified"


def test_in_place_op_on_the_model_input_is_additive() -> None:
    model = Composite(modifies_its_input, lin=nn.Linear(4, 2)).eval()
    background, X = torch.randn(5, 4), torch.randn(3, 4)
    values = rnnshap.DeepExplainer(model, background.clone()).shap_values(X.clone())
    assert_additive(values, model, X, background, torch.float32)


def test_inputs_are_not_modified_by_a_model_that_copies_first() -> None:
    """The same check for an ordinary model: rnnshap itself never writes into the user's tensors."""
    model = rich().eval()
    background, X = torch.randn(5, 5), torch.randn(3, 5)
    original = (background.clone(), X.clone())
    rnnshap.DeepExplainer(model, background).shap_values(X)
    assert torch.equal(background, original[0]) and torch.equal(X, original[1])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_integer_features_to_a_float_model_work_or_raise_input_error(dtype: torch.dtype) -> None:
    model = _mlp()
    background = torch.randint(-3, 4, (6, 5))
    X = torch.randint(-3, 4, (3, 5))
    try:
        values = rnnshap.DeepExplainer(model, background.to(dtype)).shap_values(X.to(dtype))
    except rnnshap.InputError:
        return
    assert_additive(values, model, X.float(), background.float(), torch.float32)


# -- refused model states ----------------------------------------------------------------------------------
def _with_train_dropout_inside(model: nn.Module) -> nn.Module:
    """The model in eval mode except one nested Dropout."""
    model[1][1].train()
    return model


@pytest.mark.parametrize(
    ("build", "named"),
    [
        pytest.param(
            lambda: nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train(), ["'1' (Dropout)"], id="dropout"
        ),
        pytest.param(
            lambda: nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Dropout1d(0.2), nn.Linear(4, 2)).train(),
            ["'2' (Dropout1d)"],
            id="dropout1d",
        ),
        pytest.param(
            lambda: _with_statistics(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).train()),
            ["'1' (BatchNorm1d)"],
            id="batchnorm",
        ),
        pytest.param(
            lambda: _with_train_dropout_inside(nn.Sequential(nn.Linear(5, 4), nn.Sequential(nn.Tanh(), nn.Dropout(0.1))).eval()),
            ["'1.1' (Dropout)"],
            id="nested",
        ),
    ],
)
def test_train_mode_is_explained_in_eval_mode_and_left_as_given(build: Any, named: list[str]) -> None:
    """shap calls model.eval(): the eval-mode function is explained (the truth: the same explainer on an
    eval-mode copy), one warning names the modules switched, and every flag and buffer is put back."""
    torch.manual_seed(11)
    model = build().double()
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    background, X = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    with pytest.warns(UserWarning, match="training mode") as caught:
        explainer = rnnshap.DeepExplainer(model, background)
        values = explainer.shap_values(X)
    assert len([w for w in caught if "training mode" in str(w.message)]) == 1  # once, at construction
    message = str(caught[0].message)
    for name in named:
        assert name in message
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    evaluated = copy.deepcopy(model).eval()
    truth = rnnshap.DeepExplainer(evaluated, background).shap_values(X)
    np.testing.assert_array_equal(values, truth)
    assert_additive(values, evaluated, X, background, torch.float64)
    assert not torch.equal(model(X), evaluated(X))  # the train-mode function differs: eval mode was needed


def _with_statistics(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model


def test_randomness_eval_cannot_turn_off_stays_refused_in_training_mode() -> None:
    always = Composite(lambda m, x: F.dropout(m.drop(m.lin(x)), 0.5, training=True), lin=nn.Linear(5, 4), drop=nn.Dropout(0.3))

    model = always.train()
    with pytest.warns(UserWarning, match="training mode"), pytest.raises(rnnshap.ModelStateError, match="dropout"):
        rnnshap.DeepExplainer(model, torch.randn(4, 5))
    assert model.training and model.drop.training


def test_functional_dropout_in_training_is_refused() -> None:
    model = Composite(lambda m, x: F.dropout(m.lin(x), 0.5, training=True), lin=nn.Linear(5, 4))
    with pytest.raises(rnnshap.ModelStateError):
        rnnshap.DeepExplainer(model.eval(), torch.randn(4, 5))


def test_eval_mode_dropout_and_batchnorm_are_explained() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 2)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    background, X = torch.randn(6, 5), torch.randn(4, 5)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float32)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).eval()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: torch.jit.script(_mlp()), id="script"),
        pytest.param(lambda: torch.jit.trace(_mlp(), torch.randn(2, 5)), id="trace"),
        pytest.param(
            lambda: nn.Sequential(torch.jit.script(nn.Linear(5, 4)), nn.Tanh(), nn.Linear(4, 2)).eval(), id="scripted-submodule"
        ),
    ],
)
def test_opaque_models_are_refused(build: Any) -> None:
    with pytest.raises(rnnshap.ModelStateError):
        rnnshap.DeepExplainer(build(), torch.randn(4, 5))


# -- bad inputs ------------------------------------------------------------------------------------------------
def two_inputs() -> nn.Module:
    return Composite(lambda m, a, b: torch.tanh(m.a(a) + m.b(b)), a=nn.Linear(4, 2), b=nn.Linear(3, 2))


def _bad(kind: str) -> Any:
    return {
        "wrong-trailing-shape": torch.randn(3, 6),
        "extra-dimension": torch.randn(3, 5, 1),
        "list-for-single-input": [torch.randn(3, 5)],
        "nan": torch.tensor([[0.0, float("nan"), 0.0, 0.0, 0.0]]),
        "inf": torch.tensor([[0.0, 0.0, float("-inf"), 0.0, 0.0]]),
        "empty": torch.randn(0, 5),
        "strings": np.array([["a", "b", "c", "d", "e"]]),
        "objects": np.array([[object()] * 5], dtype=object),
        "complex": torch.randn(2, 5, dtype=torch.complex64),
        "scalar": torch.tensor(1.0),
    }[kind]


BAD_KINDS = [
    "wrong-trailing-shape",
    "extra-dimension",
    "list-for-single-input",
    "nan",
    "inf",
    "empty",
    "strings",
    "objects",
    "complex",
    "scalar",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_inputs_to_explain_raise_input_error(kind: str) -> None:
    explainer = rnnshap.DeepExplainer(_mlp(), torch.randn(4, 5))
    with pytest.raises(rnnshap.InputError):
        explainer.shap_values(_bad(kind))


@pytest.mark.parametrize(
    "kind", [k for k in BAD_KINDS if k not in ("wrong-trailing-shape", "extra-dimension", "list-for-single-input")]
)
def test_bad_backgrounds_raise_input_error(kind: str) -> None:
    with pytest.raises(rnnshap.InputError):
        rnnshap.DeepExplainer(_mlp(), _bad(kind))


@pytest.mark.parametrize(
    "X",
    [
        pytest.param(lambda: [torch.randn(2, 4)], id="too-few-inputs"),
        pytest.param(lambda: [torch.randn(2, 4), torch.randn(2, 3), torch.randn(2, 3)], id="too-many-inputs"),
        pytest.param(lambda: torch.randn(2, 4), id="tensor-for-list"),
        pytest.param(lambda: [torch.randn(2, 4), torch.randn(3, 3)], id="different-batch-sizes"),
        pytest.param(lambda: [torch.randn(2, 3), torch.randn(2, 4)], id="swapped"),
    ],
)
def test_multi_input_mismatch_raises_input_error(X: Any) -> None:
    explainer = rnnshap.DeepExplainer(two_inputs(), [torch.randn(5, 4), torch.randn(5, 3)])
    with pytest.raises(rnnshap.InputError):
        explainer.shap_values(X())


def test_float64_numpy_input_to_float32_model_works() -> None:
    model = _mlp()
    background = np.random.default_rng(0).normal(size=(6, 5))
    X = np.random.default_rng(1).normal(size=(3, 5))
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert isinstance(values, np.ndarray) and values.shape == (3, 5, 2)
    assert_additive(values, model, torch.from_numpy(X).float(), torch.from_numpy(background).float(), torch.float32)


# -- unsupported operations ------------------------------------------------------------------------------------
def two_unsupported(m: nn.Module, x: Tensor) -> Tensor:
    """erfinv, then sort, then a comparison's mask counted: three ops rnnshap has no rule for."""
    z = torch.special.erfinv(torch.tanh(m.lin(x)) * 0.9)
    z = torch.msort(z)  # sorts the batch
    return m.head(z * (z > 0).sum(-1, keepdim=True))


def test_every_unsupported_op_is_named_in_one_error() -> None:
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(Composite(two_unsupported, lin=nn.Linear(5, 4), head=nn.Linear(4, 2)).eval(), torch.randn(4, 5))
    message = str(info.value)
    for op in ("erfinv", "msort", "gt"):
        assert op in message, f"{op} is not named in: {message}"
    assert len(info.value.ops) == 3


@pytest.mark.parametrize(
    "forward",
    [
        pytest.param(lambda z: torch.special.erfinv(torch.tanh(z) * 0.9), id="erfinv"),
        pytest.param(lambda z: torch.msort(z), id="msort"),
        pytest.param(lambda z: z * (z > 0).sum(-1, keepdim=True), id="comparison-mask-counted"),
    ],
)
def test_unsupported_op_raises_unsupported_operation_error(forward: Any) -> None:
    model = Composite(lambda m, x: forward(m.lin(x)), lin=nn.Linear(5, 4))
    with pytest.raises(rnnshap.UnsupportedOperationError):
        rnnshap.DeepExplainer(model.eval(), torch.randn(4, 5))


def test_noise_drawn_in_forward_is_refused_as_randomness_not_as_a_missing_rule() -> None:
    """A random draw is not a function with a rule: refused by name, at construction."""

    model = Composite(lambda m, x: (z := m.lin(x)) + torch.randn_like(z), lin=nn.Linear(5, 4))

    with pytest.raises(rnnshap.ModelStateError, match="randn_like") as info:
        rnnshap.DeepExplainer(model.eval(), torch.randn(4, 5))
    assert "register_rule" not in str(info.value) and "Rescale" not in str(info.value)


def test_registering_a_rule_for_an_unsupported_op_makes_it_work() -> None:
    model = nn.Sequential(nn.Linear(5, 4), ErfinvAct(), nn.Linear(4, 2)).double().eval()
    background, X = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    with rnnshap.register_rule(torch.special.erfinv, Rescale()):
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, torch.float64)
    with pytest.raises(rnnshap.UnsupportedOperationError):
        rnnshap.DeepExplainer(model, background)


def detaching_forward(m: nn.Module, x: Tensor) -> Tensor:
    z = m.lin(x)
    cut = (lambda t: t.detach()) if m.how == "detach" else (lambda t: t)
    if m.straight_through:  # z + (tanh(z) - z).detach() is tanh(z)
        return z + cut(torch.tanh(z) - z) if m.how == "detach" else torch.tanh(z)
    mean = cut(z.mean(-1, keepdim=True))  # reversible instance norm's detached statistics
    return torch.tanh(z - mean) * cut(z) + mean


def detaching(how: str, straight_through: bool = False) -> nn.Module:
    """``how``: "detach" uses ``.detach()`` where "plain" does not; the two compute the same function."""
    return Composite(detaching_forward, lin=nn.Linear(5, 4), how=how, straight_through=straight_through)


@pytest.mark.parametrize("straight_through", [False, True])
def test_detach_in_forward_follows_the_function(straight_through: bool) -> None:
    """``.detach()`` changes training, not the function: the values equal those of the same model
    without it, and add up (it was refused)."""
    torch.manual_seed(0)
    plain = detaching("plain", straight_through).double().eval()
    detached = detaching("detach", straight_through).double().eval()
    detached.load_state_dict(plain.state_dict())
    background, X = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    values = rnnshap.DeepExplainer(detached, background).shap_values(X)
    assert_additive(values, detached, X, background, torch.float64)
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(plain, background).shap_values(X), rtol=1e-12, atol=1e-14)


# -- data-dependent control flow ----------------------------------------------------------------------------------
class Branching(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 4)
        self.how = how
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        z = self.lin(x)
        self.calls += 1
        if self.how == "bool":
            return torch.tanh(z) if z.sum() > 0 else torch.sigmoid(z)
        if self.how == "item":
            return torch.tanh(z) if z.mean().item() > 0 else torch.sigmoid(z)
        if self.how == "loop":
            for _ in range(int(z.abs().sum()) % 3 + 1):
                z = torch.tanh(z)
            return z
        if self.how == "state":  # differs between the reference and the input pass
            return torch.tanh(z) if self.calls % 2 else torch.sigmoid(z)
        raise AssertionError(self.how)


@pytest.mark.parametrize("how", ["bool", "item", "loop", "state"])
def test_data_dependent_branch_raises_rather_than_answers(how: str) -> None:
    model = Branching(how).eval()
    with pytest.raises((rnnshap.UnsupportedOperationError, rnnshap.TapeMismatchError)):
        explainer = rnnshap.DeepExplainer(model, torch.randn(4, 5))
        explainer.shap_values(torch.randn(3, 5))


# -- module rules take precedence over the decomposition of their inside --------------------------------------------
class SoftmaxLayer(nn.Module):
    """softmax over features: decomposed, every output gets attributions from every feature."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.softmax(z, dim=-1)


def test_module_rule_takes_precedence_over_decomposition() -> None:
    """SoftmaxLayer registered with Rescale is ONE elementwise Rescale, m_j = Δs_j / Δz_j (diagonal);
    the values must equal that closed form, which the softmax decomposition does not give."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), SoftmaxLayer(), nn.Linear(5, 1)).double().eval()
    background, X = torch.randn(6, 4, dtype=torch.float64) * 2, torch.randn(3, 4, dtype=torch.float64) * 2
    W1, b1 = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    w2 = model[2].weight.detach().numpy()[0]
    z = X.numpy() @ W1.T + b1
    zr = background.numpy() @ W1.T + b1

    def softmax(t: np.ndarray) -> np.ndarray:
        e = np.exp(t - t.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    m = (softmax(z)[:, None, :] - softmax(zr)[None, :, :]) / (z[:, None, :] - zr[None, :, :])
    delta = X.numpy()[:, None, :] - background.numpy()[None, :, :]
    closed_form = np.einsum("j,nrj,ji,nri->ni", w2, m, W1, delta) / len(background)

    with rnnshap.register_rule(SoftmaxLayer, Rescale()):
        values = rnnshap.DeepExplainer(model, background).shap_values(X)[..., 0]
    np.testing.assert_allclose(values, closed_form, rtol=1e-10, atol=1e-13)

    decomposed = rnnshap.DeepExplainer(model, background).shap_values(X)[..., 0]
    assert np.abs(decomposed - closed_form).max() > 1e-3, "the module rule made no difference"


def test_module_rule_hides_unsupported_ops_inside() -> None:
    """Registered via the explainer's rules=: the module is explained and adds up."""
    model = nn.Sequential(nn.Linear(5, 4), ErfinvAct(), nn.Linear(4, 3)).double().eval()
    background, X = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    values = rnnshap.DeepExplainer(model, background, rules={ErfinvAct: Rescale()}).shap_values(X)
    assert_additive(values, model, X, background, torch.float64)
    gap = output_gap(model, X, background)
    assert np.abs(phi_totals(values, *gap.shape)).max() > 0


@pytest.mark.parametrize("rounding_mode", ["floor", "trunc"])
@pytest.mark.parametrize("divisor", ["constant", "tracked"])
def test_rounded_division_is_refused_by_name(rounding_mode: str, divisor: str) -> None:
    """torch.div(..., rounding_mode=...) is a step function: refused (it was taken as linear by a
    constant, φ = 0)."""

    def rounded(m: nn.Module, x: Tensor) -> Tensor:
        z = m.lin(x)
        by = 0.5 if divisor == "constant" else z[:, 1:] + 3
        return torch.div(z[:, :1], by, rounding_mode=rounding_mode)

    with pytest.raises(rnnshap.UnsupportedOperationError, match="rounding_mode"):
        rnnshap.DeepExplainer(Composite(rounded, lin=nn.Linear(5, 2)).eval(), torch.randn(4, 5))
