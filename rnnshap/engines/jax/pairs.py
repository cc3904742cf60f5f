r"""A jaxpr run on (input, reference) pairs, each operation by its rule: the JAX engine's tracer.

JAX writes any function it can differentiate as a jaxpr: a list of primitive operations (``dot_general``,
``tanh``, ``mul``, ``scan`` ...) on named values. :func:`run` evaluates one on the two sides of every pair
at once. A value that depends on the explained input is a :class:`Pair` (its value on the input side,
carrying JAX's autodiff, and on the reference side); anything else (weights, constants, masks made from
constants, random keys) is one array shared by both sides. Each primitive that reaches a :class:`Pair` is
taken by its rule (:mod:`rnnshap.engines.jax.rules`), written once in :mod:`rnnshap.formulas` (``JAX``, the
namespace on ``jax.numpy``):

- linear primitives (sums, reshapes, slices, ``dot_general`` or ``mul`` with one input-dependent operand,
  ``div`` of an input-dependent numerator, ``stop_gradient``, which changes training, not the function)
  run on both sides; JAX's own derivative is then the multiplier;
- the unary elementwise primitives of the operation table (:data:`rnnshap.operations.ELEMENTWISE`, by
  their JAX names), and ``max``/``min``/``pow``/``atan2`` with one constant operand, take Rescale
  (closed-form secants where the table says, sigmoid's and tanh's from their two results);
- ``mul`` and ``dot_general`` of two input-dependent operands take the exact two-player Shapley rule (the
  derivative at the midpoints), ``div`` by an input-dependent denominator its closed form, and the
  elementwise binary primitives of the table the two-player Shapley rule;
- ``scan`` (recurrent layers: ``flax.nnx.RNN``, ``jax.lax.scan``) runs its body the same way at every step,
  the carries as pairs; nested functions (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``)
  run their own jaxprs (a custom derivative is replaced by the rules' anyway).

The multiplier of a rule is attached to the input side's autodiff with :func:`attach` (the value
itself, bit for bit, with the multiplier as its derivative), so one ``jax.vjp`` of the input side's
outputs gives DeepSHAP's multipliers. Anything else that an input-dependent value reaches is refused by
the primitive's name (:class:`~rnnshap.errors.UnsupportedOperationError`), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import jax.numpy as jnp
from jax import lax
from jax.extend import core

from ...errors import RnnShapError, UnsupportedOperationError
from ...formulas import secant
from ...formulas.jax_ops import JAX
from ...operations import ELEMENTWISE, Elementwise, jax_binary, jax_families, jax_functions
from . import softmaxes
from .rules import Pair, Value, attach, bilinear, mark_of, max_over, modulus, normalizing, quotient, rescale, rescaled, shapley2

Array = Any


@dataclass(frozen=True)
class Ids(Pair):
    """Integer (or boolean) values computed from integer input ``source`` (token ids) on each side: no multiplier
    flows through them; where they become floats (an embedding's lookup, a cast), a :class:`Sites` probe does."""

    source: int
    #: whether every entry still sits at its own input position (only elementwise operations, and the trailing axis
    #: of size 1 an index takes, since the input): the credits of a site go back to the input position by position
    kept: bool = True


def _keeps_positions(eqn: Any, ids: Ids) -> bool:
    """Whether ``eqn`` leaves every entry of ``ids`` at its position: elementwise (:data:`ENTRYWISE`), or a
    broadcast that only appends axes of size 1 (an index's trailing axis)."""
    name, shape = eqn.primitive.name, tuple(ids.x.shape)
    out = tuple(eqn.outvars[0].aval.shape)
    if name == "broadcast_in_dim":
        dims = tuple(eqn.params["broadcast_dimensions"])
        return dims == tuple(range(len(shape))) and out[: len(shape)] == shape and all(d == 1 for d in out[len(shape) :])
    return name in ENTRYWISE and out == shape


@dataclass
class Sites:
    """Where integer inputs become floats: an embedding's lookup (``gather`` of a constant table at the ids) or a
    cast of the ids to a float. Each site's input side gets ``probes[k]`` added (an exact zero whose cotangent is
    the multiplier of the looked-up values); with ``probes`` None the sites are only recorded (their shapes)."""

    probes: Sequence[Array] | None = None
    #: per site: (the integer input, "token" or "number", the site's value shape, its dtype)
    found: list[tuple[int, str, tuple[int, ...], Any]] = field(default_factory=list)
    #: per site: the change of its value, input side minus reference side (in the probed pass)
    deltas: list[Array] = field(default_factory=list)

    def enter(self, source: int, kind: str, x: Array, r: Array) -> Pair:
        k = len(self.found)
        self.found.append((source, kind, tuple(x.shape), x.dtype))
        self.deltas.append(x - r)
        return Pair(x if self.probes is None else x + self.probes[k], r)


# -- the operation table's view ---------------------------------------------------------------------------------------
#: JAX primitive name → its unary entry (the table's ``jax`` names: sigmoid is ``logistic``, arctan ``atan`` ...)
UNARY: dict[str, Elementwise] = jax_families(lambda name: hasattr(lax, f"{name}_p"))
#: the name of a named call in a jaxpr (``jit[name=elu]``: jax.nn's activations) → its unary entry: the call is
#: one elementwise function, taken by its entry's rule as on the other engines (not through its inside)
FUNCTIONS: dict[str, Elementwise] = jax_functions()
#: the table's unary entries by their own name (``integer_pow`` by 2 and by −1 is the square and the reciprocal)
BY_NAME: dict[str, Elementwise] = {e.name: e for e in ELEMENTWISE}
#: JAX primitive name → whether its binary entry is smooth
BINARY_PRIMITIVES: dict[str, bool] = {name: entry.smooth for name, entry in jax_binary().items()}
#: linear in every input-dependent operand: both sides run through the primitive
LINEAR = {
    "add", "add_any", "sub", "neg", "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "concatenate", "reduce_sum", "copy", "pad", "rev", "cumsum", "real", "split", "dynamic_slice", "dynamic_update_slice",
    "gather", "mul", "dot_general", "div", "select_n",
    # the Fourier transforms (jnp.fft's, one primitive) and the complex views: linear over the reals
    "fft", "conj", "imag", "complex",
}  # fmt: skip
#: linear in the operands at these positions only (the others must not depend on the input)
LINEAR_AT: dict[str, tuple[int, ...]] = {
    "mul": (0, 1), "dot_general": (0, 1), "div": (0,), "dynamic_slice": (0,), "dynamic_update_slice": (0, 1),
    "gather": (0,), "select_n": tuple(range(1, 64)), "pad": (0, 1),
}  # fmt: skip
#: bilinear: with both operands input-dependent, the midpoint rule
BILINEAR = {"mul", "dot_general"}
#: calls of a function written as a jaxpr, by the parameter that holds it
CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr", "remat": "jaxpr",
         "checkpoint": "jaxpr", "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "custom_lin": None}  # fmt: skip

#: primitives that act entry by entry, on floats or integers (where their result has their operand's shape: a named
#: call made of these is one elementwise function; integer ids through these stay at their input positions)
ENTRYWISE = set(UNARY) | set(BINARY_PRIMITIVES) | {
    "add", "sub", "mul", "div", "rem", "neg", "abs", "sign", "max", "min", "integer_pow", "clamp", "nextafter",
    "select_n", "convert_element_type", "stop_gradient", "copy", "is_finite", "broadcast_in_dim",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "shift_left", "shift_right_logical",
}  # fmt: skip


# -- the interpreter -----------------------------------------------------------------------------------------------------
def _read(env: dict[Any, Value], var: Any) -> Value:
    return var.val if isinstance(var, core.Literal) else env[var]


def run(
    jaxpr: core.Jaxpr, consts: Sequence[Any], args: Sequence[Value], where: str = "", sites: Sites | None = None
) -> list[Value]:
    """Evaluate ``jaxpr`` on ``args`` (arrays, or :class:`Pair` s where they depend on the input, :class:`Ids` for
    integer inputs), each primitive by its rule; ``where`` names the enclosing function in refusals, ``sites``
    takes the places where integer inputs become floats."""
    env: dict[Any, Value] = {}
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    plan = softmaxes.plan(jaxpr)

    def evaluate(k: int, eqn: Any) -> None:
        shift = plan.shifts.get(k)
        if shift is not None and isinstance(_read(env, shift.source), Pair):
            outputs = [softmaxes.shift(_read(env, shift.source), shift.axes, eqn.outvars[0].aval.shape)]
        else:
            if shift is not None:  # a constant's shift: its own equations, as the model runs them
                for j in shift.cone:
                    evaluate(j, jaxpr.eqns[j])
            inputs = [_read(env, v) for v in eqn.invars]
            summed = plan.softmax.get(k) or plan.logs.get(k)
            exponent = _read(env, summed[0]) if summed is not None else None
            if summed is None or not all(type(v) is Pair for v in (*inputs, exponent)):
                outputs = _equation(eqn, inputs, where, sites)
            elif k in plan.softmax:  # e / Σe
                outputs = [softmaxes.softmax(exponent, inputs[1], summed[1], rescale, attach)]
            else:  # log Σe
                outputs = [softmaxes.log_of_sum(exponent, inputs[0], summed[1], attach)]
        for var, value in zip(eqn.outvars, outputs, strict=True):
            if not isinstance(var, core.DropVar):
                env[var] = value

    for k, eqn in enumerate(jaxpr.eqns):
        if k not in plan.skip:
            evaluate(k, eqn)
    return [_read(env, v) for v in jaxpr.outvars]


def _side(values: Sequence[Value], side: str) -> list[Array]:
    return [getattr(v, side) if isinstance(v, Pair) else v for v in values]


def _both(eqn: Any, inputs: Sequence[Value]) -> list[Value]:
    """The primitive on each side (linear in what depends on the input)."""
    xs = eqn.primitive.bind(*_side(inputs, "x"), **eqn.params)
    rs = eqn.primitive.bind(*_side(inputs, "r"), **eqn.params)
    if eqn.primitive.multiple_results:
        return [Pair(x, r) for x, r in zip(xs, rs, strict=True)]
    return [Pair(xs, rs)]


def _refuse(eqn: Any, where: str, why: str) -> UnsupportedOperationError:
    """The refusal of ``eqn`` by its primitive's name (and the functions it sits in), with the JAX engine's advice."""
    place = f" in {where}" if where else ""
    return UnsupportedOperationError([(f"JAX primitive {eqn.primitive.name!r}{place}", why, "jax")])


def _linear_here(name: str, found: list[int], operands: int) -> bool:
    """Whether the primitive ``name`` is linear in its input-dependent operands at ``found`` (of ``operands``): the
    only operations a complex input-dependent value is followed through, with the magnitude (a complex multiplier
    would need its conjugate in the backward)."""
    if name in BILINEAR and len(found) == 2 or name == "div" and 1 in found:
        return False
    if name in ("convert_element_type", "stop_gradient"):
        return True
    return name in LINEAR and all(i in LINEAR_AT.get(name, range(operands)) for i in found)


def _equation(eqn: Any, inputs: list[Value], where: str, sites: Sites | None = None) -> list[Value]:
    """``eqn`` by its rule (:func:`_by_rule`), with the marks of a normalization written by hand: a product of an
    inverse root or a division by a root takes the normalizations' rule, and a result gets its mark."""
    found = [i for i, v in enumerate(inputs) if isinstance(v, Pair) and not isinstance(v, Ids)]
    if len(found) == 2 and len(inputs) == 2:
        normalized = normalizing(eqn.primitive.name, inputs[0], inputs[1])
        if normalized is not None:
            return [normalized]
    outputs = _by_rule(eqn, inputs, where, sites)
    if len(found) == 1 and len(outputs) == 1 and type(outputs[0]) is Pair:
        mark = mark_of(eqn, inputs, found[0])
        if mark is not None:
            return [replace(outputs[0], mark=mark)]
    return outputs


def _by_rule(eqn: Any, inputs: list[Value], where: str, sites: Sites | None = None) -> list[Value]:
    name = eqn.primitive.name
    found = [i for i, v in enumerate(inputs) if isinstance(v, Pair)]
    if not found:  # nothing here depends on the input: one value for both sides
        out = eqn.primitive.bind(*inputs, **eqn.params)
        return list(out) if eqn.primitive.multiple_results else [out]
    if name in CALLS:
        return _call(eqn, inputs, where, sites)
    if any(isinstance(inputs[i], Ids) for i in found):
        return _ids(eqn, inputs, found, where, sites)
    if name == "scan":
        return _scan(eqn, inputs, where)
    if name == "stop_gradient":  # changes training, not the function: the identity (its change is attributed)
        return [inputs[0]]
    if name == "abs" and found == [0] and jnp.iscomplexobj(inputs[0].x):
        return [modulus(inputs[0])]  # a spectrum's magnitude: the two parts' exact Shapley split
    if any(jnp.iscomplexobj(inputs[i].x) for i in found) and not _linear_here(name, found, len(inputs)):
        raise _refuse(eqn, where, "it takes a complex input-dependent operand, and its rule is written for real values")
    if name == "convert_element_type":
        new = eqn.params["new_dtype"]
        if jnp.issubdtype(new, jnp.complexfloating) and jnp.finfo(new).bits >= jnp.finfo(inputs[0].x.dtype).bits:
            return _both(eqn, inputs)  # a real or complex value made complex: linear over the reals
        if not jnp.issubdtype(new, jnp.floating):
            raise _refuse(eqn, where, f"it casts an input-dependent value to {new} (a step function)")
        if jnp.finfo(new).bits < jnp.finfo(inputs[0].x.dtype).bits:  # rounding: an elementwise function, by Rescale
            return [rescale(lambda t: eqn.primitive.bind(t, **eqn.params), inputs[0], None, name, smooth=False)]
        return _both(eqn, inputs)
    if name in BILINEAR and len(found) == 2:
        a, b = inputs

        def fn(p: Array, q: Array) -> Array:
            return eqn.primitive.bind(p, q, **eqn.params)

        return [bilinear(fn, a, b)]
    if name == "div" and 1 in found:
        return [quotient(inputs[0], inputs[1])]
    if name in LINEAR and all(i in LINEAR_AT.get(name, range(len(inputs))) for i in found):
        return _both(eqn, inputs)
    if name in ("integer_pow", "pow") and found == [0]:
        exponent = eqn.params.get("y", inputs[1] if len(inputs) > 1 else None)
        entry = {2: BY_NAME["square"], -1: BY_NAME["reciprocal"]}.get(exponent) if name == "integer_pow" else None

        def power(t: Array) -> Array:
            return eqn.primitive.bind(t, *inputs[1:], **eqn.params)

        if entry is None and name == "integer_pow":  # the closed form where both bases are positive, else Rescale
            u = inputs[0]
            ux = lax.stop_gradient(u.x)
            value, reference, generic = rescaled(power, u, None, smooth=True)
            closed = secant.power_slope(JAX, ux, u.r, float(exponent))
            multiplier = jnp.where(jnp.isfinite(closed), closed, generic)
            return [Pair(attach(value, [(u.x, multiplier)]), reference)]
        return [rescale(power, inputs[0], entry, name, smooth=True)]
    if name in UNARY and len(inputs) == 1:
        entry = UNARY[name]
        return [rescale(lambda t: eqn.primitive.bind(t, **eqn.params), inputs[0], entry, name, entry.smooth)]
    if name in BINARY_PRIMITIVES and len(inputs) == 2:
        smooth = BINARY_PRIMITIVES[name]
        if len(found) == 1:
            i = found[0]

            def one(t: Array) -> Array:
                operands = list(inputs)
                operands[i] = t
                return eqn.primitive.bind(*operands, **eqn.params)

            return [rescale(one, inputs[i], None, name, smooth)]

        def fn2(p: Array, q: Array) -> Array:
            return eqn.primitive.bind(p, q, **eqn.params)

        return [shapley2(fn2, inputs[0], inputs[1], smooth)]
    if name in ("reduce_max", "reduce_min") and found == [0]:
        return [max_over(eqn, inputs[0], largest=name == "reduce_max")]
    if name in ("argmax", "argmin", "sort", "top_k", "cumlogsumexp", "cummax", "cummin"):
        raise _refuse(eqn, where, "orderings along an axis (sorting, top-k, picks by an argmax) have no JAX rule yet")
    if name in ("while", "cond"):
        raise _refuse(eqn, where, "control flow decided by an input-dependent value (a branch or a loop) has no rule")
    if name in ("eq", "ne", "lt", "le", "gt", "ge", "sign", "floor", "ceil", "round", "is_finite", "and", "or", "not"):
        raise _refuse(eqn, where, "it compares or rounds an input-dependent value (a step function)")
    raise _refuse(eqn, where, f"it has no rule for an input-dependent operand at position(s) {found}")


def _closed(value: Any) -> tuple[core.Jaxpr, Sequence[Any]]:
    if isinstance(value, core.ClosedJaxpr):
        return value.jaxpr, value.consts
    return value, ()


def _ids(eqn: Any, inputs: list[Value], found: list[int], where: str, sites: Sites | None) -> list[Value]:
    """A primitive on values computed from integer inputs: integer and boolean results on both sides (indices,
    masks of the ids); an embedding's lookup or a cast to a float is a :class:`Sites` site; anything else is
    refused."""
    name = eqn.primitive.name
    sources = {inputs[i].source for i in found if isinstance(inputs[i], Ids)}
    source = sources.pop() if len(sources) == 1 else -1
    outs = eqn.outvars
    integral = all(not jnp.issubdtype(getattr(v.aval, "dtype", jnp.float32), jnp.inexact) for v in outs)
    if integral and all(isinstance(inputs[i], Ids) for i in found) and name != "scan":
        kept = all(inputs[i].kept and _keeps_positions(eqn, inputs[i]) for i in found)
        return [Ids(p.x, p.r, source, kept) for p in _both(eqn, inputs)]
    if sites is None:
        raise _refuse(eqn, where, "integer inputs (token ids) are read inside a loop or a nested function here")
    if source < 0:
        raise _refuse(eqn, where, "it mixes values computed from several integer inputs")
    if not all(inputs[i].kept for i in found if isinstance(inputs[i], Ids)):
        raise _refuse(eqn, where, "the ids reach it rearranged (sliced, reversed, transposed, reshaped or reduced): rnnshap "
                      "credits a token at its own position, so it attributes ids looked up or cast where they stand")
    if name == "gather" and found == [1] and not isinstance(inputs[0], Pair):  # an embedding's lookup at the ids
        ids, numbers = inputs[1], eqn.params["dimension_numbers"]
        x, r = (eqn.primitive.bind(inputs[0], side, **eqn.params) for side in (ids.x, ids.r))
        positions = ids.x.shape[:-1]
        if tuple(numbers.offset_dims) == tuple(range(len(positions), x.ndim)) and x.shape[: len(positions)] == positions:
            return [sites.enter(source, "token", x, r)]
        raise _refuse(eqn, where, "a lookup at token ids that does not keep one row per id (rnnshap reads nnx.Embed's)")
    if name == "convert_element_type" and jnp.issubdtype(eqn.params["new_dtype"], jnp.floating):  # ids used as numbers
        (value,) = _both(eqn, inputs)
        return [sites.enter(source, "number", value.x, value.r)]
    raise _refuse(eqn, where, "values computed from an integer input (a mask of token ids, say) reach it; rnnshap's "
                  "JAX engine attributes integer inputs where they become floats: an embedding's lookup or a cast")


def _elementwise(jaxpr: core.Jaxpr) -> bool:
    """Whether every value of ``jaxpr`` that depends on its first input has that input's shape (no reduction, no
    rearrangement), through elementwise primitives and calls of them: a named call taken whole as one function."""
    shape = tuple(getattr(jaxpr.invars[0].aval, "shape", ()))
    marked = {jaxpr.invars[0]}
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, core.Literal) and v in marked for v in eqn.invars):
            if eqn.primitive.name not in CALLS and eqn.primitive.name not in ENTRYWISE:
                return False
            for v in eqn.outvars:
                if tuple(getattr(v.aval, "shape", ())) != shape:
                    return False
                marked.add(v)
    return True


def _call(eqn: Any, inputs: list[Value], where: str, sites: Sites | None = None) -> list[Value]:
    """A nested function: its own jaxpr, by the same rules (a custom derivative is the rules' anyway)."""
    key = CALLS[eqn.primitive.name]
    held = eqn.params.get(key) if key else None
    if held is None:
        raise _refuse(eqn, where, "its function is not given as a jaxpr")
    jaxpr, consts = _closed(held)
    inner = eqn.params.get("name") or eqn.primitive.name
    entry = FUNCTIONS.get(str(inner))
    found = [i for i, v in enumerate(inputs) if isinstance(v, Pair)]
    named = found == [0] and not isinstance(inputs[0], Ids) and len(eqn.outvars) == 1
    if entry is not None and named and eqn.outvars[0].aval.shape == inputs[0].x.shape and _elementwise(jaxpr):
        closed = core.ClosedJaxpr(jaxpr, consts)
        rest = inputs[1 : len(jaxpr.invars)]

        def function(t: Array) -> Array:  # the named call itself, one elementwise function of its first operand
            return core.jaxpr_as_fun(closed)(t, *rest)[0]

        # (the function itself, by the quotient: a closed-form or two-result secant holds for that primitive alone)
        generic = entry if entry.family != "secant" and entry.near is None else None
        return [rescale(function, inputs[0], generic, str(inner), entry.smooth)]
    count = len(jaxpr.invars)
    return run(jaxpr, consts, inputs[:count], where=f"{where} > {inner}" if where else str(inner), sites=sites)


def scan_split(eqn: Any) -> tuple[int, int]:
    """A ``scan`` equation's numbers of constants and carries, as JAX up to 0.10 writes them; else refused by name (JAX
    0.11 writes its scan otherwise: seen on a GPU machine's JAX 0.11.2, ``KeyError: 'num_consts'``)."""
    p = eqn.params
    if "num_consts" not in p or "num_carry" not in p:
        import jax

        raise RnnShapError(
            f"rnnshap's JAX engine reads lax.scan (nnx.RNN, linen.RNN) as JAX 0.6-0.10 writes it; JAX {jax.__version__} "
            f"writes it with the parameters {sorted(p)}. Install jax<0.11 (pip install 'jax<0.11' 'jaxlib<0.11'), or "
            "explain the model in the Shapley mode (rnnshap.ShapleyExplainer), which needs only its forward."
        )
    return int(p["num_consts"]), int(p["num_carry"])


def _scan(eqn: Any, inputs: list[Value], where: str) -> list[Value]:
    """``lax.scan``: the body by the rules at every step, with each carry a :class:`Pair` where it depends on the
    input at some step (found by iterating the body's dependence to its fixed point)."""
    p = eqn.params
    body, body_consts = _closed(p["jaxpr"])
    n_consts, n_carry = scan_split(eqn)
    consts, init, xs = inputs[:n_consts], inputs[n_consts : n_consts + n_carry], inputs[n_consts + n_carry :]
    paired = [isinstance(v, Pair) for v in init]
    while True:  # which carries depend on the input at some step
        after = depends(body, [isinstance(v, Pair) for v in consts] + paired + [isinstance(v, Pair) for v in xs])
        grown = [a or b for a, b in zip(paired, after[:n_carry], strict=True)]
        if grown == paired:
            break
        paired = grown
    init = [v if isinstance(v, Pair) or not lift else Pair(v, v) for v, lift in zip(init, paired, strict=True)]

    def pack(values: Sequence[Value], mask: Sequence[bool]) -> list[Any]:
        return [(v.x, v.r) if m else v for v, m in zip(values, mask, strict=True)]

    def unpack(values: Sequence[Any], mask: Sequence[bool]) -> list[Value]:
        return [Pair(*v) if m else v for v, m in zip(values, mask, strict=True)]

    x_paired = [isinstance(v, Pair) for v in xs]
    out_paired: list[bool] = []

    def step(carry: list[Any], x: list[Any]) -> tuple[list[Any], list[Any]]:
        outs = run(body, body_consts, list(consts) + unpack(carry, paired) + unpack(x, x_paired), where)
        new_carry = [v if isinstance(v, Pair) or not m else Pair(v, v) for v, m in zip(outs[:n_carry], paired, strict=True)]
        ys = outs[n_carry:]
        out_paired[:] = [isinstance(v, Pair) for v in ys]
        return pack(new_carry, paired), pack(ys, out_paired)

    carry, ys = lax.scan(step, pack(init, paired), pack(xs, x_paired), length=p["length"], reverse=p["reverse"],
                         unroll=p["unroll"])  # fmt: skip
    return unpack(carry, paired) + unpack(ys, out_paired)


def float_dtypes(jaxpr: core.Jaxpr) -> set[Any]:
    """The floating dtypes that ``jaxpr`` (and the functions it calls) computes in."""
    dtypes = (getattr(v.aval, "dtype", None) for eqn in jaxpr.eqns for v in eqn.outvars)
    found = {d for d in dtypes if d is not None and jnp.issubdtype(d, jnp.floating)}
    for inner in core.subjaxprs(jaxpr):
        found |= float_dtypes(inner)
    return found


def depends(jaxpr: core.Jaxpr, inputs: Sequence[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on the inputs marked True (any input of an equation: all its outputs)."""
    marked = {v for v, m in zip(jaxpr.invars, inputs, strict=True) if m}
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, core.Literal) and v in marked for v in eqn.invars):
            marked.update(v for v in eqn.outvars if not isinstance(v, core.DropVar))
    return [not isinstance(v, core.Literal) and v in marked for v in jaxpr.outvars]


__all__ = ["Ids", "Pair", "Sites", "attach", "depends", "float_dtypes", "run"]
