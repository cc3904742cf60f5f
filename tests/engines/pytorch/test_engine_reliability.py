"""The PyTorch engine at the edges of its rule table: exact where it can be, refused by name where not.

Every exactness check compares with an independent reference: the model's own outputs
(additivity), the same function written another way (a custom autograd.Function against its
forward written inline, a preallocated buffer against torch.stack, checkpointing against none,
clamp against maximum/minimum), a closed form (the exact Shapley split of a three-way product), or
a feature the model ignores, which must get exactly 0.

1. Custom ``torch.autograd.Function``: attributed through its forward's operations (its own
   backward, which gives gradients, is not used); one that computes outside torch is refused by name.
2. Writing into a preallocated buffer (``outs[:, t] = h``, ``copy_``, ``index_put_``, ``add_`` into a
   view, a view taken before the writes) makes the buffer input-dependent.
3. ``torch.utils.checkpoint`` (both variants), ``clamp`` with tensor bounds, ``einsum`` of three
   operands are exact, and so are sorting, top-k and the indices of max/argmax/topk used
   downstream (tests/rules/test_orderings.py); a sort over the batch (msort) is refused.
4. Refusals come from the constructor, all listed together, with advice that fits each one.
5. Explaining leaves the model bit-identical (``spectral_norm`` in training mode), and bad inputs
   (a PackedSequence, integers for a float model, meta tensors, batch norm without running
   statistics, mixed float dtypes for a model without parameters) get clear, true messages.
"""

from __future__ import annotations

import copy
import itertools
from math import factorial
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import rnnshap
from rnnshap.rules import Rescale

from ...conftest import assert_additive, phi_totals, relative_to_max
from ...models.torch import Composite, Function, RecurrentHead

Tensor = torch.Tensor
D = torch.float64


def _explain(model: nn.Module, background: Any, X: Any, **kwargs: Any) -> Any:
    return rnnshap.DeepExplainer(model, background).shap_values(X, **kwargs)


# -- 1. custom autograd.Function ----------------------------------------------------------------------
def _scan_forward(a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """h_t = a_t * h_{t-1} + x_t over dim 1, as mambapy's PScan writes it: in place, into clones."""
    a, h = a.clone(), x.clone()
    for t in range(1, h.shape[1]):
        h[:, t].add_(a[:, t] * h[:, t - 1])
    return h, h[:, -1]


def _scan_backward(a: Tensor, h: Tensor, grad_h: Tensor, grad_last: Tensor) -> tuple[Tensor, Tensor]:
    """The true gradient of the scan (a gradient, not DeepLIFT multipliers)."""
    g = grad_h.clone()
    g[:, -1] = g[:, -1] + grad_last
    for t in range(g.shape[1] - 2, -1, -1):
        g[:, t] = g[:, t] + a[:, t + 1] * g[:, t + 1]
    grad_a = torch.zeros_like(a)
    grad_a[:, 1:] = g[:, 1:] * h[:, :-1]
    return grad_a, g


class ToyScan(torch.autograd.Function):
    """A scan with two outputs and a hand-written backward, in the classic ctx style."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        h, last = _scan_forward(a, x)
        ctx.save_for_backward(a, h)
        ctx.mark_non_differentiable()
        return h, last

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor, grad_last: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        a, h = ctx.saved_tensors
        return _scan_backward(a, h, grad_h, grad_last)


class ToyScanSetup(torch.autograd.Function):
    """The same scan in the style with a separate setup_context (forward takes no ctx)."""

    @staticmethod
    def forward(a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _scan_forward(a, x)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        ctx.save_for_backward(inputs[0], output[0])

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor, grad_last: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        a, h = ctx.saved_tensors
        return _scan_backward(a, h, grad_h, grad_last)


def gated_recurrence(m: nn.Module, x: Tensor) -> Tensor:
    x = x[..., :3]
    h, last = m.scan(torch.sigmoid(m.gate(x)), m.value(x))
    return m.head(torch.tanh(h).mean(1) * torch.tanh(last))


def scan_model(scan: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> nn.Module:
    """A gated linear recurrence (Mamba-like) through ``scan``; feature 3 of the input is ignored."""
    return Composite(gated_recurrence, scan=scan, gate=nn.Linear(3, 4), value=nn.Linear(3, 4), head=nn.Linear(4, 2))


@pytest.mark.parametrize("function", [ToyScan, ToyScanSetup], ids=["ctx", "setup_context"])
def test_custom_function_is_attributed_through_its_forward(function: Any) -> None:
    torch.manual_seed(1)
    model = scan_model(function.apply).to(D).eval()
    inline = copy.deepcopy(model)
    inline.scan = _scan_forward
    background, X = torch.randn(4, 5, 4, dtype=D), torch.randn(3, 5, 4, dtype=D)
    values = _explain(model, background, X)
    expected = _explain(inline, background, X)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)  # the same function written inline
    assert_additive(values, model, X, background, D)
    assert np.all(values[:, :, 3] == 0.0), "the ignored feature got an attribution"


def test_function_apply_is_left_as_torch_has_it() -> None:
    """The pass swaps the code of Function.apply for its duration only, also when forward() fails."""
    apply = torch.autograd.Function.__dict__["apply"].__func__
    code = apply.__code__
    model = scan_model(ToyScan.apply).to(D).eval()
    rnnshap.DeepExplainer(model, torch.randn(3, 4, 4, dtype=D)).shap_values(torch.randn(2, 4, 4, dtype=D))
    assert apply.__code__ is code

    def failing(x: Tensor) -> Tensor:
        ToyScan.apply(x, x)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        rnnshap.DeepExplainer(Function(failing), torch.randn(3, 4, 4))
    assert apply.__code__ is code
    a, x = torch.rand(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3, requires_grad=True)
    h, last = ToyScan.apply(a, x)  # outside a pass: torch's apply, with the Function's backward
    assert type(h.grad_fn).__name__ == "ToyScanBackward"


class NumpyTanh(torch.autograd.Function):
    """A forward rnnshap cannot follow: its result comes from numpy."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        with torch._C.DisableTorchFunction():  # as a compiled kernel would: out of any mode's sight
            return torch.from_numpy(np.tanh(x.cpu().numpy())).to(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(x) ** 2)


def test_custom_function_outside_torch_is_refused_by_name() -> None:
    model = Composite(lambda m, x: m.head(NumpyTanh.apply(m.lin(x)) + m.lin(x)), lin=nn.Linear(5, 4), head=nn.Linear(4, 2))

    with pytest.raises(rnnshap.UnsupportedOperationError, match="NumpyTanh") as info:
        rnnshap.DeepExplainer(model.eval(), torch.randn(4, 5))
    assert "register a rule for that module" in str(info.value)


# -- 2. writing into a preallocated buffer --------------------------------------------------------------
def _write(kind: str, outs: Tensor, t: int, h: Tensor) -> None:
    if kind == "setitem":
        outs[:, t] = h
    elif kind == "copy_":
        outs[:, t].copy_(h)
    elif kind == "index_put_":
        outs.index_put_((torch.tensor([t]),), h.unsqueeze(0))  # outs is (T, B, H) here
    elif kind == "add_":
        outs[:, t].add_(h)
    elif kind == "view-before":
        outs[:, t] = h
    else:
        raise AssertionError(kind)


def loop_rnn(m: nn.Module, x: Tensor) -> Tensor:
    x = x[..., :3]
    B, T, _ = x.shape
    h = x.new_zeros(B, 4)
    if m.kind == "stack":
        steps = []
        for t in range(T):
            h = torch.tanh(m.inp(x[:, t]) + m.rec(h))
            steps.append(h)
        outs = torch.stack(steps, 1)
    else:
        outs = torch.zeros(T, B, 4, dtype=x.dtype) if m.kind == "index_put_" else torch.zeros(B, T, 4, dtype=x.dtype)
        seen = outs.view(B, T * 4) if m.kind == "view-before" else None
        for t in range(T):
            h = torch.tanh(m.inp(x[:, t]) + m.rec(h))
            _write(m.kind, outs, t, h)
        if m.kind == "index_put_":
            outs = outs.transpose(0, 1)
        if seen is not None:
            outs = torch.sigmoid(seen).view(B, T, 4) * 0 + outs  # the view taken before the writes
    y = torch.tanh(outs) + m.skip(x)  # the residual around the buffer
    return m.head(torch.sigmoid(y[:, -1]) * y.mean(1))


def loop_rnn_writing(kind: str) -> nn.Module:
    """A python-loop RNN that writes each step into a preallocated buffer (as ``kind`` says), with a residual around
    it and nonlinear uses of the buffer (as xLSTM's sLSTM writes ``outs[:, t] = h``); "stack": no buffer."""
    return Composite(loop_rnn, kind=kind, inp=nn.Linear(3, 4), rec=nn.Linear(4, 4, bias=False), skip=nn.Linear(3, 4),
                     head=nn.Linear(4, 2))  # fmt: skip


@pytest.mark.parametrize("kind", ["setitem", "copy_", "index_put_", "add_", "view-before"])
def test_writes_into_a_preallocated_buffer_are_attributed(kind: str) -> None:
    torch.manual_seed(2)
    model = loop_rnn_writing(kind).to(D).eval()
    stacked = copy.deepcopy(model)
    stacked.kind = "stack"
    background, X = torch.randn(4, 5, 4, dtype=D), torch.randn(3, 5, 4, dtype=D)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, D)
    np.testing.assert_allclose(values, _explain(stacked, background, X), rtol=1e-9, atol=1e-12)
    assert np.all(values[:, :, 3] == 0.0)


def _set_at_repeated_columns(buffer: Tensor, h: Tensor) -> Tensor:
    buffer[:, [0, 0, 3]] = h
    return buffer


#: input-dependent values written at positions of which some repeat, without accumulating: torch writes one of them,
#: which one unspecified, and its gradient reaches every one
REPEATED_WRITES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "setitem": _set_at_repeated_columns,
    "index_put_": lambda buffer, h: buffer.index_put_((torch.arange(h.shape[0])[:, None], torch.tensor([[0, 0, 3]])), h),
    "index_put": lambda buffer, h: buffer.index_put((torch.arange(h.shape[0])[:, None], torch.tensor([[0, 0, 3]])), h),
}


@pytest.mark.parametrize("form", list(REPEATED_WRITES))
def test_values_written_at_repeated_positions_are_refused_by_name_where_they_would_be_wrong(form: str) -> None:
    write = REPEATED_WRITES[form]
    model = Composite(lambda m, x: m.c(write(torch.zeros(x.shape[0], 4, dtype=x.dtype), m.a(x))),
                      a=nn.Linear(5, 3), c=nn.Linear(4, 1)).to(D).eval()  # fmt: skip
    background, X = torch.randn(4, 5, dtype=D), torch.randn(3, 5, dtype=D)
    for compile in (False, "capture"):
        with pytest.raises(rnnshap.UnsupportedOperationError, match=r"repeat"):
            rnnshap.DeepExplainer(model, background, compile=compile).shap_values(X, check_additivity=False)
    once = Composite(lambda m, x: m.c(torch.zeros(x.shape[0], 4, dtype=x.dtype).index_put_(
                         (torch.arange(x.shape[0])[:, None], torch.tensor([[0, 2, 3]])), m.a(x))),
                     a=nn.Linear(5, 3), c=nn.Linear(4, 1)).to(D).eval()  # fmt: skip
    assert_additive(_explain(once, background, X), once, X, background, D)  # (distinct positions: exact)


def _views_then_written(m: nn.Module, x: Tensor) -> Tensor:
    """Views taken of a buffer by a function that returns several (``split``), then the buffer written in place with
    input-dependent values: torch refuses to differentiate a read of such a view, in the model's own forward too."""
    buffer = torch.zeros(x.shape[0], 6, dtype=x.dtype)
    first, _ = buffer.split(3, 1)
    buffer.index_add_(1, torch.tensor([1, 0, 1, 4, 2, 5]), torch.tanh(m.l(x)))
    return m.head(first)


def test_a_view_written_through_its_base_that_autograd_refuses_is_refused_by_name_with_advice_that_works() -> None:
    model = Composite(_views_then_written, l=nn.Linear(5, 6), head=nn.Linear(3, 1)).to(D).eval()
    background, X = torch.randn(4, 5, dtype=D), torch.randn(3, 5, dtype=D)
    x = X.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="returns multiple views"):  # (the model's own forward, with gradients)
        model(x).sum().backward()
    for compile in (False, "capture"):
        with pytest.raises(rnnshap.errors.ModelStateError, match=r"(?s)returns several.*Take the views after the write"):
            rnnshap.DeepExplainer(model, background, compile=compile).shap_values(X)
    after = Composite(lambda m, x: m.head(_written_then_viewed(m, x)), l=nn.Linear(5, 6), head=nn.Linear(3, 1))
    after = after.to(D).eval()
    after.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(after(X), model(X))  # (the advice followed: the same function)
    assert_additive(_explain(after, background, X), after, X, background, D)


def _written_then_viewed(m: nn.Module, x: Tensor) -> Tensor:
    buffer = torch.zeros(x.shape[0], 6, dtype=x.dtype)
    buffer.index_add_(1, torch.tensor([1, 0, 1, 4, 2, 5]), torch.tanh(m.l(x)))
    return buffer.split(3, 1)[0]


# -- 3. checkpoint, clamp with tensor bounds, einsum of three operands, selections --------------------------
def checkpointed(m: nn.Module, x: Tensor) -> Tensor:
    def block(z: Tensor) -> Tensor:
        return torch.tanh(m.b(torch.sigmoid(z))) * z

    z = m.a(x[..., :3].repeat(1, 2)[..., :4])
    h = block(z) if m.use_reentrant is None else checkpoint(block, z, use_reentrant=m.use_reentrant)
    return m.head(h)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")  # the test's own calls of the model
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_is_attributed_as_the_plain_function(use_reentrant: bool) -> None:
    torch.manual_seed(3)
    model = Composite(checkpointed, use_reentrant=use_reentrant, a=nn.Linear(4, 6), b=nn.Linear(6, 6), head=nn.Linear(6, 2))
    model = model.to(D).eval()
    plain = copy.deepcopy(model)
    plain.use_reentrant = None
    background, X = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    values = _explain(model, background, X)
    np.testing.assert_allclose(values, _explain(plain, background, X), rtol=1e-10, atol=1e-13)
    assert_additive(values, model, X, background, D)
    assert np.all(values[:, 3] == 0.0)


def bound(m: nn.Module, x: Tensor) -> Tensor:
    x = x[..., :3]
    a, b = m.a(x), m.b(x)
    y = {
        "min-tracked": lambda: torch.clamp(a, min=b),
        "min-tracked-ref": lambda: torch.maximum(a, b),
        "max-tracked": lambda: a.clamp(max=b),
        "max-tracked-ref": lambda: torch.minimum(a, b),
        "min-constant": lambda: a.clip(min=m.floor),
        "min-constant-ref": lambda: torch.maximum(a, m.floor),
        "both": lambda: torch.clamp(a, min=b - 0.3, max=b + 0.3),
    }[m.how]()
    return m.head(torch.tanh(y))


def bounded(how: str) -> nn.Module:
    """clamp with tensor bounds (another output, a buffer), or (``-ref``) the same as maximum / minimum."""
    return Composite(bound, how=how, a=nn.Linear(3, 4), b=nn.Linear(3, 4), head=nn.Linear(4, 2),
                     floor=nn.Buffer(torch.linspace(-0.5, 0.5, 4)))  # fmt: skip


@pytest.mark.parametrize("how", ["min-tracked", "max-tracked", "min-constant", "both"])
def test_clamp_with_tensor_bounds_is_exact(how: str) -> None:
    torch.manual_seed(4)
    model = bounded(how).to(D).eval()
    background, X = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, D)
    assert np.all(values[:, 3] == 0.0)
    if how != "both":  # clamp with one bound is maximum / minimum, written the other way
        reference = copy.deepcopy(model)
        reference.how = how + "-ref"
        np.testing.assert_allclose(values, _explain(reference, background, X), rtol=1e-10, atol=1e-13)


def triple_product(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.einsum("ni,ni,ni->n", a, b, c).unsqueeze(1)


def test_einsum_of_three_operands_is_the_exact_shapley_split() -> None:
    rng = np.random.default_rng(5)
    background = [torch.from_numpy(rng.normal(size=(3, 4))) for _ in range(3)]
    X = [torch.from_numpy(rng.normal(size=(2, 4))) for _ in range(3)]
    values = _explain(Function(triple_product), background, X)
    # closed form: each term a_i b_i c_i is a three-player game; Shapley value of each player
    x, r = [v.numpy() for v in X], [v.numpy() for v in background]
    expected = [np.zeros((2, 4)) for _ in range(3)]
    for n, k in itertools.product(range(2), range(3)):
        for i in range(3):
            others = [j for j in range(3) if j != i]
            for size in range(3):
                for S in itertools.combinations(others, size):
                    weight = factorial(size) * factorial(3 - size - 1) / factorial(3)
                    rest = np.prod([x[j][n] if j in S else r[j][k] for j in others], axis=0)
                    expected[i][n] += weight * (x[i][n] - r[i][k]) * rest / 3
    for got, want in zip(values, expected, strict=True):
        np.testing.assert_allclose(got[..., 0], want, rtol=1e-10, atol=1e-13)


def test_einsum_of_too_many_operands_is_refused_at_construction() -> None:
    def five(x: Tensor) -> Tensor:
        return torch.einsum("ni,ni,ni,ni,ni->n", x, x + 1, x + 2, x + 3, x + 4).unsqueeze(1)

    with pytest.raises(rnnshap.UnsupportedOperationError, match="einsum"):
        rnnshap.DeepExplainer(Function(five), torch.randn(3, 4, dtype=D))


def select(m: nn.Module, x: Tensor) -> Tensor:
    a, b = m.a(x), m.b(x)
    y = {
        "gather-argmax": lambda: a.gather(1, a.argmax(1, keepdim=True)).expand(-1, 4),
        "gather-max-indices": lambda: b.gather(1, a.max(1, keepdim=True).indices).expand(-1, 4),
        "index-min-indices": lambda: b[torch.arange(b.shape[0]), torch.min(a, dim=1).indices].unsqueeze(1) * a,
        "sort": lambda: torch.sort(a, dim=1).values,
        "topk": lambda: torch.topk(a, 2, dim=1).values.repeat(1, 2),
        "gather-topk-indices": lambda: b.gather(1, a.topk(2, dim=1).indices).repeat(1, 2),
        "msort": lambda: torch.msort(a),
        "max-values": lambda: a.max(1, keepdim=True).values * b,  # exact: routed like max-pool
    }[m.how]()
    return m.head(y)


def selecting(how: str) -> nn.Module:
    return Composite(select, how=how, a=nn.Linear(5, 4), b=nn.Linear(5, 4), head=nn.Linear(4, 2))


def test_a_sort_over_the_batch_is_refused_by_name() -> None:
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(selecting("msort").eval(), torch.randn(4, 5))
    message = str(info.value)
    assert "torch.msort" in message
    assert "sort, argsort, topk (sorted), kthvalue, median and quantile" in message  # the advice that fits
    assert "Rescale()" not in message


@pytest.mark.parametrize(
    "how", ["gather-argmax", "gather-max-indices", "index-min-indices", "sort", "topk", "gather-topk-indices"]
)
def test_picked_indices_used_downstream_are_exact(how: str) -> None:
    """(tests/engines/pytorch/test_picked.py holds their closed-form and written-two-ways checks.)"""
    model = selecting(how).to(D).eval()
    background, X = torch.randn(5, 5, dtype=D), torch.randn(3, 5, dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


def test_max_values_with_unused_indices_stay_exact() -> None:
    model = selecting("max-values").to(D).eval()
    background, X = torch.randn(5, 5, dtype=D), torch.randn(3, 5, dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


# -- 4. refusals: at construction, together, with advice that fits --------------------------------------------
def _no_grad(z: Tensor) -> Tensor:
    with torch.no_grad():
        w = torch.tanh(z)
    return w + z


def _inference_mode(z: Tensor) -> Tensor:
    with torch.inference_mode():
        w = torch.tanh(z)
    return w.clone() + z


@torch.no_grad()
def _decorated(z: Tensor) -> Tensor:
    return torch.tanh(z)


REFUSED: dict[str, tuple[Callable[[Tensor], Tensor], str, str]] = {
    # name: (what forward does, what the error names, a phrase of the advice that fits)
    "inference_mode": (_inference_mode, "torch.inference_mode()", "Use torch.no_grad() there instead"),
    "floor-division": (lambda z: z // 0.5, "__floordiv__", "piecewise constant"),
    "remainder": (lambda z: torch.remainder(z, 0.5), "remainder", "piecewise constant"),
    "round": (lambda z: torch.round(z * 3), "round", "piecewise constant"),
    "trunc": (lambda z: z.trunc(), "trunc", "piecewise constant"),
    "allclose": (lambda z: torch.tanh(z) if torch.allclose(z, z * 0) else z, "allclose", "control flow independent"),
    "equal": (lambda z: torch.tanh(z) if torch.equal(z, z * 0) else z, "equal", "control flow independent"),
    "bool-branch": (lambda z: torch.tanh(z) if bool(z.sum() > 0) else torch.sigmoid(z), "__bool__", "control flow independent"),
    "python-if": (lambda z: torch.tanh(z) if z.mean() > 0 else torch.sigmoid(z), "__bool__", "control flow independent"),
    # (a mask cast or promoted is a step: tests/rules/test_comparison_steps.py; a count of one has no multiplier)
    "bool-count": (lambda z: (z > 0).sum(-1, keepdim=True).to(z.dtype) + z, "gt", "separate bool or integer input"),
}


def refused(how: Callable[[Tensor], Tensor]) -> nn.Module:
    return Composite(lambda m, x: m.head(m.how(m.lin(x))), how=how, lin=nn.Linear(5, 4), head=nn.Linear(4, 2))


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_come_from_the_constructor_with_advice_that_fits(case: str) -> None:
    how, named, advice = REFUSED[case]
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(refused(how).eval(), torch.randn(4, 5))
    message = str(info.value)
    assert named in message, message
    assert advice in message, message
    assert "Rescale()" not in message or case in ("floor-division", "remainder", "round", "trunc"), message


@pytest.mark.parametrize("how", ["block", "decorator"])
def test_no_grad_in_forward_is_followed_as_detach(how: str) -> None:
    """Statistics computed under torch.no_grad() (gluonts' StdScaler, RecurrentGemma) are part of the
    function all the same: the values are those of the same model written without no_grad()."""

    def stats(z: Tensor) -> tuple[Tensor, Tensor]:
        return z.mean(1, keepdim=True), (z.var(1, keepdim=True) + 1e-5).sqrt()

    decorated = torch.no_grad()(stats)

    def scaled(z: Tensor) -> Tensor:
        if how == "block":
            with torch.no_grad():
                loc, scale = stats(z)
        else:
            loc, scale = decorated(z)
        return torch.tanh((z - loc) / scale) + _decorated(z) * loc

    def plain(z: Tensor) -> Tensor:
        loc, scale = stats(z)
        return torch.tanh((z - loc) / scale) + torch.tanh(z) * loc

    model, reference = refused(scaled).to(D).eval(), refused(plain).to(D).eval()
    reference.load_state_dict(model.state_dict())
    background, X = torch.randn(6, 5, dtype=D), torch.randn(3, 5, dtype=D)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, D)
    assert relative_to_max(values, _explain(reference, background, X)) <= 1e-12


def test_no_grad_that_computes_nothing_from_the_input_is_allowed() -> None:
    def harmless(z: Tensor) -> Tensor:
        with torch.no_grad():
            scale = torch.ones(z.shape[-1], dtype=z.dtype) * 2  # a shape query and a constant
            mask = torch.zeros_like(z)
        return torch.tanh(z) * scale + mask

    model = refused(harmless).to(D).eval()
    background, X = torch.randn(4, 5, dtype=D), torch.randn(2, 5, dtype=D)
    assert_additive(_explain(model, background, X), model, X, background, D)


def test_every_refusal_of_a_forward_is_listed_together() -> None:
    def many(z: Tensor) -> Tensor:
        w = _inference_mode(z)
        w = torch.round(w) + w
        return torch.tanh(w) if torch.allclose(w, z) else (w > 0).sum(-1, keepdim=True) * w

    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(refused(many).eval(), torch.randn(4, 5))
    names = [name for name, _ in info.value.ops]
    for expected in ("torch.inference_mode()", "round", "allclose", "gt"):
        assert any(expected in name for name in names), (expected, names)
    message = str(info.value)
    advices = (
        "Use torch.no_grad() there instead", "piecewise constant", "control flow independent", "separate bool or integer input"
    )
    for advice in advices:
        assert advice in message


def test_a_rule_that_does_not_fit_the_call_is_refused_at_construction() -> None:
    """Rescale registered for an op called with two input-dependent operands: named when the
    explainer is built, not a ValueError from shap_values."""

    def two_operands() -> nn.Module:
        return Composite(lambda m, x: torch.atan2(m.a(x), m.b(x) + 3), a=nn.Linear(5, 3), b=nn.Linear(5, 3))

    with pytest.raises(rnnshap.UnsupportedOperationError, match="atan2") as info:
        rnnshap.DeepExplainer(two_operands().eval(), torch.randn(4, 5), rules={torch.atan2: Rescale()})
    assert "Shapley()" in str(info.value)
    model = two_operands().to(D).eval()  # with a rule that fits, it is exact
    background, X = torch.randn(4, 5, dtype=D), torch.randn(2, 5, dtype=D)
    values = rnnshap.DeepExplainer(model, background, rules={torch.atan2: rnnshap.rules.Shapley()}).shap_values(X)
    assert_additive(values, model, X, background, D)


# -- 5. the model is left bit-identical; bad input gets a clear message ---------------------------------------------
@pytest.mark.parametrize("which", ["hook", "parametrization"])
def test_spectral_norm_in_training_mode_is_left_bit_identical(which: str) -> None:
    torch.manual_seed(6)
    linear = nn.Linear(4, 5)
    normed = nn.utils.spectral_norm(linear) if which == "hook" else nn.utils.parametrizations.spectral_norm(linear)
    model = nn.Sequential(normed, nn.Tanh(), nn.Linear(5, 2)).to(D).train()  # no dropout: train mode is allowed
    with torch.no_grad():  # a forward as in training (no_grad: deepcopy takes no weight with a graph)
        model(torch.randn(2, 4, dtype=D))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    attribute_before = linear.__dict__.get("weight")
    background, X = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    # the independent reference: the model's own next forward, on copies in the state as given
    gap = copy.deepcopy(model)(X).detach().numpy() - copy.deepcopy(model)(background).detach().numpy().mean(0)
    values = _explain(model, background, X)
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed"
    assert linear.__dict__.get("weight") is attribute_before
    np.testing.assert_allclose(phi_totals(values, 3, 2), gap, rtol=1e-10, atol=1e-12)


def test_packed_sequence_input_gets_a_clear_message() -> None:
    model = RecurrentHead("gru", 3, 4, 1, read="state").eval()
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(3, 5, 3), torch.tensor([5, 4, 2]), batch_first=True)
    with pytest.raises(rnnshap.InputError, match="pack_padded_sequence"):
        rnnshap.DeepExplainer(model, packed)
    explainer = rnnshap.DeepExplainer(model, torch.randn(3, 5, 3))
    with pytest.raises(rnnshap.InputError, match="PackedSequence"):
        explainer.shap_values(packed)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_input_for_a_float_model_gets_a_clear_message(dtype: torch.dtype) -> None:
    explainer = rnnshap.DeepExplainer(nn.Sequential(nn.Linear(5, 3), nn.Tanh()).eval(), torch.randn(4, 5))
    with pytest.raises(rnnshap.InputError, match=r"floating point too \(x\.float\(\)\)"):
        explainer.shap_values((torch.rand(2, 5) * 3).to(dtype))


def test_parameterless_model_takes_the_background_dtype() -> None:
    def no_parameters(x: Tensor) -> Tensor:
        return (torch.tanh(x) * torch.sigmoid(x.flip(1))).sum(1, keepdim=True)

    background = torch.randn(5, 4, dtype=D)
    X = torch.randn(3, 4)  # float32
    values = _explain(Function(no_parameters), background, X)  # no AdditivityError
    np.testing.assert_allclose(values, _explain(Function(no_parameters), background, X.to(D)), rtol=1e-12, atol=1e-14)
    assert_additive(values, Function(no_parameters), X.to(D), background, D)


def test_meta_tensors_get_a_clear_message() -> None:
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh()).eval()
    with pytest.raises(rnnshap.InputError, match="meta device"):
        rnnshap.DeepExplainer(model, torch.randn(4, 5, device="meta"))
    explainer = rnnshap.DeepExplainer(model, torch.randn(4, 5))
    with pytest.raises(rnnshap.InputError, match="meta device"):
        explainer.shap_values(torch.randn(2, 5, device="meta"))
    with pytest.raises(rnnshap.ModelStateError, match="meta device"):
        rnnshap.DeepExplainer(nn.Linear(5, 3, device="meta"), torch.randn(4, 5))


def test_batch_norm_without_running_statistics_gets_a_true_message() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)).eval()
    with pytest.raises(rnnshap.ModelStateError, match="track_running_stats=False") as info:
        rnnshap.DeepExplainer(model, torch.randn(4, 5))
    assert "model.eval()" not in str(info.value)

    functional = Composite(lambda m, x: F.batch_norm(m.lin(x), None, None, training=True), lin=nn.Linear(5, 4))
    with pytest.raises(rnnshap.ModelStateError, match="no running statistics"):
        rnnshap.DeepExplainer(functional.eval(), torch.randn(4, 5))


# -- branches on a condition that holds for every row ---------------------------------------------------------
def normalized(model: nn.Module, x: Tensor) -> Tensor:
    n = torch.zeros(x.shape[0], 4, dtype=x.dtype)
    m = torch.zeros_like(n)
    for t in range(x.shape[1]):
        u = model.proj(x[:, t])
        if model.branch and torch.all(n == 0.0):
            m_new = u
        elif model.branch:
            m_new = torch.maximum(u, m)
        else:
            m_new = u if t == 0 else torch.maximum(u, m)
        n = n * torch.exp(m - m_new) + torch.exp(u - m_new)
        m = m_new
    return (m + torch.log(n)).sum(1, keepdim=True)


def normalizer(branch: bool) -> nn.Module:
    """A recurrence that branches as xlstm's sLSTM does: ``if torch.all(n == 0)`` (true for the initial
    state only), and (``branch=False``) the same function written without the branch."""
    return Composite(normalized, branch=branch, proj=nn.Linear(3, 4))


def test_a_branch_that_every_row_takes_alike_is_followed() -> None:
    background, X = torch.randn(5, 4, 3, dtype=D), torch.randn(3, 4, 3, dtype=D)
    branched, plain = normalizer(True).to(D).eval(), normalizer(False).to(D).eval()
    plain.load_state_dict(branched.state_dict())
    values = _explain(branched, background, X)
    assert_additive(values, branched, X, background, D)
    np.testing.assert_array_equal(values, _explain(plain, background, X))


def row_branch(m: nn.Module, x: Tensor) -> Tensor:
    u = m.proj(x)
    if torch.all(u > 0):  # true for some rows and not others: the branch depends on the batch
        return u * 2
    return u


def test_a_branch_that_rows_take_differently_is_refused_by_name() -> None:
    background = torch.randn(8, 3, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(Composite(row_branch, proj=nn.Linear(3, 1)).to(D).eval(), background)
    message = str(info.value)
    assert "torch.all" in message and "differ" in message


def test_a_branch_that_goes_one_way_on_the_references_and_another_on_the_inputs_is_an_error() -> None:
    model = Composite(row_branch, proj=nn.Linear(3, 1)).to(D).eval()
    with torch.no_grad():
        model.proj.weight.fill_(1.0)
        model.proj.bias.zero_()
    background = torch.full((4, 3), -1.0, dtype=D)  # every row below 0: the branch is false for all
    explainer = rnnshap.DeepExplainer(model, background)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="references and"):
        explainer.shap_values(torch.full((2, 3), 1.0, dtype=D))  # every row above 0: true for all


def test_a_branch_that_rows_of_the_explained_inputs_take_differently_is_refused_by_name() -> None:
    model = Composite(row_branch, proj=nn.Linear(3, 1)).to(D).eval()
    with torch.no_grad():
        model.proj.weight.fill_(1.0)
        model.proj.bias.zero_()
    background = torch.full((4, 3), 1.0, dtype=D) + torch.rand(4, 3, dtype=D)  # every row above 0
    explainer = rnnshap.DeepExplainer(model, background)
    positive = torch.rand(2, 3, dtype=D) + 0.5
    with pytest.raises(rnnshap.UnsupportedOperationError, match="differ between the rows"):
        explainer.shap_values(torch.cat([positive, -positive]))


def test_a_model_that_squeezes_its_output_is_explained_from_two_background_rows() -> None:
    """``out.squeeze()`` drops the batch of one row: the rows check, which runs the background in halves, skips the
    halves it cannot join (it raised torch's own RuntimeError from torch.cat)."""
    torch.manual_seed(0)
    model = Composite(lambda m, x: torch.sigmoid(m.o(m.lstm(x)[0][:, -1])).squeeze(),
                      lstm=nn.LSTM(3, 4, batch_first=True), o=nn.Linear(4, 1)).eval()  # fmt: skip
    background, X = torch.randn(2, 5, 3, dtype=D), torch.randn(3, 5, 3, dtype=D)
    values = rnnshap.DeepExplainer(model.to(D), background).shap_values(X, check_additivity=False)
    assert_additive(values, model, X, background, D)
