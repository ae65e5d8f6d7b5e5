"""Observations as tensors or dicts of tensors (Gymnasium `Dict` spaces: an image plus an instruction).

Storage, indexing and device moves go through these few helpers, so rollout storage and the
agents handle `Box` and `Dict` observations with the same code.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import gymnasium as gym
import numpy as np
import torch

Obs = Union[torch.Tensor, dict[str, torch.Tensor]]


def obs_map(fn: Callable[[torch.Tensor], torch.Tensor], obs: Obs) -> Obs:
    """`fn` applied to the tensor, or to every tensor of a dict observation."""
    if isinstance(obs, dict):
        return {key: fn(value) for key, value in obs.items()}
    return fn(obs)


def take(obs: Obs, index: Any) -> Obs:
    """`obs[index]` for a tensor or every tensor of a dict (minibatch rows, truncated rows, ...)."""
    return obs_map(lambda x: x[index], obs)


def assign(dst: Obs, index: Any, src: Obs) -> None:
    """`dst[index] = src`, key by key for dicts."""
    if isinstance(dst, dict):
        for key, value in dst.items():
            value[index] = src[key]
    else:
        dst[index] = src


def batch_size(obs: Obs) -> int:
    return next(iter(obs.values())).shape[0] if isinstance(obs, dict) else obs.shape[0]


def space_dtype(space: gym.spaces.Box) -> torch.dtype:
    """The torch dtype of a Box space's values (uint8 frames, int64 token ids, float32 vectors)."""
    return torch.from_numpy(np.zeros((), dtype=space.dtype)).dtype


def allocate(space: gym.spaces.Space, leading: tuple[int, ...], device: torch.device,
             dtype: torch.dtype | None = None) -> Obs:
    """Zeros of shape `leading + space.shape` (a dict of them for a Dict space), in the space's dtype
    unless `dtype` is given."""
    if isinstance(space, gym.spaces.Dict):
        return {key: allocate(sub, leading, device, dtype) for key, sub in space.spaces.items()}
    return torch.zeros((*leading, *space.shape), dtype=dtype or space_dtype(space), device=device)


def is_supported_space(space: gym.spaces.Space) -> bool:
    """Box, or a Dict of Boxes (one level deep): what rlbase's backbones and storage take."""
    if isinstance(space, gym.spaces.Dict):
        return all(isinstance(sub, gym.spaces.Box) for sub in space.spaces.values())
    return isinstance(space, gym.spaces.Box)
