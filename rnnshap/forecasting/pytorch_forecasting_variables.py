"""From the batch's tensors to the data set's named variables, for :func:`rnnshap.pytorch_forecasting.explain`.

:func:`attribute_by_encoder_length` runs :func:`rnnshap.forecasting.attribute` once per encoder length of the
explained windows (pytorch-forecasting pads shorter encoders after their steps) and places the values
right-aligned; :func:`to_variables` sums the tensors' values into the named variables of a
:class:`VariableExplanation`. Package-internal: the adapter's own steps, public so that it may call them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from . import WindowAttribution, attribute
from .pytorch_forecasting_result import VariableExplanation


def attribute_by_encoder_length(
    module: Any, leaves: list[tuple[str, int | None]], x: dict[str, Any], B: int, n: int, **options: Any
) -> WindowAttribution:
    """:func:`attribute` once per encoder length of the explained windows (the rows ``B:`` of the batch
    ``x``; the background: rows ``:B``).

    pytorch-forecasting's batches pad shorter encoders after their steps, so position p of a window of
    length l in the batch is its step p - l. For the windows of length l, every reference longer than
    that gives its last l steps (the same time before the forecast), the tensors are cut to l steps,
    and all lengths are l: the values pair equal times, the base value is the mean forecast over the
    references at that length, and TFT, which reads the batch's longest length as its width, sees the
    width it expects. The returned encoder values are right-aligned: a window's l steps sit at
    positions L - l .. L - 1 (zeros in front), so position p is step p - L for every window."""
    import torch

    lengths = x["encoder_lengths"]
    decoder = x["decoder_lengths"]
    if bool((decoder[B:] != decoder[B:].max()).any()):
        raise InputError(
            "the explained windows have decoder lengths "
            f"{sorted(set(decoder[B:].tolist()))}: explain windows of one prediction length (min_prediction_length = "
            "max_prediction_length, "
            "or pick them with windows=)"
        )
    full = int(decoder[B:].max())

    def tensor(key: str, position: int | None) -> Any:
        return x[key] if position is None else x[key][position]

    parts: list[tuple[np.ndarray, WindowAttribution]] = []
    for length in sorted(set(lengths[B:].tolist())):
        rows = np.flatnonzero(lengths[B:].cpu().numpy() == length)
        references = [b for b in range(B) if int(lengths[b]) >= length and int(decoder[b]) >= full]
        if not references:
            raise InputError(
                f"no background window has an encoder of {length} steps or more and {full} decoder steps: pass a background "
                "with longer windows (e.g. the training set)"
            )
        background, X = [], []
        for key, position in leaves:
            value = tensor(key, position)
            if key.startswith("encoder_") and key != "encoder_lengths":
                ends = [int(lengths[b]) for b in references]
                background.append(torch.stack([value[b, end - length : end] for b, end in zip(references, ends, strict=True)]))
                X.append(value[B + rows, :length])
            elif key.startswith("decoder_") and key != "decoder_lengths":
                background.append(value[references, :full])
                X.append(value[B + rows, :full])
            elif key == "encoder_lengths":
                background.append(torch.full((len(references),), length, dtype=value.dtype, device=value.device))
                X.append(value[B + rows])
            elif key == "decoder_lengths":
                background.append(torch.full((len(references),), full, dtype=value.dtype, device=value.device))
                X.append(value[B + rows])
            else:
                background.append(value[references])
                X.append(value[B + rows])
        parts.append((rows, attribute(module, background, X, **options)))
    shapes = []  # per leaf, one window's shape: the decoder's cut to the explained prediction length
    for key, position in leaves:
        shape = tuple(tensor(key, position).shape[1:])
        decoder_step = key.startswith("decoder_") and key != "decoder_lengths"
        shapes.append((full, *shape[1:]) if decoder_step else shape)
    if len(parts) == 1 and all(v.shape[1:-1] == shape for v, shape in zip(parts[0][1].values, shapes, strict=True)):
        return parts[0][1]  # one encoder length, the full one: nothing to place
    first = parts[0][1]
    k = first.outputs.shape[1]

    def merged(arrays: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, ...], encoder_steps: bool) -> np.ndarray:
        """Each part's rows in the full shape: a window's l encoder steps at the end of the encoder axis
        (positions L - l .. L - 1, so position p is step p - L for every window; zeros in front), every
        other axis from its start."""
        out = np.zeros((n, *shape, k))
        for rows, v in arrays:
            sizes = v.shape[1:-1]
            index: tuple[Any, ...] = (rows, *(slice(0, size) for size in sizes))
            if encoder_steps:
                index = (rows, slice(shape[0] - sizes[0], shape[0]), *index[2:])
            out[index] = v
        return out

    steps = [key.startswith("encoder_") and key != "encoder_lengths" for key, _ in leaves]
    values = [merged([(rows, part.values[i]) for rows, part in parts], shape, steps[i]) for i, shape in enumerate(shapes)]
    stderr = None
    if first.stderr is not None:
        stderr = [
            merged([(rows, part.stderr[i]) for rows, part in parts if part.stderr is not None], shape, steps[i])
            for i, shape in enumerate(shapes)
        ]

    def joined(name: str, shape: tuple[int, ...]) -> Any:
        if getattr(first, name) is None:
            return None
        out = np.zeros(shape, dtype=np.asarray(getattr(first, name)).dtype)
        for rows, part in parts:
            out[rows] = getattr(part, name)
        return out

    return WindowAttribution(
        values=values, stderr=stderr, base_values=joined("base_values", (n, k)), outputs=joined("outputs", (n, k)),
        method=first.method, exact=joined("exact", (n,)), n_evals=joined("n_evals", (n,)), background=first.background,
    )  # fmt: skip


def to_variables(
    model: Any, dataset: Any, x: dict[str, Any], leaves: list[tuple[str, int | None]], attribution: WindowAttribution,
    B: int, n: int, H: int, J: int, K: int, names: list[str], method: str, mode: str,
) -> VariableExplanation:  # fmt: skip
    """Map the tensors' values to the data set's named variables (``H`` decoder steps, ``J`` explained
    horizon steps of ``K`` outputs each)."""
    reals, cats = list(dataset.reals), list(dataset.flat_categoricals)
    groups = dataset.variable_to_group_mapping
    # the model's own static variables (pytorch-forecasting lists the reals add_target_scales and add_encoder_length add,
    # "value_center", "value_scale", "encoder_length", among them: one value per window, repeated over its steps)
    static = list(getattr(model, "static_variables", None) or [])
    static += [v for v in list(dataset.static_categoricals or []) + list(dataset.static_reals or []) if v not in static]
    targets = list(dataset.target_names)
    time_varying: list[str] = []
    for name in [*(groups.get(c, c) for c in cats), *reals, *targets]:
        if name not in static and name not in time_varying:
            time_varying.append(name)
    L = int(x["encoder_cont"].shape[1])
    HK = J * K

    def parts(values: list[np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for (key, position), v in zip(leaves, values, strict=True):
            label = key if position is None else f"{key}[{position}]"
            out[label] = v
        return out

    raw = parts(attribution.values)
    errors = parts(attribution.stderr) if attribution.stderr is not None else None

    def mapped(source: dict[str, np.ndarray], square: bool) -> dict[str, np.ndarray]:
        enc = np.zeros((n, L, len(time_varying), HK))
        dec = np.zeros((n, H, len(time_varying), HK))
        stat = np.zeros((n, len(static), HK))
        scale = np.zeros((n, HK))
        f = (lambda a: a**2) if square else (lambda a: a)
        for label, v in source.items():
            key = label.split("[")[0]
            if key in ("encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat"):
                columns = reals if key.endswith("cont") else [groups.get(c, c) for c in cats]
                target = enc if key.startswith("encoder") else dec
                for c, name in enumerate(columns):
                    if name in static:
                        stat[:, static.index(name)] += f(v[:, :, c]).sum(1)
                    else:
                        target[:, :, time_varying.index(name)] += f(v[:, :, c])
            elif key in ("encoder_target", "decoder_target"):
                position = int(label[label.index("[") + 1 : -1]) if "[" in label else 0
                target = enc if key.startswith("encoder") else dec
                target[:, :, time_varying.index(targets[position])] += f(v)
            elif key == "target_scale":
                scale += f(v.reshape(n, -1, HK)).sum(1)
            # lengths: context, 0 by construction
        shape = (J, K)
        return {
            "encoder": enc.reshape(n, L, -1, *shape), "decoder": dec.reshape(n, H, -1, *shape),
            "static": stat.reshape(n, -1, *shape), "target_scale": scale.reshape(n, *shape),
        }  # fmt: skip

    values = mapped(raw, False)
    stderr = None
    # a variable's standard error: the root of the sum of its entries' squared errors (their estimates
    # come from the same walks, so this is a scale, not an exact standard error of the sum)
    if errors is not None:
        stderr = {k: np.sqrt(v) for k, v in mapped(errors, True).items()}
    try:
        index = dataset.x_to_index({k: x[k][B : B + n] for k in ("decoder_time_idx", "groups")})
    except Exception:  # pragma: no cover - an index the data set cannot decode
        index = None
    encoder_variables = [v for v in getattr(model, "encoder_variables", time_varying) if v in time_varying]
    decoder_variables = [v for v in getattr(model, "decoder_variables", time_varying) if v in time_varying]
    return VariableExplanation(
        values=values, base_values=attribution.base_values.reshape(n, J, K), outputs=attribution.outputs.reshape(n, J, K),
        time_varying_variables=time_varying, static_variables=static, output_names=names, encoder_variables=encoder_variables,
        decoder_variables=decoder_variables, encoder_lengths=x["encoder_lengths"][B : B + n].cpu().numpy(),
        decoder_lengths=x["decoder_lengths"][B : B + n].cpu().numpy(), index=index,
        method=method, mode=mode, stderr=stderr, exact=attribution.exact, n_evals=attribution.n_evals, raw=raw,
    )  # fmt: skip
