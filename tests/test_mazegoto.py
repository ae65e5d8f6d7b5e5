"""rlbase/MazeGoTo-v0: layouts, language split, dynamics, oracle and blind policies, autoreset, seeding, spaces."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.envs import make_vec_env  # importing rlbase.envs registers the rlbase/ ids
from rlbase.envs.instructions import (COLOURS, EVAL_TEMPLATES, HELDOUT_TARGETS, MAX_WORDS, OBJECTS, TOKENIZER,
                                      TRAIN_TEMPLATES, VOCABULARY, instruction_text)
from rlbase.envs.mazegoto import AGENT_CODE, PIXELS, MazeGoToEnv, MazeGoToVecEnv, _pixel_squares, paint
from rlbase.errors import UsageError
from rlbase.tokenizer import words_of

from tests.gridpaths import MOVES, bfs_actions

CPU = torch.device("cpu")


def layout_np(env: MazeGoToVecEnv, seeds=None) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in env.layout(seeds).items()}


def path_to(size: int, start, goal, avoid) -> list[int]:
    """BFS on the host: the actions of a shortest path from `start` to `goal` through the open
    interior, never stepping on a square of `avoid`."""
    blocked = {tuple(int(x) for x in a) for a in avoid}
    return bfs_actions(start, goal, lambda q: 1 <= q[0] < size - 1 and 1 <= q[1] < size - 1 and q not in blocked)


def grid_obs(size: int, lay: dict[str, np.ndarray], i: int) -> np.ndarray:
    """The grid observation of env i of a layout."""
    obs = np.zeros((2 + len(COLOURS) + len(OBJECTS), size, size), dtype=np.uint8)
    obs[0] = 1
    obs[0, 1:-1, 1:-1] = 0
    obs[1][tuple(lay["agent"][i])] = 1
    for (r, c), colour, kind in zip(lay["objects"][i], lay["colours"][i], lay["types"][i]):
        obs[2 + colour, r, c] = 1
        obs[2 + len(COLOURS) + kind, r, c] = 1
    return obs


def pixel_obs(size: int, lay: dict[str, np.ndarray], i: int) -> np.ndarray:
    """The pixels observation of env i, drawn on the host pixel by pixel with `paint`."""
    codes = np.ones((size, size), dtype=np.int64)
    codes[1:-1, 1:-1] = 0
    for (r, c), colour, kind in zip(lay["objects"][i], lay["colours"][i], lay["types"][i]):
        codes[r, c] = 2 + colour * len(OBJECTS) + kind
    codes[tuple(lay["agent"][i])] += AGENT_CODE
    square, frac = _pixel_squares(size, PIXELS)
    pix = codes[square[:, None], square[None, :]].reshape(-1)
    u = np.repeat(frac, PIXELS)
    v = np.tile(frac, PIXELS)
    return paint(pix, u, v).reshape(PIXELS, PIXELS, 3).transpose(2, 0, 1)


# ---------------------------------------------------------------- module API and language


def test_language_api():
    assert len(COLOURS) == 6 and len(OBJECTS) == 3
    words = {w for t in TRAIN_TEMPLATES for w in words_of(t.format(colour="", object=""))}
    assert words | set(COLOURS) | set(OBJECTS) == set(VOCABULARY)
    # Held-out paraphrases bring words training never shows: they read as <unk>.
    eval_words = {w for t in EVAL_TEMPLATES for w in words_of(t.format(colour="", object=""))}
    assert eval_words - words and not (eval_words - words) & set(VOCABULARY)
    assert "<unk>" in TOKENIZER.decode(TOKENIZER.encode(instruction_text(0, 0, 0, "eval"), MAX_WORDS))
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert TOKENIZER.vocab[2:] == list(VOCABULARY)
    assert not set(TRAIN_TEMPLATES) & set(EVAL_TEMPLATES)
    longest = max(len(words_of(instruction_text(0, 0, t, s)))
                  for s, ts in (("train", TRAIN_TEMPLATES), ("eval", EVAL_TEMPLATES)) for t in range(len(ts)))
    assert longest <= MAX_WORDS
    assert instruction_text(2, 0, 0, "train") == "go to the blue ball"
    assert instruction_text(5, 2, 1, "eval") == "reach the grey key"
    with pytest.raises(ValueError, match="split"):
        instruction_text(0, 0, 0, "test")
    # Held-out targets: distinct, and every colour and every type is still a training target.
    assert len(set(HELDOUT_TARGETS)) == len(HELDOUT_TARGETS) == 4
    train = {(c, o) for c in range(6) for o in range(3)} - set(HELDOUT_TARGETS)
    assert {c for c, _ in train} == set(range(6)) and {o for _, o in train} == set(range(3))


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("size,num_objects", [(8, 3), (6, 2), (6, 4), (8, 6), (11, 5), (16, 3)])
def test_layouts_are_valid(size, num_objects):
    env = MazeGoToVecEnv(1, size=size, num_objects=num_objects)
    seeds = torch.arange(2000) * 2
    lay = layout_np(env, seeds)
    agent, objects = lay["agent"], lay["objects"]
    assert objects.shape == (2000, num_objects, 2)
    inside = lambda p: (p >= 1).all(-1) & (p <= size - 2).all(-1)  # noqa: E731
    assert inside(agent).all() and inside(objects).all()
    for i in range(len(seeds)):
        squares = {tuple(p) for p in objects[i]}
        assert len(squares) == num_objects and tuple(agent[i]) not in squares
        combos = {(c, t) for c, t in zip(lay["colours"][i], lay["types"][i])}
        assert len(combos) == num_objects
    # All objects of an episode on one sub-lattice (rows of one parity, columns of one parity).
    parity = objects % 2
    assert (parity == parity[:, :1]).all()
    # Every interior square is used, by objects and by the agent.
    n = (size - 2) ** 2
    assert len({tuple(p) for p in objects.reshape(-1, 2)}) == n
    assert len({tuple(p) for p in agent}) == n
    # Distractors are uniform among the 17 other combinations, 7 of which share the target's colour
    # or type: some distractor shares one with probability 1 - C(10, k - 1) / C(17, k - 1).
    share = ((lay["colours"][:, 1:] == lay["colours"][:, :1]) | (lay["types"][:, 1:] == lay["types"][:, :1])).any(1)
    assert share.mean() == pytest.approx(1 - math.comb(10, num_objects - 1) / math.comb(17, num_objects - 1), abs=0.04)


def test_choices_are_roughly_uniform():
    env = MazeGoToVecEnv(1, split="eval")  # targets among all 18 combinations
    lay = layout_np(env, torch.arange(9000) * 2 + 1)
    target = lay["colours"][:, 0] * 3 + lay["types"][:, 0]
    counts = np.bincount(target, minlength=18)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected
    templates = np.bincount(lay["template"], minlength=3)
    assert templates.min() > 2800 and templates.max() < 3200
    distractors = np.bincount((lay["colours"][:, 1:] * 3 + lay["types"][:, 1:]).reshape(-1), minlength=18)
    assert distractors.min() > 800 and distractors.max() < 1200  # 1000 expected


def test_observation_matches_the_layout_and_mission_names_the_target():
    env = MazeGoToVecEnv(32)
    obs, _ = env.reset(seed=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        lay = layout_np(env)
        for i in range(32):
            np.testing.assert_array_equal(obs["image"][i].numpy(), grid_obs(8, lay, i))
            text = TOKENIZER.decode(obs["mission"][i])
            assert text == env.instruction(i)
            colour, kind = lay["colours"][i, 0], lay["types"][i, 0]
            assert text == instruction_text(colour, kind, lay["template"][i], "train")
            # The named object is present, exactly once (combinations are distinct).
            words = text.split()
            named = [j for j in range(env.num_objects)
                     if COLOURS[lay["colours"][i, j]] in words and OBJECTS[lay["types"][i, j]] in words]
            assert named == [0]
        obs, *_ = env.step(torch.randint(0, 4, (32,), generator=g))


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


# ---------------------------------------------------------------- language split


def test_train_split_never_uses_eval_templates_or_heldout_targets():
    env = MazeGoToVecEnv(1)
    lay = layout_np(env, torch.arange(5000) * 2)
    targets = set(zip(lay["colours"][:, 0], lay["types"][:, 0]))
    assert len(targets) == 14 and not targets & set(HELDOUT_TARGETS)
    distractors = set(zip(lay["colours"][:, 1:].reshape(-1), lay["types"][:, 1:].reshape(-1)))
    assert set(HELDOUT_TARGETS) <= distractors  # held out as targets only
    assert set(lay["template"]) == set(range(len(TRAIN_TEMPLATES)))
    # Through the env: missions of many episodes are train-template instructions.
    env = MazeGoToVecEnv(64, num_levels=0)
    obs, _ = env.reset(seed=0)
    train_texts = {instruction_text(c, o, t, "train") for c in range(6) for o in range(3)
                   for t in range(len(TRAIN_TEMPLATES)) if (c, o) not in HELDOUT_TARGETS}
    for _ in range(10):
        assert {TOKENIZER.decode(m) for m in obs["mission"]} <= train_texts
        env.start_next_episode(env._all)
        obs = env._observe()


@pytest.mark.parametrize("eval_targets", ["all", "heldout"])
def test_eval_split_uses_only_eval_templates(eval_targets):
    env = MazeGoToVecEnv(1, split="eval", eval_targets=eval_targets)
    lay = layout_np(env, torch.arange(3000) * 2 + 1)
    targets = set(zip(lay["colours"][:, 0], lay["types"][:, 0]))
    every = {(c, o) for c in range(6) for o in range(3)}
    assert targets == (set(HELDOUT_TARGETS) if eval_targets == "heldout" else every)
    assert set(lay["template"]) == set(range(len(EVAL_TEMPLATES)))
    vec = MazeGoToVecEnv(64, split="eval", eval_targets=eval_targets)
    obs, _ = vec.reset(seed=0)
    assert (vec.level_seeds() % 2 == 1).all()
    as_read = lambda text: TOKENIZER.decode(TOKENIZER.encode(text, MAX_WORDS))  # noqa: E731 (unseen verbs: <unk>)
    eval_texts = {as_read(instruction_text(c, o, t, "eval")) for c in range(6) for o in range(3) for t in range(3)}
    assert {TOKENIZER.decode(m) for m in obs["mission"]} <= eval_texts
    assert all(as_read(vec.instruction(i)) == TOKENIZER.decode(obs["mission"][i]) for i in range(64))


def test_num_levels_restricts_training_episodes():
    env = MazeGoToVecEnv(32, num_levels=3)
    env.reset(seed=0)
    seen = set()
    for _ in range(5):
        lay = layout_np(env)
        seen.update((tuple(lay["agent"][i]), lay["objects"][i].tobytes(), env.instruction(i)) for i in range(32))
        env.start_next_episode(env._all)
    assert len(seen) == 3


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
