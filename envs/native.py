"""rlbase's own environments: batched tensor code on the device (the native backend).

A native env is a set of state tensors with a leading batch dimension `num_envs`. `step` is
batched tensor code: no Python loop over envs, no `.item()`, no host sync. Ended envs are reset
inside the same step by masking (`torch.where`), following the `TensorVecEnv` rules.

Randomness is counter-based rather than drawn from a stateful generator: every random number of
env `i` is a hash of (its seed, its episode number, a stream id, an index). So

- a given seed reproduces the same episodes on any batch size and on any device
  (env `i` of a batch reset with seed `s` is seeded `s + i`, as Gymnasium's vector envs do);
- resetting a subset of envs draws nothing for the others, with no host round trip.

Procedural envs (maze, driving, MazeGoTo: `procedural = True`) draw a *level seed* per episode. The
train and eval splits use disjoint halves of the level-seed space (even and odd), so evaluation
always plays levels the agent never saw in training; `num_levels > 0` restricts training to a
finite set, as Procgen does. Envs without levels (classic control) do not take `num_levels`.

Prepared episodes. Where building an episode is too costly to do for every env on every step (a
maze, a track), the env keeps a prepared *next* episode per env: an ended env takes it (a masked
select), and every `refresh_every` steps the next episodes of all envs are rebuilt in bulk.
`refresh_every` must be a lower bound on the length of any episode, so no env ends twice between
two refreshes and every episode plays exactly the level of its seed. Resets from outside `step`
(`reset`, `start_next_episode`) build their episodes on the spot. Where an observation is costly too
(driving's lidar), the prepared episodes come with their first observations, and a step observes
once: ended envs show the prepared one. Elsewhere observing the new state again is cheaper than
that masked select (the maze's grid: measured, BENCHMARKS.md).

Each native env is also a single-instance `gymnasium.Env` through `SingleEnv` (a batch of one on
the CPU), registered under an `rlbase/...` id.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.core import EpisodeStats, TensorVecEnv
from rlbase.obs import Obs

MASK32 = 0xFFFFFFFF
SPLITS = ("train", "eval")


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash ("lowbias32"), elementwise on int64 tensors; the result is in [0, 2**32).

    Products of two 32-bit values may exceed int64's range; they wrap, and the low 32 bits kept
    by the mask are exact either way.
    """
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def random_bits(keys: torch.Tensor, counters: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(B, n) int64 pseudo-random 32-bit values, a pure function of (key, counter, stream, index).

    `keys` and `counters` are (B,) int64 (per-env seed and episode number); `stream` separates
    independent uses (start position, level seed, noise, ...) so they never share numbers.
    """
    base = hash32(hash32(keys) ^ hash32(counters * 0x9E3779B1 + stream * 0x85EBCA77))
    index = torch.arange(n, device=keys.device, dtype=torch.int64)
    return hash32(base[:, None] ^ hash32(index * 0xC2B2AE3D + 0x27D4EB2F)[None, :])


# splitmix64's constants, as signed int64 (torch's integer ops wrap modulo 2**64).
GOLDEN64 = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on an int64 tensor, in place. torch's `>>` is arithmetic on int64, so
    each shift is masked to make it logical (otherwise the map would not be a bijection)."""
    z.bitwise_xor_((z >> 30).bitwise_and_((1 << 34) - 1))
    z.mul_(_MIX1)
    z.bitwise_xor_((z >> 27).bitwise_and_((1 << 37) - 1))
    z.mul_(_MIX2)
    return z.bitwise_xor_((z >> 31).bitwise_and_((1 << 33) - 1))


def random_uniform(keys: torch.Tensor, counters: torch.Tensor, stream: int, n: int,
                   low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """(B, n) float32 uniform in [low, high), counter-based like `random_bits`."""
    u = (random_bits(keys, counters, stream, n) >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return low + (high - low) * u


def level_seeds(keys: torch.Tensor, episodes: torch.Tensor, split: str, num_levels: int = 0) -> torch.Tensor:
    """(B,) int64 level seed of each env's current episode: even for `train`, odd for `eval`.

    With `num_levels > 0` the train split cycles through that many levels (Procgen's
    `num_levels`); the eval split always draws from the whole (disjoint) odd half.
    """
    level = random_bits(keys, episodes, stream=0x5EED, n=1)[:, 0] >> 1
    if split == "train" and num_levels > 0:
        level = level % num_levels
    return 2 * level + (1 if split == "eval" else 0)


# -- constructor checks: a ValueError naming the keyword (`make_vec_env` turns it into a usage error) --
def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


def check_number(name: str, value: Any, *, positive: bool = False) -> float:
    """`value` as a finite float, > 0 when `positive`, else >= 0."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not number or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """`value`, one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """`value`, True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def where_rows(mask: torch.Tensor, a: Obs, b: Obs) -> Obs:
    """Row i of `a` where `mask[i]`, else of `b` (key by key for a Dict observation)."""
    if isinstance(a, dict):
        return {key: where_rows(mask, a[key], b[key]) for key in a}
    return torch.where(mask.view((-1,) + (1,) * (a.dim() - 1)), a, b)


class NativeVecEnv(TensorVecEnv):
    """Base class of the native envs. Subclasses set the spaces and implement three hooks:

    - `_reset_envs(mask)`: re-initialise the state of the envs where `mask` (B,) bool is True, with
      `torch.where` / masked writes, drawing randomness from `self.keys` and `self.episodes`;
    - `_advance(actions) -> (rewards, terminated)`: the dynamics of every env, one step;
    - `_observe() -> obs`: the observation of every env from the current state: a tensor, or for a
      Dict observation space a dict of tensors (then `info["final_obs"]` is such a dict too).

    Envs with prepared episodes (see the module docstring) set `refresh_every` and write two more:
    - `_prepare_next(episodes) -> obs | None`: build episode `episodes[i]` (B,) of every env `i` as
      its next one; return the first observations of those episodes, or None to be observed again
      after an autoreset;
    - `_take_next(mask)`: the envs in `mask` begin their prepared episode (autoreset in `step`;
      `_reset_envs` stays the reset from outside).

    The base class does the argument checks it shares, the time limit, episode statistics,
    same-step autoreset and seeding. `render_env(i)` (optional) draws env `i` as an (H, W, 3) uint8
    array; `render_fps` comes from the single-instance class's metadata (see `SingleEnv`).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}
    procedural: bool = False
    """Whether episodes are levels built from per-episode level seeds (`level_seeds`)."""
    refresh_every: int = 0
    """Steps between bulk rebuilds of the prepared next episodes; 0: the env prepares none."""

    def __init__(self, env_id: str, num_envs: int, device: torch.device | str = "cpu", *,
                 max_episode_steps: int, split: str = "train", num_levels: int = 0, autoreset: bool = True):
        check_choice("split", split, SPLITS)
        self.env_id = env_id
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.device = torch.device(device)
        self.split = split
        self.num_levels = check_int("num_levels", num_levels, 0)
        self.max_episode_steps = check_int("max_episode_steps", max_episode_steps, 1)
        self.autoreset = autoreset  # False only for `SingleEnv`, which Gymnasium resets explicitly
        self.keys = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.episodes = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._episode_keys = torch.zeros(num_envs, dtype=torch.int64, device=self.device)  # set by `seed`
        self._stats = EpisodeStats(num_envs, self.device)
        self._all = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        # Prepared episodes: their first observations, and whether they must be rebuilt before the
        # next step (a reset from outside changed the episode numbers they were built for).
        self._next_obs: Obs | None = None
        self._next_stale = True
        self._since_refresh = 0

    # -- hooks -------------------------------------------------------------------------------
    def _reset_envs(self, mask: torch.Tensor) -> None:
        raise NotImplementedError

    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _observe(self) -> Obs:
        raise NotImplementedError

    def _info(self) -> dict[str, torch.Tensor]:
        """Extra per-env values reported in `info` after each step (progress, laps, ...); those that
        describe how an episode ended are listed in the class's `outcome_keys`."""
        return {}

    def _prepare_next(self, episodes: torch.Tensor) -> Obs | None:
        raise NotImplementedError

    def _take_next(self, mask: torch.Tensor) -> None:
        raise NotImplementedError

    # -- interface ---------------------------------------------------------------------------
    def level_seeds(self, episodes: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) level seed of each env's current episode, or of episode numbers `episodes` (B,)
        (procedural envs build their level from it)."""
        return level_seeds(self.keys, self.episodes if episodes is None else episodes, self.split, self.num_levels)

    def seed(self, seed: int | None) -> None:
        if seed is None:  # fresh entropy; host-side, and only at reset
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        self.keys = seed + torch.arange(self.num_envs, dtype=torch.int64, device=self.device)
        # One 64-bit key per env for `episode_bits`, a pure function of the env's seed.
        lo, hi = random_bits(self.keys, torch.zeros_like(self.keys), 0xE915, 2).unbind(1)
        self._episode_keys = lo | (hi << 32)

    def episode_bits(self) -> torch.Tensor:
        """(B,) int64: 64 random bits per env for its current episode, as cheap as draws get.

        A reset hook runs on every env at every step (any env might be ending; picking the ones
        that are would need a host sync), so its draws must be cheap: this is splitmix64 of
        key + episode * golden, 13 integer ops on (B,), where `random_uniform` costs ~5x more.
        """
        return mix64(torch.add(self._episode_keys, self.episodes, alpha=GOLDEN64))

    def start(self, seed: int | None = None) -> None:
        """Seed the envs and begin episode 0 of each, without observing it (`reset` observes too)."""
        self.seed(seed)
        self.episodes.zero_()
        self.elapsed.zero_()
        self._stats.reset()
        self._reset_envs(self._all)
        self._next_stale = True

    def reset(self, seed: int | None = None) -> tuple[Obs, dict[str, Any]]:
        self.start(seed)
        return self._observe(), {}

    def observe(self) -> Obs:
        """The observation of every env in its current state (a fresh tensor, or dict of tensors)."""
        return self._observe()

    def step(self, actions: torch.Tensor):
        if self.autoreset and self.refresh_every:
            if self._next_stale or self._since_refresh >= self.refresh_every:
                self._next_obs = self._prepare_next(self.episodes + 1)
                self._next_stale, self._since_refresh = False, 0
            self._since_refresh += 1
        rewards, terminated = self._advance(actions)
        self.elapsed += 1
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        dones = terminated | truncated
        final_obs = self._observe()
        info: dict[str, Any] = {"final_obs": final_obs, **self._info()}
        info["episode_return"], info["episode_length"] = self._stats.update(rewards, dones)
        if not self.autoreset:
            return final_obs, rewards, terminated, truncated, info
        self.episodes += dones
        self.elapsed.masked_fill_(dones, 0)
        if self.refresh_every:
            self._take_next(dones)
        else:
            self._reset_envs(dones)
        if self._next_obs is None:
            return self._observe(), rewards, terminated, truncated, info
        # One observation per step: ended envs show the first observation prepared with their episode.
        return where_rows(dones, self._next_obs, final_obs), rewards, terminated, truncated, info

    def start_next_episode(self, mask: torch.Tensor) -> None:
        """Begin the next episode of the envs in `mask` (what autoreset does to ended envs)."""
        self.episodes += mask
        self.elapsed.masked_fill_(mask, 0)
        self._reset_envs(mask)
        self._next_stale = True

    def render(self) -> list[np.ndarray]:
        return [self.render_env(i) for i in range(self.num_envs)]

    def render_env(self, index: int) -> np.ndarray:
        raise NotImplementedError(f"{self.env_id} has no renderer")


class SingleEnv(gym.Env):
    """A native env as a normal single-instance `gymnasium.Env`: the same dynamics, a batch of one on the CPU.

    Subclass with `vec_cls = <NativeVecEnv subclass>`; constructor keywords go to that class.
    Unlike the batched env it does not autoreset: after an episode ends, Gymnasium's rule applies
    (call `reset()`); `reset()` without a seed plays the next episode of the seed's sequence.
    """

    vec_cls: type[NativeVecEnv]
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        # One source of truth for the frame rate: the single class's `metadata["render_fps"]` (what
        # Gymnasium's video recorders read) is also the batched class's `render_fps` (rlbase's videos).
        vec_cls = cls.__dict__.get("vec_cls")
        if vec_cls is None:
            return
        fps = float(cls.metadata["render_fps"])
        if "render_fps" in vec_cls.__dict__ and vec_cls.render_fps != fps:
            raise TypeError(f"{cls.__name__} renders at {fps} fps but {vec_cls.__name__} at {vec_cls.render_fps}")
        vec_cls.render_fps = fps

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.vec = self.vec_cls(1, "cpu", autoreset=False, **kwargs)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space
        self._seeded = False

    def _to_numpy(self, obs: Obs) -> np.ndarray | dict[str, np.ndarray]:
        if isinstance(obs, dict):  # a Dict space: each key with its subspace's dtype
            return {key: value[0].numpy().astype(self.observation_space[key].dtype, copy=False)
                    for key, value in obs.items()}
        return obs[0].numpy().astype(self.observation_space.dtype, copy=False)

    def _host_info(self) -> dict[str, Any]:
        """Extra `info` of `reset` and `step` that only the host has (text, ...); none by default."""
        return {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            if seed is None:  # first reset without a seed: draw one from Gymnasium's np_random
                seed = int(self.np_random.integers(0, 2**31 - 1))
            obs, _ = self.vec.reset(seed=seed)
            self._seeded = True
        else:  # the next episode of this seed's sequence
            self.vec.start_next_episode(torch.ones(1, dtype=torch.bool))
            obs = self.vec.observe()
        return self._to_numpy(obs), self._host_info()

    def step(self, action: Any):
        act = torch.as_tensor(np.asarray(action)).unsqueeze(0)
        obs, rewards, terminated, truncated, info = self.vec.step(act)
        extra = {k: v[0].item() for k, v in info.items()
                 if k not in ("final_obs", "episode_return", "episode_length") and torch.is_tensor(v) and v.dim() == 1}
        extra.update(self._host_info())
        return (self._to_numpy(obs), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), extra)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.vec.render_env(0)
