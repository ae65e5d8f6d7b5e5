"""rlbase/Maze-v0: perfect mazes, dynamics, autoreset with pre-generated levels, seeding, spaces."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlbase  # noqa: F401  (registers the rlbase/ ids)
from rlbase.envs import make_vec_env
from rlbase.envs.maze import PALETTE, MazeEnv, MazeVecEnv
from rlbase.errors import UsageError

from tests.gridpaths import MOVES, bfs_actions

CPU = torch.device("cpu")


def assert_perfect(walls: np.ndarray) -> None:
    """A perfect maze: walls on the border and at even-even squares, cells open, and the open
    squares form a tree over the cells (connected, with exactly cells - 1 passages)."""
    size = walls.shape[0]
    k = (size - 1) // 2
    assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
    assert walls[::2, ::2].all() and not walls[1::2, 1::2].any()
    passages = int((~walls).sum()) - k * k
    assert passages == k * k - 1
    seen, todo = {(1, 1)}, [(1, 1)]
    while todo:
        r, c = todo.pop()
        for dr, dc in MOVES:
            q = (r + dr, c + dc)
            if not walls[q] and q not in seen:
                seen.add(q)
                todo.append(q)
    assert len(seen) == k * k + passages  # every open square is reachable


def shortest_actions(walls: np.ndarray, start, goal) -> list[int]:
    """BFS on the host: the actions of the shortest path from `start` to `goal`."""
    return bfs_actions(start, goal, lambda q: not walls[q])


def layout_np(env: MazeVecEnv, seeds=None):
    return tuple(t.cpu().numpy() for t in env.layout(seeds))


def grid_obs(walls, agent, exit_) -> np.ndarray:
    """The grid observation of a layout."""
    obs = np.zeros((3, *walls.shape), dtype=np.uint8)
    obs[0] = walls
    obs[1][tuple(agent)] = 1
    obs[2][tuple(exit_)] = 1
    return obs


def obs_layout(obs: torch.Tensor):
    """(walls, agent (r, c), exit (r, c)) of one grid observation."""
    o = obs.numpy()
    return o[0].astype(bool), np.argwhere(o[1])[0], np.argwhere(o[2])[0]


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("size", list(range(7, 32, 2)))
def test_every_maze_is_perfect(size):
    env = MazeVecEnv(8 if size > 11 else 32, size=size)
    env.reset(seed=size)
    for _ in range(2):
        walls, agent, exit_ = layout_np(env)
        for i in range(env.num_envs):
            assert_perfect(walls[i])
            assert (agent[i] % 2 == 1).all() and (exit_[i] % 2 == 1).all()  # both on cells
            # At least `min_distance` cells apart (Manhattan), so no episode is trivial.
            assert np.abs(agent[i] - exit_[i]).sum() >= 2 * env.min_distance > 0
        env.start_next_episode(env._all)


def test_mazes_are_unbiased_and_a_function_of_the_level_seed():
    env = MazeVecEnv(1, size=11)
    seeds = torch.arange(1500) * 2
    walls, agent, exit_ = layout_np(env, seeds)
    # Every passage square is open in a fair share of the mazes: none always or never carved
    # (binary-tree and sidewinder mazes keep a whole border row or column open).
    rr, cc = np.meshgrid(np.arange(11), np.arange(11), indexing="ij")
    passage = ((rr + cc) % 2 == 1) & (rr > 0) & (rr < 10) & (cc > 0) & (cc < 10)
    freq = (~walls).mean(0)[passage]
    assert freq.min() > 0.3 and freq.max() < 0.9
    assert len({tuple(x) for x in exit_}) == 25 and len({tuple(x) for x in agent}) == 25
    assert len({w.tobytes() for w in walls}) == len(seeds)  # all different
    # Same seed, same level, whatever the batch around it.
    for i in (0, 7, 1499):
        w, a, x = layout_np(env, seeds[[i, 3, i]])
        for j in (0, 2):
            np.testing.assert_array_equal(w[j], walls[i])
            np.testing.assert_array_equal(a[j], agent[i])
            np.testing.assert_array_equal(x[j], exit_[i])


# ---------------------------------------------------------------- dynamics


def test_walls_block_moves_and_open_squares_do_not():
    env = MazeVecEnv(16, size=9)
    obs, _ = env.reset(seed=3)
    checked = [0, 0]
    for a, (dr, dc) in enumerate(MOVES):  # 4 steps: no episode can end (the exit is >= 6 away)
        walls, agent, _ = layout_np(env)
        before = agent.copy()
        obs, _, term, trunc, _ = env.step(torch.full((16,), a))
        assert not (term | trunc).any()
        _, after, _ = layout_np(env)
        for i in range(16):
            target = before[i] + (dr, dc)
            blocked = walls[i][target[0], target[1]]
            np.testing.assert_array_equal(after[i], before[i] if blocked else target)
            _, obs_agent, _ = obs_layout(obs[i])
            np.testing.assert_array_equal(obs_agent, after[i])
            checked[int(blocked)] += 1
    assert min(checked) > 0  # both cases happened


def test_exit_terminates_with_scaled_reward_and_shortest_paths_always_succeed():
    env = MazeVecEnv(8, size=13)
    obs, _ = env.reset(seed=11)
    walls, agent, exit_ = layout_np(env)
    plans = [shortest_actions(walls[i], agent[i], exit_[i]) for i in range(8)]
    assert all(len(p) >= env.refresh_every for p in plans)
    longest = max(len(p) for p in plans)
    done_at = {}
    for t in range(longest):
        act = torch.tensor([p[t] if t < len(p) else 0 for p in plans])
        obs, rew, term, trunc, info = env.step(act)
        for i, p in enumerate(plans):
            if t < len(p) - 1:
                assert rew[i] == 0 and not term[i] and not trunc[i] and not info["success"][i]
            elif t == len(p) - 1:
                assert term[i] and not trunc[i] and info["success"][i]
                expected = 1 - 0.9 * len(p) / env.max_episode_steps
                assert rew[i].item() == pytest.approx(expected, rel=1e-6)
                assert info["episode_return"][i].item() == pytest.approx(expected, rel=1e-6)
                assert info["episode_length"][i] == len(p)
                # final_obs: the agent on the exit; obs: the start of the next level.
                fw, fa, fx = obs_layout(info["final_obs"][i])
                np.testing.assert_array_equal(fa, fx)
                np.testing.assert_array_equal(fw, walls[i])
                level = (v[i] for v in layout_np(env, env.level_seeds()))
                np.testing.assert_array_equal(obs[i].numpy(), grid_obs(*level))
                done_at[i] = t
    assert len(done_at) == 8
    assert env.max_episode_steps == 4 * 13 * 13


def test_time_limit_truncates():
    env = MazeVecEnv(32, size=7, max_episode_steps=3)  # the exit is >= 4 steps away: never reached
    env.reset(seed=0)
    assert env.refresh_every == 3
    g = torch.Generator().manual_seed(0)
    for t in range(1, 10):
        obs, rew, term, trunc, info = env.step(torch.randint(0, 4, (32,), generator=g))
        assert not term.any() and (rew == 0).all()
        assert bool(trunc.all()) == bool(trunc.any()) == (t % 3 == 0)
    assert (env.episodes == 3).all()


def test_random_policy_sometimes_solves_a_small_maze():
    env = MazeVecEnv(64, size=7)
    env.reset(seed=5)
    g = torch.Generator().manual_seed(1)
    solved = 0
    for _ in range(200):
        _, rew, term, _, info = env.step(torch.randint(0, 4, (64,), generator=g))
        solved += int(info["success"].sum())
        assert torch.equal(term, info["success"]) and bool((rew[term] > 0.1).all())
    assert solved > 0


# ---------------------------------------------------------------- autoreset and level slots


@pytest.mark.parametrize("max_steps", [4, 5, None])
def test_autoreset_plays_the_level_of_every_seed(max_steps):
    """Mixed policies (shortest path: episodes as short as possible; random) and time limits as
    short as the shortest episode: after every step, every env plays exactly the level of its
    current level seed, starting where that level starts; final_obs is the ended episode's."""
    num = 24
    env = MazeVecEnv(num, size=7, max_episode_steps=max_steps)
    obs, _ = env.reset(seed=7)
    g = np.random.default_rng(0)
    plans: dict[int, list[int]] = {}
    prev_walls, prev_seeds = layout_np(env)[0], env.level_seeds()
    ended = 0
    for t in range(60):
        walls, agent, exit_ = layout_np(env)
        act = []
        for i in range(num):
            if i % 2 == 0:  # shortest path, replanned at every episode start
                if env.elapsed[i] == 0:
                    plans[i] = shortest_actions(walls[i], agent[i], exit_[i])
                act.append(plans[i][int(env.elapsed[i])])
            else:
                act.append(int(g.integers(4)))
        obs, rew, term, trunc, info = env.step(torch.tensor(act))
        want_walls, want_start, want_exit = layout_np(env, env.level_seeds())
        now_walls, now_agent, now_exit = layout_np(env)
        np.testing.assert_array_equal(now_walls, want_walls)
        np.testing.assert_array_equal(now_exit, want_exit)
        for i in range(num):
            ow, oa, ox = obs_layout(obs[i])
            np.testing.assert_array_equal(ow, now_walls[i])
            np.testing.assert_array_equal(oa, now_agent[i])
            if term[i] or trunc[i]:
                ended += 1
                np.testing.assert_array_equal(now_agent[i], want_start[i])
                fw, fa, fx = obs_layout(info["final_obs"][i])
                np.testing.assert_array_equal(fw, prev_walls[i])
                assert env.level_seeds()[i] != prev_seeds[i]  # a new level (7x7 mazes may repeat)
                if term[i]:
                    np.testing.assert_array_equal(fa, fx)
                if i % 2 == 0 and max_steps is None:
                    assert term[i]  # the shortest path always reaches the exit
            else:
                assert torch.equal(info["final_obs"][i], obs[i])
        prev_walls, prev_seeds = now_walls, env.level_seeds()
    assert ended >= num * 2


def test_start_next_episode_between_steps():
    env = MazeVecEnv(8, size=7)
    env.reset(seed=1)
    mask = torch.tensor([True, False] * 4)
    for _ in range(3):
        env.step(torch.zeros(8, dtype=torch.int64))
        env.start_next_episode(mask)
        np.testing.assert_array_equal(layout_np(env)[0], layout_np(env, env.level_seeds())[0])
    for _ in range(30):
        env.step(torch.randint(0, 4, (8,)))
        np.testing.assert_array_equal(layout_np(env)[0], layout_np(env, env.level_seeds())[0])


def test_same_seed_same_episodes_on_any_batch_size():
    steps, seed = 250, 1000
    big = MazeVecEnv(64, size=7)
    big_obs, _ = big.reset(seed=seed)
    acts = np.random.default_rng(3).integers(0, 4, size=(steps, 64))
    big_hist = [(big_obs.clone(), None)]
    for t in range(steps):
        obs, rew, term, trunc, _ = big.step(torch.from_numpy(acts[t]))
        big_hist.append((obs.clone(), torch.stack([rew, term.float(), trunc.float()], 1)))
    assert big.episodes.sum() > 64
    for i in (0, 21, 63):
        one = MazeVecEnv(1, size=7)
        obs, _ = one.reset(seed=seed + i)
        assert torch.equal(obs[0], big_hist[0][0][i])
        for t in range(steps):
            obs, rew, term, trunc, _ = one.step(torch.from_numpy(acts[t, i:i + 1]))
            assert torch.equal(obs[0], big_hist[t + 1][0][i])
            assert torch.equal(torch.stack([rew, term.float(), trunc.float()], 1)[0], big_hist[t + 1][1][i])


def test_train_and_eval_levels_never_coincide():
    train, evaluation = MazeVecEnv(128, size=11), MazeVecEnv(128, size=11, split="eval")
    train.reset(seed=0)
    evaluation.reset(seed=0)
    train_seeds, eval_seeds, mazes = set(), set(), ([], [])
    for _ in range(4):
        for env, seeds, out in ((train, train_seeds, mazes[0]), (evaluation, eval_seeds, mazes[1])):
            seeds.update(env.level_seeds().tolist())
            out.extend(w.tobytes() for w in layout_np(env)[0])
            env.start_next_episode(env._all)
    assert all(s % 2 == 0 for s in train_seeds) and all(s % 2 == 1 for s in eval_seeds)
    assert len(train_seeds) == len(eval_seeds) == 4 * 128
    assert not set(mazes[0]) & set(mazes[1])


def test_num_levels_restricts_training_levels():
    env = MazeVecEnv(32, size=9, num_levels=3)
    env.reset(seed=0)
    seeds, mazes = set(), set()
    for _ in range(5):
        seeds.update(env.level_seeds().tolist())
        mazes.update(w.tobytes() for w in layout_np(env)[0])
        env.start_next_episode(env._all)
    assert seeds == {0, 2, 4} and len(mazes) == 3
    evaluation = MazeVecEnv(32, size=9, num_levels=3, split="eval")  # eval draws from all levels
    evaluation.reset(seed=0)
    assert len(set(evaluation.level_seeds().tolist())) == 32


# ---------------------------------------------------------------- observations and spaces


@pytest.mark.parametrize("obs_mode", ["grid", "pixels", "ego"])
def test_observation_modes(obs_mode):
    env = MazeVecEnv(8, size=9, obs_mode=obs_mode, view_radius=2)
    space = env.single_observation_space
    expected = {"grid": (3, 9, 9), "pixels": (3, 64, 64), "ego": (3, 5, 5)}[obs_mode]
    assert space.shape == expected and space.dtype == np.uint8
    assert space.high.max() == (255 if obs_mode == "pixels" else 1)
    obs, _ = env.reset(seed=2)
    for _ in range(12):
        assert obs.shape == (8, *expected) and obs.dtype == torch.uint8 and obs.is_contiguous()
        assert all(space.contains(o) for o in obs.numpy())
        walls, agent, exit_ = layout_np(env)
        if obs_mode == "ego":
            padded = np.pad(walls, ((0, 0), (2, 2), (2, 2)), constant_values=True)
            for i in range(8):
                r, c = agent[i] + 2
                np.testing.assert_array_equal(obs[i, 0].numpy(), padded[i, r - 2:r + 3, c - 2:c + 3])
                assert obs[i, 1, 2, 2] == 1 and obs[i, 1].sum() == 1
                rel = exit_[i] - agent[i] + 2
                visible = (0 <= rel).all() and (rel < 5).all()
                assert obs[i, 2].sum() == int(visible)
                if visible:
                    assert obs[i, 2, rel[0], rel[1]] == 1
        elif obs_mode == "grid":
            for i in range(8):
                np.testing.assert_array_equal(obs[i].numpy(), grid_obs(walls[i], agent[i], exit_[i]))
        else:
            src = (np.arange(64) * 9) // 64  # nearest-neighbour upscale of the 9x9 grid
            for i in range(8):
                codes = walls[i].astype(np.int64)
                codes[tuple(exit_[i])] = 2
                codes[tuple(agent[i])] = 3
                frame = obs[i].permute(1, 2, 0).numpy()
                np.testing.assert_array_equal(frame, PALETTE[codes[src[:, None], src[None, :]]])
        obs, *_ = env.step(torch.randint(0, 4, (8,)))


def test_render():
    env = MazeVecEnv(2, size=11)
    env.reset(seed=0)
    frame = env.render_env(1)
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    _, agent, exit_ = layout_np(env)
    for (r, c), colour in ((agent[1], PALETTE[3]), (exit_[1], PALETTE[2])):  # square centres
        np.testing.assert_array_equal(frame[int((r + 0.5) * 256 / 11), int((c + 0.5) * 256 / 11)], colour)
    assert len(env.render()) == 2
    single = gym.make("rlbase/Maze-v0", render_mode="rgb_array", obs_mode="ego")
    single.reset(seed=0)
    assert single.render().shape == (256, 256, 3)


@pytest.mark.parametrize("kwargs", [{}, {"obs_mode": "pixels", "size": 7}, {"obs_mode": "ego", "size": 9}])
def test_gymnasium_and_sb3_env_checkers(kwargs):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("rlbase/Maze-v0", **kwargs)
    assert isinstance(env.unwrapped, MazeEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # SB3 on purpose: 0/1 grids are images whose high is 1, and small ones (< 36x36).
        warnings.filterwarnings("ignore", message=".*upper and lower bounds are not in")
        warnings.filterwarnings("ignore", message=".*minimal resolution for an image")
        check_env(env.unwrapped)
        sb3_check_env(gym.make("rlbase/Maze-v0", **kwargs))


def test_single_env_episodes_follow_the_seed():
    env = gym.make("rlbase/Maze-v0", size=7)
    obs, _ = env.reset(seed=42)
    vec = MazeVecEnv(1, size=7)
    vec_obs, _ = vec.reset(seed=42)
    np.testing.assert_array_equal(obs, vec_obs[0].numpy())
    walls, agent, exit_ = obs_layout(torch.from_numpy(obs))
    for a in shortest_actions(walls, agent, exit_):
        obs, rew, term, trunc, info = env.step(a)
    assert term and not trunc and info["success"] and rew > 0.9
    obs, _ = env.reset()  # the next episode of seed 42
    vec.start_next_episode(vec._all)
    np.testing.assert_array_equal(obs, vec._observe()[0].numpy())


# ---------------------------------------------------------------- construction


def test_make_vec_env_and_bad_kwargs():
    env = make_vec_env("rlbase/Maze-v0", 8, CPU, env_kwargs={"size": 15})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, 3, 15, 15)
    obs, rew, term, trunc, info = env.step(torch.zeros(8, dtype=torch.int64))
    assert rew.dtype == torch.float32 and term.dtype == torch.bool and info["success"].shape == (8,)
    ev = make_vec_env("rlbase/Maze-v0", 4, CPU, split="eval", env_kwargs={"obs_mode": "ego"})
    ev.reset(seed=0)
    assert (ev.level_seeds() % 2 == 1).all()
    for bad, match in [({"bogus": 1}, "bogus"), ({"size": 12}, "odd"), ({"size": 5}, "size"),
                       ({"size": 33}, "size"), ({"obs_mode": "rgb"}, "obs_mode"), ({"size": "11"}, "size"),
                       ({"view_radius": 0}, "view_radius"), ({"max_episode_steps": 0}, "max_episode_steps"),
                       ({"num_levels": -1}, "num_levels")]:
        with pytest.raises(UsageError, match=match):
            make_vec_env("rlbase/Maze-v0", 2, CPU, env_kwargs=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    env = MazeVecEnv(256, "cuda", size=11)
    env.reset(seed=0)
    actions = torch.randint(0, 4, (64, 256), device="cuda")
    env.step(actions[0])  # warm up
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(64):  # crosses several level refreshes and resets
            env.step(actions[t])
        env.start_next_episode(env._all)
        env.step(actions[0])
    finally:
        torch.cuda.set_sync_debug_mode(0)
