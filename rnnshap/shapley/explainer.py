"""``rnnshap.ShapleyExplainer``: Shapley values with standard errors from the model's forward alone."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..engines.outputs import OutputChoice, select_outputs
from ..engines.registry import forward_model
from ..errors import InputError
from .door import ModelView, ShapleyEstimate, shapley_values
from .layout import layout_reader
from .players import Players


class ShapleyExplainer:
    """Shapley values of the game DeepSHAP approximates, for any model, from its forward only.

    v(S) = mean over the background rows r of f(x on the players in S, r elsewhere). The values are
    exact where the budget covers every coalition, and otherwise estimated by antithetic permutation
    walks with standard errors (:meth:`shapley_values`, docs/shapley.md). Nothing of the model is
    inspected, so it explains every model, including those :class:`rnnshap.DeepExplainer` refuses;
    on a model DeepExplainer takes, its ``shapley_values`` is better: DeepSHAP's values then serve as
    a control variate and are reported beside the estimate.

    Args:
        model: an ``nn.Module`` (run without gradients; a module in training mode is run in eval
            mode and left as it was), a Keras 3 model, or a function of numpy arrays
            ``f(*inputs) -> array`` whose first dimension is the batch.
        data: the background, one array or tensor (a list per input for a model with several; a
            ``tf.data.Dataset`` of batches, as Keras' ``predict`` reads it). NaN in the data is the model's
            to take; NaN or infinite values in its output are refused, naming the row.
        batch_size: the most rows run through the model at once (the background's too). A model whose rows
            interact (one quantization scale per batch) is refused; ``batch_size=1`` runs every row alone
            and explains the model as it computes one row on its own.
        progress: a progress bar over long runs (None: only on a terminal).
        output: for a model with several output tensors, the one to explain (index or name: a dict key, a
            dataclass field).
        context: indices of inputs that are context (lengths, masks): never players, always the
            explained sample's values. Boolean inputs, and integer inputs with one value per sample
            (lengths, indices), are always context.
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        *,
        batch_size: int = 2048,
        progress: bool | None = None,
        output: OutputChoice = None,
        context: Sequence[int] = (),
    ) -> None:
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        self.progress = progress
        self.forward = forward_model(model, data, output, self.batch_size)
        background = self.forward.background
        for index in context:
            if not 0 <= int(index) < len(background):
                raise InputError(f"context={list(context)}: the model has {len(background)} input(s)")
        # bool inputs are masks, and an integer per sample (a length, an index) is context by default
        defaults = {
            t for t, b in enumerate(background) if b.dtype == np.bool_ or (np.issubdtype(b.dtype, np.integer) and b.ndim == 1)
        }
        self.context = sorted({int(i) for i in context} | defaults)
        mean = self.forward.background_outputs.mean(0).reshape(self.forward.output_shape)
        #: the mean model output over the background, shaped like one sample's output
        self.expected_value: float | np.ndarray = float(mean) if mean.ndim == 0 else mean
        self._layout = layout_reader(model, background, self.forward)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.forward.output_shape

    def player_ids(self, players: Any = "steps", *, time_axis: Any = None, windows: int | None = None) -> Players:
        """The players ``shapley_values`` plays for these arguments: per input, the player id of every entry of
        one sample (None for a context input), the number of players and their kind."""
        return self._view().plan(players, time_axis, windows)

    def _view(self) -> ModelView:
        forward = self.forward
        attributed = [t not in self.context for t in range(len(forward.background))]
        tokens = [attributed[t] and np.issubdtype(b.dtype, np.integer) and b.ndim == 2 for t, b in enumerate(forward.background)]

        def convert(X: Any) -> tuple[list[np.ndarray], Any]:
            arrays = forward.arrays(X, "X")
            # NaN in X is the model's to take (a model may read it as missing); NaN in its output is refused
            forward.refuse_non_finite(forward.rows(arrays), "sample")
            return arrays, arrays

        return ModelView(
            forward=forward,
            convert=convert,
            background=forward.background,
            background_outputs=forward.background_outputs,
            output_shape=forward.output_shape,
            attributed=attributed,
            tokens=tokens,
            multi_input=forward.multi_input,
            select=lambda outputs: select_outputs(forward.output_shape, outputs),
            layout=self._layout,
        )

    def shapley_values(
        self,
        X: Any,
        players: Any = "steps",
        budget: int | None = None,
        *,
        tol: float | None = None,
        outputs: Sequence[Any] | None = None,
        random_state: Any = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        prune: float | None = None,
        time_axis: Any = None,
        windows: int | None = None,
    ) -> ShapleyEstimate:
        """Shapley values of ``X`` with standard errors: see :meth:`rnnshap.DeepExplainer.shapley_values`
        (here ``deepshap`` and ``deepshap_gap`` are None). A function of arrays does not say which
        axis of an (N, A, B) input is time: players along time or features then need ``time_axis``."""
        return shapley_values(
            self._view(), X, players, budget, tol=tol, outputs=outputs, random_state=random_state,
            batch_size=batch_size or self.batch_size, progress=self.progress if progress is None else progress,
            prune=prune, time_axis=time_axis, windows=windows,
        )  # fmt: skip

    def shapley_interactions(self, X: Any, players: Any = "steps", **options: Any) -> Any:
        """Shapley interactions between players, through shapiq, from the forward alone: see
        :meth:`rnnshap.DeepExplainer.shapley_interactions` (the same arguments and result)."""
        from .interactions import shapley_interactions

        options.setdefault("batch_size", self.batch_size)
        options.setdefault("progress", self.progress)
        options["batch_size"] = options["batch_size"] or self.batch_size
        return shapley_interactions(self._view(), X, players, **options)

    def __call__(
        self,
        X: Any,
        players: Any = "steps",
        budget: int | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        **options: Any,
    ) -> Any:
        """A ``shap.Explanation`` of the Shapley values of ``X``, with ``error_std`` set."""
        estimate = self.shapley_values(X, players, budget, **options)
        return estimate.explanation(feature_names=feature_names, output_names=output_names)
