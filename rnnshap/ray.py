"""Explain a ``ray.data.Dataset`` on a Ray cluster: actors build the model once and keep the explainer.

>>> import rnnshap.ray                                               # doctest: +SKIP
>>> explained = rnnshap.ray.explain(ds, make_model, background, column="x", batch_size=256)
>>> summary = rnnshap.ray.summarize(ds, make_model, background, column="x", batch_size=256)

``model_fn()`` builds the model (in eval mode) inside each actor, so nothing but the function and
the background travels to the workers. The values are those of :class:`rnnshap.DeepExplainer` in
one process. Needs Ray Data: ``pip install 'rnnshap[ray]'``.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .explainer import DeepExplainer
from .summary import Summary

try:
    import ray
    import ray.data
except ImportError as error:  # pragma: no cover - exercised only without ray
    raise ImportError("rnnshap.ray needs Ray Data: pip install 'rnnshap[ray]'") from error


def _columns(column: str | Sequence[str]) -> list[str]:
    columns = [column] if isinstance(column, str) else list(column)
    if not columns or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"column must be a column name or a list of them (one per model input), got {column!r}")
    return columns


class _Worker:
    """State of one actor: the model, built once, its explainer, and the options of each call."""

    def __init__(
        self,
        model_fn: Callable[[], Any],
        background: Any,
        columns: list[str],
        explainer_options: Mapping[str, Any],
        call_options: Mapping[str, Any],
    ) -> None:
        self.columns = columns
        self.explainer = DeepExplainer(model_fn(), background, **dict(explainer_options))
        self.call_options = dict(call_options)

    def inputs(self, batch: Mapping[str, np.ndarray]) -> Any:
        missing = [c for c in self.columns if c not in batch]
        if missing:
            raise KeyError(f"the dataset has no column(s) {missing}; it has {sorted(batch)}")
        arrays = [np.asarray(batch[c]) for c in self.columns]
        for name, array in zip(self.columns, arrays, strict=True):
            if array.dtype == object:
                raise ValueError(
                    f"column {name!r} holds rows of different shapes; rnnshap needs one shape per column (pad the sequences)"
                )
        return arrays if self.explainer.multi_input else arrays[0]


class _Explain(_Worker):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = self.explainer.engine.inputs(self.inputs(batch), "a batch of the dataset")
        outputs = self.call_options["outputs"]
        check = self.call_options["check_additivity"]
        attribution = self.explainer.attribution(inputs, outputs=outputs, check_additivity=check, progress=False)
        values, base = attribution.per_sample(self.explainer.output_shape, outputs is not None)
        out = dict(batch)
        if self.explainer.multi_input:
            for name, v in zip(self.columns, values, strict=True):
                out[f"shap_values_{name}"] = v
        else:
            out["shap_values"] = values[0]
        out["base_values"] = base
        return out


class _Summarize(_Worker):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(batch.values())))
        summary = self.explainer.summarize(self.inputs(batch), batch_size=rows, progress=False, **self.call_options)
        summary.sample_rows[:] = -1  # row numbers of a batch mean nothing across the dataset
        return {"summary": np.array([pickle.dumps(summary)], dtype=object)}


def _map(
    dataset: ray.data.Dataset, worker: type[_Worker], model_fn: Callable[[], Any], background: Any, column: str | Sequence[str],
    batch_size: int, concurrency: int | tuple[int, int] | None, num_gpus: float, explainer_options: Mapping[str, Any] | None,
    call_options: Mapping[str, Any],
) -> ray.data.Dataset:  # fmt: skip
    """``dataset`` mapped batch by batch through a pool of ``worker`` actors."""
    return dataset.map_batches(
        worker,
        fn_constructor_args=(model_fn, background, _columns(column), dict(explainer_options or {}), dict(call_options)),
        batch_size=batch_size,
        batch_format="numpy",
        compute=_actors(concurrency, num_gpus),
        num_gpus=num_gpus,
    )


def _actors(concurrency: int | tuple[int, int] | None, num_gpus: float) -> ray.data.ActorPoolStrategy:
    """The actor pool: ``concurrency`` actors, or an autoscaling pool of ``(min, max)``; by default up
    to one actor per CPU (or per ``num_gpus`` GPUs) of the cluster."""
    if isinstance(concurrency, int):
        return ray.data.ActorPoolStrategy(size=concurrency)
    if concurrency is None:
        resources = ray.cluster_resources()
        available = resources.get("GPU", 0) / num_gpus if num_gpus else resources.get("CPU", 1)
        concurrency = (1, max(1, int(available)))
    low, high = concurrency
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)


def explain(
    dataset: ray.data.Dataset,
    model_fn: Callable[[], Any],
    background: Any,
    *,
    column: str | Sequence[str],
    batch_size: int,
    concurrency: int | tuple[int, int] | None = None,
    num_gpus: float = 0,
    outputs: Sequence[int | tuple[int, ...]] | None = None,
    check_additivity: bool | float = True,
    explainer_options: Mapping[str, Any] | None = None,
) -> ray.data.Dataset:
    """The rows of ``dataset`` with ``shap_values`` and ``base_values`` columns added.

    Args:
        dataset: rows with the model's input in ``column`` (a list of columns, one per input, for
            a multi-input model; each then gets a ``shap_values_<column>`` column).
        model_fn: builds the model; called once in each actor.
        background: the reference samples, as for :class:`rnnshap.DeepExplainer`.
        batch_size: rows per batch handed to an actor.
        concurrency: actors to run, or ``(min, max)`` for an autoscaling pool (default: up to
            one per CPU, or per ``num_gpus`` GPUs).
        num_gpus: GPUs per actor (``model_fn`` then puts the model on ``"cuda"``).
        outputs, check_additivity: as for :meth:`rnnshap.DeepExplainer.shap_values`.
        explainer_options: more arguments for :class:`rnnshap.DeepExplainer` (``batch_size`` in pairs, ``rules``).
    """
    options = {"outputs": outputs, "check_additivity": check_additivity}
    return _map(dataset, _Explain, model_fn, background, column, batch_size, concurrency, num_gpus, explainer_options, options)


def summarize(
    dataset: ray.data.Dataset,
    model_fn: Callable[[], Any],
    background: Any,
    *,
    column: str | Sequence[str],
    batch_size: int,
    concurrency: int | tuple[int, int] | None = None,
    num_gpus: float = 0,
    outputs: Sequence[int | tuple[int, ...]] | None = None,
    check_additivity: bool | float = True,
    sample_size: int = 1000,
    explainer_options: Mapping[str, Any] | None = None,
) -> Summary:
    """A :class:`rnnshap.Summary` of the whole ``dataset``: each batch is summarized where it is
    explained and only the summaries travel back, to be merged here. Arguments as for :func:`explain`;
    the sampled rows' ``sample_rows`` are -1 (a batch does not know its rows' place in the dataset)."""
    options = {"outputs": outputs, "check_additivity": check_additivity, "sample_size": sample_size}
    parts = _map(dataset, _Summarize, model_fn, background, column, batch_size, concurrency, num_gpus, explainer_options, options)
    summaries = [pickle.loads(row["summary"]) for row in parts.iter_rows()]
    if not summaries:
        raise ValueError("the dataset has no rows")
    return Summary.combine(summaries)


__all__ = ["explain", "summarize"]
