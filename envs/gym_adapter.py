"""Any other Gymnasium id: Gymnasium's own vector env behind the `TensorVecEnv` interface.

Gymnasium's SAME_STEP autoreset gives the same semantics as every other backend: the step that
ends an episode returns the next episode's first observation and puts the last one in
`info["final_obs"]` (an object array with a `_final_obs` mask, which is turned into a tensor here).

Observations are converted once, by `ObservationConverter`, into what rlbase's agents take (a Box,
or a Dict of Boxes): float Boxes become float32, Discrete becomes a float32 one-hot vector,
MultiBinary a float32 vector of 0/1. Other spaces are left as they are: whether an agent can take
them is its `check_env` decision (`unsupported_observations` says what to wrap the env in).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from rlbase.envs.core import EpisodeStats, HostToDevice, TensorVecEnv, actions_to_numpy
from rlbase.errors import RlbaseError, UsageError
from rlbase.obs import assign, is_supported_space, obs_map

RawObs = Any  # what the user's env returns: an array, an int (Discrete), a dict of them (Dict)
NpObs = np.ndarray | dict[str, np.ndarray]
DEFAULT_RENDER_FPS = 30.0  # Gymnasium's own default when an env's metadata names no frame rate


def _convert_leaf(space: gym.spaces.Space) -> tuple[gym.spaces.Box, Callable[[np.ndarray], np.ndarray]] | None:
    """(converted Box space, batch function) for one non-Dict space; None if it is not supported."""
    if isinstance(space, gym.spaces.Box):
        if not np.issubdtype(space.dtype, np.floating) or space.dtype == np.float32:
            return space, lambda batch: batch  # uint8 frames, int64 token ids, float32 vectors stay
        # Float observations are fed to the network as float32 whatever the env's own dtype.
        box = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32)
        return box, lambda batch: batch.astype(np.float32, copy=False)
    if isinstance(space, gym.spaces.Discrete):
        n, start = int(space.n), int(space.start)
        eye = np.eye(n, dtype=np.float32)
        # (B,) int values start..start+n-1 -> (B, n) one-hot rows; a fresh array (fancy indexing copies).
        return gym.spaces.Box(0.0, 1.0, (n,), np.float32), lambda batch: eye[np.asarray(batch, np.int64) - start]
    if isinstance(space, gym.spaces.MultiBinary):
        return (gym.spaces.Box(0.0, 1.0, space.shape, np.float32),
                lambda batch: np.asarray(batch).astype(np.float32, copy=False))
    return None


def unsupported_observations(env_id: str, space: gym.spaces.Space) -> str | None:
    """None when rlbase's networks and storage take observations of `space` (a Box, or a Dict of
    Boxes: `rlbase.obs.is_supported_space`); else one line saying what `env_id` has and the
    Gymnasium wrapper that fixes it (the agents' `check_env` refuses with it)."""
    if is_supported_space(space):
        return None
    what = f"a {type(space).__name__} observation space"
    if isinstance(space, gym.spaces.Dict):
        key, sub = next((k, v) for k, v in space.spaces.items() if not isinstance(v, gym.spaces.Box))
        what = f"a Dict observation space whose key {key!r} is a {type(sub).__name__} space"
    if space.is_np_flattenable:
        fix = ("wrap it in gymnasium.wrappers.FlattenObservation "
               "(e.g. from a --env module that registers the wrapped env)")
    else:  # Graph, Sequence, ...: no fixed size, so no flat Box either
        fix = ("rlbase needs fixed-size observations: turn them into a Box with a gymnasium.ObservationWrapper "
               "(e.g. from a --env module that registers the wrapped env)")
    return f"{env_id} has {what}; {fix}"


class ObservationConverter:
    """Turns a Gymnasium observation space into one rlbase's agents take, and its observations likewise.

    - Box: unchanged, except that float dtypes become float32;
    - Discrete(n, start): a one-hot float32 Box(0, 1, (n,)) (value `start + k` sets entry k);
    - MultiBinary(shape): a float32 Box(0, 1, shape);
    - Dict of the above (one level deep): each key converted by the same rules.

    Anything else stays as it is in `space` (agents refuse it in `check_env`), and converting its
    observations raises the UsageError of `unsupported_observations`. `space` is the converted
    space, `raw_space` the env's own. Call the converter on a batch (leading axis: envs), or
    `single` on one observation as the user's env returns it (what a policy's `predict` gets).
    """

    def __init__(self, raw_space: gym.spaces.Space, env_id: str = "the environment"):
        self.raw_space = raw_space
        if isinstance(raw_space, gym.spaces.Dict):
            leaves = {key: _convert_leaf(sub) for key, sub in raw_space.spaces.items()}
            self.space: gym.spaces.Space = gym.spaces.Dict(
                {key: leaf[0] if leaf else raw_space[key] for key, leaf in leaves.items()})
            self._fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
                key: leaf[1] for key, leaf in leaves.items() if leaf}
            self._fn = None
        else:
            leaf = _convert_leaf(raw_space)
            self.space, self._fn = leaf if leaf else (raw_space, None)
        self.unsupported = unsupported_observations(env_id, self.space)  # None when the agents take them

    def __call__(self, batch: RawObs) -> NpObs:
        """A batch of raw observations (as Gymnasium's vector envs stack them) -> converted arrays."""
        if self.unsupported:
            raise UsageError(self.unsupported)
        if self._fn is None:
            return {key: fn(np.asarray(batch[key])) for key, fn in self._fns.items()}
        return self._fn(np.asarray(batch))

    def single(self, obs: RawObs) -> NpObs:
        """One raw observation -> the converted observation, without a batch axis."""
        if self.unsupported:
            raise UsageError(self.unsupported)
        if self._fn is None:
            return {key: fn(np.asarray(obs[key])[None])[0] for key, fn in self._fns.items()}
        return self._fn(np.asarray(obs)[None])[0]


class GymVecEnv(TensorVecEnv):
    raw_observation_space: gym.spaces.Space
    """The user's env's own observation space; `single_observation_space` is the converted one."""
    convert_obs: ObservationConverter
    """Converts the user's env's observations (a batch, or one with `.single`) as this env does."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]], env_id: str, device: torch.device, frame_stack: int = 1):
        self.env_id = env_id
        self.num_envs = len(env_fns)
        self.device = device
        self.frame_stack = frame_stack
        self._env = SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.raw_observation_space = self._env.single_observation_space
        self.convert_obs = ObservationConverter(self.raw_observation_space, env_id)
        self.single_observation_space = self.convert_obs.space
        self.single_action_space = self._env.single_action_space
        fps = self._env.envs[0].metadata.get("render_fps")
        self.render_fps = float(fps) if fps else DEFAULT_RENDER_FPS
        self._to_device = HostToDevice(device)
        self._stats = EpisodeStats(self.num_envs, device)

    def _obs_to_device(self, name: str, obs: NpObs) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(obs, dict):
            return {key: self._to_device(f"{name}/{key}", value) for key, value in obs.items()}
        return self._to_device(name, obs)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor | dict[str, torch.Tensor], dict[str, Any]]:
        obs, _ = self._env.reset(seed=seed)
        self._stats.reset()
        return self._obs_to_device("obs", self.convert_obs(obs)), {}

    def step(self, actions: torch.Tensor):
        obs, rewards, terminated, truncated, info = self._env.step(actions_to_numpy(actions))
        obs = self.convert_obs(obs)
        final_obs = obs
        if "_final_obs" in info and info["_final_obs"].any():
            final_obs = obs_map(np.copy, obs)
            for i in np.flatnonzero(info["_final_obs"]):  # only the few envs that just ended
                assign(final_obs, i, self.convert_obs.single(info["final_obs"][i]))
        to_dev = self._to_device
        rewards_t = to_dev("rewards", np.asarray(rewards, dtype=np.float32))
        terminated_t = to_dev("terminated", np.asarray(terminated, dtype=bool))
        truncated_t = to_dev("truncated", np.asarray(truncated, dtype=bool))
        out: dict[str, Any] = {"final_obs": self._obs_to_device("final_obs", final_obs)}
        out["episode_return"], out["episode_length"] = self._stats.update(rewards_t, terminated_t | truncated_t)
        return self._obs_to_device("obs", obs), rewards_t, terminated_t, truncated_t, out

    def render(self) -> list[np.ndarray]:
        try:
            return list(self._env.render())
        except gym.error.DependencyNotInstalled as exc:
            raise RlbaseError(f"rendering {self.env_id} needs an extra package: {exc}") from None

    def close(self) -> None:
        self._env.close()
