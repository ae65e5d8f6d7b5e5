"""Environments: rlbase's own envs registered with Gymnasium, and `make_vec_env`, which builds the
`TensorVecEnv` (the one interface the agents see, `rlbase.envs.core`) of any env id.

Importing this package registers the `rlbase/...` ids (done on `import rlbase`) and imports
Gymnasium only: torch, ale-py and the env modules load when an env is made, so importing rlbase's
light modules (`rlbase.errors`, `rlbase.config`) stays cheap. `make_vec_env` and the other factory
functions live in `rlbase.envs.make` and are importable from here.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

__all__ = ["TensorVecEnv", "EpisodeStats", "SplitVecEnv", "make_vec_env", "check_env_id", "import_env_modules", "plain_env_id",
           "is_atari", "is_native", "NATIVE_ENVS"]

# rlbase's own envs: id -> (module, batched class, single-instance class, default keyword arguments).
# The batched class runs in `rlbase train/eval`; the single-instance one is what `gymnasium.make` gives.
NATIVE_ENVS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "rlbase/CartPole-v1": ("rlbase.envs.classic", "CartPoleVecEnv", "CartPoleEnv", {}),
    "rlbase/Pendulum-v1": ("rlbase.envs.classic", "PendulumVecEnv", "PendulumEnv", {}),
    "rlbase/Maze-v0": ("rlbase.envs.maze", "MazeVecEnv", "MazeEnv", {}),
    "rlbase/Driving-v0": ("rlbase.envs.driving", "DrivingVecEnv", "DrivingEnv", {}),
    "rlbase/DrivingDiscrete-v0": ("rlbase.envs.driving", "DrivingVecEnv", "DrivingEnv", {"discrete": True}),
    "rlbase/MazeGoTo-v0": ("rlbase.envs.mazegoto", "MazeGoToVecEnv", "MazeGoToEnv", {}),
}


def register_envs() -> None:
    """Register the native envs with Gymnasium (done on `import rlbase`); idempotent."""
    for env_id, (module, _, single, kwargs) in NATIVE_ENVS.items():
        if env_id not in gym.registry:
            # No TimeLimit wrapper: the env truncates itself, identically in its batched form.
            gym.register(env_id, entry_point=f"{module}:{single}", kwargs=dict(kwargs), disable_env_checker=True)


def is_native(env_id: str) -> bool:
    return env_id in NATIVE_ENVS


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def plain_env_id(env_id: str) -> str:
    """The Gymnasium id in `env_id`: the part after the colon of `module:EnvId-v0`, else `env_id` itself."""
    return env_id.split(":", 1)[1] if ":" in env_id else env_id


register_envs()

# Names defined in submodules that import torch: loaded on first use (`from rlbase.envs import make_vec_env`).
_LAZY = {"TensorVecEnv": "rlbase.envs.core", "EpisodeStats": "rlbase.envs.core", "SplitVecEnv": "rlbase.envs.core",
         "make_vec_env": "rlbase.envs.make", "make_native_vec_env": "rlbase.envs.make",
         "check_env_id": "rlbase.envs.make", "import_env_modules": "rlbase.envs.make"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlbase.envs' has no attribute {name!r}")
