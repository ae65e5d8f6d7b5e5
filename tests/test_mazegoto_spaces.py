"""rlbase/MazeGoTo-v0's spaces and construction: Dict observation spaces and the grid and pixel
observations in them, rendering, the Gymnasium and SB3 env checkers, the single (Gymnasium) env
following the seed, make_vec_env with good and bad env kwargs, no host sync on CUDA, and the blank
mission.

Levels and language: test_mazegoto_levels.py; dynamics, autoreset and seeding:
test_mazegoto_dynamics.py.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.envs import make_vec_env  # importing rlbase.envs registers the rlbase/ ids
from rlbase.envs.instructions import MAX_WORDS, TOKENIZER
from rlbase.envs.mazegoto import MazeGoToEnv, MazeGoToVecEnv
from rlbase.errors import UsageError

from tests.mazegotoref import grid_obs, layout_np, path_to, pixel_obs

CPU = torch.device("cpu")


# ---------------------------------------------------------------- observations, spaces, checkers


@pytest.mark.parametrize("obs_mode", ["grid", "pixels"])
def test_spaces_and_observations(obs_mode):
    size = 7
    env = MazeGoToVecEnv(8, size=size, obs_mode=obs_mode, num_objects=4)
    space = env.single_observation_space
    assert isinstance(space, gym.spaces.Dict) and set(space.spaces) == {"image", "mission"}
    image_shape = (11, size, size) if obs_mode == "grid" else (3, 64, 64)
    assert space["image"].shape == image_shape and space["image"].dtype == np.uint8
    assert space["image"].high.max() == (1 if obs_mode == "grid" else 255)
    assert space["mission"].shape == (MAX_WORDS,) and space["mission"].dtype == np.int64
    assert space["mission"].high.max() == TOKENIZER.vocab_size - 1
    assert env.single_action_space == gym.spaces.Discrete(4)
    obs, _ = env.reset(seed=2)
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        assert obs["image"].shape == (8, *image_shape) and obs["image"].dtype == torch.uint8
        assert obs["mission"].shape == (8, MAX_WORDS) and obs["mission"].dtype == torch.int64
        assert obs["image"].is_contiguous()
        for i in range(8):
            assert space.contains({k: v[i].numpy() for k, v in obs.items()})
        lay = layout_np(env)
        for i in range(8):
            want = grid_obs(size, lay, i) if obs_mode == "grid" else pixel_obs(size, lay, i)
            np.testing.assert_array_equal(obs["image"][i].numpy(), want)
        obs, _, _, _, info = env.step(torch.randint(0, 4, (8,), generator=g))
        # final observations of terminated episodes show the agent on the object
        final = info["final_obs"]["image"]
        assert final.shape == (8, *image_shape)


def test_render():
    env = MazeGoToVecEnv(2)
    env.reset(seed=0)
    frame = env.render_env(1)
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert len(env.render()) == 2
    lay = layout_np(env)
    r, c = lay["objects"][1, 0]
    centre = frame[int((r + 0.5) * 256 / 8), int((c + 0.5) * 256 / 8)]
    if lay["types"][1, 0] == 0:  # a ball is filled at its centre
        np.testing.assert_array_equal(centre, [[220, 50, 50], [50, 170, 70], [50, 100, 230], [150, 70, 200],
                                               [235, 200, 30], [130, 130, 130]][lay["colours"][1, 0]])
    single = gym.make("rlbase/MazeGoTo-v0", render_mode="rgb_array", obs_mode="pixels")
    single.reset(seed=0)
    assert single.render().shape == (256, 256, 3)


@pytest.mark.parametrize("kwargs", [{}, {"obs_mode": "pixels"}, {"size": 6, "num_objects": 2, "split": "eval"}])
def test_gymnasium_and_sb3_env_checkers(kwargs):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("rlbase/MazeGoTo-v0", render_mode="rgb_array", **kwargs)
    assert isinstance(env.unwrapped, MazeGoToEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # SB3 on purpose: 0/1 grids are images whose high is 1, and small ones (< 36x36); its
        # channel heuristic (smallest axis) misreads 11 channels over 8x8 squares, but SB3's
        # policies only treat [0, 255] boxes as images, so the grid stays a plain vector there.
        warnings.filterwarnings("ignore", message=".*upper and lower bounds are not in")
        warnings.filterwarnings("ignore", message=".*minimal resolution for an image")
        warnings.filterwarnings("ignore", message=".*Treating image space as channels-last")
        check_env(env.unwrapped)
        sb3_check_env(gym.make("rlbase/MazeGoTo-v0", render_mode="rgb_array", **kwargs))


def test_single_env_follows_the_seed_and_reports_the_mission():
    env = gym.make("rlbase/MazeGoTo-v0")
    obs, info = env.reset(seed=42)
    vec = MazeGoToVecEnv(1)
    vec_obs, _ = vec.reset(seed=42)
    assert set(obs) == {"image", "mission"} and obs["mission"].dtype == np.int64
    for key in obs:
        np.testing.assert_array_equal(obs[key], vec_obs[key][0].numpy())
    assert info["mission"] == vec.instruction(0) == TOKENIZER.decode(obs["mission"])
    lay = layout_np(vec)
    for a in path_to(8, lay["agent"][0], lay["objects"][0, 0], lay["objects"][0, 1:]):
        obs, rew, term, trunc, info = env.step(a)
    assert term and not trunc and info["success"] is True and rew > 0.8
    assert info["mission"] == vec.instruction(0)
    obs, info = env.reset()  # the next episode of seed 42
    vec.start_next_episode(vec._all)
    np.testing.assert_array_equal(obs["image"], vec._observe()["image"][0].numpy())
    assert info["mission"] == vec.instruction(0)


# ---------------------------------------------------------------- construction


def test_make_vec_env_and_bad_kwargs():
    env = make_vec_env("rlbase/MazeGoTo-v0", 8, CPU, env_kwargs={"size": 10, "num_objects": 5})
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (8, 11, 10, 10) and obs["mission"].shape == (8, MAX_WORDS)
    obs, rew, term, trunc, info = env.step(torch.zeros(8, dtype=torch.int64))
    assert rew.dtype == torch.float32 and term.dtype == torch.bool and info["success"].shape == (8,)
    ev = make_vec_env("rlbase/MazeGoTo-v0", 4, CPU, split="eval", env_kwargs={"eval_targets": "heldout"})
    ev.reset(seed=0)
    assert (ev.level_seeds() % 2 == 1).all()
    for bad, match in [({"bogus": 1}, "bogus"), ({"size": 5}, "size"), ({"size": 17}, "size"),
                       ({"size": "8"}, "size"), ({"num_objects": 1}, "num_objects"),
                       ({"num_objects": 7}, "num_objects"), ({"num_objects": 6, "size": 7}, "size >= 8"),
                       ({"obs_mode": "rgb"}, "obs_mode"), ({"eval_targets": "some"}, "eval_targets"),
                       ({"max_episode_steps": 0}, "max_episode_steps"), ({"num_levels": -1}, "num_levels")]:
        with pytest.raises(UsageError, match=match):
            make_vec_env("rlbase/MazeGoTo-v0", 2, CPU, env_kwargs=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("obs_mode", ["grid", "pixels"])
def test_no_host_sync_on_cuda(obs_mode):
    env = MazeGoToVecEnv(256, "cuda", obs_mode=obs_mode)
    env.reset(seed=0)
    actions = torch.randint(0, 4, (64, 256), device="cuda")
    env.step(actions[0])  # warm up
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(64):
            env.step(actions[t])
        env.start_next_episode(env._all)
        env.step(actions[0])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cpu = MazeGoToVecEnv(256, obs_mode=obs_mode)
    cpu.reset(seed=0)
    env.reset(seed=0)
    for t in range(16):  # the same episodes on both devices
        a, b = cpu.step(actions[t].cpu()), env.step(actions[t])
        for key in ("image", "mission"):
            assert torch.equal(a[0][key], b[0][key].cpu())


def test_blank_mission_hides_the_instruction_but_not_the_room():
    from rlbase.envs.mazegoto import MazeGoToVecEnv

    plain, blank = MazeGoToVecEnv(16), MazeGoToVecEnv(16, blank_mission=True)
    obs, _ = plain.reset(seed=3)
    blank_obs, _ = blank.reset(seed=3)
    assert (obs["mission"] != 0).any(dim=1).all()
    assert (blank_obs["mission"] == 0).all()
    assert torch.equal(obs["image"], blank_obs["image"])  # same levels, same targets
    with pytest.raises(ValueError, match="blank_mission"):
        MazeGoToVecEnv(2, blank_mission="yes")
