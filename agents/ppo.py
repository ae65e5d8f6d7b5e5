"""Proximal Policy Optimization.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms": the clipped surrogate objective
over several epochs of minibatches per rollout, with GAE(lambda) advantages (Schulman et al.
2016), advantage normalisation per minibatch, an entropy bonus, optional value-loss clipping,
gradient-norm clipping, learning-rate annealing and an optional target-KL early stop. The
implementation details follow "The 37 Implementation Details of PPO" (Huang et al. 2022).

Rollout collection, returns, logging and checkpoints are shared with A2C and REINFORCE (agents/pg.py).
"""

from __future__ import annotations

from typing import Any

import torch

from rlbase.agents.pg import ActorCritic, RolloutStorage, pg_agent, train_loop
from rlbase.agents.pg_config import SPECS, PPOConfig, validate_ppo as validate  # noqa: F401 (re-exported)
from rlbase.envs import TensorVecEnv
from rlbase.obs import take
from rlbase.optim import gradient_step
from rlbase.run import Run


STATS = ("pg", "v", "ent", "kl", "clip")
"""The diagnostics `ppo_loss` returns, in order."""


def ppo_loss(cfg: PPOConfig, model: ActorCritic, dist: Any, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO loss on one minibatch, and its diagnostics: a detached (5,) tensor on the device,
    in the order of `STATS` (one stacked tensor keeps the per-minibatch bookkeeping to one op)."""
    params, values = model(mb["obs"])
    logprobs = dist.log_prob(params, mb["actions"])
    entropy = dist.entropy(params).mean()
    log_ratio = logprobs - mb["logprobs"]
    ratio = log_ratio.exp()

    advantages = mb["advantages"]
    if cfg.norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    # Clipped surrogate: the pessimistic of the unclipped and clipped objectives (as a loss: the max).
    pg_loss = torch.max(-advantages * ratio,
                        -advantages * ratio.clamp(1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef)).mean()

    if cfg.clip_vloss:
        clipped = mb["values"] + (values - mb["values"]).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((values - mb["returns"]).pow(2), (clipped - mb["returns"]).pow(2)).mean()
    else:
        v_loss = 0.5 * (values - mb["returns"]).pow(2).mean()

    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    with torch.no_grad():
        stats = torch.stack([pg_loss, v_loss, entropy,
                             # http://joschu.net/blog/kl-approx.html: unbiased, low-variance estimator of KL(old || new)
                             ((ratio - 1) - log_ratio).mean(),
                             ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()])
    return loss, stats


def update(cfg: PPOConfig, model: ActorCritic, optimizer: Any, storage: RolloutStorage,
           dist: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`update_epochs` passes of minibatch steps over the rollout; returns the SB3 train/* tags."""
    data = storage.flat()
    batch = data["advantages"].shape[0]
    mb_size = batch // cfg.num_minibatches
    device = data["advantages"].device
    rows: list[torch.Tensor] = []
    for _ in range(cfg.update_epochs):
        # One gather per tensor per epoch; the minibatches are then contiguous slices (views).
        order = torch.randperm(batch, device=device, generator=generator)
        shuffled = {k: take(v, order) for k, v in data.items()}
        for start in range(0, mb_size * cfg.num_minibatches, mb_size):
            loss, stats = ppo_loss(cfg, model, dist, {k: take(v, slice(start, start + mb_size)) for k, v in shuffled.items()})
            gradient_step(optimizer, loss, cfg.max_grad_norm)
            rows.append(stats)
        # The one host sync of an update, and only when early stopping is on.
        if cfg.target_kl > 0:
            epoch_kl = float(torch.stack(rows[-cfg.num_minibatches:])[:, STATS.index("kl")].mean())
            if epoch_kl > cfg.target_kl:
                break
    pg, v, ent, kl, clip = torch.stack(rows).mean(0)
    return {"train/policy_gradient_loss": pg, "train/value_loss": v, "train/entropy_loss": -ent,
            "train/approx_kl": kl, "train/clip_fraction": clip, "train/clip_range": torch.tensor(cfg.clip_coef),
            "num_updates": len(rows)}


def train(cfg: PPOConfig, env: TensorVecEnv, run: Run) -> dict[str, Any]:
    """Train PPO on `env`: rollouts and bookkeeping are shared (agents/pg.py `train_loop`, rlbase.run.Run)."""
    return train_loop(cfg, env, run, update)


Config = PPOConfig
AGENT = pg_agent(SPECS["ppo"], train)
