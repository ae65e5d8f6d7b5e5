"""Atari's training backend: ale-py's C++ vector env behind the `TensorVecEnv` interface.

The settings, their defaults and the preprocessing they stand for are described in
`rlbase.envs.atari`, which builds this env (`make_atari_vec_env`). The env always plays and reports
full games with the real score; reward clipping and life-loss-as-terminal are applied in
`training_signal`, for learning targets only.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.atari import AGENT_STEP_FPS, FRAME_SKIP, GAME_OPTIONS, TRAINING_OPTIONS
from rlbase.envs.core import EpisodeStats, HostToDevice, TensorVecEnv, actions_to_numpy


class AtariVecEnv(TensorVecEnv):
    """`num_envs` Atari games stepped by ale-py's C++ threads; observations and rewards on `device`."""

    render_fps = AGENT_STEP_FPS  # this backend cannot render; the value matches the video path's
    steps_in_threads = True  # ale-py's C++ threads step between send and recv

    def __init__(self, env_id: str, num_envs: int, device: torch.device, *,
                 sticky_actions: float = GAME_OPTIONS["sticky_actions"],
                 frame_stack: int = GAME_OPTIONS["frame_stack"],
                 noop_max: int = GAME_OPTIONS["noop_max"],
                 max_episode_steps: int = GAME_OPTIONS["atari_max_episode_steps"],
                 clip_rewards: bool = TRAINING_OPTIONS["clip_rewards"],
                 terminal_on_life_loss: bool = TRAINING_OPTIONS["terminal_on_life_loss"], num_threads: int = 0):
        from ale_py.vector_env import AtariVectorEnv

        self.env_id = env_id
        self.num_envs = num_envs
        self.device = device
        self.frame_stack = frame_stack
        self.clip_rewards = clip_rewards
        self.terminal_on_life_loss = terminal_on_life_loss
        game = gym.spec(env_id).kwargs["game"]
        self._env = AtariVectorEnv(
            game, num_envs,
            autoreset_mode="SameStep",
            repeat_action_probability=sticky_actions,
            frameskip=FRAME_SKIP, stack_num=frame_stack, img_height=84, img_width=84, grayscale=True, maxpool=True,
            noop_max=noop_max, use_fire_reset=True,
            max_num_frames_per_episode=max_episode_steps * FRAME_SKIP,
            # Training-only transforms are done in training_signal, so episodes are whole games.
            reward_clipping=False, episodic_life=False, life_loss_info=False,
            num_threads=num_threads,
        )
        self.single_observation_space = self._env.single_observation_space
        self.single_action_space = self._env.single_action_space
        self._to_device = HostToDevice(device)
        self._stats = EpisodeStats(num_envs, device)
        self._lives = np.zeros(num_envs, dtype=np.int32)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        obs, info = self._env.reset(seed=seed)
        self._lives = info["lives"].copy()
        self._stats.reset()
        return self._to_device("obs", obs), {}

    def step(self, actions: torch.Tensor):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: torch.Tensor) -> None:
        self._env.send(actions_to_numpy(actions).astype(np.int64))  # ale-py's C++ threads start stepping

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self._env.recv()
        dones = terminated | truncated
        # A life lost without the game ending; `lives` of a reset env is its new game's count.
        life_lost = (info["lives"] < self._lives) & ~dones
        self._lives = info["lives"].copy()
        final_obs = info["final_obs"] if "final_obs" in info else obs
        to_dev = self._to_device
        out = {
            "final_obs": to_dev("final_obs", final_obs),
            "life_lost": to_dev("life_lost", life_lost),
        }
        rewards_t = to_dev("rewards", rewards.astype(np.float32))
        terminated_t = to_dev("terminated", terminated)
        truncated_t = to_dev("truncated", truncated)
        out["episode_return"], out["episode_length"] = self._stats.update(rewards_t, terminated_t | truncated_t)
        return to_dev("obs", obs), rewards_t, terminated_t, truncated_t, out

    def training_signal(self, rewards, terminated, info):
        if self.clip_rewards:
            rewards = torch.sign(rewards)
        if self.terminal_on_life_loss:
            terminated = terminated | info["life_lost"]
        return rewards, terminated

    def close(self) -> None:
        self._env.close()
