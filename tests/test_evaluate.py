"""Episode statistics: the training-time recent-episode window and `rlbase eval`'s episode play-out."""

from __future__ import annotations

import statistics

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.envs import make_vec_env
from rlbase.evaluate import play_episodes, summarize, t_quantile
from rlbase.stats import RecentEpisodes

CPU = torch.device("cpu")


@pytest.mark.parametrize("num_envs,steps,window", [(1, 50, 100), (3, 700, 100), (8, 600, 10), (4, 1000, 100)])
def test_recent_episodes_matches_naive_window(num_envs, steps, window):
    rng = np.random.default_rng(num_envs + steps)
    recent = RecentEpisodes(window, CPU, num_envs)
    finished: list[tuple[float, int]] = []  # naive: every finished episode, in (step, env) order
    for step in range(steps):
        dones = rng.random(num_envs) < 0.1
        returns = np.where(dones, rng.normal(size=num_envs) * 10, 0).astype(np.float32)
        lengths = np.where(dones, rng.integers(1, 500, num_envs), 0).astype(np.int32)
        recent.add(torch.from_numpy(returns), torch.from_numpy(lengths), torch.from_numpy(dones))
        finished += [(float(returns[i]), int(lengths[i])) for i in np.flatnonzero(dones)]
        if step % 97 == 0 or step == steps - 1:  # summaries in the middle of staging, too
            summary = recent.summary()
            assert summary["episodes"] == len(finished)
            if finished:
                last = finished[-window:]
                assert summary["ep_rew_mean"] == pytest.approx(np.mean([r for r, _ in last]), rel=1e-5, abs=1e-4)
                assert summary["ep_len_mean"] == pytest.approx(np.mean([n for _, n in last]), rel=1e-6)


def test_summarize_against_statistics_module():
    returns = [10.0, 12.0, 9.0, 15.0, 11.0]
    lengths = [100, 120, 90, 150, 110]
    s = summarize(returns, lengths)
    assert s["mean_return"] == pytest.approx(statistics.mean(returns))
    assert s["std_return"] == pytest.approx(statistics.stdev(returns))
    assert s["min_return"] == 9.0 and s["max_return"] == 15.0
    assert s["mean_length"] == pytest.approx(statistics.mean(lengths))
    assert s["ci95_low"] < s["mean_return"] < s["ci95_high"]
    # 95% t interval with 4 degrees of freedom: t = 2.776 (standard table value).
    half = 2.776 * statistics.stdev(returns) / np.sqrt(len(returns))
    assert s["ci95_high"] - s["mean_return"] == pytest.approx(half, rel=1e-3)
    assert [e["return"] for e in s["episodes"]] == returns and [e["length"] for e in s["episodes"]] == lengths
    one = summarize([5.0], [7])
    assert one["std_return"] == 0.0 and one["ci95_low"] == one["ci95_high"] == 5.0


# Two-sided 95% Student t quantiles for 1..30 degrees of freedom, as printed in statistics tables.
T95_TABLE = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
             2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
             2.045, 2.042]


def test_t_quantile_matches_the_printed_table():
    assert [round(t_quantile(0.95, df), 3) for df in range(1, 31)] == T95_TABLE
    # Past the table it keeps falling towards the normal quantile, never below it.
    larger = [t_quantile(0.95, df) for df in (31, 60, 120, 1000, 100_000)]
    assert 2.042 > larger[0] and larger == sorted(larger, reverse=True) and larger[-1] > 1.959963
    assert larger[-1] == pytest.approx(1.959963985, abs=1e-4)


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_t_quantile_against_scipy(confidence):
    stats = pytest.importorskip("scipy.stats")  # a dev dependency, not one of rlbase eval's
    for df in [*range(1, 41), 99, 100, 1001, 5000]:
        assert t_quantile(confidence, df) == pytest.approx(stats.t.ppf(0.5 + confidence / 2, df), rel=1e-9)


def test_videos_play_at_the_env_render_fps(tmp_path):
    """One mp4 per episode of env 0, at the env's own frame rate (native CartPole: 50, not 30)."""
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    env = make_vec_env("rlbase/CartPole-v1", 1, CPU, render=True)
    try:
        assert env.render_fps == 50.0
        returns, lengths = play_episodes(env, lambda obs, generator: torch.zeros(len(obs), dtype=torch.long), 2, 0,
                                         video_dir=tmp_path)
    finally:
        env.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_000.mp4", "episode_001.mp4"]
    for name, length in zip(["episode_000.mp4", "episode_001.mp4"], lengths):
        reader = imageio.get_reader(tmp_path / name)
        try:
            assert reader.get_meta_data()["fps"] == 50.0
            assert reader.count_frames() == length  # the first observation and every step but the last
        finally:
            reader.close()


def test_play_episodes_splits_evenly_and_reports_real_episodes():
    num_envs, episodes, seed = 3, 7, 5
    env = make_vec_env("CartPole-v1", num_envs, CPU)
    try:
        policy = lambda obs, generator: (obs[:, 2] > 0).long()  # noqa: E731 (push towards the pole's lean)
        returns, lengths = play_episodes(env, policy, episodes, seed)
    finally:
        env.close()
    assert len(returns) == len(lengths) == episodes
    assert returns == [float(n) for n in lengths]  # CartPole pays 1 per step
    # Reference: each member env on its own (seeded seed + i) plays its share: 3, 2, 2 episodes.
    expected = []
    for i, quota in enumerate([3, 2, 2]):
        ref = gym.make("CartPole-v1")
        obs, _ = ref.reset(seed=seed + i)
        for _ in range(quota):
            n, done = 0, False
            while not done:
                obs, _, term, trunc, _ = ref.step(int(obs[2] > 0))
                n += 1
                done = term or trunc
            expected.append(n)
            obs, _ = ref.reset()
        ref.close()
    assert sorted(lengths) == sorted(expected)
