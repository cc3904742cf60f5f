"""``shap.Explanation`` objects for sequences, whose axes keep their names through shap's idioms.

shap's Explanation knows one axis of feature names. A sequence attribution has named axes —
samples, time steps, features, outputs — and shap's own slicing and reductions lose or garble
their names past two dimensions. :func:`make` builds a plain ``shap.Explanation`` where shap handles
it (values ``(N, F)`` or ``(F,)``, one name per feature) and a :class:`SequenceExplanation`
otherwise, which does ``ex[...]``, ``ex.sum(axis)``, ``ex.mean(axis)``, ``ex.max(axis)``,
``ex.min(axis)`` and ``ex.abs`` itself, keeping each axis' labels and the base values, and turning
back into a plain Explanation once the result is one that shap's plots take:

>>> ex = explainer(X, feature_names=channels, time_labels=days, output_names=classes)  # doctest: +SKIP
>>> shap.plots.bar(ex[..., "cat"].sum(1))          # per feature, summed over time   # doctest: +SKIP
>>> shap.plots.beeswarm(ex[..., "cat"].sum(2))     # per time step                   # doctest: +SKIP
>>> shap.plots.waterfall(ex[0, ..., "cat"].sum(0))  # one sample, per feature          # doctest: +SKIP

:func:`explanations` assembles them for ``explainer(X)``: the axis names and labels of each input, token
ids as strings, the base values. Importing this module imports shap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import shap

from .errors import InputError

if TYPE_CHECKING:
    from .attribution import Attribution

SAMPLE, TIME, FEATURE, OUTPUT = "sample", "time", "feature", "output"

Labels = dict[str, "list[str] | None"]


def explanations(
    attribution: Attribution,
    data: list[np.ndarray],
    output_shape: tuple[int, ...],
    multi_input: bool,
    token_inputs: Sequence[int],
    *,
    feature_names: Sequence[Any] | None,
    time_labels: Sequence[Any] | None,
    output_names: Sequence[str] | None,
    vocabulary: Sequence[str] | Mapping[int, str] | None,
) -> Any:
    """The Explanations of ``explainer(X)`` (see :meth:`rnnshap.DeepExplainer.__call__`): one per input
    for a ``multi_input`` model, of ``attribution`` (all outputs) and the inputs' ``data``."""
    n = attribution.base_values.shape[0]
    n_outputs = int(np.prod(output_shape)) if output_shape else 1
    single = n_outputs == 1 and len(output_shape) <= 1
    shape = () if single else output_shape
    output_axes = [OUTPUT] if len(shape) == 1 else [f"{OUTPUT}{i}" for i in range(len(shape))]
    if output_names is not None:
        if not shape or len(output_names) != shape[-1]:
            raise InputError(f"{len(output_names)} output_names for a model whose outputs have shape {output_shape}")
    base = attribution.base_values.reshape(n, *shape)
    features = _per_input(feature_names, len(data)) if multi_input else [feature_names]
    times = _per_input(time_labels, len(data)) if multi_input else [time_labels]
    made = []
    for index, (phi, x, f, t) in enumerate(zip(attribution.values, data, features, times, strict=True)):
        token = index in token_inputs
        axes, labels = _input_axes(tuple(x.shape), f, t, token=token)
        if token and vocabulary is not None:
            x = _token_strings(x, vocabulary)
        if output_axes:
            labels[output_axes[-1]] = None if output_names is None else [str(name) for name in output_names]
        values = phi.reshape(*phi.shape[:-1], *shape)
        made.append(make(values, base, x, axes + output_axes, labels))
    return made if multi_input else made[0]


def _per_input(labels: Sequence[Any] | None, count: int) -> list[Any]:
    """Labels given for a multi-input model: one list per input (or None for all)."""
    if labels is None:
        return [None] * count
    if len(labels) != count or any(
        isinstance(item, str) or not hasattr(item, "__len__") for item in labels if item is not None
    ):
        raise InputError(f"the model has {count} inputs: give one list of labels per input (None for an input without)")
    return list(labels)


def _token_strings(ids: np.ndarray, vocabulary: Sequence[str] | Mapping[int, str]) -> np.ndarray:
    """Token ids as their strings (an object array of the same shape)."""
    try:
        return np.vectorize(lambda i: str(vocabulary[int(i)]), otypes=[object])(ids)
    except (IndexError, KeyError) as error:
        raise InputError(f"the vocabulary has no string for token id {error.args[0] if error.args else '?'}") from error


def _input_axes(
    shape: tuple[int, ...], feature_names: Sequence[Any] | None, time_labels: Sequence[Any] | None, token: bool
) -> tuple[list[str], dict[str, Any]]:
    """The axis names and labels of an input of ``shape`` (batch first) for an Explanation."""

    def checked(labels: Sequence[Any] | None, size: int, what: str, default: str | None) -> list[str] | None:
        if labels is None:
            return None if default is None else [f"{default}{i}" for i in range(size)]
        if isinstance(labels, str) or len(labels) != size:
            raise InputError(f"{len(labels)} {what} for an input of shape {shape}: it needs {size}")
        return [str(label) for label in labels]

    axes = shape[1:]
    if len(axes) == 1:
        if feature_names is not None and time_labels is not None:
            raise InputError(f"an input of shape {shape} has one axis to label: give feature_names or time_labels, not both")
        axis = "time" if token or (time_labels is not None and feature_names is None) else "feature"
        given, what = (feature_names, "feature_names") if feature_names is not None else (time_labels, "time_labels")
        return ["sample", axis], {axis: checked(given, axes[0], what, None)}
    if len(axes) == 2:
        return ["sample", "time", "feature"], {
            "time": checked(time_labels, axes[0], "time_labels", "t"),
            "feature": checked(feature_names, axes[1], "feature_names", "f"),
        }
    if feature_names is not None or time_labels is not None:
        raise InputError(f"labels for an input of shape {shape} are not supported: only (N, F) and (N, T, F) inputs take names")
    return ["sample", *[f"axis{i}" for i in range(1, len(shape))]], {}


def make(values: np.ndarray, base_values: np.ndarray | None, data: np.ndarray | None, axes: Sequence[str], labels: Labels) -> Any:
    """An Explanation of ``values`` whose axes are named by ``axes`` (``data`` has the same axes
    without the output ones; ``base_values`` has the sample and output axes)."""
    axes = list(axes)
    if base_values is not None and np.ndim(base_values) == 0:
        base_values = float(base_values)  # type: ignore[assignment]  # shap wants a number, not a 0-d array
    outputs = [a for a in axes if a.startswith(OUTPUT)]
    inner = [a for a in axes if a != SAMPLE and not a.startswith(OUTPUT)]
    if len(inner) <= 1 and not outputs:
        names = labels.get(inner[0]) if inner else None
        return shap.Explanation(
            values=values, base_values=base_values, data=data, feature_names=None if names is None else list(names)
        )
    return SequenceExplanation(values, base_values, data, axes, labels)


class SequenceExplanation(shap.Explanation):
    """A shap.Explanation with named axes (see the module docstring).

    ``axes`` names every axis of ``values``: ``"sample"``, ``"time"``, ``"feature"``, ``"output"``
    (or ``"output0"``, ``"output1"`` for a model with several output axes); ``labels`` maps an axis
    name to its labels (or None). ``feature_names`` is shap's: for a (sample, time, feature) view,
    one ``"<time>:<feature>"`` name per cell and sample, the layout shap's slicing keeps.
    """

    def __init__(
        self, values: np.ndarray, base_values: np.ndarray | None, data: np.ndarray | None, axes: Sequence[str], labels: Labels
    ) -> None:
        self.axes = list(axes)
        self.labels: Labels = {a: (None if labels.get(a) is None else list(labels[a])) for a in self.axes}  # type: ignore[arg-type]
        if len(self.axes) != np.ndim(values):
            raise ValueError(f"{len(self.axes)} axis names for values of shape {np.shape(values)}")
        output_names = self.labels.get(self.axes[-1]) if self.axes[-1].startswith(OUTPUT) else None
        super().__init__(
            values=values,
            base_values=base_values,
            data=data,
            feature_names=self._grid_names(np.shape(values)),
            output_names=output_names,
        )

    def _grid_names(self, shape: tuple[int, ...]) -> Any:
        """shap's feature_names: the labels of the one input axis, or per sample a ``"time:feature"``
        grid when the view has both a time and a feature axis."""
        inner = [a for a in self.axes if a != SAMPLE and not a.startswith(OUTPUT)]
        if len(inner) == 1:
            return self.labels.get(inner[0])
        if TIME not in self.axes or FEATURE not in self.axes:
            return None
        times, features = self.labels.get(TIME), self.labels.get(FEATURE)
        if times is None and features is None:
            return None
        steps, width = shape[self.axes.index(TIME)], shape[self.axes.index(FEATURE)]
        times = times or [f"t{i}" for i in range(steps)]
        features = features or [f"f{i}" for i in range(width)]
        grid = np.array([[f"{t}:{f}" for f in features] for t in times])
        if SAMPLE in self.axes:
            return np.broadcast_to(grid, (shape[self.axes.index(SAMPLE)], *grid.shape)).copy()
        return grid

    # -- the axes of data and base values -------------------------------------------------------
    @property
    def _data_axes(self) -> list[str]:
        return [a for a in self.axes if not a.startswith(OUTPUT)]

    @property
    def _base_axes(self) -> list[str]:
        return [a for a in self.axes if a == SAMPLE or a.startswith(OUTPUT)]

    def _array(self, name: str) -> np.ndarray | None:
        value = getattr(self, name)
        return None if value is None else np.asarray(value)

    def _rebuild(
        self, values: np.ndarray, base: np.ndarray | None, data: np.ndarray | None, axes: list[str], labels: Labels
    ) -> Any:
        return make(values, base, data, axes, labels)

    # -- slicing ------------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        keys = self._expand(key)
        values, data, base = np.asarray(self.values), self._array("data"), self._array("base_values")
        axes, labels = list(self.axes), dict(self.labels)
        data_axes, base_axes = self._data_axes, self._base_axes
        # from the last axis to the first, so that earlier axis positions stay valid
        for axis_name, k in reversed(list(zip(self.axes, keys, strict=True))):
            index = self._index(axis_name, k)
            if isinstance(index, slice) and index == slice(None):
                continue
            values = _take(values, axes.index(axis_name), index)
            if data is not None and axis_name in data_axes:
                data = _take(data, data_axes.index(axis_name), index)
            if base is not None and axis_name in base_axes and base.ndim == len(base_axes):
                base = _take(base, base_axes.index(axis_name), index)
            if np.ndim(index) == 0 and not isinstance(index, slice):
                axes.remove(axis_name)
                data_axes = [a for a in data_axes if a != axis_name]
                base_axes = [a for a in base_axes if a != axis_name]
                labels.pop(axis_name, None)
            elif labels.get(axis_name) is not None:
                labels[axis_name] = list(np.asarray(labels[axis_name], dtype=object)[index])
        return self._rebuild(values, base, data, axes, labels)

    def _expand(self, key: Any) -> list[Any]:
        keys = list(key) if isinstance(key, tuple) else [key]
        if sum(k is Ellipsis for k in keys) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in keys:
            at = keys.index(Ellipsis)
            keys[at : at + 1] = [slice(None)] * (len(self.axes) - len(keys) + 1)
        if len(keys) > len(self.axes):
            raise IndexError(f"too many indices for an explanation with axes {self.axes}")
        return keys + [slice(None)] * (len(self.axes) - len(keys))

    def _index(self, axis: str, key: Any) -> Any:
        """``key`` with labels (output names, feature names, time labels) turned into positions."""
        names = self.labels.get(axis)

        def position(item: Any) -> Any:
            if isinstance(item, str):
                if names is None or item not in names:
                    raise KeyError(f"{item!r} is not a label of the {axis} axis (labels: {names})")
                return names.index(item)
            return item

        if isinstance(key, (list, tuple)) or (isinstance(key, np.ndarray) and key.dtype.kind in "OUS"):
            return [position(item) for item in key]
        return position(key)

    # -- reductions ---------------------------------------------------------------------------------
    def _reduce(self, function: str, axis: int) -> Any:
        axis = axis % len(self.axes)
        name = self.axes[axis]
        reduce = getattr(np, function)
        values = reduce(np.asarray(self.values), axis=axis)
        data, base = self._array("data"), self._array("base_values")
        if data is not None and name in self._data_axes:
            # inputs over time are averaged (a feature's typical value, for colouring); across
            # features they have no common unit, so they are dropped
            data = None if name == FEATURE else data.mean(axis=self._data_axes.index(name))
        if base is not None and name in self._base_axes and base.ndim == len(self._base_axes):
            base = base.mean(axis=self._base_axes.index(name))
        axes = [a for a in self.axes if a != name]
        labels = {a: v for a, v in self.labels.items() if a != name}
        return self._rebuild(values, base, data, axes, labels)

    def sum(self, axis: int | None = None, grouping: dict[str, str] | None = None) -> Any:  # type: ignore[override]
        if axis is None or grouping is not None:
            raise ValueError(
                "give the axis to sum over: ex.sum(1) sums over time, ex.sum(2) over features (for (N, T, F) inputs)"
            )
        return self._reduce("sum", axis)

    def mean(self, axis: int) -> Any:  # type: ignore[override]
        return self._reduce("mean", axis)

    def max(self, axis: int) -> Any:  # type: ignore[override]
        return self._reduce("max", axis)

    def min(self, axis: int) -> Any:  # type: ignore[override]
        return self._reduce("min", axis)

    @property
    def abs(self) -> Any:  # type: ignore[override]
        values = np.abs(np.asarray(self.values))
        return SequenceExplanation(values, self._array("base_values"), self._array("data"), self.axes, self.labels)

    def __repr__(self) -> str:
        return f"SequenceExplanation(axes={self.axes}, shape={np.shape(self.values)})"


def _take(array: np.ndarray, axis: int, index: Any) -> np.ndarray:
    where: list[Any] = [slice(None)] * array.ndim
    where[axis] = index
    return array[tuple(where)]
