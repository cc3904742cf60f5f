"""Which axis of an input is time: read from the layer that reads the input, or given as ``time_axis=``.

An input of one sample shaped (A, B) is (T, F) to a recurrent layer or a channels-last convolution
(rnnshap's and Keras's layout) and (C, T) to a channels-first one (aeon and sktime panels, torch's
``Conv1d``). Players along time (``"steps"``, ``windows=``) and along features need to know which:
where neither the model nor the caller says, they are refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError


@dataclass
class Layout:
    """Per input: the axis of one sample that is time (0-based, no batch axis; None: not known), and why."""

    axes: list[int | None]
    why: list[str]


def unknown(count: int, why: str) -> Layout:
    return Layout([None] * count, [why] * count)


def read_layout(model: Any, call: Any, background: Sequence[np.ndarray]) -> Layout:
    """The time axis of every input of ``model``, from the first layer that reads it: a recurrent
    layer or a channels-last 1-D convolution or pooling says (T, F), a channels-first one (C, T).
    Layers that keep the layout (dropout, identity) are looked through. ``call(rows)`` runs the
    model on numpy rows (a torch module's is run once on one background row, hooks removed after)."""
    from ..engines import is_keras_model
    from ..engines.jax import is_flax_module

    if is_keras_model(model):
        return _keras_layout(model, len(background))
    if is_flax_module(model):
        from ..engines.jax.engine import time_axes_of

        found = time_axes_of(model, list(background))
        return Layout([axis for axis, _ in found], [why for _, why in found])
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a core dependency
        nn = None  # type: ignore[assignment]
    if nn is not None and isinstance(model, nn.Module):
        return _torch_layout(model, call, background)
    return unknown(len(background), "the model is a function of arrays, whose layout rnnshap cannot read")


def layout_reader(model: Any, background: Sequence[np.ndarray], call: Any = None) -> Callable[[], Layout]:
    """:func:`read_layout` of ``model``, read once when first asked for (``call``: the model on numpy
    rows; default: its eval-mode forward, its state put back)."""
    kept: list[Layout] = []

    def read() -> Layout:
        if not kept:
            kept.append(read_layout(model, call if call is not None else _eval_forward(model), background))
        return kept[0]

    return read


def _eval_forward(model: Any) -> Callable[[list[np.ndarray]], Any]:
    """A torch module's forward on numpy rows, without gradients, modules that draw randomness or batch
    statistics in eval mode, and the module's state put back after (what ShapleyExplainer runs)."""

    def call(rows: list[np.ndarray]) -> Any:
        import torch

        from ..engines.forward import rows_as_tensors
        from ..engines.pytorch.safety import PreservedState, has_active_randomness, model_device_and_dtype

        device, dtype = model_device_and_dtype(model)
        tensors = rows_as_tensors(rows, device, dtype)
        switched = [m for m in model.modules() if m.training and has_active_randomness(m)]
        state = PreservedState(model)
        try:
            for m in switched:
                m.training = False
            with torch.no_grad():
                return model(*tensors)
        finally:
            for m in switched:
                m.training = True
            state.restore()

    return call


def _verdict(kind: str, layer: Any, framework: str) -> tuple[int | None, str]:
    name = type(layer).__name__
    if kind == "last":
        return 0, f"its first reader, {name}, takes (T, F)"
    if kind == "first":
        return 1, f"its first reader, {name}, takes (C, T)"
    if kind == "rnn-time-major":
        return None, f"its first reader, {name}, is time-major (batch_first=False): the batch is not the first axis"
    return None, f"its first reader, {name}, does not say which axis is time"


def _torch_kind(module: Any) -> str:
    from torch import nn

    if isinstance(module, nn.RNNBase):
        return "last" if module.batch_first else "rnn-time-major"
    channels_first = (
        nn.Conv1d, nn.ConvTranspose1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d,
        nn.BatchNorm1d, nn.InstanceNorm1d, nn.LPPool1d,
    )  # fmt: skip
    if isinstance(module, channels_first):
        return "first"
    # layers that move no axis: each entry's own position (Dropout, Identity, activations) or the last axis
    # mapped on its own (Linear, LayerNorm): the layer after them says which axis is time
    keeps = (nn.Dropout, nn.Identity, nn.AlphaDropout, nn.Linear, nn.LayerNorm)
    if isinstance(module, keeps) or type(module).__module__ == "torch.nn.modules.activation":
        return "through"
    return "unknown"


#: functions that rearrange axes: what they return is no longer laid out as their input
_REARRANGING = {
    "transpose", "permute", "swapaxes", "swapdims", "movedim", "moveaxis", "reshape", "view", "view_as", "reshape_as",
    "flip", "fliplr", "flipud", "rot90", "t", "flatten", "unflatten", "unfold", "as_strided", "__get__", "einsum",
    "matmul", "__matmul__", "bmm", "mm", "tensordot", "gather", "take_along_dim",
}  # fmt: skip
#: functional forms that read (N, C, T)
_CHANNELS_FIRST_FUNCTIONS = {
    "conv1d", "conv_transpose1d", "avg_pool1d", "max_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d",
}  # fmt: skip


def _torch_layout(model: Any, call: Any, background: Sequence[np.ndarray]) -> Layout:
    import torch
    from torch.overrides import TorchFunctionMode

    count = len(background)
    seen: dict[int, int] = {}  # id of a tensor laid out as input t (the input, a slice of it, x * 2, ...) → t
    kept: list[Any] = []  # those tensors, alive while their ids are in ``seen``
    found: dict[int, tuple[int | None, str]] = {}

    def follow(tensor: Any, t: int) -> None:
        if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
            seen[id(tensor)] = t
            kept.append(tensor)

    def decide(t: int, verdict: tuple[int | None, str]) -> None:
        if t not in found:
            found[t] = verdict

    class Follow(TorchFunctionMode):
        """Follows each input through the functions that keep its layout (slices along time,
        elementwise arithmetic, casts); notes a functional channels-first reader."""

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            sources = [(a, seen[id(a)]) for a in args if isinstance(a, torch.Tensor) and id(a) in seen]
            if not sources:
                return out
            source, t = sources[0]
            if name in _CHANNELS_FIRST_FUNCTIONS:
                decide(t, (1, f"its first reader, torch.nn.functional.{name}, takes (C, T)"))
            elif name not in _REARRANGING and isinstance(out, torch.Tensor) and len({s for _, s in sources}) == 1:
                if out.ndim == source.ndim and out.shape[0] == source.shape[0] and out.shape[-1] == source.shape[-1]:
                    follow(out, t)
            return out

    def root_hook(module: Any, args: Any) -> None:
        if not found and len(seen) == 0:
            for t, a in enumerate(args):
                follow(a, t)

    def pre_hook(module: Any, args: Any) -> None:
        if module is model or any(True for _ in module.children()):
            return  # a container: its layers decide
        kind = _torch_kind(module)
        for a in args:
            t = seen.get(id(a)) if isinstance(a, torch.Tensor) else None
            if t is not None and kind != "through":
                decide(t, _verdict(kind, module, "torch"))

    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return unknown(count, "the model is TorchScript, whose layers rnnshap cannot watch")

    def post_hook(module: Any, args: Any, output: Any) -> None:
        if _torch_kind(module) != "through" or not isinstance(output, torch.Tensor):
            return
        for a in args:
            t = seen.get(id(a)) if isinstance(a, torch.Tensor) else None
            if t is not None and output.ndim == a.ndim and output.shape[0] == a.shape[0]:
                follow(output, t)

    handles = [model.register_forward_pre_hook(root_hook)]
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    try:
        with Follow():
            call([np.ascontiguousarray(b[:1]) for b in background])
    except Exception as error:  # noqa: BLE001 - a model that does not run on one row as given: its layout is unknown
        return unknown(count, f"the model could not be run on one background row to read it ({type(error).__name__})")
    finally:
        for handle in handles:
            handle.remove()
    axes: list[int | None] = []
    why: list[str] = []
    for t in range(count):
        axis, reason = found.get(t, (None, "no layer that says which axis is time reads it"))
        axes.append(axis)
        why.append(reason)
    return Layout(axes, why)


def _keras_kind(layer: Any) -> str:
    import keras

    if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional, keras.layers.Masking)) or type(layer).__name__ in (
        "LSTM", "GRU", "SimpleRNN"
    ):  # fmt: skip
        return "last"
    if isinstance(layer, (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.Identity)):
        return "through"
    one_d = (
        keras.layers.Conv1D, keras.layers.SeparableConv1D, keras.layers.DepthwiseConv1D, keras.layers.Conv1DTranspose,
        keras.layers.MaxPooling1D, keras.layers.AveragePooling1D, keras.layers.GlobalAveragePooling1D,
        keras.layers.GlobalMaxPooling1D,
    )  # fmt: skip
    if isinstance(layer, one_d):
        return "first" if getattr(layer, "data_format", "channels_last") == "channels_first" else "last"
    return "unknown"


def _keras_layout(model: Any, count: int) -> Layout:
    inputs = list(getattr(model, "inputs", None) or [])
    if len(inputs) != count:
        return unknown(count, "the Keras model's inputs could not be matched to the background")
    followed = {id(tensor): t for t, tensor in enumerate(inputs)}
    verdicts: dict[int, dict[str, tuple[int | None, str]]] = {}  # per input, per reading layer
    changed = True
    while changed:  # follow layout-keeping layers until nothing more is learnt
        changed = False
        for layer in model.layers:
            for node in getattr(layer, "_inbound_nodes", []):
                for tensor in node.input_tensors:
                    t = followed.get(id(tensor))
                    if t is None:
                        continue
                    kind = _keras_kind(layer)
                    if kind != "through":
                        verdicts.setdefault(t, {})[layer.name] = _verdict(kind, layer, "keras")
                        continue
                    for out in node.output_tensors:
                        if id(out) not in followed:
                            followed[id(out)] = t
                            changed = True
    axes: list[int | None] = []
    why: list[str] = []
    for t in range(count):
        found = list(verdicts.get(t, {}).values())
        if not found:
            axes.append(None)
            why.append("no layer that says which axis is time reads it directly")
        elif len({axis for axis, _ in found}) > 1:
            axes.append(None)
            why.append("the layers that read it disagree on which axis is time")
        else:
            axes.append(found[0][0])
            why.append(found[0][1])
    return Layout(axes, why)


def chosen_axes(time_axis: Any, known: Layout | None, shapes: Sequence[tuple[int, ...]]) -> tuple[list[int | None], list[str]]:
    """Per input, the per-sample time axis: the caller's ``time_axis`` (an axis of X, batch axis 0;
    an int for every input or a list per input) where given, else the model's. Returns the axes and,
    per input, why an axis is not known."""
    count = len(shapes)
    if time_axis is None:
        if known is None:
            return [None] * count, ["the model's layout is not known"] * count
        return list(known.axes), list(known.why)
    given = list(time_axis) if isinstance(time_axis, (list, tuple)) else [time_axis] * count
    if len(given) != count:
        raise InputError(f"time_axis: {len(given)} axes for a model with {count} input(s); give one per input (None to skip)")
    axes: list[int | None] = []
    for t, (axis, shape) in enumerate(zip(given, shapes, strict=True)):
        if axis is None:
            axes.append(None if known is None else known.axes[t])
            continue
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise InputError(f"time_axis must be an axis of X (an integer, the batch axis being 0), not {axis!r}")
        ndim = len(shape) + 1
        if not (-ndim < int(axis) < ndim) or int(axis) % ndim == 0:
            raise InputError(
                f"time_axis={axis}: input {t} is shaped (N, {', '.join(map(str, shape))}); time is one of axes 1..{ndim - 1} "
                "(axis 0 is the batch)"
            )
        axes.append(int(axis) % ndim - 1)
    return axes, ["" if a is not None else "time_axis gave None for it" for a in axes]
