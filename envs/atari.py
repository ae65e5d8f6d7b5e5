"""Atari through ale-py: the settings a run carries, and the pipelines that play them.

Preprocessing is ale-py's own (the standard DQN/Nature settings): 84x84 grey frames, a stack
of 4 (zero frames before the first one of a game), frameskip 4 with max-pooling of the last
two frames, up to 30 no-ops and FIRE at reset, v5 sticky actions (0.25).

The env always plays and reports full games with the real score. Reward clipping and
life-loss-as-terminal are applied in `training_signal`, for learning targets only.

Two pipelines play a game with the same settings: `AtariVecEnv` (rlbase.envs.atari_vec), ale-py's
C++ vector env, for training and evaluation; and `make_single_atari`, the same preprocessing from
Gymnasium wrappers, for videos (the C++ env has no RGB render). `make_atari_vec_env` picks one.

This module imports neither torch nor ale-py, so the run config reads the settings' names and
defaults (`GAME_OPTIONS`, `TRAINING_OPTIONS`) from here at no cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:
    import torch

    from rlbase.envs.core import TensorVecEnv

GAME_OPTIONS: dict[str, Any] = {
    "sticky_actions": 0.25,  # probability of repeating the previous action (v5)
    "frame_stack": 4,  # stacked 84x84 grey frames
    "noop_max": 30,  # up to this many no-ops at the start of a game
    "atari_max_episode_steps": 27_000,  # agent steps (108,000 frames) after which a game is truncated
}
"""How a game is played: option name -> default; the same in training and evaluation."""
TRAINING_OPTIONS: dict[str, Any] = {
    "clip_rewards": True,  # learn from sign-clipped rewards
    "terminal_on_life_loss": True,  # a lost life ends the learning target's episode
}
"""What the learner trains on (`training_signal`): option name -> default. Evaluation leaves them
out and reads the real, unclipped games."""

FRAME_SKIP = 4
"""Emulator frames per agent step (the action is repeated; the last two frames are max-pooled)."""
EMULATOR_FPS = 60
"""The Atari 2600's NTSC frame rate: 108,000 frames are 30 minutes of play. ale-py's
`metadata["render_fps"]` (30) is a nominal value, neither this nor the agent's step rate."""
AGENT_STEP_FPS = EMULATOR_FPS / FRAME_SKIP
"""Agent steps per second of real game time (15): the frame rate of real-time videos."""


def make_atari_vec_env(env_id: str, num_envs: int, device: torch.device, *, render: bool = False,
                       **options: Any) -> TensorVecEnv:
    """The `TensorVecEnv` of Atari id `env_id`: ale-py's C++ vector env, or with `render=True`
    Gymnasium's vector env over `make_single_atari` (frames for videos).

    `options` are names of GAME_OPTIONS and TRAINING_OPTIONS (the defaults stand for the others);
    another name is a TypeError. A missing video dependency is an RlbaseError.
    """
    unknown = sorted(set(options) - set(GAME_OPTIONS) - set(TRAINING_OPTIONS))
    if unknown:
        raise TypeError(f"unknown Atari option(s) {', '.join(unknown)}; known: "
                        f"{', '.join([*GAME_OPTIONS, *TRAINING_OPTIONS])}")
    game = {name: options.get(name, default) for name, default in GAME_OPTIONS.items()}
    game["max_episode_steps"] = game.pop("atari_max_episode_steps")  # the pipelines' own keyword
    if not render:
        from rlbase.envs.atari_vec import AtariVecEnv

        training = {name: options.get(name, default) for name, default in TRAINING_OPTIONS.items()}
        return AtariVecEnv(env_id, num_envs, device, **game, **training)
    from rlbase.envs.gym_adapter import GymVecEnv
    from rlbase.errors import RlbaseError

    fns = [lambda: make_single_atari(env_id, render_mode="rgb_array", **game) for _ in range(num_envs)]
    try:
        return GymVecEnv(fns, env_id, device, frame_stack=game["frame_stack"])
    except gym.error.DependencyNotInstalled as exc:
        raise RlbaseError(f"recording {env_id} needs the video extras (pip install 'rlbase[video]'): {exc}") from None


class _FireOnReset(gym.Wrapper):
    """Press FIRE after reset, as ale-py's vector env does (`use_fire_reset`)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if "FIRE" in self.env.unwrapped.get_action_meanings():
            obs, _, terminated, truncated, info = self.env.step(1)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def make_single_atari(env_id: str, *, sticky_actions: float = GAME_OPTIONS["sticky_actions"],
                      frame_stack: int = GAME_OPTIONS["frame_stack"], noop_max: int = GAME_OPTIONS["noop_max"],
                      max_episode_steps: int = GAME_OPTIONS["atari_max_episode_steps"],
                      render_mode: str | None = None) -> gym.Env:
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
