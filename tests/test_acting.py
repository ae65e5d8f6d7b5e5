"""`Agent.acting_net`: a checkpoint's greedy acting path as one module gives the same actions as
the evaluation policy (`load_policy`, deterministic / epsilon 0), on Box, Discrete, MultiDiscrete
and Dict observations, with frozen observation normalisation and clipped or squashed Box actions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlbase.agents import get_agent
from rlbase.config import make_env
from rlbase.lifecycle import plan, execute

CPU = torch.device("cpu")

CASES = [
    ("dqn", "rlbase/CartPole-v1", {"learning_starts": 64}, "q"),
    ("ppo", "rlbase/CartPole-v1", {"normalize_obs": True}, "categorical"),
    ("ppo", "rlbase/Pendulum-v1", {"normalize_obs": True}, "gaussian"),
    ("ppo", "rlbase/Pendulum-v1", {"action_bounds": "squash"}, "gaussian"),
    ("a2c", "rlbase/Maze-v0", {"env_kwargs": {"size": 7}}, "categorical"),
    ("ppo", "rlbase/MazeGoTo-v0", {"env_kwargs": {"size": 7}}, "categorical"),
]


@pytest.mark.parametrize("algo, env_id, extra, kind", CASES, ids=lambda x: x if isinstance(x, str) else "")
def test_acting_net_acts_as_the_evaluation_policy(algo, env_id, extra, kind):
    values = {"env_id": env_id, "total_timesteps": 512, "num_envs": 4, "seed": 1, "device": "cpu", **extra}
    if algo != "dqn":
        values["num_steps"] = 32
    p = plan(algo, values)
    try:
        metrics = execute(p, run_dir=None, progress=False)
    finally:
        p.close()
    agent = get_agent(algo)
    cfg = dataclasses.replace(p.config, **({"eval_epsilon": 0.0} if algo == "dqn" else {"eval_deterministic": True}))
    tensors = metrics["checkpoint"].tensors
    env = make_env(cfg, 16, CPU, training=False)
    try:
        net = agent.acting_net(cfg, tensors, env.single_observation_space, env.single_action_space, CPU)
        policy = agent.load_policy(cfg, tensors, env.single_observation_space, env.single_action_space, CPU)
        assert net.kind == kind
        obs, _ = env.reset(seed=3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(20):
            with torch.no_grad():
                outputs, actions = net(obs)
            expected = policy(obs, generator)
            assert outputs.shape[0] == 16 and torch.isfinite(outputs).all()
            assert actions.shape == expected.shape and actions.dtype == expected.dtype
            assert torch.allclose(actions.float(), expected.float(), atol=1e-6)
            obs, *_ = env.step(expected)
    finally:
        env.close()
