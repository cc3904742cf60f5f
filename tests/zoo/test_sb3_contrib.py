"""sb3-contrib: RecurrentPPO's recurrent actor-critic policies (``MlpLstmPolicy`` on CartPole-v1 and
Pendulum-v1, ``CnnLstmPolicy`` on images, ``MultiInputLstmPolicy`` on a dict observation space),
explained through the policy's own ``get_distribution`` and ``predict_values``: the action
distribution's parameters (Categorical's normalized logits, the Gaussian's mean and standard
deviation; never a sampled action) and the value, as functions of a sequence of observations and
of the actor's and the critic's LSTM states.

sb3's ``preprocess_obs`` casts Box observations to float32 (``obs.float()``) whatever the
parameters' dtype. The float64 copy (``Case.model64``) makes the same calls on the policy's pieces
(features extractor, ``_process_sequence``, ``mlp_extractor``, ``_get_action_dist_from_latent``,
``value_net``) without that cast, which is the identity on float32 observations.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from .harness import N_BACKGROUND, N_EXPLAINED, Case, Spec, assert_zero, check, params, steps

pytest.importorskip("sb3_contrib")
from gymnasium import spaces  # noqa: E402
from sb3_contrib import RecurrentPPO  # noqa: E402
from sb3_contrib.ppo_recurrent.policies import CnnLstmPolicy, MultiInputLstmPolicy  # noqa: E402
from stable_baselines3.common.distributions import CategoricalDistribution  # noqa: E402

T, HIDDEN, LAYERS = 6, 8, 1
#: the episode start of the entries that have one: the LSTM states are reset before this step
START = 3


class Policy(nn.Module):
    """``f(*observations, h_pi, c_pi, h_vf, c_vf) -> (N, 2·(m + 1))``: the distribution's m parameters
    and the value at the steps ``steps(T)``.

    Observations are batch-first, ``(N, T, *shape)`` (one tensor per key of a dict space), the LSTM
    states ``(N, layers, hidden)``; the wrapper lays them out as sb3 does (sequences one after the
    other in the batch, states layer-first) and passes the fixed ``episode_starts`` (a buffer, 1.0
    where a new episode starts)."""

    def __init__(self, policy: nn.Module, starts: torch.Tensor, keys: list[str] | None = None, own_calls: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.keys = keys
        self.own_calls = own_calls
        self.register_buffer("starts", starts)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        *observations, h_pi, c_pi, h_vf, c_vf = tensors
        n = h_pi.shape[0]
        flat = [o.reshape(n * T, *o.shape[2:]) for o in observations]
        obs: Any = flat[0] if self.keys is None else dict(zip(self.keys, flat, strict=True))
        starts = self.starts.to(h_pi.dtype).expand(n, T).reshape(-1)
        pi, vf = (h_pi.transpose(0, 1), c_pi.transpose(0, 1)), (h_vf.transpose(0, 1), c_vf.transpose(0, 1))
        policy = self.policy
        if self.own_calls:
            distribution, _ = policy.get_distribution(obs, pi, starts)
            values = policy.predict_values(obs, vf, starts)
        else:  # the float64 copy: the same pieces, without preprocess_obs's cast to float32
            latent_pi, _ = policy._process_sequence(policy.pi_features_extractor(obs), pi, starts, policy.lstm_actor)
            distribution = policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(latent_pi))
            features = policy.vf_features_extractor(obs)
            if policy.lstm_critic is not None:
                latent_vf, _ = policy._process_sequence(features, vf, starts, policy.lstm_critic)
            elif policy.shared_lstm:
                latent_vf = policy._process_sequence(features, vf, starts, policy.lstm_actor)[0].detach()
            else:
                latent_vf = policy.critic(features)
            values = policy.value_net(policy.mlp_extractor.forward_critic(latent_vf))
        if isinstance(policy.action_dist, CategoricalDistribution):
            parameters = distribution.distribution.logits  # normalized: log-probabilities
        else:
            parameters = torch.cat([distribution.distribution.mean, distribution.distribution.stddev], -1)
        return torch.cat([parameters, values], -1).reshape(n, T, -1)[:, steps(T)].flatten(1)


def _case(
    policy: nn.Module, observations: Callable[[int], list[torch.Tensor]], start: int | None, keys: list[str] | None = None
) -> Case:
    starts = torch.zeros(T)
    if start is not None:
        starts[start] = 1.0
    model = Policy(policy, starts, keys).eval()
    model64 = Policy(copy.deepcopy(policy), starts.clone(), keys, own_calls=False)

    def data(n: int) -> list[torch.Tensor]:
        return [*observations(n), *(torch.randn(n, LAYERS, HIDDEN) for _ in range(4))]

    return Case(model, data(N_BACKGROUND), data(N_EXPLAINED), model64=model64)


POLICY_KWARGS = dict(lstm_hidden_size=HIDDEN, n_lstm_layers=LAYERS, net_arch=[8])


def _ppo(env: str, start: int | None, **policy_kwargs: Any) -> Callable[[], Case]:
    def build() -> Case:
        torch.manual_seed(0)
        model = RecurrentPPO(
            "MlpLstmPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu",
            policy_kwargs={**POLICY_KWARGS, **policy_kwargs}
        )
        shape = model.observation_space.shape
        return _case(model.policy, lambda n: [torch.randn(n, T, *shape)], start)

    return build


def _cnn() -> Case:
    torch.manual_seed(0)
    space = spaces.Box(0.0, 1.0, (1, 36, 36), np.float32)  # NatureCNN's smallest image; already normalized
    policy = CnnLstmPolicy(
        space, spaces.Discrete(3), lambda _: 3e-4, normalize_images=False, features_extractor_kwargs=dict(features_dim=8),
        **POLICY_KWARGS
    )
    return _case(policy, lambda n: [torch.rand(n, T, 1, 36, 36)], START)


def _dict() -> Case:
    torch.manual_seed(0)
    space = spaces.Dict({"position": spaces.Box(-1.0, 1.0, (2,)), "velocity": spaces.Box(-1.0, 1.0, (3,))})
    policy = MultiInputLstmPolicy(space, spaces.Box(-1.0, 1.0, (2,)), lambda _: 3e-4, **POLICY_KWARGS)
    return _case(policy, lambda n: [torch.randn(n, T, 2), torch.randn(n, T, 3)], None, keys=["position", "velocity"])


ZOO = {
    # Categorical(logits=...) and the loop over steps that resets the states at an episode start
    "MlpLstmPolicy-CartPole-episode_start": Spec(_ppo("CartPole-v1", START)),
    # Normal(mean, ones_like(mean) * log_std.exp()): broadcast_tensors and the argument validation; one LSTM call
    "MlpLstmPolicy-Pendulum": Spec(_ppo("Pendulum-v1", None)),
    # no critic LSTM: the value is a feedforward network of the current observation
    "MlpLstmPolicy-Pendulum-no_critic_lstm-episode_start": Spec(_ppo("Pendulum-v1", START, enable_critic_lstm=False)),
    # one LSTM for both heads, the critic's latent .detach()ed
    "MlpLstmPolicy-CartPole-shared_lstm": Spec(_ppo("CartPole-v1", None, shared_lstm=True, enable_critic_lstm=False)),
    "CnnLstmPolicy-episode_start": Spec(_cnn),
    "MultiInputLstmPolicy": Spec(_dict),
}


#: the entries with a Gaussian policy: (mean, standard deviation) per action dimension
GAUSSIAN = {"MlpLstmPolicy-Pendulum", "MlpLstmPolicy-Pendulum-no_critic_lstm-episode_start", "MultiInputLstmPolicy"}


@pytest.mark.parametrize("name", params(ZOO))
def test_zoo(name: str) -> None:
    """Exact; and what the outputs cannot read gets exactly 0.

    Every output at the first readout step gets 0 from the later observations (causal). The
    distribution reads the actor's states only and, with a critic LSTM of its own, the value the
    critic's (``predict_values``' states: with a shared LSTM, the actor's LSTM reads them; without a
    critic LSTM, no state at all, and no observation but the current one). After an episode start,
    the states are multiplied by 1 − 1 = 0: the outputs at the steps after it get 0 from the
    observations before it and from every initial state (and not from those after it). The
    Gaussian's standard deviation is a parameter: its attributions are 0 everywhere."""
    spec = ZOO[name]
    result = check(spec)
    if spec.refused is not None:
        return
    *obs, h_pi, c_pi, h_vf, c_vf = [phi.reshape(*phi.shape[:-1], 2, -1) for phi in result.values]  # (..., step, parameter)
    m = h_pi.shape[-1] - 1  # the distribution's parameters, then the value
    first, last = steps(T)
    for phi in obs:
        assert_zero(phi[:, first + 1 :, ..., 0, :], f"{name}: observations after step {first} for the readouts at step {first}")
    assert_zero(np.stack([h_vf[..., :m], c_vf[..., :m]]), f"{name}: the critic's states for the distribution")
    assert_zero(np.stack([h_pi[..., m:], c_pi[..., m:]]), f"{name}: the actor's states for the value")
    if "no_critic_lstm" in name:
        assert_zero(np.stack([h_vf, c_vf]), f"{name}: the states for the value of a policy without a critic LSTM")
        for phi in obs:
            for j, step in enumerate(steps(T)):
                others = np.delete(phi[..., j, m], step, axis=1)
                assert_zero(others, f"{name}: the observations but step {step} for the value at step {step}")
    if name in GAUSSIAN:
        for phi in [*obs, h_pi, c_pi, h_vf, c_vf]:
            assert_zero(phi[..., m // 2 : m], f"{name}: the standard deviation")
    if "episode_start" in name:
        for phi in obs:
            assert_zero(
                phi[:, :START, ..., 1, :], f"{name}: observations before the episode start for the readouts at step {last}"
            )
            assert np.count_nonzero(phi[:, START:, ..., 1, :]) > 0, f"{name}: the episode's observations get 0 at step {last}"
        for phi in [h_pi, c_pi, h_vf, c_vf]:
            assert_zero(phi[..., 1, :], f"{name}: the initial states for the readouts after the episode start")
