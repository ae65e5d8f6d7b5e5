"""Policy-gradient agents (PPO, A2C, REINFORCE): what is checked and built before a run starts.

- the actor-critic network: shapes, separate or shared backbones, orthogonal init (MLP and the
  Atari NatureCNN);
- config validation (each bad value names its flag), A2C's optimizers, and the action spaces
  `check_env` accepts or refuses.

Runs: test_pg_smoke.py and test_pg_runs.py. The shared pieces have their own files:
test_pg_distributions.py, test_pg_rollout.py (GAE) and test_pg_normalize.py.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase import transfer
from rlbase.agents import a2c, pg, ppo
from rlbase.backbones import MLP, NatureCNN
from rlbase.errors import UsageError

from tests.pghelpers import ALGOS


# ============================================================================ network
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)],
                         ids=["discrete", "box"])
def test_actor_critic_shapes_and_init(shared, action_space):
    obs_space = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
    obs = torch.randn(7, 5)
    cfg = ppo.PPOConfig(env_id="x", hidden_sizes=(16, 16), shared_backbone=shared, log_std_init=-0.5)
    dist = pg.make_distribution(action_space)
    torch.manual_seed(0)
    model = pg.ActorCritic(cfg, transfer.parse(cfg, obs_space), obs_space, dist)  # ortho_init is the default
    assert isinstance(model.actor_backbone, MLP)
    assert (model.critic_backbone is None) == shared
    params, value = model(obs)
    gaussian = isinstance(dist, pg.DiagGaussian)
    assert params.shape == (7, dist.num_params * (2 if gaussian else 1))
    assert value.shape == (7,)
    torch.testing.assert_close(model.value(obs), value)
    if gaussian:
        assert torch.equal(params[:, 2:], torch.full((7, 2), -0.5))
    else:
        assert model.log_std is None
    # Orthogonal init: policy head scaled by 0.01 (near-uniform initial policy), zero biases.
    assert float(model.policy_head.weight.detach().abs().max()) < 0.05
    assert float(model.policy_head.bias.detach().abs().max()) == 0.0
    # Orthogonal hidden layers: W W^T = gain^2 I (rows <= columns here: 16 x 5 has orthonormal columns).
    w = model.actor_backbone.net[2].weight.detach()  # 16 x 16
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(16), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shared", [True, False])
def test_actor_critic_nature_cnn_with_orthogonal_init(shared):
    """The Atari network with the default orthogonal init (the presets' configuration)."""
    obs_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    cfg = ppo.PPOConfig(env_id="ALE/Breakout-v5", shared_backbone=shared)
    model = pg.ActorCritic(cfg, transfer.parse(cfg, obs_space), obs_space, pg.Categorical(4))
    assert isinstance(model.actor_backbone, NatureCNN)
    params, value = model(torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8))
    assert params.shape == (3, 4) and value.shape == (3,)
    conv = model.actor_backbone.convs[0].weight.detach().reshape(32, -1)  # 32 x 256: orthonormal rows times sqrt(2)
    torch.testing.assert_close(conv @ conv.T, 2.0 * torch.eye(32), atol=1e-4, rtol=0)


# ============================================================================ config checks
@pytest.mark.parametrize("algo,field,value", [
    ("ppo", "num_minibatches", 0), ("ppo", "update_epochs", 0), ("ppo", "clip_coef", 0.0),
    ("ppo", "num_minibatches", 10_000), ("ppo", "target_kl", -1.0), ("ppo", "action_bounds", "bogus"),
    ("ppo", "gae_lambda", 1.5), ("ppo", "gamma", -0.1), ("ppo", "num_steps", 0), ("ppo", "learning_rate", 0.0),
    ("a2c", "optimizer", "sgd"), ("a2c", "rms_alpha", 1.0), ("reinforce", "gae_lambda", 0.9),
    ("reinforce", "clip_obs", 0.0), ("a2c", "total_timesteps", 0),
])
def test_validate_rejects(algo, field, value):
    module = ALGOS[algo]
    cfg = module.Config(**{"env_id": "CartPole-v1", "num_envs": 2, "num_steps": 8, field: value})
    with pytest.raises(UsageError, match="--" + field.replace("_", "-")):
        module.validate(cfg)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_validate_accepts_defaults(algo):
    ALGOS[algo].validate(ALGOS[algo].Config(env_id="CartPole-v1"))


def test_a2c_optimizers_take_their_own_eps():
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    cfg = a2c.A2CConfig(env_id="CartPole-v1", adam_eps=1e-3, rmsprop_eps=1e-4)
    rmsprop = a2c.make_optimizer(cfg, params)
    assert isinstance(rmsprop, torch.optim.RMSprop) and rmsprop.defaults["eps"] == 1e-4
    adam = a2c.make_optimizer(dataclasses.replace(cfg, optimizer="adam"), params)
    assert adam.defaults["eps"] == 1e-3
    assert a2c.A2CConfig.rmsprop_eps == pg.PGConfig.adam_eps  # the default RMSprop ran with before it had its own field


class _FakeEnv:
    def __init__(self, action_space):
        self.single_action_space = action_space
        self.single_observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize("space,ok", [
    (gym.spaces.Discrete(2), True), (gym.spaces.MultiDiscrete([2, 3]), True),
    (gym.spaces.Box(-1.0, 1.0, (2,), np.float32), True),
    (gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), False),
    (gym.spaces.Box(np.array([-1.0, -np.inf], np.float32), np.array([1.0, 1.0], np.float32)), False),
    (gym.spaces.Tuple([gym.spaces.Discrete(2), gym.spaces.Discrete(2)]), False),
    (gym.spaces.MultiBinary(3), False),
], ids=lambda x: type(x).__name__ if isinstance(x, gym.spaces.Space) else str(x))
def test_check_env(space, ok):
    cfg = ppo.PPOConfig(env_id="Some-v0")
    if ok:
        ppo.AGENT.check_env(cfg, _FakeEnv(space))
    else:
        with pytest.raises(UsageError, match="Some-v0"):
            ppo.AGENT.check_env(cfg, _FakeEnv(space))
