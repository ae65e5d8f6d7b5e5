"""--split-envs: the on-policy agents step the envs in two halves, alternately (EnvPool's async mode),
so one half's emulator threads run while the agent acts for the other.

What must hold: the halves are the same envs an unsplit env plays (same seeds, same transitions);
the rollout has the same layout and content for the same actions; every step of one half is in
flight while the agent works on the other; and training, logging, resuming and bad input behave as
without the flag."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

from rlbase.agents.rollout import ALL_ROWS, Normalizer, play_rollout
from rlbase.envs import SplitVecEnv, make_vec_env
from rlbase.envs.core import EpisodeStats, TensorVecEnv
from rlbase.errors import UsageError
from rlbase.lifecycle import execute, plan_resume, train
from rlbase.run import NO_TIMER
from rlbase.stats import RecentEpisodes
from tests.test_cli import assert_one_line_error, run_cli

CPU = torch.device("cpu")


class CounterEnv(TensorVecEnv):
    """A deterministic env that steps "in threads" (it only pretends): env k starts at seed + k,
    moves by its action each step and ends its episode on reaching a multiple of 5. `events` logs
    every send and receive with the env ids involved."""

    steps_in_threads = True

    def __init__(self, num_envs: int, events: list, name: str):
        self.env_id, self.num_envs, self.device = "Counter-v0", num_envs, CPU
        self.single_observation_space = gym.spaces.Box(-1e6, 1e6, (2,))
        self.single_action_space = gym.spaces.Discrete(3)
        self.events, self.name = events, name
        self.state = torch.zeros(num_envs)
        self.stats = EpisodeStats(num_envs, CPU)
        self.first = 0

    def obs(self) -> torch.Tensor:
        return torch.stack([self.state, self.state % 5], dim=1)

    def reset(self, seed=None):
        self.first = seed or 0
        self.state = torch.arange(self.num_envs, dtype=torch.float32) + self.first
        self.stats.reset()
        return self.obs(), {}

    def step_async(self, actions):
        self.events.append(("send", self.name))
        self.pending = actions

    def step_wait(self):
        self.events.append(("recv", self.name))
        self.state = self.state + self.pending.float() + 1
        terminated = self.state % 5 == 0
        truncated = torch.zeros_like(terminated)
        rewards = self.state.clone()
        final_obs = self.obs()
        self.state = torch.where(terminated, self.state + 1, self.state)  # the next episode's start
        ret, length = self.stats.update(rewards, terminated)
        info = {"final_obs": final_obs, "episode_return": ret, "episode_length": length}
        return self.obs(), rewards, terminated, truncated, info


def collect(env, num_steps: int, events: list) -> dict[str, torch.Tensor]:
    """A rollout of `num_steps` with actions that are a function of the observation alone."""
    n = env.num_envs
    out = {"obs": torch.zeros(num_steps, n, 2), "actions": torch.zeros(num_steps, n, dtype=torch.long),
           "rewards": torch.zeros(num_steps, n), "ends": torch.zeros(num_steps, n, dtype=torch.bool),
           "final": torch.zeros(num_steps, n, 2)}

    def act(t, rows, obs):
        events.append(("act", t, rows))
        actions = obs[:, 0].long() % 3

        def store():
            out["obs"][t, rows] = obs
            out["actions"][t, rows] = actions

        return actions, store

    def observe(t, rows, result):
        events.append(("observe", t, rows))
        next_obs, rewards, terminated, truncated, info = result
        out["rewards"][t, rows] = rewards
        out["ends"][t, rows] = terminated | truncated
        out["final"][t, rows] = info["final_obs"]
        return next_obs

    obs, _ = env.reset(seed=10)
    out["last"] = play_rollout(env, num_steps, obs, act, observe, NO_TIMER)
    return out


def test_halves_play_the_same_rollout_as_one_env():
    whole = collect(CounterEnv(5, [], "all"), 9, [])
    events: list = []
    split = collect(SplitVecEnv([CounterEnv(2, events, "A"), CounterEnv(3, events, "B")]), 9, events)
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
    assert whole["ends"].any()  # episodes ended and were reset inside the rollout


def test_each_half_steps_while_the_agent_works_on_the_other():
    events: list = []
    env = SplitVecEnv([CounterEnv(2, events, "A"), CounterEnv(2, events, "B")])
    collect(env, 4, events)
    a, b = env.groups
    # Every step of each half: sent, then the agent observes or acts for the other half, then received.
    for half, other in (("A", b), ("B", a)):
        sends = [i for i, e in enumerate(events) if e == ("send", half)]
        recvs = [i for i, e in enumerate(events) if e == ("recv", half)]
        assert len(sends) == len(recvs) == 4
        for send, recv in zip(sends, recvs):
            between = events[send + 1:recv]
            assert any(e[0] in ("act", "observe") and e[2] == other for e in between), (half, between)
            assert ("send", half) not in between  # one step of a half in flight at a time
    assert [e[1] for e in events if e[0] == "act"] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_split_atari_env_is_the_unsplit_env():
    """Two ale-py halves (seeds s and s + n/2) play exactly the games of one 4-env ale-py env."""
    whole = make_vec_env("ALE/Breakout-v5", 4, CPU, atari_max_episode_steps=60)
    split = make_vec_env("ALE/Breakout-v5", 4, CPU, halves=True, atari_max_episode_steps=60)
    try:
        assert isinstance(split, SplitVecEnv) and split.num_envs == 4 and split.steps_in_threads
        obs_w, _ = whole.reset(seed=7)
        obs_s, _ = split.reset(seed=7)
        assert torch.equal(obs_w, obs_s)
        generator = torch.Generator().manual_seed(0)
        ended = 0
        for _ in range(150):
            actions = torch.randint(0, 4, (4,), generator=generator)
            out_w, out_s = whole.step(actions), split.step(actions)
            for x, y in zip(out_w[:4], out_s[:4]):
                assert torch.equal(x, y)
            for key in ("final_obs", "life_lost", "episode_return", "episode_length"):
                assert torch.equal(out_w[4][key], out_s[4][key]), key
            ended += int(out_w[2].sum() + out_w[3].sum())
        assert ended > 0  # the 60-step limit ended games (and autoreset them) on the way
    finally:
        whole.close()
        split.close()


def test_episode_window_and_reward_scaling_by_rows():
    """The per-step statistics take half the envs at a time and end where all at once would."""
    generator = torch.Generator().manual_seed(1)
    whole, halves = RecentEpisodes(10, CPU, 6, stage_steps=4), RecentEpisodes(10, CPU, 6, stage_steps=4)
    cfg = type("Cfg", (), {"normalize_obs": False, "normalize_reward": True, "gamma": 0.9, "clip_reward": 10.0})()
    norm_w, norm_h = Normalizer(cfg, (1,), 6, CPU), Normalizer(cfg, (1,), 6, CPU)
    for _ in range(30):
        returns, lengths = torch.rand(6, generator=generator), torch.randint(1, 9, (6,), generator=generator).float()
        dones = torch.rand(6, generator=generator) < 0.3
        rewards = torch.randn(6, generator=generator)
        whole.add(returns, lengths, dones)
        scaled = norm_w.reward(rewards, dones)
        for rows in (slice(0, 3), slice(3, 6)):
            halves.add(returns[rows], lengths[rows], dones[rows], rows)
            norm_h.reward(rewards[rows], dones[rows], rows)
        assert scaled.shape == (6,)
    assert whole.summary() == halves.summary() and whole.summary()["episodes"] > 10
    assert torch.equal(norm_w.discounted, norm_h.discounted)
    assert norm_w.ret.count == norm_h.ret.count  # the same values went in (in halves: same mean and var)
    assert torch.allclose(norm_w.ret.var, norm_h.ret.var)


@pytest.mark.parametrize("algo", ["ppo", "pqn"])
def test_split_training_on_atari(tmp_path, algo):
    values = {"env_id": "ALE/Breakout-v5", "total_timesteps": 256, "num_envs": 4, "num_steps": 32, "log_interval": 128,
              "atari_max_episode_steps": 40, "split_envs": True, "time_stages": "on", "log_dir": str(tmp_path),
              "run_name": "split",
              "num_minibatches": 2}
    if algo == "ppo":
        values["update_epochs"] = 1
    result = train(algo, values, progress=False)
    assert result["global_step"] == 256 and result["episodes"] > 0
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [128, 256]
    last = records[-1]
    assert {"time/act", "time/env", "time/store", "time/learn"} <= set(last)  # stage timings, as unsplit
    assert "rollout/ep_rew_mean" in last and last["rollout/ep_rew_mean"] >= 0
    assert json.loads((tmp_path / "split" / "config.json").read_text())["config"]["split_envs"] is True
    # A resume may switch the halves off (how it computes, not what it trains).
    resumed_plan = plan_resume(tmp_path / "split", algo, {"total_timesteps": 384, "split_envs": False})
    try:
        assert not isinstance(resumed_plan.env, SplitVecEnv)
        resumed = execute(resumed_plan, progress=False)
    finally:
        resumed_plan.close()
    assert resumed["global_step"] == 384


def test_split_envs_bad_input(tmp_path):
    logs = tmp_path / "runs"
    proc = run_cli("train", "ppo", "--env", "rlbase/CartPole-v1", "--split-envs", "--total-timesteps", "64",
                   "--log-dir", logs, cwd=tmp_path)
    assert "--split-envs needs envs that step in threads of their own" in assert_one_line_error(proc, 2)
    proc = run_cli("train", "pqn", "--env", "ALE/Breakout-v5", "--split-envs", "--num-envs", "1",
                   "--total-timesteps", "64", "--log-dir", logs, cwd=tmp_path)
    assert "--split-envs" in assert_one_line_error(proc, 2)
    assert not logs.exists()  # nothing written for a refused run
    # From Python, an env handed in must come in halves.
    env = make_vec_env("ALE/Breakout-v5", 2, CPU)
    try:
        with pytest.raises(UsageError, match="SplitVecEnv"):
            train("ppo", {"env_id": "ALE/Breakout-v5", "split_envs": True, "total_timesteps": 64, "num_envs": 2,
                          "log_dir": str(tmp_path)}, env=env)
    finally:
        env.close()


def test_checked_env_checks_both_halves():
    """--check-env-values sees every half's step: a NaN reward in the second half is found."""
    from rlbase.guards import CheckedEnv

    second = CounterEnv(2, [], "B")
    plain_wait, calls = second.step_wait, []

    def poisoned():  # NaN rewards from its 5th step on
        obs, rewards, terminated, truncated, info = plain_wait()
        calls.append(1)
        return obs, rewards if len(calls) < 5 else rewards * torch.nan, terminated, truncated, info

    second.step_wait = poisoned
    env = CheckedEnv(SplitVecEnv([CounterEnv(2, [], "A"), second]))
    assert env.groups == [slice(0, 2), slice(2, 4)]
    collect(env, 3, [])
    assert env.problem() is None
    collect(env, 4, [])
    assert env.problem().startswith("the env's reward is NaN or infinite at step")


def test_all_rows_is_the_unsplit_index():
    x = torch.arange(6).reshape(2, 3)
    assert torch.equal(x[1, ALL_ROWS], x[1])
