"""Learning test: DQN with its CartPole-v1 preset solves the task.

Slow (minutes per seed). CI runs the `ci_slow` tier (`-m "not slow or ci_slow"`): seed 0 only.
"""

from __future__ import annotations

import pytest

from rlbase.evaluate import evaluate
from rlbase.lifecycle import train
from rlbase.utils import resolve_device

SOLVED = 475.0  # CartPole-v1's reward threshold (episodes are capped at 500)
EVAL_EPISODES = 20


@pytest.mark.slow
@pytest.mark.parametrize("seed", [pytest.param(0, marks=pytest.mark.ci_slow), 1, 2])
def test_dqn_solves_cartpole(tmp_path, seed):
    run_dir = tmp_path / "run"
    metrics = train("dqn", {"env_id": "CartPole-v1", "seed": seed}, run_dir=run_dir)
    device = resolve_device("cpu")
    assert metrics["num_updates"] > 0
    # Greedy evaluation of the final checkpoint on fresh episodes (a seed unrelated to training).
    report = evaluate(run_dir, episodes=EVAL_EPISODES, epsilon=0.0, seed=10_000 + seed, device=device)
    returns = [e["return"] for e in report["episodes"]]
    assert len(returns) == EVAL_EPISODES
    assert report["mean_return"] >= SOLVED, (
        f"seed {seed}: mean return {report['mean_return']:.1f} over {EVAL_EPISODES} episodes "
        f"(min {min(returns):.0f}); training ep_rew_mean {metrics['ep_rew_mean']}")
