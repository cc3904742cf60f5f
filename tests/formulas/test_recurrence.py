"""The reverse-time recurrences of rnnshap/formulas/recurrence.py against float64 written from docs/recurrent.md.

One step of each layer (LSTM with and without a projection, GRU in torch's and Keras' gate orders, Elman) on the
torch namespace and on Keras' TensorFlow one, in float32, from the per-pair means and Rescale multipliers the
coefficients are made of; the loop over three steps; and the one primitive whose rounding is the binding's,
``joined_matmul``, in each engine's order. A float32 result may differ from the float64 one by n + 8 roundings of the
magnitudes it sums (the same formula on absolute values), n the longest sum (the weight's rows).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable

import numpy as np
import pytest
import torch

from rnnshap.formulas import recurrence
from rnnshap.formulas.torch_ops import TORCH

P, H, F, PROJ = 3, 4, 5, 2
EPS32 = float(np.finfo(np.float32).eps)


def _keras() -> tuple[Any, Callable[[np.ndarray], Any]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the Keras binding checked here is TensorFlow's (the fused Keras layers run on TensorFlow only)")
    from rnnshap.formulas.keras_ops import KERAS

    return KERAS, lambda a: tf.constant(a)


def _namespace(which: str) -> tuple[Any, Callable[[np.ndarray], Any]]:
    return (TORCH, torch.from_numpy) if which == "torch" else _keras()


def _random(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def _close(got: Any, want: np.ndarray, magnitude: np.ndarray, terms: int) -> None:
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    bound = (terms + 8) * EPS32 * magnitude
    assert np.all(np.abs(got - want) <= bound), float(np.max(np.abs(got - want) - bound))


# -- the equations of docs/recurrent.md ("Composing steps through time"), in float64 -------------------------------
def _lstm_reference(v: dict[str, np.ndarray], recurrent: np.ndarray, projection: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """δc += δh ō m_k'; δu_o = δh k̄' m_o; δu_i = δc ḡ m_i; δu_f = δc c̄_{t−1} m_f; δu_g = δc ī m_g; δc_{t−1} = δc f̄;
    δh_{t−1} = V^T δu (V the recurrent weight, rows [i, f, g, o]); δh through the projection first (h = W_hr h')."""
    dh = v["dh"] @ projection if projection is not None else v["dh"]
    dc = v["dc"] + dh * v["o"] * v["m_k"]
    du = np.concatenate([dc * v["g"] * v["m_i"], dc * v["c"] * v["m_f"], dc * v["i"] * v["m_g"], dh * v["k"] * v["m_o"]], -1)
    return du, du @ recurrent, dc * v["f"]


def _gru_reference(v: dict[str, np.ndarray], recurrent: np.ndarray) -> tuple[np.ndarray, ...]:
    """h' = (1 − z) n + z h, n = tanh(v), v = W_n x + r a: δv = δh mean(1 − z) m_n; δu_r = δv ā m_r;
    δu_z = δh mean(h − n) m_z; δa = δv r̄; δh_{t−1} = δh z̄ + V_rz^T [δu_r, δu_z] + V_n^T δa (rows [r, z, n])."""
    dv = v["dh"] * v["one_minus_z"] * v["m_n"]
    du_r, du_z = dv * v["a"] * v["m_r"], v["dh"] * v["h_minus_n"] * v["m_z"]
    da = dv * v["r"]
    dh_prev = v["dh"] * v["z"] + np.concatenate([du_r, du_z], -1) @ recurrent[: 2 * H] + da @ recurrent[2 * H :]
    return np.concatenate([du_r, du_z, dv], -1), dh_prev


def _values(rng: np.random.Generator, names: str, positive: str = "") -> dict[str, np.ndarray]:
    out = {name: _random(rng, P, H) for name in names.split()}
    for name in positive.split():  # (multipliers of σ and tanh are positive)
        out[name] = np.abs(out[name])
    return out


def _absolute(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.abs(value.astype(np.float64)) for name, value in v.items()}


def _float64(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: value.astype(np.float64) for name, value in v.items()}


@pytest.mark.parametrize("which", ["torch", "keras"])
@pytest.mark.parametrize("projected", [False, True])
def test_the_lstm_step_is_the_documented_recursion(which: str, projected: bool) -> None:
    xp, array = _namespace(which)
    rng = np.random.default_rng(0)
    h_out = PROJ if projected else H
    v = _values(rng, "dc g c i k o f m_i m_f m_g m_o m_k", "m_i m_f m_g m_o m_k")
    v["dh"] = _random(rng, P, h_out)
    recurrent, projection = _random(rng, 4 * H, h_out), _random(rng, h_out, H) if projected else None
    a_ifg = np.stack([v["g"] * v["m_i"], v["c"] * v["m_f"], v["i"] * v["m_g"]], -2)  # (P, 3, H)
    coefficients = [a_ifg, v["k"] * v["m_o"], v["o"] * v["m_k"], v["f"]]
    if which == "torch":
        blocks = TORCH.weight_blocks(torch.from_numpy(recurrent), [3 * H, H])
        proj = None if projection is None else TORCH.weight_blocks(torch.from_numpy(projection), [h_out])
    else:  # (a Keras kernel is the transpose)
        blocks = xp.weight_blocks(array(np.ascontiguousarray(recurrent.T)), [3 * H, H], True)
        proj = None if projection is None else xp.weight_blocks(array(np.ascontiguousarray(projection.T)), [h_out], True)
    du, dh_prev, dc_prev = recurrence.lstm_step(
        xp, array(v["dh"]), array(v["dc"]), *map(array, coefficients), recurrent=blocks, projection=proj
    )
    p64 = None if projection is None else projection.astype(np.float64)
    want = _lstm_reference(_float64(v), recurrent.astype(np.float64), p64)
    magnitude = _lstm_reference(_absolute(v), np.abs(recurrent.astype(np.float64)), None if p64 is None else np.abs(p64))
    got = (np.concatenate([np.asarray(part) for part in du], -1), dh_prev, dc_prev)
    for g, w, m in zip(got, want, magnitude, strict=True):
        _close(g, w, m, 4 * H + h_out)


@pytest.mark.parametrize("which", ["torch", "keras"])
@pytest.mark.parametrize("reset_first", [True, False])
def test_the_gru_step_is_the_documented_recursion_in_either_gate_order(which: str, reset_first: bool) -> None:
    xp, array = _namespace(which)
    rng = np.random.default_rng(1)
    v = _values(rng, "dh one_minus_z h_minus_n a r z m_r m_z m_n", "m_r m_z m_n one_minus_z r z")
    recurrent = _random(rng, 3 * H, H)  # rows [r, z, n]
    a_r, a_z = v["a"] * v["m_r"], v["h_minus_n"] * v["m_z"]
    a_gates = np.concatenate([a_r, a_z] if reset_first else [a_z, a_r], -1)
    rows = recurrent if reset_first else np.concatenate([recurrent[H : 2 * H], recurrent[:H], recurrent[2 * H :]])
    weight = torch.from_numpy(rows) if which == "torch" else array(np.ascontiguousarray(rows.T))
    blocks = xp.weight_blocks(weight, [2 * H, H], which != "torch")
    coefficients = [a_gates, v["one_minus_z"] * v["m_n"], v["z"], v["r"]]
    du, dh_prev = recurrence.gru_step(xp, array(v["dh"]), *map(array, coefficients), recurrent=blocks, reset_first=reset_first)
    want = _gru_reference(_float64(v), recurrent.astype(np.float64))
    magnitude = _gru_reference(_absolute(v), np.abs(recurrent.astype(np.float64)))
    got = np.concatenate([np.asarray(part) for part in du], -1)
    if not reset_first:  # (the reference's order: r, z, n)
        got = np.concatenate([got[:, H : 2 * H], got[:, :H], got[:, 2 * H :]], -1)
    _close(got, want[0], magnitude[0], 3 * H)
    _close(dh_prev, want[1], magnitude[1], 3 * H)


def test_the_elman_step_is_the_documented_recursion() -> None:
    rng = np.random.default_rng(2)
    dh, m, recurrent = _random(rng, P, H), np.abs(_random(rng, P, H)), _random(rng, H, H)
    (du,), dh_prev = recurrence.rnn_step(
        TORCH, torch.from_numpy(dh), torch.from_numpy(m), recurrent=TORCH.weight_blocks(torch.from_numpy(recurrent), [H])
    )
    want = dh.astype(np.float64) * m
    _close(du, want, np.abs(want), 1)
    _close(dh_prev, want @ recurrent.astype(np.float64), np.abs(want) @ np.abs(recurrent.astype(np.float64)), H)


class _Kept:
    def __init__(self) -> None:
        self.steps: list[tuple[Any, ...]] = []

    def add(self, *parts: Any) -> None:
        self.steps.append(parts)


def test_the_loop_adds_each_output_gradient_and_runs_the_steps_in_reverse_time() -> None:
    """Three LSTM steps: dh += d_t before step t, each step's du to the accumulator from the last step back, and the
    states' gradients at the start."""
    rng = np.random.default_rng(3)
    steps = 3
    d_out = _random(rng, steps, P, H)
    per_step = [_values(rng, "g c i k o f m_i m_f m_g m_o m_k", "m_i m_f m_g m_o m_k") for _ in range(steps)]
    recurrent = _random(rng, 4 * H, H)

    def coefficients(v: dict[str, np.ndarray]) -> list[torch.Tensor]:
        a_ifg = np.stack([v["g"] * v["m_i"], v["c"] * v["m_f"], v["i"] * v["m_g"]], -2)
        return [torch.from_numpy(a) for a in (a_ifg, v["k"] * v["m_o"], v["o"] * v["m_k"], v["f"])]

    dh0, dc0 = _random(rng, P, H), _random(rng, P, H)
    kept = _Kept()
    step = partial(recurrence.lstm_step, recurrent=TORCH.weight_blocks(torch.from_numpy(recurrent), [3 * H, H]))
    states = (torch.from_numpy(dh0), torch.from_numpy(dc0))
    at = lambda t: (torch.from_numpy(d_out[t]), coefficients(per_step[t]))  # noqa: E731
    dh, dc = recurrence.reverse_time(TORCH, step, steps, at, states, kept)
    want_dh, want_dc, want_du = dh0.astype(np.float64), dc0.astype(np.float64), []
    mag_dh, mag_dc, mag_du = np.abs(want_dh), np.abs(want_dc), []
    for t in reversed(range(steps)):
        v, a = _float64(per_step[t]), _absolute(per_step[t])
        du, want_dh, want_dc = _lstm_reference({**v, "dh": want_dh + d_out[t], "dc": want_dc}, recurrent.astype(np.float64), None)
        m_du, mag_dh, mag_dc = _lstm_reference(
            {**a, "dh": mag_dh + np.abs(d_out[t]), "dc": mag_dc}, np.abs(recurrent.astype(np.float64)), None
        )
        want_du.append(du)
        mag_du.append(m_du)
    terms = steps * (4 * H + 8)
    for parts, w, m in zip(kept.steps, want_du, mag_du, strict=True):
        _close(np.concatenate([np.asarray(p) for p in parts], -1), w, m, terms)
    _close(dh, want_dh, mag_dh, terms)
    _close(dc, want_dc, mag_dc, terms)


@pytest.mark.parametrize("which", ["torch", "keras"])
def test_joined_matmul_keeps_each_engines_order(which: str) -> None:
    """The meaning is add + [p_0, p_1] W; torch sums the blocks' products from the left, add first (the PyTorch
    engine's order, bit for bit), TensorFlow adds one product of the joined parts, its weight read transposed."""
    rng = np.random.default_rng(4)
    parts, weight, add = [_random(rng, P, 3 * H), _random(rng, P, H)], _random(rng, 4 * H, H), _random(rng, P, H)
    joined, w64, a64 = np.concatenate(parts, -1).astype(np.float64), weight.astype(np.float64), add.astype(np.float64)
    want, magnitude = a64 + joined @ w64, np.abs(a64) + np.abs(joined) @ np.abs(w64)
    if which == "torch":
        p, w, a = [torch.from_numpy(q) for q in parts], torch.from_numpy(weight), torch.from_numpy(add)
        got = TORCH.joined_matmul(p, TORCH.weight_blocks(w, [3 * H, H]), a)
        assert torch.equal(got, a + p[0] @ w[: 3 * H] + p[1] @ w[3 * H :])
    else:
        xp, _ = _keras()
        import tensorflow as tf

        p, w, a = [tf.constant(q) for q in parts], tf.constant(np.ascontiguousarray(weight.T)), tf.constant(add)
        got = xp.joined_matmul(p, xp.weight_blocks(w, [3 * H, H], True), a)
        assert np.array_equal(np.asarray(got), np.asarray(a + tf.matmul(tf.concat(p, -1), w, transpose_b=True)))
    _close(got, want, magnitude, 4 * H)
