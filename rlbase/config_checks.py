"""The config checks several agents share (rlbase.config keeps `check` and the checks of every
config, `validate_common`); free of torch, as agents/dqn_config.py explains."""

from __future__ import annotations

from typing import Any

from rlbase.config import check


def validate_learner(cfg: Any) -> None:
    """The fields every agent's optimiser reads (learning_rate, lr_restart_step, adam_eps, gamma,
    max_grad_norm): one check each, shared by agents/*_config.py."""
    check(cfg.learning_rate > 0, "learning_rate", f"must be positive, got {cfg.learning_rate}")
    check(cfg.lr_restart_step >= 0, "lr_restart_step", f"must be >= 0, got {cfg.lr_restart_step}")
    check(cfg.adam_eps > 0, "adam_eps", f"must be positive, got {cfg.adam_eps}")
    check(0.0 <= cfg.gamma <= 1.0, "gamma", f"must be in [0, 1], got {cfg.gamma}")
    check(cfg.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {cfg.max_grad_norm}")


def validate_epsilon_greedy(cfg: Any) -> None:
    """The exploration schedule of the Q-learners (exploration_fraction, the initial and final epsilon)."""
    check(0.0 <= cfg.exploration_fraction <= 1.0, "exploration_fraction",
          f"must be in [0, 1], got {cfg.exploration_fraction}")
    for name in ("exploration_initial_eps", "exploration_final_eps"):
        value = getattr(cfg, name)
        check(0.0 <= value <= 1.0, name, f"epsilon must be in [0, 1], got {value}")


def validate_minibatches(cfg: Any) -> None:
    """Rollout and epoch sizes of the agents that take minibatch epochs over each rollout (PPO, PQN)."""
    check(cfg.num_steps > 0, "num_steps", f"must be positive, got {cfg.num_steps}")
    check(cfg.update_epochs > 0, "update_epochs", f"must be positive, got {cfg.update_epochs}")
    check(cfg.num_minibatches > 0, "num_minibatches", f"must be positive, got {cfg.num_minibatches}")
    check(cfg.num_steps * cfg.num_envs >= cfg.num_minibatches, "num_minibatches",
          f"must be at most num_steps * num_envs = {cfg.num_steps * cfg.num_envs}, got {cfg.num_minibatches}")
