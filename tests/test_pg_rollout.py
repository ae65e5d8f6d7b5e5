"""Policy-gradient rollouts (agents/rollout.py): GAE, truncation bootstraps and lambda = 1 Monte Carlo
returns against per-env, per-step Python loops, and the explained variance against NumPy."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.agents import pg

CPU = torch.device("cpu")


def naive_gae(rewards, values, terminated, truncated, final_values, last_value, gamma, lam):
    """Per env, per step: a terminated step bootstraps nothing, a truncated one V(final obs), any
    other step the next value (or `last_value` after the rollout); the recursion restarts at ends."""
    T, N = len(rewards), len(rewards[0])
    adv = [[0.0] * N for _ in range(T)]
    for i in range(N):
        running = 0.0
        for t in reversed(range(T)):
            if terminated[t][i]:
                running = rewards[t][i] - values[t][i]
            elif truncated[t][i]:
                running = rewards[t][i] + gamma * final_values[t][i] - values[t][i]
            else:
                next_value = values[t + 1][i] if t + 1 < T else last_value[i]
                running = rewards[t][i] + gamma * next_value - values[t][i] + gamma * lam * running
            adv[t][i] = running
    return adv


def random_rollout(seed: int, T: int, N: int, p_term: float, p_trunc: float, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=dtype)
    values = torch.randn(T, N, generator=g, dtype=dtype)
    last_value = torch.randn(N, generator=g, dtype=dtype)
    u = torch.rand(T, N, generator=g)
    terminated = u < p_term
    truncated = (u >= p_term) & (u < p_term + p_trunc)  # mutually exclusive, as the env loop should record
    return rewards, values, last_value, terminated, truncated


@pytest.mark.parametrize("T,N,gamma,lam,p_done", [
    (1, 1, 0.99, 0.95, 0.3), (16, 1, 0.99, 0.95, 0.2), (33, 5, 0.9, 0.8, 0.15),
    (20, 3, 1.0, 1.0, 0.3), (25, 4, 0.97, 0.0, 0.2), (40, 2, 0.99, 0.95, 0.0), (12, 3, 0.5, 0.7, 0.9),
])
def test_compute_gae_matches_naive(T, N, gamma, lam, p_done):
    rewards, values, last_value, dones, _ = random_rollout(T * 100 + N, T, N, p_done, 0.0)
    adv = pg.compute_gae(rewards, values, dones, last_value, gamma, lam)
    ref = naive_gae(rewards.tolist(), values.tolist(), dones.tolist(), [[False] * N] * T, None,
                    last_value.tolist(), gamma, lam)
    assert adv.shape == (T, N)
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    # `out_advantages` is filled in place and returned.
    out = torch.full_like(rewards, float("nan"))
    assert pg.compute_gae(rewards, values, dones, last_value, gamma, lam, out_advantages=out) is out
    torch.testing.assert_close(out, adv)


@pytest.mark.parametrize("seed,T,N,gamma,lam", [(0, 24, 4, 0.99, 0.95), (1, 50, 3, 0.9, 1.0), (2, 7, 6, 0.8, 0.5)])
def test_rollout_storage_bootstraps_truncated_steps(seed, T, N, gamma, lam):
    rewards, values, last_value, terminated, truncated = random_rollout(seed, T, N, 0.1, 0.15, torch.float32)
    assert terminated.any() and truncated.any()
    obs_shape = (3,)
    storage = pg.RolloutStorage(T, N, gym.spaces.Box(-1, 1, obs_shape), torch.float32, (), torch.int64, CPU)
    g = torch.Generator().manual_seed(seed + 100)
    storage.obs.copy_(torch.randn(T, N, *obs_shape, generator=g))
    storage.final_obs.copy_(torch.randn(T, N, *obs_shape, generator=g))
    storage.rewards.copy_(rewards)
    storage.values.copy_(values)
    storage.train_ends.copy_(terminated | truncated)
    storage.truncated.copy_(truncated)
    weights = torch.tensor([0.5, -1.0, 2.0])
    rows_seen = []

    def value_fn(x: torch.Tensor) -> torch.Tensor:  # a known value function of the observation
        rows_seen.append(x.shape[0])
        return x @ weights + 0.25

    storage.bootstrap_truncated(value_fn, gamma)
    assert sum(rows_seen) == int(truncated.sum())  # only the truncated rows are evaluated
    storage.compute_returns(last_value, gamma, lam)

    final_values = (storage.final_obs @ weights + 0.25).tolist()
    ref = torch.tensor(naive_gae(rewards.tolist(), values.tolist(), terminated.tolist(), truncated.tolist(),
                                 final_values, last_value.tolist(), gamma, lam))
    torch.testing.assert_close(storage.advantages, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(storage.returns, ref + values, rtol=1e-4, atol=1e-4)
    flat = storage.flat()
    assert flat["advantages"].shape == (T * N,) and flat["obs"].shape == (T * N, *obs_shape)
    torch.testing.assert_close(flat["returns"], storage.returns.flatten())


def test_bootstrap_truncated_without_truncation_changes_nothing():
    storage = pg.RolloutStorage(5, 2, gym.spaces.Box(-1, 1, (3,)), torch.float32, (), torch.int64, CPU)
    storage.rewards.copy_(torch.arange(10.0).view(5, 2))
    storage.train_ends[2, 1] = True  # terminated, not truncated

    def value_fn(x):
        raise AssertionError("no truncated step: the value function must not be called")

    storage.bootstrap_truncated(value_fn, 0.99)
    assert torch.equal(storage.rewards, torch.arange(10.0).view(5, 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lambda_one_is_monte_carlo_bootstrapped_at_rollout_end(seed):
    T, N, gamma = 30, 4, 0.95
    rewards, values, last_value, dones, _ = random_rollout(seed, T, N, 0.12, 0.0, torch.float32)
    storage = pg.RolloutStorage(T, N, gym.spaces.Box(-1, 1, (1,)), torch.float32, (), torch.int64, CPU)
    storage.rewards.copy_(rewards)
    storage.values.copy_(values)
    storage.train_ends.copy_(dones)
    storage.compute_returns(last_value, gamma, 1.0)
    expected = torch.zeros(T, N)
    for i in range(N):
        for t in range(T):
            G, discount, k = 0.0, 1.0, t
            while True:  # discounted sum to the episode's end, or to the rollout's end plus V(last obs)
                G += discount * float(rewards[k, i])
                if dones[k, i]:
                    break
                discount *= gamma
                k += 1
                if k == T:
                    G += discount * float(last_value[i])
                    break
            expected[t, i] = G
    torch.testing.assert_close(storage.returns, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(storage.advantages, expected - values, rtol=1e-5, atol=1e-5)


def test_lambda_zero_is_one_step_td_error():
    T, N, gamma = 15, 3, 0.9
    rewards, values, last_value, dones, _ = random_rollout(7, T, N, 0.2, 0.0)
    adv = pg.compute_gae(rewards, values, dones, last_value, gamma, 0.0)
    next_values = torch.cat([values[1:], last_value[None]])
    torch.testing.assert_close(adv, rewards + gamma * next_values * (~dones) - values)


def test_explained_variance_against_numpy():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(500, generator=g)
    predicted = target + 0.5 * torch.randn(500, generator=g)
    t, p = target.numpy().astype(np.float64), predicted.numpy().astype(np.float64)
    expected = 1 - np.var(t - p, ddof=1) / np.var(t, ddof=1)
    assert float(pg.explained_variance(predicted, target)) == pytest.approx(expected, rel=1e-4)
    assert float(pg.explained_variance(target, target)) == pytest.approx(1.0)
    assert math.isnan(float(pg.explained_variance(predicted[:5], torch.ones(5))))
