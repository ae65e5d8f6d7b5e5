"""Learning test: DQN with its CartPole-v1 preset solves the task.

Slow (minutes per seed). CI runs the `ci_slow` tier (`-m "not slow or ci_slow"`): seed 0 only.
"""

from __future__ import annotations

import pytest

from rlbase.agents.dqn import DQNConfig, train
from rlbase.config import resolve_config, to_json
from rlbase.envs import make_vec_env
from rlbase.evaluate import evaluate
from rlbase.logger import RunLogger
from rlbase.run import Run, write_config
from rlbase.utils import resolve_device

SOLVED = 475.0  # CartPole-v1's reward threshold (episodes are capped at 500)
EVAL_EPISODES = 20


@pytest.mark.slow
@pytest.mark.parametrize("seed", [pytest.param(0, marks=pytest.mark.ci_slow), 1, 2])
def test_dqn_solves_cartpole(tmp_path, seed):
    import json

    cfg = resolve_config(DQNConfig, "dqn", {"env_id": "CartPole-v1", "seed": seed, "log_dir": str(tmp_path)})
    device = resolve_device(cfg.device)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config(run_dir, "dqn", cfg)
    logger = RunLogger(run_dir, cfg.total_timesteps, hparams=json.loads(to_json(cfg)), progress=False)
    env = make_vec_env(cfg.env_id, cfg.num_envs, device)
    try:
        metrics = train(cfg, env, Run(run_dir, "dqn", cfg, logger))
    finally:
        logger.close()
        env.close()
    assert metrics["num_updates"] > 0
    # Greedy evaluation of the final checkpoint on fresh episodes (a seed unrelated to training).
    report = evaluate(run_dir, episodes=EVAL_EPISODES, epsilon=0.0, seed=10_000 + seed, device=device)
    returns = [e["return"] for e in report["episodes"]]
    assert len(returns) == EVAL_EPISODES
    assert report["mean_return"] >= SOLVED, (
        f"seed {seed}: mean return {report['mean_return']:.1f} over {EVAL_EPISODES} episodes "
        f"(min {min(returns):.0f}); training ep_rew_mean {metrics['ep_rew_mean']}")
