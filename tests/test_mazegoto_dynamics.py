"""rlbase/MazeGoTo-v0's dynamics: walls block moves, stepping onto the target or a distractor ends
the episode (with its reward), the time limit truncates, an oracle always succeeds and a blind
policy one time in num_objects; autoreset (final observations, fresh episodes) and seeding (the
same episodes on any batch size).

Levels and language: test_mazegoto_levels.py; spaces and construction: test_mazegoto_spaces.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlbase.envs.mazegoto import MazeGoToVecEnv

from tests.gridpaths import MOVES
from tests.mazegotoref import grid_obs, layout_np, path_to


# ---------------------------------------------------------------- dynamics


def test_walls_block_moves():
    env = MazeGoToVecEnv(64, size=6, num_objects=2)
    env.reset(seed=9)
    checked = [0, 0]
    for a, (dr, dc) in enumerate(MOVES):
        lay = layout_np(env)
        before = lay["agent"]
        _, rew, term, trunc, info = env.step(torch.full((64,), a))
        after = layout_np(env)["agent"]
        for i in range(64):
            if term[i]:
                continue  # stepped onto an object (the layout is the next episode's)
            target = before[i] + (dr, dc)
            blocked = not (1 <= target[0] <= 4 and 1 <= target[1] <= 4)
            np.testing.assert_array_equal(after[i], before[i] if blocked else target)
            checked[int(blocked)] += 1
    assert min(checked) > 0  # both cases happened


@pytest.mark.parametrize("goal", ["target", "distractor"])
def test_stepping_onto_objects(goal):
    env = MazeGoToVecEnv(16, num_objects=3)
    env.reset(seed=21)
    lay = layout_np(env)
    j = 0 if goal == "target" else 1
    plans = [path_to(8, lay["agent"][i], lay["objects"][i, j],
                     [p for m, p in enumerate(lay["objects"][i]) if m != j]) for i in range(16)]
    for t in range(max(len(p) for p in plans)):
        obs, rew, term, trunc, info = env.step(torch.tensor([p[t] if t < len(p) else 0 for p in plans]))
        for i, p in enumerate(plans):
            if t < len(p) - 1:
                assert rew[i] == 0 and not term[i] and not trunc[i] and not info["success"][i]
            elif t == len(p) - 1:
                assert term[i] and not trunc[i]
                assert bool(info["success"][i]) == (goal == "target")
                expected = 1 - 0.9 * len(p) / env.max_episode_steps if goal == "target" else 0.0
                assert rew[i].item() == pytest.approx(expected, rel=1e-6)
                assert info["episode_return"][i].item() == pytest.approx(expected, rel=1e-6)
                assert info["episode_length"][i] == len(p)
    assert env.max_episode_steps == 2 * 8 * 8


def test_time_limit_truncates():
    env = MazeGoToVecEnv(16, max_episode_steps=5)
    env.reset(seed=0)
    # Each env steps back and forth between its start and a free neighbour (or into a wall), so
    # it never reaches an object: every episode is truncated after 5 steps.
    lay = layout_np(env)
    plans = []
    for i in range(16):
        objects = {tuple(p) for p in lay["objects"][i]}
        for a, (dr, dc) in enumerate(MOVES):
            q = (lay["agent"][i][0] + dr, lay["agent"][i][1] + dc)
            if q not in objects:
                plans.append((a, a) if not (1 <= q[0] <= 6 and 1 <= q[1] <= 6) else (a, a ^ 1))
                break
    for t in range(1, 16):
        obs, rew, term, trunc, info = env.step(torch.tensor([p[(t - 1) % 2] for p in plans]))
        assert not term.any() and (rew == 0).all()
        assert bool(trunc.all()) == bool(trunc.any()) == (t % 5 == 0)
        if t == 5:
            break  # the next episodes start elsewhere
    assert (env.episodes == 1).all()


def run_policy(env: MazeGoToVecEnv, choose, steps: int, seed: int) -> tuple[int, int, int]:
    """Walk to the object `choose(i, layout)` picks at each episode start, avoiding the others.
    Returns (episodes, successes, truncations)."""
    obs, _ = env.reset(seed=seed)
    plans: dict[int, list[int]] = {}
    episodes = successes = truncations = 0
    size = env.size
    for _ in range(steps):
        lay = layout_np(env)
        act = []
        for i in range(env.num_envs):
            if env.elapsed[i] == 0:
                j = choose(i, lay)
                others = [p for m, p in enumerate(lay["objects"][i]) if m != j]
                plans[i] = path_to(size, lay["agent"][i], lay["objects"][i, j], others)
            act.append(plans[i][int(env.elapsed[i])])
        obs, rew, term, trunc, info = env.step(torch.tensor(act))
        episodes += int((term | trunc).sum())
        successes += int(info["success"].sum())
        truncations += int(trunc.sum())
    return episodes, successes, truncations


def test_oracle_always_succeeds():
    env = MazeGoToVecEnv(32, size=8, num_objects=6)
    episodes, successes, truncations = run_policy(env, lambda i, lay: 0, steps=60, seed=3)
    assert episodes > 200 and successes == episodes and truncations == 0


def test_blind_policy_succeeds_one_time_in_num_objects():
    rng = np.random.default_rng(0)
    env = MazeGoToVecEnv(32, num_objects=3)
    episodes, successes, truncations = run_policy(env, lambda i, lay: int(rng.integers(3)), steps=60, seed=5)
    assert episodes > 300 and truncations == 0
    assert abs(successes / episodes - 1 / 3) < 0.07


# ---------------------------------------------------------------- autoreset and seeding


def test_autoreset_final_obs_and_fresh_episodes():
    num = 32
    env = MazeGoToVecEnv(num, num_objects=3, max_episode_steps=12)
    obs, _ = env.reset(seed=7)
    g = torch.Generator().manual_seed(2)
    ended = terminated = 0
    for _ in range(40):
        prev = layout_np(env)
        prev_mission = obs["mission"].clone()
        obs, rew, term, trunc, info = env.step(torch.randint(0, 4, (num,), generator=g))
        final = info["final_obs"]
        assert isinstance(final, dict) and set(final) == {"image", "mission"}
        start = layout_np(env, env.level_seeds())
        now = layout_np(env)
        for i in range(num):
            if term[i] or trunc[i]:
                ended += 1
                assert torch.equal(final["mission"][i], prev_mission[i])
                fi = final["image"][i].numpy()
                # the ended episode's objects, the agent where it stopped
                np.testing.assert_array_equal(fi[2:], grid_obs(8, prev, i)[2:])
                if term[i]:
                    terminated += 1
                    r, c = np.argwhere(fi[1])[0]
                    assert (prev["objects"][i] == (r, c)).all(1).any()  # on an object
                # obs: the first observation of the next episode (its level seed's start)
                for key in ("agent", "objects", "colours", "types", "template"):
                    np.testing.assert_array_equal(now[key][i], start[key][i])
                np.testing.assert_array_equal(obs["image"][i].numpy(), grid_obs(8, start, i))
            else:
                assert torch.equal(final["image"][i], obs["image"][i])
                assert torch.equal(final["mission"][i], obs["mission"][i])
    assert ended > num and terminated > 0


def test_same_seed_same_episodes_on_any_batch_size():
    steps, seed = 150, 1000
    big = MazeGoToVecEnv(64, size=6, num_objects=2)
    obs, _ = big.reset(seed=seed)
    acts = np.random.default_rng(3).integers(0, 4, size=(steps, 64))
    hist = [({k: v.clone() for k, v in obs.items()}, None)]
    for t in range(steps):
        obs, rew, term, trunc, _ = big.step(torch.from_numpy(acts[t]))
        hist.append(({k: v.clone() for k, v in obs.items()}, torch.stack([rew, term.float(), trunc.float()], 1)))
    assert big.episodes.sum() > 64
    for i in (0, 21, 63):
        one = MazeGoToVecEnv(1, size=6, num_objects=2)
        obs, _ = one.reset(seed=seed + i)
        for t in range(steps + 1):
            if t:
                obs, rew, term, trunc, _ = one.step(torch.from_numpy(acts[t - 1, i:i + 1]))
                assert torch.equal(torch.stack([rew, term.float(), trunc.float()], 1)[0], hist[t][1][i])
            for key in ("image", "mission"):
                assert torch.equal(obs[key][0], hist[t][0][key][i])
