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
    steps_in_threads: bool = False
    """`step_async` returns at once and the envs step in threads of their own (ale-py's C++ vector
    env), so the caller's work between `step_async` and `step_wait` overlaps the stepping; what
    `SplitVecEnv` needs to pay off."""

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


def _cat(parts: list[Any]) -> Any:
    """Concatenate the halves' tensors (or dicts of tensors: observations, infos) along the env axis."""
    if isinstance(parts[0], dict):
        return {key: _cat([part[key] for part in parts]) for key in parts[0]}
    return torch.cat(parts)


class SplitVecEnv(TensorVecEnv):
    """`num_envs` envs as two vector envs, the halves, that an agent can step alternately
    (`--split-envs` of the on-policy agents): while one half's envs step in their own threads, the
    agent runs its forward pass for the other half, as EnvPool's async mode does.

    Rows `groups[0]` are the first half's envs, rows `groups[1]` the second's. `reset`, `step`,
    `step_async` and `step_wait` step both halves at once, so everything else (evaluation during
    training, callbacks) sees one env of `num_envs`; `step_group_async(i, actions)` and
    `step_group_wait(i)` step half `i` alone. The second half is reset with `seed + groups[1].start`,
    so backends that seed env `k` with `seed + k` (ale-py) play the envs an unsplit env would.
    """

    def __init__(self, halves: list[TensorVecEnv]):
        if len(halves) != 2:
            raise ValueError(f"SplitVecEnv takes two halves, got {len(halves)}")
        first = halves[0]
        for other in halves[1:]:
            if (other.env_id, other.device, other.single_observation_space, other.single_action_space) != (
                    first.env_id, first.device, first.single_observation_space, first.single_action_space):
                raise ValueError("the halves of a SplitVecEnv must be the same env on the same device")
        self.halves = list(halves)
        self.env_id, self.device = first.env_id, first.device
        self.single_observation_space, self.single_action_space = first.single_observation_space, first.single_action_space
        self.frame_stack, self.outcome_keys, self.render_fps = first.frame_stack, first.outcome_keys, first.render_fps
        self.steps_in_threads = all(half.steps_in_threads for half in halves)
        sizes = [half.num_envs for half in halves]
        self.num_envs = sum(sizes)
        self.groups = [slice(0, sizes[0]), slice(sizes[0], self.num_envs)]

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        results = [half.reset(None if seed is None else seed + group.start)
                   for half, group in zip(self.halves, self.groups)]
        infos = [info for _, info in results]
        keys = set(infos[0]).intersection(*infos[1:])
        return _cat([obs for obs, _ in results]), {key: _cat([info[key] for info in infos]) for key in keys}

    def step(self, actions: torch.Tensor):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: torch.Tensor) -> None:
        for index, group in enumerate(self.groups):
            self.step_group_async(index, actions[group])

    def step_wait(self):
        results = [self.step_group_wait(index) for index in range(len(self.groups))]
        return tuple(_cat([result[k] for result in results]) for k in range(5))

    def step_group_async(self, index: int, actions: torch.Tensor) -> None:
        """Start a step of half `index` with its envs' actions (rows `groups[index]`)."""
        self.halves[index].step_async(actions)

    def step_group_wait(self, index: int):
        """The results of half `index`'s step, its rows only."""
        return self.halves[index].step_wait()

    def training_signal(self, rewards: torch.Tensor, terminated: torch.Tensor,
                        info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.halves[0].training_signal(rewards, terminated, info)  # elementwise; both halves' settings

    def render(self) -> list[np.ndarray]:
        return [frame for half in self.halves for frame in half.render()]

    def close(self) -> None:
        for half in self.halves:
            half.close()
