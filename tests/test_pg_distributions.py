"""Policy distributions (agents/distributions.py) against `torch.distributions` (and, for the tanh
squash, against the change of variables computed with autograd), and the actions they hand the env."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, TanhTransform

from rlbase.agents import pg
from rlbase.errors import UsageError


def gaussian_params(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, dim, generator=g)
    log_std = (torch.rand(dim, generator=g) - 0.5).expand(batch, dim)  # state-independent
    return torch.cat([mean, log_std], dim=-1), mean, log_std


def test_make_distribution_types():
    assert isinstance(pg.make_distribution(gym.spaces.Discrete(4)), pg.Categorical)
    assert isinstance(pg.make_distribution(gym.spaces.MultiDiscrete([3, 5, 2])), pg.MultiCategorical)
    box = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)
    assert pg.make_distribution(box, "clip").squash is False
    assert pg.make_distribution(box, "squash").squash is True
    with pytest.raises(UsageError):
        pg.make_distribution(gym.spaces.Tuple([gym.spaces.Discrete(2)]))


def test_categorical_against_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 6, generator=g) * 3
    dist = pg.Categorical(6)
    ref = torch.distributions.Categorical(logits=logits)
    for a in range(6):
        actions = torch.full((64,), a)
        torch.testing.assert_close(dist.log_prob(logits, actions), ref.log_prob(actions))
    torch.testing.assert_close(dist.entropy(logits), ref.entropy())
    assert torch.equal(dist.mode(logits), logits.argmax(-1))
    # Extreme logits stay finite.
    big = torch.tensor([[1000.0, -1000.0, 0.0]])
    assert torch.isfinite(pg.Categorical(3).log_prob(big, torch.tensor([1]))).all()
    assert torch.isfinite(pg.Categorical(3).entropy(big)).all()


def test_categorical_sampling_frequencies():
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0])
    n = 40_000
    dist = pg.Categorical(4)
    samples = dist.sample(logits.expand(n, 4), torch.Generator().manual_seed(1))
    assert samples.shape == (n,) and samples.dtype == torch.int64
    assert int(samples.min()) >= 0 and int(samples.max()) <= 3
    freq = torch.bincount(samples, minlength=4).float() / n
    torch.testing.assert_close(freq, logits.softmax(-1), atol=0.012, rtol=0)
    # The same generator seed gives the same samples.
    again = dist.sample(logits.expand(n, 4), torch.Generator().manual_seed(1))
    assert torch.equal(samples, again)


def test_multi_categorical_against_torch():
    nvec = [3, 5, 2]
    dist = pg.MultiCategorical(np.array(nvec))
    assert dist.num_params == 10 and dist.action_shape == (3,)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(128, 10, generator=g) * 2
    parts = [torch.distributions.Categorical(logits=p) for p in logits.split(nvec, dim=-1)]
    actions = torch.stack([torch.randint(n, (128,), generator=g) for n in nvec], dim=-1)
    expected_logp = sum(p.log_prob(actions[:, i]) for i, p in enumerate(parts))
    torch.testing.assert_close(dist.log_prob(logits, actions), expected_logp)
    torch.testing.assert_close(dist.entropy(logits), sum(p.entropy() for p in parts))
    mode = dist.mode(logits)
    assert mode.shape == (128, 3)
    assert torch.equal(mode, torch.stack([p.argmax(-1) for p in logits.split(nvec, dim=-1)], dim=-1))


def test_multi_categorical_sampling_frequencies():
    nvec = [3, 5, 2]
    dist = pg.MultiCategorical(np.array(nvec))
    logits = torch.tensor([0.5, -1.0, 1.0, 0.0, 2.0, -2.0, 0.3, 1.0, -0.7, 0.9])
    n = 40_000
    samples = dist.sample(logits.expand(n, 10), torch.Generator().manual_seed(3))
    assert samples.shape == (n, 3) and samples.dtype == torch.int64
    for i, (part, k) in enumerate(zip(logits.split(nvec), nvec)):
        column = samples[:, i]
        assert int(column.min()) >= 0 and int(column.max()) < k
        freq = torch.bincount(column, minlength=k).float() / n
        torch.testing.assert_close(freq, part.softmax(-1), atol=0.012, rtol=0)


@pytest.mark.parametrize("dim", [1, 3])
def test_diag_gaussian_clip_against_torch(dim):
    space = gym.spaces.Box(-2.0, 2.0, (dim,), np.float32)
    dist = pg.DiagGaussian(space, squash=False)
    params, mean, log_std = gaussian_params(256, dim, seed=dim)
    ref = Normal(mean, log_std.exp())
    g = torch.Generator().manual_seed(5)
    actions = mean + 3 * torch.randn(256, dim, generator=g)  # many outside the bounds: log-prob of the raw sample
    torch.testing.assert_close(dist.log_prob(params, actions), ref.log_prob(actions).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.entropy(params), ref.entropy().sum(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(dist.mode(params), mean)


def test_diag_gaussian_sampling_moments():
    space = gym.spaces.Box(-5.0, 5.0, (2,), np.float32)
    dist = pg.DiagGaussian(space, squash=False)
    n = 40_000
    mean = torch.tensor([0.5, -1.0])
    log_std = torch.tensor([-0.3, 0.4])
    params = torch.cat([mean, log_std]).expand(n, 4)
    samples = dist.sample(params, torch.Generator().manual_seed(4))
    assert samples.shape == (n, 2) and samples.dtype == torch.float32
    torch.testing.assert_close(samples.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(samples.std(0), log_std.exp(), atol=0, rtol=0.03)


SQUASH_BOUNDS = {
    "pendulum": ([-2.0], [2.0]),
    "unit_asymmetric": ([0.0, 0.0], [1.0, 1.0]),
    "mixed": ([-1.0, 0.0, -3.0], [1.0, 1.0, 5.0]),
}


@pytest.mark.parametrize("bounds", list(SQUASH_BOUNDS), ids=str)
def test_squashed_gaussian_log_prob_is_change_of_variables(bounds):
    low, high = (np.array(b, np.float32) for b in SQUASH_BOUNDS[bounds])
    dim = len(low)
    dist = pg.DiagGaussian(gym.spaces.Box(low, high), squash=True)
    params, mean, log_std = gaussian_params(200, dim, seed=10 + dim)
    g = torch.Generator().manual_seed(6)
    u = (mean + 1.5 * torch.randn(200, dim, generator=g)).double().requires_grad_(True)
    lo, hi = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    action = lo + (torch.tanh(u) + 1.0) / 2.0 * (hi - lo)  # elementwise: the Jacobian is diagonal
    (dadu,) = torch.autograd.grad(action.sum(), u)
    u = u.detach()
    ref = Normal(mean.double(), log_std.exp().double()).log_prob(u).sum(-1) - dadu.abs().log().sum(-1)
    got = dist.log_prob(params, u.float())
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    # The same density as torch's transformed distribution, evaluated at the env action.
    transformed = Independent(TransformedDistribution(
        Normal(mean.double(), log_std.exp().double()),
        [TanhTransform(), AffineTransform(loc=(lo + hi) / 2, scale=(hi - lo) / 2)]), 1)
    moderate = u.abs().max(-1).values < 3.0  # atanh of the action is accurate away from the bounds
    assert moderate.sum() > 50
    torch.testing.assert_close(got.double()[moderate], transformed.log_prob(action.detach())[moderate],
                               rtol=1e-4, atol=1e-4)
    # The entropy is the Gaussian's (documented stand-in) and the mode is the mean of u.
    torch.testing.assert_close(dist.entropy(params), Normal(mean, log_std.exp()).entropy().sum(-1))
    assert torch.equal(dist.mode(params), mean)


def test_squashed_gaussian_log_prob_is_finite_when_saturated():
    dist = pg.DiagGaussian(gym.spaces.Box(-2.0, 2.0, (2,), np.float32), squash=True)
    params = torch.zeros(3, 4)
    u = torch.tensor([[30.0, -30.0], [60.0, 0.0], [-80.0, 15.0]])
    logp = dist.log_prob(params, u)
    assert torch.isfinite(logp).all()
    # log|da/du| ~ log(4) - 2|u| for large |u|: the stable form keeps that asymptote.
    expected = Normal(0.0, 1.0).log_prob(u).sum(-1) - (math.log(2.0) + math.log(4.0) - 2 * u.abs()).sum(-1)
    torch.testing.assert_close(logp[0], expected[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bounds", list(SQUASH_BOUNDS), ids=str)
def test_env_actions_stay_in_bounds(bounds):
    low, high = (np.array(b, np.float32) for b in SQUASH_BOUNDS[bounds])
    space = gym.spaces.Box(low, high)
    dim = len(low)
    g = torch.Generator().manual_seed(8)
    lo, hi = torch.tensor(low), torch.tensor(high)

    clip = pg.DiagGaussian(space, squash=False)
    raw = 4 * torch.randn(5000, dim, generator=g)
    clipped = pg.env_actions(clip, raw, space)
    assert clipped.shape == (5000, dim)
    assert bool(((clipped >= lo) & (clipped <= hi)).all())
    assert torch.equal(clipped, torch.maximum(torch.minimum(raw, hi), lo))
    assert bool((clipped == hi).any() and (clipped == lo).any())  # the test did reach both bounds
    inside = (raw > lo) & (raw < hi)
    assert torch.equal(clipped[inside], raw[inside])  # actions inside pass unchanged

    squash = pg.DiagGaussian(space, squash=True)
    u = torch.randn(5000, dim, generator=g) * 1.5
    squashed = pg.env_actions(squash, u, space)
    assert bool(((squashed > lo) & (squashed < hi)).all()), "squashed actions must be strictly inside"
    torch.testing.assert_close(squashed, lo + (torch.tanh(u) + 1) / 2 * (hi - lo))
    for row in squashed[:50].numpy():
        assert space.contains(row.astype(np.float32))
    # The mode (u = 0) maps to the middle of the box; the map is increasing.
    torch.testing.assert_close(pg.env_actions(squash, torch.zeros(1, dim), space)[0], (lo + hi) / 2)
    ordered = pg.env_actions(squash, torch.linspace(-3, 3, 7)[:, None].expand(7, dim), space)
    assert bool((ordered[1:] > ordered[:-1]).all())
    # Saturated u still lands inside the (closed) box.
    extreme = pg.env_actions(squash, torch.tensor([[50.0] * dim, [-50.0] * dim]), space)
    assert bool(((extreme >= lo) & (extreme <= hi)).all())


def test_env_actions_reshape_box_and_offset_multidiscrete():
    box = gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32)
    dist = pg.make_distribution(box)
    assert dist.action_shape == (4,)
    out = pg.env_actions(dist, torch.randn(5, 4), box)
    assert out.shape == (5, 2, 2)

    md = gym.spaces.MultiDiscrete([3, 5, 2], start=[-1, 0, 2])
    dist = pg.make_distribution(md)
    actions = dist.sample(torch.zeros(100, 10), torch.Generator().manual_seed(0))
    env_a = pg.env_actions(dist, actions, md)
    assert torch.equal(env_a, actions + torch.tensor([-1, 0, 2]))
    assert all(md.contains(row) for row in env_a.numpy())

    discrete = gym.spaces.Discrete(4)
    a = torch.tensor([0, 3, 1])
    assert torch.equal(pg.env_actions(pg.make_distribution(discrete), a, discrete), a)
