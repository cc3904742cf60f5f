"""A captured graph's run on pairs and its backward as one program, written once per call signature.

The plan of a captured graph (captured.py) decides in Python, node by node, what each operation's rule does; run on
the pairs it calls those rules again at every call. Once a call signature (the shapes, strides, dtypes and devices of
the graph's inputs and of the references, the pairs' grid, the outputs explained, the settings the rules read) has run
through the plan and given an answer often enough to pay for writing it (:data:`WRITE_AFTER`), its next call writes the
plan's run together with the backward of the explained outputs as one graph of aten operations
(``torch.fx.experimental.proxy_tensor.make_fx`` on fake tensors) and runs that graph from then on, without the plan's
Python, as long as it runs no slower than the plan: the same values bit for bit where make_fx writes each operation as
the plan runs it, else within the rounding of the operations it writes instead (an attention's products folded
otherwise by the fake tensors' strides: about one ulp of an output's scale).

A program holds no value it was written on: it is written on fake tensors, which have shapes but no values, so a rule
that reads a value on the host (a check of the rows, a missing value's test) cannot be written into one, and its
signature keeps running through the plan. Every tensor it reads comes in as an input at every call: the model's
parameters and buffers (the captured graph's own inputs, read as they are now), the pairs, the references and the
reference sides kept from an earlier call. The Python state the forward read is guarded by the capture (a guard that
fails captures a new graph, with a plan and programs of its own); rules registered or removed make the plan anew; the
settings the rules read (how matrix products round, the recurrences' CUDA graphs and kernels) are part of the
signature. A program that fails on the pairs (a view the fake tensors' strides allowed) hands its signature back to
the plan, the model's state put back first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_flatten, tree_unflatten

from ...rules.base import PairGrid
from ...rules.elementwise import missing_values_state
from .gradients import chosen_gradients

Tensor = torch.Tensor

# (below, ``plan`` is a captured graph's ``GraphPlan`` and ``call`` its ``_Call`` on pairs, both of captured.py, which
# imports this module)


@dataclass
class _Written:
    """A signature's program: the graph, where its outputs' parts lie, and how its runs compare with the plan's."""

    program: fx.GraphModule
    explained: int  # (the explained output's place among the graph's)
    replayed: Any  # (on a CUDA device: the program as a CUDA graph, where it replays the program's values bit for bit)
    spec: Any  # (the captured graph's output structure)
    outputs: int  # (how many tensors the captured graph gives)
    grads: int  # (how many gradients follow the explained output's reference side)
    planned: float = float("inf")  # (the plan's fastest call of the signature, in seconds)
    best: float = float("inf")  # (the program's fastest, its first aside: it warms what it runs)
    runs: int = 0


@dataclass
class _Seen:
    """A signature that ran through the plan and gave an answer: the explained output's place among the graph's, how
    many times it ran so, and its fastest call in seconds."""

    explained: int
    runs: int = 0
    best: float = float("inf")


#: a signature's program is written once the plan has run it this many times: about what writing it takes (make_fx on
#: fake tensors runs the plan with Python around every operation: 100-150 times a run through the plan, measured for
#: an ``LSTMCell`` loop on the CPU), as a ski rental buys once the rent paid reaches the price
WRITE_AFTER = 100

#: the devices whose calls write programs by default: on a CUDA device a program is replayed as one CUDA graph (every
#: kernel launched by one call); on the CPU a program's operations, each called through torch's dispatcher, cost what
#: the plan's Python costs (measured: 0.8-1.2x the plan's call on nine models of benchmarks/bench_dispatch.py)
WRITTEN_ON = frozenset({"cuda"})

#: a program is kept once it has run this many times (its first aside) no slower than the plan's fastest call of its
#: signature; else the signature runs through the plan from then on
TRIED_IN = 3


class Programs:
    """One graph plan's programs, by call signature: a signature the plan ran ``write_after`` times is written at its
    next call, and kept unless it runs slower than the plan."""

    def __init__(self, write_after: int | None = None) -> None:
        #: None: none written (the captured pass sets it by the device: WRITE_AFTER on those of WRITTEN_ON)
        self.write_after = write_after
        self._held: dict[tuple[Any, ...], _Seen | _Written | str] = {}

    @staticmethod
    def signature(args: tuple[Any, ...], call: Any) -> tuple[Any, ...] | None:
        """What a program is written for; None where the call is not one a program takes (token inputs, a reference
        side being recorded or verified)."""
        sides = call.sides
        if call.tokens or call.columns is None or (sides is not None and (sides.recorded is None or sides.verifying)):
            return None
        missing = missing_values_state()
        recorded = None if sides is None else _layout(sides.recorded) + (sides.repeats, tuple(sides.names))
        return (
            _layout(list(args)),
            _layout(sorted(call.references.items())),
            call.grid.samples, call.grid.references, call.grid.deferred is None,
            tuple(call.columns.shape), recorded, missing is not None and missing.seen, _settings(),
        )  # fmt: skip

    def took(self, key: tuple[Any, ...], explained: int, seconds: float, program: bool) -> None:
        """A call of the signature ``key`` gave an answer in ``seconds`` (its explained output the graph's
        ``explained``-th), through its ``program`` or the plan: a program slower than the plan is dropped."""
        held = self._held.setdefault(key, _Seen(explained))
        if isinstance(held, _Seen) and not program:
            held.runs, held.best = held.runs + 1, min(held.best, seconds)
        elif isinstance(held, _Written) and program:
            held.runs += 1
            if held.runs > 1:  # (the first run warms the program's operations)
                held.best = min(held.best, seconds)
            if held.runs > TRIED_IN and held.best > held.planned:
                self._held[key] = (
                    f"its program ran slower than the plan ({1e3 * held.best:.3g} ms against {1e3 * held.planned:.3g} ms)"
                )

    def run(self, plan: Any, args: tuple[Any, ...], call: Any, key: tuple[Any, ...] | None) -> Any | None:
        """The graph's outputs on the pairs from the signature's program (its gradients and reference side set on
        ``call``), written now where the plan has run the signature ``write_after`` times; None where it runs through
        the plan."""
        held = self._held.get(key) if key is not None else None
        if isinstance(held, _Seen) and self.write_after is not None and held.runs >= self.write_after:
            planned = held.best
            try:
                held = self._held[key] = _write(plan, args, call, held.explained)  # type: ignore[index]
            except Exception as error:  # noqa: BLE001 (a value read on the host, an operation make_fx cannot write: the plan)
                self._held[key] = f"it cannot be written as a program ({_said(error)})"  # type: ignore[index]
                return None
            held.planned = planned
        if not isinstance(held, _Written):
            return None
        try:
            with torch.no_grad():
                results = (held.replayed or held.program)(*_program_inputs(args, call))
        except Exception as error:  # noqa: BLE001 (a view the fake tensors' strides allowed and the real ones do not)
            self._held[key] = f"its program fails on the pairs ({_said(error)})"  # type: ignore[index]
            call.restore()  # (what it wrote into the model's buffers before it failed)
            return None
        outputs = results[: held.outputs]
        reference = results[held.outputs]
        call.grads = list(results[held.outputs + 1 : held.outputs + 1 + held.grads])
        if call.grid.deferred is not None:
            call.grid.deferred.extend(results[held.outputs + 1 + held.grads :])
        call.outputs = {id(outputs[held.explained]): reference}
        return tree_unflatten(list(outputs), held.spec)

    def why_not(self, key: tuple[Any, ...] | None) -> str | None:
        """Why the signature ``key`` runs through the plan rather than as a program (None where it is one, or waits)."""
        held = self._held.get(key) if key is not None else None
        return held if isinstance(held, str) else None


def _settings() -> tuple[Any, ...]:
    """The process's settings the rules read as they run (how matrix products round; the recurrences' CUDA graphs and
    kernels): a program keeps what they were when it was written."""
    from ...engines import cuda_graphs
    from ...recurrent import persistent

    return (
        torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.is_autocast_enabled("cpu"),
        torch.is_autocast_enabled("cuda"), cuda_graphs.REPLAY, persistent.MODE,
    )  # fmt: skip


def _said(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _layout(values: Any) -> tuple[Any, ...]:
    """The shapes, strides, dtypes and devices of the tensors in ``values`` (what a rule or make_fx may decide by: a
    reshape written as a view or a copy), and the other leaves as they read."""
    leaves, spec = tree_flatten(values)
    return (
        spec,
        *(
            (tuple(v.shape), v.stride(), v.dtype, v.device, v.requires_grad) if isinstance(v, Tensor) else (type(v), repr(v))
            for v in leaves
        ),
    )


def _program_inputs(args: tuple[Any, ...], call: Any) -> list[Tensor]:
    """The tensors a program reads: the graph's tensor inputs, the references, the kept reference sides, the columns (a
    graph's other inputs, the sizes of a graph captured for any batch, are the signature's: the program's constants)."""
    references = [r for _, r in sorted(call.references.items())]
    recorded = [] if call.sides is None else [t for t in tree_flatten(call.sides.recorded)[0] if isinstance(t, Tensor)]
    assert call.columns is not None
    return [a.detach() for a in args if isinstance(a, Tensor)] + references + recorded + [call.columns]


def _write(plan: Any, args: tuple[Any, ...], call: Any, output: int) -> _Written:
    """The plan's run on the pairs of ``call`` and the backward of its explained output, as one program."""
    positions = sorted(call.references)
    # the explained inputs' places among the graph's (dynamo orders them by first use, and leaves out one not read),
    # in the order of the model's inputs, as the engine takes their gradients
    placeholders = [step for step in plan.steps if step.node.op == "placeholder"]
    placed = {step.position: i for i, step in enumerate(placeholders) if step.kind == "input"}
    explained = sorted(set(positions) - set(call.tokens))
    if sorted(placed) != explained:
        raise TypeError("an explained input the captured graph does not read")
    attributed = [placed[position] for position in explained]
    sides = call.sides
    recorded_leaves, recorded_spec = tree_flatten(sides.recorded) if sides is not None else ([], None)
    tensor_at = [i for i, v in enumerate(recorded_leaves) if isinstance(v, Tensor)]
    deferred = call.grid.deferred is not None
    shape: dict[str, Any] = {}

    def pass_and_backward(*tensors: Tensor) -> list[Tensor]:
        given = iter(tensors)
        graph_args = [next(given) if isinstance(a, Tensor) else a for a in args]
        for i in attributed:
            graph_args[i] = graph_args[i].detach().requires_grad_(True)
        at = sum(isinstance(a, Tensor) for a in args)
        references = dict(zip(positions, tensors[at : at + len(positions)], strict=True))
        at += len(positions)
        recorded = None
        if sides is not None:
            leaves = list(recorded_leaves)
            for i, t in zip(tensor_at, tensors[at : at + len(tensor_at)], strict=True):
                leaves[i] = t
            at += len(tensor_at)
            assert recorded_spec is not None
            recorded = tree_unflatten(leaves, recorded_spec)
        columns = tensors[at]
        grid = PairGrid(call.grid.samples, call.grid.references, deferred=[] if deferred else None)
        inner = call.like(references, grid, recorded)
        with torch.enable_grad():
            out = plan.run(tuple(graph_args), inner)
            outputs, shape["spec"] = tree_flatten(out)
            if not all(isinstance(o, Tensor) for o in outputs):
                raise TypeError("a captured graph that gives more than tensors")
            chosen = outputs[output]
            assert inner.outputs is not None
            reference = inner.outputs[id(chosen)]
            grads, _ = chosen_gradients(chosen, columns, [graph_args[i] for i in attributed], [])
        shape["outputs"], shape["grads"] = len(outputs), len(grads)
        return [o.detach() for o in outputs] + [reference.detach()] + grads + (grid.deferred or [])

    # (a tensor made before the program that it would hold is refused by the fake tensors; those it holds are
    # constants its rules made from Python numbers while it was written)
    inputs = _program_inputs(args, call)
    program = make_fx(pass_and_backward, tracing_mode="fake")(*inputs)
    return _Written(program, output, _replayed(program, inputs), shape["spec"], shape["outputs"], shape["grads"])


def _replayed(program: fx.GraphModule, inputs: list[Tensor]) -> Any:
    """On a CUDA device, ``program`` captured as a CUDA graph (engines/cuda_graphs.py), where its replay gives the
    program's own outputs bit for bit; else None (the program runs itself)."""
    from ..cuda_graphs import Replayed, cuda_graphs_wanted, same_bits

    if inputs[0].device.type != "cuda" or not cuda_graphs_wanted():
        return None
    try:
        replayed = Replayed(program, inputs)
        with torch.no_grad():
            got, want = replayed(*inputs), program(*inputs)
    except Exception:  # noqa: BLE001 (an operation that waits on the device or copies to the host: not captured)
        return None
    return replayed if len(got) == len(want) and all(same_bits(a, b) for a, b in zip(got, want, strict=True)) else None

