"""Learning tests: PPO and A2C with their presets solve CartPole-v1; PPO with its preset swings up Pendulum-v1.

Slow (minutes per seed). CI runs the `ci_slow` tier (`-m "not slow or ci_slow"`): PPO on CartPole, seed 0.
Each case trains in-process into a temporary run directory exactly as `rlbase train` does, then
evaluates the final checkpoint as `rlbase eval` does, on fresh episodes (an evaluation seed
unrelated to training).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlbase.evaluate import evaluate
from rlbase.lifecycle import train
from rlbase.utils import resolve_device

EVAL_EPISODES = 20
CARTPOLE_SOLVED = 475.0  # CartPole-v1's reward threshold (episodes are capped at 500)
PENDULUM_TARGET = -300.0  # a swung-up, balanced pendulum; random policies score about -1200


def train_and_evaluate(algo: str, env_id: str, seed: int, run_dir: Path) -> tuple[dict, dict]:
    """Train `algo` with its preset for `env_id` into `run_dir`; evaluate the final checkpoint."""
    metrics = train(algo, {"env_id": env_id, "seed": seed}, run_dir=run_dir)
    device = resolve_device("cpu")
    total = json.loads((run_dir / "config.json").read_text())["config"]["total_timesteps"]
    assert metrics["global_step"] >= total and metrics["num_updates"] > 0
    report = evaluate(run_dir, episodes=EVAL_EPISODES, seed=10_000 + seed, device=device)
    assert report["policy"] == "deterministic" and report["num_episodes"] == EVAL_EPISODES
    assert len(report["episodes"]) == EVAL_EPISODES
    return metrics, report


def failure_message(algo: str, env_id: str, seed: int, metrics: dict, report: dict) -> str:
    returns = [e["return"] for e in report["episodes"]]
    return (f"{algo} on {env_id}, seed {seed}: mean return {report['mean_return']:.1f} over {EVAL_EPISODES} "
            f"episodes (min {min(returns):.0f}); training ep_rew_mean {metrics['ep_rew_mean']}")


@pytest.mark.slow
@pytest.mark.parametrize("algo,seed", [
    pytest.param("ppo", 0, marks=pytest.mark.ci_slow), ("ppo", 1), ("ppo", 2),
    ("a2c", 0), ("a2c", 1), ("a2c", 2),
])
def test_solves_cartpole(tmp_path, algo, seed):
    metrics, report = train_and_evaluate(algo, "CartPole-v1", seed, tmp_path / "run")
    assert report["mean_return"] >= CARTPOLE_SOLVED, failure_message(algo, "CartPole-v1", seed, metrics, report)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_swings_up_pendulum(tmp_path, seed):
    metrics, report = train_and_evaluate("ppo", "Pendulum-v1", seed, tmp_path / "run")
    assert report["mean_return"] >= PENDULUM_TARGET, failure_message("ppo", "Pendulum-v1", seed, metrics, report)
