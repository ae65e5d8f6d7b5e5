"""The probes of scripts/bench_dqn.py besides training: raw env speed with random actions, and the
learner's compute ceiling (a bare network's forward + backward + Adam on random batches). Each is a
worker: a job dict in, what it measured out (see bench_dqn's docstring, points 2 and 3)."""

from __future__ import annotations

import math
import time
from typing import Any

from benchlib import (ale_vec_env, config_from_dict, fastest_rate, gymnasium_vec_env, mlp, nature_cnn, register_ale,
                      rlbase_vec_env, sb3_vec_env, set_threads)


def work_env(job: dict[str, Any]) -> dict[str, Any]:
    """Random-action env steps/s of one implementation."""
    import numpy as np

    threads = set_threads(job)
    cfg = config_from_dict("dqn", job["config"])
    impl, n = job["impl"], job["num_envs"]
    rng = np.random.default_rng(0)
    if impl == "rlbase":
        import torch

        env = rlbase_vec_env(cfg, num_envs=n)
        gen = torch.Generator().manual_seed(0)

        def draw(num_actions: int):
            return torch.randint(num_actions, (n,), generator=gen)
    elif impl in ("gymnasium", "ale_py", "sb3"):
        env = {"gymnasium": gymnasium_vec_env, "ale_py": ale_vec_env, "sb3": sb3_vec_env}[impl](cfg, n)

        def draw(num_actions: int):
            return rng.integers(num_actions, size=n)
    else:
        raise ValueError(f"unknown env implementation {impl!r}")
    if impl == "sb3":  # SB3's VecEnv API: seeded at creation, `action_space` is one env's
        env.reset()
        num_actions = int(env.action_space.n)
    else:
        env.reset(seed=0)
        num_actions = int(env.single_action_space.n)

    def step():
        env.step(draw(num_actions))

    for _ in range(20):  # warm-up, untimed
        step()
    vec_steps = max(1, job["steps"] // n)
    start = time.perf_counter()
    for _ in range(vec_steps):
        step()
    wall = time.perf_counter() - start
    env.close()
    return {"steps": vec_steps * n, "wall_s": wall, "threads": threads}


def work_ceiling(job: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of forward + backward + Adam on random batches (optionally + a target forward)."""
    import copy

    import gymnasium as gym
    import torch
    import torch.nn.functional as F

    threads = set_threads(job)
    torch.manual_seed(0)
    cfg = config_from_dict("dqn", job["config"])
    batch = cfg.batch_size
    atari = cfg.env_id.startswith("ALE/")
    if atari:
        register_ale()
    probe = gym.make(cfg.env_id)
    num_actions = int(probe.action_space.n)
    obs_shape = probe.observation_space.shape
    probe.close()
    if atari:
        net = nature_cnn(cfg.frame_stack, num_actions)
        pool = [torch.randint(0, 256, (batch, cfg.frame_stack, 84, 84), dtype=torch.uint8) for _ in range(8)]

        def prep(x):
            return x.float() / 255.0
    else:
        net = mlp(int(math.prod(obs_shape)), cfg.hidden_sizes, num_actions)
        pool = [torch.randn(batch, *obs_shape) for _ in range(8)]

        def prep(x):
            return x
    target = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    actions = torch.randint(num_actions, (batch, 1))
    fixed_targets = torch.randn(batch, 1)
    with_target = job["with_target"]

    def update(i: int) -> None:
        obs = prep(pool[i % len(pool)])
        if with_target:
            with torch.no_grad():
                next_q = target(prep(pool[(i + 1) % len(pool)])).max(dim=1, keepdim=True).values
            td_target = 0.99 * next_q
        else:
            td_target = fixed_targets
        q = net(obs).gather(1, actions)
        loss = F.smooth_l1_loss(q, td_target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    best, mean, iters, total_wall = fastest_rate(update, batch, job["seconds"])
    return {"iters": iters, "batch": batch, "wall_s": total_wall, "samples_per_s": best,
            "samples_per_s_mean": mean, "threads": threads}
