"""The core exactness checks rerun on every accelerator there is: ``pytest -m gpu``.

For each device (every CUDA device, and Apple's MPS where torch has it): the recurrent layers on torch's
fused kernels (LSTM, GRU, RNN; stacked, bidirectional, projected; cuDNN on, the model in eval mode),
packed sequences, a Keras model on the torch backend, a forecasting adapter (darts) and the Shapley
mode. Each is compared with the values of the same model in float64 on the CPU (an independent run),
and checked to add up to the model's own output on the device; the model's device, its parameters,
its training flags and cuDNN's settings are left as they were. Without an accelerator every test is
skipped, by name of what is missing.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import sys
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.engines import cuda_graphs

from .conftest import FLOAT32_VS_FLOAT64, assert_adds_up_to, relative_to_max
from .models.torch import Composite, RecurrentHead


def accelerators() -> list[str]:
    """Every accelerator torch can use here: ``cuda:0``, ``cuda:1``, ..., and ``mps``."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


DEVICES = accelerators() or [pytest.param("none", marks=pytest.mark.skip(reason="no CUDA or MPS device: nothing to rerun on"))]
pytestmark = pytest.mark.gpu


def cudnn_settings() -> tuple[Any, ...]:
    c = torch.backends.cudnn
    return (c.enabled, c.benchmark, c.deterministic, getattr(c, "allow_tf32", None), torch.backends.cuda.matmul.allow_tf32)


def state_of(model: nn.Module) -> dict[str, Any]:
    return {
        "values": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "devices": sorted({str(t.device) for t in [*model.parameters(), *model.buffers()]}),
        "training": [m.training for m in model.modules()],
        "cudnn": cudnn_settings(),
    }


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = state_of(model)
    assert after["devices"] == before["devices"], "the model moved"
    assert after["training"] == before["training"], "a training flag changed"
    assert after["cudnn"] == before["cudnn"], "cuDNN's settings changed"
    for key, value in before["values"].items():
        assert torch.equal(after["values"][key], value), f"{key} changed"


def on_device_against_cpu64(
    build: Callable[[], nn.Module], background: torch.Tensor, x: torch.Tensor, device: str, **options: Any
) -> tuple[np.ndarray, np.ndarray, nn.Module]:
    """The values of the model on ``device`` (float32, as users run it) and of a float64 copy on the CPU."""
    torch.manual_seed(0)
    model = build().eval()
    reference = copy.deepcopy(model).double()
    on_device = model.to(device)
    before = state_of(on_device)
    values = rnnshap.DeepExplainer(on_device, background.to(device), **options).shap_values(x.to(device))
    assert_untouched(on_device, before)
    expected = rnnshap.DeepExplainer(reference, background.double(), **options).shap_values(x.double())
    return np.asarray(values), np.asarray(expected), on_device


def recurrent(kind: str, **layer: Any) -> RecurrentHead:
    """``nn.LSTM/GRU/RNN(5, 16, **layer)`` → tanh of the last step → Linear(·, 3)."""
    cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[kind]
    return RecurrentHead.over(cls(5, 16, batch_first=True, **layer), 3, read="tanh_last", head_inputs=layer.get("proj_size"))


LAYERS = {
    "lstm": ("LSTM", {}),
    "lstm-stacked-bidirectional": ("LSTM", {"num_layers": 2, "bidirectional": True}),
    "lstm-projected": ("LSTM", {"proj_size": 8}),
    "gru-stacked": ("GRU", {"num_layers": 2}),
    "rnn-relu": ("RNN", {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", LAYERS)
def test_fused_recurrent_layers_on_the_device_match_cpu_float64(device: str, layer: str) -> None:
    kind, options = LAYERS[layer]
    generator = torch.Generator().manual_seed(1)
    background, x = torch.randn(16, 30, 5, generator=generator), torch.randn(8, 30, 5, generator=generator)
    values, expected, model = on_device_against_cpu64(lambda: recurrent(kind, **options), background, x, device)
    assert relative_to_max(values, expected) <= FLOAT32_VS_FLOAT64
    with torch.no_grad(), float32_in_full():
        outputs = model(x.to(device)).double().cpu().numpy()
        base = model(background.to(device)).double().cpu().numpy().mean(0)
    assert_adds_up_to(base + values.reshape(8, -1, 3).sum(1), outputs, "float32")


@contextlib.contextmanager
def float32_in_full() -> Iterator[None]:
    """The model's own float32 in IEEE float32 inside the block: TF32 (cuDNN's default for its recurrent layers and
    convolutions) off, as rnnshap runs a model; written here from torch's switches, not taken from rnnshap."""
    if hasattr(torch.backends.cudnn, "rnn"):  # torch >= 2.9: one switch per backend and operation
        switches = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
        saved = [s.fp32_precision for s in switches]
        for s in switches:
            s.fp32_precision = "ieee"
        try:
            yield
        finally:
            for s, p in zip(switches, saved, strict=True):
                s.fp32_precision = p
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.mark.parametrize("device", DEVICES)
def test_tf32_on_by_default_explains_the_float32_function_in_full(device: str) -> None:
    """cuDNN computes its recurrent layers at TF32 unless told not to: the values are those of the model in IEEE
    float32 all the same (bit for bit), and add up to its outputs computed so; the switches are left as they were."""
    generator = torch.Generator().manual_seed(4)
    background, x = torch.randn(16, 40, 5, generator=generator).to(device), torch.randn(8, 40, 5, generator=generator).to(device)
    torch.manual_seed(0)
    model = recurrent("LSTM", num_layers=2).to(device).eval()
    before = state_of(model)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    assert_untouched(model, before)
    with float32_in_full():
        in_full = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
        with torch.no_grad():
            outputs = model(x).double().cpu().numpy()
            base = model(background).double().cpu().numpy().mean(0)
    np.testing.assert_array_equal(values, in_full)
    assert_adds_up_to(base + values.reshape(8, -1, 3).sum(1), outputs, "float32")


@pytest.mark.parametrize("device", DEVICES)
def test_the_traced_pass_runs_cudnns_kernel_with_the_intercepted_values(device: str) -> None:
    """cuDNN's recurrent kernel, which make_fx cannot trace, is one operator of the program (recurrent/kernels.py)."""
    generator = torch.Generator().manual_seed(5)
    background, x = torch.randn(16, 30, 5, generator=generator).to(device), torch.randn(8, 30, 5, generator=generator).to(device)
    torch.manual_seed(0)
    model = recurrent("LSTM", num_layers=2, bidirectional=True).to(device).eval()
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):  # the first call intercepted, the second traced, the third the program
        np.testing.assert_array_equal(program.shap_values(x), intercepted.shap_values(x))
    assert program.pass_path.startswith("traced:"), program.pass_path


def _transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(5, 1, dim_feedforward=16, batch_first=True, dropout=0.0)
    return nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(), nn.Linear(150, 3))


GRAPHED = {**{name: (lambda kind=kind, layer=layer: recurrent(kind, **layer)) for name, (kind, layer) in LAYERS.items()},
           "transformer": _transformer}  # fmt: skip


def _on_cuda(device: str, seed: int, references: int, samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A background and two batches of samples (T = 30, 5 features) on ``device``, a CUDA device (else the test is
    skipped: CUDA graphs are CUDA's), the global seed set for the model built next."""
    if not device.startswith("cuda"):
        pytest.skip("CUDA graphs are CUDA's")
    generator = torch.Generator().manual_seed(seed)
    background = torch.randn(references, 30, 5, generator=generator).to(device)
    x, other = (torch.randn(samples, 30, 5, generator=generator).to(device) for _ in range(2))
    torch.manual_seed(0)
    return background, x, other


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRAPHED)
def test_a_traced_program_on_cuda_is_replayed_as_one_cuda_graph_with_the_intercepted_values(
    device: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The program captured once and replayed (cuda_graphs.Replayed): the intercepted values bit for bit, on the inputs
    it was captured on and on others of the same shapes (its inputs copied in), and a result not overwritten by the
    next replay; ``cuda_graphs.REPLAY = False`` leaves the graph out, with the same values."""
    background, x, other = _on_cuda(device, seed=7, references=16, samples=8)
    model = GRAPHED[name]().to(device).eval()
    before = state_of(model)
    intercepted = rnnshap.DeepExplainer(model, background, compile=False)
    expected, expected_other = intercepted.shap_values(x), intercepted.shap_values(other)
    for graphs in ("1", "0"):
        monkeypatch.setattr(cuda_graphs, "REPLAY", graphs == "1")
        program = rnnshap.DeepExplainer(model, background, compile="trace")
        for _ in range(3):  # the first call intercepted, the second traced (and captured), the third replayed
            first = program.shap_values(x)
            np.testing.assert_array_equal(first, expected)
        assert ("replayed as one CUDA graph" in program.pass_path) == (graphs == "1"), program.pass_path
        kept = np.array(first, copy=True)
        gc.collect()  # (what the program dropped freed, and its memory written over: the graph reads none of it)
        written_over = [torch.full((1 << n,), float("nan"), device=device) for n in range(8, 22, 2)]
        np.testing.assert_array_equal(program.shap_values(other), expected_other)
        del written_over
        np.testing.assert_array_equal(first, kept)
        np.testing.assert_array_equal(program.shap_values(x), expected)
    assert_untouched(model, before)


@pytest.mark.parametrize("device", DEVICES)
def test_the_default_on_cuda_traces_once_calls_of_the_same_shapes_pay(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile=None``, the default, is ``"auto"`` on a CUDA device: intercepted until the calls of the same shapes
    have taken about what tracing takes (here 3 passes' worth, 50 by default), then the program replayed as one CUDA
    graph where that is faster than the intercepted pass; the intercepted values bit for bit at every call."""
    if not device.startswith("cuda"):
        pytest.skip("off a CUDA device the default traces a Python loop of cells only (tests/engines/pytorch/test_traced.py)")
    from rnnshap.engines.pytorch import traced

    monkeypatch.setattr(traced, "TRACE_IN_CALLS", 3)
    generator = torch.Generator().manual_seed(9)
    background, x = torch.randn(16, 30, 5, generator=generator).to(device), torch.randn(8, 30, 5, generator=generator).to(device)
    torch.manual_seed(0)
    model = recurrent("GRU").to(device).eval()
    expected = rnnshap.DeepExplainer(model, background, compile=False).shap_values(x)
    explainer = rnnshap.DeepExplainer(model, background)
    paths = []
    for _ in range(12):
        np.testing.assert_array_equal(explainer.shap_values(x), expected)
        paths.append(explainer.pass_path)
    assert paths[0].startswith("intercepted: the first call of these shapes"), paths
    assert paths[1].startswith('intercepted: 2 calls of these shapes so far; compile="auto"'), paths
    assert paths[-1].startswith("traced:") and "replayed as one CUDA graph" in paths[-1], paths


def _packed(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, h = m.rnn(packed)
    return m.head(torch.cat([h[0], h[1]], 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [*LAYERS, "gru-packed"])
def test_an_intercepted_calls_reverse_recurrences_on_cuda_are_replayed_as_cuda_graphs_with_the_same_values(
    device: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fused layer's reverse recurrence of 8 steps or more on a CUDA device (recurrent/reverse.py, ``_replayed``): its
    layout's first call runs as it is, the second captures a CUDA graph, kept only where its replay gives the
    recurrence's values bit for bit, and later calls replay it. Each call's values are those without graphs
    (``cuda_graphs.REPLAY = False``) bit for bit: on other inputs of the same shapes, one output or three, and after the
    model's weights change in place (the graph reads its copies of them, made at each call). A packed batch's
    recurrence runs as it is. (The step by step recurrence's graphs: the Triton kernels, which launch once, are off.)"""
    from rnnshap.recurrent import persistent, reverse

    monkeypatch.setattr(persistent, "MODE", None)
    background, x, other = _on_cuda(device, seed=11, references=10, samples=6)
    if name == "gru-packed":
        model = Composite(_packed, rnn=nn.GRU(5, 12, batch_first=True, bidirectional=True), head=nn.Linear(24, 2))
        generator = torch.Generator().manual_seed(12)
        lengths_b, lengths_x = torch.randint(8, 31, (10,), generator=generator), torch.randint(8, 31, (6,), generator=generator)
        background = [background, lengths_b.to(device)]
        x, other = [x, lengths_x.to(device)], [other, lengths_x.to(device)]
    else:
        model = GRAPHED[name]()
    model = model.to(device).eval()
    before = state_of(model)

    def arrays(result: Any) -> list[np.ndarray]:  # (values per input, ranked outputs' indices: each an array)
        return [a for part in result for a in arrays(part)] if isinstance(result, (list, tuple)) else [np.asarray(result)]

    def explained(graphs: str, inputs: Any, **options: Any) -> list[np.ndarray]:
        monkeypatch.setattr(cuda_graphs, "REPLAY", graphs == "1")
        explainer = rnnshap.DeepExplainer(model, background, compile=False)
        return [a for inputs_ in inputs for a in arrays(explainer.shap_values(inputs_, **options))]

    def assert_same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)

    reverse.forget_graphs()
    calls = [x, other, x, other]
    for options in ({}, {"ranked_outputs": 1}):
        assert_same(explained("1", calls, **options), explained("0", calls, **options))
    if name == "gru-packed":  # (a packed batch's recurrence runs as it is)
        assert not reverse.GRAPHS.kept and not reverse.GRAPHS.seen
        return
    assert reverse.GRAPHS.kept and not reverse.GRAPHS.refused, reverse.GRAPHS.refused
    replays = []
    for replayed, _ in reverse.GRAPHS.kept.values():
        monkeypatch.setattr(replayed, "graph", _Counted(replayed.graph, replays))
    with torch.no_grad():
        for weight in [p for n, p in model.named_parameters() if "weight_hh" in n]:
            weight.mul_(0.5)
    assert_same(explained("1", calls[:3]), explained("0", calls[:3]))
    assert replays, "no recurrence was replayed"
    assert_untouched(model, {**before, "values": {k: v for k, v in before["values"].items() if "weight_hh" not in k}})
    reverse.forget_graphs()


class _Counted:
    """A CUDA graph whose replays are counted."""

    def __init__(self, graph: Any, replays: list[int]) -> None:
        self.graph, self.replays = graph, replays

    def replay(self) -> None:
        self.replays.append(1)
        self.graph.replay()


@pytest.mark.parametrize("device", DEVICES)
def test_packed_sequences_on_the_device_match_cpu_float64(device: str) -> None:
    generator = torch.Generator().manual_seed(2)
    background, x = torch.randn(10, 12, 5, generator=generator), torch.randn(6, 12, 5, generator=generator)
    lengths_b = torch.randint(3, 13, (10,), generator=generator)
    lengths_x = torch.randint(3, 13, (6,), generator=generator)
    torch.manual_seed(0)
    model = Composite(_packed, rnn=nn.GRU(5, 12, batch_first=True, bidirectional=True), head=nn.Linear(24, 2)).eval()
    reference = copy.deepcopy(model).double()
    model = model.to(device)
    before = state_of(model)
    values = rnnshap.DeepExplainer(model, [background.to(device), lengths_b.to(device)]).shap_values(
        [x.to(device), lengths_x.to(device)]
    )
    assert_untouched(model, before)
    expected = rnnshap.DeepExplainer(reference, [background.double(), lengths_b]).shap_values([x.double(), lengths_x])
    assert relative_to_max(values[0], expected[0]) <= FLOAT32_VS_FLOAT64
    for i, n in enumerate(lengths_x.tolist()):
        assert np.all(np.asarray(values[0])[i, n:] == 0.0)  # padding reads nothing: exact zeros


@pytest.mark.parametrize("device", DEVICES)
def test_the_shapley_mode_on_the_device_matches_cpu_float64(device: str) -> None:
    generator = torch.Generator().manual_seed(3)
    background, x = torch.randn(6, 6, 5, generator=generator), torch.randn(3, 6, 5, generator=generator)
    torch.manual_seed(0)
    model = recurrent("LSTM").eval()
    reference = copy.deepcopy(model).double()
    model = model.to(device)
    before = state_of(model)
    for door in ("deep", "forward only"):
        door_class: Any = rnnshap.DeepExplainer if door == "deep" else rnnshap.ShapleyExplainer
        budget = 2**6 * 6 + 12  # every coalition against the 6 background rows
        estimate = door_class(model, background.to(device)).shapley_values(x.to(device), players="steps", budget=budget)
        truth = door_class(reference, background.double()).shapley_values(x.double(), players="steps", budget=budget)
        assert bool(np.all(estimate.exact)) and bool(np.all(truth.exact))  # 2^6 coalitions: every one enumerated
        assert relative_to_max(estimate.values, truth.values) <= FLOAT32_VS_FLOAT64
    assert_untouched(model, before)


_KERAS_ON_TORCH = r"""
import json, sys
import numpy as np, torch, keras, rnnshap
device = sys.argv[1]
L = keras.layers
with keras.device(device):
    model = keras.Sequential([keras.Input((8, 3)), L.LSTM(6, return_sequences=True), L.GRU(5), L.Dense(2)])
    rng = np.random.default_rng(0)
    background = rng.normal(size=(10, 8, 3)).astype("float32")
    x = rng.normal(size=(4, 8, 3)).astype("float32")
    before = [np.array(w) for w in model.get_weights()]
    devices = sorted({str(v.value.device) for v in model.weights})
    explainer = rnnshap.DeepExplainer(model, background)
    values = np.asarray(explainer.shap_values(x))
    with torch.no_grad():
        outputs = model(x, training=False).double().cpu().numpy()
print(json.dumps({
    "values": values.tolist(), "outputs": outputs.tolist(), "expected": np.asarray(explainer.expected_value).tolist(),
    "devices": devices, "after": sorted({str(v.value.device) for v in model.weights}),
    "unchanged": all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.get_weights(), strict=True)),
}))
"""


@pytest.mark.parametrize("device", DEVICES)
def test_keras_on_torch_on_the_device_adds_up(device: str, keras_process: Any) -> None:
    import json

    pytest.importorskip("keras")
    result = json.loads(keras_process("torch").run(_KERAS_ON_TORCH, device).strip().splitlines()[-1])
    assert result["unchanged"] and result["devices"] == result["after"]
    assert all(d.startswith(device.split(":")[0]) for d in result["devices"]), result["devices"]
    values = np.asarray(result["values"])
    assert_adds_up_to(np.asarray(result["expected"]) + values.reshape(4, -1, 2).sum(1), np.asarray(result["outputs"]), "float32")


@pytest.mark.parametrize("device", DEVICES)
def test_a_darts_forecaster_on_the_device_adds_up_to_its_own_predict(device: str) -> None:
    pytest.importorskip("darts")
    pytest.importorskip("shap")
    from darts import TimeSeries
    from darts.models import RNNModel

    from rnnshap.darts import ShapExplainer

    accelerator = "gpu" if device.startswith("cuda") else device
    index = int(device.split(":")[1]) if ":" in device else 0
    values = np.random.default_rng(0).normal(size=(40, 1)).cumsum(0).astype(np.float32)
    series = TimeSeries.from_values(values)
    model = RNNModel(
        model="LSTM", input_chunk_length=6, output_chunk_length=1, hidden_dim=8, n_epochs=1, batch_size=16, random_state=0,
        pl_trainer_kwargs=dict(accelerator=accelerator, devices=[index] if accelerator == "gpu" else 1, enable_progress_bar=False,
                               logger=False, enable_model_summary=False, enable_checkpointing=False),
    )  # fmt: skip
    model.fit(series)
    network = model.model
    before = state_of(network)
    result = ShapExplainer(model, series).explain(series)
    assert_untouched(network, before)
    forecasts = model.historical_forecasts(
        series, forecast_horizon=1, stride=1, retrain=False, last_points_only=False, verbose=False, show_warnings=False
    )
    by_start = {f.start_time(): float(f.values()[0, 0]) for f in forecasts}
    shap_object = result.get_shap_explanation_object(1)
    totals = shap_object.values.sum(1) + shap_object.base_values
    starts = list(result.get_explanation(1).time_index)
    checked = [(totals[row], by_start[start]) for row, start in enumerate(starts) if start in by_start]
    assert len(checked) >= len(series) - 7
    assert_adds_up_to(np.array([t for t, _ in checked]), np.array([f for _, f in checked]), "float32")


# -- without a device: what runs here ---------------------------------------------------------------------------
def test_accelerators_lists_every_cuda_device_and_none_without(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)
    assert accelerators() == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert accelerators() == ["cuda:0", "cuda:1"]


def test_the_benchmark_says_there_is_no_device_and_runs_on_the_cpu_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", bench)  # (its dataclasses look their module up)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "default_device", lambda: None)
    assert bench.main([]) == 2
    assert "No CUDA or MPS device" in capsys.readouterr().out
    assert bench.main(["--device", "cpu", "--quick", "--repeats", "1", "--only", "lstm-16-T10"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.strip().startswith("rnnshap"))
    assert float(line.split()[-1]) <= 1e-5  # its additivity error, float32
    assert "(!)" not in printed  # the model and cuDNN's settings left as they were
