"""Which outputs are explained: the output tensor of a model with several, and the outputs of that vector.

A model may return a list, a tuple or a dict of tensors (a forecast and a quantile head, a per-step
and a final output). Every engine explains one output tensor: by default all of them, each flattened
per sample and concatenated in the model's order (a dict by sorted key), or the one chosen with
``DeepExplainer(model, data, output=i_or_name)``. :class:`OutputLayout` holds that choice and, after
the first call, where each output sits in the vector; it knows nothing of the framework (the engine
passes its own flatten and concatenate).

Within that output vector, :func:`select_outputs` turns the indices a user gives (``outputs=``) into
flat positions, and :func:`selected_outputs` picks the columns each sample is explained for (the
chosen outputs, the top ``ranked_outputs``, or all), for both doors.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError

#: which output tensor to explain: an index into the model's outputs, a name, a path into a nested
#: structure (``(1, 0)``: the first tensor of the second item of ``(logits, (h, c))``), or None for all
OutputChoice = int | str | tuple[int | str, ...] | None


def _nested(value: Any) -> bool:
    return isinstance(value, (list, tuple, dict))


def _describe(value: Any) -> str:
    """A short picture of a model's result: ``(Tensor, (Tensor, Tensor))``."""
    fields = dataclass_fields(value)
    if fields is not None:
        return f"{type(value).__name__}(" + ", ".join(f"{k}={_describe(v)}" for k, v in fields.items()) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        inside = ", ".join(_describe(v) for v in value)
        return f"[{inside}]" if isinstance(value, list) else f"({inside}{',' if len(value) == 1 else ''})"
    return type(value).__name__


def dataclass_fields(out: Any) -> dict[str, Any] | None:
    """A plain dataclass instance's fields that hold a value (None dropped, as HF ``ModelOutput`` drops them), in
    their order, or None for anything else."""
    if not dataclasses.is_dataclass(out) or isinstance(out, type) or isinstance(out, dict):
        return None
    return {f.name: getattr(out, f.name) for f in dataclasses.fields(out) if getattr(out, f.name) is not None}


def output_parts(out: Any) -> tuple[list[Any], list[str] | None]:
    """The output tensors of a model's result, in order, with their names for a dict (sorted keys) or a
    dataclass (its fields, in order, as HF ``ModelOutput`` fields are taken)."""
    fields = dataclass_fields(out)
    if fields is not None:
        return list(fields.values()), list(fields)
    if isinstance(out, dict):
        keys = sorted(out)
        return [out[k] for k in keys], [str(k) for k in keys]
    if isinstance(out, (list, tuple)) and not hasattr(out, "_fields"):
        return list(out), None
    if isinstance(out, tuple):  # a named tuple
        return list(out), [str(f) for f in out._fields]  # type: ignore[attr-defined]
    return [out], None


class OutputLayout:
    """The explained output of a model with one or several output tensors.

    ``parts`` lists ``(name, shape, start, stop)`` per output tensor, in the order their values are
    flattened into one vector, set by the first call of :meth:`take` (empty for one output tensor).
    """

    def __init__(self, choice: OutputChoice = None) -> None:
        if isinstance(choice, numbers.Integral) and not isinstance(choice, bool):
            choice = int(choice)  # numpy integers too
        elif (
            isinstance(choice, (tuple, list))
            and choice
            and all(isinstance(c, (str, numbers.Integral)) and not isinstance(c, bool) for c in choice)
        ):
            choice = tuple(c if isinstance(c, str) else int(c) for c in choice)
            if len(choice) == 1:
                choice = choice[0]
        elif choice is not None and not isinstance(choice, str):
            raise InputError(
                f"output={choice!r}: give the index or the name of one of the model's outputs, a path into a nested "
                "result (output=(1, 0)), or None for all"
            )
        self.choice = choice
        self.parts: list[tuple[str, tuple[int, ...], int, int]] = []

    def take(
        self,
        flat: list[Any],
        names: Sequence[str] | None,
        shape_of: Callable[[Any], Sequence[int]],
        concatenate: Callable[[list[Any]], Any],
    ) -> Any:
        """The explained output from the model's output tensors ``flat`` (in order, see
        :func:`output_parts`): the chosen one, the only one, or all of them concatenated
        (``concatenate`` flattens each per sample and joins them).

        ``names`` name the tensors (dict keys, Keras' ``output_names``) where they fit; otherwise
        they are ``output_0``, ``output_1``, ...
        """
        if not self.parts and (len(flat) > 1 or self.choice is not None):
            self._set(flat, list(names) if names and len(names) == len(flat) else None, shape_of)
        if self.choice is not None:
            return flat[self.position()]
        if len(flat) > 1:
            for t, (name, *_) in zip(flat, self.parts, strict=False):
                if len(shape_of(t)) == 0:
                    raise InputError(
                        f"The model's output {name!r} is a scalar, with no batch axis, so the outputs cannot be explained "
                        f"together: pick one with a batch axis by output= (the outputs: {[n for n, *_ in self.parts]})."
                    )
        return flat[0] if len(flat) == 1 else concatenate(flat)

    def leaf(self, out: Any, is_leaf: Callable[[Any], bool]) -> Any:
        """For a result with nested structures (``(logits, (h, c))``), the tensor ``output=`` picks by
        index, name or path; None for a result without nesting (:meth:`take` then picks).

        Raises :class:`InputError` where no ``output=`` is given, or it does not lead to one tensor."""
        by_field = dataclass_fields(out)
        if by_field is not None:
            out = by_field  # (a dataclass: its fields by name, as a dict's keys)
        items = out.values() if isinstance(out, dict) else out
        if not _nested(out) or not (isinstance(self.choice, tuple) or any(_nested(v) for v in items)):
            return None
        shown = _describe(out)
        if self.choice is None:
            raise InputError(
                f"The model returns a nested structure, {shown}: pick the tensor to explain with output=, an index or a "
                "name (output=0) or a path into the structure (output=(1, 0) for the first tensor of the second item)."
            )
        path = self.choice if isinstance(self.choice, tuple) else (self.choice,)
        value = out
        for step, key in enumerate(path):
            where = f"output={self.choice!r}: step {step} ({key!r}) of the path"
            if isinstance(value, dict):
                if key not in value:
                    raise InputError(f"{where} names no key of {{{', '.join(map(repr, value))}}} in the model's result {shown}")
                value = value[key]
            elif isinstance(value, (list, tuple)):
                fields = list(getattr(value, "_fields", ()))
                if isinstance(key, str) and key in fields:
                    value = value[fields.index(key)]
                elif isinstance(key, int) and -len(value) <= key < len(value):
                    value = value[key]
                else:
                    raise InputError(f"{where} does not index the {len(value)} items of the model's result {shown}")
            else:
                raise InputError(f"{where} goes into a {type(value).__name__}, in the model's result {shown}")
        if not is_leaf(value):
            raise InputError(
                f"output={self.choice!r} picks {_describe(value)} of the model's result {shown}, not one tensor: give the "
                "path to one tensor (output=(1, 0))."
            )
        return value

    def _set(self, flat: list[Any], names: list[str] | None, shape_of: Callable[[Any], Sequence[int]]) -> None:
        names = names or [f"output_{i}" for i in range(len(flat))]
        start = 0
        for name, value in zip(names, flat, strict=True):
            shape = tuple(int(d) for d in shape_of(value)[1:])
            size = 1
            for d in shape:
                size *= d
            self.parts.append((name, shape, start, start + size))
            start += size
        if self.choice is not None:
            self.position()  # a choice that fits no output fails now

    def position(self) -> int:
        """The place of the chosen output among the model's outputs."""
        names = [name for name, *_ in self.parts]
        choice = self.choice
        if isinstance(choice, str):
            if choice not in names:
                raise InputError(f"output={choice!r}: the model's outputs are named {names}")
            return names.index(choice)
        assert choice is not None
        if isinstance(choice, tuple):
            raise InputError(f"output={choice!r}: a path into a nested result, but the model's outputs {names} are not nested")
        if not -len(names) <= int(choice) < len(names):
            raise InputError(f"output={choice!r}: the model has {len(names)} output(s) {names}")
        return int(choice) % len(names)


def select_outputs(output_shape: tuple[int, ...], outputs: Sequence[Any]) -> np.ndarray:
    """Flat output indices of ``outputs`` (indices into ``output_shape``), shape (k,)."""
    shape = output_shape or (1,)
    if isinstance(outputs, (int, np.integer)) and not isinstance(outputs, bool):
        outputs = [int(outputs)]  # one output, by its index
    flat = []
    for index in outputs:
        if isinstance(index, bool) or not (
            isinstance(index, (int, np.integer))
            or (isinstance(index, (tuple, list)) and all(isinstance(i, (int, np.integer)) for i in index))
        ):
            raise InputError(
                f"output index {index!r}: give an integer, or a tuple of integers for a multidimensional output {output_shape}"
            )
        multi = (int(index),) if isinstance(index, (int, np.integer)) else tuple(int(i) for i in index)
        if len(multi) != len(shape) or any(not -size <= i < size for i, size in zip(multi, shape, strict=False)):
            raise InputError(f"output index {index!r} does not fit the model's output shape {output_shape}")
        flat.append(int(np.ravel_multi_index(tuple(i % size for i, size in zip(multi, shape, strict=False)), shape)))
    if not flat:
        raise InputError("outputs is empty; give at least one output index")
    return np.asarray(flat, dtype=np.int64)


def selected_outputs(
    output_shape: tuple[int, ...],
    n: int,
    ranked_outputs: int | None,
    output_rank_order: str,
    outputs: int | Sequence[int | tuple[int, ...]] | None,
    scores: Callable[[], np.ndarray],
) -> np.ndarray:
    """(n, k) flat indices of the outputs to explain for each of ``n`` samples: the chosen ``outputs``,
    each sample's top ``ranked_outputs`` by ``scores()`` (the model's outputs), or all."""
    if isinstance(outputs, (numbers.Integral, np.integer)) and not isinstance(outputs, bool):
        outputs = [int(outputs)]  # one output, by its index
    assert not isinstance(outputs, (int, np.integer))
    if ranked_outputs is not None and (
        isinstance(ranked_outputs, bool) or not isinstance(ranked_outputs, (numbers.Integral, np.integer))
    ):
        raise InputError(
            f"ranked_outputs must be a positive integer (how many top outputs to explain per sample), got {ranked_outputs!r}"
        )
    if outputs is not None and ranked_outputs is not None:
        raise InputError("give either ranked_outputs or outputs, not both")
    if outputs is not None:
        chosen = select_outputs(output_shape, outputs)[None, :]
        return np.broadcast_to(chosen, (n, chosen.shape[1])).copy()
    if ranked_outputs is not None:
        if not 1 <= ranked_outputs:
            raise InputError(f"ranked_outputs must be a positive integer, got {ranked_outputs}")
        order = {"max": lambda s: -s, "min": lambda s: s, "max_abs": lambda s: -np.abs(s)}
        if output_rank_order not in order:
            raise InputError(f"output_rank_order must be 'max', 'min' or 'max_abs', got {output_rank_order!r}")
        return np.argsort(order[output_rank_order](scores()), axis=1, kind="stable")[:, :ranked_outputs].astype(np.int64)
    n_outputs = int(np.prod(output_shape)) if output_shape else 1
    return np.broadcast_to(np.arange(n_outputs, dtype=np.int64), (n, n_outputs)).copy()


__all__ = ["OutputChoice", "OutputLayout", "output_parts", "select_outputs", "selected_outputs"]
