"""Advantage Actor-Critic (synchronous A2C).

Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning", in its synchronous
form (the A2C of OpenAI Baselines / Stable-Baselines3): short rollouts from parallel envs, one
gradient step per rollout on the policy-gradient loss with (GAE) advantages, a value loss and
an entropy bonus. RMSprop by default, as in the paper and SB3.

Rollout collection, returns, logging and checkpoints are shared with PPO and REINFORCE (agents/pg.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlbase.agents.pg import ActorCritic, PGConfig, RolloutStorage, pg_agent, train_loop, validate_pg
from rlbase.config import check
from rlbase.envs import TensorVecEnv
from rlbase.optim import Optimizer, gradient_step, make_adam
from rlbase.run import Run


@dataclass
class A2CConfig(PGConfig):
    """A2C hyperparameters (defaults: the Stable-Baselines3 / Baselines values)."""

    # PGConfig's fields with A2C's defaults (documented there, shown by --help).
    num_envs: int = 16
    num_steps: int = 5
    learning_rate: float = 7e-4
    anneal_lr: bool = False
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5

    gae_lambda: float = 1.0
    """GAE lambda (1.0: n-step returns bootstrapped at the rollout's end, the classic A2C target)."""
    optimizer: str = "rmsprop"
    """rmsprop (alpha 0.99, as in the paper and SB3) or adam."""
    rms_alpha: float = 0.99
    """RMSprop smoothing constant."""
    rmsprop_eps: float = 1e-5
    """RMSprop epsilon (--adam-eps is Adam's, used with --optimizer adam)."""
    norm_adv: bool = False
    """Normalise advantages over the rollout."""


def validate(cfg: A2CConfig) -> None:
    validate_pg(cfg)
    check(cfg.optimizer in ("rmsprop", "adam"), "optimizer", f"use rmsprop or adam, got {cfg.optimizer!r}")
    check(0.0 < cfg.rms_alpha < 1.0, "rms_alpha", f"must be in (0, 1), got {cfg.rms_alpha}")
    check(cfg.rmsprop_eps > 0, "rmsprop_eps", f"must be positive, got {cfg.rmsprop_eps}")


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
AGENT = pg_agent("a2c", "Advantage Actor-Critic (synchronous A2C)", A2CConfig, validate, train)
