"""The reverse recurrences as one Triton kernel per layer (rnnshap/recurrent/persistent.py), checked where no GPU is
through Triton's interpreter, and on a GPU where one is.

Both paths, the kernel and the step-by-step recurrence (rnnshap/recurrent/reverse.py), are compared with the
recurrence run in float64 from its equations, written here again step by step. A value computed in floating point
through at most n roundings of sums of products differs from the exact one by at most γ_n = nε/(1 − nε) times the same
computation on the absolute values of its terms (Higham, Accuracy and Stability of Numerical Algorithms, §3.1, 3.5);
n is a step's inner product (G·H terms) and its few elementwise products, times T, plus the input product. Each path
stays within that bound, and they differ from each other by at most twice it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap
from rnnshap.recurrent import persistent, reverse

from ..models.torch import RecurrentHead

pytest.importorskip("triton", reason="the kernels are Triton's")

Tensor = torch.Tensor
BLOCKS = {"lstm": (4, 6), "gru": (3, 5), "rnn": (1, 1)}


def _equations(kind: str, coefficients: Tensor, d_out: Tensor, states: list[Tensor], w_ih: Tensor, w_hh: Tensor):
    """(dx, *initial states' gradients), the recurrence step by step from its equations (docs/recurrent.md)."""
    hidden = w_hh.shape[1]
    a = coefficients.split(hidden, dim=-1)
    dh, *rest = states
    dc = rest[0] if rest else None
    dx = []
    for t in reversed(range(coefficients.shape[0])):
        a_t = [c[t] for c in a]
        dh = dh + d_out[..., t, :, :]
        if kind == "lstm":
            a_i, a_f, a_g, a_o, a_k, a_c = a_t
            dc = dc + dh * a_k
            du = torch.cat([dc * a_i, dc * a_f, dc * a_g, dh * a_o], -1)
            dh, dc = du @ w_hh, dc * a_c
        elif kind == "gru":
            a_r, a_z, a_n, a_h, a_a = a_t
            dv = dh * a_n
            du = torch.cat([dv * a_r, dh * a_z, dv], -1)
            dh = dh * a_h + torch.cat([dv * a_r, dh * a_z, dv * a_a], -1) @ w_hh
        else:
            du = dh * a_t[0]
            dh = du @ w_hh
        dx.insert(0, du @ w_ih)
    return (torch.stack(dx, -3), dh) + ((dc,) if kind == "lstm" else ())


def _layer(kind: str, outputs: int | None, steps: int, pairs: int, hidden: int, features: int, seed: int = 0):
    """Random float64 arguments of one layer-direction: coefficients, d_out, states, w_ih, w_hh."""
    gen = torch.Generator().manual_seed(seed)
    blocks, coefficient_blocks = BLOCKS[kind]
    lead = () if outputs is None else (outputs,)

    def draw(*shape: int, scale: float = 1.0) -> Tensor:
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    coefficients = draw(steps, pairs, coefficient_blocks * hidden, scale=0.5)
    d_out = draw(*lead, steps, pairs, hidden)
    states = [draw(*lead, pairs, hidden) for _ in range(2 if kind == "lstm" else 1)]
    w_ih = draw(blocks * hidden, features, scale=hidden**-0.5)
    w_hh = draw(blocks * hidden, hidden, scale=hidden**-0.5)
    return coefficients, d_out, states, w_ih, w_hh


def _today(kind: str, coefficients, d_out, states, w_ih, w_hh):
    """The step-by-step recurrence of rnnshap/recurrent/reverse.py, with the kernels off."""
    fn = {"lstm": reverse.lstm_recurrence, "gru": reverse.gru_recurrence, "rnn": reverse.rnn_recurrence}[kind]
    extra = (None,) if kind == "lstm" else ()
    mode, persistent.MODE = persistent.MODE, None
    try:
        return fn(coefficients, None, None, d_out, *states, w_ih, w_hh, *extra)
    finally:
        persistent.MODE = mode


def _gamma(kind: str, steps: int, hidden: int, dtype: torch.dtype) -> float:
    blocks = BLOCKS[kind][0]
    n = steps * (blocks * hidden + 4) + blocks * hidden
    eps = torch.finfo(dtype).eps / 2  # (the unit roundoff)
    return n * eps / (1 - n * eps)


def _check(kind: str, args, dtype: torch.dtype, device: str, interpret: bool) -> None:
    coefficients, d_out, states, w_ih, w_hh = args
    exact = _equations(kind, coefficients, d_out, states, w_ih, w_hh)
    magnitude = _equations(kind, coefficients.abs(), d_out.abs(), [s.abs() for s in states], w_ih.abs(), w_hh.abs())
    bound = [_gamma(kind, coefficients.shape[0], w_hh.shape[1], dtype) * m for m in magnitude]
    moved = [coefficients.to(device, dtype), d_out.to(device, dtype), [s.to(device, dtype) for s in states],
             w_ih.to(device, dtype), w_hh.to(device, dtype)]  # fmt: skip
    kernel = persistent.recurrence(kind, *moved[:2], tuple(moved[2]), *moved[3:], interpret=interpret)
    today = _today(kind, *moved)
    assert len(kernel) == len(exact) == len(today)
    for got, old, want, limit in zip(kernel, today, exact, bound, strict=True):
        assert got.shape == want.shape and got.dtype == dtype
        got, old = got.cpu().double(), old.cpu().double()
        assert ((got - want).abs() <= limit).all(), f"kernel off by {((got - want).abs() / limit).max():.2f} bounds"
        assert ((old - want).abs() <= limit).all(), f"step by step off by {((old - want).abs() / limit).max():.2f} bounds"
        assert ((got - old).abs() <= 2 * limit).all()


SHAPES = [  # (outputs explained or None: no leading axis, T, pairs, hidden, features)
    (None, 5, 3, 8, 2),
    (3, 4, 21, 40, 5),  # (pairs and hidden units not multiples of the kernel's tiles: 16 rows, 32 units)
    (2, 1, 16, 32, 3),  # (one step)
]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, (s[0] or 0, *s[1:]))))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_interpreted_kernel_within_rounding_of_the_equations_and_of_the_step_by_step_path(kind, shape, dtype) -> None:
    _check(kind, _layer(kind, *shape), dtype, "cpu", interpret=True)


@pytest.mark.parametrize("size", [32, 64])
def test_more_rows_per_program_as_a_gpu_with_many_rows_takes(size, monkeypatch) -> None:
    monkeypatch.setattr(persistent, "_rows_per_program", lambda rows, device: size)
    _check("lstm", _layer("lstm", 5, 3, 29, 40, 4), torch.float32, "cpu", interpret=True)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_output_gradients_broadcast_over_the_outputs_as_vmap_rule_gives_them(kind) -> None:
    """The vmap rule expands a gradient that is not batched (a stride of 0 over the outputs): the kernel reads it so."""
    coefficients, d_out, states, w_ih, w_hh = _layer(kind, 3, 6, 5, 8, 2)
    d_out = d_out[:1].expand(3, *d_out.shape[1:])
    states = [states[0][:1].expand(3, *states[0].shape[1:]), *states[1:]]
    _check(kind, (coefficients, d_out, states, w_ih, w_hh), torch.float64, "cpu", interpret=True)


LAYERS = {
    "lstm": lambda: nn.LSTM(3, 20, num_layers=2, batch_first=True),
    "gru": lambda: nn.GRU(3, 20, batch_first=True, bidirectional=True),
    "rnn": lambda: nn.RNN(3, 20, batch_first=True),
}


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("outputs", [1, 3])
def test_explainer_takes_the_kernel_and_gives_the_step_by_step_values(kind, outputs, monkeypatch) -> None:
    """Through the explainer (one output: the plain call; several: the operator's vmap rule), with the kernels run by
    Triton's interpreter on the CPU: the kernel ran, once per layer and direction, and the values are the step-by-step
    path's within the rounding bound of the layer's recurrence (float64: nothing else differs), and add up."""
    torch.manual_seed(0)
    model = RecurrentHead.over(LAYERS[kind](), outputs).double().eval()
    x, background = torch.randn(4, 9, 3, dtype=torch.float64), torch.randn(5, 9, 3, dtype=torch.float64)
    monkeypatch.setattr(persistent, "MODE", None)
    today = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    calls = []
    kernel = persistent.recurrence
    monkeypatch.setattr(persistent, "recurrence", lambda *a, **k: calls.append(a[0]) or kernel(*a, **k))
    monkeypatch.setattr(persistent, "MODE", "interpret")
    got = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    layer = model.rnn_layer
    assert len(calls) == layer.num_layers * (2 if layer.bidirectional else 1) and set(calls) == {kind}
    assert got.shape == today.shape == (*x.shape, outputs)
    np.testing.assert_allclose(got, today, rtol=0, atol=1e-12 * np.abs(today).max())  # (float64: the sums' order alone)
    with torch.no_grad():
        change = (model(x)[:, None, :] - model(background)[None, :, :]).mean(1).numpy()
    np.testing.assert_allclose(got.reshape(4, 27, -1).sum(1), change, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("outputs", [1, 2])
def test_a_traced_program_runs_the_kernel_as_one_operator_with_the_intercepted_values(kind, outputs, monkeypatch) -> None:
    """A traced pass (compile="trace") records the recurrence as one operator, not its steps: the program's run takes
    the kernel, and its values are the intercepted pass's bit for bit."""
    torch.manual_seed(0)
    model = RecurrentHead.over(LAYERS[kind](), outputs).eval()
    x, background = torch.randn(3, 7, 3), torch.randn(4, 7, 3)
    monkeypatch.setattr(persistent, "MODE", "interpret")
    calls = []
    kernel = persistent.recurrence
    monkeypatch.setattr(persistent, "recurrence", lambda *a, **k: calls.append(a[0]) or kernel(*a, **k))
    intercepted = np.asarray(rnnshap.DeepExplainer(model, background, compile=False).shap_values(x))
    program = rnnshap.DeepExplainer(model, background, compile="trace")
    for _ in range(3):  # (the first call intercepted, the second traced, the third the program)
        calls.clear()
        np.testing.assert_array_equal(np.asarray(program.shap_values(x)), intercepted)
        assert calls, "the kernel ran"
    assert "trace" in program.pass_path and "intercept" not in program.pass_path.split(";")[0], program.pass_path


def test_a_kernel_that_fails_warns_once_and_the_step_by_step_recurrence_answers(monkeypatch) -> None:
    torch.manual_seed(0)
    model = RecurrentHead.over(LAYERS["lstm"](), 2).eval()
    x, background = torch.randn(3, 6, 3), torch.randn(4, 6, 3)
    monkeypatch.setattr(persistent, "MODE", None)
    today = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))

    def fails(*args, **kwargs):
        raise RuntimeError("no such device function")

    monkeypatch.setattr(persistent, "FAILED", {})
    monkeypatch.setattr(persistent, "recurrence", fails)
    monkeypatch.setattr(persistent, "MODE", "interpret")
    with pytest.warns(RuntimeWarning, match="LSTM reverse recurrence.*failed.*no such device function"):
        got = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    np.testing.assert_array_equal(got, today)
    assert list(persistent.FAILED) == [("lstm", torch.float32, "cpu")]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x)), today)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compiled_kernel_on_the_gpu_within_rounding(kind, dtype) -> None:
    for shape in [*SHAPES, (3, 60, 64, 128, 16)]:
        _check(kind, _layer(kind, *shape), dtype, "cuda", interpret=False)
