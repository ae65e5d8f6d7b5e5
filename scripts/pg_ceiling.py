"""The learner's compute ceiling on Breakout: the `--sections ceiling` part of scripts/bench_pg.py
(worker, jobs, table).

A plain NatureCNN written here with shared policy/value heads, forward + PPO loss + backward +
Adam step on random uint8 minibatches of the PPO minibatch size (256), samples/s from the fastest
of 5 timing windows, same thread count. Two variants: "plain" (default memory format, default
Adam, as a user would write it; the issue's reference) and "rlbase-style" (channels_last, fused
Adam, as rlbase runs); the ceiling is the faster of the two, so rlbase is not flattered by a slow
reference.
Ceiling definitions (both printed):
  learner ceiling (the issue's):  steps/s = samples/s / update_epochs
                                  (every transition is learned from update_epochs times);
  learner + acting ceiling:       1 / (update_epochs / samples/s + 1 / acting samples/s),
                                  acting = one no-grad forward per transition at batch num_envs.
Env stepping, gradient clipping and the minibatch gather are in neither ceiling.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from benchlib import (BREAKOUT, CEILING_WINDOWS, config_from_dict, fastest_rate, fmt_rate, nature_cnn_actor_critic,
                      preset_config, print_table, register_ale, set_threads)


def work_ceiling(job: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of NatureCNN actor-critic forward + PPO loss + backward + Adam at the minibatch size,
    and of the acting forward (no grad) at batch num_envs."""
    import gymnasium as gym
    import torch

    began = time.perf_counter()
    threads = set_threads(job)
    torch.manual_seed(0)
    cfg = config_from_dict("ppo", job["config"])
    rlbase_style = job["variant"] == "rlbase-style"
    register_ale()
    probe = gym.make(cfg.env_id)
    num_actions = int(probe.action_space.n)
    probe.close()
    batch, n_act = cfg.num_steps * cfg.num_envs // cfg.num_minibatches, cfg.num_envs  # a PPO minibatch; acting
    net = nature_cnn_actor_critic(cfg.frame_stack, num_actions)
    if rlbase_style:
        net = net.to(memory_format=torch.channels_last)
        net.channels_last = True
    optimizer = None
    if rlbase_style:
        try:
            optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
        except (RuntimeError, TypeError):
            optimizer = None
    fused = optimizer is not None
    if optimizer is None:
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    frames = (cfg.frame_stack, 84, 84)
    pool = [torch.randint(0, 256, (batch, *frames), dtype=torch.uint8) for _ in range(4)]
    act_pool = [torch.randint(0, 256, (n_act, *frames), dtype=torch.uint8) for _ in range(4)]
    actions = torch.randint(num_actions, (batch,))
    old_logprobs = torch.full((batch,), -math.log(num_actions)) + 0.01 * torch.randn(batch)
    advantages, returns, old_values = torch.randn(batch), torch.randn(batch), torch.randn(batch)
    clip = cfg.clip_coef

    def update(i: int) -> None:
        logits, values = net(pool[i % len(pool)])
        logp_all = logits.log_softmax(-1)
        logp = logp_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        ratio = (logp - old_logprobs).exp()
        adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        v_loss = 0.5 * torch.max((values - returns).pow(2), (clipped - returns).pow(2)).mean()
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def act(i: int) -> None:
        logits, _ = net(act_pool[i % len(act_pool)])
        logits.argmax(-1)

    learn_rate, learn_mean, iters, _ = fastest_rate(update, batch, job["seconds"])
    act_rate, act_mean, _, _ = fastest_rate(act, n_act, job["seconds"] / 2)
    return {"batch": batch, "act_batch": n_act, "iters": iters, "samples_per_s": learn_rate,
            "samples_per_s_mean": learn_mean, "act_samples_per_s": act_rate, "act_samples_per_s_mean": act_mean,
            "fused_adam": fused, "channels_last": rlbase_style, "wall_s": time.perf_counter() - began,
            "threads": threads}


def ceiling_jobs(args, common: dict[str, Any]) -> list[dict[str, Any]]:
    """One job per variant, plain and rlbase-style, on the Breakout preset."""
    jobs: list[dict[str, Any]] = []
    cfg = dataclasses.asdict(preset_config("ppo", BREAKOUT, {}))
    for variant in ("plain", "rlbase-style"):
        jobs.append({**common, "kind": "ceiling", "section": "ceiling", "env_id": BREAKOUT, "variant": variant,
                     "seconds": args.ceiling_seconds, "config": cfg, "label": f"compute ceiling ({variant})"})
    return jobs


def ceiling_table(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the ceiling table; return the ceiling runs by variant, with their ceilings in steps/s."""
    ceiling: dict[str, Any] = {}
    rows = []
    for r in results:
        if r["section"] == "ceiling":
            epochs = r["config"]["update_epochs"]
            r["ceiling_steps_per_s"] = r["samples_per_s"] / epochs
            r["ceiling_acting_steps_per_s"] = 1.0 / (epochs / r["samples_per_s"] + 1.0 / r["act_samples_per_s"])
            ceiling[r["variant"]] = r
            how = ("channels_last, fused Adam" if r["channels_last"] and r["fused_adam"] else
                   "channels_last, default Adam" if r["channels_last"] else "default format, default Adam")
            rows.append([r["variant"], how, str(r["batch"]), fmt_rate(r["samples_per_s"]), str(epochs),
                         fmt_rate(r["ceiling_steps_per_s"]), f"{fmt_rate(r['act_samples_per_s'])} @{r['act_batch']}",
                         fmt_rate(r["ceiling_acting_steps_per_s"])])
    if rows:
        print(f"Learner compute ceiling, {BREAKOUT}: NatureCNN actor-critic fwd + PPO loss + bwd + Adam on random "
              f"minibatches (fastest of {CEILING_WINDOWS} windows)")
        print_table(["variant", "implementation", "batch", "samples/s", "epochs", "ceiling steps/s",
                     "acting fwd samples/s", "ceiling incl. acting"], rows)
    return ceiling
