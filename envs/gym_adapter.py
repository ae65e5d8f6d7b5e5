"""Any other Gymnasium id: Gymnasium's own vector env behind the `TensorVecEnv` interface.

Gymnasium's SAME_STEP autoreset gives the same semantics as every other backend: the step that
ends an episode returns the next episode's first observation and puts the last one in
`info["final_obs"]` (an object array with a `_final_obs` mask, which is turned into a tensor here).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from rlbase.envs.core import EpisodeStats, HostToDevice, TensorVecEnv, actions_to_numpy
from rlbase.errors import RlbaseError


class GymVecEnv(TensorVecEnv):
    def __init__(self, env_fns: list[Callable[[], gym.Env]], env_id: str, device: torch.device, frame_stack: int = 1):
        self.env_id = env_id
        self.num_envs = len(env_fns)
        self.device = device
        self.frame_stack = frame_stack
        self._env = SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.single_observation_space = self._env.single_observation_space
        self.single_action_space = self._env.single_action_space
        box = self.single_observation_space
        # Float observations are fed to the network as float32 whatever the env's own dtype.
        self._obs_dtype = np.float32 if np.issubdtype(box.dtype, np.floating) else box.dtype
        if self._obs_dtype != box.dtype:
            self.single_observation_space = gym.spaces.Box(box.low.astype(np.float32), box.high.astype(np.float32),
                                                           box.shape, np.float32)
        self._to_device = HostToDevice(device)
        self._stats = EpisodeStats(self.num_envs, device)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        obs, _ = self._env.reset(seed=seed)
        self._stats.reset()
        return self._to_device("obs", obs.astype(self._obs_dtype, copy=False)), {}

    def step(self, actions: torch.Tensor):
        obs, rewards, terminated, truncated, info = self._env.step(actions_to_numpy(actions))
        obs = obs.astype(self._obs_dtype, copy=False)
        final_obs = obs
        if "_final_obs" in info and info["_final_obs"].any():
            final_obs = obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):  # only the few envs that just ended
                final_obs[i] = info["final_obs"][i]
        to_dev = self._to_device
        rewards_t = to_dev("rewards", np.asarray(rewards, dtype=np.float32))
        terminated_t = to_dev("terminated", np.asarray(terminated, dtype=bool))
        truncated_t = to_dev("truncated", np.asarray(truncated, dtype=bool))
        out: dict[str, Any] = {"final_obs": to_dev("final_obs", final_obs)}
        out["episode_return"], out["episode_length"] = self._stats.update(rewards_t, terminated_t | truncated_t)
        return to_dev("obs", obs), rewards_t, terminated_t, truncated_t, out

    def render(self) -> list[np.ndarray]:
        try:
            return list(self._env.render())
        except gym.error.DependencyNotInstalled as exc:
            raise RlbaseError(f"rendering {self.env_id} needs an extra package: {exc}") from None

    def close(self) -> None:
        self._env.close()
