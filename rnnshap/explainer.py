"""``rnnshap.DeepExplainer``: the one front door, with the call shapes of shap's DeepExplainer.

Everything a user sees is done once for every engine, by the front door's parts: output selection
(:mod:`rnnshap.engines.outputs`), batching into blocks of (sample, reference) pairs and the shapes of
the results (:mod:`rnnshap.attribution`), the additivity check (:mod:`rnnshap.additivity`),
Explanations (:mod:`rnnshap.explanation`), streaming summaries (:mod:`rnnshap.summary`) and the Shapley
mode (:mod:`rnnshap.shapley.door`). An engine (:mod:`rnnshap.engines`) only turns blocks of pairs into
sums of multiplier × (x − r). This class holds the model's state and the public methods.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping, Sequence, Union

import numpy as np

from . import additivity
from .attribution import AUTO_ROWS, Attribution, attribute
from .engines import Engine, engine_for
from .engines.base import check_mode, named_inputs_advice, normal_mode
from .engines.outputs import selected_outputs
from .errors import InputError
from .shapley.door import ShapleyEstimate
from .summary import Summary

Inputs = Union[Any, Sequence[Any]]


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
            or a list/tuple of them for a model with several inputs, or a dict of them for a model called
            with a dict (a Keras model's named inputs; ``X`` is then a dict with the same keys).
        batch_size: the largest number of (sample, reference) pairs run through the model at once.
            Pairs run in blocks of whole samples (all references) when ``batch_size`` is at least
            the background size, which lets recurrent layers run on the distinct rows of each side.
            Memory grows with it; results do not depend on it. ``"auto"``: on a CUDA device, blocks sized
            from the device's available memory, each measured, and a block that runs out of memory run
            again at half its pairs (:class:`rnnshap.attribution.MemorySizedBlocks`); elsewhere 2048.
        rules: rules for this explainer only, ``{torch_function_or_module_class: rule}``, on top of
            the ones registered with :func:`rnnshap.register_rule` (PyTorch models).
        progress: show a tqdm progress bar over the blocks of pairs. ``None`` (the default): only
            when stderr is a terminal and there is more than one block.
        output: for a model that returns several tensors (a list, a tuple, a dict or a dataclass), the one
            to explain, by index or name (a dict key, a dataclass field, a Keras output name), or by a path into a nested
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

        compile: how a PyTorch model's pass runs (docs/performance.md, "The traced pass"). ``None`` (the default):
            ``"auto"`` where the model is on a CUDA device, and on the CPU for a model that calls recurrent cells
            (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``) in a Python loop, 8 calls a pass or more; else
            ``False``. ``False``: intercepted, operation by operation, at every call. ``"trace"``: traced at the
            second call of the same input shapes into one program of torch operations and run as that program from
            then on (on a CUDA device replayed as one CUDA graph), the same values bit for bit. ``"auto"``: the same
            program, traced once the calls of the same shapes have taken about what tracing takes (some 50 calls) and
            kept only where it runs faster than the intercepted pass. ``True``: that program compiled by
            ``torch.compile`` (inductor: the rules' elementwise work fused; values within a few float32 ulps;
            compiling takes seconds to minutes, once per shapes, and on the CPU needs a C++ compiler, without which
            the traced program runs). A pass that cannot be traced (an operation whose output's shape depends on the
            values, forward hooks) runs intercepted; ``explainer.pass_path`` says how the last call ran and why.

    Example:
        >>> explainer = DeepExplainer((model, model.lstm), background, layer_output=True)   # doctest: +SKIP
        >>> out, h_n, c_n = explainer.shap_values(X)       # out: (N, T, hidden, n_outputs)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        data: Inputs,
        *,
        batch_size: int | Literal["auto"] = 2048,
        rules: Mapping[Any, Any] | None = None,
        progress: bool | None = None,
        output: int | str | tuple[int | str, ...] | None = None,
        layer_output: bool = False,
        compile: bool | str | None = None,
    ) -> None:
        check_batch_size(batch_size)
        check_mode(compile)
        #: what the explainer was built from: what it pickles as (see :meth:`__getstate__`)
        self._arguments = dict(
            model=model, data=data, batch_size=batch_size, rules=rules, progress=progress, output=output,
            layer_output=layer_output, compile=compile,
        )  # fmt: skip
        self.model = model
        #: pairs per block, or "auto" (:func:`rnnshap.attribution.attribute`)
        self.batch_size: int | Literal["auto"] = batch_size if batch_size == "auto" else int(batch_size)
        self.progress = progress
        #: the engine for the model's framework (:mod:`rnnshap.engines`)
        with normal_mode():
            from .engines.keras.datasets import dataset_rows

            data = dataset_rows(data, "background")  # (a tf.data.Dataset: its rows, as Keras' predict reads them)
            try:
                self.engine: Engine = engine_for(model, data, rules=rules, output=output, layer_output=layer_output)
            except InputError as error:
                advice = _dataframe_advice(data, error)
                if advice is None:
                    raise
                raise InputError(advice) from error
            self.engine.compile_passes(compile)
        self._model_version = self.engine.model_version()
        self._expected_value = _mean_output(self.engine.background_outputs)

    def __getstate__(self) -> dict[str, Any]:
        """An explainer pickles (and copies) as what it was built from: the model (by its own pickling), the
        background and the settings; unpickled, it is built again from them (its kept passes and traced programs,
        which hold what pickle cannot, are made again as they were at first)."""
        return {"arguments": self._arguments}

    def __setstate__(self, state: dict[str, Any]) -> None:
        arguments = dict(state["arguments"])
        self.__init__(arguments.pop("model"), arguments.pop("data"), **arguments)  # type: ignore[misc]

    @property
    def pass_path(self) -> str:
        """How the last call's pass ran, in words: intercepted, traced or compiled (``compile=``), and why."""
        return self.engine.pass_path

    @property
    def expected_value(self) -> float | np.ndarray:
        """The mean model output over the background, shaped like one sample's output: of the model as
        it is now (its outputs on the background computed again at each read, and whatever the explainer keeps
        for the model recomputed where they moved: fine-tuning the same object, a write through ``.data``, Python
        state its forward reads)."""
        with normal_mode():
            self._follow_model()
            if self.engine.background_moved():
                self._model_version = self.engine.model_version()
                self._expected_value = _mean_output(self.engine.background_outputs)
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

    def _named(self, X: Inputs) -> None:
        """A model whose background was a dict of named inputs takes X as a dict too, never as a list."""
        names = self.engine.input_names
        if names is not None and isinstance(X, (list, tuple)):
            raise InputError(named_inputs_advice(names, "X"))

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
        self._named(X)
        with normal_mode():
            inputs = self.engine.inputs(X, "X")
            attribution = self.attribution(
                inputs, ranked_outputs=ranked_outputs, output_rank_order=output_rank_order, outputs=outputs,
                check_additivity=check_additivity, batch_size=batch_size, progress=progress,
            )  # fmt: skip
        values = attribution.shaped(self.output_shape, ranked_outputs is not None or outputs is not None)
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
        self._named(X)
        with normal_mode():
            inputs = self.engine.inputs(X, "X")
            attribution = self.attribution(inputs, check_additivity=check_additivity)
        return explanation.explanations(
            attribution, self.engine.to_numpy(inputs), self.output_shape, self.multi_input, self.token_inputs,
            feature_names=feature_names, time_labels=time_labels, output_names=output_names, vocabulary=vocabulary,
        )  # fmt: skip

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
        time_axis: Any = None,
        windows: int | None = None,
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
            time_axis: the axis of X that is time (batch axis 0; a list per input), where the layer that reads
                an (N, A, B) input does not say: 1 for (N, T, F), 2 for (N, channels, T) (aeon and sktime panels).
                A recurrent layer or a channels-last convolution says (T, F), torch's ``Conv1d`` (C, T); players
                along time or features on an input no layer says are refused, never guessed.
            windows: with ``players="steps"``, one player per ``windows`` consecutive steps (the last window
                shorter): patches without writing a mask.
        """
        from .shapley.door import engine_view, shapley_values
        from .shapley.layout import layout_reader

        self._named(X)
        self._follow_model()
        layout = layout_reader(self.model, self.engine.to_numpy(self.engine.background))
        view = engine_view(self.engine, "shapley_values", layout)
        with normal_mode(), self.engine.call():
            return shapley_values(
                view, X, players, budget, tol=tol, outputs=outputs, random_state=random_state,
                batch_size=batch_size or self.fixed_batch_size, progress=self.progress if progress is None else progress,
                prune=prune, time_axis=time_axis, windows=windows,
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
        time_axis: Any = None,
        windows: int | None = None,
        progress: bool | None = None,
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
                background row. Default: every coalition where that is at most 4 per interaction estimated
                or 256 (up to 8 players for pairs), else 4 coalitions per interaction (840 for 20 steps and
                pairs: 84,000 rows per sample against 100 background rows); a default run of over a million
                rows says its count in a warning before it starts. shapiq's regression estimators settle
                further at about 64·P² coalitions.
            progress: a progress bar over the rows (None: only on a terminal).
            outputs: which outputs, as for :meth:`shap_values` (default: all; they share the rows).
            random_state: an integer seed for the approximator (the same seed, the same values).
            player_names: names of the players, for shapiq's plots.
            time_axis, windows: as for :meth:`shapley_values`.

        Returns:
            An :class:`rnnshap.shapley.interactions.InteractionEstimate`: shapiq's ``InteractionValues`` per
            sample and output (``interactions[i][j]``), ``matrix()`` as arrays ``(N, P, P, k)`` with the first
            order on the diagonal, ``base_values``, ``outputs``, ``exact``, ``n_evals``.

        Example:
            >>> result = explainer.shapley_interactions(x, players="steps", index="k-SII")   # doctest: +SKIP
            >>> rnnshap.plots.interactions(result, sample=0, output=0)                     # doctest: +SKIP
        """
        from .shapley.door import engine_view
        from .shapley.interactions import shapley_interactions
        from .shapley.layout import layout_reader

        self._named(X)
        self._follow_model()
        layout = layout_reader(self.model, self.engine.to_numpy(self.engine.background))
        view = engine_view(self.engine, "shapley_interactions", layout)
        with normal_mode(), self.engine.call():
            return shapley_interactions(
                view, X, players, index=index, order=order, budget=budget, approximator=approximator, outputs=outputs,
                random_state=random_state, batch_size=batch_size or self.fixed_batch_size, player_names=player_names,
                time_axis=time_axis, windows=windows, progress=self.progress if progress is None else progress,
            )  # fmt: skip

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
        from .summary import summarize

        return summarize(
            self, data, batch_size, outputs=outputs, check_additivity=check_additivity, sample_size=sample_size, seed=seed,
            parquet=parquet, feature_names=feature_names, output_names=output_names, progress=progress,
        )  # fmt: skip

    def first_attribution(self, X: Inputs, *, check_additivity: bool | float = True, progress: bool | None = None) -> Attribution:
        """Package-internal: :meth:`attribution` of ``X`` (taken as :meth:`shap_values` takes it) with ``just_built``,
        for a door that built this explainer just before and explains with it at once (the forecasting and sktime
        doors): its setup's reference pass is taken without the plain forward that vets it at a user's first call."""
        with normal_mode():
            inputs = self.engine.inputs(X, "X")
            return self.attribution(inputs, check_additivity=check_additivity, progress=progress, just_built=True)

    @property
    def fixed_batch_size(self) -> int:
        """``batch_size`` as a number of rows: the blocks of ``batch_size="auto"`` start at
        :data:`rnnshap.attribution.AUTO_ROWS`, which the Shapley mode's forwards and :meth:`summarize`'s batches take."""
        return AUTO_ROWS if self.batch_size == "auto" else self.batch_size

    # -- the steps every engine shares -------------------------------------------------------------
    def attribution(
        self,
        inputs: list[Any],
        *,
        ranked_outputs: int | None = None,
        output_rank_order: str = "max",
        outputs: int | Sequence[int | tuple[int, ...]] | None = None,
        check_additivity: bool | float = True,
        batch_size: int | None = None,
        progress: bool | None = None,
        multipliers: bool = False,
        just_built: bool = False,
    ) -> Attribution:
        """Package-internal: the attributions of ``inputs`` before shaping, for the doors built on this one
        (:meth:`shap_values`, ``explainer(X)``, :meth:`summarize`, :mod:`rnnshap.captum`, :mod:`rnnshap.ray`).

        Selects the outputs, attributes block by block, checks additivity. ``inputs`` are the engine's
        arrays (``explainer.engine.inputs(X, what)``); the other arguments are :meth:`shap_values`'.
        ``multipliers``: the mean multipliers instead of multiplier × (x − r) (Captum's
        ``multiply_by_inputs=False``; PyTorch models). ``just_built``: the caller built this explainer just before,
        with nothing run in between (a door's one-shot call), so the work its setup kept is taken unvetted
        (:meth:`rnnshap.engines.base.Engine.call`). :meth:`Attribution.per_sample` shapes the result.
        """
        check = additivity.additivity_option(check_additivity)
        self._follow_model()
        engine = self.engine
        n = engine.rows(inputs)
        selected = selected_outputs(
            self.output_shape, n, ranked_outputs, output_rank_order, outputs, lambda: engine.predict(inputs)
        )
        show = self.progress if progress is None else progress
        if multipliers:
            if not engine.gives_multipliers:
                raise InputError(f"the multipliers themselves are given for PyTorch models, not for {engine.name}")
            check = False  # multipliers do not add up to f(x) - E[f]; only multiplier x (x - r) does
        with engine.call(just_built):
            if batch_size is not None:
                check_batch_size(batch_size)
            result = attribute(engine, inputs, selected, batch_size or self.batch_size, show, multipliers=bool(multipliers))
        if check is not False:
            moved = lambda: engine.outputs_moved(inputs)  # noqa: E731 (run only where a sum in float32 misses)
            additivity.check_additivity(result, engine, None if check is True else float(check), moved)
        return result


def check_batch_size(batch_size: Any) -> None:
    """A clear error for a ``batch_size`` that is neither a positive number of pairs nor ``"auto"``."""
    if batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f'batch_size must be a number of pairs of at least 1, or "auto"; got {batch_size!r}')


def _dataframe_advice(data: Any, error: InputError) -> str | None:
    """Where a pandas DataFrame background does not fit the model: what a DataFrame is taken as, and how to
    give sequences (the one-sequence hint, ``x[None]``, would mislead: a DataFrame is many rows)."""
    if type(data).__name__ != "DataFrame" or not type(data).__module__.startswith("pandas"):
        return None
    rows, columns = data.shape
    return (
        f"The background is a pandas DataFrame: rnnshap takes it as its values, one 2-D array of {rows} rows (the batch) by "
        f"{columns} columns (the features), and the model failed on that: {str(error).split('. A 2-D input')[0]}. For a "
        "model of sequences (batch, time, features), give windows: a 3-D array (N, T, F) cut from the frame "
        "(np.lib.stride_tricks.sliding_window_view(df.to_numpy(), T, axis=0).transpose(0, 2, 1) gives every window of "
        "T rows), or, where the whole frame is one sequence, df.to_numpy()[None] as one sample. The columns are the "
        "features, in the frame's order (feature_names=list(df.columns) names them in explanations)."
    )


def _mean_output(outputs: np.ndarray) -> float | np.ndarray:
    """The mean of the background's outputs: a float for a scalar output, else shaped like one."""
    mean = outputs.mean(0)
    return float(mean) if mean.ndim == 0 else mean
