"""Exact float64 numpy reference for DeepLIFT / DeepSHAP through torch RNN layers.

This module is an independent test oracle: it shares no code with ``rnnshap``.
It handles one input sequence ``x`` and one reference sequence ``r`` at a time.

Rules (``Δy = m · Δx`` for every operation, multipliers composed by the chain
rule exactly like gradients):

* linear ops (matmul, add, bias, concat, split): ordinary derivative;
* unary ``y = f(u)`` (sigmoid, tanh, relu), Rescale rule::

      m = (f(u) - f(u_r)) / (u - u_r),   or f'((u + u_r) / 2) if |u - u_r| < 1e-9;

* product ``y = a ⊙ b``, exact two-player Shapley rule::

      m_a = (b + b_r) / 2,   m_b = (a + a_r) / 2.

The reference trajectory is the same layer run on ``r`` from the reference
initial state; each step uses its own reference values.  For the explained
scalar ``y = Σ readout ⊙ outputs`` the attributions are ``φ = m · (x - r)``
and satisfy ``Σφ = y(x) - y(r)`` exactly (up to float64 rounding).

Weights follow torch's ``state_dict`` naming (``weight_ih_l{k}{_reverse}``,
``weight_hh_l{k}{_reverse}``, ``bias_ih_l{k}{_reverse}``,
``bias_hh_l{k}{_reverse}``, ``weight_hr_l{k}{_reverse}``).  The multipliers are
computed by an explicit reverse-time recursion, no autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Params = Mapping[str, NDArray[np.floating]]
Record = dict[str, Array]

#: Below this |u - u_r| the Rescale rule falls back to the midpoint derivative.
TINY_DELTA = 1e-9

KINDS = ("lstm", "gru", "rnn")


class Multipliers(TypedDict):
    """Multipliers of y w.r.t. each input, plus both output sequences."""

    x: Array  # (T, F), zero past `length`
    h0: Array | None  # (num_layers*D, H_out) if h0 was given
    c0: Array | None  # (num_layers*D, hidden_size) if c0 was given
    out_x: Array  # (T, D*H_out)
    out_r: Array  # (T, D*H_out)


class Attributions(TypedDict):
    """DeepSHAP attributions φ = m · Δ and the explained difference Δy."""

    x: Array  # (T, F), zero past `length`
    h0: Array | None
    c0: Array | None
    delta: float  # Σ readout ⊙ (out(x) - out(r))


# ---------------------------------------------------------------------------
# elementwise functions and the two nonlinear rules
# ---------------------------------------------------------------------------


def sigmoid(u: Array) -> Array:
    """σ(u) = 1 / (1 + e^{-u}), evaluated stably as (1 + tanh(u/2)) / 2."""
    return 0.5 * (1.0 + np.tanh(0.5 * u))


def _dsigmoid(u: Array) -> Array:
    s = sigmoid(u)
    return s * (1.0 - s)


def _dtanh(u: Array) -> Array:
    t = np.tanh(u)
    return 1.0 - t * t


def relu(u: Array) -> Array:
    """relu(u) = max(u, 0)."""
    return np.maximum(u, 0.0)


def _drelu(u: Array) -> Array:
    return (u > 0.0).astype(np.float64)


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity with its derivative."""

    fn: Callable[[Array], Array]
    deriv: Callable[[Array], Array]


SIGMOID = Activation(sigmoid, _dsigmoid)
TANH = Activation(np.tanh, _dtanh)
RELU = Activation(relu, _drelu)


def rescale_multiplier(act: Activation, u: Array, u_r: Array) -> Array:
    """Rescale rule: m = (f(u) - f(u_r)) / (u - u_r); f'((u+u_r)/2) when |Δu| < 1e-9."""
    du = u - u_r
    small = np.abs(du) < TINY_DELTA
    safe = np.where(small, 1.0, du)
    secant = (act.fn(u) - act.fn(u_r)) / safe
    return np.where(small, act.deriv(0.5 * (u + u_r)), secant)


def product_multipliers(
    a: Array, a_r: Array, b: Array, b_r: Array
) -> tuple[Array, Array]:
    """Shapley rule for y = a ⊙ b: returns (m_a, m_b) = ((b + b_r)/2, (a + a_r)/2)."""
    return 0.5 * (b + b_r), 0.5 * (a + a_r)


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CellParams:
    """Weights of one (layer, direction) in float64."""

    w_ih: Array
    w_hh: Array
    b_ih: Array | None
    b_hh: Array | None
    w_hr: Array | None


def _cell_params(
    params: Params, layer: int, direction: int, bias: bool, proj_size: int
) -> CellParams:
    sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def get(name: str) -> Array:
        if name + sfx not in params:
            raise KeyError(f"missing parameter {name + sfx!r}")
        return np.asarray(params[name + sfx], dtype=np.float64)

    return CellParams(
        w_ih=get("weight_ih"),
        w_hh=get("weight_hh"),
        b_ih=get("bias_ih") if bias else None,
        b_hh=get("bias_hh") if bias else None,
        w_hr=get("weight_hr") if proj_size > 0 else None,
    )


def _affine(w: Array, b: Array | None, v: Array) -> Array:
    out = w @ v
    return out if b is None else out + b


# ---------------------------------------------------------------------------
# single-step forward (records every intermediate) and multiplier backward
# ---------------------------------------------------------------------------


def _lstm_step(p: CellParams, x: Array, h: Array, c: Array) -> Record:
    """gates = W_ih x + b_ih + W_hh h + b_hh = [i|f|g|o]; c' = f⊙c + i⊙g; h' = [W_hr] o⊙tanh(c')."""
    pre = _affine(p.w_ih, p.b_ih, x) + _affine(p.w_hh, p.b_hh, h)
    ip, fp, gp, op = np.split(pre, 4)
    i, f, g, o = sigmoid(ip), sigmoid(fp), np.tanh(gp), sigmoid(op)
    c_new = f * c + i * g
    tc = np.tanh(c_new)
    hr = o * tc
    h_new = hr if p.w_hr is None else p.w_hr @ hr
    return {
        "h": h,
        "c": c,
        "ip": ip,
        "fp": fp,
        "gp": gp,
        "op": op,
        "i": i,
        "f": f,
        "g": g,
        "o": o,
        "c_new": c_new,
        "tc": tc,
        "h_new": h_new,
    }


def _lstm_back(
    p: CellParams, rx: Record, rr: Record, gh: Array, gc: Array
) -> tuple[Array, Array, Array]:
    """Multipliers of (x, h, c) from multipliers gh on h' and gc on c'."""
    ghr = gh if p.w_hr is None else p.w_hr.T @ gh
    m_o, m_tc = product_multipliers(rx["o"], rr["o"], rx["tc"], rr["tc"])
    g_o = ghr * m_o
    g_cn = gc + ghr * m_tc * rescale_multiplier(TANH, rx["c_new"], rr["c_new"])
    m_f, m_c = product_multipliers(rx["f"], rr["f"], rx["c"], rr["c"])
    m_i, m_g = product_multipliers(rx["i"], rr["i"], rx["g"], rr["g"])
    g_pre = np.concatenate(
        [
            g_cn * m_i * rescale_multiplier(SIGMOID, rx["ip"], rr["ip"]),
            g_cn * m_f * rescale_multiplier(SIGMOID, rx["fp"], rr["fp"]),
            g_cn * m_g * rescale_multiplier(TANH, rx["gp"], rr["gp"]),
            g_o * rescale_multiplier(SIGMOID, rx["op"], rr["op"]),
        ]
    )
    return p.w_ih.T @ g_pre, p.w_hh.T @ g_pre, g_cn * m_c


def _gru_step(p: CellParams, x: Array, h: Array) -> Record:
    """r = σ(..), z = σ(..), n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)), h' = (1-z)⊙n + z⊙h."""
    gi = _affine(p.w_ih, p.b_ih, x)
    gh = _affine(p.w_hh, p.b_hh, h)
    gi_r, gi_z, gi_n = np.split(gi, 3)
    gh_r, gh_z, hn = np.split(gh, 3)
    rp, zp = gi_r + gh_r, gi_z + gh_z
    r, z = sigmoid(rp), sigmoid(zp)
    np_ = gi_n + r * hn
    n = np.tanh(np_)
    h_new = (1.0 - z) * n + z * h
    return {
        "h": h,
        "rp": rp,
        "zp": zp,
        "r": r,
        "z": z,
        "hn": hn,
        "np_": np_,
        "n": n,
        "h_new": h_new,
    }


def _gru_back(p: CellParams, rx: Record, rr: Record, gh: Array) -> tuple[Array, Array]:
    """Multipliers of (x, h) from the multiplier gh on h'."""
    m_1mz, m_n = product_multipliers(1.0 - rx["z"], 1.0 - rr["z"], rx["n"], rr["n"])
    m_z, m_h = product_multipliers(rx["z"], rr["z"], rx["h"], rr["h"])
    g_z = gh * (m_z - m_1mz)  # d(1 - z)/dz = -1
    g_np = gh * m_n * rescale_multiplier(TANH, rx["np_"], rr["np_"])
    m_r, m_hn = product_multipliers(rx["r"], rr["r"], rx["hn"], rr["hn"])
    g_rp = g_np * m_r * rescale_multiplier(SIGMOID, rx["rp"], rr["rp"])
    g_zp = g_z * rescale_multiplier(SIGMOID, rx["zp"], rr["zp"])
    g_gi = np.concatenate([g_rp, g_zp, g_np])
    g_gh = np.concatenate([g_rp, g_zp, g_np * m_hn])
    return p.w_ih.T @ g_gi, p.w_hh.T @ g_gh + gh * m_h


def _rnn_step(p: CellParams, x: Array, h: Array, act: Activation) -> Record:
    """h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    pre = _affine(p.w_ih, p.b_ih, x) + _affine(p.w_hh, p.b_hh, h)
    return {"h": h, "pre": pre, "h_new": act.fn(pre)}


def _rnn_back(
    p: CellParams, rx: Record, rr: Record, gh: Array, act: Activation
) -> tuple[Array, Array]:
    """Multipliers of (x, h) from the multiplier gh on h'."""
    g_pre = gh * rescale_multiplier(act, rx["pre"], rr["pre"])
    return p.w_ih.T @ g_pre, p.w_hh.T @ g_pre


# ---------------------------------------------------------------------------
# configuration, full forward with traces, full multiplier backward
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    kind: str
    num_layers: int
    bidirectional: bool
    hidden_size: int
    proj_size: int
    act: Activation
    bias: bool

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def h_out(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size


def _make_config(
    kind: str,
    num_layers: int,
    bidirectional: bool,
    hidden_size: int,
    proj_size: int,
    nonlinearity: str,
    bias: bool,
) -> _Config:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if proj_size and kind != "lstm":
        raise ValueError("proj_size is only supported for LSTM")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    act = RELU if (kind == "rnn" and nonlinearity == "relu") else TANH
    return _Config(kind, num_layers, bidirectional, hidden_size, proj_size, act, bias)


@dataclass
class _Trace:
    outputs: Array  # (T, D*H_out), zero past `length`
    h_n: Array  # (num_layers*D, H_out)
    c_n: Array | None  # (num_layers*D, H) for LSTM
    records: list[list[list[Record]]]  # [layer][direction][step in processing order]
    length: int


def _as_state(
    v: NDArray[np.floating] | None, shape: tuple[int, int], name: str
) -> Array:
    if v is None:
        return np.zeros(shape)
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def _forward_trace(
    cfg: _Config,
    params: Params,
    x: NDArray[np.floating],
    h0: NDArray[np.floating] | None,
    c0: NDArray[np.floating] | None,
    length: int | None,
) -> _Trace:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (T, F), got {x.shape}")
    T = x.shape[0]
    L = T if length is None else int(length)
    if not 1 <= L <= T:
        raise ValueError(f"length must be in [1, {T}], got {length}")
    if c0 is not None and cfg.kind != "lstm":
        raise ValueError("c0 is only valid for LSTM")
    n_states = cfg.num_layers * cfg.dirs
    h0a = _as_state(h0, (n_states, cfg.h_out), "h0")
    c0a = _as_state(c0, (n_states, cfg.hidden_size), "c0")

    layer_in = x[:L]
    h_n = np.zeros((n_states, cfg.h_out))
    c_n = np.zeros((n_states, cfg.hidden_size))
    records: list[list[list[Record]]] = []
    for layer in range(cfg.num_layers):
        outs: list[Array] = []
        layer_recs: list[list[Record]] = []
        for d in range(cfg.dirs):
            p = _cell_params(params, layer, d, cfg.bias, cfg.proj_size)
            idx = layer * cfg.dirs + d
            h, c = h0a[idx], c0a[idx]
            out = np.zeros((L, cfg.h_out))
            recs: list[Record] = []
            for t in range(L - 1, -1, -1) if d == 1 else range(L):
                if cfg.kind == "lstm":
                    rec = _lstm_step(p, layer_in[t], h, c)
                    c = rec["c_new"]
                elif cfg.kind == "gru":
                    rec = _gru_step(p, layer_in[t], h)
                else:
                    rec = _rnn_step(p, layer_in[t], h, cfg.act)
                h = rec["h_new"]
                out[t] = h
                recs.append(rec)
            h_n[idx], c_n[idx] = h, c
            outs.append(out)
            layer_recs.append(recs)
        records.append(layer_recs)
        layer_in = np.concatenate(outs, axis=1)

    outputs = np.zeros((T, cfg.dirs * cfg.h_out))
    outputs[:L] = layer_in
    return _Trace(outputs, h_n, c_n if cfg.kind == "lstm" else None, records, L)


def _backward(
    cfg: _Config,
    params: Params,
    tx: _Trace,
    tr: _Trace,
    readout: Array,
    input_size: int,
) -> tuple[Array, Array, Array]:
    """Reverse-time recursion of multipliers; returns (m_x (T,F), m_h0, m_c0)."""
    L = tx.length
    n_states = cfg.num_layers * cfg.dirs
    m_h0 = np.zeros((n_states, cfg.h_out))
    m_c0 = np.zeros((n_states, cfg.hidden_size))
    g_out = readout[:L].astype(
        np.float64
    )  # multiplier on the current layer's output (L, D*H_out)
    for layer in range(cfg.num_layers - 1, -1, -1):
        in_size = input_size if layer == 0 else cfg.dirs * cfg.h_out
        g_in = np.zeros((L, in_size))
        for d in range(cfg.dirs):
            p = _cell_params(params, layer, d, cfg.bias, cfg.proj_size)
            g_dir = g_out[:, d * cfg.h_out : (d + 1) * cfg.h_out]
            recs_x, recs_r = tx.records[layer][d], tr.records[layer][d]
            times = list(range(L - 1, -1, -1)) if d == 1 else list(range(L))
            gh = np.zeros(cfg.h_out)  # multiplier on h after the step being undone
            gc = np.zeros(
                cfg.hidden_size
            )  # multiplier on c after the step being undone
            for s in range(L - 1, -1, -1):
                t = times[s]
                gh = gh + g_dir[t]
                if cfg.kind == "lstm":
                    gx, gh, gc = _lstm_back(p, recs_x[s], recs_r[s], gh, gc)
                elif cfg.kind == "gru":
                    gx, gh = _gru_back(p, recs_x[s], recs_r[s], gh)
                else:
                    gx, gh = _rnn_back(p, recs_x[s], recs_r[s], gh, cfg.act)
                g_in[t] += gx
            idx = layer * cfg.dirs + d
            m_h0[idx], m_c0[idx] = gh, gc
        g_out = g_in
    m_x = np.zeros((readout.shape[0], input_size))
    m_x[:L] = g_out
    return m_x, m_h0, m_c0


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def rnn_forward(
    kind: str,
    params: Params,
    x: NDArray[np.floating],
    h0: NDArray[np.floating] | None = None,
    c0: NDArray[np.floating] | None = None,
    *,
    num_layers: int,
    bidirectional: bool,
    hidden_size: int,
    proj_size: int = 0,
    nonlinearity: str = "tanh",
    bias: bool = True,
    length: int | None = None,
) -> tuple[Array, Array, Array | None]:
    """Run a torch-equivalent LSTM/GRU/RNN on one sequence x (T, F) in float64.

    Returns ``(outputs (T, D*H_out), h_n (num_layers*D, H_out), c_n)``; ``c_n`` is
    ``(num_layers*D, hidden_size)`` for LSTM and ``None`` otherwise.  With
    ``length=L`` only steps 0..L-1 are used and outputs past L are zero.
    """
    cfg = _make_config(
        kind, num_layers, bidirectional, hidden_size, proj_size, nonlinearity, bias
    )
    tr = _forward_trace(cfg, params, x, h0, c0, length)
    return tr.outputs, tr.h_n, tr.c_n


def rnn_multipliers(
    kind: str,
    params: Params,
    x: NDArray[np.floating],
    r: NDArray[np.floating],
    readout: NDArray[np.floating],
    h0: NDArray[np.floating] | None = None,
    c0: NDArray[np.floating] | None = None,
    h0_ref: NDArray[np.floating] | None = None,
    c0_ref: NDArray[np.floating] | None = None,
    *,
    num_layers: int,
    bidirectional: bool,
    hidden_size: int,
    proj_size: int = 0,
    nonlinearity: str = "tanh",
    bias: bool = True,
    length: int | None = None,
) -> Multipliers:
    """DeepLIFT multipliers of y = Σ readout ⊙ outputs w.r.t. x, h0, c0.

    Returns a dict with ``"x"`` (T, F), ``"h0"``, ``"c0"`` (multipliers, or None
    when that state was not given), ``"out_x"``, ``"out_r"`` (output sequences).
    When ``r == x`` (and equal initial states) the multipliers are the gradient.
    """
    if (h0 is None) != (h0_ref is None):
        raise ValueError("h0 and h0_ref must be given together")
    if (c0 is None) != (c0_ref is None):
        raise ValueError("c0 and c0_ref must be given together")
    cfg = _make_config(
        kind, num_layers, bidirectional, hidden_size, proj_size, nonlinearity, bias
    )
    x = np.asarray(x, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if x.shape != r.shape:
        raise ValueError(f"x and r shapes differ: {x.shape} vs {r.shape}")
    tx = _forward_trace(cfg, params, x, h0, c0, length)
    tr = _forward_trace(cfg, params, r, h0_ref, c0_ref, length)
    readout_a = np.asarray(readout, dtype=np.float64)
    if readout_a.shape != tx.outputs.shape:
        raise ValueError(
            f"readout must have shape {tx.outputs.shape}, got {readout_a.shape}"
        )
    m_x, m_h0, m_c0 = _backward(cfg, params, tx, tr, readout_a, x.shape[1])
    return {
        "x": m_x,
        "h0": m_h0 if h0 is not None else None,
        "c0": m_c0 if c0 is not None else None,
        "out_x": tx.outputs,
        "out_r": tr.outputs,
    }


def rnn_deeplift(
    kind: str,
    params: Params,
    x: NDArray[np.floating],
    r: NDArray[np.floating],
    readout: NDArray[np.floating],
    h0: NDArray[np.floating] | None = None,
    c0: NDArray[np.floating] | None = None,
    h0_ref: NDArray[np.floating] | None = None,
    c0_ref: NDArray[np.floating] | None = None,
    *,
    num_layers: int,
    bidirectional: bool,
    hidden_size: int,
    proj_size: int = 0,
    nonlinearity: str = "tanh",
    bias: bool = True,
    length: int | None = None,
) -> Attributions:
    """DeepLIFT/DeepSHAP attributions φ = m · (input - reference) for one pair.

    Returns ``{"x": φ_x (T, F), "h0": φ_h0 | None, "c0": φ_c0 | None,
    "delta": Σ readout ⊙ (out(x) - out(r))}``, with
    ``Σφ_x + Σφ_h0 + Σφ_c0 == delta`` up to float64 rounding.  Rows of φ_x past
    ``length`` are zero.
    """
    m = rnn_multipliers(
        kind,
        params,
        x,
        r,
        readout,
        h0,
        c0,
        h0_ref,
        c0_ref,
        num_layers=num_layers,
        bidirectional=bidirectional,
        hidden_size=hidden_size,
        proj_size=proj_size,
        nonlinearity=nonlinearity,
        bias=bias,
        length=length,
    )
    x = np.asarray(x, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    L = x.shape[0] if length is None else int(length)
    dx = np.zeros_like(x)
    dx[:L] = x[:L] - r[:L]
    phi_h0 = phi_c0 = None
    if h0 is not None and h0_ref is not None and m["h0"] is not None:
        phi_h0 = m["h0"] * (np.asarray(h0, np.float64) - np.asarray(h0_ref, np.float64))
    if c0 is not None and c0_ref is not None and m["c0"] is not None:
        phi_c0 = m["c0"] * (np.asarray(c0, np.float64) - np.asarray(c0_ref, np.float64))
    readout_a = np.asarray(readout, dtype=np.float64)
    delta = float(np.sum(readout_a * (m["out_x"] - m["out_r"])))
    return {"x": m["x"] * dx, "h0": phi_h0, "c0": phi_c0, "delta": delta}
