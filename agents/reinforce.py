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

from typing import Any

from rlbase.agents.a2c import update as a2c_update
from rlbase.agents.pg import pg_agent, train_loop
from rlbase.agents.pg_config import SPECS, ReinforceConfig, validate_reinforce as validate  # noqa: F401 (re-exported)
from rlbase.envs import TensorVecEnv
from rlbase.run import Run


# One gradient step on the whole rollout: -(G - b(s)) log pi(a|s) plus the baseline's regression
# to G. With lambda = 1 the advantages are exactly G_t - V(s_t), so this is A2C's update.
update = a2c_update


def train(cfg: ReinforceConfig, env: TensorVecEnv, run: Run) -> dict[str, Any]:
    """Train REINFORCE on `env`: rollouts and bookkeeping are shared (agents/pg.py `train_loop`, rlbase.run.Run)."""
    return train_loop(cfg, env, run, update)


Config = ReinforceConfig
AGENT = pg_agent(SPECS["reinforce"], train)
