"""The one environment interface the agents see: `TensorVecEnv`.

A batch of `num_envs` environments on one device. Every backend follows the same rules:

- `reset(seed) -> (obs, info)` and `step(actions) -> (obs, rewards, terminated, truncated, info)`,
  all tensors with leading dimension `num_envs` on `env.device`;
- same-step autoreset: an env whose episode ends is reset inside that step, so `obs` already is
  the first observation of the next episode, and the last observation of the ended one is in
  `info["final_obs"]` (rows of ended envs; other rows repeat `obs`);
- `rewards`, `terminated` and `truncated` describe the real episode (for Atari: a full game with
  the unclipped score); `training_signal` derives what the learner trains on (clipped rewards,
  life loss as terminal) so logged returns stay comparable with published numbers;
- episode statistics are kept on the device: `info["episode_return"]` / `info["episode_length"]`
  hold the totals of the episodes that ended at this step (zero elsewhere).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch


class EpisodeStats:
    """Running per-env episode return and length, on the device, with no host sync."""

    def __init__(self, num_envs: int, device: torch.device):
        self.returns = torch.zeros(num_envs, dtype=torch.float32, device=device)
        self.lengths = torch.zeros(num_envs, dtype=torch.int32, device=device)

    def reset(self) -> None:
        self.returns.zero_()
        self.lengths.zero_()

    def update(self, rewards: torch.Tensor, dones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one step; return (episode_return, episode_length) of the episodes that ended (0 elsewhere)."""
        self.returns += rewards
        self.lengths += 1
        ended_returns = torch.where(dones, self.returns, torch.zeros_like(self.returns))
        ended_lengths = torch.where(dones, self.lengths, torch.zeros_like(self.lengths))
        self.returns.masked_fill_(dones, 0.0)
        self.lengths.masked_fill_(dones, 0)
        return ended_returns, ended_lengths


class TensorVecEnv:
    """Base class and interface of every vectorised env backend (see the module docstring)."""

    env_id: str
    num_envs: int
    device: torch.device
    single_observation_space: gym.spaces.Space
    single_action_space: gym.spaces.Space
    frame_stack: int = 1
    """Leading observation axis that stacks frames (Atari: 4); replay stores each frame once."""
    outcome_keys: tuple[str, ...] = ()
    """The per-env `info` values that describe how an episode ended and are worth reporting at
    episode end (maze: `success`); evaluation reports their mean. Per-step training signals
    (Atari's `life_lost`) are not outcomes."""
    render_fps: float = 30.0
    """Frames per second of what `render()` returns, for videos (one frame per agent step)."""
    env_kwargs: dict[str, Any] | None = None
    """The keyword arguments `make_vec_env` built it with (None for envs built otherwise)."""

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def step_async(self, actions: torch.Tensor) -> None:
        """Start a step; `step_wait` returns its results. Backends that step in their own threads
        (Atari) run it while the caller does other work (a learner update); others step in `step_wait`."""
        self._pending_actions = actions

    def step_wait(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        return self.step(self._pending_actions)

    def training_signal(self, rewards: torch.Tensor, terminated: torch.Tensor,
                        info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards and terminal flags for learning targets; by default the real ones."""
        return rewards, terminated

    def render(self) -> list[np.ndarray]:
        """RGB frames (H, W, 3) uint8, one per env, when the env was made with rendering on."""
        raise NotImplementedError(f"{self.env_id} was not created with rendering enabled")

    def close(self) -> None:
        pass

    def __enter__(self) -> "TensorVecEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HostToDevice:
    """Move NumPy arrays produced on the host to the device.

    On CPU this is zero-copy (`torch.from_numpy`; the backends hand out fresh arrays every
    step). On CUDA the array is staged in pinned memory and copied with `non_blocking=True`;
    two staging buffers per key alternate, and an event guards each buffer against being
    overwritten before its previous copy has finished.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._staging: dict[str, list[tuple[torch.Tensor, Any]]] = {}
        self._flip: dict[str, int] = {}

    def __call__(self, key: str, array: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return host
        if key not in self._staging or self._staging[key][0][0].shape != host.shape:
            self._staging[key] = [(torch.empty_like(host).pin_memory(), torch.cuda.Event()) for _ in range(2)]
            self._flip[key] = 0
        slot = self._flip[key]
        self._flip[key] = 1 - slot
        buffer, copied = self._staging[key][slot]
        copied.synchronize()  # the copy issued from this buffer two calls ago is done
        buffer.copy_(host)
        out = buffer.to(self.device, non_blocking=True)
        copied.record()
        return out


def actions_to_numpy(actions: torch.Tensor) -> np.ndarray:
    """The one unavoidable sync of host-side envs: actions must reach the host to be stepped."""
    return actions.detach().to("cpu").numpy()
