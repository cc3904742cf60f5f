r"""Softmax, log-softmax and logsumexp in a jaxpr, by the other engines' rules: the shift that cancels, and e / Σe
as exp(s − log Σe).

``jax.nn.softmax``, ``log_softmax`` and ``logsumexp`` reach the JAX engine as primitives: a shift ``c``, the
maximum of the value stop-gradiented (``reduce_max``, ``max`` with −inf, ``is_finite``/``select_n`` for rows masked
throughout), then ``exp(u − c)``, its sum, and ``div`` (softmax), ``log`` and ``sub`` (log-softmax) or ``log`` and
``add c`` (logsumexp). Taken primitive by primitive, the shift is each side's own maximum (its change attributed
through the maximum's routing) and softmax's division takes the quotient's two-player rule, whose cross terms
grow like exp(max x − max r) (``rnnshap.rules.structured.Softmax``): 0.6 % off the PyTorch engine's values on a
GRU classifier. So, as the PyTorch and Keras engines do (:func:`rnnshap.formulas.pairs.common_shift`):

- a shift, the stop-gradiented maximum of the value it is subtracted from (and added back to, in logsumexp), is
  one constant on both sides, the larger of the two maxima (0 where that is not finite): it cancels in every such
  use, and keeps exp bounded;
- ``e / Σe`` with ``e = exp(s)`` is ``exp(s − log Σe)``: Rescale on log (the closed-form secant of log), the linear
  difference, Rescale on exp (its closed-form secant).

:func:`plan` finds both in a jaxpr before it runs; anything else runs primitive by primitive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

from ...formulas import pairs
from ...formulas.jax_ops import JAX
from ...operations import ELEMENTWISE

#: the primitives between a maximum and its stop_gradient in a shift (jax.nn's softmax, log_softmax, logsumexp)
_CONE = frozenset({"reduce_max", "max", "broadcast_in_dim", "is_finite", "select_n", "reshape", "expand_dims"})
_EXP = next(e for e in ELEMENTWISE if e.name == "exp")


@dataclass(frozen=True)
class Shift:
    """A stop_gradient equation that is a shift: the value whose maximum it is (``source``), the maximum's axes, and
    the equations between (``cone``, in order), run only where ``source`` does not depend on the input."""

    source: Any
    axes: tuple[int, ...]
    cone: tuple[int, ...]


@dataclass
class Plan:
    #: equations not run: a shift's cone (the shift is computed from its source), and those nothing reads
    skip: set[int] = field(default_factory=set)
    #: stop_gradient equation → its shift
    shifts: dict[int, Shift] = field(default_factory=dict)
    #: div equation e / Σe → (the exponent var s (e = exp s), the sum's axes)
    softmax: dict[int, tuple[Any, tuple[int, ...]]] = field(default_factory=dict)
    #: log equation log Σe → (the exponent var s, the sum's axes)
    logs: dict[int, tuple[Any, tuple[int, ...]]] = field(default_factory=dict)


def _unused(eqn: Any, users: dict[Any, list[int]], outputs: set[Any]) -> bool:
    """Whether nothing reads ``eqn``'s results (``sign`` of logsumexp's sum, a step function no output depends on)."""
    read = [v for v in eqn.outvars if not isinstance(v, core.DropVar) and (users.get(v) or v in outputs)]
    return not read and not eqn.effects


def plan(jaxpr: core.Jaxpr) -> Plan:
    """The shifts and softmax divisions of ``jaxpr`` (see the module docstring)."""
    producer: dict[Any, int] = {}
    users: dict[Any, list[int]] = defaultdict(list)
    for k, eqn in enumerate(jaxpr.eqns):
        for v in eqn.outvars:
            producer[v] = k
        for operand in eqn.invars:
            if not isinstance(operand, core.Literal):
                users[operand].append(k)
    found = Plan()
    outputs = {v for v in jaxpr.outvars if not isinstance(v, core.Literal)}
    for k, eqn in enumerate(jaxpr.eqns):
        if _unused(eqn, users, outputs):
            found.skip.add(k)
        elif eqn.primitive.name == "stop_gradient":
            shift = _shift(jaxpr, k, producer, users, outputs)
            if shift is not None:
                found.shifts[k] = shift
                found.skip.update(shift.cone)
        elif eqn.primitive.name == "div" and not isinstance(eqn.invars[0], core.Literal):
            e = producer.get(eqn.invars[0])
            summed = _sum_of_exp(jaxpr, eqn.invars[1], producer, ("broadcast_in_dim", "reshape"))
            if summed is not None and e is not None and jaxpr.eqns[e].invars[0] is summed[0]:
                found.softmax[k] = summed
        elif eqn.primitive.name == "log":
            summed = _sum_of_exp(jaxpr, eqn.invars[0], producer, ("broadcast_in_dim", "reshape", "abs"))
            if summed is not None:
                found.logs[k] = summed
    return found


def _shift(
    jaxpr: core.Jaxpr, k: int, producer: dict[Any, int], users: dict[Any, list[int]], outputs: set[Any]
) -> Shift | None:
    """The shift that the stop_gradient equation ``k`` is, or None (see the module docstring)."""
    eqns, constants = jaxpr.eqns, set(jaxpr.constvars)
    cone: set[int] = set()
    maximum: int | None = None
    stack = [eqns[k].invars[0]]
    while stack:
        v = stack.pop()
        if isinstance(v, core.Literal) or v in constants:
            continue
        j = producer.get(v)
        if j is None or eqns[j].primitive.name not in _CONE or eqns[j].primitive.multiple_results:
            return None
        if j in cone:
            continue
        cone.add(j)
        if eqns[j].primitive.name == "reduce_max":
            if maximum is not None:
                return None
            maximum = j
        else:
            stack.extend(eqns[j].invars)
    if maximum is None:
        return None
    source = eqns[maximum].invars[0]
    if any(u not in cone and u != k for j in cone for v in eqns[j].outvars for u in users.get(v, ())):
        return None  # a value of the cone read elsewhere
    shift = eqns[k].outvars[0]
    for u in users.get(shift, ()):  # only subtracted from its source, or added back to a log (logsumexp's)
        use = eqns[u]
        subtracted = use.primitive.name == "sub" and use.invars[0] is source and use.invars[1] is shift
        if subtracted and not all(
            _cancels(eqns[w], (use.outvars[0], shift), producer, users, eqns, outputs) for w in users.get(use.outvars[0], ())
        ):
            return None  # u − c read otherwise than by softmax's exp or log-softmax's difference: c does not cancel
        if not (subtracted or use.primitive.name == "add" and _added_to_a_log(use, shift, producer, eqns)):
            return None
    return Shift(source, tuple(eqns[maximum].params["axes"]), tuple(sorted(cone)))


def _cancels(
    use: Any, shifts: tuple[Any, Any], producer: dict[Any, int], users: dict[Any, list[int]], eqns: Any, outputs: set[Any]
) -> bool:
    """Whether ``use`` of the shifted value ``u − c`` is one in which ``c`` cancels: its ``exp`` divided by its sum
    (softmax), its sum's log subtracted from ``u − c`` (log-softmax) or added to ``c`` (logsumexp); or log-softmax's
    ``(u − c) − log Σ exp(u − c)`` itself. An exp, a sum or a log read any other way (as a feature) is not.
    ``shifts``: ``(u − c, c)``."""
    shifted = shifts[0]
    if use.primitive.name == "exp":
        e = use.outvars[0]
        readers = _readers(e, users, eqns, outputs)
        if readers is None:
            return False
        for reader, read in readers:
            name = reader.primitive.name
            if name == "div" and reader.invars[0] is read and _sum_of(reader.invars[1], e, producer, eqns):
                continue
            if name != "reduce_sum" or not _sum_cancels(reader.outvars[0], e, shifts, users, eqns, outputs):
                return False
        return True
    if use.primitive.name != "sub" or use.invars[0] is not shifted or isinstance(use.invars[1], core.Literal):
        return False
    made = producer.get(use.invars[1])
    return made is not None and eqns[made].primitive.name == "log"


#: primitives that only move, cast or broadcast a value (a sum kept with its axis, ``keepdims``)
_MOVES = ("broadcast_in_dim", "reshape", "expand_dims", "squeeze", "convert_element_type")


def _readers(v: Any, users: dict[Any, list[int]], eqns: Any, outputs: set[Any]) -> list[tuple[Any, Any]] | None:
    """The equations that read ``v`` through :data:`_MOVES`, each with the var it reads; None where the jaxpr
    returns ``v`` or a move of it (``outputs``: read as a feature)."""
    found: list[tuple[Any, Any]] = []
    stack = [v]
    while stack:
        var = stack.pop()
        if var in outputs:
            return None
        for w in users.get(var, ()):
            if eqns[w].primitive.name in _MOVES:
                stack.append(eqns[w].outvars[0])
            else:
                found.append((eqns[w], var))
    return found


def _sum_of(v: Any, e: Any, producer: dict[Any, int], eqns: Any) -> bool:
    """Whether ``v`` is a sum of ``e`` (through :data:`_MOVES`)."""
    while not isinstance(v, core.Literal) and producer.get(v) is not None and eqns[producer[v]].primitive.name in _MOVES:
        v = eqns[producer[v]].invars[0]
    made = None if isinstance(v, core.Literal) else producer.get(v)
    return made is not None and eqns[made].primitive.name == "reduce_sum" and eqns[made].invars[0] is e


def _sum_cancels(
    total: Any, e: Any, shifts: tuple[Any, Any], users: dict[Any, list[int]], eqns: Any, outputs: set[Any]
) -> bool:
    """Whether the sum ``total`` of ``e`` = exp(u − c) is read only as softmax's denominator of ``e``, or logged (its
    absolute value too, its sign unread) and the log subtracted from ``u − c`` or added to ``c`` (``shifts``)."""
    (shifted, shift), readers = shifts, _readers(total, users, eqns, outputs)
    if readers is None:
        return False
    for reader, read in readers:
        name = reader.primitive.name
        if name == "div" and reader.invars[1] is read and reader.invars[0] is e:
            continue
        if name == "sign" and not users.get(reader.outvars[0]):
            continue
        if name == "abs":
            if not _sum_cancels(reader.outvars[0], e, shifts, users, eqns, outputs):
                return False
            continue
        logs = _readers(reader.outvars[0], users, eqns, outputs) if name == "log" else None
        if logs is None:
            return False
        for log_reader, log_read in logs:
            if log_reader.primitive.name == "sub" and log_reader.invars[0] is shifted and log_reader.invars[1] is log_read:
                continue
            if log_reader.primitive.name == "add" and shift in log_reader.invars:
                continue
            return False
    return True


def _added_to_a_log(use: Any, shift: Any, producer: dict[Any, int], eqns: Any) -> bool:
    """Whether ``use`` (an ``add`` of ``shift``) adds it to a log (logsumexp's ``log Σ exp(u − c) + c``)."""
    other = [v for v in use.invars if v is not shift]
    if len(other) != 1 or isinstance(other[0], core.Literal) or producer.get(other[0]) is None:
        return False
    return bool(eqns[producer[other[0]]].primitive.name == "log")


def _sum_of_exp(jaxpr: core.Jaxpr, total: Any, producer: dict[Any, int], through: tuple[str, ...]) -> Any:
    """For ``total`` = Σ exp(s) (through the primitives ``through``: the sum broadcast back, its absolute value): the
    var ``s`` and the sum's axes; else None."""
    eqns = jaxpr.eqns
    while not isinstance(total, core.Literal) and producer.get(total) is not None:
        made = eqns[producer[total]]
        if made.primitive.name not in through:
            break
        total = made.invars[0]
    summed = None if isinstance(total, core.Literal) else producer.get(total)
    if summed is None or eqns[summed].primitive.name != "reduce_sum" or isinstance(eqns[summed].invars[0], core.Literal):
        return None
    e = producer.get(eqns[summed].invars[0])
    if e is None or eqns[e].primitive.name != "exp":
        return None
    return eqns[e].invars[0], tuple(eqns[summed].params["axes"])


def shift(source: Any, axes: tuple[int, ...], shape: tuple[int, ...]) -> Any:
    """The common shift of an input-dependent ``source`` (a Pair) over ``axes``, as a constant of ``shape``."""
    max_x = jnp.max(lax.stop_gradient(source.x), axis=axes, keepdims=True)
    max_r = jnp.max(source.r, axis=axes, keepdims=True)
    return _keepdims(lax.stop_gradient(pairs.common_shift(JAX, max_x, max_r)), shape)


Rescale = Callable[..., Any]
#: ``attach(value, [(operand, multiplier)])`` of the engine
Attach = Callable[..., Any]


def _keepdims(t: Any, shape: tuple[int, ...]) -> Any:
    """``t`` (a reduction's result with its axes kept) in ``shape``, where the two differ only by axes of size 1."""
    return jnp.reshape(t, shape) if t.size == jnp.size(jnp.zeros(shape)) else jnp.broadcast_to(t, shape)


def log_of_sum(exponent: Any, total: Any, axes: tuple[int, ...], attach: Attach) -> Any:
    r"""log Σ exp(``exponent``) over ``axes`` from the sum ``total`` (Pairs), as the other engines take it
    (``rnnshap.engines.keras.dual.log_of_sum``, ``rnnshap.rules.structured.shifted_logsumexp``): where one side's sum
    underflows its log is a stable logsumexp's instead of :math:`\log 0`, and the multiplier is
    :func:`rnnshap.formulas.pairs.log_sum_multiplier` (the closed-form secant of log where both sums are normal)."""
    tx = lax.stop_gradient(total.x)
    shape = tuple(tx.shape)
    lse_x = _keepdims(jax.nn.logsumexp(lax.stop_gradient(exponent.x), axis=axes, keepdims=True), shape)
    lse_r = _keepdims(jax.nn.logsumexp(exponent.r, axis=axes, keepdims=True), shape)
    log_x, log_r = pairs.stable_log(JAX, tx, lse_x), pairs.stable_log(JAX, total.r, lse_r)
    multiplier = pairs.log_sum_multiplier(JAX, tx, total.r, log_x, log_r)
    return type(total)(attach(log_x, [(total.x, multiplier)]), log_r)


def softmax(exponent: Any, total: Any, axes: tuple[int, ...], rescale: Rescale, attach: Attach) -> Any:
    """``e / Σe`` (``e = exp(exponent)``, ``total`` = Σe, Pairs) as ``exp(exponent − log Σe)``: :func:`log_of_sum`,
    the linear difference, and the engine's Rescale rule on exp (``rescale(fn, u, entry, name, smooth)``: its
    closed-form secant)."""
    log_total = log_of_sum(exponent, total, axes, attach)
    difference = type(exponent)(exponent.x - log_total.x, exponent.r - log_total.r)
    return rescale(jnp.exp, difference, _EXP, "exp", True)


__all__ = ["Plan", "Shift", "log_of_sum", "plan", "shift", "softmax"]
