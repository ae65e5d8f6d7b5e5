"""Shared pieces of the policy-gradient tests (test_pg_config.py, test_pg_smoke.py, test_pg_runs.py):
tiny configs, training one in memory, and the step and update counts it must reach."""

from __future__ import annotations

import math

import torch

from rlbase.agents import a2c, ppo, reinforce
from rlbase.lifecycle import train_config

CPU = torch.device("cpu")
ALGOS = {"ppo": ppo, "a2c": a2c, "reinforce": reinforce}


def tiny(algo: str, env_id: str, **overrides):
    values = dict(env_id=env_id, total_timesteps=256, num_envs=4, num_steps=16, hidden_sizes=(32, 32),
                  seed=0, device="cpu")
    if algo == "ppo":
        values.update(update_epochs=2, num_minibatches=2)
    values.update(overrides)
    return ALGOS[algo].Config(**values)


def run_train(algo: str, cfg) -> dict:
    """Train in memory through the run lifecycle (which checks the env first)."""
    assert isinstance(cfg, ALGOS[algo].Config)
    return train_config(cfg)


def expected_counts(algo: str, cfg) -> tuple[int, int]:
    """(global_step, num_updates): whole rollouts until total_timesteps is reached."""
    batch = cfg.num_steps * cfg.num_envs
    rollouts = math.ceil(cfg.total_timesteps / batch)
    per_rollout = cfg.update_epochs * cfg.num_minibatches if algo == "ppo" else 1
    return rollouts * batch, rollouts * per_rollout
