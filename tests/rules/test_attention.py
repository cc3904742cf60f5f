"""Attention: F.scaled_dot_product_attention, nn.MultiheadAttention, nn.TransformerEncoderLayer and
nn.TransformerDecoderLayer are attributed exactly.

- Against a float64 reference: every form of the fused call gives the attributions of the same
  attention written out with torch operations (matmul, masked_fill, softmax, linear), whose rules are
  tested on their own; the written-out attention is checked against torch's output first.
- In models (LSTM → attention → head): additivity in float32 and float64 at input scales 1e-2 .. 1e2,
  float32 within 1e-3 of a float64 copy; a masked key and a future step get exactly 0.
- Refused by name: active attention dropout, torch's fused kernels called directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnshap
from rnnshap.rules.attention import MultiHeadAttention

from ..conftest import ADDITIVITY_TOL, FLOAT32_VS_FLOAT64, assert_additive, eps, model_outputs, relative_to_max
from ..models.torch import Composite, Function

Tensor = torch.Tensor
F64 = torch.float64
INF = float("-inf")
T, D = 5, 4


def _data(shape: tuple[int, ...], scale: float = 1.0, seed: int = 0, n_bg: int = 3, n_x: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(n_bg, *shape, generator=g, dtype=F64) * scale
    X = torch.randn(n_x, *shape, generator=g, dtype=F64) * scale
    X[0] = background[1]  # Δ = 0 for one pair
    return background, X


def _explain(model: nn.Module, background: Any, X: Any, dtype: torch.dtype = F64) -> Any:
    model = model.to(dtype).eval()
    cast = (lambda t: t.to(dtype) if t.is_floating_point() else t)
    bg = [cast(t) for t in background] if isinstance(background, list) else cast(background)
    x = [cast(t) for t in X] if isinstance(X, list) else cast(X)
    return rnnshap.DeepExplainer(model, bg).shap_values(x, check_additivity=False)


def _exact_in_both_dtypes(model: nn.Module, background: Tensor, X: Tensor, f32: bool = True) -> dict[torch.dtype, Any]:
    """Additivity in float64 (and float32 unless ``f32`` is False); float32 within 1e-3 of float64."""
    values = {}
    for dtype in (F64, torch.float32):
        values[dtype] = _explain(model, background, X, dtype)
        assert np.isfinite(np.asarray(values[dtype])).all()
        if dtype == F64 or f32:
            assert_additive(values[dtype], model.to(dtype), X.to(dtype), background.to(dtype), dtype)
    assert relative_to_max(values[torch.float32], values[F64]) < FLOAT32_VS_FLOAT64
    model.to(F64)
    return values


# -- F.scaled_dot_product_attention against the same attention written out --------------------------------
def _causal_keep(rows: int, columns: int) -> Tensor:
    return torch.ones(rows, columns, dtype=torch.bool).tril()


def _sdpa_operands(m: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    q, k, v = (t.unflatten(-1, (2, D // 2)).transpose(1, 2) for t in m.qkv(x).chunk(3, -1))  # (n, 2, T, 2)
    keep = _causal_keep(T, T) | (torch.arange(T) == T - 1)  # a causal mask that lets every row see the last key
    keep[:, 1] = False  # key 1 masked for every query
    kwargs: dict[str, Any] = {}
    if m.form == "bool":
        kwargs["attn_mask"] = keep
    elif m.form == "additive":
        kwargs["attn_mask"] = torch.zeros(T, T, dtype=x.dtype).masked_fill(~keep, INF) + 0.1 * torch.arange(T, dtype=x.dtype)
    elif m.form == "causal":
        kwargs["is_causal"] = True
    elif m.form == "scale":
        kwargs["scale"] = 0.3
    elif m.form == "tracked_mask":
        kwargs["attn_mask"] = torch.tanh(m.bias(x))[:, None, None, :, 0]  # (n, 1, 1, T), one bias per key
    elif m.form == "gqa":
        k, v = k[:, :1], v[:, :1]
        kwargs["enable_gqa"] = True
    elif m.form == "dead_row":
        kwargs["attn_mask"] = keep & (torch.arange(T) != 2)[:, None]  # query 2 sees nothing: torch gives 0
    return q, k, v, kwargs


def _sdpa(m: nn.Module, x: Tensor) -> Tensor:
    q, k, v, kwargs = _sdpa_operands(m, x)
    mixed = _write_out(q, k, v, **kwargs) if m.written else F.scaled_dot_product_attention(q, k, v, **kwargs)
    return m.out(mixed.transpose(1, 2).flatten(1))


def _write_out(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
              scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    if enable_gqa:
        k, v = k.repeat_interleave(q.shape[1] // k.shape[1], 1), v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    keep = torch.ones(scores.shape[-2:], dtype=torch.bool)
    if is_causal:
        keep = _causal_keep(*scores.shape[-2:])
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        keep = keep & attn_mask
    scores = scores.masked_fill(~keep, INF)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores = scores + attn_mask
    weights = torch.softmax(scores, -1)
    dead = ~keep.any(-1, keepdim=True)  # torch's SDPA gives 0 where a row is masked throughout
    return torch.where(dead, 0.0, weights) @ v


def sdpa(form: str, written: bool = False) -> Composite:
    """Linear → q, k, v (two heads) → attention → Linear; ``written=True`` writes the attention out."""
    return Composite(_sdpa, form=form, written=written, qkv=nn.Linear(3, 3 * D), out=nn.Linear(T * D, 2),
                     bias=nn.Linear(3, 1))  # bias: an input-dependent additive mask ("tracked_mask")  # fmt: skip


SDPA_FORMS = ["plain", "bool", "additive", "causal", "scale", "tracked_mask", "gqa", "dead_row"]


@pytest.mark.parametrize("form", SDPA_FORMS)
def test_sdpa_equals_the_attention_written_out(form: str) -> None:
    torch.manual_seed(1)
    fused = sdpa(form).double().eval()
    written = sdpa(form, written=True).double().eval()
    written.load_state_dict(fused.state_dict())
    background, X = _data((T, 3))
    with torch.no_grad():  # the written-out attention is torch's
        torch.testing.assert_close(written(X), fused(X), rtol=1e-12, atol=1e-12)
    values = _exact_in_both_dtypes(fused, background, X)
    np.testing.assert_allclose(values[F64], _explain(written, background, X), rtol=1e-9, atol=1e-12)
    if form in ("bool", "additive"):
        assert np.abs(values[F64]).max() > 0


@pytest.mark.parametrize("scale", [1e-2, 1.0, 10.0, 100.0])
def test_causal_sdpa_across_input_scales(scale: float) -> None:
    """float64 adds up at every scale and float32 up to 10; at 1e2 the logits q·k reach 1e4, where float32's
    own softmax rounds by ~1e-4 of Δ (as for the written-out attention, test_rules_masks), so float32 is held
    to the float64 attributions there (within 1e-3)."""
    torch.manual_seed(2)
    background, X = _data((T, 3), scale, seed=3)
    _exact_in_both_dtypes(sdpa("causal").double(), background, X, f32=scale <= 10.0)


# -- nn.MultiheadAttention against the same attention written out ----------------------------------------
def _mha_written(mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
                 attn_mask: Tensor | None, need_weights: bool, average: bool) -> tuple[Tensor, Tensor | None]:
    """torch's multi-head attention in (seq, batch, feature) layout, written out with torch operations."""
    heads, E = mha.num_heads, mha.embed_dim
    hd = E // heads
    L, n, _ = query.shape
    if mha._qkv_same_embed_dim:
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
    mask = torch.zeros(L, key.shape[0], dtype=query.dtype) if attn_mask is None else attn_mask
    mask = torch.zeros(mask.shape, dtype=query.dtype).masked_fill(mask, INF) if mask.dtype == torch.bool else mask
    mask = mask.reshape(-1, L, key.shape[0])
    pad = torch.zeros(n, key.shape[0], dtype=query.dtype) if key_padding_mask is None else key_padding_mask
    pad = torch.zeros(pad.shape, dtype=query.dtype).masked_fill(pad, INF) if pad.dtype == torch.bool else pad
    if mha.bias_k is not None:
        k, v = torch.cat([k, mha.bias_k.repeat(1, n, 1)]), torch.cat([v, mha.bias_v.repeat(1, n, 1)])
        mask, pad = F.pad(mask, (0, 1)), F.pad(pad, (0, 1))
    q, k, v = (t.reshape(t.shape[0], n * heads, hd).transpose(0, 1) for t in (q, k, v))
    if mha.add_zero_attn:
        k = torch.cat([k, torch.zeros(n * heads, 1, hd, dtype=k.dtype)], 1)
        v = torch.cat([v, torch.zeros(n * heads, 1, hd, dtype=v.dtype)], 1)
        mask, pad = F.pad(mask, (0, 1)), F.pad(pad, (0, 1))
    S = k.shape[1]
    mask = mask + pad.reshape(n, 1, 1, S).expand(-1, heads, -1, -1).reshape(n * heads, 1, S)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1)
    out = (weights @ v).transpose(0, 1).reshape(L, n, E)
    out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
    if not need_weights:
        return out, None
    weights = weights.reshape(n, heads, L, S)
    return out, weights.mean(1) if average else weights


def _mha_operands(m: nn.Module, x: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], dict[str, Any]]:
    h = m.lin(x)
    query = key = value = h
    if m.form == "kdim_vdim":
        key, value = m.kv(x)[..., :3], m.kv(x)[..., 3:]
    elif m.form == "cross":
        key = value = torch.tanh(m.kv(x)[..., :D])
    keep_last = torch.zeros(x.shape[0], T, dtype=torch.bool)
    keep_last[:, 1] = True  # key 1 is padding
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    kw: dict[str, Any] = {"need_weights": m.form not in ("no_weights", "causal_hint")}
    if m.form in ("bool_masks", "kdim_vdim", "bias_kv_zero_attn", "cross", "seq_first", "no_weights", "per_head"):
        kw.update(key_padding_mask=keep_last, attn_mask=causal)
    elif m.form == "float_masks":
        kw.update(key_padding_mask=torch.zeros(x.shape[0], T, dtype=x.dtype).masked_fill(keep_last, INF),
                  attn_mask=torch.zeros(T, T, dtype=x.dtype).masked_fill(causal, INF) + 0.2)
    elif m.form == "mask_3d":
        per_head = (torch.rand(2, T, T, generator=torch.Generator().manual_seed(5)) < 0.3) & ~torch.eye(T, dtype=torch.bool)
        kw.update(attn_mask=per_head.repeat(x.shape[0], 1, 1))  # (n · heads, T, T)
    elif m.form == "causal_hint":  # torch drops the mask and hands is_causal to SDPA
        kw.update(attn_mask=nn.Transformer.generate_square_subsequent_mask(T, dtype=x.dtype), is_causal=True)
    if m.form == "per_head":
        kw["average_attn_weights"] = False
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    return (query, key, value), kw


def _mha(m: nn.Module, x: Tensor) -> Tensor:
    (query, key, value), kw = _mha_operands(m, x)
    if m.written:
        q, k, v = (t.transpose(0, 1) for t in (query, key, value)) if m.batch_first else (query, key, value)
        need = kw.get("need_weights", True)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        mask = kw.get("attn_mask") if not kw.get("is_causal") else causal
        out, weights = _mha_written(
            m.mha, q, k, v, kw.get("key_padding_mask"), mask, need, kw.get("average_attn_weights", True)
        )
        out = out.transpose(0, 1) if m.batch_first else out
    else:
        out, weights = m.mha(query, key, value, **kw)
    out = out if m.batch_first else out.transpose(0, 1)
    if weights is None:
        weights = torch.zeros(x.shape[0], T, m.S, dtype=x.dtype)
    elif weights.dim() == 4:
        weights = weights[:, 0] - weights[:, 1]
    return m.out(torch.cat([out.flatten(1), weights.flatten(1)], 1))


def mha(form: str, written: bool = False) -> Composite:
    """Linear → nn.MultiheadAttention (query from x, keys and values from x or a second projection) → Linear."""
    kw: dict[str, Any] = {}
    if form == "kdim_vdim":
        kw = {"kdim": 3, "vdim": 5}
    if form == "bias_kv_zero_attn":
        kw = {"add_bias_kv": True, "add_zero_attn": True}
    lin, kv = nn.Linear(3, D), nn.Linear(3, 8)
    attention = nn.MultiheadAttention(D, 2, batch_first=form != "seq_first", **kw)
    if form == "bias_kv_zero_attn":
        nn.init.normal_(attention.bias_k)
        nn.init.normal_(attention.bias_v)
    nn.init.normal_(attention.in_proj_bias)  # torch zeroes them: give them values
    keys = T + 2 if form == "bias_kv_zero_attn" else T  # keys, with the bias key and the zero key
    return Composite(_mha, form=form, written=written, batch_first=form != "seq_first", lin=lin, kv=kv, mha=attention, S=keys,
                     out=nn.Linear(T * D + T * keys, 2))  # fmt: skip


MHA_FORMS = ["plain", "bool_masks", "float_masks", "mask_3d", "seq_first", "no_weights", "per_head", "causal_hint", "kdim_vdim",
             "cross", "bias_kv_zero_attn"]


@pytest.mark.parametrize("form", MHA_FORMS)
def test_multihead_attention_equals_the_attention_written_out(form: str) -> None:
    torch.manual_seed(3)
    fused = mha(form).double().eval()
    written = mha(form, written=True).double().eval()
    written.load_state_dict(fused.state_dict())
    background, X = _data((T, 3), seed=4)
    with torch.no_grad():
        torch.testing.assert_close(written(X), fused(X), rtol=1e-12, atol=1e-12)
    values = _exact_in_both_dtypes(fused, background, X)
    np.testing.assert_allclose(values[F64], _explain(written, background, X), rtol=1e-9, atol=1e-12)


def _static_keys(model: nn.Module, x: Tensor) -> Tensor:
    query = model.lin(x).transpose(0, 1)  # (T, n, D)
    static = torch.tanh(model.keys(x)).reshape(x.shape[0], T, 2, D // 2).transpose(1, 2).reshape(x.shape[0] * 2, T, D // 2)
    m = model.mha
    if model.written:
        q = F.linear(query, m.in_proj_weight[:D], m.in_proj_bias[:D]).reshape(T, -1, D // 2).transpose(0, 1)
        mixed = torch.softmax(q @ static.transpose(1, 2) / math.sqrt(D // 2), -1) @ static.cos()
        out = F.linear(mixed.transpose(0, 1).reshape(T, -1, D), m.out_proj.weight, m.out_proj.bias)
    else:
        out = F.multi_head_attention_forward(
            query, query, query, D, 2, m.in_proj_weight, m.in_proj_bias, None, None, False, 0.0, m.out_proj.weight,
            m.out_proj.bias, training=False, need_weights=False, static_k=static, static_v=static.cos(),
        )[0]
    return model.out(out.transpose(0, 1).flatten(1))


def static_keys(written: bool = False) -> Composite:
    """F.multi_head_attention_forward with static_k / static_v computed from the input (cached keys)."""
    return Composite(_static_keys, written=written, lin=nn.Linear(3, D), keys=nn.Linear(3, D), mha=nn.MultiheadAttention(D, 2),
                     out=nn.Linear(T * D, 1))  # fmt: skip


def test_static_keys_and_values_equal_the_attention_written_out() -> None:
    torch.manual_seed(4)
    fused, written = static_keys().double().eval(), static_keys(written=True).double().eval()
    written.load_state_dict(fused.state_dict())
    background, X = _data((T, 3), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(written(X), fused(X), rtol=1e-12, atol=1e-12)
    values = _exact_in_both_dtypes(fused, background, X)
    np.testing.assert_allclose(values[F64], _explain(written, background, X), rtol=1e-9, atol=1e-12)


def test_unbatched_multihead_attention_is_exact() -> None:
    unbatched = Composite(
        lambda m, x: torch.stack([m.out(m.mha(s, s, s, attn_mask=torch.eye(T, dtype=torch.bool))[0].sum(0)) for s in m.lin(x)]),
        lin=nn.Linear(3, D), mha=nn.MultiheadAttention(D, 2), out=nn.Linear(D, 1),
    )

    torch.manual_seed(4)
    background, X = _data((T, 3), seed=5)
    _exact_in_both_dtypes(unbatched.double(), background, X)


# -- models: an LSTM, then attention -----------------------------------------------------------------------
def _lstm_self_attention(m: nn.Module, x: Tensor, padding: Tensor) -> Tensor:
    """LSTM → self-attention over its states with a key padding mask (a bool context input) → masked mean → head."""
    h = m.lstm(x)[0]
    mixed = m.mha(h, h, h, key_padding_mask=padding, need_weights=False)[0]
    kept = (~padding).to(x.dtype).unsqueeze(-1)
    return m.head((mixed * kept).sum(1) / kept.sum(1))


@pytest.mark.parametrize("scale", [1e-2, 1.0, 1e2])
def test_lstm_self_attention_with_key_padding_gives_masked_steps_exactly_zero(scale: float) -> None:
    torch.manual_seed(5)
    model = Composite(_lstm_self_attention, lstm=nn.LSTM(3, 8, batch_first=True),
                      mha=nn.MultiheadAttention(8, 2, batch_first=True), head=nn.Linear(8, 2)).eval()  # fmt: skip
    background, X = _data((T, 3), scale, seed=6, n_x=3)
    padding = torch.arange(T) >= torch.tensor([[T], [T - 2], [T - 1]])  # sample 1: two steps of padding, sample 2: one
    bg_padding = torch.zeros(3, T, dtype=torch.bool)
    values = {}
    for dtype in (F64, torch.float32):
        m = model.to(dtype)
        values[dtype] = _explain(m, [background, bg_padding], [X, padding], dtype)[0]
        # the padding is context: the references run with the explained sample's padding
        base = np.mean([model_outputs(m, [background[j : j + 1].expand_as(X).to(dtype), padding]) for j in range(3)], axis=0)
        gap = model_outputs(m, [X.to(dtype), padding]) - base
        excess = np.abs(values[dtype].sum((1, 2)) - gap) / np.maximum(1.0, np.abs(gap))
        assert excess.max() <= ADDITIVITY_TOL[dtype], excess.max()
        assert np.abs(values[dtype][padding.numpy()]).max() == 0.0  # the masked steps get exactly 0
    assert relative_to_max(values[torch.float32], values[F64]) < FLOAT32_VS_FLOAT64


def lstm_encoder(norm_first: bool, activation: str) -> nn.Module:
    return Composite(
        lambda m, x: m.head(m.layer(m.lstm(x)[0]).mean(1)),
        lstm=nn.LSTM(3, 8, batch_first=True),
        layer=nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first),
        head=nn.Linear(8, 2),
    )


@pytest.mark.parametrize(("norm_first", "activation", "scale"), [
    (False, "relu", 1e-2), (False, "gelu", 1.0), (True, "relu", 1e2), (True, "gelu", 1e-2), (True, "gelu", 1e2),
])
def test_lstm_transformer_encoder_layer_is_exact(norm_first: bool, activation: str, scale: float) -> None:
    torch.manual_seed(6)
    background, X = _data((T, 3), scale, seed=7)
    _exact_in_both_dtypes(lstm_encoder(norm_first, activation), background, X)


def lstm_decoder(norm_first: bool) -> nn.Module:
    """A causal TransformerDecoderLayer over an LSTM's states (self-attention and memory both causal): one output per step."""
    return Composite(
        lambda m, x: m.head(
            m.layer(h := m.lstm(x)[0], h, tgt_mask=(causal := nn.Transformer.generate_square_subsequent_mask(T, dtype=x.dtype)),
                    memory_mask=causal, tgt_is_causal=True, memory_is_causal=True)
        ).squeeze(-1),  # (n, T)
        lstm=nn.LSTM(3, 8, batch_first=True),
        layer=nn.TransformerDecoderLayer(8, 2, 16, dropout=0.1, activation="gelu", batch_first=True, norm_first=norm_first),
        head=nn.Linear(8, 1),
    )  # fmt: skip


@pytest.mark.parametrize(("norm_first", "scale"), [(False, 1.0), (True, 1e-2), (True, 1e2)])
def test_causal_decoder_layer_gives_future_steps_exactly_zero(norm_first: bool, scale: float) -> None:
    torch.manual_seed(7)
    background, X = _data((T, 3), scale, seed=8)
    values = _exact_in_both_dtypes(lstm_decoder(norm_first), background, X)
    for dtype in (F64, torch.float32):
        v = np.asarray(values[dtype])  # (n, T, 3, T outputs)
        future = np.tril(np.ones((T, T), dtype=bool), -1)  # [input step, output step]: the input comes after the output
        assert np.abs(v.transpose(0, 2, 1, 3)[:, :, future]).max() == 0.0
        assert np.abs(v.transpose(0, 2, 1, 3)[:, :, ~future]).max() > 0.0


def _counted_attention(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], MultiHeadAttention]:
    """Counts of the attention rule's reference and attribute calls and of torch's fused encoder fast path, and the
    rule that counts (give it as ``rules={F.multi_head_attention_forward: rule}``)."""
    calls = {"reference": 0, "attribute": 0, "fast": 0}
    fast_path = torch._transformer_encoder_layer_fwd

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["fast"] += 1
        return fast_path(*args, **kwargs)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counted)

    class Spy(MultiHeadAttention):
        def reference(self, call: Any) -> Any:
            calls["reference"] += 1
            return super().reference(call)

        def attribute(self, call: Any) -> Any:
            calls["attribute"] += 1
            return super().attribute(call)

    return calls, Spy()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_transformer_encoder_stack_with_key_padding_in_eval_under_no_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """In eval mode under no_grad torch takes its inference fast path (torch._transformer_encoder_layer_fwd on
    nested tensors), which needs that no tensor has a __torch_function__ override: both of rnnshap's passes run
    the Python path, one rule call per layer each, and add up to the fast path's outputs."""
    calls, spy = _counted_attention(monkeypatch)

    def stack(m: nn.Module, x: Tensor) -> Tensor:
        padding = torch.zeros(x.shape[0], T, dtype=torch.bool)
        padding[:, -1] = True
        return m.head(m.encoder(m.lstm(x)[0], src_key_padding_mask=padding)[:, 0])

    torch.manual_seed(8)
    lstm = nn.LSTM(3, 8, batch_first=True)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    model = Composite(stack, lstm=lstm, encoder=encoder, head=nn.Linear(8, 1)).double().eval()
    background, X = _data((T, 3), seed=9)
    with torch.no_grad():
        model(X)
        assert calls["fast"] == 2  # torch's own call took the fast path
        explainer = rnnshap.DeepExplainer(model, background, rules={F.multi_head_attention_forward: spy})
        assert explainer.engine.distinct_references  # (the layout check's passes, run where several samples first ask)
        calls.update(reference=0, attribute=0, fast=0)
        values = explainer.shap_values(X)
    # the passes take the Python path; the fast path runs only in the plain forward of the references (one call per
    # layer) that vets the constructor's reference pass, which misses its bits; the same forward recording for
    # autograd (no fast path) gives them, so the call reuses that pass (no reference rule call)
    assert calls == {"reference": 0, "attribute": 2, "fast": 2}
    assert_additive(values, model, X, background, F64)
    assert np.abs(values[:, -1]).max() == 0.0  # the padded step is never a key, and its query is not read


@pytest.mark.parametrize("frozen", [False, True])
def test_a_transformer_encoders_reference_pass_is_kept_between_calls(monkeypatch: pytest.MonkeyPatch, frozen: bool) -> None:
    """nn.TransformerEncoder in eval mode: a plain forward without autograd takes torch's fused fast path, whose bits
    differ from the layers' own operations (which the passes run), so the reference pass used to run again at every
    call; vetted by the same forward recording for autograd, it is kept: a later call runs no reference rule, one
    plain forward per call without the fast path after the first, and gives the same values bit for bit. Frozen
    parameters too (the fast path is then taken with autograd on unless an input requires grad)."""
    calls, spy = _counted_attention(monkeypatch)

    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(T * 8, 2)).eval().requires_grad_(not frozen)
    background, X = torch.randn(6, T, 8), torch.randn(3, T, 8)
    explainer = rnnshap.DeepExplainer(model, background, rules={F.multi_head_attention_forward: spy})
    first = explainer.shap_values(X)
    calls.update(reference=0, attribute=0, fast=0)
    second = explainer.shap_values(X)
    assert calls == {"reference": 0, "attribute": 2, "fast": 0}  # (the vet remembers to record for autograd)
    np.testing.assert_array_equal(second, first)
    with torch.no_grad():
        gap = (model(X) - model(background).mean(0)).numpy()
    np.testing.assert_allclose(second.sum((1, 2)), gap, rtol=0, atol=50 * eps(torch.float32) * np.abs(second).sum((1, 2)).max())


# -- refused by name ---------------------------------------------------------------------------------------
def test_attention_dropout_in_training_is_explained_in_eval_mode() -> None:
    train = Composite(lambda m, x: m.out(m.mha(h := m.lin(x), h, h)[0].mean(1)), lin=nn.Linear(3, D), out=nn.Linear(D, 1),
                      mha=nn.MultiheadAttention(D, 2, dropout=0.1, batch_first=True))  # fmt: skip

    model = train.double().train()
    # shap explains the eval-mode function: eval() sets dropout_p to 0 (warned, every flag put back)
    with pytest.warns(UserWarning, match="'mha' \\(MultiheadAttention\\)"):
        rnnshap.DeepExplainer(model, torch.randn(3, T, 3, dtype=F64))
    assert model.training and model.mha.training
    rnnshap.DeepExplainer(model.eval(), torch.randn(3, T, 3, dtype=F64))


def test_sdpa_dropout_is_refused_by_name() -> None:
    def dropping(x: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(x, x, x, dropout_p=0.2).sum((1, 2))

    with pytest.raises(rnnshap.ModelStateError, match="scaled_dot_product_attention"):
        rnnshap.DeepExplainer(Function(dropping).eval(), torch.randn(3, T, D, dtype=F64))


def test_fused_attention_kernel_called_directly_is_refused_by_name() -> None:
    def native(m: nn.Module, x: Tensor) -> Tensor:
        out = torch._native_multi_head_attention(
            x, x, x, D, 2, m.mha.in_proj_weight, m.mha.in_proj_bias, m.mha.out_proj.weight, m.mha.out_proj.bias,
            need_weights=False,
        )[0]
        return out.sum((1, 2))

    with pytest.raises(rnnshap.UnsupportedOperationError, match="_native_multi_head_attention") as info:
        rnnshap.DeepExplainer(Composite(native, mha=nn.MultiheadAttention(D, 2, batch_first=True)).eval(), torch.randn(3, T, D))
    assert "fused attention kernel" in str(info.value)


@pytest.mark.parametrize(("dtype", "ulps"), [(torch.float16, 20), (torch.bfloat16, 12.8)])
def test_half_precision_attention_follows_the_float64_copy(dtype: torch.dtype, ulps: float) -> None:
    """16-bit attention is decomposed in float32 (as torch's math kernel keeps its intermediates): the values
    follow the float64 copy to 16-bit accuracy and pass the explainer's own additivity check for the dtype."""
    torch.manual_seed(9)
    model = lstm_decoder(norm_first=False).double().eval()
    background, X = _data((T, 3), seed=10)
    expected = rnnshap.DeepExplainer(model, background).shap_values(X)
    half = rnnshap.DeepExplainer(model.to(dtype), background.to(dtype)).shap_values(X.to(dtype))
    np.testing.assert_allclose(np.asarray(half, np.float64), expected, rtol=0, atol=ulps * eps(dtype) * np.abs(expected).max())


def _self_attention(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return Composite(lambda m, x: m.head(m.attention(x, x, x, need_weights=False)[0].flatten(1)),
                     attention=nn.MultiheadAttention(8, 2, batch_first=True), head=nn.Linear(8 * 20, 3)).eval()  # fmt: skip


def test_a_self_attentions_value_is_torchs_on_the_models_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch projects a self-attention's query, key and value in one product where they are one tensor (``query is
    key is value``), in three (which round otherwise) where they are not: the value the rule gives its output is the
    module's own on the pairs, bit for bit (float32), as the model computes it with gradients on (the pass turns the
    fused fast path of inference off, as gradients do)."""
    import rnnshap.rules.attention as attention

    values: list[Tensor] = []
    as_torch = attention.as_torch
    monkeypatch.setattr(attention, "as_torch", lambda computed, value: (values.append(value), as_torch(computed, value))[1])
    model, references = _self_attention(3), 6
    background, X = torch.randn(references, 20, 8), torch.randn(4, 20, 8)
    rnnshap.DeepExplainer(model, background).shap_values(X)
    pairs = X.repeat_interleave(references, 0)
    own = model.attention(pairs, pairs, pairs, need_weights=False)[0].detach()  # (with gradients: not the fused fast path)
    given = [v for v in values if v is not None]  # (the weights' value: None, need_weights=False)
    assert given and torch.equal(given[-1], own.transpose(0, 1))


@pytest.mark.parametrize("unread", [False, True])
def test_an_attentions_value_on_the_samples_rows_is_its_value_on_the_pairs(monkeypatch: pytest.MonkeyPatch, unread: bool) -> None:
    """The rule takes torch's value of a self-attention on the samples' distinct rows (the input side repeats each
    sample's rows along its references) and spreads it to the pairs: the values are those of every pair's, bit for
    bit, tested at once (the CPU) or after the pass (as on an accelerator). A per-head ``attn_mask`` keeps every
    pair's."""
    import contextlib

    import rnnshap.rules.attention as attention
    from rnnshap.formulas.torch_ops import values_unread

    background, X = torch.randn(6, 20, 8), torch.randn(4, 20, 8)
    taken: list[bool] = []
    on_rows = attention.MultiHeadAttention.value_on_rows

    def spied(self: Any, call: Any) -> Any:
        value = on_rows(self, call)
        taken.append(value is not None)
        return value

    def explain() -> np.ndarray:
        with values_unread() if unread else contextlib.nullcontext():
            return rnnshap.DeepExplainer(_self_attention(4), background).shap_values(X)

    monkeypatch.setattr(attention.MultiHeadAttention, "value_on_rows", spied)
    on_the_rows = explain()
    assert taken and all(taken)
    monkeypatch.setattr(attention.MultiHeadAttention, "value_on_rows", lambda self, call: None)
    assert np.array_equal(explain(), on_the_rows)

    def masked_per_head(m: nn.Module, x: Tensor) -> Tensor:  # (batch x heads, L, S): a mask per head keeps every pair's
        heads = torch.zeros(x.shape[0] * 2, 20, 20)
        return m.head(m.attention(x, x, x, attn_mask=heads, need_weights=False)[0].flatten(1))

    per_head = Composite(masked_per_head, attention=nn.MultiheadAttention(8, 2, batch_first=True), head=nn.Linear(8 * 20, 3))
    monkeypatch.setattr(attention.MultiHeadAttention, "value_on_rows", spied)
    taken.clear()
    rnnshap.DeepExplainer(per_head.eval(), background).shap_values(X)
    assert taken and not any(taken)


@pytest.mark.parametrize(("batch", "axis"), [((6,), 0), ((2, 3), 0), ((2, 3), 1), ((1,), 0), ((1,), 2)])
def test_the_gradient_through_fixed_attention_weights_copies_them_once_for_all_outputs(batch: tuple[int, ...], axis: int) -> None:
    """The values' gradient through attention's weights at the midpoints (fixed: no gradient), ``weightsᵀ @ grad``,
    under the explainer's vmap over K outputs: vmap's own rule for the product's values, bit for bit (the same products
    of the same operands), with the weights copied once, where that rule copies them once per output; anything else
    batched (the weights too) is each element's own product. ``axis``: where the outputs' axis lies in the gradients (a
    batch of one: vmap's rule views the weights K times, no copy)."""
    import torch.profiler

    from rnnshap.rules.elementwise import fixed_left_gradient

    torch.manual_seed(0)
    weights, grads = torch.rand(*batch, 7, 5), torch.randn(3, *batch, 7, 4)
    given = grads.movedim(0, axis)
    vmaps = torch.func.vmap(lambda g: torch.matmul(weights.transpose(-2, -1), g), in_dims=axis)(given)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        batched = torch.func.vmap(lambda g: fixed_left_gradient(weights, g), in_dims=axis)(given)
    assert torch.equal(batched, vmaps)
    looped = torch.stack([torch.matmul(weights.transpose(-2, -1), g) for g in grads])
    torch.testing.assert_close(batched, looped, rtol=0, atol=8 * eps(torch.float32) * float(looped.abs().max()))
    copies = [e.input_shapes[0] for e in profile.events() if e.name == "aten::copy_"]
    of_weights = [shape for shape in copies if tuple(shape[-2:]) in ((5, 7), (7, 5))]  # (the gradients': (7, 4))
    assert [math.prod(shape) for shape in of_weights] == ([] if batch == (1,) else [weights.numel()])
    both = torch.stack([weights, 2 * weights, weights.flip(-1)])
    each = torch.stack([torch.matmul(w.transpose(-2, -1), g) for w, g in zip(both, grads, strict=True)])
    assert torch.equal(torch.func.vmap(fixed_left_gradient)(both, grads), each)


def _eager_attention(m: nn.Module, x: Tensor) -> Tensor:
    """Attention written with ``torch.bmm`` and a softmax, as Hugging Face's eager attention (PatchTST's) writes it."""
    q, k, v = m.qkv(x).chunk(3, -1)
    return m.head(torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(8), -1), v).flatten(1))


@pytest.mark.parametrize("written", ["module", "bmm"])
def test_attention_explained_for_several_outputs_gives_each_outputs_values(monkeypatch: pytest.MonkeyPatch, written: str) -> None:
    """The outputs explained together (one backward batched over them, the weights copied once for all: see above) and
    each explained alone (one backward) give the same attributions, and the same as with torch's own ``bmm`` backward
    under the batched backward (:func:`fixed_left_product` replaced by the plain product), for ``nn.MultiheadAttention``
    (the attention rule) and for attention written with ``torch.bmm`` (the bilinear rule)."""
    import rnnshap.rules.attention as attention
    import rnnshap.rules.elementwise as elementwise

    steps = 40  # (weights of 40 x 40 entries: over fixed_left_product's least size)
    torch.manual_seed(5)
    if written == "module":
        attention_layer = nn.MultiheadAttention(8, 2, batch_first=True)
        model = Composite(lambda m, x: m.head(m.attention(x, x, x, need_weights=False)[0].flatten(1)),
                          attention=attention_layer, head=nn.Linear(8 * steps, 3)).eval()  # fmt: skip
    else:
        model = Composite(_eager_attention, qkv=nn.Linear(8, 24), head=nn.Linear(8 * steps, 3)).eval()
    torch.manual_seed(2)
    background, X = torch.randn(6, steps, 8), torch.randn(4, steps, 8)
    taken: list[tuple[tuple[int, ...], bool]] = []
    backward = elementwise._fixed_left_backward

    def spied(ctx: Any, grad: Tensor) -> list[Tensor]:
        taken.append((tuple(ctx.saved_tensors[0].shape), torch._C._functorch.is_batchedtensor(grad)))
        return backward(ctx, grad)

    with monkeypatch.context() as patched:
        patched.setattr(elementwise, "_fixed_left_backward", spied)
        together = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))
    heads = 2 if written == "module" else 1
    assert ((4 * 6 * heads, steps, steps), True) in taken  # (the weights at the midpoints of the pairs' every head)
    tolerance = 8 * eps(torch.float32) * float(np.abs(together).max())
    for k in range(3):
        alone = Composite(lambda m, x, k=k: m.whole(x)[:, k : k + 1], whole=model).eval()
        one = np.asarray(rnnshap.DeepExplainer(alone, background).shap_values(X))
        np.testing.assert_allclose(one.reshape(together[..., k].shape), together[..., k], rtol=0, atol=tolerance)
    plain = lambda fixed, b, product: product(fixed, b)  # noqa: E731
    monkeypatch.setattr(attention, "fixed_left_product", plain)
    monkeypatch.setattr(elementwise, "fixed_left_product", plain)
    assert np.array_equal(np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X)), together)
    assert np.abs(together).max() > 0


def _keywords_reversed(m: nn.Module, x: Tensor) -> Tensor:
    h = m.lin(x)
    weights = torch.softmax(torch.bmm(mat2=h.transpose(1, 2), input=h), -1)
    return m.head(torch.matmul(other=h, input=weights).flatten(1))


def _complex_product(m: nn.Module, x: Tensor) -> Tensor:
    spectrum = torch.fft.rfft(m.lin(x), dim=1)  # (batch, frequencies, channels), complex
    return m.head(torch.matmul(spectrum.transpose(1, 2), spectrum).real.flatten(1))


@pytest.mark.parametrize("form", ["keywords_reversed", "complex"])
def test_products_of_two_input_dependent_operands_in_other_forms_are_exact(form: str) -> None:
    """Matrix products the fixed operand's gradient does not take (found in review): operands given as keywords in the
    other order (``torch.matmul(other=v, input=w)``), complex operands (whose gradient conjugates). The attributions add
    up, for one output and three, and equal those of the same products written positionally or in float64."""
    torch.manual_seed(3)
    function = _keywords_reversed if form == "keywords_reversed" else _complex_product
    width = 8 * 20 if form == "keywords_reversed" else 8 * 8
    model = Composite(function, lin=nn.Linear(8, 8), head=nn.Linear(width, 3)).eval()
    background, X = torch.randn(6, 20, 8), torch.randn(4, 20, 8)
    values = np.asarray(rnnshap.DeepExplainer(model, background).shap_values(X))  # (the additivity check raises)
    float64 = np.asarray(rnnshap.DeepExplainer(model.double(), background.double()).shap_values(X.double()))
    np.testing.assert_allclose(values, float64, rtol=0, atol=FLOAT32_VS_FLOAT64 * np.abs(float64).max())
    alone = Composite(lambda m, x: m.whole(x)[:, 1:2], whole=model).eval()
    one = np.asarray(rnnshap.DeepExplainer(alone, background.double()).shap_values(X.double()))
    np.testing.assert_allclose(one.reshape(float64[..., 1].shape), float64[..., 1], rtol=0, atol=1e-12 * np.abs(float64).max())
