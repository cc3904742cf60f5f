"""Models and calling habits new users bring (random forwards, in-place updates, autocast, sparse buffers, nested
outputs, dicts, inference mode...), each exact or refused by name.

Every test checks its truth against something rnnshap does not compute (the model's own outputs,
the model written another way, a float64 copy, zeros where the model cannot read an input), and
that explaining left the model's parameters, buffers and training flags bit-identical.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...conftest import assert_additive, model_outputs, output_gap, phi_totals
from ...models.torch import Composite, RecurrentHead

Tensor = torch.Tensor
D = torch.float64


# -- the model is left as it was --------------------------------------------------------------------------------
def snapshot(model: nn.Module) -> dict[str, Any]:
    """Parameters, buffers (values, dtypes, the objects) and every module's training flag."""
    return {
        "parameters": [(name, p, p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()],
        "buffers": [(name, b, b.clone()) for name, b in model.named_buffers()],
        "flags": [(name, m.training) for name, m in model.named_modules()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    """Every parameter and buffer bit-identical (the same objects), every flag as it was."""
    now = snapshot(model)
    assert [n for n, *_ in now["parameters"]] == [n for n, *_ in before["parameters"]]
    for (name, p, _, grad), (_, p0, saved, grad0) in zip(now["parameters"], before["parameters"], strict=True):
        assert p is p0 and grad == grad0, f"parameter {name} replaced"
        assert p.dtype == saved.dtype and torch.equal(p.detach(), saved), f"parameter {name} changed"
    assert [n for n, *_ in now["buffers"]] == [n for n, *_ in before["buffers"]]
    for (name, b, _), (_, b0, saved) in zip(now["buffers"], before["buffers"], strict=True):
        assert b is b0, f"buffer {name} replaced"
        same = b.to_dense().equal(saved.to_dense()) if b.is_sparse else torch.equal(b, saved)
        assert b.dtype == saved.dtype and same, f"buffer {name} changed"
    assert now["flags"] == before["flags"]


# -- 1. a forward that draws random numbers is refused at construction --------------------------------------------
def teacher(m: nn.Module) -> bool:
    """Teacher forcing or not, drawn from ``m.source``."""
    if m.source == "python":
        return random.random() < 0.5
    if m.source == "numpy":
        return bool(np.random.rand() < 0.5)
    if m.source == "generator":
        return bool(torch.rand((), generator=m.generator) < 0.5)
    if m.source == "none":
        return False
    raise AssertionError(m.source)


def decode(m: nn.Module, x: Tensor) -> Tensor:
    _, h = m.encoder(x)
    h = h[0]
    y = x[:, -1, :1]
    outs = []
    for t in range(3):
        h = m.cell(y, h)
        out = m.head(h)
        outs.append(out)
        y = x[:, t, :1] if teacher(m) else out
    return torch.cat(outs, 1)


def teacher_forcing(source: str) -> nn.Module:
    """A seq2seq decoder that decides teacher forcing by a random draw, from one of four sources."""
    return Composite(decode, encoder=nn.GRU(2, 4, batch_first=True), cell=nn.GRUCell(1, 4), head=nn.Linear(4, 1),
                     source=source, generator=torch.Generator().manual_seed(3))  # fmt: skip


def sample_normal(m: nn.Module, x: Tensor) -> Tensor:
    mu, s = m.linear(x).unbind(-1)
    return torch.distributions.Normal(mu, nn.functional.softplus(s)).rsample()[:, None]


def sampled_head() -> nn.Module:
    """A head that samples from a distribution: torch.distributions' sampling."""
    return Composite(sample_normal, linear=nn.Linear(3, 2))


def _rng_states() -> tuple[Any, ...]:
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()


@pytest.mark.parametrize("source", ["python", "numpy", "generator", "distribution"])
def test_1_a_forward_that_draws_random_numbers_is_refused_by_name(source: str) -> None:
    model = (sampled_head() if source == "distribution" else teacher_forcing(source)).to(D).eval()
    shape = (6, 3) if source == "distribution" else (6, 4, 2)
    background = torch.randn(*shape, dtype=D)
    before = snapshot(model)
    python, numpy_state, torch_state = _rng_states()
    with pytest.raises(rnnshap.ModelStateError, match="random") as info:
        rnnshap.DeepExplainer(model, background)
    words = {"python": "Python's random", "numpy": "numpy", "generator": "torch", "distribution": "torch"}
    assert words[source] in str(info.value)
    assert_unchanged(model, before)
    # the global random states are as they were (the draws are put back)
    python_after, numpy_after, torch_after = _rng_states()
    assert python_after == python and np.array_equal(numpy_after, numpy_state) and torch.equal(torch_after, torch_state)


def test_1_the_same_model_without_a_draw_is_exact() -> None:
    model = teacher_forcing("none").to(D).eval()
    background, X = torch.randn(6, 4, 2, dtype=D), torch.randn(3, 4, 2, dtype=D)
    before = snapshot(model)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)
    assert_unchanged(model, before)


# -- 2. a model changed in place after the explainer was built ---------------------------------------------------
def test_2_expected_value_follows_a_model_updated_in_place() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(D).eval()
    background, X = torch.randn(8, 3, dtype=D), torch.randn(4, 3, dtype=D)
    explainer = rnnshap.DeepExplainer(model, background)
    with torch.no_grad():  # fine-tuning the same object
        model[2].bias.add_(1.0)
        model[0].weight.mul_(1.5)
    # read before any call: the mean of the model's own outputs as they are now
    np.testing.assert_allclose(explainer.expected_value, model_outputs(model, background).mean(0), rtol=1e-12, atol=1e-12)
    before = snapshot(model)
    values = explainer.shap_values(X)
    # the README's check, against the model's own outputs
    totals = phi_totals(values, 4, 2) + explainer.expected_value
    np.testing.assert_allclose(totals, model_outputs(model, X), rtol=1e-10, atol=1e-10)
    assert_unchanged(model, before)
    with torch.no_grad():  # a state dict loaded into it
        model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
    values = explainer.shap_values(X)
    totals = phi_totals(values, 4, 2) + explainer.expected_value
    np.testing.assert_allclose(totals, model_outputs(model, X), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(phi_totals(values, 4, 2), output_gap(model, X, background), rtol=1e-10, atol=1e-10)


# -- 7. outputs=, ranked_outputs= and check_additivity= as users pass them --------------------------------------
def _classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D).eval()


def test_7_an_int_for_outputs_is_one_output_and_bad_arguments_are_refused_clearly() -> None:
    model = _classifier()
    background, X = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    explainer = rnnshap.DeepExplainer(model, background)
    before = snapshot(model)
    one = explainer.shap_values(X, outputs=1)
    listed = explainer.shap_values(X, outputs=[1])
    assert one.shape == listed.shape == (3, 4, 1)
    np.testing.assert_array_equal(one, listed)
    np.testing.assert_allclose(one.sum(1)[:, 0], output_gap(model, X, background)[:, 1], rtol=1e-10, atol=1e-12)
    with pytest.raises(rnnshap.InputError, match="ranked_outputs"):
        explainer.shap_values(X, ranked_outputs=1.5)  # type: ignore[arg-type]
    with pytest.raises(rnnshap.InputError, match="ranked_outputs"):
        explainer.shap_values(X, ranked_outputs=True)  # type: ignore[arg-type]
    for bad in (-1.0, 0.0, float("nan"), "yes"):
        with pytest.raises(rnnshap.InputError, match="check_additivity"):
            explainer.shap_values(X, check_additivity=bad)  # type: ignore[arg-type]
    with pytest.raises(rnnshap.InputError, match="does not fit"):  # (19) front-door errors are rnnshap errors
        explainer.shap_values(X, outputs=[5])
    try:
        import shap  # noqa: F401
    except ImportError:  # (explainer(X) needs shap)
        pass
    else:
        with pytest.raises(rnnshap.InputError, match="feature_names"):
            explainer(X, feature_names=["a", "b"])
    with pytest.raises(rnnshap.InputError, match="batch_size"):
        rnnshap.DeepExplainer(model, background, batch_size=0)
    assert_unchanged(model, before)


# -- 9. ShapleyExplainer on a function that returns a Python list ----------------------------------------------------
def test_9_a_function_returning_a_python_list_is_one_output() -> None:
    weights = np.array([0.5, -1.0, 2.0])

    def f(x: np.ndarray) -> list[float]:
        return [float(v) for v in x @ weights]

    background, X = np.random.default_rng(1).normal(size=(4, 3)), np.random.default_rng(2).normal(size=(2, 3))
    estimate = rnnshap.ShapleyExplainer(f, background).shapley_values(X, players="cells", random_state=0)
    # a linear function: φ_i = w_i (x_i − mean r_i), exactly
    exact = weights * (X - background.mean(0))
    np.testing.assert_allclose(np.asarray(estimate.values).reshape(2, 3), exact, rtol=1e-12, atol=1e-12)


# -- 10. torch.inference_mode() ------------------------------------------------------------------------------------------
def test_10_inference_mode_is_explained_as_no_grad() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(D).eval()
    background, X = torch.randn(6, 3, dtype=D), torch.randn(3, 3, dtype=D)
    before = snapshot(model)
    with torch.no_grad():
        expected = rnnshap.DeepExplainer(model, background).shap_values(X)
    with torch.inference_mode():
        inside_background, inside_X = background.clone(), X.clone()  # inference tensors
        explainer = rnnshap.DeepExplainer(model, inside_background)
        values = explainer.shap_values(inside_X)
        assert torch.is_inference_mode_enabled()
    explainer = rnnshap.DeepExplainer(model, inside_background)  # inference tensors given outside it
    np.testing.assert_array_equal(explainer.shap_values(inside_X), expected)
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_allclose(phi_totals(values, 3, 2), output_gap(model, X, background), rtol=1e-10, atol=1e-12)
    assert_unchanged(model, before)


# -- 12. a forward that returns nested structures ----------------------------------------------------------------------
def logits_and_state(m: nn.Module, x: Tensor) -> Any:
    out, (h, c) = m.lstm(x)
    return m.head(out[:, -1]), (h[0], c[0])


def seq2seq_state(read: Callable[[Any], Any] = lambda result: result) -> nn.Module:
    """Returns ``(logits, (h, c))``, as an LSTM language model does; ``read``: what of it the model returns."""
    return Composite(lambda m, x: read(logits_and_state(m, x)), lstm=nn.LSTM(3, 4, batch_first=True), head=nn.Linear(4, 2))


def logits_only() -> nn.Module:
    return seq2seq_state(lambda result: result[0])


def hidden_only() -> nn.Module:
    return seq2seq_state(lambda result: result[1][0])


def test_12_output_picks_a_leaf_of_a_nested_structure() -> None:
    model = seq2seq_state().to(D).eval()
    background, X = torch.randn(5, 4, 3, dtype=D), torch.randn(2, 4, 3, dtype=D)
    before = snapshot(model)
    logits = rnnshap.DeepExplainer(model, background, output=0).shap_values(X)
    # the model written another way: the logits alone
    plain = logits_only().to(D).eval()
    plain.load_state_dict(model.state_dict())
    np.testing.assert_allclose(logits, rnnshap.DeepExplainer(plain, background).shap_values(X), rtol=1e-12, atol=1e-14)
    assert_additive(logits, plain, X, background, D)
    hidden = rnnshap.DeepExplainer(model, background, output=(1, 0)).shap_values(X)
    plain_h = hidden_only().to(D).eval()
    plain_h.load_state_dict(model.state_dict())
    assert_additive(hidden, plain_h, X, background, D)
    with pytest.raises(rnnshap.InputError, match=r"nested.*output="):
        rnnshap.DeepExplainer(model, background)
    with pytest.raises(rnnshap.InputError, match="output="):
        rnnshap.DeepExplainer(model, background, output=1)  # a pair, not one tensor
    with pytest.raises(rnnshap.InputError, match="output="):
        rnnshap.DeepExplainer(model, background, output=(1, 5))
    assert_unchanged(model, before)


# -- 4. a recurrent layer under torch.autocast ------------------------------------------------------------------------
def recurrent(kind: str) -> RecurrentHead:
    return RecurrentHead(kind, 3, 4, 2, output=torch.tanh)


def torch_cannot_autocast(model: nn.Module, x: Tensor) -> str | None:
    """Why torch itself cannot run ``model`` under bfloat16 autocast on this CPU (oneDNN has no bfloat16 LSTM
    primitive on an AMD EPYC without AVX-512: "could not create a primitive descriptor"), or None where it can."""
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    except RuntimeError as error:
        if "primitive descriptor" not in str(error):
            raise
        return f"torch itself cannot run {type(model).__name__} under bfloat16 autocast on this CPU: {error}"
    return None


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_4_a_recurrent_layer_under_autocast_is_explained_in_its_dtype(kind: str) -> None:
    model = recurrent(kind).eval()
    background, X = torch.randn(5, 6, 3), torch.randn(3, 6, 3)
    reason = torch_cannot_autocast(model, X)
    if reason is not None:  # the model's own forward fails there: nothing for rnnshap to explain
        pytest.skip(reason)
    before = snapshot(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explainer = rnnshap.DeepExplainer(model, background)
        values = explainer.shap_values(X)
        gap = output_gap(model, X, background)  # the model's own outputs, under autocast
    assert explainer.engine.dtype == "bfloat16"
    # additivity against the model's own autocast outputs, at bfloat16 precision (eps 7.8e-3)
    assert np.abs(phi_totals(values, 3, 2) - gap).max() <= 5e-2 * max(1.0, np.abs(gap).max())
    # a float64 copy of the model, without autocast: the same attributions up to bfloat16 rounding
    exact = recurrent(kind).to(D).eval()
    exact.load_state_dict(model.state_dict())
    reference = rnnshap.DeepExplainer(exact, background.to(D)).shap_values(X.to(D))
    assert np.abs(values - reference).max() <= 5e-2 * np.abs(reference).max()
    assert_unchanged(model, before)


def test_4_the_autocast_test_skips_only_where_torch_itself_cannot_run_the_layer() -> None:
    """torch on a CPU without AVX-512 raises oneDNN's "could not create a primitive descriptor" for an LSTM under
    bfloat16 autocast: that, and only that, is a reason to skip; any other error of the model's forward is raised."""

    class Fails(nn.Module):
        def __init__(self, message: str) -> None:
            super().__init__()
            self.message = message

        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError(self.message)

    onednn = "could not create a primitive descriptor for the LSTM forward propagation primitive"
    assert "cannot run Fails under bfloat16 autocast" in str(torch_cannot_autocast(Fails(onednn), torch.zeros(1, 2, 3)))
    with pytest.raises(RuntimeError, match="another"):
        torch_cannot_autocast(Fails("another failure"), torch.zeros(1, 2, 3))
    assert torch_cannot_autocast(recurrent("gru").eval(), torch.zeros(1, 2, 3)) is None


# -- 5. a sparse buffer (T-GCN style adjacency) ---------------------------------------------------------------------------
def graph_then_gru(m: nn.Module, x: Tensor) -> Tensor:  # x: (B, T, nodes)
    adjacency = m.adjacency.to_dense() if m.adjacency.is_sparse else m.adjacency
    mixed = x @ adjacency.T
    return m.head(m.gru(mixed)[0][:, -1])


def sparse_graph(sparse: bool = True) -> nn.Module:
    """A graph convolution with a sparse COO adjacency as a buffer, then a GRU over time."""
    adjacency = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0]], dtype=D)
    return Composite(graph_then_gru, adjacency=nn.Buffer(adjacency.to_sparse() if sparse else adjacency),
                     gru=nn.GRU(3, 4, batch_first=True), head=nn.Linear(4, 1))  # fmt: skip


def test_5_a_sparse_buffer_is_kept_and_the_model_explained() -> None:
    model = sparse_graph().to(D).eval()
    background, X = torch.randn(5, 4, 3, dtype=D), torch.randn(2, 4, 3, dtype=D)
    before = snapshot(model)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)
    dense = sparse_graph(sparse=False).to(D).eval()  # the model written another way: a dense buffer
    dense.load_state_dict({k: v.to_dense() for k, v in model.state_dict().items()})
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(dense, background).shap_values(X), rtol=1e-12, atol=1e-14)
    assert_unchanged(model, before)


# -- 6 and 18. a model whose rows depend on each other (a recurrent layer reading axis 0 as time) ---------------------
def seq_first(kind: str, transpose: bool = False) -> nn.Module:
    """``nn.LSTM`` / ``nn.GRU`` without batch_first: given (B, T, F) it reads axis 0 as time, so row b's
    output depends on rows 0..b (pyhealth's AdaCare); ``transpose``: the same model given what it reads."""
    return Composite(
        lambda m, x: m.head(m.rnn(x.transpose(0, 1))[0].transpose(0, 1)[:, -1]) if m.transpose else m.head(m.rnn(x)[0][:, -1]),
        rnn=nn.LSTM(3, 4) if kind == "lstm" else nn.GRU(3, 4), head=nn.Linear(4, 1), transpose=transpose,
    )  # fmt: skip


@pytest.mark.parametrize("kind, rows", [("lstm", 4), ("gru", 6)])  # (6) background rows == T; (18) != T
def test_6_18_a_model_that_mixes_the_rows_of_axis_0_is_refused_by_name(kind: str, rows: int) -> None:
    model = seq_first(kind).to(D).eval()
    background = torch.randn(rows, 4, 3, dtype=D)  # (B, T, F) with T = 4
    before = snapshot(model)
    with pytest.raises(rnnshap.InputError, match=r"(?s)rows.*axis 0.*batch_first") as info:
        rnnshap.DeepExplainer(model, background)
    assert "'rnn'" in str(info.value)  # the recurrent module is named
    assert_unchanged(model, before)
    # the same model given its input as it reads it (transposed inside forward) is exact
    fixed = seq_first(kind, transpose=True).to(D).eval()
    fixed.load_state_dict(model.state_dict())
    X = torch.randn(2, 4, 3, dtype=D)
    assert_additive(rnnshap.DeepExplainer(fixed, background).shap_values(X), fixed, X, background, D)


# -- 11. a forward that writes input-dependent values into a buffer ----------------------------------------------------
class RunningNorm(nn.Module):
    """Normalizes with running statistics and updates them from the batch in forward(), in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(3, dtype=D))
        self.head = nn.Linear(3, 1).to(D)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(x - self.running_mean)
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * x.mean(0))
        return out


def test_11_a_buffer_written_with_input_values_in_forward_is_refused_by_name() -> None:
    model = RunningNorm().eval()
    background = torch.randn(5, 3, dtype=D)
    before = snapshot(model)
    with pytest.raises(rnnshap.ModelStateError, match="'running_mean'"):
        rnnshap.DeepExplainer(model, background)
    assert_unchanged(model, before)


# -- 8. a stateful Keras LSTM on both backends ----------------------------------------------------------------------------
STATEFUL_SCRIPT = """
import json
import numpy as np
import keras
import rnnshap
keras.utils.set_random_seed(0)
L = keras.layers
model = keras.Sequential([keras.Input((4, 3), batch_size=2), L.LSTM(3, stateful=True, name="carried"), L.Dense(1)])
rng = np.random.default_rng(0)
model(rng.normal(size=(2, 4, 3)).astype("float32"))  # a call carries a state into the layer
layer = model.layers[0]
before = [keras.ops.convert_to_numpy(s).copy() for s in layer.states] + [w.copy() for w in model.get_weights()]
try:
    rnnshap.DeepExplainer(model, rng.normal(size=(2, 4, 3)).astype("float32"))
    error = ""
except rnnshap.RnnShapError as refused:
    error = type(refused).__name__ + ": " + str(refused)
after = [keras.ops.convert_to_numpy(s) for s in layer.states] + model.get_weights()
print(json.dumps({"error": error, "unchanged": all(np.array_equal(a, b) for a, b in zip(before, after))}))
"""


# (refused on TensorFlow before)
@pytest.mark.parametrize("backend", [pytest.param("tensorflow", marks=pytest.mark.slow), "torch"])
def test_8_a_stateful_keras_lstm_is_refused_by_name_and_left_alone(backend: str, keras_process: Any) -> None:
    import json

    pytest.importorskip("keras")
    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    result = json.loads(keras_process(backend).run(STATEFUL_SCRIPT, timeout=300).strip().splitlines()[-1])
    assert result["error"].startswith("UnsupportedOperationError"), result["error"]
    assert "stateful" in result["error"] and "carried" in result["error"]
    assert result["unchanged"]  # the carried state and the weights are as they were


# -- 20. expand_as whose other operand gives only a shape (torch-geometric's scatter) ------------------------------------
def scatter_sum(m: nn.Module, x: Tensor) -> Tensor:  # x: (B, edges, 3)
    src = torch.tanh(m.lin(x))
    if m.written:
        incidence = nn.functional.one_hot(m.index, 3).to(src.dtype).T  # (nodes, edges)
        nodes = incidence @ src
    else:
        index = m.index.view(1, -1, 1).expand_as(src)
        nodes = src.new_zeros(src.shape[0], 3, src.shape[-1]).scatter_add(1, index, src)
    return m.head(torch.relu(nodes)).sum(1)


def scattered(written: bool = False) -> nn.Module:
    """Messages summed into their target nodes (an index buffer) as PyG's scatter does: ``index.view(...).expand_as(src)``;
    ``written``: the same sum as a product with the constant incidence matrix."""
    return Composite(scatter_sum, lin=nn.Linear(3, 4), index=nn.Buffer(torch.tensor([0, 1, 1, 2, 0])), head=nn.Linear(4, 1),
                     written=written)  # fmt: skip


def test_20_expand_as_of_an_index_is_a_constant() -> None:
    model = scattered().to(D).eval()
    background, X = torch.randn(5, 5, 3, dtype=D), torch.randn(3, 5, 3, dtype=D)
    before = snapshot(model)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)
    written = scattered(written=True).to(D).eval()
    written.load_state_dict(model.state_dict())
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(written, background).shap_values(X), rtol=1e-10, atol=1e-13)
    assert_unchanged(model, before)


# -- 21. torch.broadcast_tensors and torch.distributions' argument validation -------------------------------------------
def policy(m: nn.Module, x: Tensor) -> Tensor:
    mu, s = torch.tanh(m.lin(x)).chunk(2, -1)
    scale = nn.functional.softplus(s) + m.log_std.exp()
    if m.written:
        return torch.cat([mu, scale], -1)
    dist = torch.distributions.Normal(mu, scale, validate_args=True)
    categorical = torch.distributions.Categorical(logits=mu, validate_args=True)  # (value == value).all(-1)
    return torch.cat([dist.mean, dist.stddev], -1) + 0 * categorical.logits.sum(-1, keepdim=True)


def gaussian_head(written: bool = False) -> nn.Module:
    """A policy head as stable-baselines3 writes it: a validated Normal, its mean and stddev explained;
    ``written``: the same two numbers without torch.distributions."""
    return Composite(policy, lin=nn.Linear(3, 4), log_std=nn.Parameter(torch.tensor([0.1, -0.2])), written=written)


def broadcast(m: nn.Module, x: Tensor) -> Tensor:
    z = torch.tanh(m.lin(x))[:, None, :]  # (B, 1, 2)
    if m.written:
        a, g = z.expand(-1, 3, 2), m.gain.expand(3, 2)
    else:
        a, g = torch.broadcast_tensors(z, m.gain)
    return (torch.sigmoid(a) * g).flatten(1)


def broadcasting(written: bool = False) -> nn.Module:
    """torch.broadcast_tensors of an activation and a (3, 1) buffer; ``written``: the same with expand."""
    return Composite(broadcast, lin=nn.Linear(3, 2), gain=nn.Buffer(torch.tensor([[1.5], [0.5], [-1.0]])), written=written)


@pytest.mark.parametrize("model_class", [gaussian_head, broadcasting], ids=["GaussianHead", "Broadcasting"])
def test_21_broadcast_tensors_and_distribution_checks_are_exact(model_class: Callable[..., nn.Module]) -> None:
    model = model_class().to(D).eval()
    background, X = torch.randn(5, 3, dtype=D), torch.randn(3, 3, dtype=D)
    before = snapshot(model)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)
    written = model_class(written=True).to(D).eval()
    written.load_state_dict(model.state_dict())
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(written, background).shap_values(X), rtol=1e-10, atol=1e-13)
    assert_unchanged(model, before)


# -- 23. Tensor.new, x.data.new(*size).zero_(), new_zeros / new_ones / new_full: constants ----------------------------------
def initial_state(m: nn.Module, x: Tensor) -> Tensor:
    z = m.lin(x)
    if m.written:
        h = torch.zeros(z.shape[0], 4, dtype=z.dtype) + torch.ones(1, dtype=z.dtype) + torch.full((1,), 0.5, dtype=z.dtype)
    else:
        h = z.data.new(*z.shape).zero_() + z.new_ones(1) + z.new_full((1,), 0.5)
        h = h + z.new(z.shape[0], 4).zero_() + z.new_zeros(4)
    return m.cell(torch.tanh(z), h)


def state_init(written: bool = False) -> nn.Module:
    """A decoder whose initial state is made as OpenNMT-py makes it; ``written``: with torch.zeros / torch.ones."""
    return Composite(initial_state, lin=nn.Linear(3, 4), cell=nn.GRUCell(4, 4), written=written)


def test_23_new_tensors_made_from_an_input_dependent_tensor_are_constants() -> None:
    model = state_init().to(D).eval()
    background, X = torch.randn(5, 3, dtype=D), torch.randn(3, 3, dtype=D)
    before = snapshot(model)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert_additive(values, model, X, background, D)
    written = state_init(written=True).to(D).eval()
    written.load_state_dict(model.state_dict())
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(written, background).shap_values(X), rtol=1e-12, atol=1e-14)
    assert_unchanged(model, before)


def test_23_data_used_for_more_than_its_shape_is_still_refused() -> None:
    writes = Composite(lambda m, x: torch.tanh(m.lin(x).data * 2), lin=nn.Linear(3, 2))

    with pytest.raises(rnnshap.UnsupportedOperationError, match=r"\.data"):
        rnnshap.DeepExplainer(writes.to(D).eval(), torch.randn(4, 3, dtype=D))


# -- 22. an operation whose result never reaches the explained output ------------------------------------------------
def output_and_regularizer(m: nn.Module, x: Tensor) -> Any:
    states = m.gru(x)[0]
    out = m.head(states[:, -1])
    if not m.aux:
        return out, torch.zeros(())
    decov = torch.special.erfinv(torch.tanh(states) * 0.5)  # (no rule: refused where the output reads it)
    buffer = torch.zeros_like(states)
    buffer[:, 0] = decov[:, 0]  # written into a buffer in place: the buffer carries it on
    loss = buffer.pow(2).sum()
    return (out + loss if m.into_output else out), loss


def with_auxiliary_loss(aux: bool = True, into_output: bool = False) -> nn.Module:
    """ConCare's pattern: forward() returns (output, a regularizer computed with an operation that has no rule);
    ``aux``: False for the same model without the regularizer; ``into_output``: the regularizer reaches the output."""
    return Composite(output_and_regularizer, gru=nn.GRU(3, 4, batch_first=True), head=nn.Linear(4, 2), aux=aux,
                     into_output=into_output)  # fmt: skip


def test_22_an_operation_the_output_does_not_depend_on_is_not_refused() -> None:
    model = with_auxiliary_loss().to(D).eval()
    background, X = torch.randn(5, 4, 3, dtype=D), torch.randn(3, 4, 3, dtype=D)
    before = snapshot(model)
    values = rnnshap.DeepExplainer(model, background, output=0).shap_values(X)
    plain = with_auxiliary_loss(aux=False).to(D).eval()
    plain.load_state_dict(model.state_dict())
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(plain, background, output=0).shap_values(X), rtol=1e-12, atol=1e-14)
    assert_unchanged(model, before)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="erfinv"):  # the regularizer explained: refused by name
        rnnshap.DeepExplainer(model, background, output=1)
    with pytest.raises(rnnshap.InputError, match=r"output_1.*batch"):  # both: the scalar has no batch axis
        rnnshap.DeepExplainer(model, background)
    reaching = with_auxiliary_loss(into_output=True).to(D).eval()  # through the buffer written in place
    with pytest.raises(rnnshap.UnsupportedOperationError, match="erfinv"):
        rnnshap.DeepExplainer(reaching, background, output=0)


# -- 19. the demo CLI: bad options get a usage error, not a traceback; --version ----------------------------------------
@pytest.mark.parametrize(
    "options, words",
    [
        (["--samples", "0"], "--samples"),
        (["--background", "5000"], "--background"),
        (["--epochs", "0"], "--epochs"),
        (["--device", "nonsense"], "--device"),
        (["--device", "cuda:99"], "--device"),
    ],
)
def test_19_demo_options_are_checked_before_anything_runs(
    options: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rnnshap.__main__ import main as cli

    with pytest.raises(SystemExit) as exit_:
        cli(["demo", *options, "--no-report"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_19_demo_out_that_is_a_file_and_version(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from rnnshap.__main__ import main as cli

    taken = tmp_path / "report"
    taken.write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        cli(["demo", "--out", str(taken)])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err
    assert taken.read_text() == "mine"
    for argv in (["--version"], ["-V"]):
        with pytest.raises(SystemExit) as exit_:
            cli(argv)
        assert exit_.value.code == 0 and f"rnnshap {rnnshap.__version__}" in capsys.readouterr().out


# -- 13. a head that returns a distribution ---------------------------------------------------------------------------
def normal(m: nn.Module, x: Tensor) -> Any:
    mu, s = m.lin(x).unbind(-1)
    return torch.distributions.Normal(mu, nn.functional.softplus(s))


def parameters_of(m: nn.Module, x: Tensor) -> Tensor:
    """The fix the refusal advises: the distribution's parameters returned as a tensor."""
    d = m.model(x)
    return torch.stack([d.mean, d.stddev], -1)


def test_13_a_distribution_is_refused_with_how_to_explain_its_parameters() -> None:
    model = Composite(normal, lin=nn.Linear(3, 2)).to(D).eval()
    background, X = torch.randn(5, 3, dtype=D), torch.randn(2, 3, dtype=D)
    before = snapshot(model)
    with pytest.raises(rnnshap.InputError, match=r"(?s)distribution \(Normal\).*d\.mean, d\.stddev") as info:
        rnnshap.DeepExplainer(model, background)
    assert "Rescale" not in str(info.value) and "broadcast_tensors" not in str(info.value)
    wrapped = Composite(parameters_of, model=model)
    values = rnnshap.DeepExplainer(wrapped, background).shap_values(X)  # the advice works, exactly
    assert_additive(values, wrapped, X, background, D)
    assert_unchanged(model, before)


# -- 14 and 15. a dict of inputs, a DataLoader ----------------------------------------------------------------------------
def test_14_15_a_dict_or_a_dataloader_gets_advice_that_works() -> None:
    model = Composite(lambda m, batch: torch.tanh(m.a(batch["x"]) + m.b(batch["z"])), a=nn.Linear(3, 2), b=nn.Linear(2, 2))

    model = model.to(D).eval()
    background = {"x": torch.randn(5, 3, dtype=D), "z": torch.randn(5, 2, dtype=D)}
    X = {"z": torch.randn(2, 2, dtype=D), "x": torch.randn(2, 3, dtype=D)}
    before = snapshot(model)
    explainer = rnnshap.DeepExplainer(model, background)  # a dict where the model takes one
    values = explainer.shap_values(X)
    assert [v.shape for v in values] == [(2, 3, 2), (2, 2, 2)]  # one per key, in the background's order

    # the model written another way: positional inputs
    positional = Composite(lambda m, x, z: m.model({"x": x, "z": z}), model=model)
    expected = rnnshap.DeepExplainer(positional, [background["x"], background["z"]]).shap_values([X["x"], X["z"]])
    for got, want in zip(values, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert_additive(values, positional, [X["x"], X["z"]], [background["x"], background["z"]], D)
    with pytest.raises(rnnshap.InputError, match="keys"):
        explainer.shap_values({"x": X["x"]})
    with pytest.raises(rnnshap.InputError, match=r"dict of inputs.*background as a dict"):
        rnnshap.DeepExplainer(positional, [background["x"], background["z"]]).shap_values(X)  # type: ignore[arg-type]
    with pytest.raises(rnnshap.InputError, match="pass X as a dict with the same keys"):  # never read by position
        explainer.shap_values([X["x"], X["z"]])
    summary = explainer.summarize(X, batch_size=1)  # the dict, as shap_values takes it
    np.testing.assert_allclose(summary.mean_abs[0], np.abs(values[0]).mean(0), rtol=1e-12, atol=1e-15)

    flat = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).to(D).eval()
    data = torch.randn(8, 3, dtype=D)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, torch.zeros(8)), batch_size=4)
    with pytest.raises(rnnshap.InputError, match=r"DataLoader.*torch\.cat\(\[x for x, _ in loader\]\)"):
        rnnshap.DeepExplainer(flat, loader)
    explainer = rnnshap.DeepExplainer(flat, torch.cat([x for x, _ in loader]))
    with pytest.raises(rnnshap.InputError, match="summarize"):
        explainer.shap_values(loader)
    assert_unchanged(model, before)


# -- 17. a model left in training mode whose forward is random or updates statistics there ------------------------------
def gaussian_noise(m: nn.Module, x: Tensor) -> Tensor:
    return x + 0.1 * torch.randn_like(x) if m.training else x


class RunningNormalization(nn.Module):
    """Updates running statistics in training mode and normalizes with them."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("var", torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.mean.mul_(0.9).add_(0.1 * x.mean(0))
                self.var.mul_(0.9).add_(0.1 * x.var(0))
        return (x - self.mean) / torch.sqrt(self.var + 1e-5)


@pytest.mark.parametrize("layer", ["noise", "normalization"])
def test_17_a_training_mode_model_is_explained_in_eval_mode_with_a_warning(layer: str) -> None:
    torch.manual_seed(1)
    middle = Composite(gaussian_noise) if layer == "noise" else RunningNormalization(4)
    model = nn.Sequential(nn.Linear(3, 4), middle, nn.Tanh(), nn.Linear(4, 2)).to(D).train()
    if layer == "normalization":
        with torch.no_grad():
            middle.mean.uniform_(-0.5, 0.5)
            middle.var.uniform_(0.5, 2.0)
    background, X = torch.randn(5, 3, dtype=D), torch.randn(3, 3, dtype=D)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="eval mode"):
        explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X)
    assert_unchanged(model, before)  # still in training mode, its statistics as they were
    evaluated = nn.Sequential(*[m for m in model]).eval()  # the same modules: the independent truth in eval mode
    gap = output_gap(evaluated, X, background)
    model.train()
    np.testing.assert_allclose(phi_totals(values, 3, 2), gap, rtol=1e-10, atol=1e-12)
    assert_unchanged(model, before)


# -- 19. a function of two operands without a rule: the advice is Shapley(), not Rescale ----------------------------------
def test_19_a_two_operand_function_is_not_advised_rescale() -> None:
    # (hypot, atan2, logaddexp have their rule: rnnshap/operations.py)
    model = Composite(lambda m, x: torch.special.xlog1py(m.a(x), m.b(x).abs()), a=nn.Linear(3, 2), b=nn.Linear(3, 2))

    model = model.to(D).eval()
    background, X = torch.randn(5, 3, dtype=D), torch.randn(2, 3, dtype=D)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="xlog1py") as info:
        rnnshap.DeepExplainer(model, background)
    assert "Rescale" not in str(info.value) and "Shapley()" in str(info.value)
    # the advice works
    values = rnnshap.DeepExplainer(model, background, rules={torch.special.xlog1py: rnnshap.rules.Shapley()}).shap_values(X)
    assert_additive(values, model, X, background, D)


# -- 16. (model, layer) with a layer that takes its initial state from another input -----------------------------------
def encode_from_state(m: nn.Module, x: Tensor, z: Tensor) -> Tensor:
    if m.split:  # z is (x, h0, c0) with the batch first
        x, h0, c0 = x, z[..., :4].transpose(0, 1).contiguous(), z[..., 4:].transpose(0, 1).contiguous()
    else:
        h0, c0 = torch.tanh(m.init(z)).unsqueeze(0).chunk(2, -1)
    return m.head(m.lstm(x, (h0, c0))[0][:, -1])


def stateful_encoder(split: bool = False) -> nn.Module:
    """An LSTM called as ``lstm(x, (h0, c0))`` with the initial state computed from a second input;
    ``split``: the model from the layer's inputs on (x, h0, c0 given directly, h0 and c0 batch first)."""
    return Composite(encode_from_state, init=nn.Linear(2, 8), lstm=nn.LSTM(3, 4, batch_first=True), head=nn.Linear(4, 2),
                     split=split)  # fmt: skip


def test_16_a_layer_attributes_to_every_floating_tensor_it_takes() -> None:
    model = stateful_encoder().to(D).eval()
    background = [torch.randn(5, 4, 3, dtype=D), torch.randn(5, 2, dtype=D)]
    X = [torch.randn(2, 4, 3, dtype=D), torch.randn(2, 2, dtype=D)]
    before = snapshot(model)
    values = rnnshap.DeepExplainer((model, model.lstm), background).shap_values(X)
    assert len(values) == 3 and values[1].shape == (2, 1, 4, 2) and values[2].shape == (2, 1, 4, 2)  # x, h0, c0 (batch first)
    # additivity from the model's own outputs: the layer's input is a cut
    np.testing.assert_allclose(phi_totals(values, 2, 2), output_gap(model, X, background), rtol=1e-10, atol=1e-12)
    # the model written another way: the rest of the model explained from the layer's inputs given directly
    split = stateful_encoder(split=True).to(D).eval()
    split.load_state_dict(model.state_dict())

    def states(x: Tensor, z: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.tanh(model.init(z)).unsqueeze(1)  # (B, 1, 8): h0 and c0, batch first

    direct = rnnshap.DeepExplainer(split, [background[0], states(*background)]).shap_values([X[0], states(*X)])
    np.testing.assert_allclose(values[0], direct[0], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.concatenate([values[1], values[2]], 2), direct[1], rtol=1e-10, atol=1e-13)
    assert_unchanged(model, before)


# -- 25. a float64 model that computes in float32 inside: said in the additivity report --------------------------------
def half_way() -> nn.Module:
    """Float64 parameters and inputs, a float32 computation inside (as Keras' matmul on torch does)."""
    return Composite(lambda m, x: m.b(torch.tanh(m.a(x).float() * 3.0).double()),
                     a=nn.Linear(3, 8).to(D), b=nn.Linear(8, 1).to(D))  # fmt: skip


def test_25_a_float32_computation_inside_a_float64_model_is_named() -> None:
    model = half_way().eval()
    background, X = torch.randn(5, 3, dtype=D), torch.randn(3, 3, dtype=D)
    before = snapshot(model)
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.dtype == "float32"
    values = explainer.shap_values(X)  # float32's tolerance: it adds up
    gap = output_gap(model, X, background)
    assert np.abs(phi_totals(values, 3, 1) - gap).max() <= 1e-5 * max(1.0, np.abs(gap).max())
    words = r"(?s)are float64, but it computes in float32 inside \(first at torch.Tensor.float\)"
    with pytest.raises(rnnshap.AdditivityError, match=words):
        explainer.shap_values(X, check_additivity=1e-15)
    assert_unchanged(model, before)


# -- 26. float32 at a lower precision (TF32: cuDNN's default on a GPU; oneDNN's bf16): in full while explained ---------
#: torch's switches of float32 precision (torch >= 2.9), as (backend, operation): an operation's "none" reads its
#: backend's ("all"), and a backend's "none" the generic one's; "tf32" or "bf16" compute a product at a shorter mantissa
RAW_SWITCHES = [("generic", "all"), ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"),
                ("mkldnn", "all"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn")]  # fmt: skip
NEW_PRECISION_API = hasattr(torch._C, "_get_fp32_precision_getter")


def switches() -> dict[str, Any]:
    """Every raw switch, and the old ones where they still read (else the error's type)."""
    state: dict[str, Any] = {f"{b}.{op}": torch._C._get_fp32_precision_getter(b, op) for b, op in RAW_SWITCHES}
    for name, read in [("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
                       ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                       ("float32_matmul_precision", torch.get_float32_matmul_precision)]:  # fmt: skip
        try:
            state[name] = read()
        except RuntimeError as error:
            state[name] = type(error).__name__
    return state


def in_effect(backend: str, op: str) -> str:
    """The precision an operation computes at: its own switch, else its backend's, else the generic one (IEEE)."""
    for switch in ((backend, op), (backend, "all"), ("generic", "all")):
        value = torch._C._get_fp32_precision_getter(*switch)
        if value != "none":
            return value
    return "ieee"


USER_STATES: dict[str, Callable[[], None]] = {
    "torch's defaults (cuDNN at TF32)": lambda: None,
    "matrix products at TF32, oneDNN's at bf16 (new switches)": lambda: (
        setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
        setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16"),
    ),
    "set_float32_matmul_precision('medium')": lambda: torch.set_float32_matmul_precision("medium"),
    "the old and new switches mixed (conv in IEEE, rnn at TF32)": lambda: setattr(
        torch.backends.cudnn.conv, "fp32_precision", "ieee"
    ),
    "every product at TF32 (torch.backends.fp32_precision)": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
}


@pytest.fixture
def user_state(request: pytest.FixtureRequest) -> Any:
    """The user's switches set as ``request.param`` names, every raw one set back after the test."""
    before = {switch: torch._C._get_fp32_precision_getter(*switch) for switch in RAW_SWITCHES}
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()  # (torch's defaults read)
    USER_STATES[request.param]()
    yield switches()
    torch.set_float32_matmul_precision(matmul)
    torch._C._set_cudnn_allow_tf32(cudnn)
    for switch, value in before.items():
        torch._C._set_fp32_precision_setter(*switch, value)
    assert switches()["cudnn.allow_tf32"] == cudnn


@pytest.mark.skipif(not NEW_PRECISION_API, reason="torch < 2.9 has no per-operation float32 precision")
@pytest.mark.parametrize("user_state", list(USER_STATES), indirect=True)
def test_26_float32_is_computed_in_full_while_explained_and_the_switches_are_set_back(user_state: dict[str, Any]) -> None:
    seen: list[dict[str, str]] = []

    def forward(m: nn.Module, x: Tensor) -> Tensor:
        seen.append({f"{b}.{op}": in_effect(b, op) for b, op in RAW_SWITCHES if op != "all"})
        if user_state["cudnn.allow_tf32"] != "RuntimeError":  # the old switches still read inside: a model's own works
            with torch.backends.cudnn.flags(enabled=False):
                pass
        return m.head(m.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Composite(forward, lstm=nn.LSTM(3, 16, batch_first=True), head=nn.Linear(16, 2)).eval()
    background, X = torch.randn(6, 5, 3), torch.randn(4, 5, 3)
    before = snapshot(model)
    explainer = rnnshap.DeepExplainer(model, background)
    values = explainer.shap_values(X)
    assert seen and all(set(s.values()) == {"ieee"} for s in seen), seen[0]
    assert switches() == user_state  # set back, after the constructor and the call
    with pytest.raises(rnnshap.InputError):
        explainer.shap_values(X[:, :, :2])
    assert switches() == user_state  # and after a refusal
    for b, op in RAW_SWITCHES:  # everything in IEEE float32, in a state the old switches read (cuDNN's through them)
        torch._C._set_fp32_precision_setter(b, op, "ieee" if op == "matmul" or b == "mkldnn" and op != "all" else "none")
    torch._C._set_cudnn_allow_tf32(False)
    assert rnnshap.DeepExplainer(model, background).shap_values(X).tolist() == values.tolist()  # the same function
    with torch.no_grad():
        gap = (model(X) - model(background).mean(0)).double().numpy()  # the model in full float32
    assert np.abs(phi_totals(values, 4, 2) - gap).max() <= 1e-5 * np.abs(gap).max()
    assert_unchanged(model, before)


@pytest.mark.skipif(not NEW_PRECISION_API, reason="torch < 2.9 has no per-operation float32 precision")
def test_26_concurrent_calls_keep_float32_in_full_until_the_last_one_ends() -> None:
    """The switches are the process's: a call that ends while another thread's is inside leaves them in full."""
    from rnnshap.engines.base import normal_mode

    before, inside, leave, seen = switches(), threading.Event(), threading.Event(), []

    def first() -> None:
        with normal_mode():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    with normal_mode():
        leave.set()
        thread.join(10)
        seen.append(in_effect("cuda", "rnn"))  # the first call has ended: this one is still inside
    assert seen == ["ieee"] and switches() == before


def test_12_shapley_explainer_takes_the_same_path_into_a_nested_result() -> None:
    model = seq2seq_state().to(D).eval()
    background, X = torch.randn(4, 3, 3, dtype=D), torch.randn(2, 3, 3, dtype=D)
    before = snapshot(model)
    estimate = rnnshap.ShapleyExplainer(model, background, output=(1, 0)).shapley_values(X, players="steps", random_state=0)
    plain_h = hidden_only().to(D).eval()
    plain_h.load_state_dict(model.state_dict())
    truth = rnnshap.ShapleyExplainer(plain_h, background).shapley_values(X, players="steps", random_state=0)
    assert estimate.exact.all() and truth.exact.all()  # 3 steps: every coalition
    np.testing.assert_allclose(np.asarray(estimate.values), np.asarray(truth.values), rtol=1e-12, atol=1e-14)
    with pytest.raises(rnnshap.InputError, match="nested"):
        rnnshap.ShapleyExplainer(model, background)
    assert_unchanged(model, before)
