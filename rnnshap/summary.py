"""Streaming summaries of attributions: global importance over datasets too large to hold.

:meth:`rnnshap.DeepExplainer.summarize` feeds a :class:`Summary` batch by batch and never keeps all
attributions; summaries of parts of a dataset (processes, Ray actors, days) :meth:`~Summary.merge`
into the summary of the whole. Per-sample attributions can be written to Parquet shards on the way
(:class:`ParquetShards`, read back with :func:`read_shards`). :func:`summarize` is that method's body.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

import numpy as np

from .engines.base import named_inputs_advice, normal_mode
from .errors import InputError

if TYPE_CHECKING:
    from .attribution import Attribution
    from .engines.base import Engine


class Summary:
    """Count, mean φ, mean ``|φ|`` and a bounded uniform sample of per-sample attributions.

    ``mean`` and ``mean_abs`` are shaped like one sample's ``shap_values`` (a list per input for a
    multi-input model). They are kept as float64 sums, so merging the summaries of two halves of a
    dataset gives the summary of the whole up to float64 rounding. The sample is a uniform random
    sample without replacement of at most ``sample_size`` samples: each sample draws a uniform key
    and a summary keeps the smallest keys, so a merged sample is again a uniform sample of the union.

    Attributes:
        count: the number of samples summarized.
        sample_values: per input, ``(m, *value_shape)`` attributions of the sampled samples.
        sample_data: per input, ``(m, *input_shape)`` the sampled samples' inputs (for colouring).
        sample_base_values: ``(m, *output_shape)`` their base values.
        sample_rows: ``(m,)`` their row numbers in the stream that produced them (see ``summarize``).
    """

    def __init__(
        self,
        value_shapes: Sequence[tuple[int, ...]],
        input_shapes: Sequence[tuple[int, ...]],
        output_shape: tuple[int, ...],
        *,
        multi_input: bool = False,
        sample_size: int = 1000,
        seed: int | np.random.SeedSequence | None = None,
        feature_names: Any = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
        if sample_size < 0:
            raise ValueError(f"sample_size must be at least 0, got {sample_size}")
        self.value_shapes = [tuple(s) for s in value_shapes]
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.output_shape = tuple(output_shape)
        self.multi_input = multi_input
        self.sample_size = int(sample_size)
        self.feature_names = feature_names
        self.output_names = None if output_names is None else list(output_names)
        self._rng = np.random.default_rng(seed)
        self.count = 0
        self._sum = [np.zeros(s) for s in self.value_shapes]
        self._sum_abs = [np.zeros(s) for s in self.value_shapes]
        self._base_sum = np.zeros(self.output_shape)
        self._keys = np.zeros(0)
        self.sample_values = [np.zeros((0, *s)) for s in self.value_shapes]
        self.sample_data: list[np.ndarray] = [np.zeros((0, *s)) for s in self.input_shapes]
        self.sample_base_values = np.zeros((0, *self.output_shape))
        self.sample_rows = np.zeros(0, dtype=np.int64)

    # -- reading --------------------------------------------------------------------------------
    def _per_input(self, arrays: list[np.ndarray]) -> Any:
        return arrays if self.multi_input else arrays[0]

    @property
    def mean(self) -> Any:
        """Mean φ over the samples, shaped like one sample's ``shap_values``."""
        return self._per_input([s / max(self.count, 1) for s in self._sum])

    @property
    def mean_abs(self) -> Any:
        """Mean ``|φ|`` over the samples (global importance), shaped like one sample's ``shap_values``."""
        return self._per_input([s / max(self.count, 1) for s in self._sum_abs])

    @property
    def base_value(self) -> np.ndarray:
        """The mean base value E[f] over the samples (it varies per sample only with masks or context inputs)."""
        return self._base_sum / max(self.count, 1)

    @property
    def sample(self) -> Any:
        """The sampled per-sample attributions, ``(m, *value_shape)`` (a list per input)."""
        return self._per_input(self.sample_values)

    def __repr__(self) -> str:
        shapes = self.value_shapes if self.multi_input else self.value_shapes[0]
        return f"Summary(count={self.count}, value shape {shapes}, {len(self._keys)} sampled)"

    # -- writing --------------------------------------------------------------------------------
    def update(
        self, values: Sequence[np.ndarray], base_values: np.ndarray, data: Sequence[np.ndarray], rows: np.ndarray | None = None
    ) -> None:
        """Add a batch: per input, ``values`` ``(n, *value_shape)`` and ``data`` ``(n, *input_shape)``;
        ``base_values`` ``(n, *output_shape)``; ``rows`` the samples' row numbers (default: counting on)."""
        values = [np.asarray(v, dtype=np.float64) for v in values]
        n = values[0].shape[0]
        for v, shape in zip(values, self.value_shapes, strict=True):
            if v.shape[1:] != shape:
                raise ValueError(f"values of shape {v.shape[1:]} do not fit a summary of shape {shape}")
        rows = np.arange(self.count, self.count + n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        for total, total_abs, v in zip(self._sum, self._sum_abs, values, strict=True):
            total += v.sum(0)
            total_abs += np.abs(v).sum(0)
        base = np.asarray(base_values, dtype=np.float64).reshape(n, *self.output_shape)
        self._base_sum += base.sum(0)
        self.count += n
        self._keep(np.asarray(self._rng.random(n)), values, [np.asarray(d) for d in data], base, rows)

    def _keep(
        self, keys: np.ndarray, values: list[np.ndarray], data: list[np.ndarray], base: np.ndarray, rows: np.ndarray
    ) -> None:
        """Add candidates to the sample and keep the ``sample_size`` smallest keys."""
        keys = np.concatenate([self._keys, keys])
        order = np.argsort(keys, kind="stable")[: self.sample_size]
        self._keys = keys[order]
        self.sample_values = [np.concatenate([old, new])[order] for old, new in zip(self.sample_values, values, strict=True)]
        self.sample_data = [
            np.concatenate([old.astype(new.dtype, copy=False), new])[order]
            for old, new in zip(self.sample_data, data, strict=True)
        ]
        self.sample_base_values = np.concatenate([self.sample_base_values, base])[order]
        self.sample_rows = np.concatenate([self.sample_rows, rows])[order]

    def merge(self, other: Summary) -> Summary:
        """The summary of both: counts and sums add, the samples merge by their keys. Returns a new
        Summary; neither operand changes."""
        if (self.value_shapes, self.output_shape) != (other.value_shapes, other.output_shape):
            raise ValueError(f"cannot merge summaries of shapes {self.value_shapes} and {other.value_shapes}")
        merged = Summary(
            self.value_shapes, self.input_shapes, self.output_shape, multi_input=self.multi_input,
            sample_size=min(self.sample_size, other.sample_size), seed=int(self._rng.integers(2**63)),
            feature_names=self.feature_names, output_names=self.output_names,
        )  # fmt: skip
        merged.count = self.count + other.count
        merged._sum = [a + b for a, b in zip(self._sum, other._sum, strict=True)]
        merged._sum_abs = [a + b for a, b in zip(self._sum_abs, other._sum_abs, strict=True)]
        merged._base_sum = self._base_sum + other._base_sum
        merged._keys = self._keys[: merged.sample_size]
        merged.sample_values = [v[: merged.sample_size] for v in self.sample_values]
        merged.sample_data = [d[: merged.sample_size] for d in self.sample_data]
        merged.sample_base_values = self.sample_base_values[: merged.sample_size]
        merged.sample_rows = self.sample_rows[: merged.sample_size]
        merged._keep(other._keys, other.sample_values, other.sample_data, other.sample_base_values, other.sample_rows)
        return merged

    __add__ = merge

    @staticmethod
    def combine(summaries: Sequence[Summary]) -> Summary:
        """The merge of several summaries (at least one)."""
        if not summaries:
            raise ValueError("no summaries to combine")
        total = summaries[0]
        for other in summaries[1:]:
            total = total.merge(other)
        return total


class ParquetShards:
    """Writes per-sample attributions and base values as Parquet files, one per batch.

    Each file ``part-00000.parquet``, ... has the columns ``row`` (the sample's row number),
    ``shap_values`` (``shap_values_<i>`` per input for a multi-input model) and ``base_values``,
    the arrays stored as fixed-shape tensors. Needs pyarrow (``pip install 'rnnshap[parquet]'``).
    """

    def __init__(self, directory: str | os.PathLike[str], multi_input: bool, dtype: str = "float32") -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError as error:
            raise ImportError("writing Parquet shards needs pyarrow: pip install 'rnnshap[parquet]'") from error
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if any(self.directory.glob("part-*.parquet")):
            raise FileExistsError(f"{self.directory} already holds Parquet shards; give an empty or new directory")
        self.multi_input = multi_input
        self.dtype = np.dtype(dtype)
        self.shards = 0

    def write(self, values: Sequence[np.ndarray], base_values: np.ndarray, rows: np.ndarray) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = [f"shap_values_{i}" for i in range(len(values))] if self.multi_input else ["shap_values"]
        columns: dict[str, Any] = {"row": pa.array(np.asarray(rows, dtype=np.int64))}
        for name, array in [*zip(names, values, strict=True), ("base_values", base_values)]:
            columns[name] = _tensor_column(np.asarray(array, dtype=self.dtype))
        table = pa.table(columns)
        table = table.replace_schema_metadata({"rnnshap": json.dumps({"multi_input": self.multi_input})})
        path = self.directory / f"part-{self.shards:05d}.parquet"
        pq.write_table(table, path)
        self.shards += 1
        return path


def _tensor_column(array: np.ndarray) -> Any:
    import pyarrow as pa

    if array.ndim == 1:
        return pa.array(array)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array))


def read_shards(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The columns of the Parquet shards in ``directory`` as numpy arrays, rows in file order."""
    import pyarrow.parquet as pq

    files = sorted(Path(directory).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet shards (part-*.parquet) in {directory}")
    parts: dict[str, list[np.ndarray]] = {}
    for file in files:
        table = pq.read_table(file)
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            array = column.to_numpy_ndarray() if hasattr(column, "to_numpy_ndarray") else column.to_numpy()
            parts.setdefault(name, []).append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


class Explains(Protocol):
    """What :func:`summarize` needs of the explainer (:class:`rnnshap.DeepExplainer`)."""

    engine: Engine

    @property
    def fixed_batch_size(self) -> int: ...

    @property
    def multi_input(self) -> bool: ...

    @property
    def output_shape(self) -> tuple[int, ...]: ...

    def attribution(
        self,
        inputs: list[Any],
        *,
        outputs: Any = None,
        check_additivity: bool | float = True,
        progress: bool | None = None,
    ) -> Attribution: ...


def summarize(
    explainer: Explains,
    data: Any,
    batch_size: int | None,
    *,
    outputs: Sequence[int | tuple[int, ...]] | None,
    check_additivity: bool | float,
    sample_size: int,
    seed: int | None,
    parquet: str | os.PathLike[str] | None,
    feature_names: Any,
    output_names: Sequence[str] | None,
    progress: bool | None,
) -> Summary:
    """:meth:`rnnshap.DeepExplainer.summarize` (see there): ``data`` explained batch by batch into a
    :class:`Summary`, and written to Parquet shards on the way with ``parquet``."""
    engine = explainer.engine
    summary: Summary | None = None
    shards = None
    if parquet is not None:
        floating = engine.dtype if engine.dtype in ("float32", "float64") else "float32"
        shards = ParquetShards(parquet, explainer.multi_input, floating)
    start = 0
    for batch in _batches(explainer, data, batch_size):
        with normal_mode():
            inputs = engine.inputs(batch, "a batch of data")
            n = engine.rows(inputs)
            attribution = explainer.attribution(inputs, outputs=outputs, check_additivity=check_additivity, progress=progress)
        values, base = attribution.per_sample(explainer.output_shape, outputs is not None)
        data_arrays = engine.to_numpy(inputs)
        rows = np.arange(start, start + n, dtype=np.int64)
        if summary is None:
            summary = Summary(
                [v.shape[1:] for v in values], [d.shape[1:] for d in data_arrays], tuple(base.shape[1:]),
                multi_input=explainer.multi_input, sample_size=sample_size, seed=seed,
                feature_names=feature_names, output_names=output_names,
            )  # fmt: skip
        summary.update(values, base, data_arrays, rows)
        if shards is not None:
            shards.write(values if explainer.multi_input else values[:1], base, rows)
        start += n
    if summary is None:
        raise InputError("summarize got no samples: data is empty")
    return summary


def _batches(explainer: Explains, data: Any, batch_size: int | None) -> Iterator[Any]:
    """Batches of ``data`` for :func:`summarize` (see there), pulled lazily."""
    engine, multi_input = explainer.engine, explainer.multi_input
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    names = engine.input_names
    if names is not None and isinstance(data, (list, tuple)) and data and all(_is_array(d) for d in data):
        raise InputError(named_inputs_advice(names, "data"))
    named = names is not None and isinstance(data, dict)  # a dict of arrays keyed as the background
    if named or _is_array(data) or (multi_input and isinstance(data, (list, tuple)) and data and all(map(_is_array, data))):
        inputs = engine.inputs(data, "data")
        n = engine.rows(inputs)
        step = int(batch_size) if batch_size else max(1, explainer.fixed_batch_size // engine.references)
        for begin in range(0, n, step):
            part = engine.take(inputs, begin, begin + step)
            yield part if multi_input else part[0]
        return
    if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise InputError(f"summarize takes an array, a list per input, or an iterable of batches, not {type(data).__name__}")
    for batch in data:
        if not multi_input and isinstance(batch, (list, tuple)):
            if len(batch) != 1:
                raise InputError(
                    f"a batch of data is a {type(batch).__name__} of {len(batch)} items but the model takes one input. "
                    "For a DataLoader that yields (inputs, labels), pass (x for x, _ in loader)."
                )
            batch = batch[0]
        yield batch


def _is_array(value: Any) -> bool:
    """A numpy array or a framework tensor (anything with a shape and a dtype), not a list of them."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (list, tuple))
