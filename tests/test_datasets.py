"""rlbase.datasets: shapes and spaces, labels against independent host computations, splits, determinism."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch

from rlbase.datasets import (TASKS, DatasetError, curvature_ahead, driving_targets, exit_sectors, key_base,
                             make_dataset, place_cars)
from rlbase.envs.driving import DrivingVecEnv
from rlbase.envs.maze import MazeVecEnv

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


def bfs_distances(walls: np.ndarray, goal: tuple[int, int]) -> dict[tuple[int, int], int]:
    """Host BFS: steps from every open square to `goal`."""
    dist, queue = {goal: 0}, deque([goal])
    while queue:
        p = queue.popleft()
        for dr, dc in MOVES:
            q = (p[0] + dr, p[1] + dc)
            if not walls[q] and q not in dist:
                dist[q] = dist[p] + 1
                queue.append(q)
    return dist


def where(channel: np.ndarray) -> tuple[int, int]:
    (r,), (c,) = np.nonzero(channel)
    return int(r), int(c)


@pytest.mark.parametrize("task, env_kwargs, shape, dtype, num_classes", [
    ("maze-action", None, (3, 64, 64), torch.uint8, 4),
    ("maze-position", {"obs_mode": "grid", "size": 9}, (3, 9, 9), torch.uint8, 81),
    ("maze-exit-direction", {"obs_mode": "ego", "view_radius": 2}, (3, 5, 5), torch.uint8, 8),
    ("driving-geometry", None, (3, 64, 64), torch.uint8, None),
    ("driving-geometry", {"obs_mode": "lidar", "num_rays": 5}, (7,), torch.float32, None),
    ("digits", None, (1, 40, 40), torch.uint8, 10),
])
def test_shapes_dtypes_and_spaces(task, env_kwargs, shape, dtype, num_classes):
    data = make_dataset(task, "train", 24, seed=1, env_kwargs=env_kwargs)
    assert len(data) == 24 and data.inputs.shape == (24,) + shape and data.inputs.dtype == dtype
    assert data.observation_space.shape == shape and data.observation_space.contains(data.inputs[0].numpy())
    assert data.num_classes == num_classes
    if num_classes is None:
        assert data.kind == "regression" and data.targets.shape == (24, 3) and data.targets.dtype == torch.float32
        assert len(data.target_names) == 3 and torch.isfinite(data.targets).all()
    else:
        assert data.kind == "classification" and data.targets.shape == (24,) and data.targets.dtype == torch.int64
        assert len(data.target_names) == num_classes and 0 <= data.targets.min() <= data.targets.max() < num_classes
    if task != "digits":  # exactly the env's space, so a pretrained backbone loads into an agent on that env
        cls = MazeVecEnv if task.startswith("maze") else DrivingVecEnv
        defaults = {"obs_mode": "pixels"} if task.startswith("driving") else {"obs_mode": "pixels", "size": 11}
        env = cls(1, **{**defaults, **(env_kwargs or {})})
        assert data.observation_space == env.single_observation_space
        assert data.levels.shape == (24,)


@pytest.mark.parametrize("size", [7, 11])
def test_maze_action_is_the_shortest_path_step(size):
    data = make_dataset("maze-action", "train", 120, seed=5, env_kwargs={"obs_mode": "grid", "size": size})
    obs = data.inputs.numpy()
    for x, action in zip(obs, data.targets.tolist()):
        walls, agent, goal = x[0].astype(bool), where(x[1]), where(x[2])
        dist = bfs_distances(walls, goal)
        assert agent != goal
        nearer = [a for a, (dr, dc) in enumerate(MOVES) if dist.get((agent[0] + dr, agent[1] + dc), 1e9) < dist[agent]]
        assert nearer == [action]  # unique in a perfect maze


def test_maze_action_stepping_the_real_env_gets_nearer():
    """Rebuild the dataset's states in a real env (sample i is keyed base + i), step the labels."""
    n, seed = 64, 9
    data = make_dataset("maze-action", "eval", n, seed=seed, env_kwargs={"obs_mode": "grid"})
    env = MazeVecEnv(n, split="eval", autoreset=False, obs_mode="grid")
    env.reset(seed=key_base(seed))
    agent = data.inputs[:, 1].reshape(n, -1).argmax(1)
    env.pos = agent  # grid mode: no padding, flat positions in the size x size grid
    assert torch.equal(env._observe(), data.inputs)
    obs, _, terminated, _, _ = env.step(data.targets)
    for before, after, done in zip(data.inputs.numpy(), obs.numpy(), terminated.tolist()):
        dist = bfs_distances(before[0].astype(bool), where(before[2]))
        assert dist[where(after[1])] == dist[where(before[1])] - 1
        assert done == (dist[where(before[1])] == 1)


def test_maze_position_labels_match_the_agent_channel():
    data = make_dataset("maze-position", "train", 200, seed=2, env_kwargs={"obs_mode": "grid"})
    obs = data.inputs
    assert torch.equal(obs[:, 1].reshape(200, -1).argmax(1), data.targets)
    assert (obs[:, 1].reshape(200, -1).sum(1) == 1).all()
    assert not obs[:, 0].reshape(200, -1).gather(1, data.targets[:, None]).any()  # never on a wall
    assert not obs[:, 2].reshape(200, -1).gather(1, data.targets[:, None]).any()  # never on the exit
    assert data.target_names[data.targets[0]] == f"r{data.targets[0] // 11}c{data.targets[0] % 11}"


def test_maze_exit_direction_matches_positions():
    data = make_dataset("maze-exit-direction", "train", 200, seed=3, env_kwargs={"obs_mode": "grid"})
    for x, label in zip(data.inputs.numpy(), data.targets.tolist()):
        (ar, ac), (er, ec) = where(x[1]), where(x[2])
        degrees = math.degrees(math.atan2(ar - er, ec - ac)) % 360  # north = up = smaller rows
        assert label == int((degrees + 22.5) // 45) % 8
    agent = torch.tensor([[5, 5]] * 5)
    exits = torch.tensor([[5, 9], [1, 5], [9, 1], [6, 9], [4, 3]])
    assert exit_sectors(agent, exits).tolist() == [0, 2, 5, 0, 3]  # east, north, south-west, east, north-west
    assert data.target_names[:3] == ["east", "north-east", "north"]


def tangent_and_point(env: DrivingVecEnv, theta: torch.Tensor):
    r, slope = env.centre_line(env.coef, theta)
    point = torch.stack((r * torch.cos(theta), r * torch.sin(theta)), 1)
    # d/dtheta of (r cos, r sin)
    tangent = torch.stack((slope * torch.cos(theta) - r * torch.sin(theta), slope * torch.sin(theta) + r * torch.cos(theta)), 1)
    return point, tangent / tangent.norm(dim=1, keepdim=True)


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def test_driving_targets_zero_on_the_centre_line_and_signs():
    env = DrivingVecEnv(16, obs_mode="lidar", autoreset=False)
    env.reset(seed=4)
    theta = torch.linspace(0.0, 6.0, 16)
    zero = torch.zeros(16)
    place_cars(env, theta, zero, zero, zero)
    targets = driving_targets(env)
    assert targets[:, :2].abs().max() < 1e-4
    assert env.track_state()["offset"].abs().max() < 1e-4

    # Left of the track direction is positive, for both the offset and the heading.
    place_cars(env, theta, torch.full((16,), 0.5), torch.full((16,), 0.3), torch.full((16,), 5.0))
    targets = driving_targets(env)
    assert torch.allclose(targets[:, 0], torch.full((16,), 0.3), atol=1e-4)
    assert torch.allclose(targets[:, 1], torch.full((16,), 0.5), atol=1e-4)
    point, tangent = tangent_and_point(env, theta)
    x, y, heading, speed = env.car[:4]
    assert (cross(tangent, torch.stack((x, y), 1) - point) > 0).all()  # the car is left of the centre line
    assert (cross(tangent, torch.stack((torch.cos(heading), torch.sin(heading)), 1)) > 0).all()  # points left
    obs = env._observe()
    assert torch.allclose(obs[:, -1], targets[:, 0] / math.pi, atol=1e-4)  # the env's own heading feature
    assert torch.allclose(obs[:, -2], speed / env.max_speed)


def test_driving_curvature_against_a_dense_polyline():
    env = DrivingVecEnv(8, obs_mode="lidar", autoreset=False)
    env.reset(seed=11)
    theta = torch.linspace(0.3, 5.9, 8)
    got = curvature_ahead(env, theta)
    r0, _ = env.centre_line(env.coef, theta)
    for i in range(8):  # total turn / length of the stretch, from 4001 centre-line points
        th = theta[i] + torch.linspace(0.0, 1.0, 4001, dtype=torch.float64) * (15.0 / float(r0[i]))
        coef = env.coef[:, i].double()
        r = 25.0 + sum(coef[j] * torch.cos(k * th) + coef[j + 3] * torch.sin(k * th) for j, k in enumerate((2, 3, 4)))
        xy = torch.stack((r * torch.cos(th), r * torch.sin(th)), 1).numpy()
        seg = np.diff(xy, axis=0)
        turn = np.diff(np.unwrap(np.arctan2(seg[:, 1], seg[:, 0]))).sum()
        expected = turn / np.linalg.norm(seg, axis=1).sum() * 2.0 * 25.0
        assert abs(float(got[i]) - expected) < 0.01 * max(1.0, abs(expected))
    flat = DrivingVecEnv(4, obs_mode="lidar", autoreset=False, roughness=0.0)
    flat.reset(seed=0)
    assert torch.allclose(curvature_ahead(flat, torch.rand(4) * 6), torch.full((4,), 2.0), atol=1e-4)  # a circle


def test_driving_dataset_is_on_the_road_and_matches_the_lidar_heading():
    data = make_dataset("driving-geometry", "train", 200, seed=0, env_kwargs={"obs_mode": "lidar"})
    heading, lateral, _ = data.targets.t()
    assert heading.abs().max() <= math.pi / 4 + 1e-4 and lateral.abs().max() <= 0.8 + 1e-4
    assert heading.min() < -0.5 and heading.max() > 0.5 and lateral.min() < -0.5 and lateral.max() > 0.5
    assert torch.allclose(data.inputs[:, -1], heading / math.pi, atol=1e-4)
    assert (data.inputs[:, :-2].max(1).values > 0).all()  # lidar reads the road (not all 0 = off the track)


@pytest.mark.parametrize("task", ["maze-action", "driving-geometry"])
def test_train_and_eval_use_different_levels(task):
    train = make_dataset(task, "train", 32, seed=0)
    held_out = make_dataset(task, "eval", 32, seed=0)
    assert (train.levels % 2 == 0).all() and (held_out.levels % 2 == 1).all()
    assert not torch.equal(train.inputs, held_out.inputs)


def test_digits_splits():
    train = make_dataset("digits", "train", 0, seed=0)
    held_out = make_dataset("digits", "eval", None, seed=0)
    assert len(train) == 1437 and len(held_out) == 360 and train.num_classes == 10
    assert set(train.targets.tolist()) == set(range(10)) == set(held_out.targets.tolist())
    assert train.inputs.max() == 255 and train.inputs.min() == 0
    assert torch.equal(train.inputs[:, :, ::5, ::5].repeat_interleave(5, 2).repeat_interleave(5, 3), train.inputs)
    # Disjoint and complete: the two splits together are the whole data set, each image once.
    from sklearn.datasets import load_digits

    full = load_digits()
    def key(images, labels):
        return sorted(zip(map(bytes, images.reshape(len(images), -1)), labels))
    everything = torch.from_numpy(full.images * (255 / 16)).round().to(torch.uint8)
    assert key(torch.cat((train.inputs, held_out.inputs))[:, 0, ::5, ::5].numpy(),
               torch.cat((train.targets, held_out.targets)).tolist()) == key(everything.numpy(), full.target.tolist())
    again = make_dataset("digits", "train", 100, seed=0)
    assert torch.equal(again.inputs, train.inputs[:100]) and torch.equal(again.targets, train.targets[:100])
    assert not torch.equal(make_dataset("digits", "train", 100, seed=1).targets, again.targets)


def test_determinism_and_batch_size_independence():
    kwargs = {"obs_mode": "grid", "size": 9}
    a = make_dataset("maze-exit-direction", "train", 50, seed=7, env_kwargs=kwargs)
    b = make_dataset("maze-exit-direction", "train", 50, seed=7, env_kwargs=kwargs, batch_size=16)
    prefix = make_dataset("maze-exit-direction", "train", 20, seed=7, env_kwargs=kwargs)
    other = make_dataset("maze-exit-direction", "train", 50, seed=8, env_kwargs=kwargs)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) and torch.equal(a.levels, b.levels)
    assert torch.equal(prefix.inputs, a.inputs[:20]) and torch.equal(prefix.targets, a.targets[:20])
    assert not torch.equal(other.inputs, a.inputs)
    c = make_dataset("driving-geometry", "eval", 40, seed=3, batch_size=16)
    d = make_dataset("driving-geometry", "eval", 40, seed=3)
    assert torch.equal(c.inputs, d.inputs) and torch.allclose(c.targets, d.targets, atol=1e-5)  # SIMD tails round apart
    e = make_dataset("driving-geometry", "eval", 40, seed=3)
    assert torch.equal(e.inputs, d.inputs) and torch.equal(e.targets, d.targets)


@pytest.mark.parametrize("args, kwargs, match", [
    (("maze-colour", "train", 10, 0), {}, "unknown dataset task"),
    (("maze-action", "test", 10, 0), {}, "split must be"),
    (("maze-action", "train", 0, 0), {}, "num_samples"),
    (("maze-action", "train", 10, -1), {}, "seed"),
    (("maze-action", "train", 10, 0), {"env_kwargs": {"size": 8}}, "size must be odd"),
    (("maze-action", "train", 10, 0), {"env_kwargs": {"colour": "red"}}, "bad env_kwargs"),
    (("maze-action", "train", 10, 0), {"env_kwargs": {"split": "eval"}}, "may not set split"),
    (("driving-geometry", "train", 10, 0), {"env_kwargs": {"obs_mode": "grid"}}, "obs_mode"),
    (("digits", "train", 10, 0), {"env_kwargs": {"size": 9}}, "no env_kwargs"),
])
def test_bad_arguments_raise_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(*args, **kwargs)
    with pytest.raises(DatasetError):
        make_dataset(*args, **kwargs)


def test_tasks_are_described():
    assert set(TASKS) == {"maze-action", "maze-position", "maze-exit-direction", "driving-geometry", "digits",
                          "goto-text"}
    assert all(isinstance(text, str) and text for text in TASKS.values())


def test_goto_text_labels_name_what_the_instruction_says():
    from rlbase.tokenizer import UNK_ID
    from rlbase.envs import instructions as goto

    train = make_dataset("goto-text", "train", 500, 0)
    held = make_dataset("goto-text", "eval", 200, 0)
    for data in (train, held):
        assert data.inputs.shape[1] == goto.MAX_WORDS and data.inputs.dtype == torch.int64
        assert data.observation_space == goto_mission_space()
        assert data.num_classes == [len(goto.COLOURS), len(goto.OBJECTS)] and data.tokenizer == goto.TOKENIZER
        for ids, (colour, obj) in zip(data.inputs.tolist(), data.targets.tolist()):
            words = goto.TOKENIZER.decode(ids).split()
            assert words[-2:] == [goto.COLOURS[colour], goto.OBJECTS[obj]]  # content words are never dropped
    # Held-out paraphrases: their verbs are outside the vocabulary; training drops some function words.
    assert (held.inputs == UNK_ID).any(dim=1).all()
    assert 0 < (train.inputs == UNK_ID).any(dim=1).float().mean() < 1
    assert torch.equal(make_dataset("goto-text", "train", 500, 0).inputs, train.inputs)


def goto_mission_space():
    from rlbase.envs.mazegoto import MazeGoToVecEnv

    return MazeGoToVecEnv(1).single_observation_space["mission"]
