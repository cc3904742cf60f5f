"""The JAX engine (Flax NNX models): exact against the PyTorch engine on the same weights (the same
function written in two frameworks), additive to the model's own outputs, exact zeros where the model cannot read,
refusals by name, and the model left as it was."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

import rnnshap  # noqa: E402

from ...models.flax import FlaxComposite, FlaxRecurrent, torch_twin  # noqa: E402
from ...models.torch import Composite  # noqa: E402

F64 = jnp.float64


@pytest.fixture(autouse=True)
def x64() -> Iterator[None]:
    """float64 in JAX for these tests only (the switch is the process's: the suite's other JAX users keep theirs)."""
    with jax.enable_x64(True):
        yield


def data(shape: tuple[int, ...], rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, *shape))





@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_flax_recurrent_model_gets_the_values_of_its_pytorch_twin(cell: str) -> None:
    model = FlaxRecurrent(cell)
    twin = torch_twin(model, cell)
    background, x = data((6, 3), 8, 1), data((6, 3), 3, 2)
    outputs = np.asarray(model(jnp.asarray(x)))
    np.testing.assert_allclose(twin(torch.tensor(x)).detach().numpy(), outputs, rtol=0, atol=1e-13)  # the same function

    flax_values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    torch_values = np.asarray(rnnshap.DeepExplainer(twin, torch.tensor(background)).shap_values(torch.tensor(x)))
    assert flax_values.shape == torch_values.shape == (3, 6, 3, 2)
    scale = np.abs(torch_values).max()
    assert np.abs(flax_values - torch_values).max() <= 1e-12 * scale
    # additive to the model's own outputs, at float64 precision
    gap = outputs - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(flax_values.sum(axis=(1, 2)), gap, rtol=0, atol=1e-12 * np.abs(gap).max())


def causal() -> Any:
    """Reads only features 0 and 1, and the recurrent output at step 2: feature 2 and steps 3.. are out of its reach."""

    def read(m: Any, x: Any) -> Any:
        h = m.rnn(x[..., :2])
        return m.head(jnp.tanh(h[:, 2]) * jax.nn.sigmoid(h[:, 1]))

    rngs = nnx.Rngs(3)
    return FlaxComposite(read, rnn=nnx.RNN(nnx.LSTMCell(2, 4, rngs=rngs, param_dtype=F64, dtype=F64)),
                         head=nnx.Linear(4, 1, rngs=rngs, param_dtype=F64, dtype=F64))  # fmt: skip


def test_what_the_model_cannot_read_gets_exactly_zero() -> None:
    values = np.asarray(rnnshap.DeepExplainer(causal(), data((6, 3), 5, 4)).shap_values(data((6, 3), 4, 5)))
    assert np.all(values[:, :, 2] == 0)  # a feature the model ignores
    assert np.all(values[:, 3:] == 0)  # steps after the one the output reads
    assert np.abs(values[:, :3, :2]).min() > 0


def _max_over_time(h: Any) -> Any:
    return jnp.max(h, axis=1)


def _amax_over_time(out: torch.Tensor, state: Any) -> torch.Tensor:
    return out.amax(1)


def test_a_maximum_over_time_takes_the_max_pool_rule_of_the_other_engines() -> None:
    model = FlaxRecurrent("lstm", seed=8, read=_max_over_time)  # an LSTM max-pooled over time, as often written
    background, x = data((6, 3), 5, 9), data((6, 3), 3, 10)
    flax_values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    twin = torch_twin(model, "lstm", read=_amax_over_time)
    torch_values = np.asarray(rnnshap.DeepExplainer(twin, torch.tensor(background)).shap_values(torch.tensor(x)))
    assert np.abs(flax_values - torch_values).max() <= 1e-12 * np.abs(torch_values).max()


def classifier() -> Any:
    """A GRU classifier ending in softmax (its shift by the maximum included), reading features 0 and 2 only."""
    rngs = nnx.Rngs(11)
    return FlaxComposite(lambda m, x: jax.nn.softmax(m.head(m.rnn(x[..., ::2])[:, -1]), axis=-1),
                         rnn=nnx.RNN(nnx.GRUCell(2, 5, rngs=rngs, param_dtype=F64, dtype=F64)),
                         head=nnx.Linear(5, 3, rngs=rngs, param_dtype=F64, dtype=F64))  # fmt: skip


def test_softmax_through_its_decomposition_adds_up_and_ignores_what_the_model_ignores() -> None:
    model = classifier()
    background, x = data((7, 3), 6, 12), data((7, 3), 3, 13)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    gap = np.asarray(model(jnp.asarray(x))) - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(values.sum(axis=(1, 2)), gap, rtol=0, atol=1e-13)
    assert np.all(values[:, :, 1] == 0) and np.abs(values[:, :, ::2]).min() > 0


def sorted_dense() -> Any:
    return FlaxComposite(lambda m, x: jnp.sort(m.dense(x), axis=-1),
                         dense=nnx.Linear(3, 4, rngs=nnx.Rngs(0), param_dtype=F64, dtype=F64))  # fmt: skip


def test_a_primitive_without_a_rule_is_refused_by_name() -> None:
    with pytest.raises(rnnshap.UnsupportedOperationError, match="(?s)'sort'.*ShapleyExplainer"):
        rnnshap.DeepExplainer(sorted_dense(), data((3,), 4, 0)).shap_values(data((3,), 2, 1))


def dropped() -> Any:
    rngs = nnx.Rngs(0)
    return FlaxComposite(lambda m, x: m.drop(jnp.tanh(m.dense(x)) * m.dense(x)),
                         dense=nnx.Linear(3, 3, rngs=rngs, param_dtype=F64, dtype=F64),
                         drop=nnx.Dropout(0.5, rngs=rngs))  # fmt: skip


def test_the_model_is_explained_as_it_predicts_and_left_as_it_was() -> None:
    model = dropped()
    model.train()
    before = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param))
    background, x = data((3,), 6, 0), data((3,), 2, 1)
    explainer = rnnshap.DeepExplainer(model, background)
    values = np.asarray(explainer.shap_values(x))
    model.eval()
    outputs = np.asarray(model(jnp.asarray(x)))
    gap = outputs - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(values.sum(axis=1), gap, rtol=0, atol=1e-12)
    model.train()
    after = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, before, after))
    assert model.drop.deterministic is False  # still in training mode: the explainer used a copy


def test_the_shapley_mode_takes_a_flax_model_through_both_doors() -> None:
    model = FlaxRecurrent("lstm", seed=5)
    background, x = data((5, 3), 4, 6), data((5, 3), 2, 7)
    # (the time axis read from the model's jaxpr: nnx.RNN's scan steps over the axis its transpose puts first)
    by_forward = rnnshap.ShapleyExplainer(model, background).shapley_values(x, "steps", budget=10**5)
    by_engine = rnnshap.DeepExplainer(model, background).shapley_values(x, "steps", budget=10**5)
    assert by_forward.exact.all() and by_engine.exact.all()  # every coalition of the 5 steps enumerated
    assert np.asarray(by_forward.values).shape[:2] == (2, 5)  # players: the 5 steps (time read as axis 1), not the 3 features
    np.testing.assert_allclose(np.asarray(by_forward.values), np.asarray(by_engine.values), rtol=0, atol=1e-12)
    outputs = np.asarray(model(jnp.asarray(x)))
    gap = outputs - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(np.asarray(by_forward.values).sum(axis=1), gap, rtol=0, atol=1e-12)


def bigru() -> Any:
    """nnx.Bidirectional over two GRUs, averaged over time."""
    rngs = nnx.Rngs(14)
    cells = [nnx.GRUCell(3, 4, rngs=rngs, param_dtype=F64, dtype=F64) for _ in range(2)]
    return FlaxComposite(lambda m, x: m.head(m.bi(x).mean(axis=1)), bi=nnx.Bidirectional(nnx.RNN(cells[0]), nnx.RNN(cells[1])),
                         head=nnx.Linear(8, 2, rngs=rngs, param_dtype=F64, dtype=F64))  # fmt: skip


def test_a_bidirectional_flax_gru_gets_the_values_of_its_pytorch_twin() -> None:
    model = bigru()
    twin = torch.nn.GRU(3, 4, batch_first=True, bidirectional=True).double()
    head = torch.nn.Linear(8, 2).double()
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        for rnn, suffix in ((model.bi.forward_rnn, ""), (model.bi.backward_rnn, "_reverse")):
            c = rnn.cell
            getattr(twin, f"weight_ih_l0{suffix}").copy_(t(c.dense_i.kernel[...]).T)
            getattr(twin, f"weight_hh_l0{suffix}").copy_(t(c.dense_h.kernel[...]).T)
            getattr(twin, f"bias_ih_l0{suffix}").copy_(t(c.dense_i.bias[...]))
            getattr(twin, f"bias_hh_l0{suffix}").zero_()
        head.weight.copy_(t(model.head.kernel[...]).T)
        head.bias.copy_(t(model.head.bias[...]))

    twin_model = Composite(lambda m, x: m.head(m.rnn(x)[0].mean(1)), rnn=twin, head=head)

    background, x = data((5, 3), 6, 15), data((5, 3), 2, 16)
    twin_out = twin_model(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(twin_out, np.asarray(model(jnp.asarray(x))), rtol=0, atol=1e-13)
    flax_values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    torch_values = np.asarray(rnnshap.DeepExplainer(twin_model, torch.tensor(background)).shap_values(torch.tensor(x)))
    assert np.abs(flax_values - torch_values).max() <= 1e-12 * np.abs(torch_values).max()


def test_a_linen_model_through_flax_s_bridge() -> None:
    """A Flax linen model (OptimizedLSTMCell) wrapped by nnx.bridge.ToNNX, reading features 0 and 1 only."""
    linen = pytest.importorskip("flax.linen")

    class Linen(linen.Module):
        @linen.compact
        def __call__(self, x: Any) -> Any:
            h = linen.RNN(linen.OptimizedLSTMCell(4, param_dtype=F64, dtype=F64))(x[..., :2])
            return linen.Dense(2, param_dtype=F64, dtype=F64)(h[:, -1])

    background, x = data((5, 3), 6, 17), data((5, 3), 3, 18)
    model = nnx.bridge.ToNNX(Linen(), rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, jnp.asarray(x))
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    gap = np.asarray(model(jnp.asarray(x))) - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(values.sum(axis=(1, 2)), gap, rtol=0, atol=1e-12 * np.abs(gap).max())
    assert np.all(values[:, :, 2] == 0) and np.abs(values[:, :, :2]).min() > 0


def test_an_explainer_follows_the_model_s_new_weights() -> None:
    model = FlaxRecurrent("gru", seed=19)
    background, x = data((4, 3), 5, 20), data((4, 3), 2, 21)
    explainer = rnnshap.DeepExplainer(model, background)
    before = np.asarray(explainer.shap_values(x))
    model.head.kernel[...] = 2 * model.head.kernel[...]  # a training step replaces the array
    after = np.asarray(explainer.shap_values(x))
    fresh = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    np.testing.assert_array_equal(after, fresh)
    assert np.abs(after - 2 * before).max() <= 1e-12 * np.abs(after).max()  # the head is linear: the values double


def float32() -> Any:
    """A float32 model (``dtype=float32``: Flax casts float64 inputs to it), with a cube of mixed-sign bases and
    jax.nn's GELU (its tanh form: several primitives in a jaxpr) and ELU (one named call)."""

    def forward(m: Any, x: Any) -> Any:
        h = m.dense(x)
        return m.head(jax.nn.gelu(h) + 0.1 * h**3 + jax.nn.elu(h))

    rngs = nnx.Rngs(22)
    return FlaxComposite(forward, dense=nnx.Linear(4, 5, rngs=rngs, dtype=jnp.float32),
                         head=nnx.Linear(5, 2, rngs=rngs, dtype=jnp.float32))  # fmt: skip


def test_a_float32_model_given_float64_inputs_is_explained_in_float32() -> None:
    model = float32()
    background, x = data((4,), 8, 23), data((4,), 3, 24)  # float64 arrays, x64 on
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.engine.dtype == "float32" and "float32" in (explainer.engine.precision_note or "")
    values = np.asarray(explainer.shap_values(x))
    outputs = np.asarray(model(jnp.asarray(x)), np.float64)
    gap = outputs - np.asarray(model(jnp.asarray(background)), np.float64).mean(0)
    scale = max(np.abs(outputs).max(), np.abs(values).sum(axis=1).max())
    eps = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(values.sum(axis=1), gap, rtol=0, atol=64 * eps * scale)  # float32 rounding of the model


def projected() -> Any:
    """A Linear at every step before a time-major scan over a transposed input: time is the second axis of a sample."""
    rngs = nnx.Rngs(25)
    return FlaxComposite(lambda m, x: m.rnn(jnp.tanh(m.project(jnp.swapaxes(x, 1, 2))).transpose(1, 0, 2))[-1],  # x: (N, F, T)
                         project=nnx.Linear(3, 4, rngs=rngs, param_dtype=F64, dtype=F64),
                         rnn=nnx.RNN(nnx.GRUCell(4, 4, rngs=rngs, param_dtype=F64, dtype=F64), time_major=True))  # fmt: skip


def test_the_time_axis_is_read_from_the_model_or_asked_for() -> None:
    background, x = data((3, 5), 4, 26), data((3, 5), 2, 27)
    estimate = rnnshap.ShapleyExplainer(projected(), background).shapley_values(x, "steps", budget=10**5)
    assert np.asarray(estimate.values).shape[1] == 5 and estimate.exact.all()  # 5 steps along the last axis
    with pytest.raises(rnnshap.InputError, match="time_axis"):  # a model with no scan or convolution says nothing
        rnnshap.ShapleyExplainer(softmaxed(), data((4, 3), 3, 0)).shapley_values(data((4, 3), 1, 1), "steps")


def softmaxed() -> Any:
    return FlaxComposite(lambda m, x: jax.nn.softmax(m.dense(x).sum(axis=1)),
                         dense=nnx.Linear(3, 2, rngs=nnx.Rngs(0), param_dtype=F64, dtype=F64))  # fmt: skip


def _read_tokens(m: Any, ids: Any) -> Any:
    return m.head(m.rnn(m.embed(ids))[:, -1])


def token_gru(forward: Callable[[Any, Any], Any] = _read_tokens) -> Any:
    """Token ids → nnx.Embed → GRU → Linear, as text classifiers are written."""
    rngs = nnx.Rngs(28)
    return FlaxComposite(forward, embed=nnx.Embed(11, 3, rngs=rngs, param_dtype=F64, dtype=F64),
                         rnn=nnx.RNN(nnx.GRUCell(3, 4, rngs=rngs, param_dtype=F64, dtype=F64)),
                         head=nnx.Linear(4, 2, rngs=rngs, param_dtype=F64, dtype=F64))  # fmt: skip


def test_token_ids_are_attributed_per_token_as_the_pytorch_engine_does() -> None:
    model = token_gru()
    c = model.rnn.cell
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731

    embed, rnn = torch.nn.Embedding(11, 3).double(), torch.nn.GRU(3, 4, batch_first=True).double()
    head = torch.nn.Linear(4, 2).double()
    with torch.no_grad():
        embed.weight.copy_(t(model.embed.embedding[...]))
        rnn.weight_ih_l0.copy_(t(c.dense_i.kernel[...]).T)
        rnn.weight_hh_l0.copy_(t(c.dense_h.kernel[...]).T)
        rnn.bias_ih_l0.copy_(t(c.dense_i.bias[...]))
        rnn.bias_hh_l0.zero_()
        head.weight.copy_(t(model.head.kernel[...]).T)
        head.bias.copy_(t(model.head.bias[...]))
    twin_model = Composite(lambda m, ids: m.head(m.rnn(m.embed(ids))[0][:, -1]), embed=embed, rnn=rnn, head=head)

    rng = np.random.default_rng(29)
    background = np.zeros((2, 6), np.int32)  # padding ids as the reference
    background[1, :2] = 5
    x = rng.integers(1, 11, size=(3, 6)).astype(np.int32)
    x[0, 2] = 0  # a token equal to both references' at that step: exactly 0
    explainer = rnnshap.DeepExplainer(model, background)
    assert explainer.token_inputs == [0]
    values = np.asarray(explainer.shap_values(x))
    twin = rnnshap.DeepExplainer(twin_model, torch.tensor(background, dtype=torch.long))
    torch_values = np.asarray(twin.shap_values(torch.tensor(x, dtype=torch.long)))
    assert values.shape == torch_values.shape == (3, 6, 2)
    assert np.abs(values - torch_values).max() <= 1e-12 * np.abs(torch_values).max()
    assert np.all(values[0, 2] == 0)
    with pytest.raises(rnnshap.InputError, match="token ids"):
        explainer.shap_values(x.astype(np.float64))


def test_a_token_id_out_of_the_embeddings_range_is_named_as_the_cause_not_the_engine() -> None:
    """nnx.Embed gives NaN for an id past its table: the model's own output is NaN, and the refusal names the input
    (the row and the id against the table's range), on either side, never rnnshap's pass ("Please report")."""
    model = token_gru()
    background = np.zeros((2, 6), np.int32)
    x = np.ones((2, 6), np.int32)
    x[1, 3] = 11  # the table holds ids 0..10
    assert np.isnan(np.asarray(model(jnp.asarray(x)))[1]).all()
    refusal = r"output is nan for sample 1.*input is the cause.*id 11.*0\.\.10 .*nnx.Embed"
    with pytest.raises(rnnshap.InputError, match=refusal) as refused:
        rnnshap.DeepExplainer(model, background).shap_values(x)
    assert "report" not in str(refused.value)
    with pytest.raises(rnnshap.InputError, match=r"output is nan for background row 1.*id 11.*0\.\.10"):
        rnnshap.DeepExplainer(model, x)


def counts() -> Any:
    """Integer counts used as numbers (cast to a float inside the model)."""
    return FlaxComposite(lambda m, counts: m.head(jnp.tanh(m.dense(counts.astype(F64)))),
                         dense=nnx.Linear(4, 3, rngs=nnx.Rngs(30), param_dtype=F64, dtype=F64),
                         head=nnx.Linear(3, 1, rngs=nnx.Rngs(31), param_dtype=F64, dtype=F64))  # fmt: skip


def test_integers_cast_to_floats_are_attributed_as_the_numbers_they_are() -> None:
    rng = np.random.default_rng(32)
    background, x = rng.integers(0, 9, size=(5, 4)), rng.integers(0, 9, size=(3, 4))
    as_ints = rnnshap.DeepExplainer(counts(), background)
    assert as_ints.number_inputs == [0] and as_ints.token_inputs == []
    as_floats = rnnshap.DeepExplainer(counts(), background.astype(np.float64))
    floats = np.asarray(as_floats.shap_values(x.astype(np.float64)))
    values = np.asarray(as_ints.shap_values(x))
    np.testing.assert_allclose(values, floats, rtol=0, atol=1e-15)
    gap = np.asarray(counts()(jnp.asarray(x))) - np.asarray(counts()(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(values.sum(axis=1), gap, rtol=0, atol=1e-12)


def _reversed_tokens(m: Any, ids: Any) -> Any:
    return m.head(m.rnn(m.embed(ids[:, ::-1]))[:, -1])


def test_ids_rearranged_before_their_lookup_are_refused_by_name() -> None:
    """A token's credit goes back to its own position: ids reversed (or sliced, transposed) before the lookup would
    put it elsewhere, so the model is refused, not explained with credits at the wrong positions."""
    background, x = np.zeros((2, 6), np.int32), np.ones((1, 6), np.int32)
    with pytest.raises(rnnshap.UnsupportedOperationError, match="(?s)'gather'.*rearranged"):
        rnnshap.DeepExplainer(token_gru(_reversed_tokens), background).shap_values(x)


def masked() -> Any:
    """A softmax over a constant mask (-inf entries on both sides), and a square root meeting exact zeros."""

    def forward(m: Any, x: Any) -> Any:
        h = m.dense(x)
        mask = jnp.array([True, True, False, True])
        return m.head(jax.nn.softmax(h, where=mask) + jnp.sqrt(jax.nn.relu(h)))

    rngs = nnx.Rngs(33)
    return FlaxComposite(forward, dense=nnx.Linear(3, 4, rngs=rngs, param_dtype=F64, dtype=F64),
                         head=nnx.Linear(4, 2, rngs=rngs, param_dtype=F64, dtype=F64))  # fmt: skip


def test_minus_infinity_masks_and_roots_at_zero_stay_finite_and_add_up() -> None:
    model = masked()
    background, x = data((3,), 5, 34), data((3,), 4, 35)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(x))
    assert np.isfinite(values).all()
    gap = np.asarray(model(jnp.asarray(x))) - np.asarray(model(jnp.asarray(background))).mean(0)
    np.testing.assert_allclose(values.sum(axis=1), gap, rtol=0, atol=1e-12)


@jax.jit
def log(t: Any) -> Any:  # a user's function that shares a table entry's name, and is not that primitive
    return jnp.log(t + 1e-3)


@jax.jit
def relu(t: Any) -> Any:  # ... and one that is not elementwise
    return jnp.maximum(t, t.mean(-1, keepdims=True))


def _named(m: Any, x: Any) -> Any:
    h = jnp.exp(m.dense(x))
    if m.jitted:
        return m.head(log(h) + relu(h))
    return m.head(jnp.log(h + 1e-3) + jnp.maximum(h, h.mean(-1, keepdims=True)))


def named(jitted: bool) -> Any:
    rngs = nnx.Rngs(36)
    return FlaxComposite(_named, dense=nnx.Linear(3, 4, rngs=rngs, param_dtype=F64, dtype=F64),
                         head=nnx.Linear(4, 2, rngs=rngs, param_dtype=F64, dtype=F64), jitted=jitted)  # fmt: skip


def test_a_user_function_named_as_a_table_entry_is_taken_as_what_it_computes() -> None:
    """A named call is taken whole only where it is elementwise, and then by its own quotient, not a closed form of
    the primitive whose name it shares: the jitted functions give the values their inline writing gives."""
    background, x = data((3,), 5, 37), data((3,), 3, 38)
    jitted = np.asarray(rnnshap.DeepExplainer(named(True), background).shap_values(x))
    inline = np.asarray(rnnshap.DeepExplainer(named(False), background).shap_values(x))
    np.testing.assert_allclose(jitted, inline, rtol=0, atol=1e-9 * np.abs(inline).max())


@pytest.mark.parametrize("accelerated", [True, False])
def test_a_models_float32_products_run_in_full_while_explained(accelerated: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """XLA computes a float32 product at TF32 on an NVIDIA GPU unless asked otherwise, and its outputs then miss the
    multipliers' algebra by about 1e-3 (docs/performance.md, "On a GPU"): on an accelerator (here pretended) the model
    is written out and run under ``jax.default_matmul_precision("float32")``, and the setting is the caller's again
    after. On the CPU, which computes them in full, the caller's setting stays (it would compile every jitted
    function once more)."""
    from rnnshap.engines import precision

    monkeypatch.setattr(precision, "jax_accelerated", lambda jax: accelerated)
    seen: list[Any] = []

    def forward(m: Any, x: Any) -> Any:
        seen.append(jax.config.jax_default_matmul_precision)
        return m.head(jnp.tanh(m.mix(x)).reshape(x.shape[0], -1))

    model = FlaxComposite(forward, mix=nnx.Linear(3, 4, rngs=nnx.Rngs(0)), head=nnx.Linear(20, 2, rngs=nnx.Rngs(1)))
    background, X = data((5, 3), 6, 0).astype(np.float32), data((5, 3), 2, 1).astype(np.float32)
    before = jax.config.jax_default_matmul_precision
    with jax.default_matmul_precision("tensorfloat32"):  # the caller's own
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
    assert seen and set(seen) == {"float32" if accelerated else "tensorfloat32"}, seen
    assert jax.config.jax_default_matmul_precision == before
    with jax.default_matmul_precision("float32"):
        gap = np.asarray(model(jnp.asarray(X))) - np.asarray(model(jnp.asarray(background))).mean(0)
    assert np.abs(np.asarray(values).reshape(2, -1, 2).sum(1) - gap).max() <= 1e-5 * np.abs(gap).max()


def test_a_scan_written_as_a_newer_jax_writes_it_is_refused_by_name() -> None:
    """JAX 0.11 writes lax.scan without ``num_consts`` and ``num_carry`` (a GPU machine's JAX 0.11.2 raised KeyError):
    the engine says which JAX it reads and what to do."""
    from rnnshap.engines.jax.pairs import scan_split

    class Newer:
        params = {"jaxpr": None, "length": 3, "reverse": False}

    with pytest.raises(rnnshap.errors.RnnShapError, match=r"lax.scan .*\['jaxpr', 'length', 'reverse'\]\. Install jax<0.11"):
        scan_split(Newer())


def _amplitudes(m: Any, x: Any) -> Any:
    return m.head(jnp.abs(jnp.fft.rfft(x, axis=-1)))


def test_a_spectrum_s_amplitudes_get_the_values_of_the_pytorch_twin() -> None:
    """``|rfft(x)|``: the magnitude's exact two-player split over each amplitude's real and imaginary parts, the
    formula both engines share (tests/rules/test_complex_modulus.py proves the PyTorch side against enumeration)."""
    model = FlaxComposite(_amplitudes, head=nnx.Linear(5, 2, rngs=nnx.Rngs(0), param_dtype=F64, dtype=F64))
    twin = Composite(lambda m, x: m.head(torch.fft.rfft(x, dim=-1).abs()), head=torch.nn.Linear(5, 2).double())
    with torch.no_grad():
        twin.head.weight.copy_(torch.from_numpy(np.array(model.head.kernel.value).T))
        twin.head.bias.copy_(torch.from_numpy(np.array(model.head.bias.value)))
    background, X = data((8,), 4, 1), data((8,), 3, 2)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))
    expected = np.asarray(rnnshap.DeepExplainer(twin, torch.from_numpy(background)).shap_values(torch.from_numpy(X)))
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(values, expected.reshape(values.shape), rtol=1e-10, atol=1e-12)
