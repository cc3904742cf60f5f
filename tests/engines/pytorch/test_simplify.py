"""A traced program made shorter before it runs (rnnshap/engines/pytorch/simplify.py): constants folded and chains of
views joined, the values of the graph as traced bit for bit, on its own inputs and on others of the same layout; what
must stay computed at every call (a value written into or returned, anything computed from a model's own tensors)
stays; inputs or weights that lie otherwise are traced anew, with nothing that depends on where they lie."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import rnnshap
from rnnshap.engines.cuda_graphs import same_bits
from rnnshap.engines.pytorch import simplify, traced
from rnnshap.engines.pytorch.tape import TapeEntry

from ...models.torch import Composite
from .test_traced import FAMILIES, F, T, _data, _same

aten = torch.ops.aten


def _traced(f: Callable[..., Any], *inputs: torch.Tensor) -> torch.fx.GraphModule:
    with torch.no_grad():
        return make_fx(f, tracing_mode="real")(*inputs)


def _targets(graph: torch.fx.GraphModule) -> list[Any]:
    return [n.target for n in graph.graph.nodes if n.op == "call_function"]


def _owned(*tensors: torch.Tensor) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def _simplified(
    f: Callable[..., Any], *inputs: torch.Tensor, owned: set[int] | None = None
) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule, int]:
    """``f`` traced, and made shorter as if the engine owned ``owned`` (by default ``WEIGHT``: a kept pass's tensor)."""
    graph = _traced(f, *inputs)
    shorter, _, _ = simplify.simplified(graph, inputs, _owned(WEIGHT) if owned is None else owned)
    shorter.recompile()
    return graph, shorter, len(graph.graph.nodes) - len(shorter.graph.nodes)


def _agree(graph: torch.fx.GraphModule, shorter: torch.fx.GraphModule, *inputs: torch.Tensor) -> None:
    with torch.no_grad():
        want, got = graph(*inputs), shorter(*inputs)
    assert len(want) == len(got) and all(same_bits(a, b) for a, b in zip(want, got, strict=True))


WEIGHT = torch.randn(5, 4)


def _weights_at_every_step(x: torch.Tensor) -> list[torch.Tensor]:
    """What a cell's call in a loop does at every step: its weight transposed and split, then used."""
    h = x
    for _ in range(3):
        first, second = WEIGHT.t().split([2, 2])
        h = torch.tanh(h[:, :2] @ first + h[:, 2:] @ second + WEIGHT[:, 0].exp())
        h = torch.cat([h, h[:, :3]], 1)[:, :4]
    return [h]


def test_operations_on_constants_alone_run_once_and_the_program_reads_their_values() -> None:
    x = torch.randn(3, 4)
    graph, shorter, left_out = _simplified(_weights_at_every_step, x)
    assert left_out > 0 and len(shorter.graph.nodes) == len(graph.graph.nodes) - left_out
    assert aten.t.default in _targets(graph) and aten.t.default not in _targets(shorter)
    assert aten.exp.default in _targets(graph) and aten.exp.default not in _targets(shorter)  # (a constant, made once)
    for seed in range(3):  # other inputs: the graph's values bit for bit
        _agree(graph, shorter, torch.randn(3, 4, generator=torch.Generator().manual_seed(seed)))


def _written_into(x: torch.Tensor) -> list[torch.Tensor]:
    scaled = WEIGHT * 2.0  # (a constant's value, which the program then writes into: made at every call)
    scaled[:3].add_(x.sum())
    return [scaled + 1.0]


def _returned(x: torch.Tensor) -> list[torch.Tensor]:
    return [WEIGHT * 2.0, (WEIGHT * 3.0)[1:], x + WEIGHT]


@pytest.mark.parametrize("f", [_written_into, _returned], ids=["written into", "returned"])
def test_a_constant_value_written_into_or_returned_is_made_at_every_call(f: Callable[..., Any]) -> None:
    """(The passes alone: the check of a program's outputs on the inputs it was traced on, which ``traced.py`` adds, a
    value carried from one call to the next passes at the first.)"""
    x = torch.randn(5, 4)
    graph, shorter, _ = _simplified(f, x)
    assert aten.mul.Tensor in _targets(shorter)
    for seed in range(3):  # (a folded value written into would carry each call's writes into the next)
        _agree(graph, shorter, torch.randn(5, 4, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        first, second = shorter(x), shorter(x)
    assert all(a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() for a, b in zip(first, second, strict=True))


def test_a_models_own_tensors_are_read_at_every_call_only_views_of_them_taken_once() -> None:
    """A constant the engine does not own (a model's parameter, which ``p.data`` may change unseen by a program's
    version) is folded through views alone: computed from, it is computed at every call, and a view of it reads what
    is written into it."""
    x = torch.randn(3, 4)
    graph, shorter, _ = _simplified(_weights_at_every_step, x, owned=set())
    assert aten.t.default not in _targets(shorter) and aten.exp.default in _targets(shorter)
    saved = WEIGHT.clone()
    try:
        WEIGHT.mul_(-0.5)  # (as a parameter written through .data: no version a program sees)
        _agree(graph, shorter, x)
    finally:
        WEIGHT.copy_(saved)


def test_folded_constants_take_no_more_new_memory_than_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simplify, "FOLDED_BYTES", 0)
    x = torch.randn(3, 4)
    graph, shorter, _ = _simplified(_weights_at_every_step, x)
    assert aten.t.default not in _targets(shorter)  # (a view of a constant takes none)
    assert aten.exp.default in _targets(shorter)  # (a new tensor: over the budget, computed at every call)
    _agree(graph, shorter, torch.randn(3, 4))


def _views(x: torch.Tensor) -> list[torch.Tensor]:
    y = x * 2.0
    picked = y.t().reshape(4, 3, 2)[1:].select(2, 1).unsqueeze(0)
    return [picked + 1.0, y[:, 1:].t()[0]]


def test_a_chain_of_views_is_one_view_of_its_first_tensor() -> None:
    x = torch.randn(6, 4)
    graph, shorter, left_out = _simplified(_views, x)
    assert left_out >= 3 and _targets(shorter).count(aten.as_strided.default) == 2
    for seed in range(3):
        _agree(graph, shorter, torch.randn(6, 4, generator=torch.Generator().manual_seed(seed)))


def _run(passes: traced.TracedPasses, region: Callable[..., Any], x: torch.Tensor) -> None:
    got = passes.run("slot", "version", None, region, [x])
    assert got is not None and all(same_bits(a, b) for a, b in zip(got, region(x), strict=True))


def test_inputs_that_lie_otherwise_run_intercepted_and_twice_in_a_row_are_traced_anew() -> None:
    """A program is made for how its inputs lie (``make_fx`` writes a reshape as a view where they allowed one; its
    views are joined on them): inputs of the same shapes laid out otherwise (here transposed) run the call
    intercepted; two calls in a row so drop the program, and the next is traced on them. Layouts that alternate keep
    the program (no trace at every call)."""
    passes = traced.TracedPasses("trace")
    contiguous = torch.randn(4, 6)
    transposed = torch.randn(6, 4).t()  # (the same shape, other strides)

    def region(x: torch.Tensor) -> list[torch.Tensor]:
        return _views(x.t().contiguous().t())

    passes.run("slot", "version", None, region, [contiguous])
    _run(passes, region, contiguous)
    (program,) = passes.programs.values()
    assert program.left_out > 0, passes.path
    said = "intercepted: its inputs or the model's tensors lie otherwise than when it was traced"
    for then in ("", " (traced again at the next call)"):
        assert passes.run("slot", "version", None, region, [transposed]) is None and passes.path == said + then
    assert "slot" not in passes.programs
    _run(passes, region, transposed)
    again = passes.programs["slot"]
    for x in [contiguous, transposed] * 3:
        got = passes.run("slot", "version", None, region, [x])
        assert (got is None) == (x is contiguous) and passes.programs["slot"] is again
        assert got is None or all(same_bits(a, b) for a, b in zip(got, region(x), strict=True))


def test_a_weight_that_lies_otherwise_is_traced_anew() -> None:
    """Where a model's tensor lies decides its views and what it computes into (a convolution's output takes its
    weight's memory format): a weight moved or laid out otherwise (``p.data`` replaced, as ``model.to`` and a
    channels-last layout do) runs the call intercepted, and the slot is traced anew, with that weight's values."""
    passes = traced.TracedPasses("trace")
    weight = torch.randn(4, 3, 3, 3)
    x = torch.randn(2, 3, 8, 8)

    def region(x: torch.Tensor) -> list[torch.Tensor]:
        out = torch.nn.functional.conv2d(x, weight)
        return [out.permute(0, 2, 3, 1)[:, 1:].reshape(2, -1)[:, ::2] + 1.0, weight.flatten(1).t()[0] * 2.0]

    passes.run("slot", "version", None, region, [x])
    _run(passes, region, x)
    (program,) = passes.programs.values()
    assert program.laid and program.left_out > 0
    weight.data = weight.data.contiguous(memory_format=torch.channels_last) * -1.0
    for _ in range(2):
        assert passes.run("slot", "version", None, region, [x]) is None
    _run(passes, region, x)
    assert passes.programs["slot"] is not program


def test_an_alias_the_operations_do_not_declare_keeps_a_constant_from_being_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folded value the program writes into through an alias its operations do not declare (``_unsafe_view``,
    taken for one here) would carry each call's writes into the next: the shorter program is given up, seen on the
    traced run, as a declared one keeps that value computed at every call."""

    def written(x: torch.Tensor) -> list[torch.Tensor]:
        y = aten._unsafe_view(WEIGHT * 2.0, [4, 5])
        y.masked_fill_(x > 0.5, 0.0)
        return [y + 1.0]

    x = torch.rand(4, 5)
    graph, shorter, _ = _simplified(written, x)
    assert aten.mul.Tensor in _targets(shorter)
    for seed in range(3):
        _agree(graph, shorter, torch.rand(4, 5, generator=torch.Generator().manual_seed(seed)))
    monkeypatch.setattr(simplify, "_UNMARKED_VIEWS", frozenset())
    graph = _traced(written, x)
    assert simplify.simplified(graph, [x], _owned(WEIGHT)) == (graph, 0, 0)


def test_a_parameter_changed_through_data_between_calls_gives_its_values() -> None:
    """``p.data`` written into or replaced changes neither a parameter's identity nor its version: a program reads the
    parameter at every call (views of it taken once read its memory; a replaced one lies elsewhere, and the slot is
    traced anew). The samples are alike in every feature, so the change (the weights' order reversed) moves neither
    the model's outputs nor the references', and nothing else would see it: the values move."""
    torch.manual_seed(0)
    model = Composite(lambda m, x: (x * m.scale.weight[0].exp()).sum(-1), scale=torch.nn.Linear(F, 1)).eval()
    background, X = torch.zeros(3, T, F), _data()[1][..., :1].expand(-1, -1, F).contiguous()
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        before = program.shap_values(X)
    assert program.pass_path.startswith("traced:"), program.pass_path
    for change in ("written", "replaced"):
        flipped = model.scale.weight.data.flip(1)
        if change == "written":
            model.scale.weight.data.copy_(flipped)
        else:
            model.scale.weight.data = flipped.clone()
        fresh = rnnshap.DeepExplainer(model, background, compile=False)
        got = program.shap_values(X)
        assert _same(got, fresh.shap_values(X)) and not _same(got, before), change
        before = got


def test_a_cell_in_a_loops_program_leaves_out_a_fifth_of_its_operations_with_the_intercepted_values() -> None:
    """Each step of an ``LSTMCell`` loop splits and transposes the cell's weights and views its states: those steps'
    constants are folded and their chains of views joined, the intercepted values bit for bit."""
    program, kept, intercepted = _loop_of_cells_traced()
    assert kept.left_out >= 0.2 * (kept.nodes + kept.left_out), (kept.nodes, kept.left_out)
    assert f"{kept.left_out} fewer than traced" in program.pass_path
    other = _data(1)[1]
    assert np.array_equal(program.shap_values(other), intercepted.shap_values(other))


def _loop_of_cells_traced() -> tuple[rnnshap.DeepExplainer, Any, rnnshap.DeepExplainer]:
    """An ``LSTMCell`` loop's explainer with ``compile="trace"`` after three calls, each the intercepted values bit for
    bit; its program, and the intercepted explainer."""
    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
    (kept,) = program.engine._traced.programs.values()  # type: ignore[attr-defined]
    return program, kept, intercepted


def test_a_shorter_program_that_gives_other_values_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shorter program is checked as the traced one is, on the inputs it was traced on: where its outputs are not
    the traced graph's bit for bit (here: one negated), the traced graph's program runs, and the path says nothing
    was left out."""

    def negated(graph: torch.fx.GraphModule, inputs: Any, owned: set[int]) -> tuple[torch.fx.GraphModule, int, int]:
        shorter, _, _ = simplify.simplified(graph, inputs, owned)
        (output,) = [n for n in shorter.graph.nodes if n.op == "output"]
        first = output.args[0][0]
        with shorter.graph.inserting_before(output):
            flipped = shorter.graph.call_function(aten.neg.default, (first,))
        output.args = ([flipped, *output.args[0][1:]],)
        return shorter, 1, 0

    monkeypatch.setattr(traced, "simplified", negated)
    program, kept, _ = _loop_of_cells_traced()
    assert kept.left_out == 0 and "fewer than traced" not in program.pass_path, program.pass_path


def test_a_layout_missed_then_a_check_missed_are_not_two_checks_missed_in_a_row() -> None:
    """A call whose inputs lie otherwise and a later one whose check answers otherwise (a host read kept as a guard)
    count apart: the program runs again at the next call like the traced ones (two of the same kind in a row drop it)."""
    passes = traced.TracedPasses("trace")

    def region(x: torch.Tensor) -> list[torch.Tensor]:
        y = x * 2.0
        return [y.t()[0] + 1.0] if bool(y.sum() > 0) else [y.t()[0] - 1.0]

    positive = torch.rand(4, 6) + 0.1
    passes.run("slot", "version", None, region, [positive])
    _run(passes, region, positive)
    program = passes.programs["slot"]
    assert passes.run("slot", "version", None, region, [(torch.rand(6, 4) + 0.1).t()]) is None  # (laid out otherwise)
    assert passes.run("slot", "version", None, region, [-positive]) is None  # (its check answers otherwise)
    _run(passes, region, positive)
    assert passes.programs["slot"] is program and passes.path.startswith("traced:") and not passes.untraceable


def test_a_kept_tensor_written_by_the_program_is_read_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A constant the engine keeps (a kept pass's tensor), read through one node and written through another (make_fx
    reads a constant through a node at each use): what is computed from it is computed at every call, from what the
    last call wrote, as the program made no shorter computes it (on the traced inputs the write gives its value
    again, so only later calls tell)."""

    def passes_and_region() -> tuple[traced.TracedPasses, list[TapeEntry], Callable[..., Any]]:
        kept = torch.zeros(4)

        def region(x: torch.Tensor) -> list[torch.Tensor]:
            y = x * kept.exp()
            kept.copy_(x)
            return [y]

        return traced.TracedPasses("trace"), [TapeEntry("key", "op", (0,), ((4,),), references=[kept])], region

    shorter, plain = passes_and_region(), passes_and_region()
    simplified = traced.simplified
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(4, generator=generator)
        outputs = []
        for (passes, holds, region), made in ((shorter, simplified), (plain, lambda graph, inputs, owned: (graph, 0, 0))):
            monkeypatch.setattr(traced, "simplified", made)
            got = passes.run("slot", "version", holds, region, [x])
            outputs.append(region(x) if got is None else got)  # (None: the intercepted pass, the region as it is)
        assert same_bits(outputs[0][0], outputs[1][0])
    assert shorter[0].path.startswith("traced:"), shorter[0].path
