r"""Elementwise rules: Rescale for one input-dependent operand, exact Shapley for several.

For an elementwise operation :math:`y = g(a_1, \dots, a_n)` whose operands all depend on the
explained input, the exact Shapley value of operand :math:`i` (each element is its own game) is

.. math::
    \phi_i = \sum_{S \subseteq N \setminus \{i\}} \frac{|S|!\,(n-|S|-1)!}{n!}
             \bigl[g(S \cup \{i\}) - g(S)\bigr],

where :math:`g(S)` evaluates :math:`g` with the operands in :math:`S` at their input values and
the others at their reference values. The multiplier is :math:`m_i = \phi_i / \Delta a_i`, so
:math:`\sum_i m_i \Delta a_i = g(a) - g(a_r)` holds exactly. With one operand this is the
Rescale rule :math:`m = (f(x) - f(r)) / (x - r)`. For a product it is the midpoint rule
:math:`m_a = (b + b_r)/2`, :math:`m_b = (a + a_r)/2`.

Where :math:`|\Delta a_i|` is too small for the quotient to be accurate, the multiplier is the
Shapley-weighted derivative with operand :math:`i` at the midpoint :math:`(a_i + a_{i,r})/2`
(for smooth operations) or at the input (for piecewise operations, whose quotient is exact down
to :math:`\Delta = 0`).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Sequence

import torch

from ..formulas import bind, pairs
from ..formulas import secant as formulas
from ..formulas.torch_ops import TORCH, gradient, scalar
from ..formulas.torch_ops import vmap_batched as _IS_BATCHED
from .base import OpCall, Rule

Tensor = torch.Tensor
Players = Sequence[Tensor]

MAX_SHAPLEY_PLAYERS = 4


def small_delta_threshold(dtype: torch.dtype, smooth: bool) -> float:
    """Below this |Δ| the multiplier is taken from the derivative instead of the quotient
    (:func:`rnnshap.formulas.secant.small_delta_threshold`: ``eps ** (1/3)`` for smooth functions, 0 else)."""
    return formulas.small_delta_threshold(TORCH, dtype, smooth)


class MissingValues:
    """What one input pass met: ``seen`` is set when a missing-value rule met a NaN (or ±inf) entry."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False


_STATE: ContextVar[MissingValues | None] = ContextVar("rnnshap_missing_values", default=None)


def missing_values_state() -> MissingValues | None:
    """The :class:`MissingValues` of the pass running now (None outside an input pass)."""
    return _STATE.get()


@contextlib.contextmanager
def tracking_missing_values() -> Iterator[MissingValues]:
    """Run an input pass with a fresh :class:`MissingValues`, which its multiplier rules keep for their backward."""
    state = MissingValues()
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def saw_missing_values() -> None:
    """Mark the running pass: a missing value met a rule, so its backward must stop ``0 · NaN``."""
    state = _STATE.get()
    if state is not None:
        state.seen = True


#: ``backward(ctx, grad)`` of :func:`attach`: the gradients of the operands, from the saved tensors
#: (``ctx.saved_tensors``), ``ctx.state``, ``ctx.shapes`` (the operands') and ``ctx.missing``
Backward = Callable[[Any, Tensor], Sequence[Any]]


class _Attached(torch.autograd.Function):
    """The PyTorch engine's one autograd node for a rule's multipliers (:func:`attach`): a precomputed output whose
    backward is the rule's own function of the incoming gradient. Only the tensors the rule names are saved, so
    in-place changes to the operands after this op cannot corrupt the backward pass."""

    @staticmethod
    def forward(ctx: Any, computed: Callable[[], tuple[Tensor, Players, Backward, Any]], *operands: Tensor) -> Tensor:  # type: ignore[override]
        output, saved, ctx.backward_of, ctx.state = computed()
        ctx.save_for_backward(*saved)
        ctx.shapes = [op.shape for op in operands]
        ctx.missing = _STATE.get()  # (a pass that meets missing values stops 0 · NaN: rules/missing.py)
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return (None, *ctx.backward_of(ctx, grad))


def attach(
    output: Tensor, operands: Sequence[Tensor], backward: Backward, saved: Sequence[Tensor] = (), state: Any = None
) -> Tensor:
    """``output`` (computed, no gradient) as one autograd node of ``operands`` whose backward is
    ``backward(ctx, grad)``, the gradients of the operands in order (None for one that takes none), with ``saved``
    as ``ctx.saved_tensors`` and ``state`` as ``ctx.state``: the one way the PyTorch engine attaches a rule's
    multipliers (the Keras and JAX engines' ``attach`` add an exact zero whose derivative is the multiplier)."""
    # The output is handed over in a closure: a custom Function may not return one of its inputs.
    computed = (output, saved, backward, state)
    if _TRANSFORMS_ACTIVE is None or _TRANSFORMS_ACTIVE():
        return _Attached.apply(lambda: computed, *operands)
    # what Function.apply does when no functorch transform is active (this Function has no
    # setup_context), without its Python steps: it is called for every nonlinear operation
    return _APPLY(lambda: computed, *operands)


_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)
try:
    _APPLY = super(torch.autograd.Function, _Attached).apply
except AttributeError:  # a torch whose Function is laid out otherwise: Function.apply always
    _TRANSFORMS_ACTIVE = None


def _multiplied(ctx: Any, grad: Tensor) -> list[Tensor]:
    """The backward of :func:`with_multipliers`: the gradient times each multiplier (and the common factor, once),
    summed to each operand's shape."""
    grads = []
    factor = ctx.state
    if factor is not None:
        grad = grad * factor
    unreached = None
    if ctx.missing is not None and ctx.missing.seen:
        unreached = grad == 0  # entries nothing downstream depends on (a masked-out NaN): 0, never 0 · NaN
    for m, shape in zip(ctx.saved_tensors, ctx.shapes, strict=False):
        g = grad * m
        if unreached is not None:
            g = g.masked_fill(unreached, 0.0)
        grads.append(g if g.shape == shape else g.sum_to_size(shape))
    return grads


def with_multipliers(output: Tensor, operands: Players, multipliers: Players, factor: Tensor | None = None) -> Tensor:
    """Attach ``multipliers`` (one per operand, broadcast to ``output``) as the gradient of ``output``;
    each times ``factor`` (a 0-d tensor), when given, which the backward applies once for all."""
    if not any(op.requires_grad for op in operands):
        return output
    saved = [m.detach() if m.requires_grad else m for m in multipliers]
    return attach(output.detach(), operands, _multiplied, saved, factor)


def _derivative(g: Callable[[list[Tensor]], Tensor], players: list[Tensor], index: int, shape: torch.Size) -> Tensor:
    """Elementwise ∂g/∂players[index], broadcast to ``shape``."""
    with torch.enable_grad():
        point = players[index].detach()
        if point.shape != shape or point._base is not None or not point.is_contiguous():
            point = point.expand(shape).clone()  # (a fresh tensor of the output's shape is taken as it is)
        point.requires_grad_(True)
        args = list(players)
        args[index] = point
        value = g(args)
        (grad,) = gradient(value, torch.ones_like(value), [point])  # (no sympy: see there)
    return torch.zeros(shape, dtype=point.dtype, device=point.device) if grad is None else grad


def shapley_multipliers(
    g: Callable[[list[Tensor]], Tensor],
    inputs: Players,
    references: Players,
    smooth: bool = True,
    reference_output: Tensor | None = None,
    kinks: tuple[float, ...] = (),
    derivative: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Exact Shapley multipliers of an elementwise function of ``len(inputs)`` operands.

    Returns ``(output, reference_output, multipliers)``; each multiplier has the output's shape.
    ``reference_output``, when given, is ``g(references)`` computed already (it is not computed again).
    ``kinks``, ``derivative``: of a unary ``g``, see :func:`rescale_multiplier`.
    """
    if len(inputs) == 1:
        output, ref_output, multiplier = rescale_multiplier(
            g, inputs[0], references[0], smooth, reference_output, kinks, derivative=derivative
        )
        return output, ref_output, [multiplier]
    return coalition_multipliers(g, inputs, references, smooth, reference_output)


def _gelu_derivative(call: OpCall) -> Callable[[Tensor], Tensor] | None:
    approximate = call.kwargs.get("approximate", "none")  # (keyword-only)
    if not isinstance(approximate, str):
        return None
    return lambda at: torch.ops.aten.gelu_backward(torch.ones_like(at), at, approximate=approximate)


def _silu_derivative(call: OpCall) -> Callable[[Tensor], Tensor] | None:  # noqa: ARG001 (the table's signature)
    return lambda at: torch.ops.aten.silu_backward(torch.ones_like(at), at)


#: unary activations whose derivative at a point is one backward kernel (the one autograd runs for them, on
#: autograd's ones): the midpoint derivative without the forward and the graph autograd would take for it
_DIRECT_DERIVATIVES: dict[Any, Callable[[OpCall], Callable[[Tensor], Tensor] | None]] = {
    torch._C._nn.gelu: _gelu_derivative,
    torch.nn.functional.silu: _silu_derivative,
}


def direct_derivative(call: OpCall) -> Callable[[Tensor], Tensor] | None:
    """``call``'s derivative in its one input-dependent operand (its first argument) as one backward kernel, where
    :data:`_DIRECT_DERIVATIVES` has it: the values of :func:`_derivative` (the same kernel on the same operands),
    without the forward; None otherwise."""
    make = _DIRECT_DERIVATIVES.get(call.fn)
    if make is None or call.tracked != (0,) or not call.leaves[0].is_floating_point():
        return None
    return make(call)


def rescale_multiplier(
    g: Callable[[list[Tensor]], Tensor],
    x: Tensor,
    r: Tensor,
    smooth: bool = True,
    reference_output: Tensor | None = None,
    kinks: tuple[float, ...] = (),
    output: Tensor | None = None,
    derivative: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The one-operand case of :func:`coalition_multipliers` (the Rescale rule), with its values,
    in fewer operations: there the sum over coalitions is one difference with weight 1, so the
    multiplier is the quotient ``(g(x) − g(r)) / Δ``, the derivative (at the midpoint, or at ``x``
    for a piecewise ``g``) where ``|Δ|`` is at most the threshold, and 0 for a non-finite multiplier
    where nothing moves. It is called for every unary activation that has no closed form (silu,
    softplus, elu, gelu, relu, ...) and every extremum with a constant. ``kinks``: points where a
    smooth ``g``'s second derivative jumps (softsign, elu at 0): where ``[r, x]`` holds one inside, the
    midpoint derivative is off by a fraction of Δ, so the quotient is kept there. Returns ``(output,
    reference_output, multiplier)``, the multiplier with the output's shape. ``output``, when given, is ``g([x])``
    computed already (by the caller, from the detached ``x``). ``derivative``, when given, is ``g``'s derivative
    at a point (:func:`direct_derivative`: the one autograd would give, without its forward).
    """
    x, r = x.detach(), r.detach()
    output = g([x]) if output is None else output
    ref_output = g([r]) if reference_output is None else reference_output
    shape = output.shape

    def slope(at: Tensor) -> Tensor:
        if derivative is not None and at.shape == shape and at._base is None and at.is_contiguous():
            return derivative(at)  # (where _derivative would take ``at`` as it is)
        return _derivative(g, [at], 0, shape)

    multiplier = formulas.rescale_multiplier(TORCH, output, ref_output, x, r, slope, smooth, kinks)  # (formulas/secant.py)
    return output, ref_output, multiplier


def coalition_multipliers(
    g: Callable[[list[Tensor]], Tensor],
    inputs: Players,
    references: Players,
    smooth: bool = True,
    reference_output: Tensor | None = None,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """:func:`shapley_multipliers` as the sum over coalitions written out, for any number of operands."""
    n = len(inputs)
    if n > MAX_SHAPLEY_PLAYERS:
        raise ValueError(f"exact Shapley over {n} operands needs 2**{n} evaluations; at most {MAX_SHAPLEY_PLAYERS} are supported")
    inputs = [x.detach() for x in inputs]
    references = [r.detach() for r in references]
    values: dict[int, Tensor] = {}
    for mask in range(2**n):
        if mask == 0 and reference_output is not None:
            values[mask] = reference_output
            continue
        values[mask] = g([inputs[i] if mask >> i & 1 else references[i] for i in range(n)])
    full = 2**n - 1
    shape = values[full].shape

    def derivative(players: list[Tensor], i: int) -> Tensor:
        return _derivative(g, players, i, shape)

    multipliers = pairs.coalition_multipliers(TORCH, values, inputs, references, derivative, smooth)
    return values[full], values[0], multipliers  # (rnnshap/formulas/pairs.py)


def _finite_where_still(multiplier: Tensor, x: Tensor, r: Tensor, output: Tensor, ref_output: Tensor) -> Tensor:
    """0 instead of a non-finite multiplier where nothing moves (:func:`rnnshap.formulas.secant.finite_where_still`)."""
    return formulas.finite_where_still(TORCH, multiplier, x, r, output, ref_output)


def shapley(
    g: Callable[[list[Tensor]], Tensor],
    inputs: Players,
    references: Players,
    smooth: bool = True,
    reference_output: Tensor | None = None,
    kinks: tuple[float, ...] = (),
    derivative: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply ``g`` elementwise with exact Shapley multipliers; returns ``(output, reference_output)``.
    ``derivative``: of a unary ``g``, see :func:`rescale_multiplier`."""
    output, ref_output, multipliers = shapley_multipliers(g, inputs, references, smooth, reference_output, kinks, derivative)
    return with_multipliers(output, inputs, multipliers), ref_output


_tanh_secant_near = bind(formulas.tanh_secant_near, TORCH)
_sigmoid_secant_near = bind(formulas.sigmoid_secant_near, TORCH)


#: smooth unary operations whose exact secant slope for small ``|Δ|`` has a closed form in their two
#: results (see ``rescale_from_result``)
RESULT_SECANTS: dict[Any, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    torch.sigmoid: _sigmoid_secant_near,
    torch.Tensor.sigmoid: _sigmoid_secant_near,
    torch.tanh: _tanh_secant_near,
    torch.Tensor.tanh: _tanh_secant_near,
}


def rescale_from_result(
    f: Callable[[Tensor], Tensor],
    secant_near: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    r: Tensor,
    reference_output: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The Rescale rule of a smooth unary ``f`` of ``RESULT_SECANTS`` (sigmoid, tanh) on real
    floating-point ``x`` and ``r``, in few operations: the where-form of
    :func:`rnnshap.formulas.secant.near_rescale_multiplier`, the quotient ``(f(x) − f(r)) / Δ`` where ``|Δ|`` is
    above the threshold (the generic rule's values, bit for bit) and ``secant_near(f(x), f(r), Δ)``, the secant in
    closed form, below it, where the quotient would cancel (the generic rule takes the derivative at the midpoint
    there, within ``Δ²`` of the secant; the closed form is within the rounding, with no second evaluation of ``f``
    nor of its derivative). The least and greatest ``|Δ|`` (one float reduction) tell whether the closed form and
    the check for non-finite multipliers are needed.

    Returns ``(output, reference_output, multiplier)``.
    """
    x, r = x.detach(), r.detach()
    ref_output = f(r) if reference_output is None else reference_output
    output = f(x)
    return output, ref_output, formulas.near_rescale_multiplier(TORCH, secant_near, output, ref_output, x, r)


def rescale(f: Callable[[Tensor], Tensor], x: Tensor, r: Tensor, smooth: bool = True) -> tuple[Tensor, Tensor]:
    """Apply the unary elementwise ``f`` with the Rescale rule; returns ``(f(x), f(r))``."""
    return shapley(lambda p: f(p[0]), [x], [r], smooth)


def product(a: Tensor, b: Tensor, a_ref: Tensor, b_ref: Tensor) -> tuple[Tensor, Tensor]:
    """``a * b`` with the exact two-player Shapley rule: m_a = (b + b_r)/2, m_b = (a + a_r)/2."""
    output = a.detach() * b.detach()
    ref_output = a_ref * b_ref
    if a is b and a_ref is b_ref:  # a square: the two midpoints are one
        m_a = m_b = pairs.midpoint(TORCH, a.detach(), a_ref).expand(output.shape)
    else:
        m_a, m_b = pairs.midpoint_multipliers(TORCH, a.detach(), b.detach(), a_ref, b_ref)
        m_a, m_b = m_a.expand(output.shape), m_b.expand(output.shape)
    return with_multipliers(output, [a, b], [m_a, m_b]), ref_output


class Shapley(Rule):
    """Exact Shapley over the input-dependent operands of an elementwise operation.

    ``linear_in`` lists positional arguments in which the operation is linear when it is the only
    input-dependent operand (the numerator of a division), so the plain gradient is used then.
    ``smooth=False`` marks piecewise operations (relu, clamp, maximum): their multipliers are
    never taken from a derivative at a midpoint, which could sit on a kink. ``kinks`` marks the points
    where a smooth unary operation's second derivative jumps (softsign, elu at 0): no midpoint
    derivative across them (:func:`rescale_multiplier`).
    """

    def __init__(self, smooth: bool = True, linear_in: Sequence[int] = (), kinks: Sequence[float] = ()) -> None:
        self.smooth = smooth
        self.linear_in = tuple(linear_in)
        self.kinks = tuple(float(k) for k in kinks)

    #: the engine may keep the reference pass's output for ``OpCall.ref_output`` (see tape.py)
    reuses_reference_output = True

    def is_linear(self, call: OpCall) -> bool:
        if not self.linear_in:
            return False
        positions = call.tracked_positions()
        return len(positions) == 1 and positions[0] in self.linear_in

    def attribute(self, call: OpCall) -> Any:
        derivative = direct_derivative(call) if self.smooth and len(call.tracked) == 1 else None
        output, _ = shapley(call.evaluate, call.inputs, call.references, self.smooth, call.ref_output, self.kinks, derivative)
        return output

    def __repr__(self) -> str:
        kinks = f", kinks={self.kinks}" if self.kinks else ""
        return f"{type(self).__name__}(smooth={self.smooth}{kinks})"


class Rescale(Shapley):
    """The Rescale rule, m = (f(x) − f(r)) / (x − r), for an operation with one input-dependent operand."""

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 1:
            raise ValueError(
                f"Rescale applies to operations with one input-dependent operand; {call.name} has "
                f"{len(call.tracked)}. Use rnnshap.rules.Shapley() for several operands."
            )
        secant_near = RESULT_SECANTS.get(call.fn) if self.smooth and len(call.leaves) == 1 else None
        x = call.leaves[0]
        if secant_near is None or not x.is_floating_point():  # (complex tanh is unbounded: the generic path)
            return super().attribute(call)
        output, _, multiplier = rescale_from_result(call.fn, secant_near, x, call.ref_leaves[0], call.ref_output)
        return with_multipliers(output, [x], [multiplier])


class Product(Rule):
    """Elementwise multiplication: linear in one operand, exact two-player Shapley in two."""

    def is_linear(self, call: OpCall) -> bool:
        return len(call.tracked) == 1

    def attribute(self, call: OpCall) -> Any:
        (a, b), (a_ref, b_ref) = call.inputs, call.references
        a_in, b_in = a.detach(), b.detach()
        # product() without the reference output, which is not needed here, without expanding the
        # multipliers to the output's shape (the backward broadcasts them the same way), and with
        # their common ½ applied once to the gradient (exact: a power of two)
        output = a_in * b_in
        return with_multipliers(output, [a, b], [b_in + b_ref, a_in + a_ref], scalar(0.5, output))


class Bilinear(Rule):
    r"""Operations linear in each of two operands (matmul, bmm, einsum of two tensors).

    For a bilinear :math:`f`, :math:`f(A,B) - f(A_r,B_r) = f(\Delta A, \bar B) + f(\bar A, \Delta B)`
    with midpoints :math:`\bar A = (A + A_r)/2`: the Shapley split of every product term. The
    gradient is therefore taken at the midpoints while the value stays :math:`f(A, B)`.
    """

    def is_linear(self, call: OpCall) -> bool:
        return len(call.tracked) == 1

    def attribute(self, call: OpCall) -> Any:
        if len(call.tracked) != 2:
            raise ValueError(f"{call.name}: the bilinear rule takes two input-dependent operands, got {len(call.tracked)}")
        (a, b), (a_ref, b_ref) = call.inputs, call.references
        b_mid, a_mid = (m.detach() for m in pairs.midpoint_multipliers(TORCH, a, b, a_ref, b_ref))
        if call.name in _MATRIX_PRODUCTS and not call.kwargs and len(call.args) == 2 and call.args[0] is a and call.args[1] is b:
            second = fixed_left_product(a_mid, b, lambda left, right: call.evaluate([left, right]))  # (left, right: positional)
        else:
            second = call.evaluate([a_mid, b])
        surrogate = call.evaluate([a, b_mid]) + second
        with torch.no_grad():
            value = call.evaluate([a.detach(), b.detach()])
        return surrogate + (value - surrogate).detach()


#: batched matrix products whose first two arguments are the left and the right operand (:func:`fixed_left_product`;
#: the engine names ``a @ b`` ``torch.Tensor.matmul``)
_MATRIX_PRODUCTS = frozenset({"torch.bmm", "torch.Tensor.bmm", "torch.matmul", "torch.Tensor.matmul"})


#: the least entries of one matrix of ``fixed`` for which :func:`fixed_left_product` copies it once for all outputs
#: (attention over 32 steps): below, vmap's copies cost less than the operator's own Python (measured on 2 cores:
#: PatchTST's 5 x 5 weights 5 % slower a call, a TransformerEncoder's 50 x 50 faster)
_FIXED_LEFT_ENTRIES = 1024


def fixed_left_product(fixed: Tensor, b: Tensor, product: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``product(fixed, b)``, a batched matrix product (``torch.matmul``, ``bmm``) of a ``fixed`` operand (no gradient)
    and ``b`` of the same batch axes, (…, rows, columns) each, matrices of more than one row and column (``fixed``'s of
    :data:`_FIXED_LEFT_ENTRIES` entries or more), real, of one dtype, on the CPU and outside autocast, with the gradient
    torch's ``bmm`` backward gives ``b``, ``fixedᵀ @ grad``: the same products of the same operands, and under the
    explainer's vmap over the outputs (:func:`fixed_left_gradient`) ``fixedᵀ`` copied once for all outputs, where vmap's
    rule for ``bmm`` copies it once per output. Anything else: ``product``'s own gradient. The midpoint rule's second
    term (:class:`Bilinear`, attention's weights times values), whose ``fixed`` is attention's weights at the midpoints,
    (pairs × heads, T, T), the largest tensor of the call."""
    if not (
        fixed.dim() == b.dim() >= 3 and fixed.shape[:-2] == b.shape[:-2] and min(*fixed.shape[-2:], b.shape[-1]) > 1
        and fixed.shape[-2] * fixed.shape[-1] >= _FIXED_LEFT_ENTRIES and b.requires_grad and fixed.dtype == b.dtype
        and not b.is_complex() and b.device.type == "cpu" == fixed.device.type and not torch.is_autocast_enabled("cpu")
    ):  # fmt: skip (a matrix of one row or column: its strides there are torch's choice, which its kernels read)
        return product(fixed, b)
    with torch.no_grad():
        value = product(fixed, b)
    return attach(value, [b], _fixed_left_backward, [fixed])


def _fixed_left_backward(ctx: Any, grad: Tensor) -> list[Tensor]:
    (fixed,) = ctx.saved_tensors
    if _IS_BATCHED is not None and _IS_BATCHED(grad):
        return [fixed_left_gradient(fixed, grad)]
    return [_transposed_product(fixed, grad)]


def _as_bmm_operand(t: Tensor) -> Tensor:
    """``t`` (…, rows, columns) as ``torch.matmul`` hands it to ``bmm``: (batch, rows, columns), a view where its batch
    axes fold into one, else a copy."""
    return t.reshape(-1, *t.shape[-2:])


def _transposed_product(fixed: Tensor, grad: Tensor) -> Tensor:
    """``fixedᵀ @ grad`` as torch's ``bmm`` backward takes it for the right operand (``fixed`` as ``matmul`` handed it
    to ``bmm``, transposed), back in ``grad``'s batch axes."""
    product = _as_bmm_operand(fixed).transpose(1, 2).bmm(_as_bmm_operand(grad))
    return product.view(*grad.shape[:-2], *product.shape[-2:])


@torch.library.custom_op("rnnshap::fixed_left_gradient", mutates_args=())
def fixed_left_gradient(fixed: Tensor, grad: Tensor) -> Tensor:
    """``fixedᵀ @ grad``, (…, rows, columns) each: :func:`fixed_left_product`'s gradient as an operator, called under vmap
    only (its rule, :func:`_fixed_left_vmap`, copies ``fixedᵀ`` once for all outputs)."""
    return _transposed_product(fixed, grad)


@fixed_left_gradient.register_fake
def _(fixed: Tensor, grad: Tensor) -> Tensor:
    return grad.new_empty((*grad.shape[:-2], fixed.shape[-1], grad.shape[-1]))


def _fixed_left_vmap(info: Any, in_dims: tuple[int | None, int | None], fixed: Tensor, grad: Tensor) -> tuple[Tensor, int]:
    """The rule of :func:`fixed_left_gradient` under vmap: where only the gradients are batched (K outputs), the products
    vmap's rule for ``bmm`` runs, on the same operands laid out alike (``fixedᵀ`` as a copy, the gradients as one
    (K · batch, rows, columns) tensor), with the same result (K · batch, columns of fixed, columns), the outputs first,
    bit for bit, but ``fixedᵀ`` copied once, where that rule copies it once per output, and its product taken one
    output at a time (a batch of one: one ``bmm`` of ``fixedᵀ`` viewed K times, as that rule runs it). One product of
    the K outputs' columns side by side would read ``fixedᵀ`` once, but the kernels round a small product's columns
    otherwise for another number of columns. Anything else batched: one element at a time."""
    fixed_dim, grad_dim = in_dims
    if fixed_dim is None and grad_dim is not None:
        outputs = info.batch_size
        left = _as_bmm_operand(fixed).transpose(1, 2)
        moved = grad.movedim(grad_dim, 0)
        batch, shape = left.shape[0], moved.shape[1:]
        grads = moved.reshape(outputs * batch, *shape[-2:])
        if batch == 1:  # (as vmap's rule: fixedᵀ viewed K times, no copy)
            out = torch.bmm(left.expand(outputs, *left.shape[1:]), grads)
        else:
            left = left.contiguous()
            out = torch.cat([torch.bmm(left, grads[k * batch : (k + 1) * batch]) for k in range(outputs)])
        return out.view(outputs, *shape[:-2], *out.shape[-2:]), 0
    fixed = fixed.movedim(fixed_dim, 0) if fixed_dim is not None else fixed.expand(info.batch_size, *fixed.shape)
    grad = grad.movedim(grad_dim, 0) if grad_dim is not None else grad.expand(info.batch_size, *grad.shape)
    return torch.stack([fixed_left_gradient(f, g) for f, g in zip(fixed, grad, strict=True)]), 0


torch.library.register_vmap("rnnshap::fixed_left_gradient", _fixed_left_vmap)


class AddedProduct(Bilinear):
    r"""``beta · input + alpha · (a ∘ b)`` with ``∘`` a matrix product (``addmm``, ``baddbmm``,
    ``addbmm``, ``addmv``, ``addr``; GPT-2's ``Conv1D``).

    Linear in ``input`` and in each factor: the ordinary gradient is exact unless both factors
    depend on the input. Then the product term takes the midpoint rule of :class:`Bilinear`
    (the Shapley split of every product term) and ``input``, when it depends on the input too, its
    gradient ``beta``: the same values as ``beta * input + alpha * (a @ b)`` written out.
    """

    def _factors(self, call: OpCall) -> tuple[Any, Any]:
        args, kwargs = call.args, call.kwargs
        names = [n for n in kwargs if n not in ("input", "self", "beta", "alpha", "out")]
        rest = [*args[1:3], *(kwargs[n] for n in names)]
        return (rest[0], rest[1]) if len(rest) >= 2 else (None, None)

    def is_linear(self, call: OpCall) -> bool:
        a, b = self._factors(call)
        return not (call.is_tracked_value(a) and call.is_tracked_value(b))

    def refusal(self, call: OpCall) -> str | None:
        return None

    def attribute(self, call: OpCall) -> Any:
        a, b = self._factors(call)
        players = call.inputs
        slot_a = [k for k, p in enumerate(players) if p is a][0]
        slot_b = [k for k, p in enumerate(players) if p is b][-1]  # (a @ a: two slots of one tensor)
        a_mid = ((a + call.references[slot_a]) / 2).detach()
        b_mid = ((b + call.references[slot_b]) / 2).detach()
        fixed = [p.detach() for p in players]
        first = list(players)
        first[slot_b] = b_mid  # d/da and d/d(input)
        second = list(fixed)
        second[slot_a], second[slot_b] = a_mid, b
        surrogate = call.evaluate(first) + call.evaluate(second)
        with torch.no_grad():
            value = call.evaluate(fixed)
        return surrogate + (value - surrogate).detach()


class Multilinear(Bilinear):
    r"""Operations linear in each of their operands (einsum of any number of tensors).

    For a multilinear :math:`f` of the input-dependent operands :math:`A_1, \dots, A_n`, the change
    :math:`f(S \cup \{i\}) - f(S)` is :math:`f` with :math:`\Delta A_i` in slot :math:`i`, the
    operands of :math:`S` at their input values and the rest at their reference values. The exact
    Shapley value of operand :math:`i` is therefore linear in :math:`\Delta A_i`, and its multiplier
    is the gradient of :math:`\sum_{S \not\ni i} w_{|S|}\, f(A_i;\ S \text{ at input, rest at reference})`
    with respect to :math:`A_i` (:math:`w_s = s!\,(n-s-1)!/n!`). With two operands this is the
    midpoint rule of :class:`Bilinear`. ``n \cdot 2^{n-1}`` evaluations: up to
    ``MAX_SHAPLEY_PLAYERS`` input-dependent operands.
    """

    def refusal(self, call: OpCall) -> str | None:
        if len(call.tracked) > MAX_SHAPLEY_PLAYERS:
            return (
                f"it multiplies {len(call.tracked)} input-dependent tensors; the exact Shapley split takes "
                f"{len(call.tracked)}·2^{len(call.tracked) - 1} evaluations and is done for at most {MAX_SHAPLEY_PLAYERS}"
            )
        return None

    def attribute(self, call: OpCall) -> Any:
        n = len(call.tracked)
        if n <= 2:
            return super().attribute(call)
        if n > MAX_SHAPLEY_PLAYERS:
            raise ValueError(f"{call.name}: {self.refusal(call)}")
        inputs, references = call.inputs, call.references
        fixed = [x.detach() for x in inputs]
        weights = pairs.shapley_weights(n)
        surrogate: Tensor | None = None
        for i in range(n):
            for mask in range(2**n):
                if mask >> i & 1:
                    continue
                players = [inputs[i] if j == i else (fixed[j] if mask >> j & 1 else references[j]) for j in range(n)]
                term = weights[bin(mask).count("1")] * call.evaluate(players)
                surrogate = term if surrogate is None else surrogate + term
        assert surrogate is not None
        with torch.no_grad():
            value = call.evaluate(fixed)
        return surrogate + (value - surrogate).detach()
