"""Learning tests on rlbase's own envs: evaluation on the held-out split through `rlbase eval`'s code.

Slow. CI runs the `ci_slow` tier (`-m "not slow or ci_slow"`): PPO on the batched CartPole, seeds 0-2
(seconds each).
"""

from __future__ import annotations

import pytest

from rlbase.evaluate import evaluate
from rlbase.lifecycle import train
from rlbase.utils import resolve_device


def train_preset(tmp_path, algo: str, env_id: str, seed: int, **overrides) -> tuple[dict, object]:
    """Train with the env's preset through the run lifecycle, as `rlbase train` does."""
    run_dir = tmp_path / "run"
    metrics = train(algo, {"env_id": env_id, "seed": seed, **overrides}, run_dir=run_dir)
    return metrics, run_dir


@pytest.mark.slow
@pytest.mark.parametrize("seed", [pytest.param(s, marks=pytest.mark.ci_slow) for s in (0, 1, 2)] + [3, 4])
def test_ppo_solves_native_cartpole(tmp_path, seed):
    """The preset trains in about 2.5 s here (45k steps); BENCHMARKS.md has it solving seeds 0-59."""
    metrics, run_dir = train_preset(tmp_path, "ppo", "rlbase/CartPole-v1", seed)
    assert metrics["global_step"] <= 50_000  # the wall-clock preset, not the 100k classic-control one
    report = evaluate(run_dir, episodes=20, seed=1000 + seed, device=resolve_device("cpu"))
    assert report["mean_return"] >= 475.0, f"seed {seed}: {report['mean_return']:.1f} (min {report['min_return']:.0f})"


@pytest.mark.slow
def test_ppo_laps_held_out_tracks(tmp_path):
    """PPO on lidar observations completes a lap on >= 80% of tracks it never trained on."""
    _, run_dir = train_preset(tmp_path, "ppo", "rlbase/Driving-v0", 0)
    report = evaluate(run_dir, episodes=100, seed=1000, device=resolve_device("cpu"))
    laps = [e["laps"] for e in report["episodes"]]
    assert len(laps) == 100
    lap_rate = sum(lap >= 1 for lap in laps) / len(laps)
    assert lap_rate >= 0.8, f"laps completed on {lap_rate:.0%} of held-out tracks; mean return {report['mean_return']:.1f}"


@pytest.mark.slow
def test_dqn_makes_progress_on_discrete_driving(tmp_path):
    """DQN drives at least half a lap on average on held-out tracks (a random policy leaves the track at once)."""
    _, run_dir = train_preset(tmp_path, "dqn", "rlbase/DrivingDiscrete-v0", 0)
    report = evaluate(run_dir, episodes=50, seed=1000, device=resolve_device("cpu"))
    assert report["outcomes"]["progress"] >= 0.5, report["outcomes"]


@pytest.mark.slow
def test_ppo_solves_held_out_11x11_mazes_with_a_pretrained_backbone(tmp_path):
    """PPO on grid observations of 11x11 mazes succeeds on >= 90% of held-out mazes, starting from a
    resnet that `rlbase pretrain maze-action` taught the shortest-path action (frozen). About 9
    minutes on a 2-core CPU: 2.5 for pretraining, 6 for PPO."""
    from rlbase.pretrain import PretrainConfig, pretrain

    result = pretrain(PretrainConfig(task="maze-action", backbone="resnet", env_kwargs={"obs_mode": "grid", "size": 11},
                                     epochs=8, out=str(tmp_path / "pretrained"), device="cpu", torch_threads=1),
                      progress=False)
    assert result["metrics"]["val/accuracy"] >= 0.95, result["metrics"]
    _, run_dir = train_preset(tmp_path, "ppo", "rlbase/Maze-v0", 0, backbone="auto",
                              backbone_weights=result["out"], freeze_backbone=True, shared_backbone=True,
                              total_timesteps=500_000)
    report = evaluate(run_dir, episodes=200, seed=1000, device=resolve_device("cpu"))
    success = report["outcomes"]["success"]
    assert success >= 0.9, f"success on {success:.1%} of 200 held-out mazes"
