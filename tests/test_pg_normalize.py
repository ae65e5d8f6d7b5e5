"""Running mean/std and observation/reward normalisation of the policy-gradient agents
(agents/rollout.py) against NumPy over everything seen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlbase.agents import pg

CPU = torch.device("cpu")


PRIOR_COUNT = 1e-4  # RunningMeanStd starts as VecNormalize's does: mean 0, var 1, count 1e-4


def moments_with_prior(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of `x` (over axis 0) pooled with the pseudo-sample (mean 0, var 1, count 1e-4)."""
    x = x.astype(np.float64)
    n = len(x)
    mean = x.sum(0) / (n + PRIOR_COUNT)
    var = (((x - mean) ** 2).sum(0) + PRIOR_COUNT * (1.0 + mean ** 2)) / (n + PRIOR_COUNT)
    return mean, var


@pytest.mark.parametrize("shape", [(3,), ()])
def test_running_mean_std_against_numpy(shape):
    rng = np.random.default_rng(0)
    rms = pg.RunningMeanStd(shape, CPU)
    seen = []
    for size, loc, scale in [(1, 0.0, 1.0), (7, 5.0, 2.0), (50, -3.0, 0.5), (200, 1.0, 10.0), (3, 2.0, 1.0)]:
        batch = rng.normal(loc, scale, (size, *shape))
        rms.update(torch.from_numpy(batch).float())
        seen.append(batch.astype(np.float32))
        everything = np.concatenate(seen)
        if len(everything) > 1:  # plain NumPy (the 1e-4 prior count shifts it by ~1e-4 relative) ...
            np.testing.assert_allclose(rms.mean.numpy(), everything.mean(0), rtol=2e-4, atol=1e-6)
            np.testing.assert_allclose(rms.var.numpy(), everything.var(0), rtol=2e-4, atol=1e-6)
        # ... and exactly, once the prior pseudo-sample is pooled in.
        mean, var = moments_with_prior(everything)
        np.testing.assert_allclose(rms.mean.numpy(), mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(rms.var.numpy(), var, rtol=1e-9, atol=1e-12)
        assert float(rms.count) == pytest.approx(len(everything) + PRIOR_COUNT, rel=1e-12)
    assert rms.mean.dtype == torch.float64
    # State round trip.
    other = pg.RunningMeanStd(shape, CPU)
    other.load(rms.state("x"), "x")
    assert torch.equal(other.mean, rms.mean) and torch.equal(other.var, rms.var) and torch.equal(other.count, rms.count)


def test_normalizer_observations_against_numpy():
    cfg = pg.PGConfig(env_id="x", normalize_obs=True, clip_obs=2.0)
    norm = pg.Normalizer(cfg, (3,), 4, CPU)
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(6):
        obs = rng.normal([10.0, -2.0, 0.0], [5.0, 0.1, 1.0], (4, 3)).astype(np.float32)
        seen.append(obs)
        out = norm.observation(torch.from_numpy(obs))
        mean, var = moments_with_prior(np.concatenate(seen))  # updated with this batch, then applied to it
        expected = np.clip((obs - mean) / np.sqrt(var + 1e-8), -2.0, 2.0)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert float(out.abs().max()) <= 2.0
    before = norm.obs.mean.clone()
    norm.observation(torch.full((4, 3), 100.0), update=False)
    norm.training = False
    norm.observation(torch.full((4, 3), 100.0))
    assert torch.equal(norm.obs.mean, before)
    # Off: the identity.
    off = pg.Normalizer(pg.PGConfig(env_id="x"), (3,), 4, CPU)
    x = torch.randn(4, 3)
    assert off.observation(x) is x and off.state() == {}


def test_normalizer_rewards_scale_by_discounted_return_std():
    gamma = 0.9
    cfg = pg.PGConfig(env_id="x", normalize_reward=True, gamma=gamma, clip_reward=3.0)
    N = 3
    norm = pg.Normalizer(cfg, (2,), N, CPU)
    rng = np.random.default_rng(2)
    ret = np.zeros(N)
    history = []
    for _ in range(40):
        rewards = rng.normal(1.0, 2.0, N).astype(np.float32)
        dones = rng.random(N) < 0.2
        ret = ret * gamma + rewards
        history.append(ret.copy())
        _, var = moments_with_prior(np.concatenate(history))
        expected = np.clip(rewards / np.sqrt(var + 1e-8), -3.0, 3.0)
        out = norm.reward(torch.from_numpy(rewards), torch.from_numpy(dones))
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
        ret[dones] = 0.0
    assert set(norm.state()) == {"ret_rms.mean", "ret_rms.var", "ret_rms.count"}
