"""Missing values (NaN) handled by the model: ``nanmean``, ``nansum``, ``nan_to_num``,
``isnan`` / ``isfinite`` masks as features and as conditions, masked assignment; and darts'
``gamma[gamma < MIN] = MIN`` (a clamp written as a masked assignment).

The forecasters' own patterns, written as the libraries write them (read in the installed packages):
TiRex's ``StandardScaler`` (tirex/models/patcher.py) and its mask feature (tirex/models/tirex.py),
Chronos' ``InstanceNorm`` (chronos/chronos_bolt.py), MOMENT's ``RevIN`` (momentfm/models/layers/revin.py).
The real classes and tiny real models are in tests/zoo/test_foundation_missing.py.

Truths: the model's own output (additivity); the same function written without missing values (the model
on the observed entries only, its mask a constant), whose attributions must be the same; a float64 closed
form for a model linear in the observed entries; exact zeros for entries missing on both sides of a pair
and for entries the model never reads.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
import rnnshap.captum

from ..conftest import assert_additive, relative_to_max, rounding_tol
from ..models.torch import Composite, Function

Tensor = torch.Tensor
F64 = torch.float64
NAN = float("nan")
L, GAP = 16, 4  # window length; the first GAP steps are missing where a test says so


# -- the libraries' patterns ------------------------------------------------------------------------------------
def tirex_scale(x: Tensor, eps: float = 1e-5) -> Tensor:
    """TiRex's StandardScaler: nanmean loc, nanmean scale, ``where(scale == 0, |loc| + eps, scale)``."""
    loc = torch.nan_to_num(torch.nanmean(x, dim=-1, keepdim=True), nan=0.0)
    scale = torch.nan_to_num(torch.nanmean((x - loc).square(), dim=-1, keepdim=True).sqrt(), nan=1.0)
    scale = torch.where(scale == 0, torch.abs(loc) + eps, scale)
    return (x - loc) / scale


def chronos_scale(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Chronos-Bolt's InstanceNorm: ``Tensor.nanmean`` and a floor of eps."""
    loc = torch.nan_to_num(torch.nanmean(x, dim=-1, keepdim=True), nan=0.0)
    scale = torch.nan_to_num((x - loc).square().nanmean(dim=-1, keepdim=True).sqrt(), nan=1.0)
    scale = torch.where(scale == 0, eps, scale)
    return (x - loc) / scale


def moment_scale(x: Tensor, eps: float = 1e-5) -> Tensor:
    """MOMENT's RevIN: nanmean and nanstd (``nanvar = (t - t.nanmean()).square().nanmean()``), detached, + eps."""
    mean = torch.nanmean(x, dim=-1, keepdim=True).detach()
    variance = (x - x.nanmean(dim=-1, keepdim=True)).square().nanmean(dim=-1, keepdim=True)
    stdev = variance.sqrt().detach() + eps
    return (x - mean) / stdev


SCALERS: dict[str, Callable[[Tensor], Tensor]] = {"tirex": tirex_scale, "chronos": chronos_scale, "moment": moment_scale}


def _mask_feature(m: nn.Module, x: Tensor) -> Tensor:
    token = m.scale(x)
    mask = torch.isnan(token).logical_not().to(token.dtype)
    token = torch.nan_to_num(token, nan=0.0)
    return m.out(torch.tanh(m.hidden(torch.cat((token, mask), dim=-1))))


def mask_feature(scale: Callable[[Tensor], Tensor], length: int = L, hidden: int = 8) -> Composite:
    """TiRex's input: the scaled window with NaN filled, beside ``isnan(x).logical_not().to(dtype)``, into a network."""
    return Composite(_mask_feature, scale=scale, hidden=nn.Linear(2 * length, hidden), out=nn.Linear(hidden, 2))


def _windows(n: int, seed: int, gap: int = 0, dtype: torch.dtype = F64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, L, generator=g, dtype=F64).cumsum(-1) + 3.0).to(dtype)  # random walks: real windows' shape
    x[:, :gap] = NAN
    return x


def _explain(model: nn.Module, background: Tensor, X: Tensor) -> np.ndarray:
    return np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))


# -- additivity, exact zeros, the model unchanged -----------------------------------------------------------------
@pytest.mark.parametrize("scaler", SCALERS)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_missing_entries_masked_by_the_model_are_exact_and_get_zero(scaler: str, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = mask_feature(SCALERS[scaler]).to(dtype).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    background, X = _windows(8, 0, GAP, dtype), _windows(3, 1, GAP, dtype)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, dtype)
    assert np.all(values[:, :GAP] == 0.0)  # missing on both sides of every pair: exactly 0
    assert np.isfinite(values).all() and np.abs(values[:, GAP:]).max() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.isnan(X[:, :GAP]).all() and torch.isnan(background[:, :GAP]).all()  # the data as given


def _observed(m: nn.Module, observed: Tensor) -> Tensor:
    """``mask_feature`` written for the observed entries only: the missing ones are constants (mask 0, fill 0)."""
    n = observed.shape[0]
    token = torch.cat((torch.zeros(n, GAP, dtype=observed.dtype), m.scale_observed(observed)), -1)
    mask = torch.cat((torch.zeros(n, GAP, dtype=observed.dtype), torch.ones_like(observed)), -1)
    return m.model.out(torch.tanh(m.model.hidden(torch.cat((token, mask), dim=-1))))


def _plain_tirex(x: Tensor) -> Tensor:
    loc = x.mean(-1, keepdim=True)
    scale = (x - loc).square().mean(-1, keepdim=True).sqrt()
    return (x - loc) / torch.where(scale == 0, loc.abs() + 1e-5, scale)


def test_values_equal_those_of_the_model_written_on_the_observed_entries() -> None:
    """The mask is a constant of the explained function and nanmean a mean over the observed entries: the
    values on the observed entries are those of the same network written without NaN (float64, 1e-12)."""
    torch.manual_seed(2)
    model = mask_feature(tirex_scale).to(F64).eval()
    background, X = _windows(8, 0, GAP), _windows(3, 1, GAP)
    values = _explain(model, background, X)
    plain = Composite(_observed, model=model, scale_observed=_plain_tirex).eval()
    expected = _explain(plain, background[:, GAP:], X[:, GAP:])
    assert relative_to_max(values[:, GAP:], expected) <= 1e-12


def test_complete_windows_give_the_values_of_the_model_without_nan_handling() -> None:
    """No missing value: nanmean is mean, nan_to_num the identity, the mask all ones."""
    torch.manual_seed(3)
    model = mask_feature(tirex_scale).to(F64).eval()
    background, X = _windows(8, 0), _windows(3, 1)

    def _plain(x: Tensor) -> Tensor:
        return model.out(torch.tanh(model.hidden(torch.cat((_plain_tirex(x), torch.ones_like(x)), -1))))

    assert relative_to_max(_explain(model, background, X), _explain(Function(_plain).eval(), background, X)) <= 1e-12


def test_nanmean_and_nansum_are_linear_over_the_observed_entries_closed_form() -> None:
    """f(x) = Σ_i w_i · nan_to_num(x_i − nanmean(x)) + v · nansum(x) is linear in the observed entries O:
    φ_j = (w_j − mean_{i∈O} w_i + v)(x_j − r_j) on O, 0 elsewhere (float64, from the equation)."""
    g = torch.Generator().manual_seed(4)
    w, v = torch.randn(L, generator=g, dtype=F64), 0.7

    def _linear(x: Tensor) -> Tensor:
        centred = torch.nan_to_num(x - x.nanmean(-1, keepdim=True))
        return (centred * w).sum(-1, keepdim=True) + v * torch.nansum(x, dim=-1, keepdim=True)

    background, X = _windows(5, 0, GAP), _windows(2, 1, GAP)
    values = _explain(Function(_linear), background, X)[..., 0]
    observed = torch.arange(L) >= GAP
    slope = torch.where(observed, w - w[observed].mean() + v, 0.0)
    expected = (slope * torch.nan_to_num(X - background.mean(0))).numpy()  # (x − r) averaged over r: x − mean r
    assert np.all(values[:, :GAP] == 0.0)
    assert relative_to_max(values, expected) <= 1e-13


def test_nan_the_model_writes_itself_is_masked_exactly() -> None:
    """MOMENT's RevIN with an input mask: ``torch.where(mask, x, nan)`` then nanmean / nanstd over the kept
    entries. The windows are complete; the NaN is the model's own, the same on both sides of every pair, and the
    backward through the statistics meets it (0 · NaN must not spread)."""
    torch.manual_seed(7)
    keep = torch.arange(L) >= GAP
    head = nn.Sequential(nn.Linear(L, 6), nn.Tanh(), nn.Linear(6, 2)).to(F64).eval()

    def revin(x: Tensor) -> Tensor:
        masked = torch.where(keep, x, NAN)
        mean = torch.nanmean(masked, dim=-1, keepdim=True).detach()
        stdev = (masked - masked.nanmean(dim=-1, keepdim=True)).square().nanmean(dim=-1, keepdim=True).sqrt().detach()
        return head(torch.nan_to_num((x - mean) / (stdev + 1e-5), nan=0.0))

    def observed(x: Tensor) -> Tensor:  # the same statistics written over the kept entries, NaN nowhere
        kept = x[:, GAP:]
        mean = kept.mean(-1, keepdim=True)
        stdev = (kept - mean).square().mean(-1, keepdim=True).sqrt()
        return head((x - mean) / (stdev + 1e-5))

    background, X = _windows(8, 0), _windows(3, 1)
    values = _explain(Function(revin), background, X)
    assert_additive(values, Function(revin), X, background, F64)
    assert relative_to_max(values, _explain(Function(observed), background, X)) <= 1e-12


def test_nan_to_num_in_place_and_out_of_place_agree() -> None:
    head = nn.Linear(L, 1).to(F64)

    def in_place(x: Tensor) -> Tensor:
        y = x * 2.0
        y.nan_to_num_(nan=0.0)
        return torch.tanh(head(y))

    def out_of_place(x: Tensor) -> Tensor:
        return torch.tanh(head(torch.nan_to_num(x * 2.0, nan=0.0)))

    background, X = _windows(6, 0, GAP), _windows(2, 1, GAP)
    values = _explain(Function(in_place), background, X)
    assert_additive(values, Function(in_place), X, background, F64)
    assert relative_to_max(values, _explain(Function(out_of_place), background, X)) <= 1e-13


@pytest.mark.parametrize("form", ["function", "method", "two_dims", "keepdim_false", "dtype"])
def test_nanmean_nansum_forms(form: str) -> None:
    reduce = {
        "function": lambda x: torch.nanmean(x, dim=-1, keepdim=True) + torch.nansum(x, -1, keepdim=True),
        "method": lambda x: x.nanmean(-1, keepdim=True) * 2 + x.nansum(dim=(-1,), keepdim=True),
        "two_dims": lambda x: x.reshape(-1, 4, 4).nanmean(dim=(1, 2))[:, None] + x.reshape(-1, 4, 4).nansum((1, 2))[:, None],
        "keepdim_false": lambda x: torch.nanmean(x, 1)[:, None] + x.nansum(1)[:, None],
        "dtype": lambda x: torch.nansum(x, -1, keepdim=True, dtype=F64),
    }[form]

    model = Function(lambda x: torch.tanh(reduce(x) / L))
    background, X = _windows(5, 0, GAP), _windows(2, 1, GAP)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, F64)
    assert np.all(values[:, :GAP] == 0.0)


MASK_USES: dict[str, Callable[[Tensor], Tensor]] = {
    "where_isnan": lambda x: torch.where(torch.isnan(x), 0.0, x),
    "where_isfinite": lambda x: torch.where(torch.isfinite(x), x, torch.zeros_like(x)),
    "masked_fill": lambda x: x.masked_fill(torch.isnan(x), 0.0),
    "masked_assignment": lambda x: _assigned(x),
    "mask_times_filled": lambda x: torch.nan_to_num(x) * (~torch.isnan(x)).float() + torch.isnan(x).float(),
    "isinf_and_isnan": lambda x: torch.where(torch.isinf(x) | torch.isnan(x), 0.0, x),
    "nan_to_num_method": lambda x: x.nan_to_num(nan=-1.0, posinf=0.0) + (~x.isnan()).to(x.dtype),
}


def _assigned(x: Tensor) -> Tensor:
    x = x.clone()
    x[torch.isnan(x)] = 0.0
    return x


@pytest.mark.parametrize("use", MASK_USES)
def test_mask_uses_are_constants_where_both_sides_miss_the_same_entries(use: str) -> None:
    torch.manual_seed(5)
    head = nn.Sequential(nn.Linear(L, 6), nn.Tanh(), nn.Linear(6, 1)).to(F64).eval()
    fill = MASK_USES[use]

    def filling(x: Tensor) -> Tensor:
        return head(fill(x))

    model = Function(filling)
    background, X = _windows(6, 0, GAP), _windows(3, 1, GAP)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, F64)
    assert np.all(values[:, :GAP] == 0.0)
    # the same head on the filled windows, NaN nowhere: the values on the observed entries
    filled = _explain(head, fill(background), fill(X))
    assert relative_to_max(values[:, GAP:], filled[:, GAP:]) <= 1e-12


def branching() -> Composite:
    """A branch on whether any value is missing (pypots' BRITS, gluonts), then a fill and a network."""

    def forward(m: nn.Module, x: Tensor) -> Tensor:
        if torch.isnan(x).any():
            x = torch.nan_to_num(x, nan=-1.0)
        return torch.tanh(m.head(x))

    return Composite(forward, head=nn.Linear(L, 1))


def test_a_branch_on_any_missing_value_that_every_row_takes_alike_is_followed() -> None:
    """Every window misses the same entries: each row alone takes the batch's branch (the mask differs between
    the entries of a row, not between rows)."""
    model = branching().to(F64).eval()
    background, X = _windows(6, 0, GAP), _windows(3, 1, GAP)
    values = _explain(model, background, X)
    assert_additive(values, model, X, background, F64)
    assert np.all(values[:, :GAP] == 0.0)


def test_a_branch_on_any_missing_value_that_rows_take_differently_is_refused() -> None:
    """Some windows miss values, others do not: the batch's branch is not each row's."""
    model = branching().to(F64).eval()
    background = _windows(6, 0)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="branches on a comparison"):
        rnnshap.DeepExplainer(model, torch.cat([background, _windows(2, 1, GAP)]))


def test_a_count_of_missing_values_over_the_whole_batch_is_refused() -> None:
    """``isnan(x).sum()`` over the whole batch is not a function of one row (it grows with the batch): the values
    of a model that scales by it are not those of any row's function, so it must be refused, not followed (the
    row-order check cannot see a count that every order gives alike; the background run in two halves does)."""

    model = Composite(lambda m, x: m.head(torch.nan_to_num(x)) * torch.isnan(x).sum().to(x.dtype), head=nn.Linear(L, 1))
    background, X = _windows(6, 0, GAP), _windows(3, 1, GAP)
    with pytest.raises(rnnshap.InputError, match="(?s)mixes the rows of axis 0.*two halves"):
        _explain(model.to(F64).eval(), background, X)


# -- entries missing on one side only ------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["background", "X"])
def test_a_missing_value_on_one_side_that_the_model_reads_is_refused_by_name(where: str) -> None:
    model = mask_feature(tirex_scale).to(F64).eval()
    background, X = _windows(6, 0, GAP), _windows(3, 1, GAP)
    (background if where == "background" else X)[1, GAP + 2] = NAN
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"torch\.nanmean") as info:
        _explain(model, background, X)
    message = str(info.value)
    assert "different entries" in message and "Choose background rows" in message
    assert f"first missing in {'the explained input' if where == 'X' else 'the background row'} only" in message  # what to change
    assert "Rescale" not in message


COMPARISON_FILLS: dict[str, Callable[[Tensor], Tensor]] = {
    "x == x": lambda x: x == x,
    "x < c": lambda x: x < 1e30,
    "isnan (the truth)": lambda x: ~torch.isnan(x),
}


@pytest.mark.parametrize("observed", COMPARISON_FILLS)
def test_missing_values_masked_by_a_comparison_other_than_isnan_are_exact(observed: str) -> None:
    """NaN at the same entries on both sides, masked by ``where(x == x, f(x), 0)`` or ``where(x < c, f(x), 0)``
    after a nonlinear ``f``: the same function as ``where(~isnan(x), f(x), 0)``, whose values they must give
    (f's multiplier is NaN on the missing entries, and the gate passes 0 to them: never 0 · NaN)."""
    torch.manual_seed(11)
    head = nn.Sequential(nn.Linear(L, 6), nn.Tanh(), nn.Linear(6, 1)).to(F64).eval()
    keep = COMPARISON_FILLS[observed]

    def masking(x: Tensor) -> Tensor:
        return head(torch.where(keep(x), torch.tanh(x) * x, 0.0))

    def _truth(x: Tensor) -> Tensor:
        return head(torch.where(~torch.isnan(x), torch.tanh(x) * x, 0.0))

    background, X = _windows(6, 0, GAP), _windows(3, 1, GAP)
    values = _explain(Function(masking), background, X)
    assert_additive(values, Function(masking), X, background, F64)
    assert np.all(values[:, :GAP] == 0.0)
    assert relative_to_max(values, _explain(Function(_truth), background, X)) <= rounding_tol(F64)


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_a_missing_value_on_one_side_filled_without_a_mask_is_refused_in_both_modes(multiply_by_inputs: bool) -> None:
    """``where(x < c, x, 0)`` fills a NaN without ``isnan``: the output depends on an entry missing on one side
    only, so the contributions are refused by name, and so are the multipliers alone (Captum's
    ``multiply_by_inputs=False``): never a NaN handed back."""

    filled = Composite(lambda m, x: m.head(torch.where(x < 1e30, x, 0.0)), head=nn.Linear(L, 1))
    background, X = _windows(6, 0), _windows(2, 1)
    X[0, 3] = NAN
    model = filled.to(F64).eval()
    explainer = rnnshap.captum.DeepLiftShap(model, multiply_by_inputs=multiply_by_inputs)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="missing on one side of a pair only") as info:
        explainer.attribute(X, baselines=background)
    assert "Choose background rows" in str(info.value)


def test_a_mask_on_one_side_only_is_refused_by_name() -> None:
    mask_only = Composite(lambda m, x: m.head(torch.cat((torch.where(torch.isnan(x), 0.0, x), torch.isnan(x).float()), -1)),
                          head=nn.Linear(2 * L, 1))  # fmt: skip

    background, X = _windows(6, 0), _windows(2, 1)
    X[0, 3] = NAN
    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"torch\.isnan: it answers differently") as info:
        _explain(mask_only.to(F64), background, X)
    assert "first missing in the explained input only" in str(info.value)


def test_missing_values_in_context_the_model_trims_get_exactly_zero() -> None:
    """Missing in some background rows only, where the model never reads (context beyond what it keeps)."""
    torch.manual_seed(6)
    inner = mask_feature(tirex_scale).to(F64).eval()

    def trimming(x: Tensor) -> Tensor:
        return inner(x[:, -L:])

    g = torch.Generator().manual_seed(7)
    background, X = torch.randn(6, L + 5, generator=g, dtype=F64), torch.randn(3, L + 5, generator=g, dtype=F64)
    background[1, :3] = NAN
    values = _explain(Function(trimming), background, X)
    assert np.all(values[:, :5] == 0.0)
    assert_additive(values, Function(trimming), X, background, F64)


def test_missing_values_the_model_does_not_handle_are_an_input_error() -> None:
    model = nn.Sequential(nn.Linear(L, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)
    background, X = _windows(6, 0), _windows(2, 1, GAP)
    explainer = rnnshap.DeepExplainer(model, background)
    with pytest.raises(rnnshap.InputError, match="does not handle"):
        explainer.shap_values(X)
    with pytest.raises(rnnshap.InputError, match="background holds missing values"):
        rnnshap.DeepExplainer(model, _windows(6, 0, GAP))


# -- a clamp written as a masked assignment ----------------------------------------------------------------
MIN_GAMMA = 0.3


def _darts_gamma(raw: Tensor) -> Tensor:
    """darts' CauchyLikelihood._params_from_output: ``gamma[gamma < MIN] = MIN`` after a softplus."""
    gamma = nn.functional.softplus(raw)
    gamma[gamma < MIN_GAMMA] = MIN_GAMMA
    return gamma


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_masked_assignment_from_a_comparison_is_the_clamp_it_writes(dtype: torch.dtype) -> None:
    """``gamma[gamma < MIN] = MIN`` is ``gamma.clamp(min=MIN)``: additive, and the values of the clamp."""
    torch.manual_seed(8)
    first = nn.Linear(5, 3).to(dtype).eval()

    def assigned(x: Tensor) -> Tensor:
        return _darts_gamma(first(x))

    def _clamped(x: Tensor) -> Tensor:
        return nn.functional.softplus(first(x)).clamp(min=MIN_GAMMA)

    g = torch.Generator().manual_seed(9)
    background, X = torch.randn(8, 5, generator=g).to(dtype), torch.randn(4, 5, generator=g).to(dtype)
    values = _explain(Function(assigned), background, X)
    assert_additive(values, Function(assigned), X, background, dtype)
    clamped = _explain(Function(_clamped), background, X)
    assert relative_to_max(values, clamped) <= rounding_tol(dtype)  # (two rules, one function: rounding only)
    assert (torch.nn.functional.softplus(first(torch.cat([background, X]))) < MIN_GAMMA).any()  # the clamp acts


def test_masked_assignment_into_a_constant_buffer_is_refused_by_name() -> None:
    """``out = zeros; out[x > 0] = 1``: a step of x with constant branches, which has no rule: refused, not lost."""

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(5, 5)

        def forward(self, x: Tensor) -> Tensor:
            out = torch.zeros_like(x)
            out[self.head(x) > 0] = 1.0
            return out.sum(-1, keepdim=True) + x.sum(-1, keepdim=True)

    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"torch\.Tensor\.gt"):
        _explain(Step().to(F64), torch.randn(8, 5, dtype=F64), torch.randn(3, 5, dtype=F64))


# -- advice: a reduction is never advised an elementwise rule --------------------------------------------------------
REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "prod": lambda x: x.prod(-1, keepdim=True),
    "cumprod": lambda x: x.cumprod(-1),
    "matrix_norm": lambda x: torch.linalg.matrix_norm(x.reshape(-1, 2, 2)).reshape(-1, 1),
    "cdist": lambda x: torch.cdist(x[:, None], x[:, None]).reshape(-1, 1),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reductions_are_never_advised_an_elementwise_rule(reduction: str) -> None:
    model = Composite(lambda m, x: REDUCTIONS[reduction](m.first(x)).sum(-1, keepdim=True), first=nn.Linear(4, 4))
    with pytest.raises(rnnshap.UnsupportedOperationError) as info:
        rnnshap.DeepExplainer(model, torch.randn(4, 4)).shap_values(torch.randn(2, 4))
    message = str(info.value)
    assert "reduces its input-dependent operand" in message
    assert "Rescale()" not in message and "Shapley()" not in message
