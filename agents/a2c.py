"""Advantage Actor-Critic (synchronous A2C).

Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning", in its synchronous
form (the A2C of OpenAI Baselines / Stable-Baselines3): short rollouts from parallel envs, one
gradient step per rollout on the policy-gradient loss with (GAE) advantages, a value loss and
an entropy bonus. RMSprop by default, as in the paper and SB3.

Rollout collection, returns, logging and checkpoints are shared with PPO and REINFORCE (agents/pg.py).
"""

from __future__ import annotations

from typing import Any

import torch

from rlbase.agents.pg import ActorCritic, RolloutStorage, pg_agent, train_loop
from rlbase.agents.pg_config import SPECS, A2CConfig, validate_a2c as validate  # noqa: F401 (re-exported)
from rlbase.envs import TensorVecEnv
from rlbase.optim import Optimizer, gradient_step, make_adam
from rlbase.run import Run


def make_optimizer(cfg: A2CConfig, groups: list[dict]) -> Optimizer:
    if cfg.optimizer == "adam":
        return make_adam(groups, cfg.learning_rate, cfg.adam_eps)
    return torch.optim.RMSprop(groups, lr=cfg.learning_rate, alpha=cfg.rms_alpha, eps=cfg.rmsprop_eps)


def a2c_loss(cfg: A2CConfig, model: ActorCritic, dist: Any, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    params, values = model(data["obs"])
    logprobs = dist.log_prob(params, data["actions"])
    entropy = dist.entropy(params).mean()
    advantages = data["advantages"]
    if cfg.norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = -(advantages * logprobs).mean()
    v_loss = 0.5 * (data["returns"] - values).pow(2).mean()
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    return loss, {"pg": pg_loss.detach(), "v": v_loss.detach(), "ent": entropy.detach()}


def update(cfg: A2CConfig, model: ActorCritic, optimizer: Optimizer, storage: RolloutStorage,
           dist: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One gradient step on the whole rollout."""
    loss, stats = a2c_loss(cfg, model, dist, storage.flat())
    gradient_step(optimizer, loss, cfg.max_grad_norm)
    return {"train/policy_gradient_loss": stats["pg"], "train/value_loss": stats["v"],
            "train/entropy_loss": -stats["ent"], "num_updates": 1}


def train(cfg: A2CConfig, env: TensorVecEnv, run: Run) -> dict[str, Any]:
    """Train A2C on `env`: rollouts and bookkeeping are shared (agents/pg.py `train_loop`, rlbase.run.Run)."""
    return train_loop(cfg, env, run, update, make_optimizer=make_optimizer)


Config = A2CConfig
AGENT = pg_agent(SPECS["a2c"], train)
