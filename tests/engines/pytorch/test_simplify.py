"""A traced program made shorter before it runs (rnnshap/engines/pytorch/simplify.py): constants folded and chains of
views joined, the values of the graph as traced bit for bit, on its own inputs and on others of the same layout; what
must stay computed at every call (a value written into or returned) stays; inputs laid out otherwise are traced anew."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import rnnshap
from rnnshap.engines.cuda_graphs import same_bits
from rnnshap.engines.pytorch import simplify, traced

from .test_traced import FAMILIES, _data, _same

aten = torch.ops.aten


def _traced(f: Callable[..., Any], *inputs: torch.Tensor) -> torch.fx.GraphModule:
    with torch.no_grad():
        return make_fx(f, tracing_mode="real")(*inputs)


def _targets(graph: torch.fx.GraphModule) -> list[Any]:
    return [n.target for n in graph.graph.nodes if n.op == "call_function"]


def _simplified(f: Callable[..., Any], *inputs: torch.Tensor) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule, int]:
    graph = _traced(f, *inputs)
    shorter, left_out = simplify.simplified(graph, inputs)
    shorter.recompile()
    return graph, shorter, left_out


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
        h = torch.tanh(h[:, :2] @ first + h[:, 2:] @ second + WEIGHT.sum(1))
        h = torch.cat([h, h[:, :3]], 1)[:, :4]
    return [h]


def test_operations_on_constants_alone_run_once_and_the_program_reads_their_values() -> None:
    x = torch.randn(3, 4)
    graph, shorter, left_out = _simplified(_weights_at_every_step, x)
    assert left_out > 0 and len(shorter.graph.nodes) == len(graph.graph.nodes) - left_out
    assert aten.t.default in _targets(graph) and aten.t.default not in _targets(shorter)
    assert aten.sum.dim_IntList not in _targets(shorter)  # (the weight's sum: a constant, made once)
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


def test_folded_constants_take_no_more_new_memory_than_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simplify, "FOLDED_BYTES", 0)
    x = torch.randn(3, 4)
    graph, shorter, _ = _simplified(_weights_at_every_step, x)
    assert aten.t.default not in _targets(shorter)  # (a view of a constant takes none)
    assert aten.sum.dim_IntList in _targets(shorter)  # (a new tensor: over the budget, computed at every call)
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


def test_a_program_whose_inputs_lie_otherwise_is_traced_anew_with_their_values() -> None:
    """A program's views are joined on its inputs' layout: inputs of the same shapes laid out otherwise (here
    transposed) do not run it; the slot is traced again on them, and gives their values."""
    passes = traced.TracedPasses("trace")
    contiguous = torch.randn(4, 6)
    transposed = torch.randn(6, 4).t()  # (the same shape, other strides)

    def region(x: torch.Tensor) -> list[torch.Tensor]:
        return _views(x.t().contiguous().t())

    for _ in range(2):
        passes.run("slot", "version", None, region, [contiguous])
    (program,) = passes.programs.values()
    assert program.left_out > 0 and passes.path.startswith("traced:"), passes.path
    got = passes.run("slot", "version", None, region, [transposed])
    assert got is not None and all(same_bits(a, b) for a, b in zip(got, region(transposed), strict=True))
    (again,) = passes.programs.values()
    assert again is not program and again.layouts == simplify.layouts([transposed])


def test_a_cell_in_a_loops_program_leaves_out_a_fifth_of_its_operations_with_the_intercepted_values() -> None:
    """Each step of an ``LSTMCell`` loop splits and transposes the cell's weights and views its states: those steps'
    constants are folded and their chains of views joined, the intercepted values bit for bit."""
    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
    (kept,) = program.engine._traced.programs.values()  # type: ignore[attr-defined]
    assert kept.left_out >= 0.2 * (kept.nodes + kept.left_out), (kept.nodes, kept.left_out)
    assert f"{kept.left_out} fewer than traced" in program.pass_path
    other = _data(1)[1]
    assert np.array_equal(program.shap_values(other), intercepted.shap_values(other))


def test_a_shorter_program_that_gives_other_values_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shorter program is checked as the traced one is, on the inputs it was traced on: where its outputs are not
    the traced graph's bit for bit (here: one negated), the traced graph's program runs, and the path says nothing
    was left out."""

    def negated(graph: torch.fx.GraphModule, inputs: Any) -> tuple[torch.fx.GraphModule, int]:
        shorter, _ = simplify.simplified(graph, inputs)
        (output,) = [n for n in shorter.graph.nodes if n.op == "output"]
        first = output.args[0][0]
        with shorter.graph.inserting_before(output):
            flipped = shorter.graph.call_function(aten.neg.default, (first,))
        output.args = ([flipped, *output.args[0][1:]],)
        return shorter, 1

    monkeypatch.setattr(traced, "simplified", negated)
    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
    (kept,) = program.engine._traced.programs.values()  # type: ignore[attr-defined]
    assert kept.left_out == 0 and "fewer than traced" not in program.pass_path, program.pass_path
