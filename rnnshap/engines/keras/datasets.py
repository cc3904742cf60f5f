"""A ``tf.data.Dataset`` given as background or as the samples: its rows, as Keras' ``predict`` reads them.

Keras reads a dataset's elements as batches of inputs, and an element that is a tuple of two or three
as ``(inputs, targets[, sample_weights])`` (``keras.utils.unpack_x_y_sample_weight``): the inputs are one
array, a tuple or list of arrays (a model of several inputs), or a dict of named inputs. rnnshap reads it
the same way and joins the batches: every row of the dataset is taken (``dataset.take(k)`` gives fewer).
TensorFlow is not imported here: a dataset is known by its type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InputError


def is_dataset(value: Any) -> bool:
    """Whether ``value`` is a ``tf.data.Dataset`` (known by its type, without importing TensorFlow)."""
    return any(
        klass.__name__.endswith("Dataset") and klass.__module__.startswith("tensorflow") for klass in type(value).__mro__
    ) and hasattr(value, "as_numpy_iterator")


def dataset_rows(value: Any, what: str) -> Any:
    """``value``'s rows where it is a ``tf.data.Dataset`` (one array, a list of arrays or a dict of arrays, as
    its elements' inputs are); anything else as it is."""
    if not is_dataset(value):
        return value
    spec = getattr(value, "element_spec", None)
    if spec is not None and _unbatched(spec):
        raise InputError(
            f"{what} is a tf.data.Dataset of single rows (its elements have no batch axis): batch it first, "
            "dataset.batch(256), so that each element is a batch of inputs, as Keras' predict() reads it"
        )
    parts: list[Any] = []
    for element in value.as_numpy_iterator():
        if isinstance(element, tuple) and len(element) in (2, 3):
            element = element[0]  # (inputs, targets[, sample_weights]), as keras.utils.unpack_x_y_sample_weight reads it
        elif isinstance(element, tuple) and len(element) == 1:
            element = element[0]
        parts.append(element)
    if not parts:
        raise InputError(f"{what} is an empty tf.data.Dataset")
    first = parts[0]
    if isinstance(first, dict):
        return {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in first}
    if isinstance(first, (tuple, list)):
        return [np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(len(first))]
    return np.concatenate([np.asarray(p) for p in parts])


def _unbatched(spec: Any) -> bool:
    """Whether every tensor of an element spec (the inputs part) has no axis: rows given one by one as scalars."""
    if isinstance(spec, tuple) and len(spec) in (1, 2, 3):
        spec = spec[0]
    leaves = list(spec.values()) if isinstance(spec, dict) else list(spec) if isinstance(spec, (tuple, list)) else [spec]
    shapes = [getattr(leaf, "shape", None) for leaf in leaves]
    return all(shape is not None and shape.rank == 0 for shape in shapes)


__all__ = ["dataset_rows", "is_dataset"]
