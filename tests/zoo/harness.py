"""What every zoo test holds a library's model to: rnnshap's promise, checked from the outside.

For a wrapper ``f(*tensors) -> (N, k)`` around a library's own network module, and a background,
``rnnshap.DeepExplainer(f, background).shap_values(X)`` either

(a) is exact: Σφ over every input feature misses ``f(x) − mean_r f(r)`` by at most
    ``1e-5·max(1, |Δ|)`` in float32 and, on a ``.double()`` copy of the model, ``1e-10·max(1, |Δ|)``
    in float64, with both sides computed from the model's own outputs (``tests/conftest.py``); or
(b) is refused by the constructor, with :class:`rnnshap.UnsupportedOperationError` (or
    :class:`rnnshap.errors.ModelStateError`) naming the operation that has no exact rule.

A zoo entry says which one it expects (:class:`Spec`). An expected refusal fails as soon as the
refusal goes away (a rule landed: turn the entry into an exactness test), and a known bug is a
strict xfail, which fails as soon as the bug is fixed.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.errors import ModelStateError, UnsupportedOperationError

from ..conftest import assert_additive

Tensor = torch.Tensor


class AdditivityFailure(AssertionError):
    """The attributions do not add up within the tolerance (what a known-bug entry expects)."""


#: background and explained samples: small, the zoo checks exactness, not statistics
N_BACKGROUND, N_EXPLAINED = 4, 2


@dataclass
class Case:
    """A built model: the wrapper (in eval mode), its background and the samples to explain."""

    model: nn.Module
    background: list[Tensor]
    X: list[Tensor]
    #: the float64 copy, where ``model.double()`` is not one (a library that computes parts in
    #: float32 whatever its parameters' dtype says); None: a deep copy of ``model``, in float64
    model64: nn.Module | None = None


@dataclass
class Spec:
    """One zoo entry: how to build it and what rnnshap is expected to do with it.

    ``refused``: the name of the operation the constructor must refuse (``op`` of
    ``UnsupportedOperationError.ops``), ``None`` for an exact model; ``mentions``: what the error
    message must also name (the call that uses the refused operation). ``bug``: a known rnnshap bug
    that makes the exact check fail today (a strict xfail that tells when it is fixed).
    """

    build: Callable[[], Case]
    refused: str | None = None
    mentions: str | None = None
    bug: str | None = None
    #: an entry whose operations another entry of its zoo also runs: in the slow run only
    slow: bool = False


@dataclass
class Exactness:
    """The additivity errors measured, relative to ``max(1, |Δ|)``, and the float32 values."""

    error32: float
    error64: float
    values: list[np.ndarray]


def params(zoo: dict[str, Spec]) -> list[Any]:
    """``pytest.param`` per zoo entry, with a strict xfail on the entries with a known bug."""
    out = []
    for name, spec in zoo.items():
        marks = [] if spec.bug is None else [pytest.mark.xfail(strict=True, raises=AdditivityFailure, reason=spec.bug)]
        marks += [pytest.mark.slow] if spec.slow else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def check(spec: Spec) -> Any:
    """Build the entry and hold it to what it expects: an :class:`Exactness` for an exact entry,
    the error for a refused one."""
    case = spec.build()
    if spec.refused is not None:
        return assert_refused(case, spec.refused, spec.mentions)
    return assert_exact(case)


def _one_or_list(tensors: Sequence[Tensor]) -> Any:
    return list(tensors) if len(tensors) > 1 else tensors[0]


def explain(model: nn.Module, background: Sequence[Tensor], X: Sequence[Tensor], **kwargs: Any) -> list[np.ndarray]:
    """``shap_values`` as a list with one array per input, without rnnshap's own additivity check."""
    explainer = rnnshap.DeepExplainer(model, _one_or_list(background))
    values = explainer.shap_values(_one_or_list(X), check_additivity=False, **kwargs)
    return list(values) if isinstance(values, list) else [values]


def double(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Floating-point tensors as float64; integer tensors (token ids, lengths) as they are."""
    return [t.double() if t.is_floating_point() else t for t in tensors]


def assert_exact(case: Case) -> Exactness:
    """Additivity from the model's own outputs, float32 and then a float64 copy of the model.

    Raises :class:`AdditivityFailure` (an AssertionError) when the attributions do not add up."""
    model = case.model.eval()
    values = explain(model, case.background, case.X)
    error32 = _additive(values, model, case.X, case.background, torch.float32)
    model64 = (copy.deepcopy(model) if case.model64 is None else case.model64).double().eval()
    background64, X64 = double(case.background), double(case.X)
    values64 = explain(model64, background64, X64)
    error64 = _additive(values64, model64, X64, background64, torch.float64)
    return Exactness(error32, error64, values)


def _additive(values: list[np.ndarray], model: nn.Module, X: list[Tensor], background: list[Tensor], dtype: torch.dtype) -> float:
    try:
        return assert_additive(values, model, X, background, dtype)
    except AssertionError as error:
        raise AdditivityFailure(f"{dtype}: {error}") from None


def assert_refused(case: Case, op: str, mentions: str | None = None) -> UnsupportedOperationError:
    """The constructor refuses the model, naming ``op`` among the operations it has no rule for
    (and ``mentions`` somewhere in its message)."""
    try:
        rnnshap.DeepExplainer(case.model.eval(), _one_or_list(case.background))
    except UnsupportedOperationError as error:
        names = [name for name, _ in error.ops]
        assert op in names, f"refused, but for {names}, not {op!r}: {error}"
        assert mentions is None or mentions in str(error), f"the refusal does not mention {mentions!r}: {error}"
        return error
    except ModelStateError as error:
        assert op in str(error), f"refused as ModelStateError without naming {op!r}: {error}"
        return error  # type: ignore[return-value]
    pytest.fail(
        f"rnnshap no longer refuses {op!r}: a rule for it has landed. Make this zoo entry an exactness test "
        "(drop refused=...) and check its additivity."
    )


def assert_zero(values: np.ndarray, where: str) -> None:
    """Exactly 0 (not merely small): a property additivity cannot see."""
    nonzero = np.flatnonzero(values)
    assert nonzero.size == 0, f"{where}: {nonzero.size} attributions are not exactly 0 (largest {np.abs(values).max():.3g})"


def steps(T: int) -> list[int]:
    """The steps whose readouts a sequence wrapper returns, ``(N, 2)``: one in the middle, for
    :func:`assert_causal`, and the last (explaining every step's output would only cost time)."""
    return [T // 2 - 1, T - 1]


def assert_causal(phi: np.ndarray, T: int, name: str) -> None:
    """Output 0 (the readout at step ``steps(T)[0]``) gets exactly 0 from every later step.

    ``phi``: ``(N, T, ..., 2)`` shap values of a time-major input."""
    step = steps(T)[0]
    assert_zero(phi[:, step + 1 :, ..., 0], f"{name}: steps after {step} for the readout at step {step}")


# -- cost against one native forward + backward (benchmarks/bench_zoo.py) -------------------------------
def native_call(case: Case, per_output: bool = False) -> Callable[[], None]:
    """One forward + backward of the model on the tiled (sample, reference) pairs, with respect to
    the floating-point inputs (benchmarks/bench_recurrent.py's ``native``), or, for a model of
    token ids only, with respect to its parameters (the embedding's gradient, at least).

    The backward is of the outputs' sum, or with ``per_output`` of each of the model's k outputs
    (one forward and a batched backward of k, ``is_grads_batched``: what any gradient method pays
    to explain every output, as in ``benchmarks/bench_throughput.py``'s K-outputs floor; where
    torch cannot batch the model's backward, k backward passes in a loop)."""
    n_refs = case.background[0].shape[0]
    tiled = [x.repeat_interleave(n_refs, dim=0) for x in case.X]
    parameters = [p for p in case.model.parameters() if p.requires_grad]
    batched = [True]

    def call() -> None:
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tiled]
        wrt = [t for t in leaves if t.requires_grad] or parameters
        out = case.model(*leaves)
        if not per_output:
            torch.autograd.grad(out.sum(), wrt, allow_unused=True)
            return
        flat = out.reshape(out.shape[0], -1)
        eye = torch.eye(flat.shape[1], dtype=flat.dtype)[:, None, :].expand(flat.shape[1], *flat.shape)
        if batched[0]:
            try:
                # (the graph is kept: where torch cannot batch the backward, the loop below runs on it)
                torch.autograd.grad(flat, wrt, eye, is_grads_batched=True, allow_unused=True, retain_graph=True)
                return
            except RuntimeError:  # an operation of the backward that torch's vmap cannot batch
                batched[0] = False
        for j in range(flat.shape[1]):
            torch.autograd.grad(flat, wrt, eye[j], allow_unused=True, retain_graph=j < flat.shape[1] - 1)

    return call


def shap_call(case: Case) -> Callable[[], None]:
    """``shap_values`` in one block of pairs, the explainer built here (outside a timed region);
    without the additivity check, so that known-bug entries can be timed too."""
    pairs = case.X[0].shape[0] * case.background[0].shape[0]
    explainer = rnnshap.DeepExplainer(case.model.eval(), _one_or_list(case.background), batch_size=max(pairs, 2048))
    X = _one_or_list(case.X)
    return lambda: explainer.shap_values(X, check_additivity=False)


def median_seconds(calls: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall time of each call over ``repeats`` rounds, round-robin after one warm-up round
    (a slowdown of a shared machine hits them all alike)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
