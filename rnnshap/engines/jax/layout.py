"""Which axis of a Flax model's input is time, read from its jaxpr (for the Shapley mode's players along time).

The input is followed through the operations that keep its axes (elementwise functions, casts, transposes, a
matrix product over its last axis: a Linear applied at every step) to its first reader that says which axis is
time: a ``scan`` steps over its operand's leading axis (``nnx.RNN``, ``lax.scan``), a 1-D convolution over its
spatial axis. Where nothing says, or readers disagree, the axis stays unknown and the caller is asked for it.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from jax.extend import core

from .pairs import BINARY_PRIMITIVES, FUNCTIONS, UNARY, scan_split

#: operations that keep their operand's axes (elementwise, of one shape)
_KEEPING = {"convert_element_type", "add", "sub", "mul", "div", "neg", "integer_pow", "select_n", "stop_gradient",
            "copy", "copy_p", "max", "min"} | set(UNARY) | set(BINARY_PRIMITIVES)  # fmt: skip
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
          "custom_vjp_call": "call_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}  # fmt: skip

Axes = tuple[Any, ...]  # per axis of a value: the input's axis it holds, or None
Verdict = tuple[Any, str]  # (the input's axis that is time, with the batch axis 0; or None), why


def _inner(value: Any) -> Any:
    return value.jaxpr if isinstance(value, core.ClosedJaxpr) else value


def _follow(jaxpr: Any, tracked: dict[Any, Axes], verdicts: list[Verdict]) -> None:
    """Follow the values in ``tracked`` (var → the input axes it holds) through ``jaxpr``, adding the verdicts
    of their readers."""
    for eqn in jaxpr.eqns:
        held = [(i, tracked[v]) for i, v in enumerate(eqn.invars) if not isinstance(v, core.Literal) and v in tracked]
        if not held:
            continue
        name, out = eqn.primitive.name, eqn.outvars
        shape = getattr(out[0].aval, "shape", None) if out else None
        if name == "scan":
            first = sum(scan_split(eqn))
            for i, axes in held:
                if i >= first:
                    verdicts.append((axes[0], "its first reader, a scan (nnx.RNN, lax.scan), steps over that axis"))
        elif name == "conv_general_dilated" and held[0][0] == 0 and len(eqn.params["dimension_numbers"].lhs_spec) == 3:
            axes = held[0][1]
            verdicts.append((axes[eqn.params["dimension_numbers"].lhs_spec[2]], "its first reader, a 1-D convolution, slides over that axis"))  # noqa: E501
        elif name == "transpose" and len(held) == 1:
            axes = held[0][1]
            tracked[out[0]] = tuple(axes[p] for p in eqn.params["permutation"])
        elif name == "dot_general" and len(held) == 1 and held[0][0] == 0:
            (contract, _), (batch, _) = eqn.params["dimension_numbers"]
            axes = held[0][1]
            if not batch and tuple(contract) == (len(axes) - 1,):  # a Linear at every step: the other axes kept
                rank = len(getattr(out[0].aval, "shape", ()))
                tracked[out[0]] = tuple(axes[:-1]) + (None,) * (rank - len(axes) + 1)
        elif name in _CALLS and eqn.params.get(_CALLS[name]) is not None:
            inner = _inner(eqn.params[_CALLS[name]])
            if str(eqn.params.get("name")) in FUNCTIONS and len(out) == 1:  # a named activation: elementwise
                tracked[out[0]] = held[0][1]
                continue
            nested = {inner.invars[i]: axes for i, axes in held if i < len(inner.invars)}
            _follow(inner, nested, verdicts)
            for outer, var in zip(out, inner.outvars, strict=False):
                if not isinstance(var, core.Literal) and var in nested:
                    tracked[outer] = nested[var]
        elif name in _KEEPING and shape is not None and any(len(axes) == len(shape) for _, axes in held):
            tracked[out[0]] = next(axes for _, axes in held if len(axes) == len(shape))


def time_axes(jaxpr: Any, inputs: Sequence[Any]) -> list[Verdict]:
    """Per input var of ``jaxpr`` in ``inputs``: the axis of one sample (no batch axis) that is time, or None, and why."""
    found: list[Verdict] = []
    for var in inputs:
        verdicts: list[Verdict] = []
        _follow(jaxpr, {var: tuple(range(len(jnp.shape(var.aval))))}, verdicts)
        axes = {axis for axis, _ in verdicts}
        if not verdicts:
            found.append((None, "no operation that says which axis is time reads it (a scan, a 1-D convolution)"))
        elif len(axes) > 1:
            found.append((None, "the operations that read it disagree on which axis is time"))
        elif None in axes or 0 in axes:
            found.append((None, "its first reader steps over the batch axis, or over a mix of axes (a time-major model)"))
        else:
            found.append((int(next(iter(axes))) - 1, verdicts[0][1]))
    return found


__all__ = ["time_axes"]
