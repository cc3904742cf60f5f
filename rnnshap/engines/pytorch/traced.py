"""The input pass traced once and run as one program (``DeepExplainer(..., compile="trace" | True)``).

The engine's input pass (the model through the rules, then one batched backward) is traced with ``make_fx`` into
a graph of aten operations: the rules' operations and autograd's backward alike, as they ran. A later call with
the same shapes runs that graph as a straight-line program (``"trace"``: the same operations, the same values bit
for bit; its code calls torch's Python bindings of the operations, :func:`_bound`), or the graph compiled by
``torch.compile`` (``True``: inductor fuses the rules' elementwise work; other last bits, see docs/performance.md).

A program is only as good as the Python decisions baked into it, so each value the pass read on the host while it
was traced (a check's ``bool(t)``, ``torch.equal``: the rows' checks, the missing-value checks) becomes a guard: the
program computes the same tensor again and compares it with the value read then, and the engine uses the program's
result only when every guard holds (one host read, after the pass). Where one does not, the call runs the pass as
before (intercepted), which decides anew. The formulas' own value tests (``surely_*``, which only skip work that
gives the same values) answer unread while tracing, as on an accelerator, so no guard hangs on the data's values.
An operation whose output's shape depends on values (``nonzero``, boolean indexing) is not traced: the pass runs
intercepted, and :attr:`TracedPasses.path` says why.

On a CUDA device a ``"trace"`` program is then captured as one CUDA graph and replayed (:class:`..cuda_graphs.Replayed`): the same
kernels, launched by one call in place of one each from Python, which is what bounds a recurrent layer's steps there
(a few small kernels a step). It is kept only where its replay gives the program's outputs bit for bit and runs
faster; else the program runs itself, and the path says why. ``rnnshap.engines.cuda_graphs.REPLAY = False`` leaves it out.

``compile="auto"`` (the default on a CUDA device, and on the CPU for a Python loop of recurrent cells: :data:`CELL_LOOP`)
traces a slot only once its intercepted passes have taken about what tracing it would (:data:`TRACE_IN_CALLS` of
them), as a ski rental buys once the rent paid reaches the price: a few calls never pay for a trace, and many calls
pay at most about twice what the best choice made in advance would have. It keeps the program only where it runs
faster than the intercepted pass did.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ...formulas.torch_ops import values_unread
from ...rules.base import held_per_device
from ..cuda_graphs import Replayed, cuda_graphs_wanted, same_bits
from .simplify import constant, layouts, placements, simplified, storages
from .tape import TapeEntry

Tensor = torch.Tensor
aten = torch.ops.aten

#: the values ``compile=`` takes

#: every PyTorch explainer runs its input passes as traced programs, traced at the first call of a version (not the
#: second), where ``compile=False`` would intercept them: how the test suite runs its exactness tests on the traced
#: path (``pytest --trace-every-pass``, tests/conftest.py)
EVERY_PASS = False


#: host reads whose value becomes a guard
_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default}
#: operations whose output's shape depends on the values: a program would run them on other values with the shapes
#: of the traced ones
_SHAPED_BY_VALUES = {
    aten.nonzero.default, aten.masked_select.default, aten.unique_consecutive.default, aten._unique2.default,
    aten.unique_dim.default, aten.bincount.default, aten.repeat_interleave.Tensor, aten.argwhere.default,
}  # fmt: skip
#: operations that draw from a generator (torch's tag for them also marks attention kernels that take a dropout rate)
_DRAWS = frozenset({
    "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "bernoulli", "bernoulli_",
    "normal", "normal_", "uniform_", "multinomial", "exponential_", "geometric_", "cauchy_", "log_normal_", "random_",
    "poisson", "binomial", "native_dropout", "rrelu_with_noise", "_standard_gamma", "_sample_dirichlet",
})  # fmt: skip


class _Untraceable(Exception):
    """The pass cannot be run as a program: the reason, for :attr:`TracedPasses.path`."""


class NotThisCall(Exception):
    """The pass did not trace this call, for a reason the intercepted pass settles (a check it deferred did not hold:
    it runs again reading each at once, as later calls do): traced at the next call, not marked untraceable."""


@dataclass
class _Guard:
    tensor: Tensor
    value: Any
    site: str


def _site() -> str:
    """The innermost frame of rnnshap's own code on the stack (where a host read was made)."""
    frames = [f for f in traceback.extract_stack() if "/rnnshap/" in f.filename and not f.filename.endswith("traced.py")]
    if not frames:
        return "the model's forward()"
    f = frames[-1]
    return f"{f.filename.rsplit('/rnnshap/', 1)[-1]}:{f.lineno} ({f.name})"


class _Guarding(TorchDispatchMode):
    """Under ``make_fx``: each host read of a traced value answered with the real value and kept as a guard; an
    operation whose output's shape depends on values refused (:class:`_Untraceable`)."""

    def __init__(self) -> None:
        super().__init__()
        self.guards: list[_Guard] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

        kwargs = kwargs or {}
        if func in _READS or func is aten.equal.default:
            with disable_proxy_modes_tracing():
                value = func(*args, **kwargs)
            if func is aten.equal.default:
                a, b = args
                if a.shape == b.shape and a.dtype == b.dtype:  # (else False from the shapes alone)
                    self.guards.append(_Guard(aten.all.default(aten.eq.Tensor(a, b)), value, _site()))
            else:
                self.guards.append(_Guard(args[0], value, _site()))
            return value
        if func in _SHAPED_BY_VALUES or (func is aten.index.Tensor and _boolean_index(args[1])):
            raise _Untraceable(f"the pass runs {func.name()} at {_site()}, whose output's shape depends on the values")
        if func.overloadpacket.__name__ in _DRAWS:  # (the intercepted pass puts torch's generators back after it)
            raise _Untraceable(f"the pass draws random numbers ({func.name()} at {_site()}), which a program would draw anew")
        return func(*args, **kwargs)


def _boolean_index(indices: Sequence[Any]) -> bool:
    return any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _holds(guards: list[_Guard]) -> list[Tensor]:
    """Whether every guard's tensor gives its value again: one boolean tensor per device the guards lie on, unread
    (read after the program, :func:`_held`: nothing inside it copies between devices or waits on one, so that it can be
    a CUDA graph)."""
    held = []
    for g in guards:
        t = g.tensor.reshape(())
        held.append(torch.isnan(t) if isinstance(g.value, float) and math.isnan(g.value) else t == g.value)
    return held_per_device(held)


def _held(checks: Sequence[Tensor]) -> bool:
    """Whether each device's guards held (:func:`_holds`): one host read per device."""
    return all(bool(c) for c in checks)


@dataclass
class _Program:
    run: Callable[..., Any]
    #: what the program keeps as constants (see :class:`TracedPasses`)
    version: Any
    #: how many of its last outputs are its guards' checks (:func:`_holds`), after the pass's outputs
    checks: int
    sites: list[str]
    nodes: int
    trace_seconds: float
    #: how its inputs lay when traced (strides and offsets: make_fx writes a reshape as a view where they allowed one,
    #: and ``simplify.py`` joins views on them) and, where it was made shorter, where the model's tensors of ``laid``
    #: lay (storages too: views of them are taken once); it runs only where they lie so
    layouts: Any
    laid: list[Tensor]
    #: how many of the traced operations it leaves out (``simplify.py``: constants folded, views joined)
    left_out: int
    compile_seconds: float | None = None
    #: why the program runs uncompiled where ``compile=True`` (torch.compile failed, or its program ran slower)
    compile_failure: str | None = None
    #: why the program runs the graph's own code, not its calls bound to torch's bindings (:func:`_bound`)
    unbound: str | None = None
    #: seconds the program took to be captured as a CUDA graph and checked, where it is replayed as one (``Replayed``)
    graph_seconds: float | None = None
    #: why a program on a CUDA device is not replayed as a CUDA graph
    graph_failure: str | None = None
    misses: int = 0
    #: calls in a row whose inputs or model tensors lay otherwise than traced
    relaid: int = 0
    #: what the model's forward read at the call it was traced at (``reads.py``): it runs only where a forward reads the same
    reads: Any = None


#: held while a pass is traced: torch's make_fx patches torch.fx for the duration of a trace, one at a time in a process
_TRACING = threading.Lock()
#: a program whose guards missed this many calls in a row is dropped, and its slot runs intercepted
_MISSES = 2
#: ``compile="auto"`` traces a slot once its intercepted input passes have taken this many times the median one: about
#: what tracing it takes (make_fx runs the pass with Python around every operation: 30-90 times an intercepted pass,
#: measured for an LSTM, a GRU, an Elman layer, PatchTST and an ``LSTMCell`` loop, on an H100's host and on the CPU)
TRACE_IN_CALLS = 50
#: the fewest calls of recurrent cells (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``: ``torch.lstm_cell`` and the others)
#: in a reference pass that make ``compile=None``, the default, ``"auto"`` on the CPU too: a Python loop of cells,
#: whose intercepted steps are mostly rnnshap's Python around a few small operations, which a program leaves out (a
#: call 0.5-0.6x the intercepted one at tiny sizes, 0.7x at published ones, docs/performance.md); any other model's
#: program runs within 0-15 % of its intercepted pass on the CPU, which the seconds of tracing it seldom pay back
CELL_LOOP = 8
#: the recurrent cells' operations, which ``nn.LSTMCell``, ``nn.GRUCell`` and ``nn.RNNCell`` call (see :data:`CELL_LOOP`)
CELLS = frozenset({torch.lstm_cell, torch.gru_cell, torch.rnn_tanh_cell, torch.rnn_relu_cell})
#: ``pass_path`` where the default intercepts every call (off a CUDA device, but for a Python loop of cells on the CPU)
DEFAULT_INTERCEPTED = (
    f"intercepted (compile=None: on the CPU the default traces only a Python loop of recurrent cells, {CELL_LOOP} cell "
    'calls a pass or more; compile="auto" or "trace" traces this model)'
)
#: the most programs an engine keeps (one per slot: input shapes, outputs chosen, kept reference pass), the least
#: recently used dropped first: calls of ever new shapes (a last batch, sequences of varying length) do not pile them up
_PROGRAMS = 8


@dataclass
class TracedPasses:
    """The programs of one engine: one per slot (the kept reference pass's rows and context, the input shapes and the
    outputs chosen), for one version of what the program keeps as constants (the kept pass's tape, the model's Python
    state: :func:`python_state`); a new version replaces the slot's program."""

    mode: Any
    #: whether ``mode`` is the default's choice (``compile=None``), as the path says
    by_default: bool = False
    programs: dict[Any, _Program] = field(default_factory=dict)
    #: each slot's version when last seen (a slot is traced at the second call of the same version: the first sets
    #: up what the program keeps, see the engine), with the objects it names by identity, kept alive
    seen: dict[Any, tuple[Any, Any]] = field(default_factory=dict)
    #: slots that run intercepted, with their version, and why
    untraceable: dict[Any, tuple[Any, str]] = field(default_factory=dict)
    #: how the last call ran, in words
    path: str = "intercepted: no call yet"
    #: ``compile="auto"``: the seconds of each intercepted input pass of a slot's version so far (see :meth:`took`)
    spent: dict[Any, list[float]] = field(default_factory=dict)
    #: the slot whose input pass runs intercepted this call, waiting to be traced (``compile="auto"``), else None
    pending: Any = None
    #: slots whose programs were dropped in a row because the forward read otherwise than when it was traced
    reread: dict[Any, int] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop every program (the model changed: its kept reference passes are dropped too)."""
        self.programs.clear()
        self.seen.clear()
        self.untraceable.clear()
        self.spent.clear()
        self.reread.clear()

    @property
    def waiting(self) -> bool:
        """Whether this call's input pass runs intercepted while its slot waits to be traced (``compile="auto"``):
        the engine times it (:meth:`took`)."""
        return self.pending is not None

    def took(self, seconds: float) -> None:
        """The intercepted input pass of the waiting slot took ``seconds`` (``compile="auto"``)."""
        if self.pending is not None:
            self.spent.setdefault(self.pending, []).append(seconds)
            self.pending = None

    def _wait(self, slot: Any) -> bool:
        """``compile="auto"``: whether the slot's version waits another call before it is traced (its intercepted
        passes since its first call have not yet taken :data:`TRACE_IN_CALLS` times their median: the first, which
        sets up what a program keeps and pays what a process pays once, is not counted), the path saying so."""
        if self.mode != "auto" or EVERY_PASS:
            return False
        took = self.spent.get(slot, [])
        price = TRACE_IN_CALLS * _median(took) if took else math.inf
        if sum(took) >= price:
            return False
        self.pending = slot
        self.path = (
            f"intercepted: {len(took) + 2} calls of these shapes so far; compile=\"auto\""
            + (" (the default here)" if self.by_default else "")
            + " traces them once their passes "
            f"have taken about what tracing takes ({TRACE_IN_CALLS} passes"
            + (")" if not took else f", {price:.2g} s)")
        )
        return True

    def reads_hold(self, slot: Any, reads: Any) -> bool:
        """Whether the slot's program may be used this call: the model's forward read now what it read at the call
        the program was traced at (``reads.calls``, see ``reads.py``; that call notes it). Where not, the program is
        dropped (traced again at the next call), and where that happened :data:`_MISSES` calls in a row (the forward
        reads something that changes from call to call), the slot runs intercepted for this version."""
        program = self.programs.get(slot)
        if program is None:  # (the values came from the trace made this call, the model as it is now)
            return True
        if program.reads is None:
            program.reads = reads
        if program.reads.calls == reads.calls:
            self.reread.pop(slot, None)
            return True
        why = f"the model's forward reads other state than when it was traced ({_first_difference(program.reads, reads)})"
        self.drop(slot, why)
        self.reread[slot] = self.reread.get(slot, 0) + 1
        if self.reread[slot] >= _MISSES:
            self.untraceable[slot] = (program.version, f"{why}, {_MISSES} calls in a row")
        return False

    def drop(self, slot: Any, why: str) -> None:
        """Drop the slot's program (its result is not used): the call runs intercepted, and the next is traced anew."""
        self.programs.pop(slot, None)
        self.path = f"intercepted: {why} (traced again at the next call)"

    def run(
        self,
        slot: Any,
        version: Any,
        holds: Any,
        region: Callable[..., list[Tensor]],
        inputs: list[Tensor],
        check: Callable[[list[Tensor]], Any] | None = None,
    ) -> list[Tensor] | None:
        """``region(*inputs)``'s outputs from the slot's program, traced now on the second call of this version; None
        where the pass runs intercepted this call (the first call of a version, a guard that did not hold, a pass
        that does not trace, or a pass that failed while traced: the caller runs it intercepted and reports what it
        reports). ``holds``: the objects ``version`` names by identity, kept alive with it; ``check``: what the caller
        runs on a program's outputs at every call (timed with the program where ``"auto"`` weighs it)."""
        untraceable = self.untraceable.get(slot)
        if untraceable is not None and untraceable[0] == version:
            self.path = f"intercepted: {untraceable[1]}"
            return None
        program = self.programs.get(slot)
        if program is not None and program.version != version:
            del self.programs[slot]  # (what it keeps is not the model's or the kept pass's any more)
            program = None
        if program is not None:
            if program.layouts != _where(inputs, program.laid):
                # a program is made for how its inputs lay (make_fx writes a reshape as a view where they allowed one;
                # views joined) and where the model's tensors lay (views of them taken once; a CUDA graph reads their
                # memory): not run on others; where they lie otherwise two calls in a row, traced again at the next
                program.relaid += 1
                later = " (traced again at the next call)" if program.relaid >= _MISSES else ""
                if later:
                    del self.programs[slot]
                self.path = f"intercepted: its inputs or the model's tensors lie otherwise than when it was traced{later}"
                return None
            program.relaid = 0
        if program is None:
            before = self.seen.get(slot)
            if (before is None or before[0] != version) and not EVERY_PASS:
                self.seen[slot] = (version, holds)
                self.spent.pop(slot, None)
                later = "the second is traced" if self.mode != "auto" else f"traced after about {TRACE_IN_CALLS} more"
                self.path = (
                    f"intercepted: the first call of these shapes ({later})"
                    if before is None
                    else f"intercepted: the model or its kept reference pass changed since the last call ({later})"
                )
                return None
            if self._wait(slot):
                return None
            if not _TRACING.acquire(blocking=False):  # (make_fx traces one function at a time in a process)
                self.path = "intercepted: another thread is tracing a pass (traced at a later call)"
                return None
            try:
                return self._trace(slot, version, holds, region, inputs, check)
            finally:
                _TRACING.release()
        self.programs[slot] = self.programs.pop(slot)  # (the most recently used last: see _PROGRAMS)
        try:
            with torch.no_grad():
                ran = program.run(*inputs)
        except Exception as error:  # noqa: BLE001 (a program that no longer runs on what it reads: intercepted)
            self.untraceable[slot] = (version, _first_line(error, "its program failed"))
            self.drop(slot, self.untraceable[slot][1])
            return None
        outputs = ran[: len(ran) - program.checks]
        if _held(ran[len(outputs) :]):
            program.misses = 0
            self.path = self._describe(program)
            return outputs
        program.misses += 1
        if program.misses >= _MISSES:
            del self.programs[slot]
            sites = ", ".join(dict.fromkeys(program.sites))
            why = f"a check the traced pass made gave another answer {_MISSES} calls in a row ({sites})"
            self.untraceable[slot] = (version, why)
        self.path = "intercepted: a check the traced pass made gives another answer on these inputs"
        return None

    def _trace(
        self,
        slot: Any,
        version: Any,
        holds: Any,
        region: Callable[..., list[Tensor]],
        inputs: list[Tensor],
        check: Callable[[list[Tensor]], Any] | None = None,
    ) -> list[Tensor] | None:
        from torch.fx.experimental.proxy_tensor import make_fx

        guarding = _Guarding()

        checks: list[Tensor] = []

        def traced(*tensors: Tensor) -> list[Tensor]:
            with guarding:
                outputs = region(*tensors)
            checks[:] = _holds(guarding.guards)
            return [*outputs, *checks]

        start = time.perf_counter()
        try:
            with values_unread(), _one_fake_mode():
                graph = make_fx(traced, tracing_mode="real")(*inputs)
        except NotThisCall as error:
            self.path = f"intercepted: {error} (traced at the next call)"
            return None
        except Exception as error:  # noqa: BLE001 (the intercepted pass runs again, and raises what it raises)
            why = str(error) if isinstance(error, _Untraceable) else _first_line(error, "the pass did not trace")
            self.untraceable[slot] = (version, why)
            self.path = f"intercepted: {why}"
            return None
        graph.graph.eliminate_dead_code()
        sites = [g.site for g in guarding.guards]
        with torch.no_grad():  # (the code make_fx wrote, its dead operations too: the same outputs, made once)
            traced_outputs = graph(*inputs)
        # shorter where that gives the same outputs (inductor folds and fuses on its own): computations on the kept
        # reference pass's tensors and views of the model's run once, chains of views joined; its program is checked by
        # _bound as the graph's is
        owned = storages(_tensors_in(holds))
        shorter = simplified(graph, inputs, owned)[0] if self.mode is not True else graph
        run, unbound = _bound(shorter, inputs, traced_outputs)
        if shorter is not graph and unbound is not None:
            shorter = graph
            run, unbound = _bound(graph, inputs, traced_outputs)
        # (the model's tensors the traced graph reads: those the shorter one took views of once among them)
        laid = _laid_constants(graph, owned)
        left_out, graph = len(graph.graph.nodes) - len(shorter.graph.nodes), shorter
        if unbound is not None or self.mode is True:
            graph.recompile()  # (the graph itself runs, or is compiled: its code written again without the dead operations)
        program = _Program(
            run, version, len(checks), sites, len(graph.graph.nodes), time.perf_counter() - start, _where(inputs, laid),
            laid, left_out, unbound=unbound,
        )  # fmt: skip
        if self.mode is True:
            _compile(program, graph, inputs)
        elif inputs and all(t.device.type == "cuda" for t in inputs) and cuda_graphs_wanted():
            _replay(program, inputs, traced_outputs)
        with torch.no_grad():
            ran = program.run(*inputs) if program.compile_seconds is not None else traced_outputs
        outputs = ran[: len(ran) - program.checks]
        if not _held(ran[len(outputs) :]):  # (the program disagrees with the trace it came from: not used)
            self.untraceable[slot] = (version, "the traced program's checks did not hold on the inputs it was traced on")
            return None
        if self.mode == "auto" and slot in self.spent:  # (kept only where it runs faster than the intercepted pass did)
            took = _median(self.spent[slot])

            def program_and_check(*tensors: Tensor) -> None:
                ran = program.run(*tensors)
                if check is not None:  # (the caller's check of a program's outputs, which the intercepted pass skips)
                    check(ran[: len(ran) - program.checks])

            took_program = _seconds(program_and_check, inputs)
            if took_program >= took:
                self.untraceable[slot] = (version, (
                    f'traced, but its program ({1e3 * took_program:.2f} ms a call) was not faster than the intercepted '
                    f'pass ({1e3 * took:.2f} ms), and compile="auto" keeps only a faster one'
                ))  # fmt: skip
                self.path = f"intercepted: {self.untraceable[slot][1]} (this call's values came from the trace)"
                return outputs
        self.programs[slot] = program
        while len(self.programs) > _PROGRAMS:  # (the least recently used first; with "auto", to be paid for again)
            evicted = next(iter(self.programs))
            del self.programs[evicted]
            self.spent.pop(evicted, None)
        self.path = self._describe(program)
        return outputs

    def _describe(self, program: _Program) -> str:
        fewer = f", {program.left_out} fewer than traced" if program.left_out else ""
        said = f"traced: {program.nodes} operations as one program (traced in {program.trace_seconds:.1f} s{fewer})"
        if program.compile_seconds is not None:
            said = f"compiled: {program.nodes} traced operations compiled by torch.compile in {program.compile_seconds:.1f} s"
        if program.compile_failure is not None:
            said += f"; not compiled: {program.compile_failure}"
        if program.unbound is not None and program.compile_seconds is None:
            said += f"; run as torch.fx wrote it: {program.unbound}"
        if program.graph_seconds is not None:
            said += f", replayed as one CUDA graph (captured in {program.graph_seconds:.1f} s)"
        elif program.graph_failure is not None:
            said += f"; not a CUDA graph: {program.graph_failure}"
        return said


def _first_difference(then: Any, now: Any) -> str:
    """Where two readings of a forward (``reads.ForwardReads``) part, in words."""
    for i, (a, b) in enumerate(zip(then.calls, now.calls, strict=False)):
        if a != b:
            name = getattr(a[0], "__name__", None) or repr(a[0])
            other = getattr(b[0], "__name__", None) or repr(b[0])
            what = f"{name} with other arguments" if a[0] is b[0] or name == other else f"{other} in place of {name}"
            return f"torch call {i + 1}: {what}"
    return f"{len(now.calls)} torch calls in place of {len(then.calls)}"


def _tensors_in(held: Any) -> list[Tensor]:
    """The tensors of the kept reference pass ``held`` (what a version names: its tape's entries): each entry's
    references and kept output, and those of the entry it repeats."""
    if isinstance(held, TapeEntry):
        repeated = [] if held.repeated is None else _tensors_in(held.repeated[1])
        return [*(held.references or ()), *([] if held.output is None else [held.output]), *repeated]
    if isinstance(held, (list, tuple)):
        return [t for item in held for t in _tensors_in(item)]
    return []


def _laid_constants(graph: torch.fx.GraphModule, owned: set[int]) -> list[Tensor]:
    """The program's constants the engine does not own (the model's tensors), where a program that took views of them
    once, joined views on how they lay (a weight's memory format decides a convolution's output's) or replays a CUDA
    graph that reads their memory, needs them to lie still."""
    names = [str(n.target) for n in graph.graph.nodes if n.op == "get_attr"]
    found = {id(t): t for t in (constant(graph, name) for name in names) if isinstance(t, Tensor)}  # (each once)
    return [t for t in found.values() if t.untyped_storage().data_ptr() not in owned]


def _where(inputs: Sequence[Tensor], laid: Sequence[Tensor]) -> tuple[Any, Any]:
    """How a program's inputs lie, and where the model's tensors it depends on lie (:data:`_Program.layouts`)."""
    return layouts(inputs), placements(laid)


@contextlib.contextmanager
def _one_fake_mode() -> Any:
    """One fake-tensor mode for a whole trace: ``make_fx`` notes a node's output as a fake tensor, made under the
    ambient fake mode, or else under one it makes anew for
    each, which records a stack trace as it is made (about half the time of tracing an ``LSTMCell`` loop)."""
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode

    with tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True))):
        yield


#: an aten operation in the code ``torch.fx`` writes for a graph: ``torch.ops.aten.<name>.<overload>(``
_ATEN_CALL = re.compile(r"\btorch\.ops\.aten\.(\w+)\.(\w+)\(")
#: a constant the graph's code reads from the module (``self._tensor_constant0``): bound as a global of the program,
#: not looked up through ``nn.Module.__getattr__`` at every call
_SELF_ATTRIBUTE = re.compile(r"\bself\.(\w+)\b")
#: where torch's Python bindings of the aten operations live, by name: the functions, then the tensor methods
_BINDINGS = (torch._C._VariableFunctions, torch._C.TensorBase)


def _bound(graph: torch.fx.GraphModule, inputs: list[Tensor], traced: Sequence[Any]) -> tuple[Callable[..., Any], str | None]:
    """The graph's program with each aten operation called through torch's Python binding of the same name (as
    ``torch.mul`` or ``Tensor.view``; else through the operation's own entry, without its Python wrapper), and its
    constants bound as globals: the same kernels, a third less time a call than the graph's code, which calls each
    through ``OpOverload.__call__`` and the dispatcher's boxed path. Used only where it gives the ``traced`` outputs of
    the graph on ``inputs`` bit for bit; else the graph itself, and why in words."""
    code = graph.graph.python_code(root_module="self")
    bound: dict[str, Any] = {}

    def bind(match: re.Match[str]) -> str:
        name, overload = match.groups()
        key = f"_{name}__{overload}"
        if key not in bound:
            binding = next((b for b in (getattr(where, name, None) for where in _BINDINGS) if b is not None), None)
            bound[key] = binding if binding is not None else getattr(getattr(aten, name), overload)._op
        return key + "("

    def constant(match: re.Match[str]) -> str:
        key = f"_self__{match.group(1)}"
        bound[key] = getattr(graph, match.group(1))
        return key

    try:
        scope = {**code.globals}
        source = _SELF_ATTRIBUTE.sub(constant, _ATEN_CALL.sub(bind, code.src))
        scope.update(bound)
        exec(compile(source, "<rnnshap traced program>", "exec"), scope)  # noqa: S102 (fx's own code, its calls renamed)
        program = _BoundProgram(scope["forward"], graph)
        with torch.no_grad(), warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            outputs = program(*inputs)
        if warned:  # (a binding read its arguments as a deprecated signature: the same kernel, a warning at every call)
            return graph, f"a binding of torch's warned: {str(warned[0].message).strip().splitlines()[0][:200]}"
        same = len(outputs) == len(traced) and all(same_bits(a, b) for a, b in zip(outputs, traced, strict=True))
    except Exception as error:  # noqa: BLE001 (a binding that takes its arguments otherwise: the graph runs as traced)
        return graph, _first_line(error, "a binding of torch's failed")
    if not same:
        return graph, "torch's bindings gave other values than the traced operations on the traced inputs"
    return program, None


class _BoundProgram:
    """The bound code of a traced graph (:func:`_bound`), run with torch's function overrides off: the graph's aten
    calls skip them, where the bindings would consult them (a ``torch.device`` context, a user's
    ``TorchFunctionMode``)."""

    def __init__(self, forward: Callable[..., Any], graph: torch.fx.GraphModule) -> None:
        self.forward, self.graph = forward, graph

    def __call__(self, *tensors: Tensor) -> Any:
        with _NO_TORCH_FUNCTION():
            return self.forward(self.graph, *tensors)


#: torch's function overrides (modes and subclasses) off for a block
_NO_TORCH_FUNCTION: Callable[[], Any] = getattr(torch._C, "DisableTorchFunction", contextlib.nullcontext)


def _compile(program: _Program, graph: torch.fx.GraphModule, inputs: list[Tensor]) -> None:
    """``program.run`` compiled by ``torch.compile`` (inductor), timed by one run on ``inputs``; the traced graph
    where that fails, with the reason (on the CPU inductor needs a C++ compiler)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    if inputs[0].device.type == "cpu" and _cpp_compiler() is None:
        program.compile_failure = "torch.compile's inductor needs a C++ compiler on the CPU (g++ or clang++, or CXX): none found"
        return
    start = time.perf_counter()

    def run(*tensors: Tensor) -> Any:
        with torch.no_grad():
            return graph(*tensors)

    try:
        # functionalized first (inductor takes no out= into a view, which the rules write): the same operations
        with _one_fake_mode():
            plain = make_fx(torch.func.functionalize(run, remove="mutations_and_views"), tracing_mode="real")(*inputs)
        compiled = torch.compile(plain, backend="inductor", fullgraph=True, dynamic=False)
        with torch.no_grad():
            compiled(*inputs)
    except Exception as error:  # noqa: BLE001 (an operation inductor lacks, a compiler that fails: the graph runs as traced)
        program.compile_failure = _first_line(error, "torch.compile failed")
        return
    seconds = time.perf_counter() - start
    # fusing pays where the rules' elementwise work is large (attention's pairs x heads x T x T); a recurrent layer's
    # steps are a few small kernels each, which inductor's code runs slower: the faster of the two is kept
    slower = _slower(compiled, program.run, inputs)
    if slower is not None:
        program.compile_failure = f"compiled in {seconds:.1f} s but slower than the traced program ({slower}), which runs"
        return
    program.run, program.compile_seconds = compiled, seconds


def _replay(program: _Program, inputs: list[Tensor], traced: Sequence[Any]) -> None:
    """``program.run`` replayed as one CUDA graph (:class:`..cuda_graphs.Replayed`), where its replay gives the ``traced`` outputs
    on ``inputs`` bit for bit and runs faster than the program; else the reason, in ``program.graph_failure``."""
    start = time.perf_counter()
    try:
        replayed = Replayed(program.run, inputs)
        with torch.no_grad():
            outputs = replayed(*inputs)
    except Exception as error:  # noqa: BLE001 (an operation that waits on the device or copies to the host: not captured)
        program.graph_failure = _first_line(error, "its capture failed")
        return
    paired = len(outputs) == len(traced)
    differ = [i for i, (a, b) in enumerate(zip(outputs, traced, strict=True)) if not same_bits(a, b)] if paired else []
    if not paired or differ:
        program.graph_failure = "its replay gave other values than the program's on the traced inputs" + (
            f" (output {differ[0] + 1} of {len(traced)}: {_how_far(outputs[differ[0]], traced[differ[0]])})" if differ else ""
        )
        return
    seconds = time.perf_counter() - start
    slower = _slower(replayed, program.run, inputs)
    if slower is not None:
        program.graph_failure = f"captured but slower than the program ({slower})"
        return
    program.run, program.graph_seconds = replayed, seconds


def _how_far(a: Any, b: Any) -> str:
    """How two outputs that are not the same bits differ, in words."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.dtype != b.dtype:
        return f"{getattr(a, 'shape', type(a).__name__)} against {getattr(b, 'shape', type(b).__name__)}"
    if a.stride() != b.stride():
        return f"strides {a.stride()} against {b.stride()}"
    if not a.is_floating_point():
        return f"{int((a != b).sum())} of {a.numel()} entries of shape {tuple(a.shape)}"
    gap = (a.double() - b.double()).abs().nan_to_num(float("inf"))
    return f"shape {tuple(a.shape)}, {int((gap > 0).sum())} entries differ, by {float(gap.max()):.2g} at most"


def _slower(candidate: Callable[..., Any], program: Callable[..., Any], inputs: list[Tensor]) -> str | None:
    """Where ``candidate`` (the program compiled, or replayed as a CUDA graph) runs slower than ``program`` on
    ``inputs``, the two times in words; else None (the faster of the two is kept)."""
    took, took_program = _seconds(candidate, inputs), _seconds(program, inputs)
    return f"{1e3 * took:.2f} ms against {1e3 * took_program:.2f} ms a call" if took > took_program else None


def waited(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device``'s queue has run (a CUDA device synchronized): the ends of a timed run,
    here and of an intercepted pass timed for ``compile="auto"`` (two waits more a call, only while its shapes wait to
    be traced)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _median(seconds: list[float]) -> float:
    """The median of a slot's timed passes (the upper one of an even count)."""
    return sorted(seconds)[len(seconds) // 2]


def _seconds(program: Callable[..., Any], inputs: list[Tensor]) -> float:
    """The wall time of a run of ``program`` on ``inputs`` (its device's queue run), the shorter of two."""
    device = inputs[0].device
    times = []
    for _ in range(2):
        start = waited(device)
        with torch.no_grad():
            program(*inputs)
        times.append(waited(device) - start)
    return min(times)


def _first_line(error: Exception, what: str) -> str:
    """``what (the error's type: its first line)``, for a reason in words."""
    lines = str(error).strip().splitlines()
    return f"{what} ({type(error).__name__}: {lines[0][:200] if lines else ''})"


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU (``CXX``, else g++, clang++ or c++ on the path), or None."""
    named = os.environ.get("CXX")
    candidates = [named] if named else ["g++", "clang++", "c++"]
    return next((c for c in candidates if shutil.which(c)), None)


def has_hooks(model: torch.nn.Module) -> bool:
    """Whether a forward hook (the model's or a global one) would run in the pass: a program would not run it."""
    from torch.nn.modules import module as module_module

    if module_module._global_forward_hooks or module_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


__all__ = ["NotThisCall", "TracedPasses", "has_hooks"]
