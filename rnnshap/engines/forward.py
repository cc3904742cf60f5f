"""Forward-only models: what :class:`rnnshap.ShapleyExplainer` needs of any model (its outputs on
rows of inputs), for PyTorch modules, Keras 3 models and plain functions of numpy arrays.

No operation is inspected, so every model works, including the ones DeepSHAP's engines refuse. The
registry (:mod:`rnnshap.engines.registry`, :func:`~rnnshap.engines.registry.forward_model`) picks the builder
for a model: :func:`keras_forward`, :func:`torch_forward` or :func:`function_forward`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import RANDOM_MODEL, InputError, ModelStateError
from .outputs import OutputChoice, OutputLayout, output_parts


class ForwardModel:
    """A model's forward on numpy rows, with its background checked and evaluated once."""

    def __init__(
        self,
        call: Callable[[list[np.ndarray]], Any],
        data: Any,
        output: OutputChoice,
        to_numpy: Callable[[Any], np.ndarray],
        model: Any = None,
        batch_size: int | None = None,
        eps: float | None = None,
    ) -> None:
        from torch import nn

        from .keras.datasets import dataset_rows
        from .pytorch.randomness import RandomStates, draws_change, random_forward_error

        data = dataset_rows(data, "the background")  # (a tf.data.Dataset: its rows, as Keras' predict reads them)

        self._call = call
        self._to_numpy = to_numpy
        self.outputs = OutputLayout(output)
        self.multi_input = isinstance(data, (list, tuple))
        #: the most rows run through the model at once (None: the background in one call)
        self.batch_size = batch_size
        #: the eps of the dtype the model returns (its rounding, in the checks below)
        self.eps = eps if eps is not None else float(np.finfo(np.float64).eps)
        self.background = self.arrays(data, "background")
        if any(b.shape[0] == 0 for b in self.background):
            raise InputError("the background is empty: give at least one reference row")
        # a forward that draws random numbers is not a function of its inputs: no game to play (the states
        # it drew from are put back). A draw whose result never reaches the output (a dropout mask made and
        # not used at inference) is not randomness of the function: the output is the same from other states.
        states = RandomStates(model if isinstance(model, nn.Module) else None)
        # (a torch model's calls put torch's generator back: not while draws are watched)
        with call.keeping_draws() if isinstance(call, TorchCall) else contextlib.nullcontext():
            out = self.rows(self.background)
            drawn = states.drawn()
            what = f"the model on the {self.background[0].shape[0]} background rows"
            evidence = draws_change(lambda: self.rows(self.background), out, states, what) if drawn else None
            if evidence is not None:
                raise random_forward_error(drawn, evidence)
        self.output_shape: tuple[int, ...] = self._shape
        self.background_outputs = out
        self.refuse_non_finite(out, "background row")
        if batch_size != 1:
            self._check_rows_alone()

    def rows(self, rows: list[np.ndarray]) -> np.ndarray:
        """f on ``rows`` in batches of at most ``batch_size`` rows: (m, n_outputs) float64."""
        m = int(rows[0].shape[0])
        step = self.batch_size or m
        if step >= m:
            return self._evaluate(rows)
        return np.concatenate([self._evaluate([a[i : i + step] for a in rows]) for i in range(0, m, step)])

    def refuse_non_finite(self, out: np.ndarray, what: str) -> None:
        """Refuse outputs that are NaN or infinite, naming the first row (``what``: "sample", ...): a game
        with such values has no Shapley values. NaN inputs are the model's to take (a model that reads NaN
        as missing, a context dropped): only NaN that reaches the output is refused."""
        bad = ~np.isfinite(out)
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"the model's output is {out[row, column]} for {what} {row} (output {column}): Shapley values of a game with "
                "NaN or infinite values are undefined. Where the input holds NaN the model does not take as missing, fill "
                "or mask it first (or give the model a mask input); where the model itself overflows, check that row."
            )

    def _check_rows_alone(self) -> None:
        """Refuse a model whose output for one row depends on the other rows of its batch (dynamic quantization
        with one scale per batch, batch statistics, axis 0 read as time): a coalition's value would then depend on
        the rows it runs with. The first background rows (up to 8) run in one call, and each of the first 4 alone
        (or, for a model that cannot run one row, in pairs): the same outputs, up to rounding."""
        B = int(self.background[0].shape[0])
        if B < 2:
            return
        m = min(B, 8)
        try:
            together = self._evaluate([b[:m] for b in self.background])
            parts = [([i], [b[i : i + 1] for b in self.background]) for i in range(min(m, 4))]
            try:
                apart = [(rows, self._evaluate(given)) for rows, given in parts]
            except Exception:  # noqa: BLE001 (a model that cannot run one row: pairs of rows, if there are more)
                if m < 3:
                    return
                pairs = [[i, i + 1] for i in range(0, min(m, 4) - 1, 2)]
                apart = [(rows, self._evaluate([b[rows] for b in self.background])) for rows in pairs]
        except Exception:  # noqa: BLE001 (a model that fails on fewer rows: what it does on the rows played is its own)
            return
        finite = np.isfinite(together)
        scale = max(1.0, float(np.abs(together[finite]).max()) if finite.any() else 1.0)
        tolerance = 1e3 * self.eps * scale
        again = np.abs(self._evaluate([b[:m] for b in self.background]) - together)  # a random model differs anyway
        again = again[np.isfinite(again)]
        if again.size and float(again.max()) > tolerance:
            raise ModelStateError(RANDOM_MODEL.format(gap=float(again.max())))
        for rows, outputs in apart:
            differ = np.abs(outputs - together[rows])
            differ = differ[np.isfinite(differ)]
            if differ.size and float(differ.max()) > tolerance:
                alone = f"background row {rows[0]} run alone" if len(rows) == 1 else f"background rows {rows} run as a pair"
                raise InputError(
                    f"The model's output for one row depends on the other rows of its batch: {alone} gives an output "
                    f"{float(differ.max()):.3g} away from its output among {m} background rows (rounding would be below "
                    f"{tolerance:.2g}). Dynamically quantized models (torch.ao.quantization.quantize_dynamic: one activation "
                    "scale per batch), normalization over the batch and a recurrent layer reading axis 0 as time do this; a "
                    "coalition's value would then depend on the rows it runs with, and no value would be exact. "
                    "ShapleyExplainer(..., batch_size=1) runs every row alone, the background too: it explains the model as "
                    "it computes one row on its own (slower, exact). Otherwise quantize statically, or explain the float model."
                )

    def arrays(self, X: Any, what: str) -> list[np.ndarray]:
        """``X`` (one array or a list per input) as numpy arrays, checked against the background."""
        from .keras.datasets import dataset_rows

        X = dataset_rows(X, what)
        given = list(X) if isinstance(X, (list, tuple)) else [X]
        if isinstance(X, (list, tuple)) != self.multi_input:
            expected = "a list of inputs" if self.multi_input else "one array"
            raise InputError(f"{what} must be {expected}, like the background")
        arrays = [self._to_numpy(x) for x in given]
        background = getattr(self, "background", None)
        if background is not None:
            if len(arrays) != len(background):
                raise InputError(f"{what} has {len(arrays)} input(s) but the background has {len(background)}")
            for t, (a, b) in enumerate(zip(arrays, background, strict=True)):
                if a.shape[1:] != b.shape[1:]:
                    raise InputError(
                        f"input {t} of {what} has shape {a.shape}, its background {b.shape}: all dimensions after the first "
                        "must agree"
                    )
        return arrays

    def __call__(self, rows: list[np.ndarray]) -> np.ndarray:
        """f on ``rows`` (rows of coalitions, in one call): (m, n_outputs) float64; NaN or infinite values refused."""
        out = self._evaluate(rows)
        if not np.isfinite(out).all():
            self.refuse_non_finite(out, "a row of a coalition (the sample on some players, a background row elsewhere), row")
        return out

    def _evaluate(self, rows: list[np.ndarray]) -> np.ndarray:
        """f on ``rows``: (m, n_outputs) float64."""
        out = self._call(rows)
        if isinstance(out, list) and not any(hasattr(t, "shape") for t in out):
            out = np.asarray(out)  # a Python list of numbers (or of lists): one value (or vector) per row
        leaf = self.outputs.leaf(out, lambda t: hasattr(t, "shape"))  # (a nested result: the tensor output= picks)
        if leaf is not None:
            taken = np.asarray(self._to_numpy(leaf))
        else:
            flat, names = output_parts(out)
            arrays = [self._to_numpy(t) for t in flat]
            taken = self.outputs.take(
                arrays, names, lambda a: a.shape, lambda parts: np.concatenate([p.reshape(p.shape[0], -1) for p in parts], 1)
            )
            taken = np.asarray(taken)
        m = rows[0].shape[0]
        if taken.ndim == 0 or taken.shape[0] != m:
            raise InputError(
                f"the model maps {m} rows to an output of shape {taken.shape}; the output's first dimension must be the batch"
            )
        if taken.dtype.kind == "c":
            raise InputError(
                f"the model returns complex values ({taken.dtype}): a game needs real numbers. Explain its real and "
                "imaginary parts: wrap the model so that it returns torch.view_as_real(out) (or its .real and .imag)"
            )
        self._shape = tuple(taken.shape[1:])
        if taken.dtype.kind == "f":
            self.eps = max(self.eps, float(np.finfo(taken.dtype).eps))
        return taken.reshape(m, -1).astype(np.float64)


def keras_forward(model: Any, data: Any, output: OutputChoice = None, batch_size: int | None = None) -> ForwardModel:
    """The :class:`ForwardModel` of a Keras 3 model, on any backend (``batch_size``: the most rows in one call, the
    background's included; 1 runs every row alone). The registry (:mod:`rnnshap.engines.registry`) chooses it."""
    import keras

    from .keras.training_calls import refuse_training_calls

    refuse_training_calls(model)

    def keras_call(rows: list[np.ndarray]) -> Any:
        return model(rows if len(rows) > 1 or isinstance(data, (list, tuple)) else rows[0], training=False)

    return ForwardModel(keras_call, data, output, lambda t: np.asarray(keras.ops.convert_to_numpy(t)), None, batch_size)


def torch_forward(model: Any, data: Any, output: OutputChoice = None, batch_size: int | None = None) -> ForwardModel:
    """The :class:`ForwardModel` of a PyTorch module (see :func:`keras_forward`)."""
    import torch

    from .pytorch.safety import model_device_and_dtype

    dtype = model_device_and_dtype(model)[1]
    eps = float(torch.finfo(dtype).eps) if dtype is not None and dtype.is_floating_point else None
    return ForwardModel(_torch_call(model), data, output, _torch_numpy, model, batch_size, eps)


def function_forward(model: Any, data: Any, output: OutputChoice = None, batch_size: int | None = None) -> ForwardModel:
    """The :class:`ForwardModel` of a function of numpy arrays, one per input (see :func:`keras_forward`)."""
    return ForwardModel(lambda rows: model(*rows), data, output, np.asarray, model, batch_size)


def _torch_numpy(value: Any) -> np.ndarray:
    """A tensor (or anything array-like) as a numpy array; 16-bit floats as float32."""
    if hasattr(value, "detach"):
        import torch

        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


class TorchCall:
    """A torch model's forward on numpy rows (see :func:`_torch_call`); inside :meth:`keeping_draws`, each call
    leaves torch's global generator as the model left it (while :class:`ForwardModel` watches for draws)."""

    def __init__(self, call: Callable[[list[np.ndarray], bool], Any]) -> None:
        self.call = call
        self.keep_draws = False

    @contextlib.contextmanager
    def keeping_draws(self) -> Iterator[None]:
        """Leave torch's global generator as each call leaves it, while the caller watches for draws."""
        self.keep_draws = True
        try:
            yield
        finally:
            self.keep_draws = False

    def __call__(self, rows: list[np.ndarray]) -> Any:
        return self.call(rows, self.keep_draws)


def rows_as_tensors(rows: list[np.ndarray], device: Any, dtype: Any) -> list[Any]:
    """Numpy ``rows`` as torch tensors on the model's ``device``, floating ones in its ``dtype`` (either may be
    None: left as they are)."""
    import torch

    tensors = []
    for a in rows:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if t.is_floating_point() and dtype is not None:
            t = t.to(dtype)
        tensors.append(t.to(device) if device is not None else t)
    return tensors


def _torch_call(model: Any) -> TorchCall:
    import torch

    from .pytorch.safety import (
        AsFunction,
        PreservedState,
        check_meta,
        has_active_randomness,
        meta_modules,
        model_device_and_dtype,
        refuse_scripted,
    )

    scripted = any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())
    if scripted and not isinstance(model, torch.jit.ScriptModule):
        refuse_scripted(model)  # (a Python model holding a scripted part: the whole is a function all the same)
    device, dtype = model_device_and_dtype(model)
    # modules whose training mode draws randomness or batch statistics (dropout, batch norm) run in
    # eval mode, the function shap and DeepExplainer explain; their flags are put back after each call
    # (a frozen TorchScript module has no training flag: it runs as it is)
    switched = [m for m in model.modules() if getattr(m, "training", False) and has_active_randomness(m)]
    if switched:
        names = sorted({type(m).__name__ for m in switched})
        warnings.warn(
            f"the model is in training mode with {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}: "
            "ShapleyExplainer explains its eval-mode function and leaves every module's training flag as it was",
            stacklevel=4,
        )
    unchecked = bool(meta_modules(model))  # parameters on the meta device: refused where they are read (first call)

    def call(rows: list[np.ndarray], keep_draws: bool) -> Any:
        nonlocal unchecked
        tensors = rows_as_tensors(rows, device, dtype)
        if unchecked:
            check_meta(model, lambda: model(*tensors))
            unchecked = False
        state = None if scripted else PreservedState(model)  # TorchScript keeps its state out of Python's reach
        try:
            for m in switched:
                m.training = False
            with torch.no_grad():
                if scripted:
                    return model(*tensors)
                with AsFunction(model):  # compiled modules run eagerly (nothing compiled), backward hooks aside
                    return model(*tensors)
        finally:
            for m in switched:
                m.training = True
            if state is not None:
                state.restore(random_state=not keep_draws)

    return TorchCall(call)
