"""Labelled vision datasets that rlbase generates itself, for supervised pretraining of perception
backbones (`rlbase pretrain`): a backbone that has learnt to read a maze or a road before RL starts.

`make_dataset(task, split, num_samples, seed)` returns a `Dataset` of inputs and targets; `TASKS`
lists the tasks. Env tasks render their inputs with the native env itself (`MazeVecEnv`,
`DrivingVecEnv`, batched on the device), so `Dataset.observation_space` is exactly the env's
`single_observation_space` and a pretrained backbone loads into an agent on that env.

States. Rather than driving a policy, the agent (or car) is placed directly, which covers the state
space evenly and costs one observation per sample:
- maze: the agent sits on a uniformly random open square (cell or passage) other than the exit, of
  the level at the start of an episode;
- driving: the car sits at a uniform polar angle of the track (progress, close to uniform in arc
  length), a lateral offset uniform within +-`MAX_LATERAL` half-widths, a heading error uniform
  within +-45 degrees and a speed uniform in [0, max_speed].

Splits. `split="train"` samples the env's train levels, `split="eval"` its held-out eval levels
(the other half of the level-seed space), so validation measures generalisation to unseen mazes and
tracks. `Dataset.levels` holds the level seed of every sample.

Determinism. The same arguments give bitwise the same tensors. Sample `i` is a function of
(task, split, seed, env_kwargs, i) alone: its env is seeded `base(seed) + i` (counter-based
randomness, see `rlbase.envs.native`), so a smaller `num_samples` gives a prefix of a larger one and
`batch_size` changes nothing but float rounding (vectorised and scalar kernels may differ in the last
bit on a batch's tail: driving images and maze data stay identical, driving targets within ~1e-6).
The digits split is a permutation seeded by `seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs import instructions as language
from rlbase.envs.driving import DrivingVecEnv
from rlbase.envs.maze import MazeVecEnv
from rlbase.envs.native import SPLITS, check_int, random_bits, random_uniform
from rlbase.errors import UsageError
from rlbase.tokenizer import PAD_ID, UNK_ID

TASKS: dict[str, str] = {
    "maze-action": "Maze-v0 views -> the shortest-path action to the exit (4 classes: up, down, left, right)",
    "maze-position": "Maze-v0 views -> the agent's square, row * size + col (size**2 classes)",
    "maze-exit-direction": "Maze-v0 views -> the compass sector of the exit seen from the agent (8 classes, E first, "
                           "counter-clockwise)",
    "driving-geometry": "Driving-v0 views -> heading error (rad), lateral offset (half-widths, + = left), "
                        "curvature of the road ahead (x 2 track_radius)",
    "digits": "scikit-learn's 8x8 handwritten digits as (1, 40, 40) uint8 images -> the digit (10 classes)",
    "goto-text": "MazeGoTo-v0 instructions (token ids) -> the colour and the object they name (two heads); "
                 "validated on held-out paraphrases",
}

BATCH_SIZE = 4096  # envs per generation batch
STREAM_BASE = 0xDA7A  # counter-based stream: the key base of a dataset seed
STREAM_PLACE = 0x91AC  # stream of the agent / car placement

MAZE_DEFAULTS: dict[str, Any] = {"obs_mode": "pixels", "size": 11}
DRIVING_DEFAULTS: dict[str, Any] = {"obs_mode": "pixels"}
# Keywords the dataset sets itself (the rest go to the env's constructor).
RESERVED_KWARGS = ("num_envs", "device", "split", "autoreset")

ACTION_NAMES = ["up", "down", "left", "right"]
SECTOR_NAMES = ["east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east"]
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (row, col) steps of the maze actions

MAX_LATERAL = 0.8  # largest |lateral offset| of placed cars, in half-widths (on the road with a margin)
MAX_HEADING_ERROR = 0.25 * math.pi
CURVE_LOOKAHEAD = 15.0  # world units of road ahead over which the curvature is averaged (the view sees 22)
CURVE_POINTS = 9  # centre-line samples of that stretch (Simpson's rule for its length)
CURVE_SCALE = 2.0  # curvature target unit: 1 / (CURVE_SCALE * track_radius), for a variance of about 1
DRIVING_TARGETS = ["heading_error", "lateral_offset", "curvature_ahead"]

DIGIT_SCALE = 5  # 8x8 -> 40x40: every vision backbone (the Nature CNN needs >= 36 px) can read them
DIGIT_TRAIN_FRACTION = 0.8


class DatasetError(UsageError, ValueError):
    """A bad task, split or keyword: a ValueError for callers, a one-line usage error on the command line."""


@dataclass
class Dataset:
    """Inputs and targets of one split of a task.

    `targets` are (N,) int64 class labels (`kind="classification"`, `num_classes` set, `target_names`
    the class names), (N, H) int64 labels of H classification heads (`num_classes` a list of H class
    counts, `target_names` the heads), or (N, K) float32 regression targets (`kind="regression"`,
    `num_classes` None, `target_names` the K columns).
    """

    inputs: torch.Tensor  # (N, *observation_space.shape), observation_space.dtype
    targets: torch.Tensor
    kind: str
    num_classes: int | list[int] | None
    target_names: list[str]
    observation_space: gym.spaces.Box  # what a backbone for these inputs must accept
    levels: torch.Tensor | None = None  # (N,) int64 level seed of each sample (env tasks)
    tokenizer: Any = None  # text tasks: the Tokenizer that made the token ids (saved with the backbone)

    def __len__(self) -> int:
        return self.inputs.shape[0]


def make_dataset(task: str, split: str, num_samples: int | None, seed: int,
                 env_kwargs: dict[str, Any] | None = None, device: torch.device | str = "cpu", *,
                 batch_size: int = BATCH_SIZE) -> Dataset:
    """Generate `num_samples` labelled samples of `task` (see `TASKS`) from `split` (train or eval).

    `env_kwargs` go to the env's constructor (env tasks; e.g. `{"obs_mode": "grid", "size": 15}`).
    `num_samples` 0 or None means the whole split for `digits`; env tasks need >= 1. The result is
    a pure function of (task, split, num_samples, seed, env_kwargs); `batch_size` (envs generated
    at once) trades memory for speed (float targets may change in the last bit). Raises `DatasetError` (a ValueError) for bad arguments.
    """
    if task not in TASKS:
        raise DatasetError(f"unknown dataset task {task!r}; known: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    seed = _int("seed", seed, 0)
    batch_size = _int("batch_size", batch_size, 1)
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise DatasetError(f"env_kwargs must be a dict, got {type(env_kwargs).__name__}")
    env_kwargs = dict(env_kwargs or {})
    device = torch.device(device)
    if task == "digits":
        if env_kwargs:
            raise DatasetError(f"the digits task takes no env_kwargs, got {', '.join(sorted(env_kwargs))}")
        count = 0 if num_samples is None else _int("num_samples", num_samples, 0)
        return make_digits(split, count, seed, device)
    count = _int("num_samples", num_samples, 1)
    if task == "goto-text":
        if env_kwargs:
            raise DatasetError(f"the goto-text task takes no env_kwargs, got {', '.join(sorted(env_kwargs))}")
        return make_goto_text(split, count, seed, device)
    reserved = sorted(set(env_kwargs) & set(RESERVED_KWARGS))
    if reserved:
        raise DatasetError(f"env_kwargs may not set {', '.join(reserved)} (the dataset sets them)")
    if task.startswith("maze-"):
        return _generate(task, split, count, seed, {**MAZE_DEFAULTS, **env_kwargs}, device, batch_size,
                         MazeVecEnv, _maze_batch)
    return _generate(task, split, count, seed, {**DRIVING_DEFAULTS, **env_kwargs}, device, batch_size,
                     DrivingVecEnv, _driving_batch)


WORD_DROPOUT = 0.2


def make_goto_text(split: str, count: int, seed: int, device: torch.device) -> Dataset:
    """Instructions of rlbase/MazeGoTo-v0 -> (colour, object) they name.

    `train` phrases every colour-object pair with the training paraphrases (a function word reads
    as <unk> with probability WORD_DROPOUT, as unseen words do); `eval` uses only the held-out
    paraphrases, so held-out accuracy measures new wordings. The text corpus covers all pairs,
    including the env's HELDOUT_TARGETS: those are held out from the *agent's* training targets,
    and a pretrained encoder is one way to carry the words over to them. (A small Transformer
    trained on 14 of the 18 pairs reads the other 4 as the nearest seen pair: 0% on them.)
    Token ids are exactly the env's `mission` observations.
    """
    generator = torch.Generator().manual_seed(key_base(seed) * 2 + (split == "eval"))
    templates = language.TRAIN_TEMPLATES if split == "train" else language.EVAL_TEMPLATES
    pairs = [(c, o) for c in range(len(language.COLOURS)) for o in range(len(language.OBJECTS))]
    pick = torch.randint(len(pairs), (count,), generator=generator).tolist()
    template = torch.randint(len(templates), (count,), generator=generator).tolist()
    texts = [language.instruction_text(*pairs[p], t, split) for p, t in zip(pick, template)]
    ids = language.TOKENIZER.encode_batch(texts, language.MAX_WORDS)
    if split == "train":  # word dropout: a function word reads as <unk> 20% of the time (unseen words do)
        content = torch.tensor([language.TOKENIZER.ids[w] for w in (*language.COLOURS, *language.OBJECTS)])
        drop = (torch.rand(ids.shape, generator=generator) < WORD_DROPOUT) & (ids != PAD_ID) & ~torch.isin(ids, content)
        ids = ids.masked_fill(drop, UNK_ID)
    ids = ids.to(device)
    targets = torch.tensor([pairs[p] for p in pick], dtype=torch.int64, device=device).reshape(count, 2)
    space = gym.spaces.Box(0, language.TOKENIZER.vocab_size - 1, (language.MAX_WORDS,), np.int64)
    return Dataset(inputs=ids, targets=targets, kind="classification",
                   num_classes=[len(language.COLOURS), len(language.OBJECTS)], target_names=["colour", "object"],
                   observation_space=space, tokenizer=language.TOKENIZER)


def _int(name: str, value: Any, low: int) -> int:
    """`value` as an int >= `low` (the envs' constructor check), or a DatasetError."""
    try:
        return check_int(name, value, low)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def key_base(seed: int) -> int:
    """The env key of sample 0 for a dataset seed: a hash, so datasets of nearby seeds share no envs."""
    seeds = torch.tensor([seed], dtype=torch.int64)
    return int(random_bits(seeds, torch.zeros_like(seeds), STREAM_BASE, 1)[0, 0])


def _generate(task: str, split: str, count: int, seed: int, kwargs: dict[str, Any], device: torch.device,
              batch_size: int, cls: type, batch_fn) -> Dataset:
    """Run `batch_fn(task, env, key)` over batches of envs of class `cls`, keyed `base + sample index`,
    into one Dataset."""
    envs: dict[int, Any] = {}  # by batch size (the last batch may be smaller)
    base = key_base(seed)
    inputs = targets = levels = None
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        if n not in envs:
            try:
                envs[n] = cls(n, device, split=split, autoreset=False, **kwargs)
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"bad env_kwargs for {task}: {exc}") from None
        # Env keys base + start + arange(n), episode numbers 0: sample i is keyed base + i.
        obs, target, level, meta = batch_fn(task, envs[n], base + start)
        if inputs is None:  # allocate once: (count, ...) on the device
            inputs = torch.empty((count,) + tuple(obs.shape[1:]), dtype=obs.dtype, device=device)
            targets = torch.empty((count,) + tuple(target.shape[1:]), dtype=target.dtype, device=device)
            levels = torch.empty(count, dtype=torch.int64, device=device)
        inputs[start:start + n] = obs
        targets[start:start + n] = target
        levels[start:start + n] = level
    kind, num_classes, names = meta
    return Dataset(inputs, targets, kind, num_classes, names, envs[min(batch_size, count)].single_observation_space,
                   levels)


# -- maze --------------------------------------------------------------------------------------
def _maze_batch(task: str, env: MazeVecEnv, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """Observations and labels of one batch of mazes: each env's level, the agent on a random open square."""
    env.start(seed=key)  # builds the levels of episode 0 of keys key + arange(B)
    walls, _, exits = env.layout()  # (B, S, S) bool, (B, 2) exit (row, col)
    agent = random_free_squares(walls, exits, random_bits(env.keys, env.episodes, STREAM_PLACE, 1)[:, 0])
    env.set_agent(agent)
    obs, size = env.observe(), env.size
    if task == "maze-action":
        dist = maze_distances(walls, exits, agent)
        meta = ("classification", 4, ACTION_NAMES)
        return obs, shortest_path_actions(dist, agent), env.level_seeds(), meta
    if task == "maze-position":
        names = [f"r{r}c{c}" for r in range(size) for c in range(size)]
        return obs, agent[:, 0] * size + agent[:, 1], env.level_seeds(), ("classification", size * size, names)
    return obs, exit_sectors(agent, exits), env.level_seeds(), ("classification", 8, SECTOR_NAMES)


def random_free_squares(walls: torch.Tensor, exits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """(B, 2) (row, col) of a uniform choice among the open squares of `walls` (B, S, S) other than
    the exit, given 32 random `bits` (B,) per maze."""
    b, s, _ = walls.shape
    free = ~walls.reshape(b, s * s)
    free[torch.arange(b, device=walls.device), exits[:, 0] * s + exits[:, 1]] = False
    count = free.sum(1)  # 2 k^2 - 2 in a perfect maze
    order = torch.sort((~free).to(torch.uint8), dim=1, stable=True).indices  # free squares first
    flat = order.gather(1, ((bits * count) >> 32)[:, None])[:, 0]
    return torch.stack((torch.div(flat, s, rounding_mode="floor"), flat % s), 1)


def maze_distances(walls: torch.Tensor, exits: torch.Tensor, agent: torch.Tensor | None = None,
                   check_every: int = 8) -> torch.Tensor:
    """(B, S, S) int32 shortest-path distance (in steps) of every square to the exit; walls and
    squares not reached get `S * S`.

    Synchronous relaxation on the device, dist = min(dist, min over open neighbours + 1): after t
    sweeps a square holds its true distance if that is <= t and `S * S` otherwise, so every finite
    value is final. Stops once every square is reached (or, given `agent` (B, 2), every agent
    square: that is all a shortest-path action needs), checked every `check_every` sweeps; the
    number of open squares bounds the sweeps. The border is wall (maze grids always are).
    """
    b, s, _ = walls.shape
    far = s * s
    dist = torch.full((b, s, s), far, dtype=torch.int32, device=walls.device)
    rows = torch.arange(b, device=walls.device)
    dist[rows, exits[:, 0], exits[:, 1]] = 0
    block = walls[:, 1:-1, 1:-1].to(torch.int32) * far  # walls never take a finite value
    inner = dist[:, 1:-1, 1:-1]
    open_squares = int((~walls).sum(dim=(1, 2)).max())
    for sweep in range(1, open_squares):
        near = torch.minimum(torch.minimum(dist[:, :-2, 1:-1], dist[:, 2:, 1:-1]),
                             torch.minimum(dist[:, 1:-1, :-2], dist[:, 1:-1, 2:]))
        torch.minimum(inner, near.add_(block).add_(1), out=near)
        inner.copy_(near)
        if sweep % check_every == 0:
            reached = dist[rows, agent[:, 0], agent[:, 1]] if agent is not None else dist.masked_fill(walls, 0)
            if bool((reached < far).all()):
                break
    return dist


def shortest_path_actions(dist: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
    """(B,) int64 action (0 up, 1 down, 2 left, 3 right) towards the neighbour of `agent` (B, 2)
    nearest the exit. In a perfect maze exactly one open neighbour is one step nearer."""
    rows = torch.arange(dist.shape[0], device=dist.device)
    near = torch.stack([dist[rows, agent[:, 0] + dr, agent[:, 1] + dc] for dr, dc in MOVES], 1)
    return near.argmin(1)


def exit_sectors(agent: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """(B,) int64 compass sector (0 east, 1 north-east, ... counter-clockwise, 45 degrees each,
    centred on its direction) of the exit seen from the agent; north is up (smaller rows).
    No integer offset lies on a sector boundary (tan 22.5 degrees is irrational)."""
    d = (exits - agent).to(torch.float64)
    angle = torch.atan2(-d[:, 0], d[:, 1])
    return torch.round(angle / (0.25 * math.pi)).to(torch.int64).remainder(8)


# -- driving -----------------------------------------------------------------------------------
def _driving_batch(task: str, env: DrivingVecEnv, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """Observations and geometry targets of one batch of tracks, the cars placed at random."""
    env.start(seed=key)  # the tracks of episode 0 of keys key + arange(B) (not observed: no wasted frame)
    u = random_uniform(env.keys, env.episodes, STREAM_PLACE, 4).t()
    place_cars(env, theta=u[0] * (2.0 * math.pi), lateral=(2.0 * u[1] - 1.0) * MAX_LATERAL,
               heading_error=(2.0 * u[2] - 1.0) * MAX_HEADING_ERROR, speed=u[3] * env.max_speed)
    return env.observe(), driving_targets(env), env.level_seeds(), ("regression", None, DRIVING_TARGETS)


def place_cars(env: DrivingVecEnv, theta: torch.Tensor, lateral: torch.Tensor, heading_error: torch.Tensor,
               speed: torch.Tensor) -> None:
    """Put each car of `env` (a `DrivingVecEnv`) at polar angle `theta` (B,), `lateral` half-widths
    left of the centre line (radially, as the env measures the road: left of a counter-clockwise
    loop is inwards), heading `heading_error` rad left of the track direction, at `speed`."""
    r, slope = env.centre_line(env.coef, theta)
    rho = r - lateral * env.half_width
    heading = theta + torch.atan2(r, slope) + heading_error  # the tangent is (r', r) in the radial frame
    heading = torch.atan2(torch.sin(heading), torch.cos(heading))
    env.set_car(rho * torch.cos(theta), rho * torch.sin(theta), heading, speed)


def driving_targets(env: DrivingVecEnv) -> torch.Tensor:
    """(B, 3) float32 targets of the current cars: heading error (rad, + = pointing left of the
    track direction), lateral offset (half-widths, + = left of the centre line, |x| < 1 on the
    road) and the mean signed curvature of the next `CURVE_LOOKAHEAD` units of centre line
    (+ = turning left) times `CURVE_SCALE * track_radius`: 0 straight, 2 the base circle's; a
    standard deviation of about 1 over the track family at the default roughness."""
    state = env.track_state()
    lateral = -state["offset"] / env.half_width
    return torch.stack((state["heading_error"], lateral, curvature_ahead(env, state["theta"])), 1)


def curvature_ahead(env: DrivingVecEnv, theta: torch.Tensor, lookahead: float = CURVE_LOOKAHEAD) -> torch.Tensor:
    """(B,) mean signed curvature times `CURVE_SCALE * track_radius` of the centre line over about `lookahead`
    units ahead of polar angle `theta` (B,): the tangent's total turn over the arc length.

    The tangent's direction is theta + atan2(r, r'), with atan2(r, r') in (0, pi) as r > 0, so the
    turn between two angles needs no unwrapping; the length is Simpson's rule on `CURVE_POINTS`.
    """
    r0, _ = env.centre_line(env.coef, theta)
    span = lookahead / r0  # angle of about `lookahead` units of arc
    steps = torch.linspace(0.0, 1.0, CURVE_POINTS, device=theta.device)[:, None]
    r, slope = env.centre_line(env.coef, theta + steps * span)  # (CURVE_POINTS, B)
    weights = torch.ones(CURVE_POINTS, device=theta.device)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    length = (weights[:, None] * torch.hypot(r, slope)).sum(0) * span / (3 * (CURVE_POINTS - 1))
    turn = span + torch.atan2(r[-1], slope[-1]) - torch.atan2(r[0], slope[0])
    return turn / length * (CURVE_SCALE * env.track_radius)


# -- digits ------------------------------------------------------------------------------------
def make_digits(split: str, num_samples: int, seed: int, device: torch.device) -> Dataset:
    """scikit-learn's digits (1797 8x8 images, 0..16) as (1, 40, 40) uint8 0..255, nearest-neighbour
    upsampled; a permutation seeded by `seed` puts 80% in train and the rest in eval; the first
    `num_samples` of the split (0: all)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits task reads scikit-learn's bundled digits: pip install 'rlbase[pretrain]'") from None

    digits = load_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round_().to(torch.uint8)  # (n, 8, 8)
    images = images.repeat_interleave(DIGIT_SCALE, 1).repeat_interleave(DIGIT_SCALE, 2)[:, None]
    labels = torch.from_numpy(digits.target).to(torch.int64)
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    n_train = int(DIGIT_TRAIN_FRACTION * images.shape[0])
    index = perm[:n_train] if split == "train" else perm[n_train:]
    if num_samples:
        index = index[:num_samples]
    side = 8 * DIGIT_SCALE
    space = gym.spaces.Box(0, 255, (1, side, side), np.uint8)
    return Dataset(images[index].to(device), labels[index].to(device), "classification", 10,
                   [str(d) for d in range(10)], space)


__all__ = ["Dataset", "DatasetError", "TASKS", "make_dataset", "maze_distances", "shortest_path_actions",
           "exit_sectors", "random_free_squares", "place_cars", "driving_targets", "curvature_ahead"]
