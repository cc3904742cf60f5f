r"""Exact rules for attention: ``F.scaled_dot_product_attention`` and
``F.multi_head_attention_forward`` (``nn.MultiheadAttention`` and, through it,
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` / ``nn.Transformer``).

Each rule recomputes the operation from exact parts on both sides of the pair at once:

- projections (``linear``) and every reshape, cat and mask: linear (bilinear by the midpoint rule
  where a weight depends on the input too);
- scores :math:`s = \text{scale} \cdot q k^\top + \text{bias}`: the product of two input-dependent
  operands is bilinear, :math:`\Delta(qk^\top) = \Delta q\, \bar k^\top + \bar q\, \Delta k^\top` with
  midpoints :math:`\bar q = (q + q_r)/2` (the exact Shapley split, as :class:`~rnnshap.rules.Bilinear`);
- softmax: the decomposition of :class:`~rnnshap.rules.Softmax` (Rescale on exp and log around the
  linear sum); entries masked with ``-inf`` on both sides contribute 0 and get multiplier 0;
- weights @ values: bilinear again; the output projection: linear.

The output is torch's own output of the call (bit for bit, NaN or 0 in rows masked throughout
included); its gradient is the composition of the multipliers above, so one backward pass gives the
DeepLIFT multipliers. Attention dropout that is active (``dropout_p > 0`` in training, or any
``dropout_p > 0`` given to ``scaled_dot_product_attention``) is refused by name.

torch's inference fast paths (``torch._native_multi_head_attention``,
``torch._transformer_encoder_layer_fwd``) are never taken while rnnshap runs a model: they require
that no tensor argument has a ``__torch_function__`` override, and the engine's mode is one in both
passes. Called directly on an input-dependent tensor, they are refused by name (``refusals.py``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import ModelStateError
from ..formulas import pairs
from ..formulas.torch_ops import TORCH
from ..recurrent.pairs import Side, defers
from .base import OpCall, PairGrid, Rule
from .elementwise import fixed_left_product
from .secant import secant
from .structured import finite_total, fused_softmax, shifted_logsumexp

Tensor = torch.Tensor
INF = float("-inf")


@dataclass
class Sides:
    """One tensor on both sides of the pairs: ``x`` (input side, carries the multipliers' graph) and
    ``r`` (reference side, no graph); ``tracked`` when it depends on the explained input."""

    x: Tensor
    r: Tensor
    tracked: bool

    def map(self, f: Callable[[Tensor], Tensor]) -> Sides:
        """A linear (or shape) operation applied to both sides."""
        if not self.tracked:
            value = f(self.x)
            return Sides(value, value, False)
        with torch.no_grad():
            r = f(self.r)
        return Sides(f(self.x), r, True)

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype


def fixed(t: Tensor) -> Sides:
    """A tensor that does not depend on the input: the same on both sides."""
    return Sides(t, t, False)


def add(a: Sides, b: Sides | None) -> Sides:
    if b is None:
        return a
    if not (a.tracked or b.tracked):
        value = a.x + b.x
        return Sides(value, value, False)
    with torch.no_grad():
        r = a.r + b.r
    return Sides(a.x + b.x, r, True)


def bilinear(f: Callable[[Tensor, Tensor], Tensor], a: Sides, b: Sides) -> Sides:
    r"""``f(a, b)`` for ``f`` linear in each operand: the gradient at the midpoints when both depend on
    the input (:math:`f(a,b) - f(a_r,b_r) = f(\Delta a, \bar b) + f(\bar a, \Delta b)` exactly), the
    ordinary gradient when one does."""
    if not (a.tracked or b.tracked):
        value = f(a.x, b.x)
        return Sides(value, value, False)
    with torch.no_grad():
        r = f(a.r, b.r)
    if not (a.tracked and b.tracked):
        return Sides(f(a.x, b.x), r, True)
    with torch.no_grad():
        b_mid, a_mid = pairs.midpoint_multipliers(TORCH, a.x, b.x, a.r, b.r)
        value = f(a.x, b.x)
    surrogate = f(a.x, b_mid) + (fixed_left_product(a_mid, b.x, f) if f is torch.matmul else f(a_mid, b.x))
    return Sides(surrogate + (value - surrogate).detach(), r, True)


def linear(x: Sides, weight: Sides, bias: Sides | None) -> Sides:
    """``F.linear`` on both sides (bilinear in the input and the weight when both depend on the input)."""
    return add(bilinear(lambda a, w: F.linear(a, w), x, weight), bias)


def softmax(scores: Sides, dim: int = -1, grid: PairGrid | None = None) -> Sides:
    """softmax by the decomposition of :class:`~rnnshap.rules.Softmax`; rows masked throughout
    (``-inf`` on both sides) are 0 on both sides, with no gradient (the caller puts torch's value back). With a
    ``grid`` that defers its checks, the choice of the fused node is checked after the pass (:func:`fused_softmax`)."""
    if not scores.tracked:
        with torch.no_grad():
            value = torch.softmax(scores.x, dim)
            value = torch.where(torch.isnan(value), torch.zeros_like(value), value)
        return Sides(value, value, False)
    # (the test of one key per query's first part and the fused node's test of masked rows read at once: one host
    # read where neither holds, the common case)
    ends = _one_hot_ends(scores, dim)
    fused = fused_softmax(scores.x, scores.r, dim, unless=ends, grid=grid)
    if fused is None and ends is not None:
        single = _single_key(scores, dim, ends)
        if single is not None:
            return single
        fused = fused_softmax(scores.x, scores.r, dim)  # (one-hot ends, not every row: the fused node after all)
    if fused is not None:
        output, reference = fused
        assert reference is not None
        return Sides(output, reference, True)
    xs, rs, total, total_ref, _ = shifted_logsumexp(scores.x, scores.r, dim)
    safe, safe_ref = finite_total(total, total_ref)
    with torch.no_grad():
        reference_shifted = rs - safe_ref
    output, reference = secant(torch.exp, xs - safe, reference_shifted)
    return Sides(output, reference, True)


def _single_key(scores: Sides, dim: int, ends: torch.Tensor | None) -> Sides | None:
    """The weights where every query attends to one key only, the same on both sides of every pair: each row of
    torch's softmax is exactly one-hot (every other score masked, by ``-inf`` or by a bias so low that its ``exp``
    is 0, as the ``finfo.min`` masks of Hugging Face models are), on the input and the reference side alike. The
    weights are then constants of the function, whatever the scores, and the scores pass nothing back: exact,
    where the decomposition would spend its exp secants on entries that are all 0 (Chronos-2's group attention
    across the batch, one series per group: pairs × pairs scores of which one per row counts). None otherwise.
    ``ends``: :func:`_one_hot_ends` of the scores, the test's first part (its caller has it)."""
    if ends is None or not bool(ends):
        return None  # (the first and last rows tell attention over several keys apart, a causal mask's too)
    with torch.no_grad():
        weights = torch.softmax(scores.x, dim)
        one = weights == 1
        if not bool(one.any(dim).all()) or not bool((one | (weights == 0)).all()):
            return None
        weights_ref = torch.softmax(scores.r, dim)
        if not torch.equal(weights, weights_ref):
            return None
    return Sides(weights, weights_ref, False)


def _one_hot_ends(scores: Sides, dim: int) -> torch.Tensor | None:
    """Whether torch's softmax of the first and the last row of the input side's scores is one-hot (the first part of
    :func:`_single_key`'s test), as a bool tensor on their device, unread; None where there are fewer than two keys."""
    if scores.x.shape[dim] < 2 or scores.x.numel() == 0:
        return None
    with torch.no_grad():
        rows = scores.x.movedim(dim, -1)
        ends = torch.softmax(torch.stack((rows[(0,) * (rows.dim() - 1)], rows[(-1,) * (rows.dim() - 1)])), -1)
        return ((ends == 1) | (ends == 0)).all()


def attend(
    q: Sides, k: Sides, v: Sides, bias: Sides | None, scale: float, grid: PairGrid | None = None
) -> tuple[Sides, Sides]:
    """``softmax(scale · q kᵀ + bias) @ v`` and the weights, ``(..., L, S)`` (``grid``: the call's, see :func:`softmax`)."""
    scores = bilinear(lambda a, b: a @ b.transpose(-2, -1), q, k).map(lambda s: s * scale)
    weights = softmax(add(scores, bias), grid=grid)
    return bilinear(torch.matmul, weights, v), weights


def as_torch(computed: Sides | None, value: Tensor | None) -> Tensor | None:
    """torch's own ``value`` of the output, with the gradient of the ``computed`` decomposition."""
    if computed is None or value is None or not computed.tracked or not computed.x.requires_grad:
        return value
    surrogate = computed.x.to(value.dtype)
    return surrogate + (value - surrogate).detach()


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit attention is decomposed in float32 (as torch's math kernel keeps its intermediates)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _causal_bias(rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """0 on and below the diagonal (top-left aligned, as torch's ``is_causal``), ``-inf`` above."""
    keep = torch.ones(rows, columns, dtype=torch.bool, device=device).tril()
    return torch.zeros(rows, columns, dtype=dtype, device=device).masked_fill(~keep, INF)


class _Attention(Rule):
    """Shared parts: the operands on both sides, torch's own value, the dropout check."""

    signature: inspect.Signature

    def bind(self, call: OpCall) -> tuple[dict[str, Any], Callable[[str], Sides | None]]:
        bound = self.signature.bind(*call.args, **call.kwargs)
        bound.apply_defaults()
        ref = self.signature.bind(*call.ref_args, **call.ref_kwargs)
        ref.apply_defaults()
        arguments, ref_arguments = dict(bound.arguments), dict(ref.arguments)

        def sides(name: str) -> Sides | None:
            value = arguments[name]
            if not isinstance(value, Tensor):
                return None
            if call.is_tracked_value(value):
                return Sides(value, ref_arguments[name].detach(), True)
            return fixed(value)

        return arguments, sides

    def dropout(self, arguments: dict[str, Any]) -> float:
        raise NotImplementedError

    def refusal(self, call: OpCall) -> str | None:
        """Asked by the engine in both passes: why this call cannot be attributed, or None."""
        nested = [leaf for leaf in call.leaves if isinstance(leaf, Tensor) and leaf.is_nested]
        if nested:
            return "it is called on nested tensors, which rnnshap does not attribute; pass padded tensors and a key padding mask"
        return None

    def check_dropout(self, call: OpCall) -> None:
        arguments, _ = self.bind(call)
        p = self.dropout(arguments)
        if p > 0.0:
            raise ModelStateError(
                f"The model runs attention dropout (dropout_p={p:g}) in {call.name}, which makes its output random, so "
                "no attribution can add up. Call model.eval() before explaining; a direct call of "
                "F.scaled_dot_product_attention applies dropout_p whatever the mode: pass "
                "dropout_p=(self.p if self.training else 0.0)."
            )

    def reference(self, call: OpCall) -> Any:
        self.check_dropout(call)
        return super().reference(call)

    def torch_value(self, call: OpCall) -> Any:
        """torch's own output of the call, on the path the model's call takes: an operand passed as several (a
        self-attention's ``query``, ``key`` and ``value``) is detached once, since torch projects them in one product
        where they are one tensor and in three, which round otherwise, where they are not."""
        detached: dict[int, Tensor] = {}
        with torch.no_grad():
            return call.evaluate([detached.setdefault(id(x), x.detach()) for x in call.inputs])


def _sdpa_signature(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> None: ...


class ScaledDotProductAttention(_Attention):
    r"""``F.scaled_dot_product_attention``: :math:`\text{softmax}(\text{scale}\cdot qk^\top + \text{bias})\,v`,
    every part exact (see the module docstring). Bool masks (True: attend), additive float masks
    (``-inf`` included, input-dependent ones too), ``is_causal``, ``scale=``, ``enable_gqa``;
    ``dropout_p`` must be 0."""

    signature = inspect.signature(_sdpa_signature)

    def dropout(self, arguments: dict[str, Any]) -> float:
        return float(arguments["dropout_p"])

    def attribute(self, call: OpCall) -> Any:
        self.check_dropout(call)
        value = self.torch_value(call)  # raises torch's own error for a call torch refuses
        arguments, sides = self.bind(call)
        q, k, v = sides("query"), sides("key"), sides("value")
        assert q is not None and k is not None and v is not None
        work = _working_dtype(q.dtype)
        q, k, v = (s.map(lambda t: t.to(work)) for s in (q, k, v))
        rows, columns = q.x.shape[-2], k.x.shape[-2]
        bias: Sides | None = None
        if arguments["is_causal"]:
            bias = fixed(_causal_bias(rows, columns, work, q.x.device))
        mask = sides("attn_mask")
        if mask is not None:
            if mask.x.dtype == torch.bool:
                bias = fixed(torch.zeros(mask.x.shape, dtype=work, device=q.x.device).masked_fill(~mask.x, INF))
            else:
                bias = mask.map(lambda t: t.to(work))
        if arguments["enable_gqa"]:
            groups = q.x.shape[-3] // k.x.shape[-3]
            k = k.map(lambda t: t.repeat_interleave(groups, -3))
            groups = q.x.shape[-3] // v.x.shape[-3]
            v = v.map(lambda t: t.repeat_interleave(groups, -3))
        scale = arguments["scale"]
        scale = 1.0 / math.sqrt(q.x.shape[-1]) if scale is None else float(scale)
        output, _ = attend(q, k, v, bias, scale, call.pairs)
        return as_torch(output, value)


_MHA = inspect.signature(F.multi_head_attention_forward)


def _float_mask(mask: Sides | None, dtype: torch.dtype) -> Sides | None:
    """torch's ``_canonical_mask``: a bool mask (True: masked out) becomes 0 / ``-inf``."""
    if mask is None:
        return None
    if mask.x.dtype == torch.bool:
        return fixed(torch.zeros(mask.x.shape, dtype=dtype, device=mask.x.device).masked_fill(mask.x, INF))
    return mask.map(lambda t: t.to(dtype))


class MultiHeadAttention(_Attention):
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``), following torch's own code step
    by step: packed or separate (kdim / vdim) projections, ``add_bias_kv``, ``add_zero_attn``,
    ``static_k`` / ``static_v``, bool and float ``key_padding_mask`` and ``attn_mask`` (``-inf``
    included), ``is_causal`` as torch reads it, ``need_weights`` and ``average_attn_weights``
    (the weights returned carry their multipliers too), batched or not."""

    signature = _MHA

    def dropout(self, arguments: dict[str, Any]) -> float:
        return float(arguments["dropout_p"]) if arguments["training"] else 0.0

    def attribute(self, call: OpCall) -> Any:
        self.check_dropout(call)
        value, weights_value = self.value_on_rows(call) or self.torch_value(call)
        arguments, sides = self.bind(call)
        output, weights = self.decompose(arguments, sides, call.pairs)
        return as_torch(output, value), as_torch(weights, weights_value)

    def value_on_rows(self, call: OpCall) -> tuple[Tensor, Tensor | None] | None:
        """:meth:`torch_value` on the samples' distinct rows, spread back to the pairs; None where the call's batch
        does not allow it (every pair's value then: :meth:`torch_value`).

        The input side of a pass's pairs repeats each sample's rows along its references, and torch's attention
        works on each row of the batch apart: its value on the S samples' rows is its value on the S R pairs, bit for
        bit (the projections' products and the attention kernel round each row alike whatever the batch), at 1/R of
        the cost. The rows are tested on the values (at once on the CPU, after the pass on an accelerator); the masks
        of a batch (``key_padding_mask``) are taken alike, a per-head ``attn_mask`` or ``static_k`` is not."""
        grid = call.pairs
        bound = self.signature.bind(*call.args, **call.kwargs)
        a = bound.arguments
        query, padding = a["query"], a.get("key_padding_mask")
        if (
            grid is None or not isinstance(query, Tensor) or query.dim() != 3 or query.shape[1] != grid.pairs
            or a.get("static_k") is not None or a.get("static_v") is not None
            or (isinstance(a.get("attn_mask"), Tensor) and a["attn_mask"].dim() != 2)
            or (padding is not None and (padding.dim() != 2 or padding.shape[0] != grid.pairs))
        ):  # fmt: skip
            return None
        # (one tensor detached once, and taken once: the model's path, see torch_value)
        detached = {id(a[name]): a[name].detach() for name in ("query", "key", "value")}
        batched = [(t, 1) for t in detached.values()] + ([] if padding is None else [(padding, 0)])
        if any(t.shape[dim] != grid.pairs for t, dim in batched):
            return None
        side = Side.of("input", grid, grid.pairs, batched, defer=defers(grid, query))
        if side.axis is None:
            return None
        rows = {key: side.take(t, 1) for key, t in detached.items()}
        for name in ("query", "key", "value"):
            a[name] = rows[id(a[name])]
        if padding is not None:
            a["key_padding_mask"] = side.take(padding, 0)
        with torch.no_grad():
            output, weights = call.fn(*bound.args, **bound.kwargs)
        return side.spread(output, 1), None if weights is None else side.spread(weights, 0)

    def decompose(
        self, a: dict[str, Any], sides: Callable[[str], Sides | None], grid: PairGrid | None = None
    ) -> tuple[Sides, Sides | None]:
        query, key, value = sides("query"), sides("key"), sides("value")
        assert query is not None and key is not None and value is not None
        dtype = query.dtype
        work = _working_dtype(dtype)
        query, key, value = (s.map(lambda t: t.to(work)) for s in (query, key, value))

        def parameter(name: str) -> Sides | None:
            found = sides(name)
            return None if found is None else found.map(lambda t: t.to(work))

        heads, need_weights, is_causal = int(a["num_heads"]), bool(a["need_weights"]), bool(a["is_causal"])
        batched = query.x.dim() == 3
        key_padding_mask, attn_mask = sides("key_padding_mask"), sides("attn_mask")
        if not batched:
            query, key, value = (s.map(lambda t: t.unsqueeze(1)) for s in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.map(lambda t: t.unsqueeze(0))
        tgt_len, bsz, embed_dim = query.x.shape
        key_padding_mask = _float_mask(key_padding_mask, work)
        causal = False
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask, causal = None, True  # torch hands is_causal to SDPA and drops the mask
        else:
            attn_mask = _float_mask(attn_mask, work)
        head_dim = embed_dim // heads

        in_bias = parameter("in_proj_bias")
        biases = [None if in_bias is None else _chunk(in_bias, i) for i in range(3)]
        if not a["use_separate_proj_weight"]:
            packed = parameter("in_proj_weight")
            assert packed is not None
            projections = [_chunk(packed, i) for i in range(3)]
        else:
            separate = [parameter(f"{p}_proj_weight") for p in "qkv"]
            projections = [w for w in separate if w is not None]
            assert len(projections) == 3
        q, k, v = (linear(s, w, b) for s, w, b in zip((query, key, value), projections, biases, strict=True))

        if attn_mask is not None and attn_mask.x.dim() == 2:
            attn_mask = attn_mask.map(lambda t: t.unsqueeze(0))
        bias_k, bias_v = parameter("bias_k"), parameter("bias_v")
        if bias_k is not None and bias_v is not None:
            k = _cat([k, bias_k.map(lambda t: t.repeat(1, bsz, 1))], 0)
            v = _cat([v, bias_v.map(lambda t: t.repeat(1, bsz, 1))], 0)
            attn_mask = None if attn_mask is None else attn_mask.map(lambda t: F.pad(t, (0, 1)))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.map(lambda t: F.pad(t, (0, 1)))

        q = q.map(lambda t: t.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1))
        static_k, static_v = parameter("static_k"), parameter("static_v")
        k = static_k if static_k is not None else k.map(lambda t: t.reshape(t.shape[0], bsz * heads, head_dim).transpose(0, 1))
        v = static_v if static_v is not None else v.map(lambda t: t.reshape(t.shape[0], bsz * heads, head_dim).transpose(0, 1))
        if a["add_zero_attn"]:
            k = k.map(lambda t: torch.cat([t, t.new_zeros(bsz * heads, 1, head_dim)], 1))
            v = v.map(lambda t: torch.cat([t, t.new_zeros(bsz * heads, 1, head_dim)], 1))
            attn_mask = None if attn_mask is None else attn_mask.map(lambda t: F.pad(t, (0, 1)))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.map(lambda t: F.pad(t, (0, 1)))
        src_len = k.x.shape[1]
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.map(
                lambda t: t.reshape(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz * heads, 1, src_len)
            )
            attn_mask = key_padding_mask if attn_mask is None else add(attn_mask, key_padding_mask)
        bias = fixed(_causal_bias(tgt_len, src_len, work, q.x.device)) if causal else attn_mask

        mixed, weights = attend(q, k, v, bias, 1.0 / math.sqrt(head_dim), grid)
        mixed = mixed.map(lambda t: t.transpose(0, 1).reshape(tgt_len * bsz, embed_dim))
        out_weight, out_bias = parameter("out_proj_weight"), parameter("out_proj_bias")
        assert out_weight is not None
        output = linear(mixed, out_weight, out_bias).map(lambda t: t.reshape(tgt_len, bsz, -1).to(dtype))
        if not batched:
            output = output.map(lambda t: t.squeeze(1))
        if not need_weights:
            return output, None
        weights = weights.map(lambda t: t.reshape(bsz, heads, tgt_len, src_len))
        if a["average_attn_weights"]:
            weights = weights.map(lambda t: t.mean(1))
        if not batched:
            weights = weights.map(lambda t: t.squeeze(0))
        return output, weights.map(lambda t: t.to(dtype))


def _chunk(packed: Sides, index: int) -> Sides:
    """Part ``index`` of a weight or bias packed along dim 0 in q, k, v order."""
    return packed.map(lambda t: t.chunk(3)[index])


def _cat(parts: list[Sides], dim: int) -> Sides:
    if not any(p.tracked for p in parts):
        value = torch.cat([p.x for p in parts], dim)
        return Sides(value, value, False)
    with torch.no_grad():
        r = torch.cat([p.r for p in parts], dim)
    return Sides(torch.cat([p.x for p in parts], dim), r, True)


#: torch's fused attention kernels: never reached through the modules while rnnshap runs a model
#: (the engine's mode turns their fast paths off), refused by name when called directly
FUSED_KERNELS = (
    "_native_multi_head_attention", "_transformer_encoder_layer_fwd", "_scaled_dot_product_attention_math",
    "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_flash_attention_forward_no_dropout_inplace", "_triton_multi_head_attention",
    "_triton_scaled_dot_attention",
)


def attention_op_rules(forms: Callable[..., list[Any]]) -> dict[Any, Rule]:
    """Operation → rule for the attention functions (registered through ``catalog.extra_op_rules``)."""
    table: dict[Any, Rule] = {}
    for fn in forms("scaled_dot_product_attention"):
        table[fn] = ScaledDotProductAttention()
    for fn in forms("multi_head_attention_forward"):
        table[fn] = MultiHeadAttention()
    return table


__all__ = [
    "FUSED_KERNELS", "MultiHeadAttention", "ScaledDotProductAttention", "Sides", "attend", "attention_op_rules", "bilinear",
    "linear", "softmax",
]
