"""REINFORCE with a learned baseline.

Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning"; the baseline as in Sutton & Barto (2018), section 13.4. The policy
gradient weights log pi(a|s) by the Monte Carlo return minus a learned state value; the value
function is fit to the same returns.

Returns are the discounted sum of rewards to the end of the episode. A rollout that stops in the
middle of an episode bootstraps the remainder from the value estimate (GAE with lambda = 1),
so long episodes need not fit in one rollout; set --num-steps at least the episode length for
the pure Monte Carlo estimator. One gradient step per rollout, as in the original algorithm.

Rollout collection, returns, logging and checkpoints are shared with PPO and A2C (agents/pg.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlbase.agents.a2c import update as a2c_update
from rlbase.agents.pg import PGConfig, pg_agent, train_loop, validate_pg
from rlbase.config import check
from rlbase.envs import TensorVecEnv
from rlbase.run import Run


@dataclass
class ReinforceConfig(PGConfig):
    """REINFORCE hyperparameters."""

    # PGConfig's fields with REINFORCE's defaults (documented there, shown by --help).
    num_envs: int = 8
    num_steps: int = 500
    learning_rate: float = 1e-3
    anneal_lr: bool = False
    ent_coef: float = 0.0

    gae_lambda: float = 1.0
    """Must stay 1.0: REINFORCE uses Monte Carlo returns (bootstrapped only at the rollout's end)."""
    norm_adv: bool = True
    """Normalise the return-minus-baseline weights over the rollout (reduces variance)."""


def validate(cfg: ReinforceConfig) -> None:
    validate_pg(cfg)
    check(cfg.gae_lambda == 1.0, "gae_lambda", "REINFORCE uses Monte Carlo returns; use a2c or ppo for lambda < 1")


# One gradient step on the whole rollout: -(G - b(s)) log pi(a|s) plus the baseline's regression
# to G. With lambda = 1 the advantages are exactly G_t - V(s_t), so this is A2C's update.
update = a2c_update


def train(cfg: ReinforceConfig, env: TensorVecEnv, run: Run) -> dict[str, Any]:
    """Train REINFORCE on `env`: rollouts and bookkeeping are shared (agents/pg.py `train_loop`, rlbase.run.Run)."""
    return train_loop(cfg, env, run, update)


Config = ReinforceConfig
AGENT = pg_agent("reinforce", "REINFORCE with a learned baseline", ReinforceConfig, validate, train)
