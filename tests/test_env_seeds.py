"""Run seeds give distinct envs: every backend seeds env i of a reset with s as s + i, so the run's
reset seed is a hash of (seed, step) (`rlbase.run.env_seed`), not `seed + step`, under which
seed 1's env i replayed seed 0's env i + 1."""

from __future__ import annotations

from rlbase.callbacks import Callback
from rlbase.lifecycle import train
from rlbase.run import env_seed


def test_env_seed_windows_of_different_runs_are_disjoint():
    width = 4096  # envs per run
    starts = sorted(env_seed(seed, step) for seed in range(50) for step in (0, 8192, 10**6))
    assert len(set(starts)) == len(starts)
    assert all(b - a >= width for a, b in zip(starts, starts[1:]))  # no two runs' env windows overlap
    assert all(0 <= s and s + width < 2**31 for s in starts)  # + i stays a positive int32 (ale-py)
    assert env_seed(3, 100) == env_seed(3, 100)  # a pure function: runs reproduce


class Keys(Callback):
    """The per-env seeds of a native env at the run's start."""

    def on_start(self, run) -> None:
        self.keys = set(run.env.keys.tolist())


def test_adjacent_run_seeds_play_disjoint_envs(tmp_path):
    keys = []
    for seed in (0, 1):
        callback = Keys()
        train("ppo", {"env_id": "rlbase/Maze-v0", "env_kwargs": {"size": 7}, "num_envs": 8, "num_steps": 16,
                      "total_timesteps": 128, "seed": seed, "log_dir": str(tmp_path)}, callbacks=[callback])
        keys.append(callback.keys)
    assert len(keys[0]) == len(keys[1]) == 8
    assert not keys[0] & keys[1]  # with seed + i, 7 of the 8 envs were shared
