"""A grammar of small, realistic PyTorch sequence models, and the promise each one is held to.

A model is drawn as a :class:`ModelSpec` (plain data, printable, so every failure can be rebuilt),
built into :class:`FuzzNet`, and judged by :func:`evaluate`:

- ``rnnshap.DeepExplainer(model, background)`` may refuse it by name (``UnsupportedOperationError``,
  ``ModelStateError``, ``InputError``): acceptable;
- otherwise ``shap_values`` must be exact: finite, adding up to ``f(x) − mean_r f(r)`` computed from
  the model's own outputs (the reference run with the explained sample's context: lengths, masks,
  masks made from the ids) within 1e-9·max(1, |Δ|) (float64), and exactly 0 where the structure of
  the model says so: an input feature (or token column, or shifted-out step) the model never reads,
  a masked step, a future step of a causal model with per-step outputs, a context input, and a
  sample equal to the only reference.

Anything else is a defect.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnshap

from ..models.torch import Composite
from .choosers import Chooser

Tensor = torch.Tensor
F64 = torch.float64
INF = float("-inf")
PAD = 0  # token id of padding (ids context)
TOL = 1e-9  # |Σφ − Δ| ≤ TOL·max(1, |Δ|), float64

RECURRENT = ("lstm", "gru", "rnn")
CELLS = ("lstm_cell", "gru_cell", "rnn_cell")
ACTIVATIONS = ("none", "tanh", "sigmoid", "relu", "gelu", "silu", "softplus", "elu", "leaky_relu", "gelu_tanh")
REFUSED = (rnnshap.UnsupportedOperationError, rnnshap.ModelStateError, rnnshap.InputError)


# -- specs ---------------------------------------------------------------------------------------
@dataclass
class BlockSpec:
    kind: str  # lstm gru rnn | lstm_cell gru_cell rnn_cell | linear norm attention mha mask_fill
    out: int = 0  # output width (set for every kind by the draw)
    hidden: int = 0  # recurrent layers and cells
    act: str = "none"
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = True
    proj: int = 0  # LSTM proj_size
    nonlinearity: str = "tanh"  # RNN / RNNCell
    packed: bool = False
    h0: bool = False  # a learned, nonzero initial state
    residual: bool = False
    norm: str = "layer"  # layer | layer_eps12 | rms | rms_eps | normalize | normalize_p1
    affine: bool = True
    causal: str = "none"  # attention: none | masked_fill | triu_add | where
    key_padding: bool = False
    heads: int = 1
    carry_mask: bool = False  # cells: the state is carried over masked steps (torch.where)
    state: str = "h"  # which final state the "hn" pooling reads: h | c
    bias: bool = True
    dropout: bool = False  # recurrent layers with num_layers 2: dropout between layers (eval mode)
    sort: bool = False  # packed: sort the batch by length, pack with enforce_sorted=True, unsort
    chain: bool = False  # packed: a second GRU reads the PackedSequence directly
    twice: bool = False  # linear / norm / attention with out == in: the same module applied twice
    reverse: bool = False  # cells: the loop runs backwards in time
    key_padding_form: str = ""  # attention: masked_fill | where | additive (a 0/-inf float mask added) | neg_large (-1e9)
    scores: str = "matmul"  # attention: matmul | bmm | einsum | sdpa (F.scaled_dot_product_attention)
    loop_read: str = "index"  # cells: index (x[:, t]) | unbind | split
    loop_write: str = "stack"  # cells: stack | setitem (written into a preallocated tensor)
    padding_value: float = 0.0  # packed: pad_packed_sequence(padding_value=...)
    kernel: int = 1  # conv
    sub: str = "gru"  # encdec: gru | lstm

    def is_causal(self) -> bool:
        if self.kind in RECURRENT:
            return not self.bidirectional
        if self.kind in CELLS:
            return not self.reverse
        if self.kind in ("attention", "mha"):
            return self.causal != "none"
        if self.kind == "conv":
            return self.causal == "left_pad"
        return self.kind not in ("center", "encdec")


@dataclass
class ModelSpec:
    seed: int
    T: int
    input: str  # float | tokens | columns
    width: int  # float: features; columns: token columns; tokens: 1
    vocab: int
    emb: int
    embed_form: str  # module | functional | index
    entry: bool  # float input: an entry Linear before the blocks
    entry_width: int
    dummy: str  # none | slice | zero_weight (float) | column (columns)
    move: str  # none | flip | roll | shift | perm
    roll: int
    context: str  # none | lengths | bool | ids
    holes: bool  # bool / ids masks: masked steps anywhere (else a padded suffix)
    entry_mask: str  # none | masked_fill | where | mul
    blocks: list[BlockSpec]
    pool: str  # step | mean | max | amax | last | masked_mean | masked_max | last_valid | hn
    k: int
    head_act: str
    squeeze: bool  # output (N,) instead of (N, 1)
    n_bg: int
    n_x: int
    spread: float
    edge: bool  # X[0] = background[0]
    perm: list[int] = field(default_factory=list)
    static: int = 0  # a second float input (N, static) that sets the first recurrent block's initial state
    batch_size: int = 0  # 0: the default
    dups: bool = False  # duplicate rows in the background and in X (context differing)
    tiny: bool = False  # X[-1] = background[-1] + 1e-7 noise (float input)
    select: str = "all"  # all | outputs | ranked: also explain a subset and compare
    unk: bool = False  # token ids drawn up to vocab + 2, unknown ones mapped to 1 before the move
    number: bool = False  # an integer input (N, T), values 0..6, cast to float and joined to the features
    context_dtype: str = "default"  # lengths: int64 | int32; masks: bool | uint8_bool (.bool()) | int64_ne (!= 0) | int64_tobool
    head: str = "plain"  # plain | flatten (per-step outputs reshaped to (N, T·K))

    @property
    def has_context(self) -> bool:
        return self.context in ("lengths", "bool")

    @property
    def context_index(self) -> int:
        return 1 + self.number + (self.static > 0)

    @property
    def static_index(self) -> int:
        return 1 + self.number


# -- the grammar ---------------------------------------------------------------------------------
def draw_spec(c: Chooser, max_blocks: int = 3) -> ModelSpec:
    seed = c.integer(0, 2**16)
    T = c.integer(2, 8)
    kind = c.one("input", ["float", "tokens", "columns"])
    width = c.integer(1, 4) if kind == "float" else (c.integer(2, 3) if kind == "columns" else 1)
    vocab, emb = c.integer(4, 9), c.integer(1, 4)
    embed_form = c.one("embed", ["module", "functional", "index", "padding_idx", "one_hot"]) if kind != "float" else "module"
    unk = kind != "float" and c.flag("unk")  # ids ≥ vocab mapped to 1 by torch.where(ids >= V, 1, ids)
    entry = kind == "float" and c.flag("entry_linear")
    if kind == "float":
        dummies = ["none"] + (["slice"] if width >= 2 else []) + (["zero_weight"] if entry else [])
    else:
        dummies = ["none"] + (["column"] if kind == "columns" else [])
    dummy = c.one("dummy", dummies)
    move = c.one("move", ["none", "flip", "roll", "shift", "perm", "cat_shift"])
    roll = c.integer(1, max(1, T - 1))
    rng = np.random.default_rng(seed)
    perm = [int(i) for i in rng.permutation(T)]
    contexts = ["none", "lengths", "bool"] + (["ids"] if kind != "float" else [])
    context = c.one("context", contexts)
    holes = context in ("bool", "ids") and c.flag("holes")
    entry_mask = c.one("entry_mask", ["none", "masked_fill", "where", "mul"]) if context != "none" else "none"

    number = kind == "float" and c.flag("number_input")
    d = {"float": width - (dummy == "slice") + number, "tokens": emb, "columns": emb}[kind]
    entry_width = c.integer(1, 6)
    if entry:
        d = entry_width
    blocks: list[BlockSpec] = []
    n_blocks = c.integer(1, max_blocks)
    causal = c.flag("causal_design")  # per-step outputs, every block causal
    for _ in range(n_blocks):
        b = _draw_block(c, d, T, context, holes, causal)
        blocks.append(b)
        d = b.out if not b.residual else d
    last = blocks[-1]
    pools = ["step", "mean", "max", "amax", "last"]
    if context != "none":
        pools += ["masked_mean", "masked_max"]
    if context == "lengths" or (context == "ids" and not holes):
        pools += ["last_valid"]
    if (last.kind in RECURRENT or last.kind in CELLS or last.kind == "encdec") and not last.residual:
        pools += ["hn", "luong"]
    if context != "none":
        pools += ["attn_pool"]
    pools += ["logsumexp", "sum", "adaptive_avg", "adaptive_max", "hard_attn", "kmax", "top2_attn"]
    pool = "step" if causal else c.one("pool", pools)
    k = c.integer(1, 3)
    head_act = c.one("head_act", ["none", "tanh", "sigmoid", "softmax"])
    squeeze = k == 1 and pool != "step" and c.flag("squeeze")
    static = c.integer(1, 3) if any(b.kind in RECURRENT + CELLS for b in blocks) and c.flag("static_h0") else 0
    return ModelSpec(
        seed=seed, T=T, input=kind, width=width, vocab=vocab, emb=emb, embed_form=embed_form, entry=entry,
        entry_width=entry_width, dummy=dummy, move=move, roll=roll, context=context, holes=holes, entry_mask=entry_mask,
        blocks=blocks, pool=pool, k=k, head_act=head_act, squeeze=squeeze, n_bg=c.integer(1, 3), n_x=c.integer(1, 4),
        spread=c.one("spread", [0.3, 1.0, 3.0, 10.0]), edge=c.flag("edge"), perm=perm, static=static,
        batch_size=c.one("batch_size", [0, 0, 1, 2, 3, 5]), dups=c.flag("dups"), tiny=kind == "float" and c.flag("tiny"),
        select=c.one("select", ["all", "all", "outputs", "ranked"]), unk=unk,
        number=number,
        context_dtype=c.one(
            "context_dtype",
            {"lengths": ["int64", "int32"], "bool": ["bool", "uint8_bool", "int64_ne", "int64_tobool"]}.get(context, ["default"])
        ),
        head=c.one("head", ["plain", "flatten"]) if pool in ("step", "luong_step") else "plain",
    )  # fmt: skip


def _draw_block(c: Chooser, d: int, T: int, context: str, holes: bool, causal: bool) -> BlockSpec:
    kinds = [*RECURRENT, *CELLS, "linear", "norm", "attention", "mha", "conv", "gated", "cumsum"] + (
        ["center", "encdec"] if not causal else []
    )
    kinds += ["mask_fill"] if context != "none" else []
    kind = c.one("block", kinds)
    b = BlockSpec(kind=kind)
    if kind in RECURRENT:
        b.hidden = hidden = c.integer(1, 8)
        b.num_layers = c.integer(1, 2)
        b.bidirectional = c.flag(f"{kind}.bidirectional", allowed=not causal)
        b.batch_first = c.one(f"{kind}.batch_first", [True, False])
        if kind == "lstm" and hidden >= 2 and c.flag("lstm.proj"):
            b.proj = c.integer(1, hidden - 1)
        if kind == "rnn":
            b.nonlinearity = c.one("rnn.nonlinearity", ["tanh", "relu"])
        b.packed = c.flag(f"{kind}.packed", allowed=context == "lengths" or (context == "ids" and not holes))
        b.sort = c.flag("packed.sort", allowed=b.packed)
        b.padding_value = -1.0 if c.flag("packed.padding_value", allowed=b.packed) else 0.0
        b.chain = c.flag("packed.chain", allowed=b.packed)
        b.h0 = c.flag(f"{kind}.h0")
        b.bias = not c.flag(f"{kind}.no_bias")
        b.dropout = c.flag(f"{kind}.dropout", allowed=b.num_layers == 2)
        b.state = c.one("state", ["h", "c"]) if kind == "lstm" else "h"
        b.out = (b.proj or hidden) * (2 if b.bidirectional else 1)
        if b.chain:
            b.out = 3
    elif kind in CELLS:
        b.hidden = hidden = c.integer(1, 8)
        if kind == "rnn_cell":
            b.nonlinearity = c.one("rnn.nonlinearity", ["tanh", "relu"])
        b.carry_mask = c.flag(f"{kind}.carry_mask", allowed=context != "none")
        b.reverse = c.flag(f"{kind}.reverse", allowed=not causal)
        b.loop_read = c.one("loop_read", ["index", "unbind", "split"])
        b.loop_write = c.one("loop_write", ["stack", "setitem"])
        b.bias = not c.flag(f"{kind}.no_bias")
        b.h0 = c.flag(f"{kind}.h0")
        b.state = c.one("state", ["h", "c"]) if kind == "lstm_cell" else "h"
        b.out = hidden
    elif kind == "linear":
        b.out = c.integer(1, 8)
        b.act = c.one("act", ACTIVATIONS)
        b.dropout = c.flag("linear.dropout")
    elif kind == "norm":
        # layer: eps=1e-5; layer_eps12: eps=1e-12 (BERT's); rms: eps=None (finfo.eps); rms_eps: eps=1e-6;
        # normalize / normalize_p1: F.normalize(x, p=2 / 1, dim=-1)
        b.norm = c.one("norm", ["layer", "layer_eps12", "rms", "rms_eps", "normalize", "normalize_p1"])
        b.affine = c.flag("norm.affine")
        b.act = c.one("act", ACTIVATIONS)
        b.out = d
    elif kind == "attention":
        b.out = c.integer(1, 6)
        b.causal = c.one("attention.causal", ["masked_fill", "triu_add", "where"] + ([] if causal else ["none"]))
        b.key_padding = c.flag("attention.key_padding", allowed=context != "none")
        b.key_padding_form = (
            c.one("attention.key_padding_form", ["masked_fill", "where", "additive", "neg_large"]) if b.key_padding else ""
        )
        b.scores = c.one("attention.scores", ["matmul", "bmm", "einsum", "sdpa"])
    elif kind == "mha":
        b.heads = c.one("mha.heads", [1, 2] if d % 2 == 0 else [1])
        b.causal = c.one("mha.causal", ["masked_fill"] + ([] if causal else ["none"]))
        b.key_padding = c.flag("mha.key_padding", allowed=context != "none")
        b.out = d
    elif kind == "mask_fill":
        b.out = d
    elif kind == "conv":
        b.out = c.integer(1, 6)
        b.kernel = c.integer(1, 3)
        b.causal = "left_pad" if causal else c.one("conv.padding", ["left_pad", "same"])
        b.act = c.one("act", ACTIVATIONS)
    elif kind == "gated":
        b.out = c.integer(1, 6)
        b.act = c.one("gated.form", ["sigmoid_product", "glu", "tanh_sigmoid"])
    elif kind in ("cumsum", "center"):
        b.out = d
    elif kind == "encdec":
        b.sub = c.one("encdec.sub", ["gru", "lstm"])
        b.hidden = b.out = c.integer(1, 6)
    b.residual = not b.packed and kind != "mask_fill" and c.flag(f"{kind}.residual")
    twice_kinds = ("linear", "norm", "attention", "gated", "conv", *RECURRENT, *CELLS)
    b.twice = kind in twice_kinds and b.out == d and not b.packed and c.flag(f"{kind}.twice")
    return b


def move(s: ModelSpec, t: Tensor, pad_value: float | int) -> Tensor:
    """The token reordering of the spec, on dim 1 (time) of an (N, T, ...) tensor."""
    if s.move == "flip":
        return t.flip(1)
    if s.move == "roll":
        return torch.roll(t, s.roll, dims=1)
    if s.move == "shift":
        pad = (0, 0) * (t.dim() - 2) + (1, 0)
        return F.pad(t[:, :-1], pad, value=pad_value)
    if s.move == "perm":
        return t[:, s.perm]
    if s.move == "cat_shift":
        first = torch.full_like(t[:, :1], pad_value)
        return torch.cat([first, t[:, :-1]], 1)
    return t


# -- the model -----------------------------------------------------------------------------------
class FuzzNet(nn.Module):
    """The model a :class:`ModelSpec` describes. ``forward(main[, context])``.

    ``keep_override``, when set, replaces the mask made from the ids (``context == "ids"``): the
    test uses it to run references with the explained sample's mask, never rnnshap.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.keep_override: Tensor | None = None
        torch.manual_seed(spec.seed)
        s = spec
        if s.input == "float":
            d = s.width - (s.dummy == "slice") + s.number
            if s.entry:
                self.entry = nn.Linear(d, s.entry_width)
                if s.dummy == "zero_weight":
                    with torch.no_grad():
                        self.entry.weight[:, s.width - 1] = 0.0
                d = s.entry_width
        else:
            columns = s.width - (s.dummy == "column") if s.input == "columns" else 1
            self.tables = nn.ParameterList([nn.Parameter(torch.randn(s.vocab, s.emb)) for _ in range(columns)])
            padding = PAD if s.embed_form == "padding_idx" else None
            self.embeddings = nn.ModuleList([nn.Embedding(s.vocab, s.emb, padding_idx=padding) for _ in range(columns)])
            d = s.emb
        self.layers = nn.ModuleList()
        self.res = nn.ModuleList()
        for b in s.blocks:
            self.layers.append(_make_block(b, d))
            self.res.append(nn.Linear(b.out, d) if b.residual else nn.Identity())
            d = d if b.residual else b.out
        self.head = nn.Linear(d, s.k)
        if s.static:
            first = next(b for b in s.blocks if b.kind in RECURRENT + CELLS)
            self.static_first = s.blocks.index(first)
            dirs = 2 if first.bidirectional else 1
            layers = first.num_layers if first.kind in RECURRENT else 1
            size = first.proj or first.hidden
            self.static_h = nn.Linear(s.static, layers * dirs * size)
            self.static_c = nn.Linear(s.static, layers * dirs * first.hidden)
        if s.pool in ("attn_pool", "hard_attn", "top2_attn"):
            self.score = nn.Linear(d, 1)
        if s.pool == "luong":
            self.query = nn.Linear(final_width(s.blocks[-1]), d)
        self.to(F64).eval()

    def move(self, t: Tensor, pad_value: float | int) -> Tensor:
        return move(self.spec, t, pad_value)

    def keep_of(self, main: Tensor, context: Tensor | None) -> Tensor | None:
        """The (N, T) mask of kept steps, in model time (after the move)."""
        s = self.spec
        T = s.T
        if self.keep_override is not None:
            return self.keep_override
        if s.context == "lengths":
            assert context is not None
            return torch.arange(T, device=context.device)[None, :] < context[:, None]
        if s.context == "bool":
            return context
        if s.context == "ids":
            ids = self.move(main, s.vocab - 1)
            return (ids[..., 0] if s.input == "columns" else ids) != PAD
        return None

    def embed(self, ids: Tensor, column: int) -> Tensor:
        form = self.spec.embed_form
        if form in ("module", "padding_idx"):
            return self.embeddings[column](ids)
        if form == "functional":
            return F.embedding(ids, self.tables[column])
        if form == "one_hot":
            return F.one_hot(ids, self.spec.vocab).to(self.tables[column].dtype) @ self.tables[column]
        return self.tables[column][ids]

    def forward(self, main: Tensor, *rest: Tensor) -> Tensor:
        s = self.spec
        if s.unk:
            main = torch.where(main >= s.vocab, 1, main)
        number = rest[0] if s.number else None
        static = rest[s.static_index - 1] if s.static else None
        context = rest[-1] if s.has_context else None
        if context is not None and s.context == "bool":
            context = {"uint8_bool": lambda m: m.bool(), "int64_ne": lambda m: m != 0,
                       "int64_tobool": lambda m: m.to(torch.bool)}.get(s.context_dtype, lambda m: m)(context)  # fmt: skip
        keep = self.keep_of(main, context)
        if s.input == "float":
            x = main[..., :-1] if s.dummy == "slice" else main
            if number is not None:
                x = torch.cat([x, number[..., None].to(x.dtype) / 3.0], -1)
            x = self.move(x, 0.0)
            if s.entry:
                x = self.entry(x)
        elif s.input == "tokens":
            x = self.embed(self.move(main, s.vocab - 1), 0)
        else:
            ids = self.move(main, s.vocab - 1)
            x = sum(self.embed(ids[..., j], j) for j in range(len(self.tables)))
        if keep is not None:
            if s.entry_mask == "masked_fill":
                x = x.masked_fill(~keep[..., None], 0.0)
            elif s.entry_mask == "where":
                x = torch.where(keep[..., None], x, torch.zeros((), dtype=x.dtype))
            elif s.entry_mask == "mul":
                x = x * keep[..., None].to(x.dtype)
        needs_lengths = s.pool == "last_valid" or any(b.packed for b in s.blocks)
        lengths = keep.sum(1) if keep is not None and needs_lengths else None
        final: Any = None
        for index, (b, layer, res) in enumerate(zip(s.blocks, self.layers, self.res, strict=True)):
            initial = None
            if static is not None and index == self.static_first:
                initial = (torch.tanh(self.static_h(static)), torch.tanh(self.static_c(static)))
            y, final = _run_block(b, layer, x, keep, lengths, s.T, initial)
            if b.twice:
                y, final = _run_block(b, layer, y, keep, lengths, s.T, None)
            x = x + res(y) if b.residual else y
        if s.pool == "step":
            pooled = x
        elif s.pool == "mean":
            pooled = x.mean(1)
        elif s.pool == "max":
            pooled = x.max(1).values
        elif s.pool == "amax":
            pooled = torch.amax(x, dim=1)
        elif s.pool == "last":
            pooled = x[:, -1]
        elif s.pool == "masked_mean":
            w = keep[..., None].to(x.dtype)
            pooled = (x * w).sum(1) / w.sum(1)
        elif s.pool == "masked_max":
            pooled = x.masked_fill(~keep[..., None], INF).amax(1)
        elif s.pool == "last_valid":
            pooled = x[torch.arange(x.shape[0]), lengths - 1]
        elif s.pool == "hn":
            pooled = final
        elif s.pool == "luong":  # attention over the steps with the final state as the query
            scores = (x * self.query(final)[:, None, :]).sum(-1)
            if keep is not None:
                scores = scores.masked_fill(~keep, INF)
            pooled = (torch.softmax(scores, 1)[..., None] * x).sum(1)
        elif s.pool == "adaptive_avg":
            pooled = F.adaptive_avg_pool1d(x.transpose(1, 2), 1)[..., 0]
        elif s.pool == "adaptive_max":
            pooled = F.adaptive_max_pool1d(x.transpose(1, 2), 1)[..., 0]
        elif s.pool == "logsumexp":
            pooled = torch.logsumexp(x, 1)
        elif s.pool == "sum":
            pooled = x.sum(1)
        elif s.pool == "attn_pool":
            scores = self.score(x)[..., 0].masked_fill(~keep, INF)
            pooled = (torch.softmax(scores, 1)[..., None] * x).sum(1)
        elif s.pool == "hard_attn":  # the step with the highest score, picked by argmax (masked steps never win)
            scores = self.score(x)[..., 0]
            if keep is not None:
                scores = scores.masked_fill(~keep, INF)
            pooled = x[torch.arange(x.shape[0]), scores.argmax(1)]
        elif s.pool == "kmax":  # k-max pooling over time: the mean of each unit's two largest steps
            if keep is not None:
                x = x.masked_fill(~keep[..., None], -1e4)  # masked steps lose to every kept one
            pooled = x.topk(min(2, x.shape[1]), dim=1).values.mean(1)
        elif s.pool == "top2_attn":  # the two steps with the highest scores, weighted by a softmax of them
            scores = self.score(x)[..., 0]
            if keep is not None:
                scores = scores.masked_fill(~keep, INF)
            top = scores.topk(min(2, x.shape[1]), dim=1)
            picked = x.gather(1, top.indices[..., None].expand(-1, -1, x.shape[2]))
            pooled = (torch.softmax(top.values, 1)[..., None] * picked).sum(1)
        else:
            raise AssertionError(s.pool)
        out = self.head(pooled)
        out = {"none": out, "tanh": torch.tanh(out), "sigmoid": torch.sigmoid(out), "softmax": torch.softmax(out, -1)}[s.head_act]
        if s.head == "flatten":
            return out.flatten(1)
        return out[..., 0] if s.squeeze else out


def final_width(b: BlockSpec) -> int:
    """Width of the final state a block returns for the "hn" / "luong" pooling."""
    if b.kind in CELLS or b.kind == "encdec":
        return b.hidden
    if b.chain:
        return b.out
    size = b.hidden if (b.kind == "lstm" and b.state == "c") else (b.proj or b.hidden)
    return size * (2 if b.bidirectional else 1)


def _held(m: nn.Module, *inputs: Any) -> Any:
    raise TypeError("a block's parameters only: FuzzNet runs the block (_run_block)")


def _cell(cell: nn.Module, hidden: int, h0: bool) -> Composite:
    """A cell block's parameters: the cell, and its learned initial state (h0, c0) or None."""
    return Composite(_held, cell=cell, h0=nn.Parameter(torch.randn(hidden) * 0.5) if h0 else None,
                     c0=nn.Parameter(torch.randn(hidden) * 0.5) if h0 else None)  # fmt: skip


def _recurrent(layer: nn.RNNBase, h0: bool, chain: nn.GRU | None) -> Composite:
    """A recurrent block's parameters: the layer, the GRU chained after it or None, its learned initial state or None."""
    dirs = 2 if layer.bidirectional else 1
    hsize = layer.proj_size if getattr(layer, "proj_size", 0) else layer.hidden_size
    groups = layer.num_layers * dirs
    return Composite(_held, layer=layer, chain=chain, h0=nn.Parameter(torch.randn(groups, 1, hsize) * 0.5) if h0 else None,
                     c0=nn.Parameter(torch.randn(groups, 1, layer.hidden_size) * 0.5) if h0 else None)  # fmt: skip


def _attention(d: int, out: int) -> Composite:
    """An attention block's parameters: q, k, v, o and the scale."""
    a = max(2, out)
    return Composite(_held, q=nn.Linear(d, a), k=nn.Linear(d, a), v=nn.Linear(d, a), o=nn.Linear(a, out),
                     scale=1.0 / math.sqrt(a))  # fmt: skip


def _make_block(b: BlockSpec, d: int) -> nn.Module:
    if b.kind in RECURRENT:
        hidden = b.hidden
        common = dict(batch_first=b.batch_first, bidirectional=b.bidirectional, bias=b.bias, dropout=0.3 if b.dropout else 0.0)
        if b.kind == "lstm":
            layer: nn.RNNBase = nn.LSTM(d, hidden, b.num_layers, proj_size=b.proj, **common)
        elif b.kind == "gru":
            layer = nn.GRU(d, hidden, b.num_layers, **common)
        else:
            layer = nn.RNN(d, hidden, b.num_layers, nonlinearity=b.nonlinearity, **common)
        chain = nn.GRU((b.proj or hidden) * (2 if b.bidirectional else 1), b.out, batch_first=b.batch_first) if b.chain else None
        return _recurrent(layer, b.h0, chain)
    if b.kind in CELLS:
        cell = {"lstm_cell": lambda: nn.LSTMCell(d, b.out, bias=b.bias), "gru_cell": lambda: nn.GRUCell(d, b.out, bias=b.bias),
                "rnn_cell": lambda: nn.RNNCell(d, b.out, bias=b.bias, nonlinearity=b.nonlinearity)}[b.kind]()  # fmt: skip
        return _cell(cell, b.out, b.h0)
    if b.kind == "linear":
        return nn.Sequential(nn.Linear(d, b.out), nn.Dropout(0.5)) if b.dropout else nn.Linear(d, b.out)
    if b.kind == "norm":
        if b.norm.startswith("normalize"):
            return nn.Identity()
        if b.norm in ("layer", "layer_eps12"):
            return nn.LayerNorm(d, eps=1e-12 if b.norm == "layer_eps12" else 1e-5, elementwise_affine=b.affine)
        return nn.RMSNorm(d, eps=1e-6 if b.norm == "rms_eps" else None, elementwise_affine=b.affine)
    if b.kind == "attention":
        return _attention(d, b.out)
    if b.kind == "mha":
        return nn.MultiheadAttention(d, b.heads, batch_first=True)
    if b.kind == "encdec":
        make = nn.GRU if b.sub == "gru" else nn.LSTM
        return nn.ModuleDict({"enc": make(d, b.hidden, batch_first=True), "dec": make(d, b.hidden, batch_first=True)})
    if b.kind == "conv":
        return nn.Conv1d(d, b.out, b.kernel, padding=0 if b.causal == "left_pad" else "same")
    if b.kind == "gated":
        return nn.Linear(d, 2 * b.out)
    return nn.Identity()


def _activation(name: str, x: Tensor) -> Tensor:
    return {"none": lambda t: t, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": F.relu, "gelu": F.gelu,
            "silu": F.silu, "softplus": F.softplus, "elu": F.elu, "leaky_relu": lambda t: F.leaky_relu(t, 0.1),
            "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[name](x)  # fmt: skip


def _causal_mask(T: int, device: Any) -> Tensor:
    return torch.triu(torch.ones(T, T, dtype=torch.bool, device=device), 1)


def _run_block(
    b: BlockSpec, layer: nn.Module, x: Tensor, keep: Tensor | None, lengths: Tensor | None, T: int, initial: Any
) -> tuple[Tensor, Any]:
    """One block on (N, T, D) → (N, T, out), and the final state for the "hn" pooling.
    ``initial``: (h, c), each (N, layers·dirs·size), an initial state computed from an input."""
    n = x.shape[0]
    if b.kind in RECURRENT:
        assert isinstance(layer, Composite)
        inp: Any = x if b.batch_first else x.transpose(0, 1)
        order = None
        if b.packed and b.sort:  # the old way: sort by length, pack sorted, unsort afterwards
            order = torch.argsort(lengths, descending=True, stable=True)
            inp = inp[order] if b.batch_first else inp[:, order]
            inp = pack_padded_sequence(inp, lengths[order].cpu(), batch_first=b.batch_first, enforce_sorted=True)
        elif b.packed:
            inp = pack_padded_sequence(inp, lengths.cpu(), batch_first=b.batch_first, enforce_sorted=False)
        state: Any = None
        dirs = 2 if b.bidirectional else 1
        if initial is not None:
            h0 = initial[0].reshape(n, b.num_layers * dirs, -1).transpose(0, 1).contiguous()
            c0 = initial[1].reshape(n, b.num_layers * dirs, -1).transpose(0, 1).contiguous()
            if order is not None:
                h0, c0 = h0[:, order], c0[:, order]
            state = (h0, c0) if b.kind == "lstm" else h0
        elif layer.h0 is not None:
            h0 = layer.h0.expand(-1, n, -1).contiguous()
            state = (h0, layer.c0.expand(-1, n, -1).contiguous()) if b.kind == "lstm" else h0
        out, hn = layer.layer(inp, state)
        if layer.chain is not None:
            out, hn = layer.chain(out)
        if b.packed:
            out, _ = pad_packed_sequence(out, batch_first=b.batch_first, total_length=T, padding_value=b.padding_value)
        if order is not None:
            inverse = torch.argsort(order)
            out = out[inverse] if b.batch_first else out[:, inverse]
            hn = tuple(h[:, inverse] for h in hn) if isinstance(hn, tuple) else hn[:, inverse]
        out = out if b.batch_first else out.transpose(0, 1)
        if isinstance(hn, tuple):
            hn = hn[0] if b.state == "h" else hn[1]
        final = torch.cat([hn[-2], hn[-1]], -1) if b.bidirectional and layer.chain is None else hn[-1]
        return out, final
    if b.kind in CELLS:
        assert isinstance(layer, Composite)
        hidden = b.out
        if initial is not None:
            h, c = initial
        else:
            h = layer.h0.expand(n, -1) if layer.h0 is not None else x.new_zeros(n, hidden)
            c = layer.c0.expand(n, -1) if layer.c0 is not None else x.new_zeros(n, hidden)
        outs = []
        steps = {"index": lambda: [x[:, t] for t in range(T)], "unbind": lambda: list(x.unbind(1)),
                 "split": lambda: [p.squeeze(1) for p in torch.split(x, 1, dim=1)]}[b.loop_read]()  # fmt: skip
        buffer = x.new_zeros(n, T, hidden) if b.loop_write == "setitem" else None
        for t in reversed(range(T)) if b.reverse else range(T):
            if b.kind == "lstm_cell":
                h2, c2 = layer.cell(steps[t], (h, c))
            else:
                h2, c2 = layer.cell(steps[t], h), c
            if b.carry_mask:
                k = keep[:, t, None]
                h, c = torch.where(k, h2, h), torch.where(k, c2, c)
            else:
                h, c = h2, c2
            outs.append(h)
            if buffer is not None:
                buffer[:, t] = h
        if b.reverse:
            outs.reverse()
        return (torch.stack(outs, 1) if buffer is None else buffer), (c if b.state == "c" else h)
    if b.kind == "linear":
        return _activation(b.act, layer(x)), None
    if b.kind == "norm" and b.norm.startswith("normalize"):
        return _activation(b.act, F.normalize(x, p=1.0 if b.norm == "normalize_p1" else 2.0, dim=-1)), None
    if b.kind == "norm":
        return _activation(b.act, layer(x)), None
    if b.kind == "attention":
        assert isinstance(layer, Composite)
        q, k, v = layer.q(x), layer.k(x), layer.v(x)
        causal = _causal_mask(T, x.device)
        if b.scores == "sdpa":
            mask = None if b.causal == "none" else ~causal
            if b.key_padding:
                mask = keep[:, None, :] if mask is None else mask & keep[:, None, :]
            return layer.o(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), None
        if b.scores == "einsum":
            s = torch.einsum("btd,bsd->bts", q, k) * layer.scale
        elif b.scores == "bmm":
            s = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        else:
            s = q @ k.transpose(1, 2) * layer.scale
        if b.causal == "masked_fill":
            s = s.masked_fill(causal, INF)
        elif b.causal == "triu_add":
            s = s + torch.triu(torch.full((T, T), INF, dtype=s.dtype, device=s.device), 1)
        elif b.causal == "where":
            s = torch.where(causal, INF, s)
        if b.key_padding and b.key_padding_form == "where":
            s = torch.where(keep[:, None, :], s, INF)
        elif b.key_padding and b.key_padding_form == "additive":
            s = s + torch.zeros_like(keep, dtype=s.dtype).masked_fill(~keep, INF)[:, None, :]
        elif b.key_padding and b.key_padding_form == "neg_large":
            s = s.masked_fill(~keep[:, None, :], -1e9)
        elif b.key_padding:
            s = s.masked_fill(~keep[:, None, :], INF)
        w = torch.softmax(s, -1)
        return layer.o(torch.einsum("bts,bsd->btd", w, v) if b.scores == "einsum" else w @ v), None
    if b.kind == "mha":
        attn_mask = _causal_mask(T, x.device) if b.causal != "none" else None
        kpm = ~keep if b.key_padding else None
        return layer(x, x, x, attn_mask=attn_mask, key_padding_mask=kpm, need_weights=False)[0], None
    if b.kind == "mask_fill":
        return x.masked_fill(~keep[..., None], 0.0), None
    if b.kind == "encdec":  # the encoder's final state starts the decoder, which reads the reversed steps
        _, state = layer["enc"](x)
        out, state = layer["dec"](x.flip(1), state)
        return out, state[0][-1] if isinstance(state, tuple) else state[-1]
    if b.kind == "conv":
        y = x.transpose(1, 2)
        if b.causal == "left_pad":
            y = F.pad(y, (b.kernel - 1, 0))
        return _activation(b.act, layer(y).transpose(1, 2)), None
    if b.kind == "gated":
        u = layer(x)
        a, g = u.chunk(2, -1)
        if b.act == "glu":
            return F.glu(u, -1), None
        if b.act == "tanh_sigmoid":
            return torch.tanh(a) * torch.sigmoid(g), None
        return a * torch.sigmoid(g), None
    if b.kind == "cumsum":
        return torch.cumsum(x, 1) / torch.arange(1, T + 1, dtype=x.dtype, device=x.device)[:, None], None
    if b.kind == "center":
        return x - x.mean(1, keepdim=True), None
    raise AssertionError(b.kind)


# -- data ----------------------------------------------------------------------------------------
def position_map(s: ModelSpec) -> np.ndarray:
    """For each model step, the input step it reads (-1: a constant pad)."""
    return move(s, torch.arange(s.T)[None], -1)[0].numpy()


def make_data(s: ModelSpec) -> tuple[list[Tensor], list[Tensor]]:
    """(background, X), each a list [main, number?, static?, context?]."""
    g = torch.Generator().manual_seed(s.seed + 1)
    pm = position_map(s)

    def main(n: int) -> Tensor:
        if s.input == "float":
            return torch.randn(n, s.T, s.width, generator=g, dtype=F64) * s.spread
        shape = (n, s.T) if s.input == "tokens" else (n, s.T, s.width)
        low = 1 if s.context == "ids" else 0
        return torch.randint(low, s.vocab + 2 * s.unk, shape, generator=g)

    def add_pads(ids: Tensor) -> None:
        """ids context: padding tokens, with model step 0 never padding."""
        for i in range(ids.shape[0]):
            if s.holes:
                model_pad = torch.rand(s.T, generator=g) < 0.4
                model_pad[0] = False
            else:
                length = int(torch.randint(1, s.T + 1, (1,), generator=g))
                model_pad = torch.arange(s.T) >= length
            for t in range(s.T):
                if pm[t] >= 0:
                    col = (i, int(pm[t]), 0) if s.input == "columns" else (i, int(pm[t]))
                    if model_pad[t]:
                        ids[col] = PAD

    def context(n: int) -> Tensor:
        if s.context == "lengths":
            return torch.randint(1, s.T + 1, (n,), generator=g).to(torch.int32 if s.context_dtype == "int32" else torch.int64)
        keep = torch.rand(n, s.T, generator=g) < 0.6
        if not s.holes:
            keep = torch.arange(s.T)[None, :] < torch.randint(1, s.T + 1, (n, 1), generator=g)
        keep[:, 0] = True
        return {"uint8_bool": keep.to(torch.uint8), "int64_ne": keep.long(), "int64_tobool": keep.long()}.get(
            s.context_dtype, keep
        )

    out = []
    for n in (s.n_bg, s.n_x):
        inputs = [main(n)]
        if s.context == "ids":
            add_pads(inputs[0])
        if s.number:
            inputs.append(torch.randint(0, 7, (n, s.T), generator=g))
        if s.static:
            inputs.append(torch.randn(n, s.static, generator=g, dtype=F64) * s.spread)
        if s.has_context:
            inputs.append(context(n))
        out.append(inputs)
    background, X = out
    if s.dups:  # repeated rows: the last reference repeats the first; the last sample's main input the first's
        for t in background:
            t[-1] = t[0]
        for t in X[:1]:
            t[-1] = t[0]
    if s.edge:
        for x, b in zip(X, background, strict=True):
            x[0] = b[0]
    if s.tiny and s.n_x > 1:
        X[0][-1] = background[0][-1] + 1e-7 * torch.randn(X[0].shape[1:], generator=g, dtype=F64)
    return background, X


# -- judging -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str  # refused | exact | defect
    detail: str
    spec: Any
    checks: tuple[str, ...] = ()  # the properties checked beyond additivity (for the census)

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}\n{self.spec!r}"


def _outputs(model: FuzzNet, inputs: list[Tensor]) -> np.ndarray:
    with torch.no_grad():
        out = model(*[t.clone() for t in inputs])
    return out.reshape(out.shape[0], -1).numpy()


def expected_gap(model: FuzzNet, s: ModelSpec, background: list[Tensor], X: list[Tensor]) -> np.ndarray:
    """f(x) − mean_r f(r, context of x) per (sample, output), from the model's own outputs."""
    fx = _outputs(model, X)
    rows = []
    for i in range(s.n_x):
        refs = list(background)
        if s.has_context:
            c = X[s.context_index]
            refs[s.context_index] = c[i : i + 1].expand(s.n_bg, *c.shape[1:]).clone()
        if s.context == "ids":
            model.keep_override = model.keep_of(X[0][i : i + 1], None).expand(s.n_bg, -1).clone()
        try:
            rows.append(_outputs(model, refs).mean(0))
        finally:
            model.keep_override = None
    return fx - np.stack(rows)


def zero_masks(s: ModelSpec, X: list[Tensor], model: FuzzNet) -> dict[str, np.ndarray]:
    """Boolean masks over (n, T[, width]) input positions (main input) whose attribution must be exactly 0,
    for every output; by reason."""
    n, T = s.n_x, s.T
    shape = tuple(X[0].shape)
    pm = position_map(s)
    masks: dict[str, np.ndarray] = {}
    unused_steps = np.array([t not in set(pm.tolist()) for t in range(T)])
    if unused_steps.any():  # shift drops the last step
        m = np.zeros(shape, bool)
        m[:, unused_steps] = True
        masks["unused step"] = m
    if s.dummy in ("slice", "zero_weight", "column"):
        m = np.zeros(shape, bool)
        m[..., -1] = True
        masks[f"dummy ({s.dummy})"] = m
    first = s.blocks[0]
    guarded = s.entry_mask != "none" or (first.packed and not first.residual)
    if s.context != "none" and guarded:
        keep = model.keep_of(X[0], X[s.context_index] if s.has_context else None).numpy()  # model time
        m = np.zeros(shape, bool)
        for i in range(n):
            for t in range(T):
                if not keep[i, t] and pm[t] >= 0:
                    m[i, pm[t]] = True
        masks["masked step"] = m
    return masks


def is_causal(s: ModelSpec) -> bool:
    return s.pool == "step" and all(b.is_causal() for b in s.blocks)


def evaluate(s: ModelSpec) -> Outcome:
    model = FuzzNet(s)
    background, X = make_data(s)
    bg_arg: Any = background if len(background) > 1 else background[0]
    x_arg: Any = X if len(X) > 1 else X[0]
    # the model itself must work: a failure here is the grammar's, not rnnshap's
    fx = _outputs(model, X)
    assert np.isfinite(fx).all() and np.isfinite(_outputs(model, background)).all(), "the drawn model gives non-finite outputs"
    try:
        explainer = rnnshap.DeepExplainer(model, bg_arg, **({"batch_size": s.batch_size} if s.batch_size else {}))
    except REFUSED as error:
        return Outcome("refused", _refusal_name(error), s)
    except Exception as error:  # noqa: BLE001
        return Outcome("defect", f"construction raised {type(error).__name__} (not a refusal): {_short(error)}", s)
    try:
        values = explainer.shap_values(x_arg)
    except Exception as error:  # noqa: BLE001
        return Outcome("defect", f"shap_values raised {type(error).__name__}: {_short(error)}", s)
    values_list = values if isinstance(values, list) else [values]
    out_shape = tuple(model(*[t.clone() for t in X]).shape[1:])
    main = np.asarray(values_list[0], np.float64)
    expected_shape = (*X[0].shape, *out_shape)
    if main.shape != expected_shape:
        return Outcome("defect", f"values shape {main.shape}, expected {expected_shape}", s)
    if not all(np.isfinite(v).all() for v in values_list):
        return Outcome("defect", "non-finite attributions", s)
    k = int(np.prod(out_shape)) if out_shape else 1
    gap = expected_gap(model, s, background, X)
    total = sum(np.asarray(v, np.float64).reshape(s.n_x, -1, k).sum(1) for v in values_list)
    excess = np.abs(total - gap) / np.maximum(1.0, np.abs(gap))
    if excess.max() > TOL:
        i, j = np.unravel_index(int(excess.argmax()), excess.shape)
        return Outcome(
            "defect",
            f"not additive: sample {i} output {j}: Σφ = {total[i, j]:.10g}, f(x) − E f(r) = {gap[i, j]:.10g} (relative error "
            f"{excess.max():.3g})",
            s,
        )
    flat = main.reshape(*X[0].shape, k)
    checks: list[str] = []
    for reason, mask in zero_masks(s, X, model).items():
        checks.append(reason.split(" (")[0]) if mask.any() else None
        if mask.any() and np.abs(flat[mask]).max() != 0.0:
            return Outcome("defect", f"{reason} gets nonzero attribution: max |φ| = {np.abs(flat[mask]).max():.3g}", s)
    if s.has_context and np.abs(values_list[-1]).max() != 0.0:
        return Outcome("defect", f"the context input gets nonzero attribution {np.abs(values_list[-1]).max():.3g}", s)
    if s.edge and s.n_bg == 1:
        same = max(np.abs(v[0]).max() for v in values_list)
        if same != 0.0:
            return Outcome("defect", f"a sample equal to the only reference gets nonzero attribution {same:.3g}", s)
    if is_causal(s):
        checks.append("causal")
        pm = position_map(s)
        per = main.reshape(*X[0].shape, s.T, -1)  # (..., output step, k)
        for src in range(s.T):
            used = [t for t in range(s.T) if pm[t] == src]
            first_use = min(used) if used else s.T
            if first_use > 0:
                leak = np.abs(per[:, src, ..., :first_use, :]).max()
                if leak != 0.0:
                    return Outcome(
                        "defect",
                        f"causal model: input step {src} (read at model step {first_use}) gets {leak:.3g} for an earlier "
                        "output step",
                        s,
                    )
    if s.select != "all":
        problem = _check_selection(explainer, s, x_arg, values_list, out_shape)
        if problem:
            return Outcome("defect", problem, s)
    return Outcome("exact", f"max relative additivity error {excess.max():.2g}", s, tuple(checks))


def _check_selection(explainer: Any, s: ModelSpec, x_arg: Any, full: list[np.ndarray], out_shape: tuple[int, ...]) -> str | None:
    """Explaining a subset of the outputs gives the same values as explaining all of them."""
    n_out = int(np.prod(out_shape)) if out_shape else 1
    flat_full = [np.asarray(v).reshape(*v.shape[: v.ndim - len(out_shape)], n_out) for v in full]
    try:
        if s.select == "outputs":
            if not out_shape:
                chosen: list[Any] = [0]
            elif len(out_shape) == 1:
                chosen = [out_shape[0] - 1, 0]
            else:
                chosen = [tuple(d - 1 for d in out_shape), tuple(0 for _ in out_shape)]
            picked = explainer.shap_values(x_arg, outputs=chosen)
            shape = out_shape or (1,)
            columns = np.array([[np.ravel_multi_index(c if isinstance(c, tuple) else (c,), shape) for c in chosen]] * s.n_x)
        else:
            picked, ranks = explainer.shap_values(x_arg, ranked_outputs=min(2, n_out))
            columns = np.asarray(ranks)
    except Exception as error:  # noqa: BLE001
        return f"shap_values({s.select}) raised {type(error).__name__}: {_short(error)}"
    for v, f in zip(picked if isinstance(picked, list) else [picked], flat_full, strict=True):
        want = np.stack([f[i][..., columns[i]] for i in range(s.n_x)])
        scale = max(1.0, float(np.abs(f).max()))
        if v.shape != want.shape or np.abs(v - want).max() > 1e-10 * scale:
            diff = np.abs(v - want).max() if v.shape == want.shape else "n/a"
            return f"shap_values({s.select}) differs from the full explanation: shapes {v.shape} vs {want.shape}, max diff {diff}"
    return None


def _refusal_name(error: Exception) -> str:
    if isinstance(error, rnnshap.UnsupportedOperationError):
        return f"{type(error).__name__}: " + ", ".join(name for name, _ in error.ops)
    return f"{type(error).__name__}: {str(error).splitlines()[0][:140]}"


def _short(error: Exception) -> str:
    tb = traceback.extract_tb(error.__traceback__)
    where = f" [at {tb[-1].filename.split('/work/main/')[-1]}:{tb[-1].lineno}]" if tb else ""
    return str(error).splitlines()[0][:300] + where if str(error) else repr(error) + where
