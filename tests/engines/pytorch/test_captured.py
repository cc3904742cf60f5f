"""The pass captured once per input signature and run on pairs (``compile="capture"``, engines/pytorch/captured.py).

Its values are the intercepted pass's bit for bit (the same rules on the same operands, in the same order), call by
call; a model changed after capture, in any way its forward can read, is captured again or read anew, never run
stale; what the captured pass does not take yet runs the intercepted pass, names what it met, and gives its values;
and the process is left as it was found.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten

import rnnshap
from rnnshap.engines.pytorch import captured as captured_module
from rnnshap.rules import Shapley

from ...models.torch import Composite, Function
from ...rules import test_missing_values as missing
from . import test_stale_programs as stale
from .test_traced import FAMILIES, _data, _same

CAPTURED = "captured:"
DISTINCT = "its reference side on the block's distinct references"



@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_gives_the_intercepted_values_bit_for_bit(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    for seed in (1, 1, 2):  # (a new input of the same signature runs the same graph)
        X = _data(seed)[1]
        assert _same(captured.shap_values(X), intercepted.shap_values(X)), (family, captured.pass_path)
    # (both passes run the reference side on the block's distinct references: the same rows, the same kernels)
    assert captured.pass_path.startswith(f"{CAPTURED} the forward's graph run on the pairs, {DISTINCT}"), captured.pass_path


def test_a_new_input_signature_is_captured_anew() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, _ = _data()
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    for n in (1, 3, 2, 3):
        x = torch.randn(n, *background.shape[1:])
        assert _same(captured.shap_values(x), intercepted.shap_values(x)), n
        assert captured.pass_path.startswith(CAPTURED), captured.pass_path


def test_calls_of_many_sizes_stay_captured_each_with_the_intercepted_values() -> None:
    """The batch is a size of the captured graph: one graph for every number of samples and references (a graph per
    number would meet torch.compile's limit of eight graphs per function after the fourth size), the run on the
    distinct references alone included (the capture sees copies that require no gradient in both: torch.compile
    guards on it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    background = torch.randn(5, 4)
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    for n in range(1, 14):
        x = torch.randn(n, 4)
        assert _same(captured.shap_values(x), intercepted.shap_values(x)), n
        assert captured.pass_path.startswith(CAPTURED), (n, captured.pass_path)
    assert len(captured.engine._captured._graphs) == 1  # (the pairs' run and the references' alone: one graph)


@pytest.mark.parametrize("frozen", [False, True])
def test_reference_sides_are_recorded_as_values_without_a_graph_or_a_warning(frozen: bool) -> None:
    """The run on the distinct references takes the pairs' graph, its explained inputs requiring a gradient (a
    transformer layer's: torch's fused inference path, taken where nothing requires one, is no graph of rules): what
    it records is kept as values (no autograd graph held between calls), and compared with the pairs' sides without
    torch's warning about a tensor that requires a gradient read as a number. A frozen model is captured alike."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.TransformerEncoder(layer, 1), nn.Flatten(), nn.Linear(16 * 5, 2)).eval()
    model.requires_grad_(not frozen)
    background, x = torch.randn(4, 5, 16), torch.randn(3, 5, 16)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = captured.shap_values(x)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    assert _same(values, rnnshap.DeepExplainer(model, background, compile=False).shap_values(x))
    kept = [t for sides, _, _ in captured.engine._captured._kept.values() for t in tree_flatten(sides.recorded)[0]]
    assert kept and not any(isinstance(t, torch.Tensor) and t.requires_grad for t in kept)


def test_signatures_beyond_an_explainers_captures_run_intercepted_and_say_so() -> None:
    """Each activation the forward picks by a Python attribute is a graph of its own (a guard on the attribute)."""
    torch.manual_seed(0)
    acts = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "gelu": F.gelu}
    model = Composite(lambda m, x: m.out(acts[m.act](m.lin(x))), lin=nn.Linear(4, 8), out=nn.Linear(8, 2), act="tanh").eval()
    background, x = torch.randn(5, 4), torch.randn(3, 4)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    captured.engine._captured.captures = 3
    for act in acts:
        model.act = act
        assert _same(captured.shap_values(x), rnnshap.DeepExplainer(model, background, compile=False).shap_values(x)), act
    assert captured.pass_path.startswith("intercepted: a new input signature"), captured.pass_path
    assert "3 graphs" in captured.pass_path, captured.pass_path
    model.act = "tanh"
    assert _same(captured.shap_values(x), rnnshap.DeepExplainer(model, background, compile=False).shap_values(x))
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path  # (what was captured still runs)


_ACTS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def _activated(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear layer, the activation the model's ``act`` attribute names, and a linear head."""
    return m.out(_ACTS[m.act](m.lin(x.flatten(1))))


def _activated_class() -> Callable[..., nn.Module]:
    """A class of its own (no graph captured for it yet in this process) of models of :func:`_activated`."""
    kind = type("Activated", (Composite,), {})
    return lambda act="tanh": kind(_activated, lin=nn.Linear(20, 8), out=nn.Linear(8, 2), act=act).eval()


def test_another_explainer_of_a_model_of_the_same_class_runs_its_graphs_without_a_capture() -> None:
    """torch.compile keeps what it captured on the code it compiles, one for each model class: a second explainer, of
    the same model or of another instance of its class, runs the graphs captured for the first where their guards hold
    (a capture costs a hundred times a small model's pass), with its own values; an instance whose forward reads
    otherwise (another activation by its attribute) is captured for itself."""
    torch.manual_seed(0)
    background, X = _data()

    def captures(model: nn.Module) -> tuple[int, Any, str]:
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        explainer = rnnshap.DeepExplainer(model, background, compile="capture")
        values = explainer.shap_values(X)
        assert _same(values, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
        return torch._dynamo.utils.counters["stats"]["unique_graphs"] - before, values, explainer.pass_path

    _activated_model = _activated_class()
    first = _activated_model()
    made, values, path = captures(first)
    assert made > 0 and path.startswith(CAPTURED), path
    again, same, path = captures(first)
    assert again == 0 and _same(same, values) and path.startswith(CAPTURED), path
    other, values_other, path = captures(_activated_model())  # (other weights: the graph's inputs)
    assert other == 0 and not _same(values_other, values) and path.startswith(CAPTURED), path
    relu, _, path = captures(_activated_model("relu"))
    assert relu > 0 and path.startswith(CAPTURED), path


def test_an_explainer_whose_class_holds_as_many_graphs_as_its_limit_captures_its_own() -> None:
    """Where the graphs kept for a model's class are as many as an explainer captures (three here: other explainers'),
    its first call starts a new cache for the class and captures its graph; an explainer whose graph went with the old
    cache captures it again. Every call gives the intercepted values bit for bit."""
    torch.manual_seed(0)
    background, X = _data()
    made = _activated_class()
    explainers = {}
    for act in _ACTS:  # (tanh, relu, sigmoid fill the class's cache; gelu finds it full)
        model = made(act)
        explainers[act] = rnnshap.DeepExplainer(model, background, compile="capture")
        explainers[act].engine._captured.captures = 3
        values = explainers[act].shap_values(X)
        assert _same(values, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)), act
        assert explainers[act].pass_path.startswith(CAPTURED), (act, explainers[act].pass_path)
    tanh = explainers["tanh"]
    values = tanh.shap_values(X)
    assert tanh.engine._captured.captured == 2 and tanh.pass_path.startswith(CAPTURED), tanh.pass_path
    assert _same(values, rnnshap.DeepExplainer(tanh.engine.model, background, compile=False).shap_values(X))


def test_the_graphs_kept_for_a_class_hold_no_model_and_no_explainer() -> None:
    """What torch.compile keeps for a model class (graphs, guards) holds neither the model nor the explainer: both
    are freed when let go."""
    import gc
    import weakref

    torch.manual_seed(0)
    background, X = _data()
    model = _activated_class()()
    explainer = rnnshap.DeepExplainer(model, background, compile="capture")
    explainer.shap_values(X)
    assert explainer.pass_path.startswith(CAPTURED), explainer.pass_path
    held = weakref.ref(model), weakref.ref(explainer)
    del model, explainer
    gc.collect()
    assert all(ref() is None for ref in held)


def _captured_reader(host_reads: bool = False) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
    """test_stale_programs' model of every read a forward makes (its host reads off: capturable), its data, and an
    explainer of it on the captured pass."""
    torch.manual_seed(0)
    model = stale.Reader().eval()
    model.host_reads = host_reads
    background, X = stale._data()
    return model, background, X, rnnshap.DeepExplainer(model, background, compile="capture")


@pytest.mark.parametrize("change", stale.CHANGES)
def test_a_change_to_what_the_forward_reads_is_seen_by_the_next_call(change: str) -> None:
    """The changes a traced program must not miss (test_stale_programs.py), after the forward was captured: each call
    gives a fresh intercepted explainer's values on the model as it is now."""
    model, background, X, captured = _captured_reader(host_reads=change == "a tensor read through numpy() and tolist() replaced")
    for _ in range(2):
        captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED if not model.host_reads else "intercepted: torch.compile cannot")
    handle = stale.CHANGES[change](model)
    try:
        fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        for call in range(2):
            assert stale._close(captured.shap_values(X), fresh), (change, call, captured.pass_path)
        if change == "a rule registered":  # (for a module class, which the captured pass does not take yet)
            assert captured.pass_path.startswith("intercepted: a rule registered for the module class"), captured.pass_path
        elif not model.host_reads:
            assert captured.pass_path.startswith(CAPTURED), (change, captured.pass_path)
    finally:
        if isinstance(handle, rnnshap.rules.registry.RuleHandle):
            handle.remove()


def test_the_reference_side_is_kept_between_calls_and_recorded_again_where_the_models_outputs_on_it_move() -> None:
    """The reference side on a block's distinct references is kept for later calls; a change the parameters' versions
    do not show (a plain tensor attribute written in place) moves the model's own outputs on the references, and the
    next call records it again, with a fresh explainer's values."""
    torch.manual_seed(0)
    model = Composite(lambda m, x: m.head(torch.tanh(m.lstm(x)[0][:, -1] * m.scale)), lstm=nn.LSTM(4, 6, batch_first=True),
                      head=nn.Linear(6, 2), scale=torch.ones(6))  # fmt: skip
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    first = captured.shap_values(X)
    assert captured.pass_path.endswith(DISTINCT), captured.pass_path
    assert _same(captured.shap_values(X), first)
    assert captured.pass_path.endswith(f"{DISTINCT}, kept from an earlier call"), captured.pass_path
    model.scale.mul_(-2.0)
    assert _same(captured.shap_values(X), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    assert captured.pass_path.endswith(DISTINCT), captured.pass_path


#: comparisons of input-dependent values as the conditions of a where: gates (rules/gates.py), as the intercepted pass
#: runs them
GATED: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "torch.where": lambda m, x: m.head(torch.where(m.l(x) >= 0, m.l(x), 0.1 * m.l(x))),
    "masked_fill": lambda m, x: m.head(m.l(x).masked_fill(m.l(x) < 0, 0.0)),
    "Tensor.where": lambda m, x: m.head(m.l(x).where(m.l(x) >= 0, -m.l(x))),
    "a number first": lambda m, x: m.head(torch.where(0.1 <= m.l(x), m.l(x), torch.tanh(m.l(x)))),
}


@pytest.mark.parametrize("form", GATED)
def test_a_comparison_gating_a_where_is_captured_with_the_intercepted_values(form: str) -> None:
    torch.manual_seed(0)
    model = Composite(GATED[form], l=nn.Linear(4, 6), head=nn.Linear(6, 2))
    background, X = torch.randn(5, 4), torch.randn(3, 4)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    want = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    for _ in range(2):  # (the second call on the reference side kept from the first)
        assert _same(captured.shap_values(X), want), captured.pass_path
        assert captured.pass_path.startswith(CAPTURED), captured.pass_path


def test_a_comparisons_mask_used_otherwise_runs_the_intercepted_pass_and_says_so() -> None:
    """A mask used other than as a where's condition, cast to floating point, combined or moved (a masked assignment,
    which the intercepted pass takes as a masked_fill) is not taken yet (tests/rules/test_comparison_steps.py: those
    it takes)."""

    def clamped(m: Any, x: torch.Tensor) -> torch.Tensor:
        y = m.l(x)
        y[y < 0.1] = 0.1
        return m.head(y)

    torch.manual_seed(0)
    model = Composite(clamped, l=nn.Linear(4, 6), head=nn.Linear(6, 2))
    background, X = torch.randn(5, 4), torch.randn(3, 4)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    assert _same(captured.shap_values(X), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    why = "a comparison's mask used other than as a where's condition or cast to floating point"
    assert why in captured.pass_path, captured.pass_path


def _steps_written(m: Any, x: torch.Tensor) -> torch.Tensor:
    """A recurrence written step by step into a buffer of zeros (RWKV's and RecurrentGemma's loops do this)."""
    h, out = x.new_zeros(x.shape[0], 6), torch.zeros(x.shape[0], x.shape[1], 6)
    for t in range(x.shape[1]):
        h = torch.tanh(m.l(x[:, t]) + m.r(h))
        out[:, t] = h
    return m.head(out.mean(1))


def _steps_reading_the_last(m: Any, x: torch.Tensor) -> torch.Tensor:
    """Each step reads the step before it from the buffer (a view taken and read before the next write)."""
    out = torch.zeros(x.shape[0], x.shape[1], 6)
    for t in range(x.shape[1]):
        out[:, t] = torch.tanh(m.l(x[:, t]) + (0.5 * out[:, t - 1] if t else 0.0))
    return m.head(out[:, -1])


def _a_view_read_after_the_write(m: Any, x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], 6)
    view = out[:, 3:]  # (the write below reaches it: a copy would not)
    out[:, 3:] = torch.tanh(m.l(x[:, 0]))[:, :3]
    return m.head(out * view.sum(1, keepdim=True))


def _messages_summed(m: Any, x: torch.Tensor) -> torch.Tensor:
    """Each step's message summed into its destination step, as a graph network's message passing sums them: by
    ``scatter_add_``, ``index_add_`` and ``index_put_`` with ``accumulate``, into buffers the forward made."""
    messages = torch.tanh(m.l(x))  # (batch, steps, 6)
    to = torch.tensor([1, 0, 1, 4, 2])
    by_scatter = torch.zeros_like(messages).scatter_add_(1, to.view(1, -1, 1).expand_as(messages), messages)
    by_index = messages.new_zeros(messages.shape).index_add_(1, to, messages)
    rows = torch.arange(x.shape[0])[:, None]
    by_put = torch.zeros(messages.shape).index_put_((rows, to[None, :]), messages, accumulate=True)
    return m.head((by_scatter + 2.0 * by_index - by_put * 0.5).mean(1))


@pytest.mark.parametrize("forward", [_steps_written, _steps_reading_the_last, _a_view_read_after_the_write, _messages_summed])
def test_input_dependent_values_written_into_a_buffer_give_the_intercepted_values(forward: Callable[..., Any]) -> None:
    torch.manual_seed(0)
    model = Composite(forward, l=nn.Linear(3, 6), r=nn.Linear(6, 6), head=nn.Linear(6, 2))
    background, X = torch.randn(4, 5, 3), torch.randn(3, 5, 3)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    want = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    for _ in range(2):
        assert _same(captured.shap_values(X), want), captured.pass_path
    taken = forward is not _a_view_read_after_the_write
    assert captured.pass_path.startswith(CAPTURED if taken else "intercepted: the captured pass does not take setitem")


def test_reference_sides_the_graph_does_not_take_run_every_pair_with_the_same_values() -> None:
    """Kept reference sides that no longer fit the graph (their steps renamed here, as a graph that runs other steps
    would meet them) are dropped: the call and later ones run the reference side on every pair, the values unchanged;
    a new number of samples per block runs the same graph, with the sides kept."""
    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    want = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    assert _same(captured.shap_values(X), want)
    assert _same(captured.shap_values(X[:2]), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X[:2]))
    assert captured.pass_path.endswith(f"{DISTINCT}, kept from an earlier call"), captured.pass_path  # (the same graph)
    passes = captured.engine._captured  # type: ignore[attr-defined]
    for sides, _, _ in passes._kept.values():
        sides.names[:] = ["another step"] * len(sides.names)
    assert _same(captured.shap_values(X[:2]), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X[:2]))
    assert captured.pass_path == f"{CAPTURED} the forward's graph run on the pairs", captured.pass_path
    assert passes.distinct_off is not None and "not the step the references' graph ran there" in passes.distinct_off


@pytest.mark.parametrize("family", ["lstm", "gru, two layers, bidirectional", "elman"])
def test_a_fused_recurrent_layer_is_captured_once_per_number_of_pairs(family: str) -> None:
    """torch's fake evaluation walks a fused recurrent layer's steps 3-7x slower with the batch as a symbol: a model
    that holds one is captured per number of pairs, each graph with the intercepted values, its reference sides
    recorded again after a new graph."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    passes = captured.engine._captured  # type: ignore[attr-defined]
    # (the references' run, then each number of pairs: one sample's pairs are the references' rows, a graph already)
    for rows, graphs in [(3, 2), (2, 3), (3, 3), (1, 3)]:
        want = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X[:rows])
        assert _same(captured.shap_values(X[:rows]), want), rows
        assert captured.pass_path.startswith(f"{CAPTURED} the forward's graph run on the pairs"), rows
        assert len(passes._graphs) == graphs, (rows, len(passes._graphs))


def test_weights_written_in_place_are_read_at_the_next_call() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    captured.shap_values(X)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    assert _same(captured.shap_values(X), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path


def test_a_rule_registered_after_capture_is_the_one_applied() -> None:
    model, background, X, captured = _captured_reader()
    before = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    with rnnshap.register_rule(torch.tanh, Shapley()):
        fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        assert stale._close(captured.shap_values(X), fresh), captured.pass_path
    assert _same(captured.shap_values(X), before)


def _handed_back(model: nn.Module, why: str, data: tuple[Any, Any] | None = None) -> Any:
    """An explainer of ``model`` whose call the captured pass handed to the intercepted pass, saying ``why`` (the start
    of its path), with the intercepted values bit for bit."""
    background, X = data if data is not None else _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    values = captured.shap_values(X)
    assert captured.pass_path.startswith(why), captured.pass_path
    assert _same(values, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    return captured


def test_an_operation_not_taken_yet_runs_the_intercepted_pass_and_says_which() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 4), Function(lambda x: x[:, :2].relu_())).eval()
    captured = _handed_back(model, "intercepted: the captured pass does not take torch.Tensor.relu_")
    assert "written in place into a view" in captured.pass_path


def _written(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = m.a(x.flatten(1))
    h.relu_()
    h.mul_(2.0).add_(0.5)
    h *= 1.5
    h += 0.25
    g = F.leaky_relu(m.b(h), 0.1, True)
    g = torch.tanh_(g) + h  # (h read after its in-place writes: their value)
    return m.c(m.act(g))


def _batch_scaled(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(m.a(x.flatten(1)))
    h.mul_(x.shape[0])  # (a size of the graph: the batch, which the out-of-place form reads at each call)
    return m.c(h / x.shape[0])


#: in-place forms on input-dependent values, run out of place by their rules, the value written into taking the result
IN_PLACE = {
    "scaled by the batch size": lambda: Composite(_batch_scaled, a=nn.Linear(20, 6), c=nn.Linear(6, 3)),
    "relu module": lambda: nn.Sequential(nn.Flatten(), nn.Linear(20, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)),
    "methods and functions": lambda: Composite(
        _written, a=nn.Linear(20, 6), b=nn.Linear(6, 6), act=nn.ELU(inplace=True), c=nn.Linear(6, 3)
    ),
}


@pytest.mark.parametrize("case", list(IN_PLACE))
def test_in_place_forms_on_input_dependent_values_give_the_intercepted_values_bit_for_bit(case: str) -> None:
    torch.manual_seed(0)
    model = IN_PLACE[case]().eval()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    for seed in (1, 2):
        X = _data(seed)[1]
        assert _same(captured.shap_values(X), intercepted.shap_values(X)), captured.pass_path
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path


@pytest.mark.parametrize(
    "write",
    [
        lambda h: (h[:, :2].relu_(), h)[1],  # into a view of an input-dependent value
        lambda h: (h.view(-1).relu_(), h)[1],  # a view taken, then written into
        lambda h: (v := h.view(-1), h.relu_().mul_(2.0), v.reshape(h.shape))[2],  # a view read after a write into h
        lambda h: (torch.zeros_like(h).copy_(h) * 1.0),  # an input-dependent value written into a constant tensor
        lambda h: F.relu(F.dropout(h, 0.5, training=False), inplace=True) + h,  # (dropout in eval mode returns h itself)
    ],
    ids=["into a view", "through a view", "a view read after", "into a constant", "through dropout's identity"],
)
def test_writes_that_could_reach_another_value_run_the_intercepted_pass(write: Any) -> None:
    torch.manual_seed(0)
    model = Composite(lambda m, x: m.b(write(torch.tanh(m.a(x.flatten(1))))), a=nn.Linear(20, 4), b=nn.Linear(4, 2)).eval()
    _handed_back(model, "intercepted: the captured pass does not take")


def _marked_static(x: torch.Tensor) -> torch.Tensor:
    state = torch.zeros(3)
    torch._dynamo.mark_static_address(state)  # (transformers' Mamba cache does this; torch.compile refuses to trace it)
    return torch.tanh(x.flatten(1)[:, :3]) + state


def test_a_forward_torch_compile_refuses_to_trace_runs_the_intercepted_pass_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Function(_marked_static).eval()
    X = _data()[1]
    captured = _handed_back(model, "intercepted: torch.compile cannot capture the forward")
    assert "mark_static_address" in captured.pass_path
    values = captured.shap_values(X)
    tries: list[int] = []  # (not tried again: each try would cost a capture)
    compiled = captured_module._compiled_forward
    monkeypatch.setattr(captured_module, "_compiled_forward", lambda *args, **kw: tries.append(1) or compiled(*args, **kw))
    assert _same(captured.shap_values(X), values) and not tries
    assert captured.pass_path.startswith("intercepted: torch.compile cannot capture the forward"), captured.pass_path


def test_a_model_in_training_mode_is_captured_as_it_runs_and_again_in_eval_mode() -> None:
    """The training flag is Python state the forward may read (``if self.training``): captured as it is, and again
    where it changes."""
    torch.manual_seed(0)
    model = FAMILIES["lstm"]()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    for mode in (True, False, True):
        model.train(mode)
        assert _same(captured.shap_values(X), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
        assert captured.pass_path.startswith(CAPTURED), captured.pass_path


def test_explaining_leaves_the_model_and_torchs_settings_as_they_were() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = (torch._dynamo.config.allow_rnn, torch.is_grad_enabled(), torch.get_default_dtype())
    rnnshap.DeepExplainer(model, background, compile="capture").shap_values(X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (torch._dynamo.config.allow_rnn, torch.is_grad_enabled(), torch.get_default_dtype()) == settings


def test_values_add_up_to_the_models_outputs() -> None:
    torch.manual_seed(0)
    model = FAMILIES["gru, two layers, bidirectional"]().eval()
    background, X = _data()
    explainer = rnnshap.DeepExplainer(model, background, compile="capture")
    values = explainer.shap_values(X, check_additivity=False)
    with torch.no_grad():
        gap = (model(X) - model(background).mean(0)).double().numpy()
    total: Any = np.asarray(values).sum((1, 2))
    np.testing.assert_allclose(total, gap, rtol=0, atol=64 * float(np.finfo(np.float32).eps) * float(np.abs(gap).max() + 1))


def test_a_random_draw_in_the_forward_is_not_captured() -> None:
    """A draw that reaches the output makes the forward no function of its inputs: the intercepted pass refuses it by
    name, so the captured pass hands it over rather than attribute one draw. (The draw starts after the explainer was
    built and captured once, past the constructor's own probe for draws.)"""
    flags = {"noisy": False}
    noise = Function(lambda x: x + 0.1 * torch.randn_like(x) if flags["noisy"] else x)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 3), noise).eval()
    background, X = _data()
    explainer = rnnshap.DeepExplainer(model, background, compile="capture")
    explainer.shap_values(X)
    assert explainer.pass_path.startswith(CAPTURED), explainer.pass_path
    flags["noisy"] = True
    with pytest.raises(rnnshap.errors.RnnShapError, match="randn_like"):
        explainer.shap_values(X)
    assert explainer.pass_path.startswith("intercepted: the captured pass does not take torch.randn_like: a random draw")


def test_under_the_callers_no_grad_the_values_are_the_intercepted_ones() -> None:
    torch.manual_seed(0)
    model = FAMILIES["transformer encoder"]().eval()
    background, X = _data()
    with torch.no_grad():
        captured = rnnshap.DeepExplainer(model, background, compile="capture")
        assert _same(captured.shap_values(X), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path


def test_a_forward_that_changes_the_models_python_state_runs_the_intercepted_pass_at_every_call() -> None:
    """A forward that appends to a list of its module (a log of batch sizes) would be captured anew at every call (its
    guards read the list), past torch.compile's limit on captures: the explainer stops capturing, and its calls run the
    intercepted pass with its values."""

    def logged(m: Any, x: torch.Tensor) -> torch.Tensor:
        m.batches.append(x.shape[0])
        return torch.tanh(m.lin(x.flatten(1)))

    torch.manual_seed(0)
    model = Composite(logged, lin=nn.Linear(20, 3), batches=[]).eval()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    for _ in range(10):
        assert _same(captured.shap_values(X), intercepted.shap_values(X))
    assert captured.pass_path.startswith("intercepted: the forward changes the model's Python state"), captured.pass_path


def test_a_default_dtype_changed_after_capture_gives_a_fresh_explainers_values() -> None:
    torch.manual_seed(0)
    model = Composite(stale._made, lstm=nn.LSTM(4, 6, batch_first=True), head=nn.Linear(6, 2)).eval()
    background, X = stale._data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fresh = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
        assert stale._close(captured.shap_values(X), fresh), captured.pass_path
    finally:
        torch.set_default_dtype(before)


def test_a_model_moved_to_float64_after_capture_is_refused_by_name() -> None:
    model, background, X, captured = _captured_reader()
    captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    model.double()
    with pytest.raises(rnnshap.errors.InputError, match="float64"):
        captured.shap_values(X.double())


#: token ids moved before their embedding (tests/engines/pytorch/test_tokens.py checks the same moves against the
#: embedding's output moved instead)
TOKEN_MOVES = ["flip", "shift_right_with_bos", "transpose", "roll", "index_select", "gather", "masked_fill_then_cast"]


@pytest.mark.parametrize("move", TOKEN_MOVES)
def test_token_ids_are_followed_to_their_embedding_with_the_intercepted_values_bit_for_bit(move: str) -> None:
    from .test_tokens import MOVES, V, moved

    torch.manual_seed(0)
    model = moved(MOVES[move][0]).eval()
    g = torch.Generator().manual_seed(1)
    background, X = torch.randint(0, V, (3, 6), generator=g), torch.randint(0, V, (2, 6), generator=g)
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    for _ in range(2):
        got, want = captured.shap_values(X), intercepted.shap_values(X)
        assert _same(got, want), (move, np.abs(got - want).max(), captured.pass_path)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path


def test_token_ids_compared_with_a_value_run_the_intercepted_pass_and_say_so() -> None:
    """A mask made from the ids (``ids != pad``) is context the intercepted pass follows: not taken yet."""
    torch.manual_seed(0)
    model = Composite(lambda m, ids: m.out(m.gru(m.emb(ids) * (ids != 0).unsqueeze(-1))[0][:, -1]),
                      emb=nn.Embedding(9, 3), gru=nn.GRU(3, 4, batch_first=True), out=nn.Linear(4, 2)).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 9, (3, 6), generator=g), torch.randint(0, 9, (2, 6), generator=g)
    captured = _handed_back(model, "intercepted: the captured pass does not take", data)
    assert "on token ids" in captured.pass_path, captured.pass_path


def test_a_token_input_beside_a_float_input_and_a_mask_is_captured() -> None:
    """Token ids into an embedding, a float feature beside them and a boolean mask (context): the float input and the
    tokens attributed, the mask taken from the explained sample on both sides; a padded step gets exactly 0."""
    torch.manual_seed(0)

    def forward(m: nn.Module, ids: torch.Tensor, feature: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps = torch.cat([m.emb(ids), feature.unsqueeze(-1)], -1) * mask.unsqueeze(-1)
        return m.out(m.gru(steps)[0][:, -1])

    model = Composite(forward, emb=nn.Embedding(9, 3), gru=nn.GRU(4, 5, batch_first=True), out=nn.Linear(5, 2)).eval()
    g = torch.Generator().manual_seed(2)
    background = [torch.randint(0, 9, (4, 6), generator=g), torch.randn(4, 6, generator=g), torch.ones(4, 6, dtype=torch.bool)]
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 2] = False
    X = [torch.randint(0, 9, (3, 6), generator=g), torch.randn(3, 6, generator=g), mask]
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    got = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    want = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    assert _same(got, want)
    assert np.abs(got[0][:, 2]).max() == 0.0 and np.abs(got[1][:, 2]).max() == 0.0


def _reads_layout(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(m.a(x.flatten(1)))
    if h.is_meta or not h.is_floating_point():  # (read on the input side: the same on both sides of a pair)
        raise AssertionError("not reached")
    return m.b(h * float(h.size(-1)) / h.shape[-1])


def _shapes_of_values(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(m.a(x.flatten(1)))
    keep = torch.zeros_like(h, dtype=torch.bool)  # (a value of h's shape: constant)
    keep[:, 1:] = True
    gate = (torch.arange(4) % 2 == 0).expand_as(h)  # (h gives its shape only)
    return m.b(torch.where(keep & gate, h, torch.zeros_like(h)))


@pytest.mark.parametrize("forward", [_reads_layout, _shapes_of_values], ids=["layout read", "shape only"])
def test_what_reads_only_the_layout_of_an_input_dependent_value_is_captured(forward: Any) -> None:
    """Reads of an input-dependent value's layout (``x.shape``, ``x.is_meta``, ``x.size(1)``), tensors made like it
    (``zeros_like``) and shapes taken from it (``mask.expand_as(x)``): the same on both sides of a pair."""
    torch.manual_seed(0)
    model = Composite(forward, a=nn.Linear(20, 4), b=nn.Linear(4, 2)).eval()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    values = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    assert _same(values, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))


#: values of orderings whose indices the forward never reads
ORDER_VALUES = {
    "max over a dimension": lambda h: torch.max(h, 1)[0],
    "min's values": lambda h: h.min(dim=1).values,
    "topk": lambda h: h.topk(2, dim=1).values,
    "sort": lambda h: torch.sort(h, 1, descending=True)[0],
    "kthvalue": lambda h: h.kthvalue(2, dim=1)[0],
    "median over a dimension": lambda h: h.median(1).values,
    "amax, reshaped": lambda h: h.amax(1).reshape(h.shape[0], -1),  # (values alone: no indices)
    "max of two tensors": lambda h: torch.max(h, h.flip(1)),
}


@pytest.mark.parametrize("order", list(ORDER_VALUES))
def test_the_values_of_an_ordering_whose_indices_are_not_read_are_captured(order: str) -> None:
    torch.manual_seed(0)
    pick = ORDER_VALUES[order]
    model = Composite(lambda m, x: m.b(pick(torch.tanh(m.a(x)))).flatten(1), a=nn.Linear(4, 6), b=nn.Linear(6, 2))
    background, X = _data()
    captured = rnnshap.DeepExplainer(model.eval(), background, compile="capture")
    got = captured.shap_values(X)
    assert _same(got, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)), captured.pass_path
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path


#: selections by picked indices (each as ``f(m, u, h)``: ``u`` ordered, ``h`` selected from), and moves of them between
PICKS: dict[str, Callable[..., torch.Tensor]] = {
    "topk gathered": lambda m, u, h: h.gather(1, u.topk(2, 1).indices),
    "argmax gathered": lambda m, u, h: h.gather(1, u.argmax(1, keepdim=True)),
    "max's indices reshaped": lambda m, u, h: h.gather(1, u.max(1).indices.reshape(-1, 1)),
    "sorted and sliced": lambda m, u, h: h.gather(1, torch.sort(u, 1, descending=True).indices[:, :2]),
    "a table indexed": lambda m, u, h: m.table[u.argmax(1)] * h[:, :1],
    "an embedding": lambda m, u, h: F.embedding(u.argmin(1), m.table) + h[:, :3],
    "index_select": lambda m, u, h: torch.index_select(m.table, 0, u.argmax(1).long()),
    "routed": lambda m, u, h: (torch.softmax((top := u.topk(2, 1)).values, 1) * h.gather(1, top.indices)).sum(1, keepdim=True),
}


@pytest.mark.parametrize("pick", list(PICKS))
def test_selections_by_picked_indices_are_captured_with_the_intercepted_values_bit_for_bit(pick: str) -> None:
    """The indices a pick returns carry its handle (rules/selection.py) on the captured pass as on the intercepted one:
    a selection by them takes the Selection rule with the handle in the index's place, a move or an integer cast
    keeps it."""
    torch.manual_seed(0)
    how = PICKS[pick]
    model = Composite(lambda m, x: how(m, torch.tanh(m.a(x)), m.b(x)).flatten(1), a=nn.Linear(4, 6), b=nn.Linear(4, 6),
                      table=nn.Parameter(torch.randn(6, 3)))  # fmt: skip
    background, X = torch.randn(6, 4), torch.randn(3, 4)
    captured = rnnshap.DeepExplainer(model.eval(), background, compile="capture")
    for _ in range(2):  # (the second call takes the reference side kept from the first)
        got = captured.shap_values(X)
        assert _same(got, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)), captured.pass_path
        assert captured.pass_path.startswith(CAPTURED), captured.pass_path


@pytest.mark.parametrize(
    "how",
    [
        lambda m, u, h: m.table[m.group[u.argmax(1)]],  # (an expert's group, then the group's row)
        lambda m, u, h: m.group[u.topk(4, 1).indices].to(u.dtype) * h[:, :4],
    ],
    ids=["a table indexed by an integer table's picks", "an integer table's picks as numbers"],
)
def test_a_selection_of_integers_by_picked_indices_runs_the_intercepted_pass(how: Callable[..., torch.Tensor]) -> None:
    """Integers selected by picked indices (a buffer of each position's group) are indices again, without a handle of
    their own on the captured pass: the call runs the intercepted pass, with its values."""
    torch.manual_seed(0)
    model = Composite(lambda m, x: how(m, m.a(x), m.b(x)).flatten(1), a=nn.Linear(4, 6), b=nn.Linear(4, 6),
                      table=nn.Parameter(torch.randn(3, 3)), group=nn.Buffer(torch.tensor([2, 0, 1, 1, 0, 2])))  # fmt: skip
    background, X = torch.randn(6, 4), torch.randn(3, 4)
    captured = rnnshap.DeepExplainer(model.eval(), background, compile="capture")
    assert _same(captured.shap_values(X), rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    assert captured.pass_path.startswith("intercepted"), captured.pass_path


def test_picked_indices_used_as_numbers_run_the_intercepted_pass_and_say_so() -> None:
    """Arithmetic on picked indices (their handles' values, on the intercepted pass) is not taken by the captured pass
    yet: the call runs intercepted, with its values, and ``pass_path`` names the operation."""
    torch.manual_seed(0)
    model = Composite(lambda m, x: m.a(x).argmax(1, keepdim=True).to(x.dtype) * x[:, :1], a=nn.Linear(4, 6))
    background, X = torch.randn(6, 4), torch.randn(3, 4)
    captured = rnnshap.DeepExplainer(model.eval(), background, compile="capture")
    got = captured.shap_values(X)
    assert _same(got, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    assert captured.pass_path.startswith("intercepted: the captured pass does not take"), captured.pass_path
    assert "argmax" in captured.pass_path or ".to" in captured.pass_path, captured.pass_path


def test_a_graph_run_otherwise_than_the_model_runs_is_never_answered_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph's outputs on both sides are checked against the model's own forward of the samples and references: a
    plan that ran the graph otherwise than eager torch runs it (here made to miss that dropout in eval mode returns its
    operand itself, so that a write into its result is a write into the operand) runs the intercepted pass from then
    on, with its values, and says why."""
    from rnnshap.engines.pytorch import captured as module

    monkeypatch.setattr(module, "_ALIASING", module._ALIASING - {"dropout"})
    torch.manual_seed(0)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(m.a(x.flatten(1)))
        return m.b(F.relu(F.dropout(h, 0.5, training=False), inplace=True) + h)

    model = Composite(forward, a=nn.Linear(20, 4), b=nn.Linear(4, 2)).eval()
    _handed_back(model, "intercepted: the captured graph's outputs are not the model's own")


#: what a forward with token ids and in-place forms reads, changed after capture, each moving the values (module-level
#: state is put back; rules registered after capture: test_a_rule_registered_after_capture_is_the_one_applied)
TOKEN_SETTINGS = {"scale": 1.0}


def _tokens_in_place(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    h = m.emb(ids.flip(1)) * m.config["gain"] * TOKEN_SETTINGS["scale"]
    h = m.act(m.lin(m.gru(h)[0][:, -1]))  # (in place into a new tensor, not into the view [:, -1])
    h.mul_(m.factor)
    return m.out(h)


TOKEN_CHANGES: dict[str, Callable[[nn.Module], Any]] = {
    "weights written in place": lambda m: m.emb.weight.data.mul_(-2.0),
    "an embedding replaced": lambda m: setattr(m, "emb", nn.Embedding(9, 3)),
    "a value in a config dict": lambda m: m.config.__setitem__("gain", -3.0),
    "a module-level dict": lambda m: TOKEN_SETTINGS.__setitem__("scale", 0.25),
    "a number attribute": lambda m: setattr(m, "factor", -1.5),
    "an in-place activation swapped for another": lambda m: setattr(m, "act", nn.LeakyReLU(0.3, inplace=True)),
    "an activation swapped": lambda m: setattr(m, "act", nn.Tanh()),
    "a hook added": lambda m: m.gru.register_forward_hook(lambda mod, i, o: (o[0] * 0.5, o[1])),
    "moved to float64": lambda m: m.double(),
}


@pytest.mark.parametrize("recurrent", [True, False], ids=["gru: a graph per number of pairs", "one graph for every batch"])
@pytest.mark.parametrize("change", TOKEN_CHANGES)
def test_tokens_and_in_place_forms_follow_every_change_the_forward_can_read(change: str, recurrent: bool) -> None:
    torch.manual_seed(0)
    plain = Composite(lambda m, h: (torch.tanh(m.lin(h)), None), lin=nn.Linear(3, 4))
    mixer = nn.GRU(3, 4, batch_first=True) if recurrent else plain
    model = Composite(_tokens_in_place, emb=nn.Embedding(9, 3), gru=mixer, lin=nn.Linear(4, 4), act=nn.ReLU(inplace=True),
                      out=nn.Linear(4, 2), config={"gain": 2.0}, factor=0.5).eval()  # fmt: skip
    g = torch.Generator().manual_seed(3)
    background, X = torch.randint(0, 9, (4, 6), generator=g), torch.randint(0, 9, (2, 6), generator=g)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    handle = TOKEN_CHANGES[change](model)
    try:
        if change == "moved to float64":
            with pytest.raises(rnnshap.errors.InputError, match="build a new explainer"):
                captured.shap_values(X)
            return
        fresh = rnnshap.DeepExplainer(model, background, compile=False)
        for _ in range(2):
            assert stale._close(captured.shap_values(X), fresh.shap_values(X)), (change, captured.pass_path)
        with torch.no_grad():
            assert np.allclose(captured.expected_value, model(background).mean(0).numpy(), rtol=1e-5, atol=1e-6)
    finally:
        TOKEN_SETTINGS["scale"] = 1.0
        if hasattr(handle, "remove"):
            handle.remove()
        elif hasattr(handle, "__exit__"):
            handle.__exit__(None, None, None)


#: models that mask missing values themselves (tests/rules/test_missing_values.py): the scalers of TiRex, Chronos and
#: MOMENT into a network, and a nansum over the observed entries
MISSING = {
    "tirex": missing.tirex_scale,
    "chronos": missing.chronos_scale,
    "moment": missing.moment_scale,
    "nansum": lambda x: torch.nansum(x, -1, keepdim=True) - x,
}


def _masked(scale: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """The window scaled, its missing entries filled with 0, into a network."""
    return Composite(lambda m, x: m.out(torch.tanh(m.hidden(torch.nan_to_num(scale(x), nan=0.0)))),
                     hidden=nn.Linear(missing.L, 6), out=nn.Linear(6, 2))  # fmt: skip


@pytest.mark.parametrize("case", list(MISSING))
def test_missing_values_the_model_masks_are_captured_with_the_intercepted_values(case: str) -> None:
    """Windows whose first steps are missing (NaN) on both sides of every pair: the multiplier rules' backward stops
    0 · NaN in the captured pass as in the intercepted one, and the missing steps get exactly 0."""
    torch.manual_seed(0)
    model = _masked(MISSING[case]).double().eval()
    background, X = missing._windows(4, 0, gap=missing.GAP), missing._windows(3, 1, gap=missing.GAP)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    got = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    assert _same(got, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    values = np.asarray(got)  # (samples, steps, outputs)
    assert np.all(values[:, : missing.GAP] == 0.0) and np.isfinite(values).all() and np.abs(values).max() > 0


def test_missing_values_the_model_does_not_handle_are_an_input_error_on_the_captured_pass() -> None:
    model = nn.Sequential(nn.Linear(missing.L, 3), nn.Tanh()).double().eval()
    captured = rnnshap.DeepExplainer(model, missing._windows(4, 0), compile="capture")
    with pytest.raises(rnnshap.InputError, match="does not handle: its output is NaN for row 1"):
        captured.shap_values(torch.cat([missing._windows(1, 1), missing._windows(1, 2, gap=2)]))
    assert captured.pass_path.startswith("intercepted: missing values (NaN) reached"), captured.pass_path
    X = missing._windows(2, 1)
    assert _same(captured.shap_values(X), rnnshap.DeepExplainer(model, missing._windows(4, 0), compile=False).shap_values(X))
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path  # (captured again: the error was the input's)


def _missing_as_a_feature(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The window filled, and where it is missing as a feature of its own (``isnan`` cast to float, negated, joined)."""
    seen = torch.isnan(x).logical_not().float()
    return m.out(torch.tanh(m.hidden(torch.cat([torch.nan_to_num(x, nan=0.0), seen], -1))))


def test_a_missing_value_mask_used_as_a_feature_is_captured_where_both_sides_miss_alike() -> None:
    """``isnan(x)`` answers alike on both sides of every pair where the gaps are alike: a constant of the explained
    function, however the model uses it; where they differ the intercepted pass refuses it by name."""
    torch.manual_seed(0)
    model = Composite(_missing_as_a_feature, hidden=nn.Linear(2 * missing.L, 6), out=nn.Linear(6, 2)).double().eval()
    background, X = missing._windows(4, 0, gap=missing.GAP), missing._windows(3, 1, gap=missing.GAP)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    got = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    assert _same(got, intercepted.shap_values(X))
    assert np.all(np.asarray(got)[:, : missing.GAP] == 0.0)
    other = missing._windows(2, 2, gap=missing.GAP + 1)  # (a gap one step longer than the background's)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="isnan") as refused:
        captured.shap_values(other)
    with pytest.raises(type(refused.value)) as intercepted_refusal:
        intercepted.shap_values(other)
    assert str(refused.value) == str(intercepted_refusal.value)


def _calendar(m: nn.Module, x: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
    """A float sequence and an integer calendar index per step, cast to float and joined inside the model."""
    return m.out(m.lstm(torch.cat([x, day.unsqueeze(-1).float()], -1))[0][:, -1])


@pytest.mark.parametrize("use", ["double", "to", "calendar"])
def test_integer_inputs_cast_to_floating_point_are_captured_as_numbers(use: str) -> None:
    """An integer input cast to floating point inside the model (a count, a calendar index) is attributed as a number at
    its cast, each position its own, with the intercepted values bit for bit."""
    from .test_tokens import NUMBER_USES, counts

    torch.manual_seed(6)
    g = torch.Generator().manual_seed(3)
    if use == "calendar":
        model: nn.Module = Composite(_calendar, lstm=nn.LSTM(3, 4, batch_first=True), out=nn.Linear(4, 1)).eval()
        background = [torch.randn(4, 5, 2, generator=g), torch.randint(0, 7, (4, 5), generator=g)]
        X = [torch.randn(3, 5, 2, generator=g), torch.randint(0, 7, (3, 5), generator=g)]
    else:
        model = counts(NUMBER_USES[use]).double().eval()
        background, X = torch.randint(0, 9, (5, 5), generator=g), torch.randint(0, 9, (3, 5), generator=g)  # type: ignore[assignment]
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    for _ in range(2):
        got = captured.shap_values(X)
        assert captured.pass_path.startswith(CAPTURED), captured.pass_path
        assert _same(got, intercepted.shap_values(X))
    numbers = got[1] if use == "calendar" else got
    assert np.abs(np.asarray(numbers)).max() > 0


def _scaled_by_days(m: nn.Module, x: torch.Tensor, day: torch.Tensor) -> torch.Tensor:
    """An inverse root mark (rsqrt of a mean square) met by integers without a cast: the product with the days is no
    longer the normalization's, and x times it is a product of two input-dependent operands."""
    scale = torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5)
    return m.lin(torch.tanh(x * (scale * day)))


@pytest.mark.parametrize("use", ["arithmetic", "true_division", "joined_to_floats", "calendar", "scaled by days"])
def test_integers_that_meet_floats_without_a_cast_are_cast_as_torch_promotes_them(use: str) -> None:
    """Type promotion (``ids * 0.5``, a ``cat`` of integers with floats) makes an integer input a number where it meets
    floats: cast to the operation's dtype there and attributed at that cast, the intercepted values bit for bit."""
    from .test_tokens import NUMBER_USES, calendar, counts

    torch.manual_seed(6)
    g = torch.Generator().manual_seed(3)
    if use == "calendar":  # (a float32 sequence joined with int64 days: the days are cast to float32)
        model: nn.Module = calendar().eval()
        background = [torch.randn(4, 5, 2, generator=g), torch.randint(0, 7, (4, 5), generator=g)]
        X = [torch.randn(3, 5, 2, generator=g), torch.randint(0, 7, (3, 5), generator=g)]
    elif use == "scaled by days":
        model = Composite(_scaled_by_days, lin=nn.Linear(5, 1)).double().eval()
        background = [torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randint(1, 7, (4, 1), generator=g)]
        X = [torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randint(1, 7, (2, 1), generator=g)]
    else:
        model = counts(NUMBER_USES[use]).double().eval()
        background, X = torch.randint(0, 9, (5, 5), generator=g), torch.randint(0, 9, (3, 5), generator=g)  # type: ignore[assignment]
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    got = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    assert _same(got, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    assert np.abs(np.asarray(got[1] if use in ("calendar", "scaled by days") else got)).max() > 0


def test_integer_arithmetic_before_the_cast_runs_the_intercepted_pass_and_says_so() -> None:
    """Integer arithmetic on an integer input before its cast to floating point is not taken yet."""
    from .test_tokens import counts

    torch.manual_seed(6)
    model = counts(lambda x: (x * 2 + 1).double()).double().eval()
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 9, (5, 5), generator=g), torch.randint(0, 9, (3, 5), generator=g)
    captured = _handed_back(model, "intercepted: the captured pass does not take", data)
    assert "an integer input used as a number" in captured.pass_path, captured.pass_path


def _spectral(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.rfft(m.a(x.flatten(1)), dim=-1)  # (a Fourier transform and complex views: linear)
    product = spectrum * torch.conj(torch.fft.rfft(torch.tanh(m.b(x.flatten(1))), dim=-1))  # (two spectra: bilinear)
    parts = [torch.fft.irfft(product, n=6, dim=-1), spectrum.abs(), spectrum.imag,
             torch.view_as_real(torch.tanh(spectrum * 0.3)).flatten(1)]  # fmt: skip
    return m.c(torch.cat(parts, -1))


def test_complex_values_are_captured_with_the_intercepted_values_bit_for_bit() -> None:
    """A spectrum, its parts (``.imag``), a product of two spectra, a magnitude and an analytic function of complex values
    (rules/spectral.py) on the captured pass: the intercepted pass's values bit for bit; a nonlinear operation without a
    rule for complex values (``angle``) is refused by name as the intercepted pass refuses it."""
    torch.manual_seed(0)
    model = Composite(_spectral, a=nn.Linear(20, 6), b=nn.Linear(20, 6), c=nn.Linear(6 + 4 + 4 + 8, 2)).double().eval()
    background, X = torch.randn(4, 20, dtype=torch.float64), torch.randn(3, 20, dtype=torch.float64)
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    got = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    assert _same(got, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
    angle = Function(lambda x: torch.fft.rfft(x.flatten(1), dim=-1).angle())
    with pytest.raises(rnnshap.UnsupportedOperationError, match="angle"):
        rnnshap.DeepExplainer(angle, background, compile="capture").shap_values(X)


def _broadcast(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(torch.tanh(m.a(x.flatten(1)))[:, None, :], m.b)  # (batch, 3, 6): each its own operand
    return m.c((a * b).sum(1))


def test_tensors_broadcast_together_are_captured_with_the_intercepted_values_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = Composite(_broadcast, a=nn.Linear(20, 6), b=nn.Parameter(torch.randn(3, 1)), c=nn.Linear(6, 2)).eval()
    background, X = _data()
    captured = rnnshap.DeepExplainer(model, background, compile="capture")
    got = captured.shap_values(X)
    assert captured.pass_path.startswith(CAPTURED), captured.pass_path
    assert _same(got, rnnshap.DeepExplainer(model, background, compile=False).shap_values(X))
