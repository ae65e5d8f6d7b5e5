"""rlbase/Driving-v0 and DrivingDiscrete-v0: tracks, dynamics, lap reward, lidar, autoreset, seeding, checkers."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlbase  # noqa: F401  (registers the rlbase/ ids with Gymnasium)
from rlbase.envs import make_vec_env
from rlbase.envs.driving import DISCRETE_ACTIONS, DrivingEnv, DrivingVecEnv
from rlbase.errors import UsageError

CPU = torch.device("cpu")
RAYS = 9  # the default fan: -90, -67.5, ..., +90 degrees


def brute_force_lidar(env: DrivingVecEnv, samples: int = 4000) -> torch.Tensor:
    """(B, R) first distance off the track along each ray, by dense sampling (reference)."""
    x, y, heading = env.car[0], env.car[1], env.car[2]
    t = torch.linspace(0, env.lidar_range, samples + 1)[1:]
    ang = heading[:, None] + env.ray_angles  # (B, R)
    px = x[None, None, :] + t[:, None, None] * ang.t().cos()[None]  # (S, R, B)
    py = y[None, None, :] + t[:, None, None] * ang.t().sin()[None]
    r, _ = env.centre_line(env.coef, torch.atan2(py, px))
    off = (torch.hypot(px, py) - r).abs() >= env.half_width
    return torch.where(off, t[:, None, None], torch.tensor(env.lidar_range)).amin(0).t()


# ---------------------------------------------------------------- tracks


def test_tracks_are_closed_and_start_on_the_centre_line():
    env = DrivingVecEnv(64)
    obs, _ = env.reset(seed=0)
    theta = torch.linspace(0, 2 * math.pi, 721)[:, None].expand(-1, 64)
    r, slope = env.centre_line(env.coef, theta)
    assert torch.allclose(r[0], r[-1], atol=1e-4) and torch.allclose(slope[0], slope[-1], atol=1e-3)  # closed
    assert bool((r - env.half_width > 0.05 * env.track_radius).all())  # a band around the centre, never through it
    assert bool((r.amax(0) - r.amin(0) > 1.0).all())  # not circles
    state = env.track_state()
    assert state["offset"].abs().max() < 1e-4  # on the centre line ...
    assert state["heading_error"].abs().max() < 1e-4  # ... heading along it
    assert state["fraction"].abs().max() < 1e-6  # at the start/finish line
    assert bool((obs[:, RAYS] == 0).all())  # at rest
    assert bool((obs[:, :RAYS] > 0).all())  # on the track: every ray has room


def test_train_and_eval_splits_use_disjoint_level_seeds():
    train = DrivingVecEnv(32, split="train")
    evaluation = DrivingVecEnv(32, split="eval")
    train.reset(seed=5)
    evaluation.reset(seed=5)
    assert bool((train.level_seeds() % 2 == 0).all()) and bool((evaluation.level_seeds() % 2 == 1).all())
    assert not bool(torch.isclose(train.coef, evaluation.coef).all(0).any())  # no shared track
    few = DrivingVecEnv(32, num_levels=3)
    few.reset(seed=5)
    assert len(set(few.level_seeds().tolist())) <= 3


# ---------------------------------------------------------------- laps and reward


def test_autopilot_completes_a_lap_counted_once_worth_the_lap_reward():
    env = DrivingVecEnv(16, split="eval", laps=0, max_episode_steps=2000)
    env.reset(seed=3)
    total = torch.zeros(16)
    lap_step = torch.full((16,), -1)
    for step in range(300):  # about 1.4 laps
        _, rewards, terminated, truncated, info = env.step(env.autopilot(9.0))
        assert not bool((terminated | truncated).any())
        total += rewards
        assert bool((info["laps"] <= 1).all())
        newly = (info["laps"] == 1) & (lap_step < 0)
        lap_step[newly] = step
        # The return so far is exactly the lap value times the progress (signed, unwrapped).
        assert torch.allclose(total, 100.0 * info["progress"], atol=1e-3)
    assert bool((lap_step > 0).all()), "the autopilot finished a lap on every track"
    assert bool((info["progress"] > 1.1).all()) and bool((info["laps"] == 1).all())  # counted once, past the line


def test_lap_terminates_the_episode_with_the_lap_reward():
    env = DrivingVecEnv(16, split="eval")  # laps=1: the episode ends when the lap is done
    env.reset(seed=4)
    total, ended = torch.zeros(16), torch.zeros(16, dtype=torch.bool)
    for _ in range(400):
        _, rewards, terminated, truncated, info = env.step(env.autopilot(9.0))
        total += rewards * ~ended
        finished = terminated & ~ended
        assert bool((info["laps"][finished] == 1).all()) and not bool(info["offtrack"][finished].any())
        assert torch.allclose(info["episode_return"][finished], total[finished], atol=1e-3)
        ended |= terminated | truncated
        if ended.all():
            break
    assert bool(ended.all()) and not bool(truncated.any())
    assert bool((total >= 100.0).all()) and bool((total < 101.0).all())  # 100 per lap, plus the last step's overshoot


def test_driving_the_wrong_way_gives_no_lap_and_negative_reward():
    env = DrivingVecEnv(8, laps=0, max_episode_steps=2000)
    env.reset(seed=6)
    env.set_car(heading=env.car[2] + math.pi)  # turned around on the start line
    total = torch.zeros(8)
    for _ in range(420):
        _, rewards, terminated, _, info = env.step(env.autopilot(9.0, lookahead=-6.0))  # clockwise
        assert not bool(terminated.any())
        total += rewards
    assert bool((info["progress"] < -1.0).all())  # more than a lap, backwards
    assert bool((info["laps"] == 0).all())
    assert torch.allclose(total, 100.0 * info["progress"], atol=1e-3) and bool((total < -100.0).all())


def test_back_and_forth_over_the_start_line_earns_nothing():
    env = DrivingVecEnv(4, laps=0)
    env.reset(seed=7)
    heading0 = env.car[2].clone()
    env.set_car(heading=heading0 + math.pi)
    total = torch.zeros(4)
    for _ in range(15):  # backwards over the line ...
        total += env.step(torch.tensor([[0.0, 0.3]] * 4))[1]
    assert bool((env.car[4] < 0).all())
    env.set_car(heading=env.car[2] + math.pi, speed=torch.zeros(4))
    for _ in range(25):  # ... and forwards over it again
        _, rewards, terminated, _, info = env.step(torch.tensor([[0.0, 0.3]] * 4))
        total += rewards
    assert not bool(terminated.any())
    assert bool((info["progress"] > 0).all()) and bool((info["laps"] == 0).all())
    assert torch.allclose(total, 100.0 * info["progress"], atol=1e-3)  # only the net progress pays


def test_leaving_the_track_terminates_with_the_penalty():
    env = DrivingVecEnv(8, offtrack_penalty=10.0)
    env.reset(seed=8)
    env.set_car(heading=env.car[2] - 0.7)  # aimed at the outer edge (the track turns left)
    ended = torch.zeros(8, dtype=torch.bool)
    for _ in range(60):
        obs, rewards, terminated, truncated, info = env.step(torch.tensor([[0.0, 1.0]] * 8))
        crashed = terminated & ~ended
        assert bool(info["offtrack"][crashed].all())
        assert bool((rewards[crashed] < -9.0).all()) and bool((rewards[crashed] > -11.0).all())
        assert bool((info["final_obs"][crashed, :RAYS] == 0).all())  # off the track: no ray has room
        assert bool((obs[crashed, RAYS] == 0).all())  # the next episode starts at rest
        ended |= terminated
    assert bool(ended.all()) and not bool(truncated.any())


def test_time_limit_truncates():
    env = DrivingVecEnv(3, max_episode_steps=10)
    first, _ = env.reset(seed=0)
    for step in range(1, 11):
        obs, _, terminated, truncated, info = env.step(torch.zeros(3, 2))  # coast: stays at rest
        assert not bool(terminated.any())
        assert bool(truncated.all()) == (step == 10)
    assert info["episode_length"].tolist() == [10, 10, 10]
    torch.testing.assert_close(info["final_obs"], first, atol=1e-5, rtol=0)  # still at rest on the start line
    assert not bool(torch.isclose(obs, first).all(1).any())  # the next episode: another track


# ---------------------------------------------------------------- autoreset and seeding


@pytest.mark.parametrize("max_steps", [1000, 4])
def test_autoreset_plays_each_level_seed_with_correct_final_obs(max_steps):
    """Ended envs take their pre-built spare episode; every episode must still be exactly its
    level seed's track, start and first observation, and final_obs the ended state's."""
    env = DrivingVecEnv(48, max_episode_steps=max_steps)
    assert env.refresh_every == min(7, max_steps)
    env.reset(seed=11)
    gen = torch.Generator().manual_seed(0)
    resets = 0
    for _ in range(40):
        actions = torch.rand(48, 2, generator=gen) * 2 - 1
        actions[:, 1] = actions[:, 1].abs()  # mostly forward: crashes and time limits both happen
        before = env.coef.clone()
        obs, _, terminated, truncated, info = env.step(actions)
        done = terminated | truncated
        resets += int(done.sum())
        expect = env.track_coefficients(env.level_seeds())
        assert torch.equal(env.coef, expect)  # every env is on its level seed's track
        assert not bool(torch.isclose(env.coef, before).all(0)[done].any())  # a new track
        assert torch.equal(obs[~done], info["final_obs"][~done])
        assert bool((obs[done, RAYS] == 0).all())  # at rest on the start line
        env._obs, env._frame = None, None  # recompute from the state: the same observation
        assert torch.equal(env._observe(), obs)
    assert resets > 20


def test_back_to_back_crashes_still_play_their_own_tracks():
    """Full throttle into the edge: the shortest episodes there are (~12 steps; spares are rebuilt
    every `refresh_every` = 7 steps, the proven lower bound)."""
    env = DrivingVecEnv(64)
    env.reset(seed=12)
    lengths = []
    for step in range(60):
        steer = 1.0 if step % 40 < 20 else -1.0
        _, _, terminated, truncated, info = env.step(torch.tensor([[steer, 1.0]]).expand(64, 2))
        lengths += info["episode_length"][terminated].tolist()
        assert torch.equal(env.coef, env.track_coefficients(env.level_seeds()))
    assert len(lengths) >= 128 and min(lengths) >= env.refresh_every


def test_same_seed_same_episodes_on_any_batch_size():
    seed, steps = 21, 120
    big = DrivingVecEnv(64, max_episode_steps=50)
    obs_big, _ = big.reset(seed=seed)
    hist = [big.step(big.autopilot(13.0)) for _ in range(steps)]
    for i in (0, 17, 63):
        one = DrivingVecEnv(1, max_episode_steps=50)
        obs_one, _ = one.reset(seed=seed + i)
        torch.testing.assert_close(obs_one[0], obs_big[i], atol=1e-5, rtol=0)
        ends = 0
        for t in range(steps):
            obs, rew, term, trunc, info = one.step(one.autopilot(13.0))
            b_obs, b_rew, b_term, b_trunc, b_info = hist[t]
            assert bool(term[0]) == bool(b_term[i]) and bool(trunc[0]) == bool(b_trunc[i])
            torch.testing.assert_close(obs[0], b_obs[i], atol=1e-3, rtol=0)
            torch.testing.assert_close(rew[0], b_rew[i], atol=1e-3, rtol=0)
            ends += int(term[0] | trunc[0])
        assert ends >= 2  # the comparison covered new episodes


# ---------------------------------------------------------------- observations


def test_lidar_matches_ray_marching_and_shrinks_toward_a_wall():
    n = 160
    env = DrivingVecEnv(n)
    env.reset(seed=2)
    gen = torch.Generator().manual_seed(1)
    theta = torch.rand(n, generator=gen) * 2 * math.pi
    r, slope = env.centre_line(env.coef, theta)
    rho = r + (torch.rand(n, generator=gen) * 2 - 1) * 0.8 * env.half_width
    tangent = torch.atan2(slope * theta.sin() + r * theta.cos(), slope * theta.cos() - r * theta.sin())
    heading = tangent + (torch.rand(n, generator=gen) * 2 - 1) * 0.6
    env.set_car(rho * theta.cos(), rho * theta.sin(), heading)
    lidar = env._observe()[:, :RAYS] * env.lidar_range
    err = (lidar - brute_force_lidar(env, 2500)).abs()  # the reference is exact to 0.008
    assert err.median() < 0.01 and err.quantile(0.95) < 0.05 and (err > 0.5).float().mean() < 0.015

    # Aim at the outer edge from the start line and drive at it: the straight-ahead ray shrinks.
    env = DrivingVecEnv(8)
    env.reset(seed=3)
    env.set_car(heading=env.car[2] - 0.6)
    ahead = [env._observe()[:, RAYS // 2]]
    for _ in range(8):
        obs, _, terminated, _, _ = env.step(torch.tensor([[0.0, 1.0]] * 8))
        assert not bool(terminated.any())
        ahead.append(obs[:, RAYS // 2])
    ahead = torch.stack(ahead)
    assert bool((ahead[1:] < ahead[:-1]).all())
    left, right = obs[:, RAYS - 1], obs[:, 0]
    assert bool((right < left).all())  # the outer (right-hand) edge is nearer


@pytest.mark.parametrize("obs_mode", ["lidar", "pixels"])
def test_observations_stay_in_the_declared_space(obs_mode):
    env = DrivingVecEnv(16, obs_mode=obs_mode, max_episode_steps=30)
    space = env.single_observation_space
    obs, _ = env.reset(seed=1)
    gen = torch.Generator().manual_seed(2)
    seen = [obs]
    for _ in range(45):
        obs, _, _, _, info = env.step(torch.rand(16, 2, generator=gen) * 2 - 1)
        seen += [obs, info["final_obs"]]
    for batch in seen:
        assert batch.dtype == (torch.float32 if obs_mode == "lidar" else torch.uint8)
        for row in batch.numpy():
            assert space.contains(row)
    if obs_mode == "lidar":
        assert space.shape == (RAYS + 2,)
    else:
        assert space.shape == (3, 64, 64)
        first, _ = env.reset(seed=1)
        assert first[0, :, 44, 32].tolist() == [220, 40, 40]  # the car, fixed in the image
        assert first[0, :, 30, 32].tolist() == [96, 96, 100]  # road ahead of it


def test_discrete_actions_map_to_the_continuous_ones():
    discrete = DrivingVecEnv(5, discrete=True)
    continuous = DrivingVecEnv(5)
    assert discrete.single_action_space == gym.spaces.Discrete(5)
    assert continuous.single_action_space == gym.spaces.Box(-1, 1, (2,), np.float32)
    assert discrete.env_id == "rlbase/DrivingDiscrete-v0"
    discrete.reset(seed=4)
    continuous.reset(seed=4)
    table = torch.tensor(DISCRETE_ACTIONS)
    for step in range(30):
        index = (torch.arange(5) + step // 6) % 5
        a = discrete.step(index)
        b = continuous.step(table[index])
        for x, y in zip(a[:4], b[:4]):
            assert torch.equal(x, y)
    auto = discrete.autopilot()
    assert auto.dtype == torch.int64 and bool(((auto >= 0) & (auto < 5)).all())


# ---------------------------------------------------------------- Gymnasium / SB3 / make_vec_env


@pytest.mark.parametrize("env_id,kwargs", [("rlbase/Driving-v0", {}), ("rlbase/DrivingDiscrete-v0", {}),
                                           ("rlbase/Driving-v0", {"obs_mode": "pixels"})])
def test_checkers(env_id, kwargs):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, **kwargs)
    assert isinstance(env.unwrapped, DrivingEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
    env.close()


def test_single_env_episode_and_render():
    env = gym.make("rlbase/Driving-v0", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (RAYS + 2,) and obs.dtype == np.float32
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert (frame == [220, 40, 40]).all(-1).sum() > 5  # the car is drawn
    _, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], dtype=np.float32))
    assert isinstance(reward, float) and not terminated and not truncated
    assert set(info) >= {"progress", "laps", "speed", "offtrack"}
    assert info["laps"] == 0 and info["speed"] > 0
    vec = DrivingVecEnv(3)
    vec.reset(seed=0)
    assert [f.shape for f in vec.render()] == [(256, 256, 3)] * 3
    env.close()


def test_make_vec_env_and_bad_kwargs():
    env = make_vec_env("rlbase/Driving-v0", 8, CPU)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, RAYS + 2) and env.split == "train"
    obs, rewards, terminated, truncated, info = env.step(torch.zeros(8, 2))
    assert rewards.shape == (8,) and info["laps"].dtype == torch.int64
    env = make_vec_env("rlbase/DrivingDiscrete-v0", 4, CPU, split="eval", env_kwargs={"num_rays": 13})
    assert env.single_action_space.n == 5 and env.single_observation_space.shape == (15,) and env.split == "eval"
    for bad in ({"bogus": 1}, {"track_width": -1.0}, {"obs_mode": "rgb"}, {"num_rays": 0}, {"roughness": 5.0},
                {"laps": 1.5}):
        with pytest.raises(UsageError, match="Driving"):
            make_vec_env("rlbase/Driving-v0", 2, CPU, env_kwargs=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("obs_mode", ["lidar", "pixels"])
def test_step_does_not_sync_on_cuda(obs_mode):
    dev = torch.device("cuda")
    env = DrivingVecEnv(64, dev, obs_mode=obs_mode, max_episode_steps=20)
    env.reset(seed=0)
    actions = torch.rand(30, 64, 2, device=dev) * 2 - 1
    env.step(actions[0])  # first step allocates work buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for a in actions[1:]:  # crashes, time limits and spare refreshes included
            env.step(a)
        env.step(env.autopilot())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
