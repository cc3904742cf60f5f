"""The fast path of Keras LSTM layers (rnnshap/engines/keras/fused.py) against the step-by-step path.

The fast path runs the recurrence on the distinct rows of each side and gives the layer its
multipliers by a custom gradient; the step-by-step path composes the same rules op by op. Both
explain the same function, so they must give the same values (float64: to rounding), with the
model's own outputs adding up, and exactly 0 for a feature the model ignores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import rnnshap  # noqa: E402
from rnnshap.engines.keras import fused  # noqa: E402

from ...conftest import additivity_tol, secant_rounding_tol  # noqa: E402

pytestmark = pytest.mark.tensorflow_only(
    reason="fused.py is TensorFlow's compiled LSTM/GRU kernel (tf.function, custom gradient); on JAX layers run step by step"
)

L = keras.layers
T, F = 9, 4


def _model(kind: str, dtype: str) -> keras.Model:
    inp = keras.Input((T, F), dtype=dtype)
    seq = L.Lambda(lambda t: t[..., :3], dtype=dtype)(inp)  # the last feature is never read
    if kind == "states":  # every step's output, and the final states
        out, h_state, c_state = L.LSTM(5, return_sequences=True, return_state=True, dtype=dtype)(seq)
        h = L.Concatenate(dtype=dtype)([L.Flatten(dtype=dtype)(out), h_state, c_state])
    elif kind == "gru":  # GRU (reset_after, Keras 3's default), stacked
        h = L.GRU(4, dtype=dtype)(L.GRU(5, return_sequences=True, dtype=dtype)(seq))
    elif kind == "bidirectional":  # a backward layer, and an LSTM stacked on the pair
        h = L.Bidirectional(L.LSTM(4, return_sequences=True, dtype=dtype), dtype=dtype)(seq)
        h = L.LSTM(5, dtype=dtype)(h)
    else:
        raise ValueError(kind)
    return keras.Model(inp, L.Dense(3, dtype=dtype)(h))


def _values(
    model: keras.Model, background: np.ndarray, X: np.ndarray, fast: bool, monkeypatch: pytest.MonkeyPatch, **kwargs: object
) -> tuple[np.ndarray, bool]:
    """The values with the fast path allowed (``fast``) or not, and whether it ran."""
    taken: list[int] = []
    applies = fused.applies

    def counted(*args: object) -> bool:
        answer = fast and applies(*args)  # type: ignore[arg-type]
        taken.append(int(answer))
        return answer

    with monkeypatch.context() as patch:
        patch.setattr(fused, "applies", counted)
        values = rnnshap.DeepExplainer(model, background).shap_values(X, **kwargs)
    return (np.asarray(values) if not isinstance(values, list) else values), any(taken)  # (a list for several inputs)


@pytest.mark.parametrize(
    ("kind", "dtype", "xla"),
    [
        ("states", "float64", False),
        ("states", "float32", False),
        ("gru", "float64", False),
        ("gru", "float32", False),
        ("bidirectional", "float64", False),
        # the per-pair coefficients compiled by XLA, as for blocks of at least fused.XLA_ELEMENTS
        ("states", "float64", True),
        ("states", "float32", True),
        ("gru", "float32", True),
    ],
)
def test_the_fast_path_gives_the_step_by_step_values(kind: str, dtype: str, xla: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "XLA_ELEMENTS", 0 if xla else 1 << 62)
    compiled: list[int] = []
    if xla:
        body = fused._secants_compiled
        monkeypatch.setattr(fused, "_secants_compiled", lambda *args: compiled.append(1) or body(*args))
    keras.utils.set_random_seed(0)
    model = _model(kind, dtype)
    rng = np.random.default_rng(0)
    background, X = rng.normal(size=(7, T, F)).astype(dtype), rng.normal(size=(5, T, F)).astype(dtype)
    fast, ran = _values(model, background, X, True, monkeypatch, batch_size=3)  # blocks of 3 samples x 7 references
    slow, _ = _values(model, background, X, False, monkeypatch, batch_size=3)
    assert ran and bool(compiled) == xla
    # the same values in another order
    assert np.abs(fast - slow).max() <= secant_rounding_tol(dtype) * max(1.0, float(np.abs(slow).max()))
    assert np.all(fast[:, :, F - 1] == 0)  # the feature the model ignores
    gap = np.asarray(model(X), np.float64) - np.asarray(model(background), np.float64).mean(0)
    total = fast.reshape(len(X), -1, 3).sum(1)
    assert np.all(np.abs(total - gap) <= additivity_tol(dtype) * np.maximum(1.0, np.abs(gap)))


@pytest.mark.parametrize(("kind", "step"), [("states", "lstm_step"), ("gru", "gru_step")])
def test_the_fast_path_runs_the_shared_reverse_step(kind: str, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reverse recurrence's step is written once, in rnnshap/formulas/recurrence.py (the PyTorch engine's fused
    layers run it too: tests/recurrent/test_recurrent.py): the fast path's backward calls it at every step (as its
    graph is traced)."""
    from rnnshap.formulas import recurrence

    shared, calls = getattr(recurrence, step), []

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return shared(*args, **kwargs)

    monkeypatch.setattr(recurrence, step, counted)
    keras.utils.set_random_seed(0)
    model = _model(kind, "float32")
    rng = np.random.default_rng(0)
    background, X = rng.normal(size=(4, T, F)).astype("float32"), rng.normal(size=(2, T, F)).astype("float32")
    _, ran = _values(model, background, X, True, monkeypatch)
    assert ran and calls and len(calls) % T == 0


@pytest.mark.parametrize("layer", ["masked-lstm", "gru-reset-before"])
def test_other_layers_take_the_step_by_step_path(layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A masked LSTM (the masked steps get exactly 0), and a GRU with reset_after=False."""
    inp = keras.Input((T, F))
    if layer == "masked-lstm":
        h = L.LSTM(5)(L.Masking(0.0)(inp))
    else:
        h = L.GRU(5, reset_after=False)(L.Lambda(lambda t: t * 1.0)(inp))
    model = keras.Model(inp, L.Dense(1)(h))
    rng = np.random.default_rng(1)
    background, X = rng.normal(size=(4, T, F)).astype("float32"), rng.normal(size=(2, T, F)).astype("float32")
    X[:, -3:] = 0.0
    values, ran = _values(model, background, X, True, monkeypatch)
    assert not ran
    if layer == "masked-lstm":
        assert np.all(values[:, -3:] == 0)


def _time_distributed() -> tuple[keras.Model, list[np.ndarray], list[np.ndarray]]:
    """TimeDistributed(LSTM) over (B, N, T, F): the LSTM's batch is B·N rows, not the grid of pairs."""
    inp = keras.Input((3, T, F), dtype="float64")
    h = L.Flatten(dtype="float64")(L.TimeDistributed(L.LSTM(4, dtype="float64"), dtype="float64")(inp))
    rng = np.random.default_rng(2)
    return keras.Model(inp, L.Dense(1, dtype="float64")(h)), [rng.normal(size=(4, 3, T, F))], [rng.normal(size=(2, 3, T, F))]


def _where_mask() -> tuple[keras.Model, list[np.ndarray], list[np.ndarray]]:
    """A 0/1 integer input cast to bool gates the sequence before the LSTM: a mask computed on the input side,
    which the reference side is read with, so the reference side depends on the sample."""
    seq, keep = keras.Input((T, F), dtype="float64"), keras.Input((T, 1), dtype="int32")
    gated = keras.ops.where(keras.ops.cast(keep, "bool"), seq, 0.0)
    model = keras.Model([seq, keep], L.Dense(1, dtype="float64")(L.LSTM(4, dtype="float64")(gated)))
    rng = np.random.default_rng(3)
    background = [rng.normal(size=(4, T, F)), (rng.random((4, T, 1)) > 0.4).astype("int32")]
    X = [rng.normal(size=(3, T, F)), (rng.random((3, T, 1)) > 0.4).astype("int32")]
    return model, background, X


@pytest.mark.parametrize("build", [_time_distributed, _where_mask])
def test_layers_off_the_grid_or_after_a_mask_take_the_step_by_step_path(build: object, monkeypatch: pytest.MonkeyPatch) -> None:
    model, background, X = build()  # type: ignore[operator]
    fast, ran = _values(model, background, X, True, monkeypatch)
    slow, _ = _values(model, background, X, False, monkeypatch)
    assert not ran
    for got, want in zip(fast if isinstance(fast, list) else [fast], slow if isinstance(slow, list) else [slow], strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_failing_xla_compile_falls_back_to_the_plain_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where XLA cannot compile the coefficients (a TensorFlow build without it, a dtype it lacks),
    the graph is traced again without it and gives the plain graph's values."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = _model("states", "float32")
    rng = np.random.default_rng(0)
    background, X = rng.normal(size=(7, T, F)).astype("float32"), rng.normal(size=(5, T, F)).astype("float32")
    monkeypatch.setattr(fused, "XLA_ELEMENTS", 1 << 62)
    plain = rnnshap.DeepExplainer(model, background).shap_values(X)

    def fails(*args: object) -> object:
        raise tf.errors.UnimplementedError(None, None, "no XLA here")

    monkeypatch.setattr(fused, "XLA_ELEMENTS", 0)
    monkeypatch.setattr(fused, "_XLA", True)
    monkeypatch.setattr(fused, "_secants_compiled", fails)
    values = rnnshap.DeepExplainer(model, background).shap_values(X)
    assert fused._XLA is False  # not tried again
    assert np.array_equal(values, plain)
