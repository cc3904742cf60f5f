"""Every engine says what to do where inputs disagree on their batch axis: a state in torch's
(num_layers, batch, hidden) layout, sequences of different lengths read as several inputs, one sample without its
batch axis. The PyTorch engine said so; the Keras and JAX engines stated the mismatch alone (and JAX crashed with a
raw ``TypeError`` where two inputs to explain had different numbers of rows)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch

import rnnshap
from rnnshap.errors import InputError

from ..models.torch import Composite

RNG = np.random.default_rng(0)
SEQUENCES = RNG.standard_normal((10, 6, 3)).astype(np.float32)
STATES = RNG.standard_normal((10, 4)).astype(np.float32)


def torch_model() -> Any:
    return Composite(lambda m, x, h: m.head(m.rnn(x, h[None].contiguous())[0][:, -1]),
                     rnn=torch.nn.GRU(3, 4, batch_first=True), head=torch.nn.Linear(4, 1)).eval()  # fmt: skip


def keras_model() -> Any:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    x, h = keras.Input((6, 3)), keras.Input((4,))
    out = keras.layers.Dense(1)(keras.layers.GRU(4)(x, initial_state=h))
    return keras.Model([x, h], out)


def jax_model() -> Any:
    nnx = pytest.importorskip("flax.nnx")
    from ..models.flax import FlaxComposite

    rngs = nnx.Rngs(0)
    return FlaxComposite(lambda m, x, h: m.x(x).mean(1) + m.h(h), x=nnx.Linear(3, 1, rngs=rngs), h=nnx.Linear(4, 1, rngs=rngs))


def as_inputs(name: str, arrays: list[np.ndarray]) -> list[Any]:
    return [torch.tensor(a) for a in arrays] if name == "torch" else arrays


DOORS: dict[str, Callable[[], Any]] = {"torch": torch_model, "keras": keras_model, "jax": jax_model}
#: per engine, a word of the call its advice names for each case
TRANSPOSE = {"torch": "h0.transpose(0, 1)", "keras": "np.swapaxes(state, 0, 1)", "jax": "jnp.swapaxes(state, 0, 1)"}
PAD = {"torch": "pad_sequence", "keras": "keras.utils.pad_sequences", "jax": "np.pad"}


@pytest.mark.parametrize("name", DOORS)
def test_a_state_with_its_batch_on_axis_1_is_named_with_the_call_that_puts_it_first(name: str) -> None:
    model = DOORS[name]()
    background = as_inputs(name, [SEQUENCES, STATES[None]])  # h0 as (num_layers, batch, hidden)
    with pytest.raises(InputError) as caught:
        rnnshap.DeepExplainer(model, background).shap_values(as_inputs(name, [SEQUENCES[:2], STATES[:2]]))
    assert "axis 1" in str(caught.value) and TRANSPOSE[name] in str(caught.value)


@pytest.mark.parametrize("name", DOORS)
def test_inputs_to_explain_with_different_row_counts_are_refused_with_advice(name: str) -> None:
    model = DOORS[name]()
    explainer = rnnshap.DeepExplainer(model, as_inputs(name, [SEQUENCES, STATES]))
    with pytest.raises(InputError) as caught:  # JAX raised a raw TypeError from inside the model before
        explainer.shap_values(as_inputs(name, [SEQUENCES[:5], STATES[:3]]))
    assert "batch axis first" in str(caught.value)


@pytest.mark.parametrize("name", DOORS)
def test_sequences_of_different_lengths_read_as_several_inputs_get_the_padding_call(name: str) -> None:
    if name == "torch":
        model: Any = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(18, 1))
    elif name == "keras":
        keras = pytest.importorskip("keras")
        model = keras.Sequential([keras.Input((6, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    else:
        nnx = pytest.importorskip("flax.nnx")
        from ..models.flax import FlaxComposite

        model = FlaxComposite(lambda m, x: m.head(x.reshape(x.shape[0], -1)), head=nnx.Linear(18, 1, rngs=nnx.Rngs(0)))
    ragged = as_inputs(name, [SEQUENCES[:4], SEQUENCES[:3], SEQUENCES[:5]])  # three "sequences" of 4, 3, 5 steps
    with pytest.raises(InputError) as caught:
        rnnshap.DeepExplainer(model, ragged)
    assert "different lengths" in str(caught.value) and PAD[name] in str(caught.value)


@pytest.mark.parametrize("name", DOORS)
def test_one_sample_without_its_batch_axis_gets_the_none_hint(name: str) -> None:
    model = DOORS[name]()
    explainer = rnnshap.DeepExplainer(model, as_inputs(name, [SEQUENCES, STATES]))
    with pytest.raises(InputError) as caught:
        explainer.shap_values(as_inputs(name, [SEQUENCES[0], STATES[:1]]))
    assert "[None]" in str(caught.value) and "(1, 6, 3)" in str(caught.value)
