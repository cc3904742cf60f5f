"""The structured entries of the operation table (rnnshap/operations.py: softmax, normalizations, reductions,
orderings, picks), driven by the table: every name of every entry on every engine that names it, against
float64 references written from each rule's equations.

The references (``REFERENCES``) follow each rule's decomposition into exact parts: logsumexp is Rescale on
exp, the linear sum and Rescale on log, φ_i = (e^{x_i} − e^{r_i})·ΔL/ΔS; softmax is exp(x − L) with Rescale
on the final exp; the normalizations are the centring, the squares by the Shapley rule (multiplier
c + c_r), the inverse root by its secant and c ⊙ s by the scale-weighted rule (m_c = 2 s s_r/(s + s_r),
m_s = (s c + s_r c_r)/(s + s_r)); the variance is a quadratic, its gradient at the midpoint; max and the
orderings credit each rank's change to the position that decided it. One model per engine holds every
entry's calls, each on its own slice of the input, with rows far from the reference, close to it (|Δ|
from 1e-2 to 1e-5), and with the order of the values changed.

Engines: PyTorch (each torch name), Keras ops on the TensorFlow backend and on the torch backend (the
session's torch process) and on JAX where this tree takes it, TensorFlow ops traced in a ``Lambda``. An entry's
``keras_refused`` names are refused by name by the Keras engine and explained on the torch backend, against the
same references. A name
without its call here fails ``test_every_structured_name_has_a_call``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rnnshap  # noqa: E402
from rnnshap.operations import STRUCTURED  # noqa: E402
from rnnshap.rules.registry import forms  # noqa: E402

from .keras_process import KerasProcess  # noqa: E402
from .models.torch import Function  # noqa: E402
from .test_operations_parity import jax_taken  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
N = 6
EPS = 1e-5  # the normalizations' epsilon, on every side
REFERENCE = np.array([0.3, -1.2, 0.8, 2.0, -0.4, 1.1])
_Z = np.array([1.0, -0.5, 0.3, -1.0, 0.7, -0.2])
#: far from the reference, close to it, its values reordered, two of them swapped
ROWS = np.stack(
    [
        np.array([1.5, 0.2, -0.9, 0.4, 2.2, -1.3]),
        REFERENCE + 1e-2 * _Z,
        REFERENCE + 1e-3 * _Z,
        REFERENCE + 1e-5 * _Z,
        REFERENCE[[3, 0, 5, 1, 2, 4]],
        REFERENCE[[2, 1, 0, 3, 4, 5]],
    ]
).astype(np.float32)
Phi = tuple[np.ndarray, np.ndarray, np.ndarray]  # f(x), f(r), φ (outputs × inputs)


# -- float64 references from each rule's equations ---------------------------------------------------
def _logsumexp_parts(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L(x), L(r) and the attributions of L: Rescale on exp, the linear sum, Rescale on log."""
    e, er = np.exp(x), np.exp(r)
    s, sr = e.sum(), er.sum()
    lx, lr = np.log(s), np.log(sr)
    slope = np.log1p((s - sr) / sr) / (s - sr) if s != sr else 1 / s  # log's secant, without cancellation
    return lx, lr, slope * (e - er)


def _softmax(x: np.ndarray, r: np.ndarray) -> Phi:
    lx, lr, phi_l = _logsumexp_parts(x, r)
    u, ur = x - lx, r - lr
    du = u - ur
    m = np.exp(ur) * np.where(du != 0, np.expm1(du) / np.where(du != 0, du, 1), 1.0)  # exp's secant
    return np.exp(u), np.exp(ur), m[:, None] * (np.diag(x - r) - phi_l[None, :])


def _log_softmax(x: np.ndarray, r: np.ndarray) -> Phi:
    lx, lr, phi_l = _logsumexp_parts(x, r)
    return x - lx, r - lr, np.diag(x - r) - phi_l[None, :]


def _logsumexp(x: np.ndarray, r: np.ndarray) -> Phi:
    lx, lr, phi_l = _logsumexp_parts(x, r)
    return np.array([lx]), np.array([lr]), phi_l[None, :]


def _extremum(largest: bool) -> Callable[[np.ndarray, np.ndarray], Phi]:
    """shap's max-pool rule: with c = max(y, y_r), c − y_r to x's maximum, y − c to r's."""

    def reference(x: np.ndarray, r: np.ndarray) -> Phi:
        pick, better = (np.argmax, np.maximum) if largest else (np.argmin, np.minimum)
        y, yr = x[pick(x)], r[pick(r)]
        c = better(y, yr)
        phi = np.zeros((1, x.size))
        phi[0, pick(x)] += c - yr
        phi[0, pick(r)] += y - c
        return np.array([y]), np.array([yr]), phi

    return reference


def _scaled_norm(x: np.ndarray, r: np.ndarray, centre: bool, mean: bool, eps: float) -> Phi:
    """c ⊙ s with c = x (centred) and s = (Σ or mean of c² + eps)^(-1/2): the squares by the Shapley rule, s by its
    secant, the product by the scale-weighted rule."""
    n = x.size
    centring = np.eye(n) - (1 / n if centre else 0)
    c, cr = centring @ x, centring @ r
    k = 1 / n if mean else 1.0
    v, vr = k * (c @ c) + eps, k * (cr @ cr) + eps
    s, sr = v**-0.5, vr**-0.5
    m_c = 2 * s * sr / (s + sr)
    m_s = (s * c + sr * cr) / (s + sr)
    ds_dv = -s * sr / (np.sqrt(v) + np.sqrt(vr))  # the inverse root's secant, (s − s_r)/(v − v_r)
    phi_v = k * ((c + cr) @ centring) * (x - r)  # v's attribution to each input
    phi = m_c * centring * (x - r)[None, :] + np.outer(m_s * ds_dv, phi_v)
    return c * s, cr * sr, phi


def _glu(x: np.ndarray, r: np.ndarray) -> Phi:
    h = x.size // 2
    a, b, ar, br = x[:h], x[h:], r[:h], r[h:]
    g, gr = 1 / (1 + np.exp(-b)), 1 / (1 + np.exp(-br))
    phi = np.concatenate([np.diag((a - ar) * (g + gr) / 2), np.diag((a + ar) / 2 * (g - gr))], 1)
    return a * g, ar * gr, phi


def _lerp(x: np.ndarray, r: np.ndarray) -> Phi:
    h = x.size // 2
    w = 0.3
    phi = np.concatenate([np.diag((1 - w) * (x[:h] - r[:h])), np.diag(w * (x[h:] - r[h:]))], 1)
    return x[:h] + w * (x[h:] - x[:h]), r[:h] + w * (r[h:] - r[:h]), phi


def _variance(ddof: int, root: bool) -> Callable[[np.ndarray, np.ndarray], Phi]:
    """A quadratic: its gradient at the midpoint; the deviation then Rescale on the root (its secant)."""

    def reference(x: np.ndarray, r: np.ndarray) -> Phi:
        v, vr = x.var(ddof=ddof), r.var(ddof=ddof)
        mid = (x + r) / 2
        phi = 2 / (x.size - ddof) * (mid - mid.mean()) * (x - r)
        if root:
            return np.array([np.sqrt(v)]), np.array([np.sqrt(vr)]), (phi / (np.sqrt(v) + np.sqrt(vr)))[None, :]
        return np.array([v]), np.array([vr]), phi[None, :]

    return reference


def _logcumsumexp(x: np.ndarray, r: np.ndarray) -> Phi:
    parts = [_logsumexp_parts(x[: t + 1], r[: t + 1]) for t in range(x.size)]
    phi = np.zeros((x.size, x.size))
    for t, (_, _, phi_t) in enumerate(parts):
        phi[t, : t + 1] = phi_t
    return np.array([p[0] for p in parts]), np.array([p[1] for p in parts]), phi


def _deciding(x: np.ndarray, r: np.ndarray, largest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The orderings of x and r (distinct values) and the position that decided each rank: where the value rose,
    the position on the value's side of the rank in x and on the other side in r nearest the rank in x; where
    it fell, the same with the sides swapped, nearest in r; where it did not change, the one on x's side (the other
    one where it does not move)."""
    order_x, order_r = (np.argsort(-t if largest else t, kind="stable") for t in (x, r))
    rank_x, rank_r = np.empty(x.size, int), np.empty(x.size, int)
    rank_x[order_x], rank_r[order_r] = np.arange(x.size), np.arange(x.size)
    deciding = np.empty(x.size, int)
    for j in range(x.size):
        y, yr = x[order_x[j]], r[order_r[j]]
        x_side, r_side = (rank_x <= j) & (rank_r >= j), (rank_r <= j) & (rank_x >= j)
        up, down = (x_side, r_side) if largest else (r_side, x_side)
        rose_at, fell_at = np.flatnonzero(up)[np.argmin(x[up])], np.flatnonzero(down)[np.argmin(r[down])]
        if y == yr:  # (an index may still move) the position on x's side of the rank
            primary, secondary = (rose_at, fell_at) if largest else (fell_at, rose_at)
        else:
            primary, secondary = (rose_at, fell_at) if y > yr else (fell_at, rose_at)
        deciding[j] = primary if x[primary] != r[primary] or x[secondary] == r[secondary] else secondary
    return order_x, order_r, deciding


def _ranked(x: np.ndarray, r: np.ndarray, largest: bool) -> np.ndarray:
    """Every rank's change credited to the position that decided it: φ, (ranks × inputs)."""
    order_x, order_r, deciding = _deciding(x, r, largest)
    phi = np.zeros((x.size, x.size))
    phi[np.arange(x.size), deciding] = x[order_x] - r[order_r]
    return phi


def _picked(largest: bool, ranks: slice) -> Callable[[np.ndarray, np.ndarray], Phi]:
    """``x`` gathered at its own picked indices (argmax, argsort): the two-player Shapley rule between the values
    and the index, v[j]; the values' part to the positions j and j_r, the index's (its change through the values
    at both sides) to the position that decided the rank."""

    def reference(x: np.ndarray, r: np.ndarray) -> Phi:
        order_x, order_r, deciding = _deciding(x, r, largest)
        phi = np.zeros((x.size, x.size))
        for j in range(x.size):
            jx, jr = order_x[j], order_r[j]
            phi[j, jx] += (x[jx] - r[jx]) / 2
            phi[j, jr] += (x[jr] - r[jr]) / 2
            phi[j, deciding[j]] += ((r[jx] - r[jr]) + (x[jx] - x[jr])) / 2
        return x[order_x][ranks], r[order_r][ranks], phi[ranks]

    return reference


def _quantile(q: float) -> Callable[[np.ndarray, np.ndarray], Phi]:
    """``quantile(x, q)`` (linear): the two ranks of the ascending sort around q·(N − 1), weighted 1 − w and w."""

    def reference(x: np.ndarray, r: np.ndarray) -> Phi:
        rank = np.float32(q) * np.float32(x.size - 1)  # (torch computes the rank in the input's dtype, float32 here)
        below, above, w = int(np.floor(rank)), int(np.ceil(rank)), float(rank - np.floor(rank))
        phi = _ranked(x, r, largest=False)
        value = lambda t: (1 - w) * np.sort(t)[below] + w * np.sort(t)[above]  # noqa: E731
        return np.array([value(x)]), np.array([value(r)]), ((1 - w) * phi[below] + w * phi[above])[None]

    return reference


def _normalize_by_product(x: np.ndarray, r: np.ndarray) -> Phi:
    """keras.ops.normalize, ``x * min(rsqrt(Σ x²), 1/eps)``: as _scaled_norm, with x ⊙ s by the Shapley rule."""
    q, qr = x @ x, r @ r
    s, sr = q**-0.5, qr**-0.5
    ds_dq = -s * sr / (np.sqrt(q) + np.sqrt(qr))
    phi = np.diag((s + sr) / 2 * (x - r)) + np.outer((x + r) / 2 * ds_dq, (x + r) * (x - r))
    return x * s, r * sr, phi


def _ordering(largest: bool, ranks: slice) -> Callable[[np.ndarray, np.ndarray], Phi]:
    def reference(x: np.ndarray, r: np.ndarray) -> Phi:
        ordered = (lambda t: np.sort(t)[::-1]) if largest else np.sort
        return ordered(x)[ranks], ordered(r)[ranks], _ranked(x, r, largest)[ranks]

    return reference


_NORMS = {
    "layer_norm": lambda x, r: _scaled_norm(x, r, centre=True, mean=True, eps=EPS),
    "rms_norm": lambda x, r: _scaled_norm(x, r, centre=False, mean=True, eps=EPS),
    "normalize": lambda x, r: _scaled_norm(x, r, centre=False, mean=False, eps=0.0),
}
#: float64 references by the name of the call (an entry's torch or keras name, where the sides differ: keras's
#: variance has no Bessel correction)
REFERENCES: dict[str, Callable[[np.ndarray, np.ndarray], Phi]] = {
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "layer_norm": _NORMS["layer_norm"],
    "rms_norm": _NORMS["rms_norm"],
    "group_norm": _NORMS["layer_norm"],
    "instance_norm": _NORMS["layer_norm"],
    "glu": _glu,
    "lerp": _lerp,
    "normalize": _NORMS["normalize"],
    "logsumexp": _logsumexp,
    "max": _extremum(True),
    "min": _extremum(False),
    "amax": _extremum(True),
    "amin": _extremum(False),
    "var": _variance(1, root=False),
    "var_mean": _variance(1, root=False),
    "std": _variance(1, root=True),
    "std_mean": _variance(1, root=True),
    "logcumsumexp": _logcumsumexp,
    "sort": _ordering(False, slice(None)),
    "topk": _ordering(True, slice(0, 3)),
    "argsort": _picked(False, slice(None)),
    "kthvalue": _ordering(False, slice(1, 2)),
    "median": _ordering(False, slice((N - 1) // 2, (N - 1) // 2 + 1)),
    "quantile": _quantile(0.35),
    "nanquantile": _quantile(0.35),
    "argmax": _picked(True, slice(0, 1)),
    "argmin": _picked(False, slice(0, 1)),
    # keras names where they differ
    "layer_normalization": _NORMS["layer_norm"],
    "rms_normalization": _NORMS["rms_norm"],
    "keras:var": _variance(0, root=False),
    "keras:std": _variance(0, root=True),
    "keras:normalize": _normalize_by_product,
    "top_k": _ordering(True, slice(0, 3)),
    # TensorFlow ops
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "Max": _extremum(True),
    "Min": _extremum(False),
}

#: each torch name's call on the slice ``t`` (batch × N), with ``fn`` as the registry finds the name
TORCH_CALLS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "softmax": lambda fn, t: fn(t, -1),
    "log_softmax": lambda fn, t: fn(t, -1),
    "layer_norm": lambda fn, t: fn(t, (N,), eps=EPS),
    "rms_norm": lambda fn, t: fn(t, (N,), eps=EPS),
    "group_norm": lambda fn, t: fn(t.reshape(-1, 1, N), 1, eps=EPS).reshape(-1, N),
    "instance_norm": lambda fn, t: (
        fn(t.reshape(-1, 1, N), None, None, None, None, True, 0.1, EPS, False)  # (torch.instance_norm takes every one)
        if fn is torch.instance_norm else fn(t.reshape(-1, 1, N), eps=EPS)
    ).reshape(-1, N),
    "glu": lambda fn, t: fn(t, -1),
    "lerp": lambda fn, t: fn(t[:, : N // 2], t[:, N // 2 :], 0.3),
    "normalize": lambda fn, t: fn(t, dim=-1),
    "logsumexp": lambda fn, t: fn(t, -1, keepdim=True),
    "max": lambda fn, t: fn(t, -1, keepdim=True)[0],
    "min": lambda fn, t: fn(t, -1, keepdim=True)[0],
    "amax": lambda fn, t: fn(t, -1, keepdim=True),
    "amin": lambda fn, t: fn(t, -1, keepdim=True),
    "var": lambda fn, t: fn(t, -1, keepdim=True),
    "var_mean": lambda fn, t: fn(t, -1, keepdim=True)[0],
    "std": lambda fn, t: fn(t, -1, keepdim=True),
    "std_mean": lambda fn, t: fn(t, -1, keepdim=True)[0],
    "logcumsumexp": lambda fn, t: fn(t, -1),
    "sort": lambda fn, t: fn(t, -1)[0],
    "topk": lambda fn, t: fn(t, 3, -1)[0],
    "argsort": lambda fn, t: t.gather(-1, fn(t, -1)),  # the picked indices used to gather
    "kthvalue": lambda fn, t: fn(t, 2, -1, keepdim=True)[0],
    "median": lambda fn, t: fn(t, -1, keepdim=True)[0],
    "quantile": lambda fn, t: fn(t, 0.35, -1, keepdim=True),
    "nanquantile": lambda fn, t: fn(t, 0.35, -1, keepdim=True),
    "argmax": lambda fn, t: t.gather(-1, fn(t, -1, keepdim=True)),
    "argmin": lambda fn, t: t.gather(-1, fn(t, -1, keepdim=True)),
}
#: each keras name's call on ``t`` (run on either backend), and the reference it takes where not its own name
KERAS_CALLS: dict[str, str] = {
    "softmax": "keras.ops.softmax(t, axis=-1)",
    "log_softmax": "keras.ops.log_softmax(t, axis=-1)",
    "layer_normalization": f"keras.ops.layer_normalization(t, axis=-1, epsilon={EPS})",
    "rms_normalization": f"keras.ops.rms_normalization(t, axis=-1, epsilon={EPS})",
    "logsumexp": "keras.ops.logsumexp(t, axis=-1, keepdims=True)",
    "max": "keras.ops.max(t, axis=-1, keepdims=True)",
    "min": "keras.ops.min(t, axis=-1, keepdims=True)",
    "amax": "keras.ops.amax(t, axis=-1, keepdims=True)",
    "amin": "keras.ops.amin(t, axis=-1, keepdims=True)",
    "sort": "keras.ops.sort(t, axis=-1)",
    "top_k": "keras.ops.top_k(t, 3)[0]",
    "argmax": "keras.ops.take_along_axis(t, keras.ops.expand_dims(keras.ops.argmax(t, axis=-1), -1), axis=-1)",
    "argmin": "keras.ops.take_along_axis(t, keras.ops.expand_dims(keras.ops.argmin(t, axis=-1), -1), axis=-1)",
    # refused on TensorFlow, explained on the torch backend
    "glu": "keras.ops.glu(t, axis=-1)",
    "normalize": "keras.ops.normalize(t, axis=-1)",
    "var": "keras.ops.var(t, axis=-1, keepdims=True)",
    "std": "keras.ops.std(t, axis=-1, keepdims=True)",
    "argsort": "keras.ops.take_along_axis(t, keras.ops.argsort(t, axis=-1), axis=-1)",
}
KERAS_REFERENCE = {"var": "keras:var", "std": "keras:std", "normalize": "keras:normalize"}
TF_CALLS: dict[str, Callable[[Any], Any]] = {
    "Softmax": lambda t: tf.raw_ops.Softmax(logits=t),
    "LogSoftmax": lambda t: tf.raw_ops.LogSoftmax(logits=t),
    "Max": lambda t: tf.raw_ops.Max(input=t, axis=-1, keep_dims=True),
    "Min": lambda t: tf.raw_ops.Min(input=t, axis=-1, keep_dims=True),
}


def test_every_structured_name_has_a_call() -> None:
    assert set(TORCH_CALLS) == {n for e in STRUCTURED for n in e.torch}
    assert set(KERAS_CALLS) == {n for e in STRUCTURED for n in (*e.keras_ops, *e.keras_refused)}
    assert set(TF_CALLS) == {n for e in STRUCTURED for n in e.tf_ops}
    names = {*TORCH_CALLS, *(KERAS_REFERENCE.get(n, n) for n in KERAS_CALLS), *TF_CALLS}
    assert names == set(REFERENCES)


def _check(side: str, names: list[str], widths: list[int], values: np.ndarray, outputs: list[np.ndarray]) -> None:
    """``values`` (rows × inputs × outputs) against each call's reference; ``outputs``: the model's own output
    on each row and on the reference (the last), to check the side computes the reference's function."""
    r = REFERENCE.astype(np.float32).astype(np.float64)
    out_r = np.asarray(outputs[-1], np.float64).reshape(-1)
    start = 0
    for index, (name, width) in enumerate(zip(names, widths, strict=True)):
        stop = start + width
        for row, x32 in enumerate(ROWS):
            x = x32.astype(np.float64)
            fx, fr, phi = REFERENCES[name](x, r)
            own_x = np.asarray(outputs[row], np.float64).reshape(-1)[start:stop]
            where = f"{side} {name} on row {row}"
            # the side computes the reference's function, to its float32 rounding
            rounding = np.abs(own_x - fx) + np.abs(out_r[start:stop] - fr)
            scale = max(1.0, float(np.abs(fx).max()), float(np.abs(fr).max()))
            assert rounding.max() <= 16 * EPS32 * scale, f"{where}: not the reference function"
            got = values[row, index * N : (index + 1) * N, start:stop].T
            # each attribution (and so additivity, Σ_i φ = f(x) − f(r)), within the rounding of float32
            allowed = 16 * EPS32 * max(scale, float(np.abs(phi).max())) + 4 * rounding.max()
            off = np.abs(got - phi)
            worst = np.unravel_index(int(np.argmax(off)), off.shape)
            assert off[worst] <= allowed, (
                f"{where}: φ[{worst[0]}, {worst[1]}] (output, input) = {got[worst]:.9g}, exact {phi[worst]:.9g}"
            )
        start = stop


def _widths(names: list[str]) -> list[int]:
    r = REFERENCE
    return [REFERENCES[n](r, r)[0].size for n in names]


def test_structured_entries_on_the_pytorch_engine() -> None:
    names = [name for entry in STRUCTURED for name in entry.torch]
    calls = {name: TORCH_CALLS[name] for name in names}
    fns = {name: forms(name)[0] for name in names}

    def _model(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([calls[n](fns[n], t[:, i * N : (i + 1) * N]) for i, n in enumerate(names)], -1)

    model = Function(_model)
    x, r = np.tile(ROWS, len(names)), np.tile(REFERENCE.astype(np.float32), len(names))[None]
    values = rnnshap.DeepExplainer(model, torch.tensor(r)).shap_values(torch.tensor(x), check_additivity=False)
    with torch.no_grad():
        outputs = list(model(torch.tensor(np.concatenate([x, r])).double()).numpy())
    _check("torch", names, _widths(names), np.asarray(values, np.float64), outputs)


_KERAS_SIDE = """
import json, sys
import numpy as np, keras, rnnshap
calls, n, refused = json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
data = np.load(sys.argv[1])
x, r = data["x"], data["r"]
found = {"backend": keras.backend.backend(), "refused": {}}
explained = []
for name, expression in calls:  # the refusals by name, one call at a time
    if name not in refused:
        explained.append((name, expression))
        continue
    inputs = keras.Input((n,))
    model = keras.Model(inputs, eval(expression, {"keras": keras, "t": inputs}))
    try:
        rnnshap.DeepExplainer(model, r[None, :n]).shap_values(x[:1, :n], check_additivity=False)
        explained.append((name, expression))
    except Exception as error:
        found["refused"][name] = str(error)
inputs = keras.Input((n * len(explained),))
parts = [eval(e, {"keras": keras, "t": inputs[:, i * n : (i + 1) * n]}) for i, (_, e) in enumerate(explained)]
model = keras.Model(inputs, keras.ops.concatenate(parts, -1))
columns = [i for i, (name, _) in enumerate(calls) if name in dict(explained)]
xs = np.concatenate([x[:, i * n : (i + 1) * n] for i in columns], 1)
rs = np.concatenate([r[None, i * n : (i + 1) * n] for i in columns], 1)
values = rnnshap.DeepExplainer(model, rs).shap_values(xs, check_additivity=False)
found["explained"] = [name for name, _ in explained]
found["values"] = np.asarray(values, np.float64).tolist()
found["outputs"] = keras.ops.convert_to_numpy(model(np.concatenate([xs, rs]))).astype(np.float64).tolist()
print(json.dumps(found))
"""


def _keras_structured(tmp_path: Path, keras_process: Callable[[str], KerasProcess], backend: str) -> None:
    calls = [(name, KERAS_CALLS[name]) for entry in STRUCTURED for name in (*entry.keras_ops, *entry.keras_refused)]
    refused_here = {name for entry in STRUCTURED for name in entry.keras_refused} if backend != "torch" else set()
    x, r = np.tile(ROWS, len(calls)), np.tile(REFERENCE.astype(np.float32), len(calls))
    np.savez(tmp_path / f"structured-{backend}.npz", x=x, r=r)
    refused = json.dumps(sorted({name for entry in STRUCTURED for name in entry.keras_refused}))
    out = keras_process(backend).run(_KERAS_SIDE, str(tmp_path / f"structured-{backend}.npz"), json.dumps(calls), str(N), refused)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["backend"] == backend
    assert set(found["refused"]) == refused_here, found["refused"]
    for name, why in found["refused"].items():  # refused by name, naming the op
        assert name.replace("_", "").lower() in why.replace("_", "").lower(), why
    names = [KERAS_REFERENCE.get(n, n) for n in found["explained"]]
    _check(f"keras on {backend}", names, _widths(names), np.asarray(found["values"]), found["outputs"])


def test_structured_entries_as_keras_ops_on_tensorflow(tmp_path: Path, keras_process: Callable[[str], KerasProcess]) -> None:
    _keras_structured(tmp_path, keras_process, "tensorflow")


def test_structured_entries_as_keras_ops_on_the_torch_backend(
    tmp_path: Path, keras_process: Callable[[str], KerasProcess]
) -> None:
    _keras_structured(tmp_path, keras_process, "torch")


@pytest.mark.slow  # (the Keras engine on JAX: about a minute on 2 cores)
def test_structured_entries_as_keras_ops_on_jax(tmp_path: Path, keras_process: Callable[[str], KerasProcess]) -> None:
    """The Keras engine on JAX: what it takes on TensorFlow, the same refusals."""
    jax_taken()
    _keras_structured(tmp_path, keras_process, "jax")


def test_structured_entries_as_traced_tensorflow_ops() -> None:
    names = [name for entry in STRUCTURED for name in entry.tf_ops]

    def call(t: Any) -> Any:
        return tf.concat([TF_CALLS[n](t[:, i * N : (i + 1) * N]) for i, n in enumerate(names)], -1)

    inputs = keras.Input((N * len(names),))
    model = keras.Model(inputs, keras.layers.Lambda(call)(inputs))
    x, r = np.tile(ROWS, len(names)), np.tile(REFERENCE.astype(np.float32), len(names))[None]
    values = rnnshap.DeepExplainer(model, r).shap_values(x, check_additivity=False)
    outputs = list(np.asarray(model(np.concatenate([x, r])), np.float64))
    _check("tf_op", names, _widths(names), np.asarray(values, np.float64), outputs)
