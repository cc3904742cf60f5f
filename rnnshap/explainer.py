"""``rnnshap.DeepExplainer``: the one front door, with the call shapes of shap's DeepExplainer.

Everything a user sees is done here once for every engine: argument checks, output selection,
batching into blocks of (sample, reference) pairs, the additivity check, the shapes of the results,
Explanations and streaming summaries. An engine (:mod:`rnnshap.engines`) only turns blocks of pairs
into sums of multiplier × (x − r).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np

from .engines import Block, Engine, engine_for
from .engines.base import RTOL
from .errors import AdditivityError, InputError
from .progress import progress_bar
from .shapley.door import ShapleyEstimate
from .shapley.explainer import select_outputs
from .summary import ParquetShards, Summary

Inputs = Union[Any, Sequence[Any]]



@dataclass
class Attribution:
    """The attributions of a batch of samples, before shaping: float64 arrays."""

    #: per input, ``(n, *input_shape, k)``: mean over the background of multiplier × (x − r)
    values: list[np.ndarray]
    #: ``(n, k)`` flat indices of the attributed outputs
    selected: np.ndarray
    #: ``(n, n_outputs)``: the model's outputs
    outputs: np.ndarray
    #: ``(n, n_outputs)``: the mean output over each sample's references (E[f], per sample)
    base_values: np.ndarray


class DeepExplainer:
    """Exact DeepSHAP values for a PyTorch model or a Keras 3 model, recurrent layers included.

    Drop-in for ``shap.DeepExplainer``: ``DeepExplainer(model, background)`` then
    ``shap_values(X)``, with the same shapes and return types. The attributions of every sample
    sum to ``f(x) - expected_value`` up to float rounding, which is checked by default.

    Args:
        model: an ``nn.Module`` or a Keras 3 model (TensorFlow or torch backend), or one of shap's
            tuple forms: ``(inputs, output)`` of Keras symbolic tensors (the network between them),
            ``(module, layer)`` for PyTorch (attributions to the input of ``layer``, for ``data`` and
            ``X`` given as the model's inputs; with ``layer_output=True``, to its output). A PyTorch model
            in training mode with dropout or batch statistics is explained in eval mode, as shap does, with
            one warning. It is not modified. See docs/api.md, "Model forms".
        data: the background: a tensor or array whose first dimension indexes reference samples,
            or a list/tuple of them for a model with several inputs.
        batch_size: the largest number of (sample, reference) pairs run through the model at once.
            Pairs run in blocks of whole samples (all references) when ``batch_size`` is at least
            the background size, which lets recurrent layers run on the distinct rows of each side.
            Memory grows with it; results do not depend on it.
        rules: rules for this explainer only, ``{torch_function_or_module_class: rule}``, on top of
            the ones registered with :func:`rnnshap.register_rule` (PyTorch models).
        progress: show a tqdm progress bar over the blocks of pairs. ``None`` (the default): only
            when stderr is a terminal and there is more than one block.
        output: for a model that returns several tensors (a list, a tuple or a dict), the one to
            explain, by index or name (a dict key, a Keras output name), or by a path into a nested
            result (``output=(1, 0)`` for ``h`` of ``(logits, (h, c))``). ``None`` (the default):
            all of them, each flattened per sample and concatenated in the model's order (a dict's
            by sorted key); ``explainer.engine.output_layout`` lists ``(name, shape, start, stop)``
            per tensor.
        layer_output: with ``model=(module, layer)`` (PyTorch), attribute to the output of ``layer``
            instead of its input: to every floating-point tensor it returns, each shaped like that tensor
            per sample with its batch axis first, outputs last (a list where there are several: an
            ``nn.LSTM`` gives ``[out, h_n, c_n]``, its hidden states over time, then its final states).
            ``data`` and ``X`` stay the model's inputs; the values add up to ``f(x) − expected_value``.
            A model whose output depends on its inputs other than through that output is refused.

    Example:
        >>> explainer = DeepExplainer((model, model.lstm), background, layer_output=True)   # doctest: +SKIP
        >>> out, h_n, c_n = explainer.shap_values(X)       # out: (N, T, hidden, n_outputs)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        data: Inputs,
        *,
        batch_size: int = 2048,
        rules: Mapping[Any, Any] | None = None,
        progress: bool | None = None,
        output: int | str | tuple[int | str, ...] | None = None,
        layer_output: bool = False,
    ) -> None:
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.progress = progress
        #: the engine for the model's framework (:mod:`rnnshap.engines`)
        with _normal_mode():
            if layer_output:
                self.engine: Engine = _layer_output_engine(model, data, rules=rules, output=output)
            else:
                self.engine = engine_for(model, data, rules=rules, output=output)
        self._model_version = self.engine.model_version()
        self._expected_value = _mean_output(self.engine.background_outputs)

    @property
    def expected_value(self) -> float | np.ndarray:
        """The mean model output over the background, shaped like one sample's output: of the model as
        it is now (recomputed where it was changed in place since, as fine-tuning the same object does)."""
        with _normal_mode():
            self._follow_model()
        return self._expected_value

    @expected_value.setter
    def expected_value(self, value: float | np.ndarray) -> None:
        self._expected_value = value

    def _follow_model(self) -> None:
        """Recompute the background's outputs where the model's parameters or buffers changed since."""
        version = self.engine.model_version()
        if version is not None and version != self._model_version:
            self.engine.refresh_background_outputs()
            self._model_version = self.engine.model_version()
            self._expected_value = _mean_output(self.engine.background_outputs)

    @property
    def multi_input(self) -> bool:
        return self.engine.multi_input

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one sample's output (without the batch axis)."""
        return self.engine.output_shape

    @property
    def token_inputs(self) -> list[int]:
        """Integer inputs attributed per token at the embedding they feed."""
        return self.engine.token_inputs

    @property
    def number_inputs(self) -> list[int]:
        """Integer inputs used as numbers (cast to floating point inside the model), attributed as numbers."""
        return self.engine.number_inputs

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.output_shape)) if self.output_shape else 1

    # -- public API -------------------------------------------------------------------------------
    def shap_values(
        self,
        X: Inputs,
        ranked_outputs: int | None = None,
        output_rank_order: str = "max",
        check_additivity: bool | float = True,
        *,
        outputs: int | Sequence[int | tuple[int, ...]] | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> Any:
        """SHAP values of ``X``, shaped like shap's DeepExplainer output.

        Returns, per model input, an array of shape ``(*X.shape, *output_shape)`` (the outputs on
        the last axes; no output axis for a model with a 1-D output), a list of such arrays for a
        multi-input model, and ``(values, ranks)`` with ``ranked_outputs=k``, where the last axis
        then indexes each sample's top-k outputs in the order given by ``ranks``.

        ``check_additivity`` may be a float: the relative tolerance to use instead of the dtype's.

        ``outputs`` picks which outputs to explain, as indices into the model's output shape (without
        the batch): ``[(t, k), ...]`` for a sequence output of shape (N, T, K), ``[k, ...]`` for
        (N, K). The last axis of the result then follows that list. By default all are explained.

        ``progress`` overrides the explainer's ``progress`` setting for this call.
        """
        with _normal_mode():
            inputs = self.engine.inputs(X, "X")
            attribution = self._explain(inputs, ranked_outputs, output_rank_order, outputs, check_additivity, batch_size, progress)
        ranked = ranked_outputs is not None or outputs is not None
        values = [self._shape_values(phi, ranked) for phi in attribution.values]
        result: Any = values if self.multi_input else values[0]
        if ranked_outputs is not None:
            return result, self.engine.ranks(attribution.selected)
        return result

    def __call__(
        self,
        X: Inputs,
        *,
        feature_names: Sequence[Any] | None = None,
        time_labels: Sequence[Any] | None = None,
        output_names: Sequence[str] | None = None,
        vocabulary: Sequence[str] | Mapping[int, str] | None = None,
        check_additivity: bool | float = True,
    ) -> Any:
        """A ``shap.Explanation`` of ``X`` (one per input for a multi-input model), with base values.

        Shaped as shap's Explainer API: ``values`` have the input's shape for a model with one
        output per sample (an output of shape (N,) or (N, 1)), and the outputs last otherwise,
        sliceable by ``output_names`` (``ex[..., "cat"]``); ``base_values`` are (N,) or
        (N, *outputs).

        Labels: for an input of shape (N, F), or token ids (N, T), ``feature_names`` (or
        ``time_labels``) name axis 1, as in shap. For a sequence input (N, T, F), ``feature_names``
        name the F features and ``time_labels`` the T steps (default ``f0, f1, ...`` and
        ``t0, t1, ...``). A sequence Explanation keeps these names through shap's idioms:
        ``ex.sum(1)`` is per feature (summed over time, named by the features), ``ex.sum(2)`` per
        step (named by the time labels), both with the base values, ready for ``shap.plots.bar``,
        ``beeswarm``, ``violin``, ``heatmap`` and, for one sample, ``waterfall``
        (:mod:`rnnshap.explanation`). With several inputs, give a list of names per input.

        ``vocabulary`` (a list or a mapping from token id to string) turns the ``data`` of token
        inputs into their strings, so that ``shap.plots.text(ex[i])`` shows sample ``i``'s text.
        """
        try:
            import shap  # noqa: F401

            from . import explanation
        except ImportError as error:
            raise ImportError(
                "explainer(X) returns a shap.Explanation and needs shap: pip install 'rnnshap[shap]'. "
                "explainer.shap_values(X) works without it."
            ) from error
        with _normal_mode():
            inputs = self.engine.inputs(X, "X")
            attribution = self._explain(inputs, None, "max", None, check_additivity, None, None)
        n = self.engine.rows(inputs)
        single = self.n_outputs == 1 and len(self.output_shape) <= 1
        output_shape = () if single else self.output_shape
        output_axes = [explanation.OUTPUT] if len(output_shape) == 1 else [f"{explanation.OUTPUT}{i}" for i in range(len(output_shape))]
        if output_names is not None:
            if not output_shape or len(output_names) != output_shape[-1]:
                raise InputError(f"{len(output_names)} output_names for a model whose outputs have shape {self.output_shape}")
        base = attribution.base_values.reshape(n, *output_shape)
        data = self.engine.to_numpy(inputs)
        features = _per_input(feature_names, len(data)) if self.multi_input else [feature_names]
        times = _per_input(time_labels, len(data)) if self.multi_input else [time_labels]
        explanations = []
        for index, (phi, x, f, t) in enumerate(zip(attribution.values, data, features, times, strict=True)):
            token = index in self.token_inputs
            axes, labels = _input_axes(tuple(x.shape), f, t, token=token)
            if token and vocabulary is not None:
                x = _token_strings(x, vocabulary)
            if output_axes:
                labels[output_axes[-1]] = None if output_names is None else [str(name) for name in output_names]
            values = phi.reshape(*phi.shape[:-1], *output_shape)
            explanations.append(explanation.make(values, base, x, axes + output_axes, labels))
        return explanations if self.multi_input else explanations[0]

    def shapley_values(
        self,
        X: Inputs,
        players: Any = "steps",
        budget: int | None = None,
        *,
        tol: float | None = None,
        outputs: Sequence[int | tuple[int, ...]] | None = None,
        random_state: Any = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        prune: float | None = None,
    ) -> ShapleyEstimate:
        """Shapley values of ``X`` with standard errors, and how far DeepSHAP's are from them.

        The game is the one DeepSHAP approximates: v(S) = mean over the background rows r of
        f(x on the players in S, r elsewhere). Where ``budget`` covers every coalition against every
        background row the values are exact (``exact``, ``stderr`` 0); otherwise antithetic
        permutation walks estimate them, with DeepSHAP's per-reference values as a control variate
        (docs/shapley.md).

        Args:
            players: ``"steps"`` (each time step's feature vector; an (N, T, F) input, or token
                positions of an (N, T) token input), ``"features"`` (one feature at every step),
                ``"cells"`` (every entry), or an integer array of player ids shaped like one sample
                of the input (a list per input; None for an input that is not a player). Context
                inputs (lengths, masks) are never players.
            budget: the most rows per sample run through the model (DeepSHAP's pass counts 3 per
                background row). Default: 16x DeepSHAP's cost, 48 rows per background row.
            tol: stop a sample early once every standard error is at most
                tol x max(1, ``|f(x) - base value|``).
            outputs: which outputs, as for :meth:`shap_values` (default: all).
            random_state: an integer seed (or a numpy Generator): the same seed gives the same
                values, bit for bit, for every ``batch_size`` of at least 256.
            batch_size: the most rows per forward (default: the explainer's ``batch_size``).
            prune: with ``players="steps"``, group the oldest steps into one player while their joint
                contribution (their Shapley value in the two-player game of old and recent steps) is at most
                ``prune`` x max(1, ``|f(x) - base value|``) for every output (TimeSHAP's temporal pruning, on
                the game itself): long sequences then spend the budget on the steps that matter. Each
                sample's grouping is in ``pruned_steps``, the group's value in ``pruned`` (its steps' entries
                in ``values`` are 0); the pruning's rows count in the budget.
        """
        from .shapley.door import shapley_values

        view = self._shapley_view("shapley_values")
        with _normal_mode():
            return shapley_values(
                view, X, players, budget, tol=tol, outputs=outputs, random_state=random_state,
                batch_size=batch_size or self.batch_size, progress=self.progress if progress is None else progress,
                prune=prune,
            )  # fmt: skip

    def shapley_interactions(
        self,
        X: Inputs,
        players: Any = "steps",
        *,
        index: str = "k-SII",
        order: int = 2,
        budget: int | None = None,
        approximator: Any = "auto",
        outputs: Sequence[int | tuple[int, ...]] | None = None,
        random_state: int | None = None,
        batch_size: int | None = None,
        player_names: Sequence[str] | None = None,
    ) -> Any:
        """Shapley interactions between players (time steps, features, cells, groups), through shapiq.

        The game is :meth:`shapley_values`': v(S) = mean over the background rows r of f(x on the
        players in S, r elsewhere); shapiq (``pip install 'rnnshap[interactions]'``) computes the
        interaction index on it, exactly where ``budget`` covers every coalition against every background
        row (2^P·B rows), else with its ``approximator`` (``"auto"``: shapiq's choice for the index; or
        ``"regression"``, ``"permutation"``, ``"montecarlo"``, ``"svarm"``, or a shapiq approximator).

        Args:
            players: as for :meth:`shapley_values` (``"steps"``, ``"features"``, ``"cells"``, a mask).
            index: ``"k-SII"`` (default), ``"STII"``, ``"FSII"`` (efficient: every order's values add up
                to f(x) − v(∅)), ``"SII"``, ``"FBII"``, ``"SV"``, ``"BV"``.
            order: the highest order of interaction (2: pairs).
            budget: the most rows per sample run through the model; a coalition costs one row per
                background row. Default: every coalition for up to 8 players, else 64·P² coalitions.
            outputs: which outputs, as for :meth:`shap_values` (default: all; they share the rows).
            random_state: an integer seed for the approximator (the same seed, the same values).
            player_names: names of the players, for shapiq's plots.

        Returns:
            An :class:`rnnshap.shapley.interactions.InteractionEstimate`: shapiq's ``InteractionValues`` per
            sample and output (``interactions[i][j]``), ``matrix()`` as arrays ``(N, P, P, k)`` with the first
            order on the diagonal, ``base_values``, ``outputs``, ``exact``, ``n_evals``.

        Example:
            >>> result = explainer.shapley_interactions(x, players="steps", index="k-SII")   # doctest: +SKIP
            >>> rnnshap.plots.interactions(result, sample=0, output=0)                     # doctest: +SKIP
        """
        from .shapley.interactions import shapley_interactions

        view = self._shapley_view("shapley_interactions")
        with _normal_mode():
            return shapley_interactions(
                view, X, players, index=index, order=order, budget=budget, approximator=approximator, outputs=outputs,
                random_state=random_state, batch_size=batch_size or self.batch_size, player_names=player_names,
            )  # fmt: skip

    def _shapley_view(self, method: str) -> Any:
        """What the Shapley mode needs of the model (:class:`rnnshap.shapley.door.ModelView`), DeepSHAP's
        per-pair values included."""
        from .shapley.door import ModelView

        engine = self.engine
        self._follow_model()
        if not engine.attributes_model_inputs:
            raise InputError(
                f"{method} plays the model's own inputs, and this explainer attributes to a layer's "
                f"{getattr(engine, 'side', 'input')} (shap's (model, layer) form). Explain the part of the model after "
                f"the cut as a model of its own, with the layer's {getattr(engine, 'side', 'input')}s as data, or use "
                f"DeepExplainer(model, data).{method}."
            )
        background = engine.to_numpy(engine.background)
        followed = set(engine.token_inputs) | set(engine.number_inputs)
        attributed = [bool(np.issubdtype(b.dtype, np.floating)) or t in followed for t, b in enumerate(background)]

        def convert(X: Any) -> tuple[list[np.ndarray], Any]:
            inputs = engine.inputs(X, "X")
            return engine.to_numpy(inputs), inputs

        def forward(rows: list[np.ndarray]) -> np.ndarray:
            return engine.predict(engine.inputs(rows if self.multi_input else rows[0], "coalition rows"))

        return ModelView(
            forward=forward,
            convert=convert,
            background=background,
            background_outputs=engine.background_outputs.reshape(engine.references, -1),
            output_shape=self.output_shape,
            attributed=attributed,
            tokens=[t in engine.token_inputs for t in range(len(background))],
            multi_input=self.multi_input,
            deepshap=self._pair_values,
            select=lambda chosen: select_outputs(self.output_shape, chosen),
        )

    def _pair_values(self, inputs: list[Any], columns: np.ndarray, players: Any, batch_size: int) -> np.ndarray:
        """DeepSHAP's values of every (sample, reference) pair summed to ``players``: (n, B, P, k)."""
        n, k = columns.shape
        B = self.engine.references
        values = np.zeros((n, B, players.count, k))
        # one sample's pairs per block (its references in parts if batch_size holds fewer): the values do
        # not then depend on batch_size, nor on the other samples of the call
        pairs = max(1, batch_size // self.engine.rows_per_pair(k))
        for block in _blocks(n, B, min(pairs, B)):
            result = self.engine.attribute(inputs, block, columns[block.s0 : block.s1], per_pair=True)
            per_entry = [part.reshape(k * block.pairs, *part.shape[3:]) for part in result.sums]
            summed = players.per_player(per_entry).reshape(k, block.samples, block.references, players.count)
            values[block.s0 : block.s1, block.r0 : block.r1] = summed.transpose(1, 2, 3, 0)
        return values

    def summarize(
        self,
        data: Any,
        batch_size: int | None = None,
        *,
        outputs: Sequence[int | tuple[int, ...]] | None = None,
        check_additivity: bool | float = True,
        sample_size: int = 1000,
        seed: int | None = None,
        parquet: str | os.PathLike[str] | None = None,
        feature_names: Any = None,
        output_names: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> Summary:
        """Explain a dataset batch by batch into a :class:`rnnshap.Summary`, never holding all attributions.

        Args:
            data: the samples to explain: an array or tensor (a list per input for a multi-input
                model), cut into batches of ``batch_size`` samples; or any iterable of batches (a
                generator, a ``DataLoader``), each one what :meth:`shap_values` takes. Batches are
                pulled one at a time.
            batch_size: samples per batch when ``data`` is an array (default: enough samples for
                about one block of ``self.batch_size`` pairs, at least 1).
            outputs: which outputs to summarize, as for :meth:`shap_values` (default: all).
            sample_size: how many per-sample attributions the summary keeps, a uniform sample.
            seed: seeds the sample's random keys.
            parquet: a directory to write every sample's attributions and base values to, one
                Parquet file per batch (needs pyarrow); read them back with
                :func:`rnnshap.summary.read_shards`.
        """
        summary: Summary | None = None
        shards = None
        if parquet is not None:
            floating = self.engine.dtype if self.engine.dtype in ("float32", "float64") else "float32"
            shards = ParquetShards(parquet, self.multi_input, floating)
        start = 0
        for batch in self._batches(data, batch_size):
            with _normal_mode():
                inputs = self.engine.inputs(batch, "a batch of data")
                n = self.engine.rows(inputs)
                attribution = self._explain(inputs, None, "max", outputs, check_additivity, None, progress)
            values, base = self._per_sample(attribution, outputs is not None)
            data_arrays = self.engine.to_numpy(inputs)
            rows = np.arange(start, start + n, dtype=np.int64)
            if summary is None:
                summary = Summary(
                    [v.shape[1:] for v in values], [d.shape[1:] for d in data_arrays], tuple(base.shape[1:]),
                    multi_input=self.multi_input, sample_size=sample_size, seed=seed,
                    feature_names=feature_names, output_names=output_names,
                )  # fmt: skip
            summary.update(values, base, data_arrays, rows)
            if shards is not None:
                shards.write(values if self.multi_input else values[:1], base, rows)
            start += n
        if summary is None:
            raise InputError("summarize got no samples: data is empty")
        return summary

    def _batches(self, data: Any, batch_size: int | None) -> Iterator[Any]:
        """Batches of ``data`` for :meth:`summarize` (see there), pulled lazily."""
        if batch_size is not None and int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if _is_array(data) or (self.multi_input and isinstance(data, (list, tuple)) and data and all(_is_array(d) for d in data)):
            inputs = self.engine.inputs(data, "data")
            n = self.engine.rows(inputs)
            step = int(batch_size) if batch_size else max(1, self.batch_size // self.engine.references)
            for begin in range(0, n, step):
                part = self.engine.take(inputs, begin, begin + step)
                yield part if self.multi_input else part[0]
            return
        if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
            raise InputError(f"summarize takes an array, a list per input, or an iterable of batches, not {type(data).__name__}")
        for batch in data:
            if not self.multi_input and isinstance(batch, (list, tuple)):
                if len(batch) != 1:
                    raise InputError(
                        f"a batch of data is a {type(batch).__name__} of {len(batch)} items but the model takes one input. "
                        "For a DataLoader that yields (inputs, labels), pass (x for x, _ in loader)."
                    )
                batch = batch[0]
            yield batch

    # -- the steps every engine shares ----------------------------------------------------------------
    def _explain(
        self,
        inputs: list[Any],
        ranked_outputs: int | None,
        output_rank_order: str,
        outputs: int | Sequence[int | tuple[int, ...]] | None,
        check_additivity: bool | float,
        batch_size: int | None,
        progress: bool | None,
    ) -> Attribution:
        """Select the outputs, attribute block by block, check additivity."""
        check_additivity = _additivity_option(check_additivity)
        self._follow_model()
        n = self.engine.rows(inputs)
        selected = self._selected_outputs(n, ranked_outputs, output_rank_order, outputs, lambda: self.engine.predict(inputs))
        show = self.progress if progress is None else progress
        attribution = self._attribute(inputs, selected, batch_size or self.batch_size, show)
        if check_additivity is not False:
            rtol = None if check_additivity is True else float(check_additivity)
            self._check_additivity(attribution, rtol)
        return attribution

    def _attribute(self, inputs: list[Any], selected: np.ndarray, batch_size: int, progress: bool | None) -> Attribution:
        """Mean over the background of multiplier × (x − r), for every (sample, selected output)."""
        n, k = selected.shape
        n_refs = self.engine.references
        sums = [np.zeros((k, n, *x.shape[1:])) for x in inputs]
        model_outputs = np.zeros((n, self.n_outputs))
        reference_outputs = np.zeros((n, self.n_outputs))
        pairs = max(1, batch_size // self.engine.rows_per_pair(k))
        for block in progress_bar(_blocks(n, n_refs, pairs), progress):
            result = self.engine.attribute(inputs, block, selected[block.s0 : block.s1])
            for total, part in zip(sums, result.sums, strict=True):
                total[:, block.s0 : block.s1] += part
            model_outputs[block.s0 : block.s1] = result.outputs
            reference_outputs[block.s0 : block.s1] += result.reference_outputs
        values = [np.moveaxis(total / n_refs, 0, -1) for total in sums]
        return Attribution(values, selected, model_outputs, reference_outputs / n_refs)

    def _selected_outputs(
        self,
        n: int,
        ranked_outputs: int | None,
        output_rank_order: str,
        outputs: int | Sequence[int | tuple[int, ...]] | None,
        scores: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """(n, k) flat indices of the outputs to explain for each sample: the chosen ``outputs``,
        each sample's top ``ranked_outputs`` by ``scores()`` (the model's outputs), or all."""
        if isinstance(outputs, (numbers.Integral, np.integer)) and not isinstance(outputs, bool):
            outputs = [int(outputs)]  # one output, by its index
        assert not isinstance(outputs, (int, np.integer))
        if ranked_outputs is not None and (isinstance(ranked_outputs, bool) or not isinstance(ranked_outputs, (numbers.Integral, np.integer))):
            raise InputError(f"ranked_outputs must be a positive integer (how many top outputs to explain per sample), got {ranked_outputs!r}")
        if outputs is not None and ranked_outputs is not None:
            raise InputError("give either ranked_outputs or outputs, not both")
        if outputs is not None:
            chosen = self._select(outputs)
            return np.broadcast_to(chosen, (n, chosen.shape[1])).copy()
        if ranked_outputs is not None:
            if not 1 <= ranked_outputs:
                raise InputError(f"ranked_outputs must be a positive integer, got {ranked_outputs}")
            order = {"max": lambda s: -s, "min": lambda s: s, "max_abs": lambda s: -np.abs(s)}
            if output_rank_order not in order:
                raise InputError(f"output_rank_order must be 'max', 'min' or 'max_abs', got {output_rank_order!r}")
            return np.argsort(order[output_rank_order](scores()), axis=1, kind="stable")[:, :ranked_outputs].astype(np.int64)
        return np.broadcast_to(np.arange(self.n_outputs, dtype=np.int64), (n, self.n_outputs)).copy()

    def _select(self, outputs: Sequence[int | tuple[int, ...]]) -> np.ndarray:
        """Flat output indices of ``outputs`` (indices into ``output_shape``), shape (1, k)."""
        return select_outputs(self.output_shape, outputs)[None, :]

    def _check_additivity(self, attribution: Attribution, rtol: float | None) -> None:
        """Raise :class:`AdditivityError` where Σφ misses f(x) − E[f] by more than the tolerance."""
        selected = attribution.selected
        n, k = selected.shape
        rows = np.arange(n)[:, None]
        expected, fx = attribution.base_values[rows, selected], attribution.outputs[rows, selected]
        totals = sum(phi.reshape(n, -1, k).sum(1) for phi in attribution.values)
        magnitude = sum(np.abs(phi.reshape(n, -1, k)).sum(1) for phi in attribution.values)
        error = np.abs(totals - (fx - expected))
        scale = np.maximum(np.maximum(np.abs(fx), np.abs(expected)), magnitude)
        dtype = self.engine.dtype
        rtol = rtol if rtol is not None else RTOL.get(dtype, 1e-4)
        failing = ~(error <= rtol * scale)  # NaN fails too
        if not failing.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            ranking = np.nan_to_num((error - rtol * scale) / np.maximum(scale, np.finfo(np.float64).tiny), nan=np.inf)
        sample, column = np.unravel_index(int(np.argmax(ranking)), error.shape)
        relative = error[sample, column] / scale[sample, column]
        if not np.isfinite(totals[sample, column]):
            causes = (
                "The attributions are not finite: an operation produced NaN or inf on the way (an -inf mask "
                "before exp or softmax, a log or division at 0, an overflow in a 16-bit dtype)."
            )
        elif dtype in ("float32", "float16", "bfloat16") and relative < 100 * rtol:
            causes = (
                f"The error is small ({relative:.2g} of the scale): {dtype} rounding of a long or ill-conditioned "
                "computation can reach it. Explain a float64 copy of the model (model.double()) to confirm, or "
                "pass a looser check_additivity tolerance."
            )
        else:
            causes = (
                "Likely causes: a custom rule that does not add up, an operation registered as linear that is "
                "not, work done outside the framework (numpy, .item()), or a forward() whose result depends on "
                "something other than its inputs."
            )
        note = getattr(self.engine, "precision_note", None)
        if note:
            causes = f"{note} {causes}"
        raise AdditivityError(
            f"The attributions do not add up: for sample {sample}, output {int(selected[sample, column])}, "
            f"sum(phi) = {totals[sample, column]:.6g} but f(x) - E[f] = {fx[sample, column] - expected[sample, column]:.6g} "
            f"(error {error[sample, column]:.3g}, {relative:.3g} of the output's scale {scale[sample, column]:.3g}; "
            f"tolerance {rtol:.1g} for {dtype}); {int(failing.sum())} of {n * k} (sample, output) pairs fail. "
            f"{causes} Pass check_additivity=False to get the values anyway."
        )

    def _per_sample(self, attribution: Attribution, chosen: bool) -> tuple[list[np.ndarray], np.ndarray]:
        """Per input, the values in shap's layout, and the base values: ``(n, *output_shape)``, or
        ``(n, k)`` for chosen outputs."""
        values = [self._shape_values(phi, chosen) for phi in attribution.values]
        n = attribution.base_values.shape[0]
        if chosen:
            return values, attribution.base_values[np.arange(n)[:, None], attribution.selected]
        return values, attribution.base_values.reshape(n, *self.output_shape)

    def _shape_values(self, phi: np.ndarray, ranked: bool) -> np.ndarray:
        """(n, *input_shape, k) → the output layout of shap for this model's output shape."""
        if ranked:
            return phi
        if not self.output_shape:
            return phi[..., 0]
        return phi.reshape(*phi.shape[:-1], *self.output_shape)


def _normal_mode() -> Any:
    """Outside ``torch.inference_mode()`` where a caller is inside it: the engines take multipliers
    from a backward pass, which tensors made in inference mode cannot enter. The model runs as under
    ``torch.no_grad()`` all the same (no graph is kept, nothing is trained)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.is_inference_mode_enabled():
        return torch.inference_mode(False)
    return contextlib.nullcontext()


def _additivity_option(check: Any) -> bool | float:
    """``check_additivity``: True, False, or a positive relative tolerance."""
    if isinstance(check, (bool, np.bool_)):
        return bool(check)
    if isinstance(check, numbers.Real) and math.isfinite(float(check)) and float(check) > 0:
        return float(check)
    raise InputError(f"check_additivity must be True, False or a positive relative tolerance (such as 1e-6), got {check!r}")


def _layer_output_engine(model: Any, data: Inputs, *, rules: Mapping[Any, Any] | None, output: Any) -> Engine:
    """The engine of ``DeepExplainer((module, layer), data, layer_output=True)``: attributions to the
    output of ``layer`` (:class:`rnnshap.engines.pytorch.forms.InterimEngine` with ``side="output"``)."""
    if not (isinstance(model, tuple) and len(model) == 2 and all(_is_torch_module(part) for part in model)):
        raise InputError(
            "layer_output=True attributes to the output of a layer: give model=(module, layer), a PyTorch model and one "
            f"of its submodules, e.g. DeepExplainer((model, model.lstm), data, layer_output=True); got {type(model).__name__}"
        )
    from .engines.pytorch.forms import InterimEngine, in_eval_mode

    whole, layer = model
    return in_eval_mode(whole, lambda m: InterimEngine(m, layer, data, rules=rules, output=output, side="output"))  # type: ignore[no-any-return]


def _is_torch_module(value: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(value, torch.nn.Module)


def _mean_output(outputs: np.ndarray) -> float | np.ndarray:
    """The mean of the background's outputs: a float for a scalar output, else shaped like one."""
    mean = outputs.mean(0)
    return float(mean) if mean.ndim == 0 else mean


def _is_array(value: Any) -> bool:
    """A numpy array or a framework tensor (anything with a shape and a dtype), not a list of them."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (list, tuple))


def _blocks(samples: int, references: int, pairs: int) -> list[Block]:
    """The sample × reference grid cut into blocks of at most ``pairs`` pairs: whole samples when
    ``pairs`` holds at least one, otherwise one sample's references a part at a time."""
    if pairs >= references:
        per_block = pairs // references
        return [Block(s, min(s + per_block, samples), 0, references) for s in range(0, samples, per_block)]
    return [Block(s, s + 1, r, min(r + pairs, references)) for s in range(samples) for r in range(0, references, pairs)]


def _per_input(labels: Sequence[Any] | None, count: int) -> list[Any]:
    """Labels given for a multi-input model: one list per input (or None for all)."""
    if labels is None:
        return [None] * count
    if len(labels) != count or any(isinstance(item, str) or not hasattr(item, "__len__") for item in labels if item is not None):
        raise InputError(f"the model has {count} inputs: give one list of labels per input (None for an input without)")
    return list(labels)


def _token_strings(ids: np.ndarray, vocabulary: Sequence[str] | Mapping[int, str]) -> np.ndarray:
    """Token ids as their strings (an object array of the same shape)."""
    try:
        return np.vectorize(lambda i: str(vocabulary[int(i)]), otypes=[object])(ids)
    except (IndexError, KeyError) as error:
        raise InputError(f"the vocabulary has no string for token id {error.args[0] if error.args else '?'}") from error


def _input_axes(shape: tuple[int, ...], feature_names: Sequence[Any] | None, time_labels: Sequence[Any] | None, token: bool) -> tuple[list[str], dict[str, Any]]:
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
