"""Self-tests of the float64 numpy DeepLIFT reference (not of ``rnnshap``).

Checks: forward equivalence with ``torch.nn.{LSTM,GRU,RNN}``; multipliers at
``r == x`` equal torch autograd gradients; exact additivity over many random
configurations (saturating inputs, zero and tiny per-step differences);
symmetry φ(x, r) = -φ(r, x); a closed-form linear case; and that a wrong rule
(gradient instead of Shapley / Rescale) is detected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import rnn_deeplift as ref

FloatArray = np.ndarray


@dataclass(frozen=True)
class Cfg:
    kind: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    nonlinearity: str = "tanh"
    bias: bool = True

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def h_out(self) -> int:
        return self.proj_size or self.hidden_size

    def kwargs(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "hidden_size": self.hidden_size,
            "proj_size": self.proj_size,
            "nonlinearity": self.nonlinearity,
            "bias": self.bias,
        }


def random_params(
    cfg: Cfg, rng: np.random.Generator, gain: float = 1.0
) -> dict[str, FloatArray]:
    """Random weights named and shaped like torch's state_dict (uniform ±gain/√H)."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cfg.kind]
    k = gain / np.sqrt(cfg.hidden_size)
    out: dict[str, FloatArray] = {}
    for layer in range(cfg.num_layers):
        in_size = cfg.input_size if layer == 0 else cfg.dirs * cfg.h_out
        for d in range(cfg.dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            G = gates * cfg.hidden_size
            out["weight_ih" + sfx] = rng.uniform(-k, k, (G, in_size))
            out["weight_hh" + sfx] = rng.uniform(-k, k, (G, cfg.h_out))
            if cfg.bias:
                out["bias_ih" + sfx] = rng.uniform(-k, k, G)
                out["bias_hh" + sfx] = rng.uniform(-k, k, G)
            if cfg.proj_size:
                out["weight_hr" + sfx] = rng.uniform(
                    -k, k, (cfg.proj_size, cfg.hidden_size)
                )
    return out


def torch_module(cfg: Cfg, params: dict[str, FloatArray]) -> torch.nn.RNNBase:
    """A float64 eval-mode torch layer loaded (strictly) with `params`."""
    common = {
        "input_size": cfg.input_size,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "bidirectional": cfg.bidirectional,
        "bias": cfg.bias,
        "dtype": torch.float64,
    }
    mod: torch.nn.RNNBase
    if cfg.kind == "lstm":
        mod = torch.nn.LSTM(proj_size=cfg.proj_size, **common)
    elif cfg.kind == "gru":
        mod = torch.nn.GRU(**common)
    else:
        mod = torch.nn.RNN(nonlinearity=cfg.nonlinearity, **common)
    mod.load_state_dict(
        {k: torch.from_numpy(v) for k, v in params.items()}, strict=True
    )
    return mod.eval()


def random_states(
    cfg: Cfg, rng: np.random.Generator, scale: float = 1.0
) -> tuple[FloatArray, FloatArray | None]:
    n = cfg.num_layers * cfg.dirs
    h0 = scale * rng.standard_normal((n, cfg.h_out))
    c0 = (
        scale * rng.standard_normal((n, cfg.hidden_size))
        if cfg.kind == "lstm"
        else None
    )
    return h0, c0


FORWARD_CFGS = [
    Cfg("lstm", 3, 5),
    Cfg("lstm", 3, 5, num_layers=3, bidirectional=True),
    Cfg("lstm", 4, 6, num_layers=2, proj_size=3),
    Cfg("lstm", 4, 6, num_layers=2, bidirectional=True, proj_size=2, bias=False),
    Cfg("gru", 3, 5),
    Cfg("gru", 3, 4, num_layers=2, bidirectional=True, bias=False),
    Cfg("gru", 2, 4, num_layers=3),
    Cfg("rnn", 3, 5),
    Cfg("rnn", 3, 5, num_layers=2, bidirectional=True, nonlinearity="relu"),
    Cfg("rnn", 2, 4, num_layers=3, nonlinearity="relu", bias=False),
]


def present(v: FloatArray | None) -> FloatArray:
    """Narrow an optional array (a test failure if it is None)."""
    assert v is not None
    return v


def present_t(g: torch.Tensor | None) -> FloatArray:
    """A batch-of-one autograd gradient (T|S, 1, ·) as a numpy (T|S, ·) array."""
    assert g is not None
    return g[:, 0].numpy()


def attributions_of(res: ref.Attributions) -> list[FloatArray]:
    """φ_x plus φ_h0 / φ_c0 when those states were attributed."""
    return [res["x"]] + [v for v in (res["h0"], res["c0"]) if v is not None]


def _ids(cfgs: list[Cfg]) -> list[str]:
    return [
        f"{c.kind}-L{c.num_layers}{'-bi' if c.bidirectional else ''}"
        f"{'-p' + str(c.proj_size) if c.proj_size else ''}{'-nobias' if not c.bias else ''}"
        f"{'-relu' if c.nonlinearity == 'relu' else ''}"
        for c in cfgs
    ]


# ---------------------------------------------------------------------------
# 1. forward equivalence with torch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("cfg", FORWARD_CFGS, ids=_ids(FORWARD_CFGS))
def test_forward_matches_torch(cfg: Cfg, with_state: bool) -> None:
    rng = np.random.default_rng(0)
    params = random_params(cfg, rng)
    mod = torch_module(cfg, params)
    T = 7
    x = rng.standard_normal((T, cfg.input_size))
    h0, c0 = random_states(cfg, rng) if with_state else (None, None)
    out, h_n, c_n = ref.rnn_forward(
        cfg.kind, params, x, h0, c0 if with_state else None, **cfg.kwargs()
    )

    tx = torch.from_numpy(x)[:, None]
    state: Any = None
    if with_state:
        th0 = torch.from_numpy(h0)[:, None]
        state = (th0, torch.from_numpy(c0)[:, None]) if cfg.kind == "lstm" else th0
    with torch.no_grad():
        t_out, t_state = mod(tx, state)
    t_h = t_state[0] if cfg.kind == "lstm" else t_state
    np.testing.assert_allclose(out, t_out[:, 0].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, t_h[:, 0].numpy(), rtol=0, atol=1e-12)
    if cfg.kind == "lstm":
        assert c_n is not None
        np.testing.assert_allclose(c_n, t_state[1][:, 0].numpy(), rtol=0, atol=1e-12)
    else:
        assert c_n is None


@pytest.mark.parametrize("cfg", FORWARD_CFGS, ids=_ids(FORWARD_CFGS))
def test_forward_variable_length_matches_packed_torch(cfg: Cfg) -> None:
    rng = np.random.default_rng(1)
    params = random_params(cfg, rng)
    mod = torch_module(cfg, params)
    T, lengths = 9, [9, 4, 1, 6]
    B = len(lengths)
    xs = rng.standard_normal((B, T, cfg.input_size))
    n = cfg.num_layers * cfg.dirs
    h0 = rng.standard_normal((n, B, cfg.h_out))
    c0 = rng.standard_normal((n, B, cfg.hidden_size))
    state: Any = (
        (torch.from_numpy(h0), torch.from_numpy(c0))
        if cfg.kind == "lstm"
        else torch.from_numpy(h0)
    )
    packed = pack_padded_sequence(
        torch.from_numpy(xs).transpose(0, 1),
        torch.tensor(lengths),
        enforce_sorted=False,
    )
    with torch.no_grad():
        t_packed, t_state = mod(packed, state)
    t_out, _ = pad_packed_sequence(t_packed, total_length=T)
    t_h = t_state[0] if cfg.kind == "lstm" else t_state
    for b, L in enumerate(lengths):
        out, h_n, c_n = ref.rnn_forward(
            cfg.kind,
            params,
            xs[b],
            h0[:, b],
            c0[:, b] if cfg.kind == "lstm" else None,
            length=L,
            **cfg.kwargs(),
        )
        np.testing.assert_allclose(out, t_out[:, b].numpy(), rtol=0, atol=1e-12)
        assert np.all(out[L:] == 0.0)
        np.testing.assert_allclose(h_n, t_h[:, b].numpy(), rtol=0, atol=1e-12)
        if cfg.kind == "lstm":
            np.testing.assert_allclose(
                present(c_n), t_state[1][:, b].numpy(), rtol=0, atol=1e-12
            )


# ---------------------------------------------------------------------------
# backward wiring: at r == x the multipliers are the autograd gradient
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [None, 5])
@pytest.mark.parametrize("cfg", FORWARD_CFGS, ids=_ids(FORWARD_CFGS))
def test_multipliers_at_reference_equal_gradient(cfg: Cfg, length: int | None) -> None:
    rng = np.random.default_rng(2)
    params = random_params(cfg, rng, gain=2.0)
    mod = torch_module(cfg, params)
    T = 8
    L = T if length is None else length
    x = rng.standard_normal((T, cfg.input_size))
    h0, c0 = random_states(cfg, rng)
    readout = rng.standard_normal((T, cfg.dirs * cfg.h_out))
    m = ref.rnn_multipliers(
        cfg.kind, params, x, x, readout, h0, c0, h0, c0, length=length, **cfg.kwargs()
    )

    tx = torch.from_numpy(x[:L].copy())[:, None].requires_grad_()
    th0 = torch.from_numpy(h0)[:, None].requires_grad_()
    tc0 = torch.from_numpy(c0)[:, None].requires_grad_() if c0 is not None else None
    out, _ = mod(tx, (th0, tc0) if cfg.kind == "lstm" else th0)
    (out[:, 0] * torch.from_numpy(readout[:L])).sum().backward()
    expected_x = np.zeros_like(x)
    expected_x[:L] = present_t(tx.grad)
    np.testing.assert_allclose(m["x"], expected_x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        present(m["h0"]), present_t(th0.grad), rtol=0, atol=1e-12
    )
    if tc0 is not None:
        np.testing.assert_allclose(
            present(m["c0"]), present_t(tc0.grad), rtol=0, atol=1e-12
        )


# ---------------------------------------------------------------------------
# 2. additivity over many random configurations
# ---------------------------------------------------------------------------


def random_case(seed: int) -> dict[str, Any]:
    """A random config + pair, with saturating scales and equal / nearly equal steps."""
    rng = np.random.default_rng(1000 + seed)
    kind = ["lstm", "gru", "rnn"][seed % 3]
    cfg = Cfg(
        kind=kind,
        input_size=int(rng.integers(1, 6)),
        hidden_size=int(rng.integers(1, 7)),
        num_layers=int(rng.integers(1, 4)),
        bidirectional=bool(rng.integers(0, 2)),
        bias=bool(rng.random() < 0.8),
        nonlinearity="relu" if kind == "rnn" and rng.random() < 0.5 else "tanh",
    )
    if kind == "lstm" and rng.random() < 0.3:
        cfg = replace(cfg, proj_size=int(rng.integers(1, cfg.hidden_size + 1)))
    T = int(rng.choice([1, 2, 5, 16, 64]))
    big = rng.random() < 0.4  # saturating regime
    gain = float(rng.choice([1.0, 3.0])) if big else 1.0
    scale = float(rng.choice([10.0, 50.0])) if big else 1.0
    params = random_params(cfg, rng, gain=gain)
    x = scale * rng.standard_normal((T, cfg.input_size))
    r = scale * rng.standard_normal((T, cfg.input_size))
    mode = rng.integers(0, 3)
    mask = rng.random(T) < 0.4
    if mode == 1:
        r[mask] = x[mask]  # exactly equal steps (Δ = 0 branch)
    elif mode == 2:
        r[mask] = x[mask] + 1e-12 * rng.standard_normal(
            (int(mask.sum()), cfg.input_size)
        )  # tiny Δ
    if rng.random() < 0.3:
        r[: T // 2] = x[
            : T // 2
        ]  # identical prefix: identical reference trajectory there
    length = int(rng.integers(1, T + 1)) if rng.random() < 0.3 else None
    with_state = rng.random() < 0.5
    h0 = c0 = h0_ref = c0_ref = None
    if with_state:
        h0, c0 = random_states(cfg, rng, scale=max(1.0, scale / 10))
        h0_ref, c0_ref = random_states(cfg, rng)
        if rng.random() < 0.3:
            h0_ref = h0.copy()
    readout = rng.standard_normal((T, cfg.dirs * cfg.h_out))
    if rng.random() < 0.3:
        readout[:-1] = 0.0  # last step only
    return {
        "cfg": cfg,
        "params": params,
        "x": x,
        "r": r,
        "readout": readout,
        "h0": h0,
        "c0": c0,
        "h0_ref": h0_ref,
        "c0_ref": c0_ref,
        "length": length,
    }


def additivity_error(case: dict[str, Any]) -> tuple[float, float, float]:
    """(|Σφ - Δ|, Δ, M) for one case, M = Σ|readout|⊙(|out(x)| + |out(r)|).

    Δ = y(x) - y(r) is itself a difference of two forward passes, so it carries
    a rounding error of order eps·M; M sets the absolute floor of the check.
    """
    cfg: Cfg = case["cfg"]
    res = ref.rnn_deeplift(
        cfg.kind,
        case["params"],
        case["x"],
        case["r"],
        case["readout"],
        case["h0"],
        case["c0"],
        case["h0_ref"],
        case["c0_ref"],
        length=case["length"],
        **cfg.kwargs(),
    )
    total = sum(float(np.sum(p)) for p in attributions_of(res))
    out_x, _, _ = ref.rnn_forward(
        cfg.kind,
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        length=case["length"],
        **cfg.kwargs(),
    )
    out_r, _, _ = ref.rnn_forward(
        cfg.kind,
        case["params"],
        case["r"],
        case["h0_ref"],
        case["c0_ref"],
        length=case["length"],
        **cfg.kwargs(),
    )
    delta = float(np.sum(case["readout"] * (out_x - out_r)))
    mag = float(np.sum(np.abs(case["readout"]) * (np.abs(out_x) + np.abs(out_r))))
    assert abs(delta - res["delta"]) <= 1e-14 * mag
    if case["length"] is not None:
        assert np.all(res["x"][case["length"] :] == 0.0)
    return abs(total - delta), delta, mag


N_RANDOM = 240


@pytest.mark.parametrize("chunk", range(8))
def test_additivity_random_configs(chunk: int) -> None:
    """|Σφ - Δ| <= 1e-10·|Δ| + 1e-13·M (the second term only matters when Δ ~ rounding)."""
    n_well_conditioned = 0
    for seed in range(chunk, N_RANDOM, 8):
        case = random_case(seed)
        err, delta, mag = additivity_error(case)
        assert err <= 1e-10 * abs(delta) + 1e-13 * mag, (
            seed,
            case["cfg"],
            err,
            delta,
            mag,
        )
        if abs(delta) > 1e-6 * mag:
            n_well_conditioned += 1
            assert err <= 1e-10 * abs(delta), (seed, case["cfg"], err, delta)
    assert n_well_conditioned >= 20


def test_additivity_hits_tiny_delta_branch() -> None:
    """Nearly-equal pre-activations (|Δu| < 1e-9 but nonzero) stay exact."""
    rng = np.random.default_rng(7)
    for kind in ("lstm", "gru", "rnn"):
        cfg = Cfg(kind, 3, 4, num_layers=2, bidirectional=True)
        params = random_params(cfg, rng)
        x = rng.standard_normal((6, 3))
        r = x + 1e-11 * rng.standard_normal((6, 3))
        r[2] = x[2] + 1.0  # one macroscopic difference
        readout = rng.standard_normal((6, 2 * cfg.h_out))
        res = ref.rnn_deeplift(kind, params, x, r, readout, **cfg.kwargs())
        assert abs(res["x"].sum() - res["delta"]) <= 1e-10 * abs(res["delta"])


def test_symmetry_swap_input_and_reference() -> None:
    """Rescale and Shapley rules are symmetric in (x, r): φ(x, r) = -φ(r, x)."""
    for seed in range(30):
        c = random_case(seed)
        cfg: Cfg = c["cfg"]
        kw = dict(length=c["length"], **cfg.kwargs())
        a = ref.rnn_deeplift(
            cfg.kind,
            c["params"],
            c["x"],
            c["r"],
            c["readout"],
            c["h0"],
            c["c0"],
            c["h0_ref"],
            c["c0_ref"],
            **kw,
        )
        b = ref.rnn_deeplift(
            cfg.kind,
            c["params"],
            c["r"],
            c["x"],
            c["readout"],
            c["h0_ref"],
            c["c0_ref"],
            c["h0"],
            c["c0"],
            **kw,
        )
        for pa, pb in zip(attributions_of(a), attributions_of(b), strict=True):
            scale = max(1.0, float(np.abs(pa).max()))
            np.testing.assert_allclose(pa, -pb, rtol=0, atol=1e-12 * scale)


def test_state_without_reference_is_an_error() -> None:
    cfg = Cfg("lstm", 2, 3)
    rng = np.random.default_rng(0)
    params = random_params(cfg, rng)
    x = rng.standard_normal((3, 2))
    h0, c0 = random_states(cfg, rng)
    with pytest.raises(ValueError):
        ref.rnn_deeplift("lstm", params, x, x, np.ones((3, 3)), h0=h0, **cfg.kwargs())
    with pytest.raises(ValueError):
        ref.rnn_deeplift("lstm", params, x, x, np.ones((3, 3)), c0=c0, **cfg.kwargs())


# ---------------------------------------------------------------------------
# 3. closed-form linear case
# ---------------------------------------------------------------------------


def test_linear_single_step_relu_closed_form() -> None:
    """One relu step with positive pre-activations is linear: φ = (W_ihᵀ R) ⊙ (x - r)."""
    rng = np.random.default_rng(3)
    cfg = Cfg("rnn", 4, 5, nonlinearity="relu")
    params = {k: np.abs(v) for k, v in random_params(cfg, rng).items()}
    x = rng.uniform(0.5, 2.0, (1, 4))
    r = rng.uniform(0.1, 0.4, (1, 4))
    readout = rng.standard_normal((1, 5))
    res = ref.rnn_deeplift("rnn", params, x, r, readout, **cfg.kwargs())
    expected = (params["weight_ih_l0"].T @ readout[0]) * (x[0] - r[0])
    np.testing.assert_allclose(res["x"][0], expected, rtol=1e-14, atol=1e-15)
    assert res["delta"] == pytest.approx(
        float(readout[0] @ params["weight_ih_l0"] @ (x[0] - r[0])), rel=1e-13
    )
    assert res["h0"] is None and res["c0"] is None


# ---------------------------------------------------------------------------
# 4. the tests can fail: wrong rules break additivity
# ---------------------------------------------------------------------------


def _lstm_case(
    rng: np.random.Generator,
) -> tuple[Cfg, dict[str, FloatArray], FloatArray, FloatArray, FloatArray]:
    cfg = Cfg("lstm", 3, 4, num_layers=2)
    params = random_params(cfg, rng, gain=2.0)
    x = 2.0 * rng.standard_normal((10, 3))
    r = np.zeros_like(x)
    readout = rng.standard_normal((10, 4))
    return cfg, params, x, r, readout


def _rel_additivity(
    cfg: Cfg,
    params: dict[str, FloatArray],
    x: FloatArray,
    r: FloatArray,
    readout: FloatArray,
) -> float:
    res = ref.rnn_deeplift(cfg.kind, params, x, r, readout, **cfg.kwargs())
    out_x, _, _ = ref.rnn_forward(cfg.kind, params, x, **cfg.kwargs())
    out_r, _, _ = ref.rnn_forward(cfg.kind, params, r, **cfg.kwargs())
    delta = float(np.sum(readout * (out_x - out_r)))
    return abs(float(res["x"].sum()) - delta) / abs(delta)


def test_gradient_product_rule_breaks_additivity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(4)
    case = _lstm_case(rng)
    assert _rel_additivity(*case) < 1e-12

    def gradient_product(
        a: FloatArray, a_r: FloatArray, b: FloatArray, b_r: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        return b, a  # plain derivative at x instead of the Shapley average

    monkeypatch.setattr(ref, "product_multipliers", gradient_product)
    assert _rel_additivity(*case) > 1e-3


def test_gradient_rescale_rule_breaks_additivity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    case = _lstm_case(rng)

    def gradient_rescale(
        act: ref.Activation, u: FloatArray, u_r: FloatArray
    ) -> FloatArray:
        return act.deriv(u)  # plain derivative at x instead of the secant

    monkeypatch.setattr(ref, "rescale_multiplier", gradient_rescale)
    assert _rel_additivity(*case) > 1e-3
