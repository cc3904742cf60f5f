"""A Keras layer that orders its input with a keras op (``sort`` or ``top_k``), registered so that a saved
model loads under either backend (tests/test_keras_issue22_backends.py)."""

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
