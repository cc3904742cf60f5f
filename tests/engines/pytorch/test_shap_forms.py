"""shap's other model forms: ``(model, layer)`` for PyTorch, ``(inputs, output)`` of Keras tensors.

Truths: the same model split at the layer and explained from the layer's input (PyTorch), the
sub-model built by hand (Keras), shap's own interim-layer code where its rules are exact (a ReLU
network), and additivity against the model's own outputs.
"""

from __future__ import annotations

import copy
import json
import textwrap
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...keras_process import KerasProcess
from ...models.torch import Composite, RecurrentHead

F64 = torch.float64
Tensor = torch.Tensor


def recurrent() -> RecurrentHead:
    """x (N, T, 3) → Linear → tanh → LSTM → last step → Linear (2 outputs)."""
    return RecurrentHead("lstm", 4, 5, 2, project=3, names="embed lstm head")


def tail(model: RecurrentHead) -> nn.Module:
    """``recurrent()`` from the LSTM's input on: the model split at ``lstm``."""
    return Composite(lambda m, z: m.head(m.lstm(z)[0][:, -1]), lstm=model.lstm, head=model.head)


def _data(seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 7, 3, generator=generator, dtype=F64), torch.randn(4, 7, 3, generator=generator, dtype=F64)


def test_interim_layer_is_the_model_split_at_the_layer() -> None:
    torch.manual_seed(0)
    model = recurrent().double().eval()
    background, X = _data()
    explainer = rnnshap.DeepExplainer((model, model.lstm), background)
    values = explainer.shap_values(X)
    with torch.no_grad():
        z_background, z_X = torch.tanh(model.embed(background)), torch.tanh(model.embed(X))
        gap = (model(X) - model(background).mean(0)).numpy()
        expected = model(background).mean(0).numpy()
    assert values.shape == (*z_X.shape, 2)  # shaped like the layer's input, outputs last
    split = rnnshap.DeepExplainer(tail(model), z_background).shap_values(z_X)
    np.testing.assert_allclose(values, split, rtol=0, atol=1e-13)
    np.testing.assert_allclose(explainer.expected_value, expected, rtol=0, atol=1e-14)  # shap's base value
    np.testing.assert_allclose(values.sum((1, 2)), gap, rtol=0, atol=1e-12)  # each sample adds up
    ex = explainer(X)
    np.testing.assert_array_equal(ex.values, values)
    np.testing.assert_allclose(ex.base_values, np.broadcast_to(expected, (4, 2)), rtol=0, atol=1e-14)


def test_interim_layer_matches_shaps_own_code_where_its_rules_are_exact() -> None:
    shap = pytest.importorskip("shap")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    generator = torch.Generator().manual_seed(1)
    background, X = torch.randn(5, 5, generator=generator, dtype=F64), torch.randn(3, 5, generator=generator, dtype=F64)
    ours = rnnshap.DeepExplainer((model, model[2]), background)
    twin = copy.deepcopy(model)  # shap leaves hooks' attributes and the eval flag on the model it is given
    theirs = shap.DeepExplainer((twin, twin[2]), background)
    np.testing.assert_allclose(ours.shap_values(X), theirs.shap_values(X), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.expected_value, theirs.expected_value, rtol=0, atol=1e-14)


def test_interim_layer_of_a_model_in_training_mode() -> None:
    """shap's test form: the first layer of a CNN with batch norm and dropout, in training mode."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6, 5), nn.BatchNorm1d(5), nn.Dropout(0.3), nn.ReLU(),
        nn.Linear(5, 2),
    ).double()
    with torch.no_grad():
        model[4].running_mean.uniform_(-1, 1)
        model[4].running_var.uniform_(0.5, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(2)
    background, X = torch.randn(4, 2, 8, generator=generator, dtype=F64), torch.randn(3, 2, 8, generator=generator, dtype=F64)
    with pytest.warns(UserWarning, match="'4' \\(BatchNorm1d\\), '5' \\(Dropout\\)"):
        values = rnnshap.DeepExplainer((model, model[3]), background).shap_values(X)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    evaluated = copy.deepcopy(model).eval()
    with torch.no_grad():
        z_background, z_X = evaluated[:3](background), evaluated[:3](X)
        gap = (evaluated(X) - evaluated(background).mean(0)).numpy()
    split = rnnshap.DeepExplainer(evaluated[3:], z_background).shap_values(z_X)
    np.testing.assert_allclose(values, split, rtol=0, atol=1e-13)
    np.testing.assert_allclose(values.sum(1), gap, rtol=0, atol=1e-12)


def test_interim_layer_at_the_first_module_is_the_model() -> None:
    torch.manual_seed(3)
    model = recurrent().double().eval()
    background, X = _data(3)
    values = rnnshap.DeepExplainer((model, model.embed), background).shap_values(X)
    np.testing.assert_allclose(values, rnnshap.DeepExplainer(model, background).shap_values(X), rtol=0, atol=1e-13)


def test_interim_layer_summarize_converts_once() -> None:
    torch.manual_seed(4)
    model = recurrent().double().eval()
    background, X = _data(4)
    explainer = rnnshap.DeepExplainer((model, model.lstm), background)
    summary = explainer.summarize(X, batch_size=3)
    np.testing.assert_allclose(summary.mean, explainer.shap_values(X).mean(0), rtol=0, atol=1e-13)


def _skip() -> nn.Module:
    return Composite(lambda m, x: m.b(torch.tanh(m.a(x))) + 1e-3 * x.sum(1, keepdim=True), a=nn.Linear(4, 4), b=nn.Linear(4, 1))


def _twice() -> nn.Module:
    return Composite(lambda m, x: m.a(torch.tanh(m.a(x))).sum(1), a=nn.Linear(4, 4))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        pytest.param(lambda m: (m, m.b), "other than through the input of the layer 'b'", id="skip-connection"),
        pytest.param(lambda m: (m, nn.Linear(4, 4)), "not a submodule", id="foreign-layer"),
    ],
)
def test_interim_layer_that_is_not_a_cut_is_refused(build: object, match: str) -> None:
    model = _skip().double().eval()
    with pytest.raises(rnnshap.InputError, match=match):
        rnnshap.DeepExplainer(build(model), torch.randn(5, 4, dtype=F64))  # type: ignore[operator]


def test_interim_layer_called_twice_is_refused() -> None:
    model = _twice().double().eval()
    with pytest.raises(rnnshap.InputError, match="more than once"):
        rnnshap.DeepExplainer((model, model.a), torch.randn(5, 4, dtype=F64))


def test_a_tuple_of_something_else_is_refused_with_the_forms() -> None:
    with pytest.raises(TypeError, match="tuple forms"):
        rnnshap.DeepExplainer((nn.Linear(2, 1), "layer"), torch.randn(3, 2))


# -- Keras: (inputs, output) -------------------------------------------------------------------------------
KERAS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import rnnshap

    L = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 3), dtype="float64")
    states = L.LSTM(4, dtype="float64")(inputs)
    hidden = L.Dense(6, activation="relu", dtype="float64")(states)
    logits = L.Dense(3, dtype="float64")(hidden)
    probabilities = L.Softmax(dtype="float64")(logits)
    model = keras.Model(inputs, probabilities)
    rs = np.random.RandomState(0)
    background, X = rs.randn(6, 5, 3), rs.randn(4, 5, 3)
    explainer = rnnshap.DeepExplainer((model.inputs, model.layers[-2].output), background)
    values = explainer.shap_values(X)
    by_hand = keras.Model(inputs, logits)
    truth = rnnshap.DeepExplainer(by_hand, background).shap_values(X)
    outputs = keras.ops.convert_to_numpy(by_hand(X))
    gap = outputs - keras.ops.convert_to_numpy(by_hand(background)).mean(0)
    single = rnnshap.DeepExplainer((inputs, probabilities), background).shap_values(X)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "shape": list(values.shape),
        "vs_by_hand": float(np.abs(values - truth).max()),
        "additivity": float(np.abs(values.sum((1, 2)) - gap).max()),
        "scale": float(np.abs(outputs).max()),
        "expected": float(np.abs(explainer.expected_value - keras.ops.convert_to_numpy(by_hand(background)).mean(0)).max()),
        "whole_additivity": float(np.abs(
            single.sum((1, 2)) - (keras.ops.convert_to_numpy(model(X)) - keras.ops.convert_to_numpy(model(background)).mean(0))
        ).max()),
    }))
    """
)


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_keras_inputs_and_output_tensors_explain_the_network_between_them(
    backend: str, keras_process: Callable[[str], KerasProcess]
) -> None:
    pytest.importorskip("keras")
    if backend == "tensorflow":
        pytest.importorskip("tensorflow")
    result = json.loads(keras_process(backend).run(KERAS_SCRIPT, timeout=300).strip().splitlines()[-1])
    assert result["backend"] == backend
    assert result["shape"] == [4, 5, 3, 3]  # (*X.shape, logits)
    assert result["vs_by_hand"] <= 1e-13  # the same sub-model: the same values
    # Keras on torch computes its float64 matmuls in float32: additivity to float32 rounding there
    tolerance = 1e-12 if backend == "tensorflow" else 8 * float(np.finfo(np.float32).eps) * max(1.0, result["scale"])
    assert result["additivity"] <= tolerance
    assert result["expected"] <= 1e-14
    assert result["whole_additivity"] <= tolerance


# -- Keras MaxPooling (shap's Keras CNN test): the same network in PyTorch is the reference ----------------
MAXPOOL_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import keras
    import torch
    import torch.nn.functional as F
    import rnnshap

    L = keras.layers
    keras.utils.set_random_seed(1)
    results = {}
    for padding in ("valid", "same"):
        model = keras.Sequential([
            keras.Input((7, 6, 2), dtype="float64"), L.Conv2D(3, 2, activation="tanh", dtype="float64"),
            L.MaxPooling2D((2, 2), strides=(1, 2), padding=padding, dtype="float64"), L.Flatten(dtype="float64"),
            L.Dense(2, dtype="float64"),
        ])
        rs = np.random.RandomState(1)
        background, X = rs.randn(5, 7, 6, 2), rs.randn(3, 7, 6, 2)
        values = rnnshap.DeepExplainer(model, background).shap_values(X)
        kernel, bias = (torch.from_numpy(np.asarray(w)) for w in model.layers[0].get_weights())
        dense_w, dense_b = (torch.from_numpy(np.asarray(w)) for w in model.layers[3].get_weights())

        class Same(torch.nn.Module):
            def forward(self, x):
                h = torch.tanh(F.conv2d(x.permute(0, 3, 1, 2), kernel.permute(3, 2, 0, 1), bias))  # NCHW
                if padding == "same":  # keras pads the bottom/right of an odd total; the lowest value never wins
                    h = F.pad(h, (0, 1, 0, 1), value=float(torch.finfo(h.dtype).min))
                h = F.max_pool2d(h, (2, 2), stride=(1, 2))
                return h.permute(0, 2, 3, 1).flatten(1) @ dense_w + dense_b

        reference = rnnshap.DeepExplainer(Same(), torch.from_numpy(background)).shap_values(torch.from_numpy(X))
        gap = np.asarray(model(X)) - np.asarray(model(background)).mean(0)
        results[padding] = {
            "vs_torch": float(np.abs(values - reference).max()),
            "additivity": float(np.abs(values.sum((1, 2, 3)) - gap).max()),
            "outputs": float(np.abs(Same()(torch.from_numpy(X)).detach().numpy() - np.asarray(model(X))).max()),
        }
    print(json.dumps(results))
    """
)


def test_keras_max_pooling_is_shaps_max_rule_as_in_pytorch(keras_process: Callable[[str], KerasProcess]) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    results = json.loads(keras_process("tensorflow").run(MAXPOOL_SCRIPT, timeout=300).strip().splitlines()[-1])
    for padding, result in results.items():
        assert result["outputs"] <= 1e-12, padding  # the PyTorch network is the Keras one
        assert result["vs_torch"] <= 1e-12, padding
        assert result["additivity"] <= 1e-12, padding
