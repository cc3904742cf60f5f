"""Exactness through every recurrent layer and cell, against the independent float64 reference.

The oracle (tests/reference/rnn_deeplift.py) is a numpy implementation of the DeepLIFT rules of
DESIGN.md §1 for one (input, reference) pair at a time, sharing no code with rnnshap. DeepSHAP
is its mean over the background.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnshap
from rnnshap.recurrent import RecurrentCell, RecurrentLayer

from ..conftest import ADDITIVITY_TOL, eps
from ..models.torch import Composite, RecurrentHead
from ..reference.rnn_deeplift import rnn_deeplift


@dataclass(frozen=True)
class Arch:
    kind: str
    input_size: int = 3
    hidden_size: int = 4
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = True
    proj_size: int = 0
    bias: bool = True
    relu: bool = False
    packed: bool = False
    enforce_sorted: bool = False

    def layer(self) -> nn.RNNBase:
        common = dict(num_layers=self.num_layers, bidirectional=self.bidirectional, batch_first=self.batch_first, bias=self.bias)
        if self.kind == "lstm":
            return nn.LSTM(self.input_size, self.hidden_size, proj_size=self.proj_size, **common)
        if self.kind == "gru":
            return nn.GRU(self.input_size, self.hidden_size, **common)
        return nn.RNN(self.input_size, self.hidden_size, nonlinearity="relu" if self.relu else "tanh", **common)

    @property
    def out_features(self) -> int:
        return (2 if self.bidirectional else 1) * (self.proj_size or self.hidden_size)

    def reference_kwargs(self) -> dict:
        return dict(
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            hidden_size=self.hidden_size,
            proj_size=self.proj_size,
            nonlinearity="relu" if self.relu else "tanh",
            bias=self.bias,
        )


def _read_out(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    seq = x if m.arch.batch_first else x.transpose(0, 1)
    if m.arch.packed:
        assert lengths is not None
        packed = pack_padded_sequence(seq, lengths.cpu(), batch_first=m.arch.batch_first, enforce_sorted=m.arch.enforce_sorted)
        out, _ = m.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=m.arch.batch_first, total_length=x.shape[1])
    else:
        out, _ = m.rnn(seq)
    out = out if m.arch.batch_first else out.transpose(0, 1)
    return (out * m.readout).sum((1, 2))


def readout_model(arch: Arch, steps: int) -> Composite:
    """y = Σ_{t,k} W[t,k] · out[t,k] over the layer's full output sequence (batch-first input)."""
    return Composite(_read_out, arch=arch, rnn=arch.layer(), readout=nn.Parameter(torch.randn(steps, arch.out_features)))


def reference_shap(
    model: nn.Module, x: np.ndarray, background: np.ndarray, lengths: list[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the background of the oracle's per-pair attributions, and the per-sample Δ."""
    params = {k: v.detach().double().numpy() for k, v in model.rnn.state_dict().items()}
    readout = model.readout.detach().double().numpy()
    phis, deltas = np.zeros_like(x, dtype=np.float64), np.zeros(len(x))
    for i, xi in enumerate(x):
        length = None if lengths is None else lengths[i]
        for r in background:
            result = rnn_deeplift(model.arch.kind, params, xi, r, readout, length=length, **model.arch.reference_kwargs())
            phis[i] += result["x"] / len(background)
            deltas[i] += result["delta"] / len(background)
    return phis, deltas


def explain(model: nn.Module, x: torch.Tensor, background: torch.Tensor, lengths: torch.Tensor | None, **kwargs) -> np.ndarray:
    if lengths is None:
        return rnnshap.DeepExplainer(model, background, **kwargs).shap_values(x)
    context = torch.full((background.shape[0],), x.shape[1], dtype=torch.long)
    return rnnshap.DeepExplainer(model, [background, context], **kwargs).shap_values([x, lengths])[0]


@st.composite
def architectures(draw: st.DrawFn, max_steps: int = 12) -> tuple[Arch, int]:
    kind = draw(st.sampled_from(["lstm", "gru", "rnn"]))
    packed = draw(st.booleans())
    arch = Arch(
        kind=kind,
        input_size=draw(st.integers(1, 4)),
        hidden_size=draw(st.integers(1, 5)),
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        proj_size=draw(st.integers(0, 2)) if kind == "lstm" else 0,
        bias=draw(st.booleans()),
        relu=kind == "rnn" and draw(st.booleans()),
        packed=packed,
        enforce_sorted=packed and draw(st.booleans()),
    )
    if arch.proj_size >= arch.hidden_size:
        arch = Arch(**{**arch.__dict__, "proj_size": 0})
    return arch, draw(st.integers(1, max_steps))


def _case(arch: Arch, steps: int, seed: int, dtype: torch.dtype, n: int = 3, n_refs: int = 4):
    torch.manual_seed(seed)
    model = readout_model(arch, steps).eval().to(dtype)
    scale = 2.0
    x = scale * torch.randn(n, steps, arch.input_size, dtype=dtype)
    background = scale * torch.randn(n_refs, steps, arch.input_size, dtype=dtype)
    lengths = None
    if arch.packed:
        lengths = torch.randint(1, steps + 1, (n,))
        lengths[0] = steps
        if arch.enforce_sorted:
            lengths = lengths.sort(descending=True).values
    return model, x, background, lengths


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures(), st.integers(0, 2**16))
def test_float64_values_match_the_reference_and_add_up(case: tuple[Arch, int], seed: int) -> None:
    arch, steps = case
    model, x, background, lengths = _case(arch, steps, seed, torch.float64)
    phi = explain(model, x, background, lengths)
    expected, deltas = reference_shap(model, x.numpy(), background.numpy(), None if lengths is None else lengths.tolist())
    np.testing.assert_allclose(phi, expected, rtol=0, atol=1e-9 * max(1.0, np.abs(expected).max()))
    sums = phi.reshape(len(phi), -1).sum(1)
    assert np.all(np.abs(sums - deltas) <= 1e-10 * np.maximum(1.0, np.abs(deltas)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures(max_steps=64), st.integers(0, 2**16))
def test_float32_attributions_add_up(case: tuple[Arch, int], seed: int) -> None:
    arch, steps = case
    model, x, background, lengths = _case(arch, steps, seed, torch.float32)
    explainer_inputs = (x, background, lengths)
    phi = explain(model, *explainer_inputs)
    with torch.no_grad():
        fx = model(x, lengths).double().numpy()
        context = None if lengths is None else lengths
        base = np.mean(
            [model(background[j : j + 1].expand_as(x), context).double().numpy() for j in range(len(background))], axis=0
        )
    delta = fx - base
    sums = phi.reshape(len(phi), -1).sum(1)
    assert np.all(np.abs(sums - delta) <= ADDITIVITY_TOL[torch.float32] * np.maximum(1.0, np.abs(delta)))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_sequences_add_up(kind: str, dtype: torch.dtype) -> None:
    arch = Arch(kind=kind, input_size=2, hidden_size=8, num_layers=2, bidirectional=True)
    model, x, background, _ = _case(arch, 500, 0, dtype, n=2, n_refs=3)
    phi = explain(model, x, background, None)
    with torch.no_grad():
        delta = (model(x) - model(background).mean()).double().numpy()
    sums = phi.reshape(len(phi), -1).sum(1)
    assert np.all(np.abs(sums - delta) <= ADDITIVITY_TOL[dtype] * np.maximum(1.0, np.abs(delta)))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(architectures(max_steps=64), st.integers(0, 2**16))
def test_float64_reference_exhaustive(case: tuple[Arch, int], seed: int) -> None:
    test_float64_values_match_the_reference_and_add_up.hypothesis.inner_test(case, seed)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "arch",
    [
        Arch("lstm", num_layers=2, bidirectional=True, proj_size=2),
        Arch("gru", num_layers=2, bidirectional=True, packed=True),
        Arch("rnn", relu=True, packed=True, bidirectional=True),
        Arch("lstm", packed=True, enforce_sorted=True, bias=False),
    ],
)
def test_fused_and_step_by_step_paths_agree(arch: Arch) -> None:
    model, x, background, lengths = _case(arch, 9, 1, torch.float64)
    op = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_relu if arch.relu else torch.rnn_tanh}[arch.kind]
    fused = explain(model, x, background, lengths)
    stepwise = explain(model, x, background, lengths, rules={op: RecurrentLayer(arch.kind, relu=arch.relu, fused=False)})
    np.testing.assert_allclose(fused, stepwise, rtol=0, atol=1e-12 * np.abs(fused).max())


def _with_initial_state(m: nn.Module, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """The readout's LSTM, its initial states model inputs, batch first: h0, c0 of shape (N, layers·dirs, H)."""
    out, _ = m.inner.rnn(x, (h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous()))
    return (out * m.inner.readout).sum((1, 2))


def test_initial_states_given_as_inputs_get_their_attributions() -> None:
    arch = Arch("lstm", num_layers=2, bidirectional=True, hidden_size=3)
    torch.manual_seed(3)
    steps, groups = 6, 4
    model = Composite(_with_initial_state, inner=readout_model(arch, steps)).double().eval()
    x, background = torch.randn(2, steps, 3, dtype=torch.float64), torch.randn(3, steps, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, groups, 3, dtype=torch.float64), torch.randn(2, groups, 3, dtype=torch.float64)
    h0_b, c0_b = torch.randn(3, groups, 3, dtype=torch.float64), torch.randn(3, groups, 3, dtype=torch.float64)
    phi_x, phi_h, phi_c = rnnshap.DeepExplainer(model, [background, h0_b, c0_b]).shap_values([x, h0, c0])
    params = {k: v.numpy() for k, v in model.inner.rnn.state_dict().items()}
    readout = model.inner.readout.detach().numpy()
    for i in range(2):
        results = [
            rnn_deeplift(
                "lstm",
                params,
                x[i].numpy(),
                background[j].numpy(),
                readout,
                h0[i].numpy(),
                c0[i].numpy(),
                h0_b[j].numpy(),
                c0_b[j].numpy(),
                **arch.reference_kwargs(),
            )
            for j in range(3)
        ]
        np.testing.assert_allclose(phi_x[i], np.mean([r["x"] for r in results], 0), atol=1e-10)
        np.testing.assert_allclose(phi_h[i], np.mean([r["h0"] for r in results], 0), atol=1e-10)
        np.testing.assert_allclose(phi_c[i], np.mean([r["c0"] for r in results], 0), atol=1e-10)
    assert np.abs(phi_h).max() > 1e-3 and np.abs(phi_c).max() > 1e-3


def _cell_loop(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = torch.zeros(x.shape[0], 4, dtype=x.dtype)
    c = torch.zeros_like(h)
    total = 0
    for t in range(x.shape[1]):
        if m.kind == "lstm":
            h, c = m.cell(x[:, t], (h, c))
        else:
            h = m.cell(x[:, t], h)
        total = total + (h * m.readout[t]).sum(-1)
    return total


def cell_loop(kind: str, steps: int) -> Composite:
    """A Python loop over a cell, equivalent to a one-layer recurrent layer with the same weights."""
    cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[kind](3, 4)
    return Composite(_cell_loop, kind=kind, cell=cell, readout=nn.Parameter(torch.randn(steps, 4)))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("fused", [True, False])
def test_cells_in_python_loops_match_the_reference(kind: str, fused: bool) -> None:
    torch.manual_seed(4)
    steps = 5
    model = cell_loop(kind, steps).double().eval()
    x, background = 2 * torch.randn(3, steps, 3, dtype=torch.float64), 2 * torch.randn(4, steps, 3, dtype=torch.float64)
    op = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}[kind]
    phi = rnnshap.DeepExplainer(model, background, rules={op: RecurrentCell(kind, fused=fused)}).shap_values(x)
    layer_names = {"weight_ih": "weight_ih_l0", "weight_hh": "weight_hh_l0", "bias_ih": "bias_ih_l0", "bias_hh": "bias_hh_l0"}
    params = {layer_names.get(k, k): v.numpy() for k, v in model.cell.state_dict().items()}
    readout = model.readout.detach().numpy()
    for i in range(3):
        expected = np.mean(
            [
                rnn_deeplift(kind, params, x[i].numpy(), r.numpy(), readout, num_layers=1, bidirectional=False, hidden_size=4)[
                    "x"
                ]
                for r in background
            ],
            0,
        )
        np.testing.assert_allclose(phi[i], expected, atol=1e-10)


def test_plain_gradient_times_delta_misses_additivity_where_rnnshap_does_not() -> None:
    """What shap and Captum compute for an LSTM (gradient × Δ) is not what rnnshap computes."""
    arch = Arch("lstm", num_layers=2, hidden_size=6)
    model, x, background, _ = _case(arch, 10, 5, torch.float64)
    phi = explain(model, x, background, None)
    gradient_phi = np.zeros_like(phi)
    for r in background:
        xs = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xs).sum(), xs)
        gradient_phi += (grad * (x - r)).numpy() / len(background)
    with torch.no_grad():
        delta = (model(x) - model(background).mean()).numpy()
    gradient_error = np.abs(gradient_phi.reshape(3, -1).sum(1) - delta)
    assert gradient_error.max() > 1e-2 * np.abs(delta).max()
    assert np.abs(phi.reshape(3, -1).sum(1) - delta).max() < 1e-10 * max(1, np.abs(delta).max())
    assert np.abs(phi - gradient_phi).max() > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(("dtype", "ulps"), [(torch.float16, 20), (torch.bfloat16, 12.8)])
def test_half_precision_models_are_explained_like_their_float64_copy(kind: str, dtype: torch.dtype, ulps: float) -> None:
    """16-bit models: the blend's Δu⁴ would overflow float16 (65504 at |Δu| = 16), so the
    multipliers are formed in float32; the values follow the float64 copy to 16-bit accuracy and
    pass the explainer's own additivity check for the dtype."""
    arch = Arch(kind, num_layers=2, hidden_size=8)
    model, x, background, _ = _case(arch, 10, 0, torch.float64)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(4)  # pre-activation differences well past 16
    expected = explain(model, x, background, None)
    half = explain(model.to(dtype), x.to(dtype), background.to(dtype), None)
    np.testing.assert_allclose(half.astype(np.float64), expected, rtol=0, atol=ulps * eps(dtype) * np.abs(expected).max())


#: the host syncs torch's profiler names: .item() / bool() / int() of a tensor, torch.equal, nonzero
_HOST_SYNCS = ("aten::_local_scalar_dense", "aten::equal", "aten::nonzero", "aten::is_nonzero")


@pytest.mark.parametrize("layer", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_the_fused_layers_wait_on_the_device_only_to_check_the_pair_rows_never_per_step(layer: str) -> None:
    """Inside a fused recurrent layer (its forward and its reverse recurrence) nothing is read back from the device
    but the check that each side's rows repeat as the pair grid says (torch.equal, once per tensor of a layer
    call): as many syncs at 21 steps as at 7, and no value read back to decide a branch (on a GPU each would stall
    the queue). The relu secant tested for equal pre-activations on the host first."""
    make = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k)}

    def syncs(steps: int) -> list[str]:
        torch.manual_seed(0)
        rnn = make[layer](3, 6, batch_first=True)

        explainer = rnnshap.DeepExplainer(RecurrentHead.over(rnn, 2).eval(), torch.randn(3, steps, 3))
        X = torch.randn(2, steps, 3)
        explainer.shap_values(X)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            explainer.shap_values(X, check_additivity=False)

        def inside(event: object) -> list[str]:
            children = getattr(event, "cpu_children", [])
            return [event.name] + [name for child in children for name in inside(child)]  # type: ignore[attr-defined]

        fused = [e for e in prof.events() if e.cpu_parent is None and "Fused" in e.name]
        assert len(fused) >= 2  # the forward and the backward of the layer
        return [name for event in fused for name in inside(event) if name in _HOST_SYNCS]

    short, long = syncs(7), syncs(21)
    assert set(short) <= {"aten::equal"}, short
    assert len(short) == len(long) <= 6





def _cell_loop_head(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = c = x.new_zeros(x.shape[0], 5)
    for t in range(x.shape[1]):
        if m.kind == "lstm":
            h, c = m.cell(x[:, t], (h, c))
        else:
            h = m.cell(x[:, t], h)
    return m.head(h)


@pytest.mark.parametrize("model", ["lstm", "gru", "lstm_cell", "gru_cell"])
def test_an_explanation_waits_on_the_device_as_often_at_21_steps_as_at_7(model: str) -> None:
    """The host syncs of a whole call (input checks, a layer's rows' checks, a cell's read once after the passes)
    do not grow with the sequence: a cell in a Python loop read its rows' check at each step, six times. Counted as
    on a device (``values_unread``): on the CPU, where a read waits for nothing, a cell reads its checks at each step
    (``torch.equal``, no tensor made), as the max-pool and attention rules do."""
    from rnnshap.formulas.torch_ops import values_unread

    def syncs(steps: int) -> tuple[list[str], np.ndarray, torch.Tensor]:
        torch.manual_seed(0)
        if model.endswith("_cell"):
            kind = model.removesuffix("_cell")
            cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](3, 5)
            net: nn.Module = Composite(_cell_loop_head, kind=kind, cell=cell, head=nn.Linear(5, 2))
        else:
            net = RecurrentHead.over({"lstm": nn.LSTM, "gru": nn.GRU}[model](3, 5, batch_first=True), 2)
        background, X = torch.randn(3, steps, 3), torch.randn(2, steps, 3)
        explainer = rnnshap.DeepExplainer(net.eval(), background)
        explainer.shap_values(X)
        with values_unread(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            values = explainer.shap_values(X, check_additivity=False)
        with torch.no_grad():
            gap = net(X) - net(background).mean(0)
        syncs = [e.name for e in prof.events() if e.name in _HOST_SYNCS and e.name != "aten::is_nonzero"]  # (bool(t): both)
        return syncs, values, gap

    (short, _, _), (long, values, gap) = syncs(7), syncs(21)
    assert len(short) == len(long) <= 8 + (6 if model in ("lstm", "gru") else 0), (short, long)  # (a layer's checks: 6)
    np.testing.assert_allclose(values.sum((1, 2)), gap.numpy(), rtol=0, atol=1e-5)


def test_the_reverse_recurrences_batch_over_any_argument_under_vmap() -> None:
    """The reverse recurrences are operators with their own vmap rule (the explainer batches the outputs'
    gradients through it): batched over the gradients, or over anything else (the weights, one element at a
    time), they give what one call per batch element gives."""
    from rnnshap.recurrent.reverse import gru_reverse, lstm_reverse, rnn_reverse

    torch.manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:  # (float64: a batch's products and one element's round alike)
        return torch.randn(*shape, dtype=torch.float64)

    steps, pairs, hidden, features, batch = 4, 3, 5, 2, 3
    coefficients = {"lstm": randn(steps, pairs, 6 * hidden), "gru": randn(steps, pairs, 5 * hidden)}
    coefficients["rnn"] = randn(steps, pairs, hidden)
    gates = {"lstm": 4, "gru": 3, "rnn": 1}
    for kind, op in (("lstm", lstm_reverse), ("gru", gru_reverse), ("rnn", rnn_reverse)):
        w_ih, w_hh = randn(batch, gates[kind] * hidden, features), randn(batch, gates[kind] * hidden, hidden)
        d_out, d_h = randn(batch, steps, pairs, hidden), randn(batch, pairs, hidden)
        states = (d_h, randn(batch, pairs, hidden)) if kind == "lstm" else (d_h,)
        extra = (None,) if kind == "lstm" else ()  # (no projection)

        def call(d_out: torch.Tensor, *rest: torch.Tensor, op: Any = op, kind: str = kind, extra: tuple = extra) -> Any:
            *grads, w_ih, w_hh = rest
            return op(coefficients[kind], None, None, d_out, *grads, w_ih, w_hh, *extra)

        one_by_one = [call(d_out[b], *(s[b] for s in states), w_ih[b], w_hh[b]) for b in range(batch)]
        for batched_weights in (False, True):
            weights = (w_ih, w_hh) if batched_weights else (w_ih[0], w_hh[0])
            in_dims = (0,) * (1 + len(states)) + ((0, 0) if batched_weights else (None, None))
            batched = torch.func.vmap(call, in_dims=in_dims)(d_out, *states, *weights)
            for b in range(batch):
                expected = one_by_one[b] if batched_weights else call(d_out[b], *(s[b] for s in states), *weights)
                for got, want in zip(batched, expected, strict=True):
                    torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_the_reverse_recurrences_take_gradients_batched_on_any_axis_or_on_none(kind: str) -> None:
    """vmap hands the operators' gradients batched on any axis (or not batched, expanded), so that the recurrence
    sees permuted and broadcast layouts: it views its states as matrices for the products only where their layout
    allows, and gives what one call per batch element gives (float64: the batch's matrix products and one element's
    round alike but for the last bits)."""
    from rnnshap.recurrent.reverse import gru_reverse, lstm_reverse, rnn_reverse

    torch.manual_seed(0)
    steps, pairs, hidden, features, batch = 4, 3, 5, 2, 3
    gates, width = {"lstm": (4, 6), "gru": (3, 5), "rnn": (1, 1)}[kind]
    op = {"lstm": lstm_reverse, "gru": gru_reverse, "rnn": rnn_reverse}[kind]
    coefficients = torch.randn(steps, pairs, width * hidden, dtype=torch.float64)
    w_ih = torch.randn(gates * hidden, features, dtype=torch.float64)
    w_hh = torch.randn(gates * hidden, hidden, dtype=torch.float64)
    d_out = torch.randn(steps, pairs, batch, hidden, dtype=torch.float64)  # batched on axis 2 (of the per-element 3)
    d_h = torch.randn(pairs, hidden, batch, dtype=torch.float64)  # on the last axis
    d_c = torch.randn(pairs, hidden, dtype=torch.float64)  # not batched: the rule expands it

    def call(d_out: torch.Tensor, d_h: torch.Tensor) -> Any:
        states = (d_h, d_c, w_ih, w_hh, None) if kind == "lstm" else (d_h, w_ih, w_hh)
        return op(coefficients, None, None, d_out, *states)

    batched = torch.func.vmap(call, in_dims=(2, 2))(d_out, d_h)
    for b in range(batch):
        for got, want in zip(batched, call(d_out[:, :, b].contiguous(), d_h[..., b].contiguous()), strict=True):
            torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", ["lstm", "gru", "rnn"])
def test_the_input_gradient_is_the_same_a_step_at_a_time_or_all_at_once(layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reverse recurrence forms the input gradient a chunk of steps at a time on the CPU (a cache's worth):
    one step per chunk, a few, or all at once, the values agree (float64)."""
    from rnnshap.recurrent import reverse

    torch.manual_seed(0)
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[layer](3, 5, batch_first=True).double()
    model = RecurrentHead.over(rnn, 2).double().eval()
    x, background = torch.randn(2, 9, 3, dtype=torch.float64), torch.randn(3, 9, 3, dtype=torch.float64)

    def explain(chunk_bytes: int) -> np.ndarray:
        monkeypatch.setattr(reverse, "_CHUNK_BYTES", chunk_bytes)
        return rnnshap.DeepExplainer(model, background).shap_values(x)

    whole = explain(1 << 30)
    for chunk_bytes in (1, 3 * 2 * 6 * 4 * 5 * 8):  # (a step per chunk; a few steps)
        np.testing.assert_allclose(explain(chunk_bytes), whole, rtol=0, atol=1e-12 * np.abs(whole).max())


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_a_cells_step_runs_the_cells_own_kernel_bit_for_bit(kind: str) -> None:
    """One step of a fused layer (a cell's call in a Python loop) gives, on the input side and on the reference side,
    the new states (h and, for an LSTM, c) the model's own cell kernel gives on the same rows, bit for bit (float32):
    the explained trajectory of a loop is the model's, not one a rounding away from it. (GRU and Elman steps took
    torch's cell arithmetic before; the LSTM's ran oneDNN's layer kernel and its own cell-state update.)"""
    from rnnshap.recurrent import fused
    from rnnshap.recurrent.weights import CellWeights

    torch.manual_seed(0)
    cell = {"lstm": nn.LSTMCell(3, 6), "gru": nn.GRUCell(3, 6), "rnn_tanh": nn.RNNCell(3, 6)}.get(kind) or nn.RNNCell(
        3, 6, nonlinearity="relu"
    )
    w = CellWeights(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    x, x_r, h, h_r, c, c_r = (5 * torch.randn(8, n) for n in (3, 3, 6, 6, 6, 6))
    with torch.no_grad():
        if kind == "lstm":
            out, h_n, c_n, out_r, h_n_r, c_n_r = fused.FusedLSTM.apply(w, None, None, x[None], h, c, x_r[None], h_r, c_r)
            for states, own in (((h_n, c_n), cell(x, (h, c))), ((h_n_r, c_n_r), cell(x_r, (h_r, c_r)))):
                assert torch.equal(states[0], own[0]) and torch.equal(states[1], own[1])
        else:
            if kind == "gru":
                out, h_n, out_r, h_n_r = fused.FusedGRU.apply(w, None, None, x[None], h, x_r[None], h_r)
            else:
                out, h_n, out_r, h_n_r = fused.FusedRNN.apply(w, None, None, kind == "rnn_relu", x[None], h, x_r[None], h_r)
            assert torch.equal(h_n, cell(x, h)) and torch.equal(h_n_r, cell(x_r, h_r))
        assert torch.equal(out[0], h_n) and torch.equal(out_r[0], h_n_r)


@pytest.mark.parametrize("layer", ["lstm", "gru", "rnn"])
def test_the_fused_layers_run_the_shared_reverse_step(layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reverse recurrence's step is written once, in rnnshap/formulas/recurrence.py (the Keras engine's fused
    layers run it too: tests/engines/keras/test_keras_fused.py): a fused layer's backward calls it at every step."""
    from rnnshap.formulas import recurrence

    name = {"lstm": "lstm_step", "gru": "gru_step", "rnn": "rnn_step"}[layer]
    step, calls = getattr(recurrence, name), []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(recurrence, name, counted)
    torch.manual_seed(0)
    steps = 6
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[layer](3, 5, batch_first=True)
    model = RecurrentHead.over(rnn, 2).eval()
    x, background = torch.randn(2, steps, 3), torch.randn(3, steps, 3)
    values = rnnshap.DeepExplainer(model, background).shap_values(x)
    assert calls and len(calls) % steps == 0
    gap = (model(x) - model(background).mean(0)).detach().numpy()
    np.testing.assert_allclose(values.sum((1, 2)), gap, rtol=0, atol=1e-5)


#: operations a step of each layer's reverse recurrence may run (at most 8 a step for the whole pass; an
#: LSTM's forward runs one more a step, its cell states' multiply-add): what a device launches, views aside
REVERSE_OPERATIONS_PER_STEP = {"lstm": 8, "gru": 10, "rnn": 3}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("outputs", [None, 3])
def test_a_step_of_the_reverse_recurrence_runs_few_operations(kind: str, outputs: int | None) -> None:
    """Each step of a reverse recurrence is a handful of kernels on a device, so its count bounds the pass's launches:
    the operations that compute (no views, no allocations), counted below autograd and vmap at two lengths, grow by
    at most REVERSE_OPERATIONS_PER_STEP a step, with one output and with several (the operator under vmap)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from rnnshap.recurrent import reverse

    aten = torch.ops.aten
    free = {aten.empty.memory_format, aten.empty_strided.default, aten.detach.default, aten._unsafe_view.default}

    class Computing(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.count += not (func.is_view or func in free)
            return func(*args, **(kwargs or {}))

    gates, width = {"lstm": (4, 6), "gru": (3, 5), "rnn": (1, 1)}[kind]
    # (one output: the layers' backward runs the plain recurrence; several: the operator, whose vmap rule runs it)
    op = getattr(reverse, f"{kind}_recurrence" if outputs is None else f"{kind}_reverse")
    pairs, hidden, features = 6, 5, 2

    def operations(steps: int) -> int:
        torch.manual_seed(0)
        coefficients = torch.randn(steps, pairs, width * hidden)
        w_ih, w_hh = torch.randn(gates * hidden, features), torch.randn(gates * hidden, hidden)
        lead = () if outputs is None else (outputs,)
        d_out = torch.randn(*lead, steps, pairs, hidden)
        d_h, d_c = torch.randn(*lead, pairs, hidden), torch.randn(*lead, pairs, hidden)

        def call(d_out: torch.Tensor, d_h: torch.Tensor, d_c: torch.Tensor) -> Any:
            states = (d_h, d_c, w_ih, w_hh, None) if kind == "lstm" else (d_h, w_ih, w_hh)
            return op(coefficients, None, None, d_out, *states)

        with Computing() as mode:
            call(d_out, d_h, d_c) if outputs is None else torch.func.vmap(call)(d_out, d_h, d_c)
        return mode.count

    assert (operations(12) - operations(6)) / 6 <= REVERSE_OPERATIONS_PER_STEP[kind]


class StandInGraph:
    """A stand-in, on the CPU, for ``cuda_graphs.Replayed`` (a CUDA graph needs CUDA: tests/test_gpu.py runs the real
    one), with its contract: made from a run and its inputs (refused where one is a broadcast view), each call copies
    its arguments into the tensors it was made with, runs, and returns copies of the results; ``off`` shifts them, as
    a replay that differs would."""

    made: list[StandInGraph] = []
    off = 0.0

    def __init__(self, run: Any, inputs: list[torch.Tensor]) -> None:
        if any(t.numel() > 1 and 0 in t.stride() for t in inputs):
            raise ValueError("an input is a broadcast view, which a graph's own input tensor cannot be")
        self.run, self.calls = run, 0
        self.inputs = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(t) for t in inputs]
        StandInGraph.made.append(self)

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        for mine, argument in zip(self.inputs, tensors, strict=True):
            mine.copy_(argument)
        return [t.clone() + self.off for t in self.run(*self.inputs)]


@pytest.fixture
def stand_in_graphs(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The recurrences' CUDA graphs on the CPU: every gate of reverse._may_capture but the device's (a CPU of 1 TB),
    and StandInGraph for the graph."""
    from rnnshap.engines import cuda_graphs
    from rnnshap.recurrent import reverse

    memory = 1 << 40
    monkeypatch.setattr(reverse, "_graphable", lambda steps, tensors: reverse._may_capture(steps, tensors, memory))
    monkeypatch.setattr(reverse, "_memory", lambda device: memory)
    monkeypatch.setattr(cuda_graphs, "Replayed", StandInGraph)
    monkeypatch.setattr(StandInGraph, "made", [])
    reverse.forget_graphs()
    yield reverse
    reverse.forget_graphs()


def test_a_long_recurrence_on_cuda_runs_first_as_it_is_then_is_checked_as_a_graph_then_replayed(
    stand_in_graphs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy by which recurrent/reverse.py replays a long reverse recurrence on a CUDA device as a CUDA graph (on
    the CPU with StandInGraph): a layout's first call runs as it is, its second captures the graph and returns the
    recurrence's own values, later calls of the layout replay it on their own arguments; a graph whose replay differs
    from the recurrence is refused, for good; a layout that does not fit beside the graphs kept is refused; the least
    recently used graph goes first past GRAPHS_KEPT; a packed or masked batch runs as it is; forget_graphs drops them
    all."""
    reverse = stand_in_graphs
    made = StandInGraph.made
    plain = inspect.unwrap(reverse.rnn_recurrence)  # (the recurrence itself, under its kernel and graph wrappers)

    def arguments(seed: int, pairs: int = 4) -> tuple[Any, ...]:
        torch.manual_seed(seed)
        d_out, d_h = torch.randn(3, 10, pairs, 5), torch.randn(3, pairs, 5)
        return torch.randn(10, pairs, 5), None, None, d_out, d_h, torch.randn(5, 2), torch.randn(5, 5)

    def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    first, second, third = arguments(0), arguments(1), arguments(2)
    assert same(reverse.rnn_recurrence(*first), plain(*first)) and not made and len(reverse.GRAPHS.seen) == 1
    assert same(reverse.rnn_recurrence(*second), plain(*second)) and len(made) == 1 and made[0].calls == 1
    assert same(reverse.rnn_recurrence(*third), plain(*third)) and made[0].calls == 2 and len(reverse.GRAPHS.kept) == 1
    strided = list(third)
    strided[3] = third[3].transpose(0, 1).contiguous().transpose(0, 1)  # (the same shape, other strides: another layout)
    assert same(reverse.rnn_recurrence(*strided), plain(*strided)) and made[0].calls == 2 and len(reverse.GRAPHS.seen) == 2

    monkeypatch.setattr(StandInGraph, "off", 1e-3)  # (another layout, whose replay differs)
    other = [arguments(seed, pairs=6) for seed in range(3)]
    for arg in other:
        assert same(reverse.rnn_recurrence(*arg), plain(*arg))
    assert made[-1].calls == 1 and len(reverse.GRAPHS.refused) == 1, "a replay that differs is not used"
    assert "other values" in next(iter(reverse.GRAPHS.refused.values()))
    monkeypatch.setattr(StandInGraph, "off", 0.0)
    reverse.GRAPHS.seen.clear()
    for arg in other:
        reverse.rnn_recurrence(*arg)
    assert len(made) == 2, "a refused layout is refused for good"

    short = list(arguments(0))
    short[0], short[3] = short[0][:7], short[3][:, :7]  # (7 steps: fewer than GRAPH_STEPS)
    masked = list(arguments(0))
    masked[1] = torch.ones(10, 4, 1, dtype=torch.bool)  # (a packed or masked batch)
    for arg in (short, masked):
        for _ in range(3):
            assert same(reverse.rnn_recurrence(*arg), plain(*arg))
    assert len(made) == 2 and not reverse.GRAPHS.seen, "neither is noted, nor captured"

    held = reverse.GRAPHS.held()
    monkeypatch.setattr(reverse, "GRAPHS_SHARE", 1.5 * held / (1 << 40))  # (room for the one kept, not for another)
    for seed in range(3):
        reverse.rnn_recurrence(*arguments(seed, pairs=5))
    assert len(made) == 2 and "share of the device's memory" in list(reverse.GRAPHS.refused.values())[-1]
    monkeypatch.setattr(reverse, "GRAPHS_SHARE", 1 / 8)

    monkeypatch.setattr(reverse, "GRAPHS_KEPT", 2)
    reverse.forget_graphs()
    for pairs in (7, 8, 7, 9, 9):  # (7 and 8 kept; 7 replayed; 9 seen, then kept in place of 8)
        for seed in range(2 if pairs in (7, 8) else 1):
            reverse.rnn_recurrence(*arguments(seed, pairs))
    assert [key[1][0][0][1] for key in reverse.GRAPHS.kept] == [7, 9], "the least recently used goes first"

    monkeypatch.setattr(reverse, "GRAPHS_NOTED", 3)  # (layouts noted as seen: the oldest dropped)
    for pairs in range(10, 15):
        reverse.rnn_recurrence(*arguments(0, pairs))
    assert [key[1][0][0][1] for key in reverse.GRAPHS.seen][-3:] == [12, 13, 14] and len(reverse.GRAPHS.seen) == 3
    reverse.forget_graphs()
    assert not reverse.GRAPHS.kept and not reverse.GRAPHS.seen and not reverse.GRAPHS.refused


def test_a_recurrence_may_be_captured_only_where_nothing_traces_or_differentiates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """reverse._may_capture, the gates of a capture but the device's: 8 steps or more, cuda_graphs.REPLAY, no
    trace (make_fx) and no gradient taken through it, and what it would hold within GRAPHS_SHARE of the device."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from rnnshap.engines import cuda_graphs
    from rnnshap.recurrent import reverse

    tensors = [torch.randn(10, 4, 5), torch.randn(5, 5)]
    memory = 1 << 40
    assert reverse._may_capture(10, tensors, memory)
    assert not reverse._may_capture(7, tensors, memory)
    assert not reverse._may_capture(10, tensors, reverse._holds(tensors) * 7)  # (1/8 of the device: too little)
    with torch.enable_grad():
        assert not reverse._may_capture(10, [tensors[0].requires_grad_(True), tensors[1]], memory)
    tensors[0].requires_grad_(False)
    monkeypatch.setattr(cuda_graphs, "REPLAY", False)
    assert not reverse._may_capture(10, tensors, memory)
    monkeypatch.setattr(cuda_graphs, "REPLAY", True)
    seen = []

    def traced(x: torch.Tensor) -> torch.Tensor:
        seen.append(reverse._may_capture(10, [tensors[0], x], memory))
        return x + 1

    make_fx(traced)(torch.randn(5, 5))
    assert seen == [False]


@pytest.mark.parametrize("case", ["lstm", "lstm-one-output", "gru-stacked-bidirectional", "rnn-packed"])
def test_an_explainer_with_its_recurrences_replayed_gives_the_values_it_gives_without(
    case: str, stand_in_graphs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explainer's recurrences through the graphs' path (on the CPU with StandInGraph; tests/test_gpu.py runs the
    real CUDA graphs): the fused layers' backward with one output and under vmap with three (whose gradients not
    batched come as broadcast views, copied whole), stacked and bidirectional layers, other inputs of the same shapes,
    the weights changed in place between calls: each call's values those of the recurrences run as they are, bit for
    bit, and replays made; a packed batch's recurrences run as they are."""
    from rnnshap.engines import cuda_graphs
    from rnnshap.engines.pytorch import traced

    if traced.EVERY_PASS:
        pytest.skip("every pass traced (--trace-every-pass): a traced program runs the recurrence's operations")
    reverse = stand_in_graphs
    torch.manual_seed(0)
    kind, *rest = case.split("-")
    layer = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](
        3, 6, batch_first=True, **({"num_layers": 2, "bidirectional": True} if "stacked" in case else {})
    )
    background, x, other = torch.randn(5, 12, 3), torch.randn(3, 12, 3), torch.randn(3, 12, 3)
    if case == "rnn-packed":
        model = Composite(_packed_head, rnn=layer, head=nn.Linear(6, 2)).eval()
        lengths = torch.tensor([12, 9, 10])
        background, x, other = [background, torch.tensor([12, 8, 9, 11, 10])], [x, lengths], [other, lengths]
    else:
        model = RecurrentHead.over(layer, 3).eval()
    options = {"ranked_outputs": 1} if "one-output" in case else {}

    def values(graphs: str) -> list[np.ndarray]:
        monkeypatch.setattr(cuda_graphs, "REPLAY", graphs == "1")
        explainer = rnnshap.DeepExplainer(model, background, compile=False)
        results = [explainer.shap_values(a, **options) for a in (x, other, x, other)]
        return [np.asarray(a) for r in results for a in (r if isinstance(r, (list, tuple)) else [r])]

    def assert_same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)

    assert_same(values("1"), values("0"))
    replays = sum(graph.calls for graph in StandInGraph.made)
    if case == "rnn-packed":
        assert not StandInGraph.made and not reverse.GRAPHS.seen
        return
    assert reverse.GRAPHS.kept and not reverse.GRAPHS.refused and replays > len(StandInGraph.made), reverse.GRAPHS.refused
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "weight_hh" in name:
                weight.mul_(0.5)
    assert_same(values("1"), values("0"))
    assert sum(graph.calls for graph in StandInGraph.made) > replays


def _packed_head(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, h = m.rnn(packed)
    return m.head(h[-1])
