"""Atari backend: ale-py's C++ vector env behind the `TensorVecEnv` interface.

Preprocessing is ale-py's own (the standard DQN/Nature settings): 84x84 grey frames, a stack
of 4 (zero frames before the first one of a game), frameskip 4 with max-pooling of the last
two frames, up to 30 no-ops and FIRE at reset, v5 sticky actions (0.25).

The env always plays and reports full games with the real score. Reward clipping and
life-loss-as-terminal are applied in `training_signal`, for learning targets only.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlbase.envs.core import EpisodeStats, HostToDevice, TensorVecEnv, actions_to_numpy

FRAME_SKIP = 4
"""Emulator frames per agent step (the action is repeated; the last two frames are max-pooled)."""
EMULATOR_FPS = 60
"""The Atari 2600's NTSC frame rate: 108,000 frames are 30 minutes of play. ale-py's
`metadata["render_fps"]` (30) is a nominal value, neither this nor the agent's step rate."""
AGENT_STEP_FPS = EMULATOR_FPS / FRAME_SKIP
"""Agent steps per second of real game time (15): the frame rate of real-time videos."""


class AtariVecEnv(TensorVecEnv):
    render_fps = AGENT_STEP_FPS  # this backend cannot render; the value matches the video path's

    def __init__(self, env_id: str, num_envs: int, device: torch.device, *, sticky_actions: float = 0.25,
                 frame_stack: int = 4, noop_max: int = 30, max_episode_steps: int = 27_000,
                 clip_rewards: bool = True, terminal_on_life_loss: bool = True, num_threads: int = 0):
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


class _FireOnReset(gym.Wrapper):
    """Press FIRE after reset, as ale-py's vector env does (`use_fire_reset`)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if "FIRE" in self.env.unwrapped.get_action_meanings():
            obs, _, terminated, truncated, info = self.env.step(1)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def make_single_atari(env_id: str, *, sticky_actions: float = 0.25, frame_stack: int = 4, noop_max: int = 30,
                      max_episode_steps: int = 27_000, render_mode: str | None = None) -> gym.Env:
    """One Atari env with the same preprocessing built from Gymnasium wrappers.

    Used where the C++ vector env cannot serve: recording videos (it has no RGB render). Its
    `metadata["render_fps"]` is the agent's real-time step rate, `EMULATOR_FPS / FRAME_SKIP`:
    `render()` returns one frame per agent step, i.e. per `FRAME_SKIP` emulator frames.
    """
    env = gym.make(env_id, frameskip=1, repeat_action_probability=sticky_actions,
                   max_num_frames_per_episode=max_episode_steps * FRAME_SKIP, render_mode=render_mode)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=FRAME_SKIP, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    env = _FireOnReset(env)
    env = gym.wrappers.FrameStackObservation(env, frame_stack, padding_type="zero")
    env.metadata = {**env.metadata, "render_fps": AGENT_STEP_FPS}  # on this wrapper only, not ale-py's class
    return env
