"""Learning tests: PQN with its presets learns rlbase/CartPole-v1 and rlbase/Maze-v0.

The fast test runs in CI (a short CartPole run on one fixed seed, seconds); the slow ones train
the whole presets on several seeds (CI's `ci_slow` tier runs seed 0). Every final checkpoint is
evaluated greedily through `rlbase eval`'s code, on evaluation seeds unrelated to training (the
maze on held-out levels).
"""

from __future__ import annotations

import pytest

from rlbase.evaluate import evaluate
from rlbase.lifecycle import train
from rlbase.utils import resolve_device

SOLVED = 475.0  # CartPole-v1's reward threshold (episodes are capped at 500)


def train_and_evaluate(tmp_path, env_id: str, values: dict, episodes: int, seed: int) -> tuple[dict, dict]:
    run_dir = tmp_path / "run"
    metrics = train("pqn", {"env_id": env_id, "seed": seed, "torch_threads": 1, **values}, run_dir=run_dir)
    report = evaluate(run_dir, episodes=episodes, seed=10_000 + seed, device=resolve_device("cpu"), progress=False)
    return metrics, report


def test_pqn_learns_cartpole_quickly(tmp_path):
    """Half the preset's budget on seed 0: far above a random policy (~22), if not yet solved. (A quarter
    was too little to hold on every CPU: seed 0 reached 200+ on earlier machines but 34.9 on an AVX-512
    one, where seeds 0-3 gave 35, 460, 45 and 330 at 51,200 steps and 471, 500, 208 and 494 at 102,400.)"""
    metrics, report = train_and_evaluate(tmp_path, "rlbase/CartPole-v1", {"total_timesteps": 102_400}, 10, 0)
    assert metrics["num_updates"] > 0
    assert report["mean_return"] >= 150, (report["mean_return"], metrics["ep_rew_mean"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [pytest.param(0, marks=pytest.mark.ci_slow), 1, 2])
def test_pqn_solves_cartpole_with_its_preset(tmp_path, seed):
    metrics, report = train_and_evaluate(tmp_path, "rlbase/CartPole-v1", {}, 20, seed)
    returns = [e["return"] for e in report["episodes"]]
    assert report["mean_return"] >= SOLVED, (
        f"seed {seed}: mean return {report['mean_return']:.1f} (min {min(returns):.0f}); "
        f"training ep_rew_mean {metrics['ep_rew_mean']}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [pytest.param(0, marks=pytest.mark.ci_slow), 1])
def test_pqn_learns_to_find_the_exit_of_held_out_7x7_mazes(tmp_path, seed):
    """500k steps of the maze preset on 7x7 mazes: held-out success (epsilon 0.05, the preset's
    evaluation policy) above a random walk's, and >= 15 points above the same preset after one rollout.

    A uniformly random walk finds the exit of ~62-67% of 7x7 mazes within their 196 steps; the
    preset's greedy policy starts below it (it walks into walls and circles). Measured when the
    preset was set: 95% (seed 0) and 85-87% (256 envs x 8 steps, seeds 0-1) at 500k steps."""
    maze = {"env_kwargs": {"size": 7}}
    _, before = train_and_evaluate(tmp_path / "start", "rlbase/Maze-v0", {**maze, "total_timesteps": 2048}, 100, seed)
    metrics, after = train_and_evaluate(tmp_path / "trained", "rlbase/Maze-v0", {**maze, "total_timesteps": 500_000},
                                        100, seed)
    start, end = before["outcomes"]["success"], after["outcomes"]["success"]
    assert end >= max(RANDOM_WALK_SUCCESS, start + 0.15), (
        f"seed {seed}: held-out success {start:.0%} after one rollout, {end:.0%} after 500k steps; "
        f"training ep_rew_mean {metrics['ep_rew_mean']}")


RANDOM_WALK_SUCCESS = 0.75  # above the ~62-67% a uniformly random walk reaches on 7x7 mazes
