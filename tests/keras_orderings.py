"""A Keras layer that orders its input with a keras op (``sort`` or ``top_k``), registered so that a saved
model loads under either backend (tests/engines/keras/test_keras_orderings_picks_pooling.py)."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="rnnshap_tests")
class Ordered(keras.layers.Layer):
    """``ops.sort(x, axis)`` (``k`` = 0) or ``ops.top_k(x, k)[0]``."""

    def __init__(self, k: int = 0, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k, self.axis = k, axis

    def call(self, x: Any) -> Any:
        return keras.ops.sort(x, axis=self.axis) if self.k == 0 else keras.ops.top_k(x, self.k)[0]

    def compute_output_shape(self, shape: Any) -> Any:
        return shape if self.k == 0 else (*shape[:-1], self.k)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "k": self.k, "axis": self.axis}


@keras.saving.register_keras_serializable(package="rnnshap_tests")
class Picks(keras.layers.Layer):
    """A use of the indices that ``argmax``, ``argmin`` or ``top_k`` pick from its input ``x``:

    - ``"take-argmax"``: ``take_along_axis(x, expand_dims(argmax(x, -1), -1), -1)``;
    - ``"take-argmin-keepdims"``: ``take_along_axis(x, argmin(x, -1, keepdims=True), -1)``;
    - ``"one-hot-argmax"``: ``one_hot(argmax(x, -1), n) * x``;
    - ``"top-k-gather"``: the reversed ``x`` gathered at ``top_k(x, 2)``'s indices;
    - ``"cast-argmax"``: ``x * cast(argmax(x, -1) + 1, float)``: arithmetic and a cast on the indices;
    - ``"embed-argmax"``: an ``Embedding`` of ``argmax(x, -1)`` (greedy decoding), added to ``x``.
    """

    def __init__(self, use: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.use = use
        self.table = keras.layers.Embedding(5, 5, dtype=self.dtype_policy) if use == "embed-argmax" else None

    def build(self, shape: Any) -> None:
        if self.table is not None:
            self.table.build(shape[:-1])

    def call(self, x: Any) -> Any:
        ops = keras.ops
        if self.use == "take-argmax":
            return ops.take_along_axis(x, ops.expand_dims(ops.argmax(x, axis=-1), -1), axis=-1)
        if self.use == "take-argmin-keepdims":
            return ops.take_along_axis(x, ops.argmin(x, axis=-1, keepdims=True), axis=-1)
        if self.use == "one-hot-argmax":
            return ops.one_hot(ops.argmax(x, axis=-1), x.shape[-1], dtype=x.dtype) * x
        if self.use == "top-k-gather":
            return ops.take_along_axis(ops.flip(x, axis=-1), ops.top_k(x, 2)[1], axis=-1)
        if self.use == "cast-argmax":
            return x * ops.expand_dims(ops.cast(ops.argmax(x, axis=-1) + 1, x.dtype), -1)
        assert self.table is not None
        return self.table(ops.argmax(x, axis=-1)) + x

    def compute_output_shape(self, shape: Any) -> Any:
        width = {"take-argmax": 1, "take-argmin-keepdims": 1, "top-k-gather": 2}.get(self.use, shape[-1])
        return (*shape[:-1], width)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "use": self.use}
