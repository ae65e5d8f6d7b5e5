"""Whole runs on CUDA: train, checkpoint, resume and evaluate with `--device cuda`, where the networks,
rollouts and replay live on the GPU while counters, RNG states and host-side envs stay on the CPU.

Skipped without a GPU (CI has none); run them on a machine with one. The first run of the suite on
a GPU found every checkpoint failing there (the NaN guard stacked CPU and CUDA flags together).
"""

from __future__ import annotations

import json

import pytest
import torch

from rlbase.evaluate import evaluate
from rlbase.guards import first_nonfinite_tensor
from rlbase.lifecycle import execute, plan_resume, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_nonfinite_check_over_cpu_and_cuda_tensors():
    tensors = {"weight": torch.ones(3, device="cuda"), "count": torch.ones(()), "bias": torch.zeros(2, device="cuda")}
    assert first_nonfinite_tensor(tensors) is None
    tensors["bias"][1] = torch.nan
    assert first_nonfinite_tensor(tensors) == "bias"
    tensors["count"] = torch.tensor(float("inf"))
    assert first_nonfinite_tensor(tensors) == "count"  # the first in order, whatever its device


def run_and_resume(tmp_path, algo: str, values: dict, more: int) -> dict:
    """Train on CUDA with checkpoints, resume to `more` steps beyond, and evaluate the final run."""
    first = train(algo, {**values, "device": "cuda", "log_dir": str(tmp_path), "run_name": "run"}, progress=False)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "config.json").read_text())["config"]["device"] == "cuda"
    assert sorted((run_dir / "checkpoints").glob("step_*")), "no checkpoint was written"
    p = plan_resume(run_dir, algo, {"total_timesteps": first["global_step"] + more})
    try:
        resumed = execute(p, progress=False)
    finally:
        p.close()
    assert resumed["global_step"] >= first["global_step"] + more
    report = evaluate(run_dir, episodes=4, seed=0, device=torch.device("cuda"))
    assert report["num_episodes"] == 4
    return report


def test_ppo_on_a_native_env(tmp_path):
    report = run_and_resume(tmp_path, "ppo", {"env_id": "rlbase/CartPole-v1", "total_timesteps": 8192,
                                              "num_envs": 16, "checkpoint_interval": 4096}, 4096)
    assert report["mean_return"] > 0


def test_dqn_with_prioritized_replay_on_a_gymnasium_env(tmp_path):
    values = {"env_id": "CartPole-v1", "total_timesteps": 2000, "learning_starts": 500, "num_envs": 4,
              "prioritized_replay": True, "save_buffer": True, "checkpoint_interval": 1000}
    run_and_resume(tmp_path, "dqn", values, 1000)


def test_pqn_split_envs_on_atari(tmp_path):
    values = {"env_id": "ALE/Breakout-v5", "total_timesteps": 1024, "num_envs": 8, "num_steps": 32,
              "split_envs": True, "atari_max_episode_steps": 200, "checkpoint_interval": 512}
    run_and_resume(tmp_path, "pqn", values, 256)


def test_ppo_on_maze_pixels(tmp_path):
    values = {"env_id": "rlbase/Maze-v0", "env_kwargs": {"size": 7, "obs_mode": "pixels"}, "total_timesteps": 4096,
              "num_envs": 32, "num_steps": 64, "checkpoint_interval": 2048}
    run_and_resume(tmp_path, "ppo", values, 2048)
