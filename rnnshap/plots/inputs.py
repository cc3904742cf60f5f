"""Reading a plot's argument: rnnshap's numpy output or a shap.Explanation, one sequence or a batch,
one output, a window of time steps, the features to keep, and their labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

Output = Union[int, str, tuple, None]
Steps = Union[slice, tuple, list, None]


def is_explanation(obj: Any) -> bool:
    """A shap.Explanation or a subclass of it (rnnshap's SequenceExplanation), without importing shap."""
    return (
        any(klass.__name__ == "Explanation" for klass in type(obj).__mro__)
        and hasattr(obj, "values")
        and hasattr(obj, "base_values")
    )


@dataclass
class Parts:
    """What a plot needs from its argument, numpy output or shap.Explanation alike."""

    values: np.ndarray
    data: np.ndarray | None
    output_axes: int | None  # trailing output axes of values, when known (Explanations)
    time_labels: list[str] | None
    feature_names: list[str] | None
    output_names: list[str] | None
    base_values: np.ndarray | None
    explanation: bool = False


def is_estimate(obj: Any) -> bool:
    """A :class:`rnnshap.ShapleyEstimate` (duck-typed: the plots import nothing of the explainers)."""
    return hasattr(obj, "stderr") and hasattr(obj, "n_players") and hasattr(obj, "deepshap")


def from_estimate(
    values: Any, errors: Any, base_value: Any, what: str, sample: int | None, players: tuple[str, ...] = ("steps",)
) -> tuple[Any, Any, Any]:
    """``values``, ``errors`` and ``base_value`` of a plot's arguments, read from a ShapleyEstimate
    given as ``values`` (its values per player as a (N, P, 1, *outputs) batch of sequences of one
    feature, and the base values of ``sample``), or as given."""
    if not is_estimate(values):
        return values, errors, base_value
    if values.players not in players or isinstance(values.values, list):
        wanted = " or ".join(repr(p) for p in players)
        raise ValueError(f"{what} draws a ShapleyEstimate with players {wanted}, not {values.players!r}")
    if errors is not None:
        raise ValueError(f"{what}: a ShapleyEstimate brings its own standard errors; do not pass errors= too")

    def per_player(a: np.ndarray) -> np.ndarray:
        return np.expand_dims(np.asarray(a, dtype=np.float64), 2)

    base = values.base_values[sample] if base_value is None and sample is not None else base_value
    return per_player(values.values), per_player(values.stderr), base


def unpack(values: Any, data: Any = None, base_value: Any = None) -> Parts:
    if not is_explanation(values):
        return Parts(
            np.asarray(values, dtype=np.float64),
            None if data is None else np.asarray(data),
            None,
            None,
            None,
            None,
            None if base_value is None else np.asarray(base_value, dtype=np.float64),
        )
    explanation = values
    array = np.asarray(explanation.values, dtype=np.float64)
    if data is None and explanation.data is not None:
        data = np.asarray(explanation.data)
    elif data is not None:
        data = np.asarray(data)
    base = explanation.base_values if base_value is None else base_value
    base = None if base is None else np.asarray(base, dtype=np.float64)
    if data is not None and data.ndim <= array.ndim:
        output_axes: int | None = array.ndim - data.ndim
    elif base is not None:
        output_axes = max(base.ndim - 1, 0)  # a batch: one base value per sample (and output)
    else:
        output_axes = None
    time_labels, feature_names = split_names(explanation.feature_names)
    names = explanation.output_names
    output_names = [str(name) for name in names] if isinstance(names, (list, tuple, np.ndarray)) and np.ndim(names) == 1 else None
    axes, labels = getattr(explanation, "axes", None), getattr(explanation, "labels", None)
    if isinstance(axes, list) and len(axes) == array.ndim and all(isinstance(a, str) for a in axes):
        # rnnshap's SequenceExplanation names its axes: no guessing which are outputs, times, features
        outputs = [a for a in axes if a.startswith("output")]
        output_axes = len(outputs)
        if isinstance(labels, dict):
            time_labels = as_strings(labels.get("time")) or time_labels
            feature_names = as_strings(labels.get("feature")) or feature_names
            output_names = (as_strings(labels.get(outputs[-1])) if outputs else None) or output_names
    return Parts(array, data, output_axes, time_labels, feature_names, output_names, base, True)


def as_strings(labels: Any) -> list[str] | None:
    return None if labels is None else [str(label) for label in labels]


def split_names(names: Any) -> tuple[list[str] | None, list[str] | None]:
    """(time labels, feature names) from an Explanation's feature_names."""
    if names is None:
        return None, None
    array = np.asarray(names, dtype=object)
    if array.ndim == 1:
        return None, [str(name) for name in array]
    if array.ndim >= 2:
        grid = array.reshape(-1, *array.shape[-2:])[0]
        split = split_grid(grid)
        if split is not None:
            return split
    return None, None


def split_grid(grid: np.ndarray) -> tuple[list[str], list[str]] | None:
    """Time labels and feature names of a (T, F) grid of ``"time:feature"`` names, or None."""
    texts = [[str(name) for name in row] for row in grid]
    for k in range(texts[0][0].count(":")):  # the time label may itself hold colons: try every split
        pieces = [[name.split(":") for name in row] for row in texts]
        if any(len(p) <= k + 1 for row in pieces for p in row):
            return None
        times = [[":".join(p[: k + 1]) for p in row] for row in pieces]
        features = [[":".join(p[k + 1 :]) for p in row] for row in pieces]
        if all(len(set(row)) == 1 for row in times) and all(row == features[0] for row in features):
            return [row[0] for row in times], features[0]
    return None


def output_index(parts: Parts, output: Any) -> tuple[int, ...]:
    if isinstance(output, str):
        if parts.output_names is None or output not in parts.output_names:
            raise ValueError(f"no output named {output!r}; the outputs are {parts.output_names}")
        return (parts.output_names.index(output),)
    if isinstance(output, tuple):
        return tuple(int(i) for i in output)
    return (int(output),)


def output_label(parts: Parts, index: tuple[int, ...]) -> str:
    if len(index) == 1 and parts.output_names:
        return parts.output_names[index[0]]
    return f"output {index[0] if len(index) == 1 else index}"


def choose_output(parts: Parts, values: np.ndarray, output: Any) -> tuple[np.ndarray, tuple[int, ...] | None, str | None]:
    """``values`` with the chosen output taken (or a lone output axis of size 1 dropped)."""
    axes = parts.output_axes
    if output is not None:
        if axes == 0:
            if output in (0, -1):  # a single-output model without an output axis: nothing to choose
                return values, None, None
            raise ValueError("this explanation has one output and no output axis: leave output=None")
        index = output_index(parts, output)
        where: tuple[Any, ...] = (Ellipsis, *index)
        return values[where], index, output_label(parts, index)
    while axes and values.shape[-1] == 1:
        values, axes = values[..., 0], axes - 1
    if axes:
        raise ValueError(f"the explanation has {values.shape[-1]} outputs: choose one with output=")
    return values, None, None


def pick_sequence(
    parts: Parts, sample: int | None, output: Output, ndims: tuple[int, ...], what: str
) -> tuple[np.ndarray, np.ndarray | None, str | None, float | None]:
    """One sequence's attributions (with ``ndim`` in ``ndims``), its input, the output's label and E[f]."""
    values, index, label = choose_output(parts, parts.values, output)
    data = parts.data
    if sample is not None:
        values = values[sample]
        if data is not None and data.ndim >= max(values.ndim, 2) and data.shape[0] == parts.values.shape[0]:
            data = data[sample]
    if values.ndim - 1 in ndims and values.shape[-1] == 1 and parts.output_axes is None:
        values = values[..., 0]  # numpy output of a single-output model with a trailing output axis
    if values.ndim not in ndims:
        raise ValueError(
            f"{what} draws one sequence, shape {' or '.join(shape_name(n) for n in ndims)}, and got values of shape "
            f"{tuple(parts.values.shape)}: pick a sequence of a batch with sample=i and an output with output=k "
            "(rnnshap's output is (N, T, F) per input, with a last axis of K outputs for a model with several)."
        )
    if data is not None and data.shape != values.shape:
        if data.ndim == values.ndim + 1 and sample is None:
            raise ValueError(f"data has shape {data.shape}, a batch: pick its sequence with sample=")
        raise ValueError(f"data of shape {data.shape} does not match the attributions' shape {values.shape}")
    return values, data, label, base_value_of(parts, sample, index)


def base_value_of(parts: Parts, sample: int | None, index: tuple[int, ...] | None) -> float | None:
    """E[f] of the drawn sequence and output, when known."""
    base = parts.base_values
    if base is None:
        return None
    if parts.explanation:
        axes = parts.output_axes if parts.output_axes is not None else max(base.ndim - 1, 0)
        if base.ndim == axes + 1:  # one per sample
            if sample is None:
                return None
            base = base[sample]
    if index is not None and base.ndim >= len(index):
        where: tuple[Any, ...] = (Ellipsis, *index)
        base = base[where]
    if base.size != 1:
        if not parts.explanation:
            raise ValueError(f"base_value has {base.size} values: give E[f] of the drawn output, or choose it with output=")
        return None
    return float(base.reshape(()))


def shape_name(ndim: int) -> str:
    return {1: "(T,)", 2: "(T, F)", 3: "(N, T, F)"}.get(ndim, f"{ndim}-D")


def axis_labels(given: Sequence[Any] | None, found: list[str] | None, size: int, prefix: str, what: str) -> list[str]:
    if given is not None:
        if len(given) != size:
            raise ValueError(f"{len(given)} {what} for an axis of {size}")
        return [str(label) for label in given]
    if found is not None and len(found) == size:
        return found
    return [f"{prefix}{i}" for i in range(size)]



def steps_and_features(
    parts: Parts,
    count: int,
    features: int,
    time_labels: Sequence[Any] | None,
    feature_names: Sequence[Any] | None,
    steps: Steps,
) -> tuple[list[str], list[str], np.ndarray]:
    """The labels of ``count`` time steps and ``features`` features (those given, else the Explanation's, else 0…
    and f0…), and the indices of the steps to draw (:func:`step_window`)."""
    times = axis_labels(time_labels, parts.time_labels, count, "", "time labels")
    names = axis_labels(feature_names, parts.feature_names, features, "f", "feature names")
    return times, names, step_window(steps, count)

def step_window(steps: Steps, count: int) -> np.ndarray:
    """The indices of the time steps to draw: all, or ``steps`` as a slice or ``(start, stop)``."""
    if steps is None:
        return np.arange(count)
    if isinstance(steps, slice):
        chosen = np.arange(count)[steps]
    elif isinstance(steps, (tuple, list)) and len(steps) == 2:
        chosen = np.arange(count)[slice(*steps)]
    else:
        raise ValueError(f"steps must be a slice or (start, stop), got {steps!r}")
    if chosen.size == 0:
        raise ValueError(f"steps={steps!r} selects no time step of {count}")
    return chosen


def window_note(window: np.ndarray, count: int, times: list[str]) -> str:
    if len(window) == count:
        return ""
    return f"steps {times[window[0]]}–{times[window[-1]]} of {count}"


def top_features(importance: np.ndarray, max_features: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, rest) feature indices: all in input order when they fit, else the ``max_features``
    largest by importance, largest first. A single left-over feature is kept rather than summed."""
    count = len(importance)
    if max_features is None or count <= max_features + 1:
        return np.arange(count), np.arange(0)
    if max_features < 1:
        raise ValueError(f"max_features must be at least 1, got {max_features}")
    order = np.argsort(-importance, kind="stable")
    return order[:max_features], np.sort(order[max_features:])


def pick_batch(parts: Parts, output: Any, what: str) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """(N, T, F) attributions of several samples for one output (one per sample allowed), their inputs and a label."""
    phi, data = parts.values, parts.data
    label = None
    if output is not None and not isinstance(output, (int, np.integer, str, tuple)):
        chosen = np.asarray(output, dtype=np.int64)
        if chosen.shape != (phi.shape[0],):
            raise ValueError(f"output has shape {chosen.shape}: give one index, or one per sample ({phi.shape[0]})")
        if parts.output_axes == 0:
            raise ValueError("this explanation has one output and no output axis: leave output=None")
        phi = phi[np.arange(phi.shape[0]), ..., chosen]
        label = "each sample's chosen output"
    else:
        phi, _, label = choose_output(parts, phi, output)
    if parts.output_axes is None and phi.ndim == 4 and phi.shape[-1] == 1:
        phi = phi[..., 0]
    if phi.ndim == 2:
        phi = phi[:, :, None]
        if data is not None and data.ndim == 2:
            data = data[:, :, None]
    if phi.ndim != 3:
        raise ValueError(
            f"{what} needs attributions of several sequences, (N, T, F) or (N, T), and got shape {tuple(parts.values.shape)}"
            " after choosing the output: for a model with several outputs pass output=k."
        )
    if data is not None and data.shape != phi.shape:
        data = None if data.size != phi.size else data.reshape(phi.shape)
    return phi, data, label
