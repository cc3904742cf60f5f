"""A small grammar of Keras 3 sequence models (TensorFlow backend, float64), held to the same promise.

Masking(0.0) or Embedding(mask_zero=True), Conv1D, LSTM / GRU / SimpleRNN (stacked, Bidirectional
with every merge mode, go_backwards), pooling, Dense heads, per-step outputs. Additivity is checked
against the Keras model's own outputs, with each reference read with the explained sample's mask (the
masked steps of the reference set to the mask value, as keras.md says); masked steps, a feature whose
kernel row is zero, and future steps of a causal model with per-step outputs must get exactly 0.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import rnnshap  # noqa: E402

from .choosers import Chooser  # noqa: E402

TOL = 1e-9
D = "float64"
REFUSED = (rnnshap.UnsupportedOperationError, rnnshap.ModelStateError, rnnshap.InputError)


@dataclass
class KRnn:
    kind: str  # LSTM | GRU | SimpleRNN
    units: int
    return_sequences: bool = True
    go_backwards: bool = False
    bidirectional: bool = False
    merge: str = "concat"  # concat | sum | mul | ave
    reset_after: bool = True
    activation: str = "tanh"


@dataclass
class KSpec:
    seed: int
    T: int
    input: str  # float | tokens
    F: int
    V: int
    E: int
    mask: str  # none | masking | mask_zero
    holes: bool  # masked steps anywhere (else a masked suffix)
    pre_dense: int  # 0, or a Dense(units, tanh) on every step before the recurrent layers
    conv: str  # none | same | causal | valid
    filters: int
    kernel: int
    conv_act: str
    rnns: list[KRnn] = field(default_factory=list)
    extra: str = "none"  # none | layernorm | maxpool_window
    attn: str = "none"  # none | mha | dot | concat | additive: self-attention over the recurrent outputs
    attn_causal: bool = False
    attn_residual: bool = False
    attn_norm: bool = False  # LayerNormalization after the attention
    heads: int = 1
    pool: str = "none"  # none (last rnn returns a vector) | avg | max | flatten | step
    k: int = 1
    dense_act: str = "linear"
    dummy: bool = False  # float input: the last feature's kernel row is zero in the first weighted layer
    n_bg: int = 2
    n_x: int = 2
    spread: float = 1.0
    edge: bool = False
    batch_size: int = 0


def draw_spec(c: Chooser) -> KSpec:
    seed = c.integer(0, 2**16)
    T = c.integer(2, 6)
    kind = c.one("input", ["float", "tokens"])
    F_ = c.integer(1, 3)
    mask = c.one("mask", ["none", "masking"] if kind == "float" else ["none", "mask_zero"])
    holes = mask != "none" and c.flag("holes")
    pre_dense = c.integer(1, 4) if c.flag("pre_dense") else 0
    conv = c.one("conv", ["none", "none", "same", "causal", "valid"])
    kernel = c.integer(1, min(3, T))
    causal_design = c.flag("causal_design")
    n_rnn = c.integer(1, 2)
    rnns = []
    for _ in range(n_rnn):
        r = KRnn(kind=c.one("rnn", ["LSTM", "GRU", "SimpleRNN"]), units=c.integer(1, 5))
        r.bidirectional = c.flag("bidirectional", allowed=not causal_design)
        if r.bidirectional:
            r.merge = c.one("merge", ["concat", "sum", "mul", "ave"])
        r.go_backwards = not r.bidirectional and c.flag("go_backwards", allowed=not causal_design)
        if r.kind == "GRU":
            r.reset_after = c.flag("reset_after") or not c.allowed("reset_after", False)
        if r.kind == "SimpleRNN":
            r.activation = c.one("rnn_activation", ["tanh", "relu"])
        rnns.append(r)
    if causal_design:
        conv = "causal" if conv != "none" else "none"
    pool = "step" if causal_design else c.one("pool", ["none", "avg", "max", "flatten", "step"])
    for index, r in enumerate(rnns):
        r.return_sequences = index < len(rnns) - 1 or pool != "none"
    extra = c.one("extra", ["none"] * 8 + ["layernorm", "maxpool_window"])
    attn = c.one("attn", ["none", "none", "mha", "dot", "concat", "additive"]) if pool != "none" else "none"
    attn_causal = attn != "none" and (causal_design or c.flag("attn_causal"))
    if extra == "maxpool_window" and pool == "none":
        extra = "none"
    return KSpec(
        seed=seed, T=T, input=kind, F=F_, V=c.integer(4, 8), E=c.integer(1, 3), mask=mask, holes=holes, pre_dense=pre_dense,
        conv=conv, filters=c.integer(1, 3), kernel=kernel, conv_act=c.one("conv_act", ["linear", "relu", "tanh"]), rnns=rnns,
        extra=extra, pool=pool, k=c.integer(1, 3), dense_act=c.one("dense_act", ["linear", "tanh", "sigmoid", "softmax"]),
        dummy=kind == "float" and F_ >= 2 and c.flag("dummy"), n_bg=c.integer(1, 3), n_x=c.integer(1, 3),
        spread=c.one("spread", [0.3, 1.0, 3.0]), edge=c.flag("edge"), batch_size=c.one("batch_size", [0, 0, 1, 3]),
        attn=attn, attn_causal=attn_causal, attn_residual=attn != "none" and c.flag("attn_residual"),
        attn_norm=attn != "none" and c.flag("attn_norm"), heads=c.integer(1, 2),
    )  # fmt: skip


def build(s: KSpec) -> Any:
    import keras

    L = keras.layers
    keras.utils.set_random_seed(s.seed)
    layers: list[Any] = []
    if s.input == "float":
        layers.append(keras.Input((s.T, s.F), dtype=D))
        if s.mask == "masking":
            layers.append(L.Masking(0.0, dtype=D))
    else:
        layers.append(keras.Input((s.T,), dtype="int32"))
        layers.append(L.Embedding(s.V, s.E, mask_zero=s.mask == "mask_zero", dtype=D))
    if s.pre_dense:
        layers.append(L.Dense(s.pre_dense, activation="tanh", dtype=D))
    if s.conv != "none":
        layers.append(L.Conv1D(s.filters, s.kernel, padding=s.conv, activation=s.conv_act, dtype=D))
    for r in s.rnns:
        options: dict[str, Any] = dict(return_sequences=r.return_sequences, go_backwards=r.go_backwards, dtype=D)
        if r.kind == "GRU":
            options["reset_after"] = r.reset_after
        if r.kind == "SimpleRNN":
            options["activation"] = r.activation
        layer = getattr(L, r.kind)(r.units, **options)
        layers.append(L.Bidirectional(layer, merge_mode=r.merge, dtype=D) if r.bidirectional else layer)
    if s.extra == "layernorm":
        layers.append(L.LayerNormalization(dtype=D))
    if s.extra == "maxpool_window":
        layers.append(L.MaxPooling1D(2, padding="same", dtype=D))
    inputs = layers[0]
    h = inputs
    for layer in layers[1:]:
        h = layer(h)
    if s.attn != "none":
        if s.attn == "mha":
            a = L.MultiHeadAttention(num_heads=s.heads, key_dim=2, dtype=D)(h, h, use_causal_mask=s.attn_causal)
        elif s.attn == "additive":
            a = L.AdditiveAttention(dtype=D)([h, h], use_causal_mask=s.attn_causal)
        else:
            a = L.Attention(use_scale=True, score_mode=s.attn, dtype=D)([h, h], use_causal_mask=s.attn_causal)
        h = L.Add(dtype=D)([h, a]) if s.attn_residual else a
        if s.attn_norm:
            h = L.LayerNormalization(dtype=D)(h)
    if s.pool == "avg":
        h = L.GlobalAveragePooling1D(dtype=D)(h)
    elif s.pool == "max":
        h = L.GlobalMaxPooling1D(dtype=D)(h)
    elif s.pool == "flatten":
        h = L.Flatten(dtype=D)(h)
    model = keras.Model(inputs, L.Dense(s.k, activation=s.dense_act, dtype=D)(h))
    if s.dummy:
        _zero_last_feature(model)
    return model


def _zero_last_feature(model: Any) -> None:
    """Zero the kernel row of the last input feature in the first layer with weights."""
    import keras

    L = keras.layers
    for layer in model.layers:
        if isinstance(layer, L.Bidirectional):
            cells = [layer.forward_layer.cell, layer.backward_layer.cell]
        elif isinstance(layer, L.RNN):
            cells = [layer.cell]
        elif isinstance(layer, (L.Dense, L.Conv1D)):
            kernel = np.array(layer.kernel.numpy())
            kernel[..., -1, :] = 0.0
            layer.kernel.assign(kernel)
            return
        else:
            continue
        for cell in cells:
            kernel = np.array(cell.kernel.numpy())
            kernel[-1, :] = 0.0
            cell.kernel.assign(kernel)
        return


def make_data(s: KSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(background, X, masked): masked is (n_x, T), the explained samples' masked steps."""
    rng = np.random.default_rng(s.seed + 1)

    def main(n: int) -> np.ndarray:
        if s.input == "float":
            return rng.normal(size=(n, s.T, s.F)) * s.spread
        return rng.integers(1 if s.mask == "mask_zero" else 0, s.V, (n, s.T))

    background, X = main(s.n_bg), main(s.n_x)
    if s.edge:
        X[0] = background[0]
    masked = np.zeros((s.n_x, s.T), bool)
    if s.mask != "none":
        for i in range(s.n_x):
            if s.holes:
                masked[i] = rng.random(s.T) < 0.4
            else:
                masked[i] = np.arange(s.T) >= rng.integers(1, s.T + 1)
            if masked[i].all():
                masked[i, rng.integers(0, s.T)] = False
            X[i][masked[i]] = 0
    return background, X, masked


@dataclass
class Outcome:
    status: str
    detail: str
    spec: Any
    checks: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}\n{self.spec!r}"


def outputs_of(model: Any, x: np.ndarray) -> np.ndarray:
    out = np.asarray(model(x, training=False), dtype=np.float64)
    return out.reshape(out.shape[0], -1)


def is_causal(s: KSpec) -> bool:
    recurrent = all(not r.bidirectional and not r.go_backwards for r in s.rnns)
    return (
        s.pool == "step"
        and s.conv in ("none", "causal")
        and recurrent
        and s.extra == "none"
        and (s.attn == "none" or s.attn_causal)
    )


def evaluate(s: KSpec) -> Outcome:
    model = build(s)
    background, X, masked = make_data(s)
    fx = outputs_of(model, X)
    assert np.isfinite(fx).all(), "the drawn model gives non-finite outputs"
    try:
        explainer = rnnshap.DeepExplainer(model, background, **({"batch_size": s.batch_size} if s.batch_size else {}))
    except REFUSED as error:
        name = (
            ", ".join(n for n, _ in error.ops)
            if isinstance(error, rnnshap.UnsupportedOperationError)
            else str(error).splitlines()[0][:120]
        )
        return Outcome("refused", f"{type(error).__name__}: {name}", s)
    except Exception as error:  # noqa: BLE001
        return Outcome("defect", f"construction raised {type(error).__name__} (not a refusal): {_short(error)}", s)
    try:
        values = np.asarray(explainer.shap_values(X), np.float64)
    except Exception as error:  # noqa: BLE001
        return Outcome("defect", f"shap_values raised {type(error).__name__}: {_short(error)}", s)
    out_shape = fx.shape[1:] if fx.shape[1] > 1 else ()
    raw_shape = tuple(np.asarray(model(X[:1], training=False)).shape[1:])
    if values.shape != (*X.shape, *raw_shape):
        return Outcome("defect", f"values shape {values.shape}, expected {(*X.shape, *raw_shape)}", s)
    del out_shape
    if not np.isfinite(values).all():
        return Outcome("defect", "non-finite attributions", s)
    k = fx.shape[1]
    gap = np.zeros_like(fx)
    # Masking multiplies by the mask, so a reference read with x's mask has 0 at x's masked steps.
    # Embedding(mask_zero) does not zero anything: its mask matters only where a layer consumes it; a
    # Conv1D drops it (keras.md), and then the model reads every step of the reference as it is.
    mask_read = s.mask == "masking" or (s.mask == "mask_zero" and s.conv == "none")
    changed = masked.copy()  # the steps of X set to 0 (X[0] then differs from background[0])
    if not mask_read:
        masked = np.zeros_like(masked)
    for i in range(s.n_x):
        step = masked[i][None, :, None] if s.input == "float" else masked[i][None, :]
        references = np.where(step, 0, background)
        gap[i] = fx[i] - outputs_of(model, references).mean(0)
    total = values.reshape(s.n_x, -1, k).sum(1)
    excess = np.abs(total - gap) / np.maximum(1.0, np.abs(gap))
    if excess.max() > TOL:
        i, j = np.unravel_index(int(excess.argmax()), excess.shape)
        return Outcome(
            "defect",
            f"not additive: sample {i} output {j}: Σφ = {total[i, j]:.10g}, f(x) − E f(r) = {gap[i, j]:.10g} (relative error "
            f"{excess.max():.3g})",
            s,
        )
    flat = values.reshape(*X.shape, k)
    checks = []
    if masked.any():
        checks.append("masked step")
        leak = np.abs(flat[masked]).max()
        if leak != 0.0:
            return Outcome("defect", f"masked step gets nonzero attribution: max |φ| = {leak:.3g}", s)
    if s.dummy:
        checks.append("dummy")
        leak = np.abs(flat[:, :, -1]).max()
        if leak != 0.0:
            return Outcome("defect", f"dummy feature (zero kernel row) gets nonzero attribution: max |φ| = {leak:.3g}", s)
    if s.edge and s.n_bg == 1 and not changed[0].any() and np.abs(flat[0]).max() != 0.0:
        return Outcome("defect", f"a sample equal to the only reference gets nonzero attribution {np.abs(flat[0]).max():.3g}", s)
    if is_causal(s):
        checks.append("causal")
        per = values.reshape(*X.shape, s.T, -1)
        for src in range(1, s.T):
            leak = np.abs(per[:, src, ..., :src, :]).max()
            if leak != 0.0:
                return Outcome("defect", f"causal model: input step {src} gets {leak:.3g} for an earlier output step", s)
    return Outcome("exact", f"max relative additivity error {excess.max():.2g}", s, tuple(checks))


def _short(error: Exception) -> str:
    tb = traceback.extract_tb(error.__traceback__)
    where = f" [at {tb[-1].filename.split('/work/main/')[-1]}:{tb[-1].lineno}]" if tb else ""
    return (str(error).splitlines()[0][:300] if str(error) else repr(error)) + where
