"""The input pass as one traced program (``compile="trace"`` and ``compile=True``).

A traced program runs the operations the intercepted pass ran, so its values are the intercepted pass's bit for bit,
call by call, for every model family; a check the pass read while it was traced is a guard, and where it gives
another answer the call runs intercepted (the same values again); what cannot run as a program (an operation whose
output's shape depends on the values, forward hooks) runs intercepted and says why. ``compile=True`` (inductor) is
marked ``compile``: compiling takes a minute on two cores.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.engines import cuda_graphs
from rnnshap.engines.pytorch import traced
from rnnshap.recurrent import kernels

from ...models.torch import Composite, RecurrentHead

T, F = 5, 4


def last_step(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = m.layer(x)
    return m.head((out[0] if isinstance(out, tuple) else out)[:, -1])


def with_head(layer: nn.Module, width: int) -> nn.Module:
    """A sequence layer (batch first) and a linear head on its last step."""
    return Composite(last_step, layer=layer, head=nn.Linear(width, 3))


def _cells(kind: str) -> nn.Module:
    """A recurrent cell of ``kind`` (torch's LSTMCell, GRUCell, RNNCell with tanh or relu) run over the input's steps
    in Python."""
    cells = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
    cell = nn.RNNCell(F, 6, nonlinearity="relu") if kind == "rnn, relu" else cells[kind](F, 6)

    def loop(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], 6)
        for t in range(x.shape[1]):
            h, c = m.cell(x[:, t], (h, c)) if kind == "lstm" else (m.cell(x[:, t], h), None)
        return m.head(h)

    return Composite(loop, cell=cell, head=nn.Linear(6, 3))


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(F, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
    return with_head(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), F)


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "lstm": lambda: with_head(nn.LSTM(F, 6, batch_first=True), 6),
    "gru, two layers, bidirectional": lambda: with_head(nn.GRU(F, 5, num_layers=2, bidirectional=True, batch_first=True), 10),
    "elman": lambda: with_head(nn.RNN(F, 6, batch_first=True), 6),
    "lstm cell in a loop": lambda: _cells("lstm"),
    "transformer encoder": _encoder,
    "convolution, relu, max-pool": lambda: nn.Sequential(
        nn.Conv1d(T, 6, 2), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(6, 3)
    ),
    "layer norm, gelu, softmax": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(T * F, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3), nn.Softmax(-1)
    ),
}


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, T, F, generator=g), torch.randn(3, T, F, generator=g)


def _same(a: object, b: object) -> bool:
    a_list, b_list = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    return all(np.array_equal(x, y) for x, y in zip(a_list, b_list, strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_runs_as_a_traced_program_with_the_intercepted_values_bit_for_bit(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    paths = []
    for _ in range(3):  # the first call intercepted, the second traced, the third the program
        assert _same(program.shap_values(X), intercepted.shap_values(X))  # (additivity checked by both)
        paths.append(program.pass_path)
    assert paths[0].startswith("intercepted: the first call")
    assert paths[1].startswith("traced:") and paths[2] == paths[1], paths
    assert intercepted.pass_path == "intercepted (compile=False)"


def _programs(explainer: rnnshap.DeepExplainer) -> list[object]:
    kept = explainer.engine._traced  # type: ignore[attr-defined]
    return [p.run for p in kept.programs.values()]


@pytest.mark.parametrize("family", ["lstm", "gru, two layers, bidirectional", "elman", "lstm, projected"])
def test_cudnns_recurrent_kernel_is_one_operator_of_the_program_with_torchs_values(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cuDNN's recurrent kernel finds its weights through their storage, which make_fx cannot record: on a CUDA device
    the pass calls torch's kernel through ``rnnshap::recurrent_kernel``, one node of the program (here forced on the
    CPU). The values are those of torch's own calls, intercepted, bit for bit."""
    torch.manual_seed(0)
    model = ({**FAMILIES, "lstm, projected": lambda: with_head(nn.LSTM(F, 6, proj_size=4, batch_first=True), 4)})[family]().eval()
    background, X = _data()
    plain = rnnshap.DeepExplainer(model, background).shap_values(X)
    monkeypatch.setattr(kernels, "ON_CPU_TOO", True)
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        assert _same(program.shap_values(X), plain) and _same(intercepted.shap_values(X), plain)
    assert program.pass_path.startswith("traced:"), program.pass_path
    (run,) = _programs(program)
    targets = [node.target for node in run.graph.graph.nodes if node.op == "call_function"]  # type: ignore[attr-defined]
    assert torch.ops.rnnshap.recurrent_kernel.default in targets
    assert not any(t in targets for t in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input, torch.ops.aten.rnn_tanh.input))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(
    "layer", ["LSTM", "LSTM, 2 layers, bidirectional", "LSTM, projected", "GRU, bidirectional", "RNN relu, 2 layers"]
)
def test_the_recurrent_kernel_operator_passes_torchs_checks_of_an_operator(layer: str, batch_first: bool) -> None:
    """Its schema, and its fake implementation (shapes and strides, for a compiled program) against the real one."""
    name, *options = layer.split(", ")
    kind, relu = name.split(" ")[0], name.endswith("relu")
    settings: dict[str, Any] = {"num_layers": 2 if "2 layers" in options else 1, "bidirectional": "bidirectional" in options}
    if "projected" in options:
        settings["proj_size"] = 3
    if kind == "RNN":
        settings["nonlinearity"] = "relu" if relu else "tanh"
    module = getattr(nn, kind)(F, 5, batch_first=batch_first, **settings)
    x = torch.randn((4, 6, F) if batch_first else (6, 4, F))
    layers = settings["num_layers"] * (2 if settings["bidirectional"] else 1)
    states = [torch.randn(layers, 4, settings.get("proj_size", 5))] + ([torch.randn(layers, 4, 5)] if kind == "LSTM" else [])
    op = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn_relu" if relu else "rnn_tanh"}[kind]
    args = (op, x, states, list(module._flat_weights), True, settings["num_layers"], 0.0, False, settings["bidirectional"],
            batch_first)  # fmt: skip
    torch.library.opcheck(torch.ops.rnnshap.recurrent_kernel.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("family", ["lstm", "lstm cell in a loop", "transformer encoder"])
def test_a_program_calls_torchs_bindings_in_place_of_the_aten_overloads(family: str) -> None:
    """The program that runs is the graph's code with its aten calls bound to torch's Python bindings (not the graph,
    whose code calls each through ``OpOverload``), with the intercepted values bit for bit."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
    (run,) = _programs(program)
    assert isinstance(run, traced._BoundProgram) and "run as torch.fx wrote it" not in program.pass_path
    for seed in (1, 2):  # other inputs of the same shapes: the program again, the intercepted values bit for bit
        other = _data(seed)[1]
        assert _same(program.shap_values(other), intercepted.shap_values(other))
        assert program.pass_path.startswith("traced:") and _programs(program) == [run]



def test_a_bound_program_skips_torch_function_modes_as_the_graphs_aten_calls_do() -> None:
    """A factory the graph calls without a device (``aten.ones``) is the graph's on the CPU under a user's
    ``torch.device`` context (an aten call skips torch-function modes); its binding would consult the mode, so the
    bound program runs with them off: the same tensors, on the same device."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def region(x: torch.Tensor) -> list[torch.Tensor]:
        return [x * torch.ops.aten.scalar_tensor.default(2.0) + torch.ops.aten.ones.default([3])]

    x = torch.randn(3)
    graph = make_fx(region)(x)
    run, why = traced._bound(graph, [x], graph(x))
    assert why is None and isinstance(run, traced._BoundProgram)
    with torch.device("meta"):
        want, got = graph(x), run(x)
    assert got[0].device == want[0].device == torch.device("cpu") and torch.equal(got[0], want[0])


class _WrongMul:
    """Bindings where ``mul`` adds: a binding whose values are not the overload's."""

    mul = staticmethod(torch.add)


class _Deprecated:
    """Bindings where ``mul`` warns (as a deprecated signature does), with the overload's values."""

    @staticmethod
    def mul(*args: object, **kwargs: object) -> torch.Tensor:
        import warnings

        warnings.warn("This overload of mul is deprecated", UserWarning, stacklevel=2)
        return torch.mul(*args, **kwargs)  # type: ignore[call-overload]


class _Refusing:
    """Bindings where ``mul`` takes no arguments the overload takes."""

    @staticmethod
    def mul(*args: object, **kwargs: object) -> torch.Tensor:
        raise TypeError("mul() takes other arguments")


@pytest.mark.parametrize("bindings", [_WrongMul, _Deprecated, _Refusing])
def test_a_program_whose_bindings_do_not_give_the_graphs_outputs_runs_the_graph(
    bindings: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A binding checked on the inputs traced: where one gives other values or refuses the arguments, the program
    is the graph as traced, with the intercepted values."""
    monkeypatch.setattr(traced, "_BINDINGS", (bindings, *traced._BINDINGS))
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
    why = {
        _WrongMul: "torch's bindings gave other values",
        _Deprecated: "a binding of torch's warned: This overload of mul is deprecated",
        _Refusing: "a binding of torch's failed (TypeError",
    }[bindings]
    assert program.pass_path.startswith("traced:") and f"; run as torch.fx wrote it: {why}" in program.pass_path
    (run,) = _programs(program)
    assert isinstance(run, torch.fx.GraphModule)


def test_a_trace_makes_one_fake_tensor_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_fx notes each operation's output as a fake tensor; under one ambient fake mode, not one made (and its
    stack trace recorded) per operation."""
    from torch._subclasses import fake_tensor

    made = []
    original = fake_tensor.FakeTensorMode.__init__

    def counted(self: object, *args: object, **kwargs: object) -> None:
        made.append(1)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    program.shap_values(X)
    monkeypatch.setattr(fake_tensor.FakeTensorMode, "__init__", counted)
    program.shap_values(X)
    assert program.pass_path.startswith("traced:") and len(made) == 1


def test_a_check_that_answers_otherwise_runs_the_call_intercepted() -> None:
    """The program was traced on inputs without a missing value; on inputs with one (in the feature the model never
    reads, as the background has), the pass's missing-value check (a host read, kept as a guard) answers otherwise:
    the call runs intercepted, with the intercepted values; inputs like the first run the program again."""

    torch.manual_seed(0)
    model = RecurrentHead("lstm", F - 1, 6, 3, prepare=lambda x: x[..., :-1], names="lstm head").eval()
    background, X = _data()
    background[:, :, -1] = float("nan")
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(2):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
    assert program.pass_path.startswith("traced:")
    gappy = X.clone()
    gappy[:, :, -1] = float("nan")
    got = program.shap_values(gappy)
    assert _same(got, intercepted.shap_values(gappy)) and not np.isnan(got).any()
    assert program.pass_path.startswith("intercepted: a check the traced pass made gives another answer")
    assert _same(program.shap_values(X), intercepted.shap_values(X))
    assert program.pass_path.startswith("traced:")


def test_a_softmax_with_rows_masked_throughout_is_traced_at_the_call_after_its_deferred_test_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A softmax's test of rows masked throughout waits for the end of the pass; where it fails while the pass is
    traced (here the first call, as ``RNNSHAP_TRACE_EVERY_PASS=1`` traces it), the call runs intercepted, reading at
    once, and the next call is traced: the slot is not marked as one that cannot be traced. The values are the
    intercepted ones bit for bit."""
    from rnnshap.engines.pytorch import traced

    monkeypatch.setattr(traced, "EVERY_PASS", True)

    def masked(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        scores = m.mix(x).masked_fill(torch.arange(x.shape[1])[:, None] == 0, float("-inf"))  # (step 0's row)
        return m.head(torch.softmax(scores, -1).nan_to_num(0.0).flatten(1))

    torch.manual_seed(0)
    model = Composite(masked, mix=nn.Linear(F, F), head=nn.Linear(T * F, 3)).eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    paths = []
    for _ in range(3):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
        paths.append(program.pass_path)
    assert paths[-1].startswith("traced:"), paths


def test_a_model_changed_in_place_is_traced_again() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        program.shap_values(X)
    with torch.no_grad():
        model.head.weight.mul_(-2.0)  # (fine-tuning the same object)
    fresh = rnnshap.DeepExplainer(model, background)
    assert _same(program.shap_values(X), fresh.shap_values(X))
    assert program.pass_path.startswith("intercepted: the first call")


def _configured_forward(m: Composite, x: torch.Tensor) -> torch.Tensor:
    """An LSTM head whose forward() reads Python state: a float attribute, the training flag, a plain tensor attribute
    read on the host (none of them seen by the references' outputs, which the kept reference pass is vetted by)."""
    if m.training:
        x = x.clamp(-1.0, 1.0)
    bound = m.bound.tolist()[0]
    x = x.clamp(-m.clip, m.clip).clamp(-bound, bound)
    return m.head(m.lstm(x)[0][:, -1])


def configured() -> Composite:
    return Composite(_configured_forward, lstm=nn.LSTM(F, 6, batch_first=True), head=nn.Linear(6, 3), clip=10.0,
                     bound=torch.tensor([10.0]))  # fmt: skip


@pytest.mark.parametrize("change", ["a float attribute", "the training flag", "a tensor attribute read on the host"])
def test_python_state_changed_between_calls_is_not_kept_by_a_program(change: str) -> None:
    """The background lies in [0, 0.5], where each change leaves the references' outputs as they were (the kept
    reference pass stays); the explained inputs reach past it. A program keeps the model's Python state as it was
    traced, so a change makes another version: the call runs intercepted with the values of a fresh explainer, and
    the next is traced again; one program is kept per slot, however many versions there were."""
    torch.manual_seed(0)
    model = configured().eval()
    background, X = _data()
    background, X = background.abs().clamp(max=0.5), 3 * X
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        program.shap_values(X)
    assert program.pass_path.startswith("traced:")
    for value in (1.0, 2.0, 0.5):
        if change == "a float attribute":
            model.clip = value
        elif change == "the training flag":
            model.train(value != 2.0)
        else:
            model.bound[0] = value
        fresh = rnnshap.DeepExplainer(model, background)
        for call in range(3):
            assert _same(program.shap_values(X), fresh.shap_values(X)), (value, call)
        if change != "the training flag":  # (whose training-mode call runs the references on every pair from then on)
            assert program.pass_path.startswith("traced:"), program.pass_path
    assert len(program.engine._traced.programs) == (change != "the training flag")


def swappable() -> Composite:
    """A network whose forward() calls a function attribute: Python state a program's version does not see."""
    return Composite(lambda m, x: m.head(m.act(m.linear(x)).mean(1)), linear=nn.Linear(F, 6), act=torch.relu,
                     head=nn.Linear(6, 3))  # fmt: skip


def test_a_program_whose_model_changed_unseen_is_dropped_by_the_models_own_outputs() -> None:
    """A background whose pre-activations stay under 3, where relu and relu capped at 3 agree: swapping the
    activation moves none of the references' outputs (the kept reference pass stays) and no attribute the version
    reads. The program's outputs are checked against the model's own forward on the explained samples at every
    call: they differ, so the call runs intercepted, with the new model's values, and the next is traced again."""
    torch.manual_seed(0)
    model = swappable().eval()
    background, X = 0.01 * _data()[0], 20 * _data()[1]
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        program.shap_values(X)
    assert program.pass_path.startswith("traced:")
    model.act = functools.partial(torch.clamp, min=0.0, max=3.0)
    fresh = rnnshap.DeepExplainer(model, background)
    assert _same(program.shap_values(X), fresh.shap_values(X))
    assert program.pass_path.startswith("intercepted: the model's forward reads other state"), program.pass_path
    for _ in range(2):  # (the kept pass, recorded on relu, now meets clamp: the references run on every pair, as before)
        assert _same(program.shap_values(X), fresh.shap_values(X))


def test_calls_of_ever_new_shapes_keep_at_most_8_programs() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for n in range(1, 13):
        x = torch.randn(n, T, F)
        for _ in range(2):
            program.shap_values(x)
        assert program.pass_path.startswith("traced:"), (n, program.pass_path)
    assert len(program.engine._traced.programs) == 8


def test_tanh_and_sigmoid_keep_their_program_for_new_inputs() -> None:
    """Their rule reads the least and greatest |x - r| to skip work that changes nothing (on the CPU); a program is
    traced without those reads, so new inputs run it too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(T * F, 8), nn.Tanh(), nn.Linear(8, 5), nn.Sigmoid()).eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for scale in (1.0, 1.0, 2.0, 0.5, 3.0):
        assert _same(program.shap_values(scale * X), intercepted.shap_values(scale * X))
    assert program.pass_path.startswith("traced:")


def test_a_pass_whose_shapes_depend_on_values_is_not_traced_and_says_so() -> None:
    """``nonzero``'s output has as many rows as the values say: a program would keep the count of the values it was
    traced on. The pass runs intercepted, and the explainer names the operation."""

    def picked(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.head(m.lstm(x.index_select(-1, m.keep.nonzero().squeeze(1)))[0][:, -1])

    torch.manual_seed(0)
    model = Composite(picked, keep=nn.Buffer(torch.tensor([True, False, True, True])), lstm=nn.LSTM(3, 6, batch_first=True),
                      head=nn.Linear(6, 3)).eval()  # fmt: skip
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        assert _same(program.shap_values(X), intercepted.shap_values(X))
    assert program.pass_path.startswith("intercepted: the pass runs aten::nonzero at "), program.pass_path
    assert program.pass_path.endswith("whose output's shape depends on the values")


def test_a_pass_on_every_pair_is_not_traced_and_says_so() -> None:
    """Samples that differ in a context input (lengths) run the reference pass on every pair, afresh at each call:
    not kept, so not a program's constant."""

    def packed(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        sequences = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return m.head(m.lstm(sequences)[1][0][-1])

    torch.manual_seed(0)
    model = Composite(packed, lstm=nn.LSTM(F, 6, batch_first=True), head=nn.Linear(6, 3))
    background, X = _data()
    lengths, background_lengths = torch.tensor([5, 3, 4]), torch.tensor([5, 5, 5, 2, 5, 4])
    program = rnnshap.DeepExplainer(model.eval(), [background, background_lengths], compile="trace")
    for _ in range(2):
        program.shap_values([X, lengths])
    assert program.pass_path.startswith("intercepted: the reference pass runs on the reference side of every pair")


def test_a_pass_that_draws_random_numbers_is_not_traced_and_leaves_the_generator_as_it_was() -> None:
    """A draw that never reaches the output is explained (the pass puts torch's generators back after it); a program
    would draw anew at every call and move the global generator, so the pass runs intercepted, and says why."""

    def drawing(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        m.last_draw = float(torch.rand(()))  # (a draw the output does not read)
        return m.head(m.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Composite(drawing, lstm=nn.LSTM(F, 6, batch_first=True), head=nn.Linear(6, 3)).eval()
    background, X = _data()
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        before = torch.get_rng_state()
        program.shap_values(X)
        assert torch.equal(torch.get_rng_state(), before)
    assert program.pass_path.startswith("intercepted: the pass draws random numbers (aten::rand"), program.pass_path


def test_forward_hooks_run_at_every_call_so_the_pass_runs_intercepted() -> None:
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    seen: list[int] = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):
        program.shap_values(X)
    assert program.pass_path == "intercepted: the model has forward hooks, which a traced program would not run"
    assert len(seen) >= 3


def test_without_a_cpp_compiler_the_traced_program_runs_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traced, "_cpp_compiler", lambda: None)
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    compiled = rnnshap.DeepExplainer(model, background, compile=True)
    for _ in range(3):
        assert _same(compiled.shap_values(X), intercepted.shap_values(X))
    assert compiled.pass_path.startswith("traced:")
    assert compiled.pass_path.endswith(
        "not compiled: torch.compile's inductor needs a C++ compiler on the CPU (g++ or clang++, or CXX): none found"
    )


def _auto_calls(monkeypatch: pytest.MonkeyPatch, program_seconds: float, calls: int = 12) -> tuple[list[str], bool]:
    """``compile="auto"`` on the CPU, tracing once a slot's passes took 3 times their median (50 by default), its
    program timed at ``program_seconds``: each call's path, and whether every call's values were the intercepted
    explainer's bit for bit."""
    monkeypatch.setattr(traced, "TRACE_IN_CALLS", 3)
    ran: list[object] = []

    def seconds(program: Callable[..., object], inputs: list[torch.Tensor]) -> float:
        with torch.no_grad():  # (run once, as the real timer runs it: the program and the check of its outputs)
            ran.append(program(*inputs))
        return program_seconds

    monkeypatch.setattr(traced, "_seconds", seconds)
    torch.manual_seed(0)
    model = FAMILIES["lstm cell in a loop"]().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    auto = rnnshap.DeepExplainer(model, background, compile="auto")
    paths, same = [], True
    for _ in range(calls):
        same = same and _same(auto.shap_values(X), intercepted.shap_values(X))
        paths.append(auto.pass_path)
    assert len(ran) == 1  # (timed once, when traced)
    return paths, same


def test_auto_traces_once_the_calls_of_the_same_shapes_have_taken_about_what_tracing_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ski rental: the first call sets up what a program keeps (not counted); the calls after it are timed, and
    the shapes are traced once their passes have taken TRACE_IN_CALLS times their median (here 3: the fifth call
    where each pass takes as long, a call or two later where they vary), then run as that program."""
    paths, same = _auto_calls(monkeypatch, program_seconds=0.0)
    assert same
    assert paths[0] == "intercepted: the first call of these shapes (traced after about 3 more)"
    assert paths[1] == (
        'intercepted: 2 calls of these shapes so far; compile="auto" traces them once their passes have taken about '
        "what tracing takes (3 passes)"
    )
    assert paths[2].startswith('intercepted: 3 calls of these shapes so far; compile="auto" traces them once')
    first = next(i for i, path in enumerate(paths) if path.startswith("traced:"))
    assert 4 <= first <= 9, paths
    assert all(path == paths[first] for path in paths[first:]), paths


def test_auto_keeps_a_program_only_where_it_runs_faster_than_the_intercepted_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that is not faster than the intercepted pass it replaces is not kept: the call that traced it takes
    its values (the same bits), and the shapes run intercepted from then on, saying why."""
    paths, same = _auto_calls(monkeypatch, program_seconds=1e3)
    assert same
    first = next(i for i, path in enumerate(paths) if "traced, but" in path)
    assert 4 <= first <= 9, paths
    assert paths[first].startswith(
        "intercepted: traced, but its program (1000000.00 ms a call) was not faster than the intercepted pass ("
    )
    assert paths[first].endswith('and compile="auto" keeps only a faster one (this call\'s values came from the trace)')
    assert all(path.startswith("intercepted: traced, but its program") for path in paths[first + 1 :]), paths


def test_auto_counts_a_changed_models_calls_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a slot's calls spent is its version's: after the model changes in place, its first call is not counted and
    the count starts again (a program of the old model is never what the new one's calls pay for)."""
    monkeypatch.setattr(traced, "TRACE_IN_CALLS", 3)
    torch.manual_seed(0)
    model = FAMILIES["lstm"]().eval()
    background, X = _data()
    auto = rnnshap.DeepExplainer(model, background, compile="auto")
    for _ in range(3):
        auto.shap_values(X)
    assert auto.pass_path.startswith('intercepted: 3 calls of these shapes so far; compile="auto"'), auto.pass_path
    with torch.no_grad():
        model.head.bias.add_(0.5)  # (in place: the kept passes are dropped, the version changes)
    want = rnnshap.DeepExplainer(model, background, compile=False).shap_values(X)
    assert _same(auto.shap_values(X), want)
    assert auto.pass_path == "intercepted: the first call of these shapes (traced after about 3 more)", auto.pass_path
    assert _same(auto.shap_values(X), want)
    assert auto.pass_path.startswith('intercepted: 2 calls of these shapes so far; compile="auto"'), auto.pass_path


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_traces_nothing_on_the_cpu_but_a_loop_of_cells(family: str) -> None:
    """``compile=None``, the default, is ``"auto"`` on a CUDA device (tests/test_gpu.py); on the CPU only for a model
    that calls recurrent cells in a Python loop (``traced.CELL_LOOP`` calls a pass or more), where a program takes
    Python's share of every step away: every other model (here the loop of cells too, 5 steps, fewer than
    ``CELL_LOOP``) is intercepted at every call, and its engine keeps no traced passes at all."""
    model = FAMILIES[family]().eval()
    background, X = _data()
    explainer = rnnshap.DeepExplainer(model, background)
    for _ in range(3):
        explainer.shap_values(X)
    assert explainer.engine._traced is None  # type: ignore[attr-defined]
    assert explainer.pass_path == traced.DEFAULT_INTERCEPTED
    assert explainer.pass_path.startswith("intercepted (compile=None: on the CPU the default traces only a Python loop")


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "rnn, relu"])
def test_the_default_on_the_cpu_traces_a_loop_of_cells_once_the_calls_pay_for_it(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """On the CPU the default does for a Python loop of cells what ``compile="auto"`` does (a ski rental: traced once
    the calls of the same shapes have taken about what tracing takes, TRACE_IN_CALLS times their median, here 3), and
    its values are the intercepted explainer's bit for bit at every call; a loop of fewer cells than
    ``traced.CELL_LOOP`` stays intercepted."""
    monkeypatch.setattr(traced, "TRACE_IN_CALLS", 3)
    # (whether the program runs faster than the intercepted pass, which "auto" also weighs, depends on the machine and
    # its load: timed by the benchmarks, here taken as faster; the test below checks that a slower one is not kept)
    monkeypatch.setattr(traced, "_seconds", lambda program, inputs: 0.0)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    steps = traced.CELL_LOOP
    background, X = torch.randn(6, steps, F, generator=g), torch.randn(3, steps, F, generator=g)
    model = _cells(kind).eval()
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    default = rnnshap.DeepExplainer(model, background)
    paths = []
    for _ in range(12):
        assert _same(default.shap_values(X), intercepted.shap_values(X))
        paths.append(default.pass_path)
    assert paths[0] == "intercepted: the first call of these shapes (traced after about 3 more)", paths
    assert paths[1] == (
        'intercepted: 2 calls of these shapes so far; compile="auto" (the default here) traces them once their passes '
        "have taken about what tracing takes (3 passes)"
    ), paths
    first = next((i for i, path in enumerate(paths) if path.startswith("traced:")), None)
    assert first is not None and 4 <= first <= 9, paths
    assert all(path == paths[first] for path in paths[first:]), paths

    explainer = rnnshap.DeepExplainer(model, background[:, 1:])  # (one step fewer)
    for _ in range(6):
        explainer.shap_values(X[:, 1:])
    assert explainer.engine._traced is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["yes", 1, "inductor", "Auto"])
def test_compile_takes_none_false_auto_trace_true_or_capture(value: object) -> None:
    model = FAMILIES["lstm"]()
    with pytest.raises(rnnshap.InputError, match='compile= takes None, False, "auto", "trace", True or "capture"'):
        rnnshap.DeepExplainer(model, _data()[1], compile=value)  # type: ignore[arg-type]


@pytest.mark.compile
def test_compiled_attention_is_within_a_few_ulps_of_the_intercepted_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """inductor fuses the softmax rule's elementwise work (and may contract a product and a sum into one rounding):
    other last bits, within 64 float32 ulps of the largest value; the additivity check holds. (The compiled program
    is kept here whichever of the two runs faster on this machine: the first timed is the compiled one.)"""
    times = iter([0.0, 1.0])
    monkeypatch.setattr(traced, "_seconds", lambda program, inputs: next(times))
    torch.manual_seed(0)
    model = _encoder().eval()
    background, X = _data()
    intercepted = rnnshap.DeepExplainer(model, background)
    compiled = rnnshap.DeepExplainer(model, background, compile=True)
    for _ in range(3):
        got, want = compiled.shap_values(X), intercepted.shap_values(X)
    assert compiled.pass_path.startswith("compiled:"), compiled.pass_path
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 64 * np.finfo(np.float32).eps * scale


def test_a_graphs_copy_of_an_output_keeps_the_programs_layout_and_values() -> None:
    """A CUDA graph's results are copies of what it wrote (cuda_graphs.copy_of): a view of a wider tensor keeps its strides,
    which the bit-for-bit check of a replay compares (PatchTST's program returns one such output); a broadcast view,
    whose strides no copy can have, is copied whole."""
    wide = torch.randn(64, 64)
    view = wide[:, :3]
    copy = cuda_graphs.copy_of(view)
    assert copy.stride() == view.stride() == (64, 1) and copy.data_ptr() != view.data_ptr()
    assert cuda_graphs.same_bits(copy, view)
    broadcast = torch.randn(3).expand(4, 3)
    whole = cuda_graphs.copy_of(broadcast)
    assert whole.stride() == (3, 1) and torch.equal(whole, broadcast)
    wide.zero_()
    assert not torch.equal(copy, view), "the copy shares the program's memory"


def test_a_replay_that_differs_says_how() -> None:
    """Where a replay's output is not the program's bit for bit, the path names how (traced._how_far)."""
    a = torch.zeros(4, 3)
    b = a.clone()
    b[1, 2] = 1e-7
    assert traced._how_far(b, a) == "shape (4, 3), 1 entries differ, by 1e-07 at most"
    assert traced._how_far(torch.zeros(64, 64)[:, :3], torch.zeros(64, 3)) == "strides (64, 1) against (3, 1)"
    assert traced._how_far(torch.zeros(2), a) == "torch.Size([2]) against torch.Size([4, 3])"
