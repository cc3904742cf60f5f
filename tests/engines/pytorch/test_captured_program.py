"""A captured graph's run on pairs and its backward written as one program (engines/pytorch/captured_program.py).

A program gives the plan's values bit for bit (the same aten operations in the same order), reads the model's
parameters and the kept reference sides at every call, is never run for a model changed in a way its forward can
read (the capture's guards capture it again), and is not written where a rule reads a value on the host: that
signature keeps running through the plan, with its values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...models.torch import Composite
from . import test_stale_programs as stale
from .test_traced import FAMILIES, _data, _same

PROGRAM = "as one program with its backward"


def _writing(explainer: rnnshap.DeepExplainer, after: int = 1) -> rnnshap.DeepExplainer:
    """``explainer`` with its captured pass writing a signature's program once the plan ran it ``after`` times."""
    explainer.engine._captured.write_after = after  # type: ignore[attr-defined]
    return explainer


#: families whose program make_fx writes with other aten operations than the plan runs eagerly (a product of
#: attention's projections as a batched one, where the fake tensors' strides fold it otherwise): their values within
#: this many ulps of each output's scale (measured: 1.2), the others bit for bit
ROUNDED = {"transformer encoder": 4}


def _within_ulps(got: np.ndarray, want: np.ndarray, ulps: int) -> bool:
    scale = np.abs(want).reshape(-1, want.shape[-1]).max(0)
    gap = np.abs(got - want).reshape(-1, want.shape[-1]).max(0)
    return bool((gap <= ulps * np.finfo(np.float32).eps * scale).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_program_gives_the_plans_values_bit_for_bit(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    background, _ = _data()
    planned = _writing(rnnshap.DeepExplainer(model, background, compile="capture"), after=10**9)
    written = _writing(rnnshap.DeepExplainer(model, background, compile="capture"))
    for seed in (1, 2, 3):  # (the plan's run, then the program, written at that call, then run again on new values)
        X = _data(seed)[1]
        got, want = written.shap_values(X), planned.shap_values(X)
        same = _within_ulps(got, want, ROUNDED[family]) if family in ROUNDED else _same(got, want)
        assert same, (family, seed, written.pass_path)
        assert PROGRAM not in planned.pass_path
    assert PROGRAM in written.pass_path, written.pass_path


def test_a_program_is_written_only_once_its_signature_ran_through_the_plan_as_often_as_asked() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    explainer = _writing(rnnshap.DeepExplainer(model, background, compile="capture"), after=3)
    paths = []
    for _ in range(5):
        explainer.shap_values(X)
        paths.append(PROGRAM in explainer.pass_path)
    assert paths == [False, False, False, True, True]
    explainer.shap_values(X[:2])  # (another signature: the plan, counted apart)
    assert PROGRAM not in explainer.pass_path


def test_weights_written_in_place_after_the_program_is_written_are_read_at_the_next_call() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    explainer = _program_written(model, background, X)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-1.5)
    fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    assert _same(explainer.shap_values(X), fresh), explainer.pass_path


@pytest.mark.parametrize("change", [c for c in stale.CHANGES if "numpy" not in c])
def test_a_change_to_what_the_forward_reads_after_the_program_is_written_is_seen(change: str) -> None:
    torch.manual_seed(0)
    model = stale.Reader().eval()
    model.host_reads = False
    background, X = stale._data()
    explainer = _program_written(model, background, X)
    handle = stale.CHANGES[change](model)
    try:
        fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        for call in range(3):
            assert stale._close(explainer.shap_values(X), fresh), (change, call, explainer.pass_path)
    finally:
        if isinstance(handle, rnnshap.rules.registry.RuleHandle):
            handle.remove()


def _fills_missing(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.head(torch.nan_to_num(x, nan=0.0).flatten(1))


def test_a_signature_whose_rules_read_values_keeps_running_through_the_plan_with_its_values() -> None:
    """``nan_to_num``'s rule reads whether the pairs hold NaN alike on both sides: no program holds that answer."""
    torch.manual_seed(0)
    model = Composite(_fills_missing, head=nn.Linear(12, 2)).eval()
    background = torch.randn(4, 3, 4)
    X = torch.randn(2, 3, 4)
    X[:, 1, 2] = background[:, 1, 2] = float("nan")
    explainer = _writing(rnnshap.DeepExplainer(model, background, compile="capture"))
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    for _ in range(3):
        got = explainer.shap_values(X)
        assert explainer.pass_path.startswith("captured:") and PROGRAM not in explainer.pass_path, explainer.pass_path
        assert _same(got, intercepted.shap_values(X))
    assert np.all(got[:, 1, 2] == 0.0)  # (the missing entry, filled alike on both sides)


def test_writing_a_program_leaves_torchs_settings_and_the_model_as_they_were() -> None:
    torch.manual_seed(0)
    model = FAMILIES["transformer encoder"]().eval()
    background, X = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad, default = torch.is_grad_enabled(), torch.get_default_dtype()
    _program_written(model, background, X)
    assert torch.is_grad_enabled() == grad and torch.get_default_dtype() == default and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_program_written_before_anything_else_asked_for_autograds_engine_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The formulas' gradient probes autograd's engine once a process, on real tensors, also when that first happens
    while a program is written on fake ones."""
    from rnnshap.formulas import torch_ops

    torch.manual_seed(0)
    model = FAMILIES["convolution, relu, max-pool"]().eval()
    background, X = _data()
    explainer = _writing(rnnshap.DeepExplainer(model, background, compile="capture"))
    explainer.shap_values(X)
    monkeypatch.setattr(torch_ops, "_ENGINE", None)
    planned = explainer.shap_values(X)
    assert PROGRAM in explainer.pass_path, explainer.pass_path
    assert _same(explainer.shap_values(X), planned)


def _held(explainer: Any) -> list[Any]:
    """What each graph plan of ``explainer``'s captured pass holds for its call signatures."""
    return [h for plan in explainer.engine._captured._plans.values() for h in plan.programs._held.values()]


def test_a_program_slower_than_the_plan_hands_its_signature_back_to_the_plan_and_says_so() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    explainer = _writing(rnnshap.DeepExplainer(model, background, compile="capture"))
    planned = explainer.shap_values(X)
    explainer.shap_values(X)
    (written,) = _held(explainer)
    written.planned = 0.0  # (as if the plan had answered at once: no program beats it)
    paths = []
    for _ in range(6):
        assert _same(explainer.shap_values(X), planned)
        paths.append(PROGRAM in explainer.pass_path)
    assert paths[0] and not paths[-1], paths
    assert "not as one program: its program ran slower than the plan" in explainer.pass_path, explainer.pass_path


def test_a_program_that_fails_on_the_pairs_hands_its_signature_back_to_the_plan_with_its_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(A view the fake tensors' strides allowed, which the real ones do not, fails so.)"""
    from rnnshap.engines.pytorch import captured_program

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("view size is not compatible with input tensor's size and stride")

    torch.manual_seed(0)
    model = FAMILIES["gru, two layers, bidirectional"]().eval()
    background, X = _data()
    explainer = _writing(rnnshap.DeepExplainer(model, background, compile="capture"))
    planned = explainer.shap_values(X)
    written = captured_program._write
    monkeypatch.setattr(captured_program, "_write", lambda *a: _with_program(written(*a), failing))
    for _ in range(2):
        assert _same(explainer.shap_values(X), planned)
        assert explainer.pass_path.startswith("captured:"), explainer.pass_path
    assert "not as one program: its program fails on the pairs (RuntimeError: view size" in explainer.pass_path


def _with_program(written: Any, program: Any) -> Any:
    written.program = program
    return written


def _second_first(m: nn.Module, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # (the graph meets b before a; c only where asked)
    return m.head(torch.tanh(b.flatten(1)) * 2.0 + a.flatten(1) + m.weight * c.flatten(1))


@pytest.mark.parametrize("reads_c", [True, False])
def test_a_programs_gradients_go_to_the_inputs_they_belong_to_in_the_models_order(reads_c: bool) -> None:
    """Dynamo orders a graph's inputs by first use and leaves out one it does not read: the program's gradients are
    still each input's, and an input the graph does not read keeps its signature on the plan (exactly 0)."""
    torch.manual_seed(0)
    model = Composite(_second_first, head=nn.Linear(12, 2), weight=nn.Parameter(torch.tensor(1.0 if reads_c else 0.0)))
    if not reads_c:
        model.fn = lambda m, a, b, c: m.head(torch.tanh(b.flatten(1)) * 2.0 + a.flatten(1))
    background = [torch.randn(5, 3, 4) for _ in range(3)]
    X = [torch.randn(2, 3, 4) for _ in range(3)]
    explainer = _writing(rnnshap.DeepExplainer(model.eval(), background, compile="capture"))
    planned = explainer.shap_values(X)
    for _ in range(2):
        got = explainer.shap_values(X)
        assert all(np.array_equal(g, p) for g, p in zip(got, planned, strict=True))
    assert (PROGRAM in explainer.pass_path) == reads_c, explainer.pass_path
    if not reads_c:
        assert np.all(got[2] == 0.0) and "an explained input the captured graph does not read" in explainer.pass_path


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_programs_are_written_by_default_on_the_devices_where_they_pay(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU a program's operations cost what the plan's Python costs (benchmarks/bench_dispatch.py): none is
    written by default; on a CUDA device one is, once its signature ran WRITE_AFTER times through the plan."""
    from rnnshap.engines.pytorch import captured

    if device == "cuda" and not torch.cuda.is_available():
        monkeypatch.setattr(captured, "WRITTEN_ON", frozenset({"cpu"}))  # (the CPU in the device's place)
        device = "cpu"
    monkeypatch.setattr(captured, "WRITE_AFTER", 2)
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval().to(device)
    background, X = (t.to(device) for t in _data())
    explainer = rnnshap.DeepExplainer(model, background, compile="capture")
    written = [PROGRAM in (explainer.shap_values(X), explainer.pass_path)[1] for _ in range(4)]
    assert written == ([False, False, True, True] if device in captured.WRITTEN_ON else [False] * 4), written


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family", FAMILIES)
def test_on_a_cuda_device_a_program_is_replayed_as_one_cuda_graph_with_the_plans_values(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval().cuda()
    background, _ = (t.cuda() for t in _data())
    planned = _writing(rnnshap.DeepExplainer(model, background, compile="capture"), after=10**9)
    written = _writing(rnnshap.DeepExplainer(model, background, compile="capture"), after=2)
    for seed in (1, 2, 3, 4):
        X = _data(seed)[1].cuda()
        got, want = written.shap_values(X), planned.shap_values(X)
        assert _within_ulps(got, want, ROUNDED.get(family, 0)), (family, seed, written.pass_path)
    assert PROGRAM in written.pass_path, written.pass_path
    assert any(getattr(h, "replayed", None) is not None for h in _held(written)), _held(written)


def _program_written(model: nn.Module, background: torch.Tensor, X: torch.Tensor) -> Any:
    """An explainer of ``model`` whose captured pass has written the program of the call on ``X``."""
    explainer = _writing(rnnshap.DeepExplainer(model, background, compile="capture"))
    for _ in range(3):
        explainer.shap_values(X)
    assert PROGRAM in explainer.pass_path, explainer.pass_path
    return explainer


def _written_lstm() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Any]:
    """An LSTM head, its data, and an explainer whose captured pass has written the call's program."""
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    return model, background, X, _program_written(model, background, X)


def test_the_training_flag_changed_after_the_program_is_written_is_seen() -> None:
    model, background, X, explainer = _written_lstm()
    for mode in (True, False, True, False):
        model.train(mode)
        assert _same(explainer.shap_values(X), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))


def test_a_default_dtype_changed_after_the_program_is_written_gives_a_fresh_explainers_values() -> None:
    torch.manual_seed(0)
    model = Composite(stale._made, lstm=nn.LSTM(4, 6, batch_first=True), head=nn.Linear(6, 2)).eval()
    background, X = stale._data()
    explainer = _program_written(model, background, X)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        for _ in range(2):
            assert stale._close(explainer.shap_values(X), fresh), explainer.pass_path
    finally:
        torch.set_default_dtype(before)


def test_a_model_moved_to_float64_after_the_program_is_written_is_refused_by_name() -> None:
    model, _, X, explainer = _written_lstm()
    model.double()
    with pytest.raises(rnnshap.errors.InputError, match="float64"):
        explainer.shap_values(X.double())
