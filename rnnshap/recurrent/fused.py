r"""One autograd Function per recurrent layer and direction: the fast path.

Forward: the input trajectory and the reference trajectory run as one batch through torch's own
kernel, on the distinct rows of each side only (``pairs.py``: ``S`` samples and ``R`` references
instead of ``S x R`` pairs each); the gate pre-activations of all steps are then one matrix
product. The multipliers, which depend on both sides, are computed per pair by broadcasting the
two sides against each other, a few time steps at a time so that the temporaries stay in cache,
and only arithmetic (no masks, no ``torch.where``), which is what makes them cheap.

Backward: the reverse-time multiplier recurrence (``reverse.py``; its steps in ``rnnshap/formulas/recurrence.py``),
per step a few elementwise products and two small matrix products, then one large product for the input
projection. See ``docs/recurrent.md`` for the formulas.

Every layer takes ``mask``, a (T, P, 1) boolean tensor or None: rows where it is False are past
the end of their sequence (packed input); their states are carried over unchanged and their
outputs are zero.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..formulas.secant import CLOSED_FORMS, blend_secant_into
from ..formulas.torch_ops import scalar, valueless
from ..rules.base import PairGrid
from ..rules.elementwise import small_delta_threshold
from .kernels import run_kernel
from .pairs import Side, pair_sides
from .reverse import batched, gru_recurrence, gru_reverse, lstm_recurrence, lstm_reverse, rnn_recurrence, rnn_reverse
from .weights import CellWeights

Tensor = torch.Tensor

#: elements per temporary in the per-pair phase on the CPU (8 MiB in float32, so that they stay in a large
#: cache; at 2 MiB the operations per chunk cost more than the cache saves at small sizes). On an accelerator the
#: phase runs on all steps at once: each chunk costs launches, and there is no cache to keep.
_CHUNK_ELEMENTS = 1 << 21

#: (μ, κ) of σ and of tanh: the Rescale multiplier's limit is κ − (a_x − μ)(a_r − μ) (smooth_secant;
#: rnnshap.formulas.secant.CLOSED_FORMS)
SIGMOID, TANH = CLOSED_FORMS["sigmoid"][:2], CLOSED_FORMS["tanh"][:2]


# -- the Rescale multiplier of σ and tanh -------------------------------------------------------
_UPCAST = (torch.float16, torch.bfloat16)


def _eps4(dtype: torch.dtype) -> float:
    return small_delta_threshold(dtype, True) ** 4


def smooth_secant(u_x: Tensor, u_r: Tensor, a_x: Tensor, a_r: Tensor, mu: Tensor | float, kappa: Tensor | float) -> Tensor:
    r"""Rescale multiplier :math:`(a_x - a_r)/(u_x - u_r)` of :math:`a = σ(u)` or :math:`\tanh(u)`.

    Both functions satisfy :math:`(a_x - a_r)/(u_x - u_r) = F \cdot \tanh(δ)/δ` with
    :math:`F = κ - (a_x - μ)(a_r - μ)` (σ: μ = ½, κ = ¼, δ = Δu/2; tanh: μ = 0, κ = 1, δ = Δu),
    so :math:`F` is the multiplier's limit as :math:`Δu → 0`, within a factor :math:`1 - O(Δu^2)`;
    the multiplier blends the quotient and :math:`F` without a branch
    (:func:`rnnshap.formulas.secant.blend_secant_into`, the formula and its accuracy). This blend stays (the other
    engines take the where-form) for its speed, nine in-place passes and no select, and because the PyTorch
    engine's values may not move. Arguments broadcast.
    """
    dtype, eps4 = u_x.dtype, _eps4(u_x.dtype)
    if dtype in _UPCAST:  # Δu⁴ would overflow float16: float32 arithmetic with the dtype's ε
        u_x, u_r, a_x, a_r = (t.float() for t in (u_x, u_r, a_x, a_r))
    shape = torch.broadcast_shapes(u_x.shape, u_r.shape, a_x.shape, a_r.shape)
    out, du, da = (u_x.new_empty(shape) for _ in range(3))
    kappa_e4 = torch.as_tensor(kappa, dtype=u_x.dtype, device=u_x.device) * eps4
    blend_secant_into(out, du, da, u_x, u_r, a_x, a_r, (a_x - mu) * eps4, a_r - mu, kappa_e4, eps4)
    return out.to(dtype)


class _Gathered:
    """A side whose distinct rows are not a grid axis (``Side.index``), gathered to every pair a
    few time steps at a time (indexing by a slice of steps gives (steps, samples, references, C))."""

    def __init__(self, t: Tensor, side: Side) -> None:
        self.t, self.side = t, side

    @property
    def shape(self) -> torch.Size:
        return self.t.shape

    def __getitem__(self, steps: slice) -> Tensor:
        return self.side.grid(self.t[steps])

    def first_pairs(self, steps: slice, pairs: int) -> Tensor:
        """``self[steps]`` for the first ``pairs`` pairs only (the active ones of a packed batch)."""
        assert self.side.index is not None
        return self.t[steps].index_select(1, self.side.index[:pairs]).unflatten(1, (pairs, 1))


def _active_rows(mask: Tensor | None) -> list[int] | None:
    """For a packed batch's mask (T, pairs, 1): the number of active pairs at each step, when the
    active pairs are a prefix at every step (a packed batch is sorted by length, longest first,
    in both directions); None otherwise. The per-pair phase then skips the finished pairs, as
    torch's packed kernel does."""
    if mask is None:
        return None
    steps, pairs = mask.shape[:2]
    counts = mask.reshape(steps, pairs).sum(1)
    prefix = torch.arange(pairs, device=mask.device)[None, :] < counts[:, None]
    shrinking = bool((counts[1:] <= counts[:-1]).all())  # a chunk of steps computes its first step's pairs
    return [int(c) for c in counts.tolist()] if shrinking and torch.equal(prefix, mask.reshape(steps, pairs)) else None


def _at(value: Tensor | _Gathered, steps: slice, pairs: int | None) -> Tensor:
    """``value[steps]`` (steps, samples, references, C), for the first ``pairs`` pairs of a masked side."""
    if pairs is None:
        if isinstance(value, Tensor) and steps.start == 0 and steps.stop == value.shape[0]:
            return value  # (one chunk of all steps, a cell's one step: no view to make)
        return value[steps]
    if isinstance(value, _Gathered):
        return value.first_pairs(steps, pairs)
    return value[steps][:, :pairs]


def _floats(constants: tuple[float | Tensor, float | Tensor]) -> tuple[float | Tensor, float | Tensor]:
    """(μ, κ), each a number or a float32 tensor."""
    mu, kappa = (c.float() if isinstance(c, Tensor) else c for c in constants)
    return mu, kappa


def _pairwise_coefficients(
    sides: tuple[Side, Side],
    rows_x: int,
    secants: Sequence[tuple[Tensor, Tensor, tuple[float | Tensor, float | Tensor]]],
    factors: Sequence[Tensor] = (),
    active: Sequence[int] | None = None,
) -> Tensor:
    """Per-pair coefficients from tensors over the distinct rows of both sides (x rows first).

    ``secants`` holds (pre-activation, activation, SIGMOID or TANH) blocks, each (T, rows, C_i),
    whose Rescale multipliers m fill the first columns ((μ, κ) may be tensors of one value per column:
    σ and tanh side by side in one block, as an LSTM's gates). Without ``factors`` the coefficients are
    m; with them, block j of the coefficients is the mean of ``factors[j]`` (T, rows, H_j) over the
    two sides (the Shapley share of a product), times the multipliers of the columns it lines up
    with. Returns (T, pairs, width). With ``active`` (a packed batch, :func:`_active_rows`) only the
    first ``active[t]`` pairs of step t are computed: the rest is never read.
    """
    side_x, side_r = sides
    steps, dtype = secants[0][0].shape[0], secants[0][0].dtype
    samples, references = side_x.samples, side_x.references
    width = sum(pre.shape[-1] for pre, _, _ in secants)
    eps4 = _eps4(dtype)
    if dtype in _UPCAST:  # Δu⁴ would overflow float16: float32 arithmetic with the dtype's ε
        secants = [(pre.float(), act.float(), _floats(kind)) for pre, act, kind in secants]
        factors = [f.float() for f in factors]

    def grid(side: Side, t: Tensor) -> Tensor | _Gathered:
        return side.grid(t) if side.index is None else _Gathered(t, side)

    def split(t: Tensor) -> tuple[Tensor | _Gathered, Tensor | _Gathered]:
        return grid(side_x, t[:, :rows_x]), grid(side_r, t[:, rows_x:])

    blocks = []
    for pre, act, (mu, kappa) in secants:
        centred_x = grid(side_x, (act[:, :rows_x] - mu).mul_(eps4))
        centred_r = grid(side_r, act[:, rows_x:] - mu)
        kappa_e4 = kappa * eps4 if isinstance(kappa, Tensor) else scalar(kappa * eps4, pre)  # (κ: 1/4 or 1, exact)
        blocks.append((*split(pre), *split(act), centred_x, centred_r, kappa_e4, pre.shape[-1]))
    means = [split(f) for f in factors]
    new = secants[0][0].new_empty
    coefficients = new((steps, samples, references, sum(f.shape[-1] for f in factors) if factors else width))
    on_cpu = secants[0][0].device.type == "cpu"
    chunk = max(1, _CHUNK_ELEMENTS // max(1, samples * references * width)) if on_cpu else max(1, steps)
    scratch = [new((min(chunk, steps), samples, references, width)) for _ in range(3)]
    for start in range(0, steps, chunk):
        t = slice(start, min(start + chunk, steps))
        n = None if active is None else active[start]  # the active pairs of the chunk's first (longest) step
        if n == 0:
            continue
        out = _at(coefficients, t, None) if n is None else coefficients[t][:, :n]
        m, du, da = (_at(s, slice(0, t.stop - start), n) for s in scratch)
        if not factors:
            m = out
        column = 0
        for u_x, u_r, a_x, a_r, centred_x, centred_r, kappa_e4, size in blocks:
            cols = slice(column, column + size)
            ux, ur, ax, ar, cx, cr = (_at(v, t, n) for v in (u_x, u_r, a_x, a_r, centred_x, centred_r))
            blend_secant_into(m[..., cols], du[..., cols], da[..., cols], ux, ur, ax, ar, cx, cr, kappa_e4, eps4)
            column += size
        column = 0
        for f_x, f_r in means:
            size = f_x.shape[-1]
            torch.lerp(_at(f_x, t, n), _at(f_r, t, n), 0.5, out=out[..., column : column + size])
            column += size
        if factors:
            out[..., :width].mul_(m)
    return coefficients.flatten(1, 2).to(dtype)


# -- shared pieces ------------------------------------------------------------------------------
def _native_params(w: CellWeights) -> list[Tensor]:
    params = [w.w_ih, w.w_hh]
    if w.b_ih is not None and w.b_hh is not None:
        params += [w.b_ih, w.b_hh]
    if w.w_hr is not None:
        params.append(w.w_hr)
    return params


def _native(op: Callable[..., Any], w: CellWeights, both: Tensor, state: Any) -> Any:
    """One layer-direction of ``torch.lstm`` / ``gru`` / ``rnn_*`` on (T, rows, F), torch's own kernel (cuDNN's on a
    GPU, which takes a contiguous initial state only)."""
    state = tuple(s.contiguous() for s in state) if isinstance(state, tuple) else state.contiguous()
    return run_kernel(op, both, state, _native_params(w), w.b_ih is not None, 1, 0.0, False, False, False)


def _input_projection(both: Tensor, w: CellWeights) -> Tensor:
    """W_ih x + b_ih + b_hh for all steps at once: (T, rows, G)."""
    bias = None
    if w.b_ih is not None and w.b_hh is not None:
        bias = w.b_ih + w.b_hh
    return torch.nn.functional.linear(both, w.w_ih, bias)


def _add_recurrent(projected: Tensor, h_prev: Tensor, w_hh: Tensor) -> Tensor:
    """projected + W_hh h_prev for all steps, as one matrix product, in place of ``projected``."""
    flat = projected.view(-1, projected.shape[-1])
    return flat.addmm_(h_prev.reshape(-1, h_prev.shape[-1]), w_hh.t()).view(projected.shape)


class _Rows:
    """The distinct rows of both sides of one layer call, stacked x rows first.

    With a mask (packed input) each distinct row runs the whole length unmasked: its trajectory
    is exact up to the length of every pair that uses it, which is all that is used (the
    reference side shares rows across lengths, see :meth:`Side.masked`); the outputs
    and final states are then taken per pair at its own length.
    """

    def __init__(
        self, grid: PairGrid | None, mask: Tensor | None, sequences: tuple[Tensor, Tensor], *states: tuple[Tensor, Tensor]
    ) -> None:
        x, x_r = sequences
        self.pairs = x.shape[1]
        self.mask = mask
        if mask is None:
            inputs, references = [(x, 1), *((s, 0) for s, _ in states)], [(x_r, 1), *((s, 0) for _, s in states)]
            self.sides = pair_sides(grid, self.pairs, inputs, references, defer=x.shape[0] == 1)  # (a cell's one step)
        else:
            self.sides = (Side.masked(mask, x, [s for s, _ in states]), Side.masked(mask, x_r, [s for _, s in states]))
        self.rows_x = self.sides[0].rows
        self.sequence = self.stack(x, x_r, 1)
        self.states = [self.stack(s, s_r, 0) for s, s_r in states]

    def stack(self, t: Tensor, t_r: Tensor, dim: int) -> Tensor:
        side_x, side_r = self.sides
        return torch.cat([side_x.take(t, dim), side_r.take(t_r, dim)], dim)

    def spread(self, t: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """Per-row results back to one row per pair: (input side, reference side)."""
        side_x, side_r = self.sides
        rows_x = self.rows_x
        return side_x.spread(t.narrow(dim, 0, rows_x), dim), side_r.spread(t.narrow(dim, rows_x, t.shape[dim] - rows_x), dim)

    def outputs(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row outputs (T, rows, H) as (input side, reference side), (T, pairs, H) each,
        zero past each pair's length."""
        out_x, out_r = self.spread(out, 1)
        if self.mask is None:
            return out_x, out_r
        zero = out.new_zeros(())
        return torch.where(self.mask, out_x, zero), torch.where(self.mask, out_r, zero)

    def finals(self, initial: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
        """The final states per pair from the initial states (rows, H) and the states after each
        step (T, rows, H): (input side, reference side), (pairs, H) each."""
        if self.mask is None:
            return self.spread(after[-1], 0)
        side_x, side_r = self.sides
        device = initial.device
        rows = torch.cat([side_x.row_of_pairs(device), side_r.row_of_pairs(device) + self.rows_x])
        finals = _at_lengths(self.mask.repeat(1, 2, 1), initial, after, rows)
        return finals[: self.pairs], finals[self.pairs :]


def _at_lengths(mask: Tensor, initial: Tensor, after: Tensor, rows: Tensor) -> Tensor:
    """The state of row ``rows[p]`` after the last unmasked step of pair ``p`` (mask (T, pairs, 1)),
    from the initial states (rows, H) and the states after each step (T, rows, H): (pairs, H)."""
    states = torch.cat([initial[None], after]).flatten(0, 1)  # (T + 1) * rows: after step L - 1 is block L
    lengths = mask.reshape(mask.shape[0], -1).sum(0)
    return states.index_select(0, lengths * initial.shape[0] + rows)


def masked_layer(
    kind: str, relu: bool, w: CellWeights, mask: Tensor, x: Tensor, h0: Tensor, c0: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One masked (packed) layer-direction on one side only (the reference pass), on its distinct
    rows (:meth:`Side.masked`): (outputs (T, pairs, H), zero past each length, h_T, c_T)."""
    side = Side.masked(mask, x, [h0] if c0 is None else [h0, c0])
    sequence, h = side.take(x, 1), side.take(h0, 0)
    c_after = c = None
    if kind == "lstm":
        assert c0 is not None
        c = side.take(c0, 0)
        _, _, _, c_after, out = _lstm_trajectories(w, sequence, h, c)
    elif kind == "gru":
        out, _ = _native(torch.gru, w, sequence, h[None])
    else:
        out, _ = _native(torch.rnn_relu if relu else torch.rnn_tanh, w, sequence, h[None])
    rows = side.row_of_pairs(x.device)
    outputs = torch.where(mask, side.spread(out, 1), out.new_zeros(()))
    c_n = None if c is None or c_after is None else _at_lengths(mask, c, c_after, rows)
    return outputs, _at_lengths(mask, h, out, rows), c_n


# _one_step: a layer's backward under the explainer's vmap calls its recurrence as the custom operator (reverse.py),
# whose vmap rule runs the loop once on plain tensors; a cell's call (one step) calls the same function directly:
# with one step there is no loop to save, and the operator's dispatch costs more than it saves (measured: an
# LSTMCell looped over 50 steps, 56 ms a call through the operator, 52 ms without; the values bit for bit the same).
# Outside vmap (one output) the function is called directly too (see reverse.batched).


def _mask(ctx: Any, saved: Tensor) -> Tensor | None:
    """The mask :func:`_finish` saved, None where the layer had none."""
    return saved if ctx.has_mask else None


def _finish(
    ctx: Any,
    w: CellWeights,
    mask: Tensor | None,
    coefficients: Tensor,
    rows: _Rows,
    outputs: Tensor,
    *states: tuple[Tensor, Tensor],
    cell: bool = False,
) -> tuple[Tensor | None, ...]:
    """Save what the backward needs and return (outputs, final states) of the input side and,
    not differentiable, the same of the reference side, one row per pair. ``states`` are
    (initial, after each step) pairs of the rows (see :meth:`_Rows.finals`), the hidden state's first.

    A cell's call (``cell``: one step, whose output is its new hidden state) returns the input side's output and
    its other new states only, None in place of the rest: the new hidden state is the output, and the reference
    side's states come from the reference pass (:func:`rnnshap.recurrent.rules._on_distinct_references`); each
    would be a copy per step of a loop."""
    ctx.save_for_backward(coefficients, mask if mask is not None else torch.empty(0))
    ctx.weights, ctx.has_mask = w, mask is not None
    if cell:
        side_x, rows_x = rows.sides[0], rows.rows_x
        others = [side_x.spread(after[-1].narrow(0, 0, rows_x), 0) for _, after in states[1:]]
        return (side_x.spread(outputs.narrow(1, 0, rows_x), 1), None, *others, None, *(None for _ in states))
    out_x, out_r = rows.outputs(outputs)
    finals = [rows.finals(*s) for s in states]
    finals_x, finals_r = [f[0] for f in finals], [f[1] for f in finals]
    ctx.mark_non_differentiable(out_r, *finals_r)
    return (out_x, *finals_x, out_r, *finals_r)


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    """The gradient of an output a cell's call returned as None (its new hidden state: the output's): zeros, as
    autograd gives for an output nothing used."""
    return torch.zeros_like(like) if grad is None else grad


# -- LSTM ---------------------------------------------------------------------------------------
def _lstm_gates(u: Tensor) -> Tensor:
    """σ on the i, f, o blocks and tanh on the g block of pre-activations (..., 4H)."""
    gates = torch.sigmoid(u)
    hidden = u.shape[-1] // 4
    torch.tanh(u[..., 2 * hidden : 3 * hidden], out=gates[..., 2 * hidden : 3 * hidden])
    return gates


def _lstm_trajectories(w: CellWeights, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    """The trajectories of all rows, unmasked: gate pre-activations u and activations
    (T, rows, 4H), the cell state before and after each step and the outputs (T, rows, H_out).

    torch's LSTM kernel runs the rows; the pre-activations of all steps are then one matrix
    product and the cell states one fused multiply-add per step. One step without a projection (a cell's call)
    runs torch's cell kernel, as the model's ``nn.LSTMCell`` runs it, and takes both its new states from it: the
    trajectory of a cell in a loop is the model's bit for bit (the layer kernel, oneDNN's on the CPU, sets up its
    primitive on every call, which costs a cell in a loop several times its arithmetic).
    """
    one_step = x.shape[0] == 1 and w.w_hr is None
    if one_step:
        h_new, c_new = torch.lstm_cell(x[0], (h, c), w.w_ih, w.w_hh, w.b_ih, w.b_hh)
        out = h_new[None]
    else:
        out, _, _ = _native(torch.lstm, w, x, (h[None], c[None]))
    u = _add_recurrent(_input_projection(x, w), torch.cat([h[None], out[:-1]]), w.w_hh)
    gates = _lstm_gates(u)
    if one_step:
        return u, gates, c[None], c_new[None], out
    i, f, g, _ = gates.chunk(4, dim=2)
    ig = i * g
    cells = torch.empty_like(ig)
    c0 = c
    for ig_t, f_t, cell_t in zip(ig.unbind(0), f.unbind(0), cells.unbind(0), strict=True):  # one operation a step
        c = torch.addcmul(ig_t, f_t, c, out=cell_t)
    return u, gates, torch.cat([c0[None], cells[:-1]]), cells, out


_SECANT_CONSTANTS: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}


def _secant_constants(blocks: Sequence[tuple[tuple[float, float], int]], like: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, κ) of the secant per column of activations side by side, ``blocks`` of (SIGMOID or TANH, width) in order
    (an LSTM's gates [i, f, g, o] and tanh(c): σ, σ, tanh, σ, tanh), so that one blend computes every multiplier of
    a step (made once per layout, dtype and device: a cell in a loop asks at every step; not kept under inference
    mode, whose tensors a later backward could not save, nor from fake tensors, whose program makes its own)."""
    key, fake = (tuple(blocks), like.dtype, like.device), valueless(like)
    constants = None if fake else _SECANT_CONSTANTS.get(key)
    if constants is None:
        mu = [m for (m, _), width in blocks for _ in range(width)]
        kappa = [k for (_, k), width in blocks for _ in range(width)]
        constants = like.new_tensor(mu), like.new_tensor(kappa)
        if not torch.is_inference_mode_enabled() and not fake:
            _SECANT_CONSTANTS[key] = constants
    return constants


class FusedLSTM(torch.autograd.Function):
    """One LSTM layer-direction: returns (outputs, h_T, c_T) and, not differentiable, their references."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        w: CellWeights,
        mask: Tensor | None,
        grid: PairGrid | None,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        x_ref: Tensor,
        h0_ref: Tensor,
        c0_ref: Tensor,
        cell: bool = False,
    ) -> tuple[Tensor | None, ...]:
        hidden = w.w_hh.shape[0] // 4
        rows = _Rows(grid, mask, (x, x_ref), (h0, h0_ref), (c0, c0_ref))
        h0_rows, c0_rows = rows.states
        u, gates, c_prev, c_new, out = _lstm_trajectories(w, rows.sequence, h0_rows, c0_rows)
        i, f, g, o = gates.chunk(4, dim=2)
        k = torch.tanh(c_new)
        # coefficients [A_i, A_f, A_g, A_o, A_k, A_c]: the mean of the other factor of each
        # product (Shapley) times the gate's or tanh's Rescale multiplier (f ⊙ c has none)
        # (σ, σ, tanh, σ: one block)
        # (every activation and every factor side by side: one blend and one mean a chunk of steps, which a cell in a
        # loop, one step a call, runs at every step)
        constants = _secant_constants(((SIGMOID, 2 * hidden), (TANH, hidden), (SIGMOID, hidden), (TANH, hidden)), u)
        secants = [(torch.cat([u, c_new], 2), torch.cat([gates, k], 2), constants)]
        ctx.active = _active_rows(mask)
        factors = [torch.cat([g, c_prev, i, k, o, f], 2)]
        coefficients = _pairwise_coefficients(rows.sides, rows.rows_x, secants, factors, ctx.active)
        return _finish(ctx, w, mask, coefficients, rows, out, (h0_rows, out), (c0_rows, c_new), cell=cell)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_h: Tensor | None, d_c: Tensor, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        coefficients, mask = ctx.saved_tensors
        w: CellWeights = ctx.weights
        d_h = _or_zeros(d_h, d_c)
        reverse = lstm_reverse if coefficients.shape[0] > 1 and batched(d_out, d_h, d_c) else lstm_recurrence  # (_one_step)
        dx, dh, dc = reverse(coefficients, _mask(ctx, mask), ctx.active, d_out, d_h, d_c, w.w_ih, w.w_hh, w.w_hr)
        return None, None, None, dx, dh, dc, None, None, None, None


# -- GRU ----------------------------------------------------------------------------------------
class FusedGRU(torch.autograd.Function):
    """One GRU layer-direction: returns (outputs, h_T) and, not differentiable, their references."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        w: CellWeights,
        mask: Tensor | None,
        grid: PairGrid | None,
        x: Tensor,
        h0: Tensor,
        x_ref: Tensor,
        h0_ref: Tensor,
        cell: bool = False,
    ) -> tuple[Tensor | None, ...]:
        hidden = w.w_hh.shape[0] // 3
        rows = _Rows(grid, mask, (x, x_ref), (h0, h0_ref))
        both, (h0_rows,) = rows.sequence, rows.states
        projected = torch.nn.functional.linear(both, w.w_ih, w.b_ih)  # (T, rows, 3H)
        # torch's kernel runs the rows; everything else is vectorised over time
        out, _ = _native(torch.gru, w, both, h0_rows[None])
        h_prev = torch.cat([h0_rows[None], out[:-1]])
        recurrent = torch.nn.functional.linear(h_prev, w.w_hh, w.b_hh)
        u_rz = projected[..., : 2 * hidden] + recurrent[..., : 2 * hidden]
        # coefficients [A_r, A_z, A_n, A_h, A_a]: du_r = dv·A_r, du_z = dh·A_z, dv = dh·A_n,
        # dh_prev (direct) = dh·A_h, da_n = dv·A_a (see docs/recurrent.md)
        rz = torch.sigmoid(u_rz)
        r, z = rz.chunk(2, dim=2)
        a_n = recurrent[..., 2 * hidden :]
        v = torch.addcmul(projected[..., 2 * hidden :], r, a_n)
        n = torch.tanh(v)
        constants = _secant_constants(((SIGMOID, 2 * hidden), (TANH, hidden)), v)
        secants = [(torch.cat([u_rz, v], 2), torch.cat([rz, n], 2), constants)]
        ctx.active = _active_rows(mask)
        factors = [torch.cat([a_n, h_prev - n, 1 - z, z, r], 2)]  # (side by side, as the LSTM's)
        coefficients = _pairwise_coefficients(rows.sides, rows.rows_x, secants, factors, ctx.active)
        return _finish(ctx, w, mask, coefficients, rows, out, (h0_rows, out), cell=cell)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_h: Tensor | None, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        coefficients, mask = ctx.saved_tensors
        w: CellWeights = ctx.weights
        d_h = _or_zeros(d_h, d_out[..., -1, :, :])
        reverse = gru_reverse if coefficients.shape[0] > 1 and batched(d_out, d_h) else gru_recurrence  # (_one_step)
        dx, dh = reverse(coefficients, _mask(ctx, mask), ctx.active, d_out, d_h, w.w_ih, w.w_hh)
        return None, None, None, dx, dh, None, None, None


# -- Elman RNN ----------------------------------------------------------------------------------
def _relu_secant(rows: _Rows, u: Tensor) -> Tensor:
    """(relu(u_x) − relu(u_r)) / (u_x − u_r) per pair, the derivative where u_x = u_r."""
    side_x, side_r = rows.sides
    u_x, u_r = side_x.grid(u[:, : rows.rows_x]), side_r.grid(u[:, rows.rows_x :])
    du = u_x - u_r
    quotient = (torch.relu(u_x) - torch.relu(u_r)) / du
    quotient = torch.where(du == 0, (u_x > 0).to(u.dtype), quotient)  # (no test first: a test is a host sync)
    return quotient.flatten(1, 2)


class FusedRNN(torch.autograd.Function):
    """One Elman RNN layer-direction (tanh or relu)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        w: CellWeights,
        mask: Tensor | None,
        grid: PairGrid | None,
        relu: bool,
        x: Tensor,
        h0: Tensor,
        x_ref: Tensor,
        h0_ref: Tensor,
        cell: bool = False,
    ) -> tuple[Tensor | None, ...]:
        rows = _Rows(grid, mask, (x, x_ref), (h0, h0_ref))
        both, (h0_rows,) = rows.sequence, rows.states
        # torch's kernel runs the rows; the pre-activations are one product
        out, _ = _native(torch.rnn_relu if relu else torch.rnn_tanh, w, both, h0_rows[None])
        u = _add_recurrent(_input_projection(both, w), torch.cat([h0_rows[None], out[:-1]]), w.w_hh)
        ctx.active = _active_rows(mask)
        if relu:
            coefficients = _relu_secant(rows, u)
        else:
            coefficients = _pairwise_coefficients(rows.sides, rows.rows_x, [(u, torch.tanh(u), TANH)], active=ctx.active)
        return _finish(ctx, w, mask, coefficients, rows, out, (h0_rows, out), cell=cell)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_h: Tensor | None, *unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        coefficients, mask = ctx.saved_tensors
        w: CellWeights = ctx.weights
        d_h = _or_zeros(d_h, d_out[..., -1, :, :])
        reverse = rnn_reverse if coefficients.shape[0] > 1 and batched(d_out, d_h) else rnn_recurrence  # (_one_step)
        dx, dh = reverse(coefficients, _mask(ctx, mask), ctx.active, d_out, d_h, w.w_ih, w.w_hh)
        return None, None, None, None, dx, dh, None, None, None
