"""`make_vec_env`: the `TensorVecEnv` of any env id (rlbase's own, Atari, any other Gymnasium id), and
the checks of the ids and modules a user names.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Any

import gymnasium as gym
import torch

from rlbase.envs import NATIVE_ENVS, is_atari, is_native
from rlbase.envs.atari import GAME_OPTIONS, TRAINING_OPTIONS
from rlbase.envs.core import TensorVecEnv
from rlbase.errors import UsageError


def make_native_vec_env(env_id: str, num_envs: int, device: torch.device, split: str = "train",
                        **env_kwargs: Any) -> TensorVecEnv:
    """The batched version of a native env, on `device`; a UsageError for bad keyword arguments."""
    module, batched, _, defaults = NATIVE_ENVS[env_id]
    cls = getattr(importlib.import_module(module), batched)
    try:
        return cls(num_envs, device, split=split, **{**defaults, **env_kwargs})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad --env-kwargs for {env_id}: {exc}") from None


def _register_ale() -> None:
    import ale_py

    gym.register_envs(ale_py)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _import_user_module(name: str, named_in: str) -> None:
    """Import a module the user named (it registers envs on import); any failure is one UsageError line."""
    # The `rlbase` console script, unlike `python -m`, does not put the working directory on
    # sys.path: add it, so a module next to the user (`--env mymod:MyEnv-v0`) is found.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        importlib.import_module(name)
    except ImportError as exc:  # "No module named 'mymod'" says it all
        raise UsageError(f"cannot import module {name!r} named in {named_in}: {_first_line(exc)}") from None
    except Exception as exc:  # the user's code may raise anything while it registers its envs
        reason = f"{type(exc).__name__}: {_first_line(exc)}" if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot import module {name!r} named in {named_in}: {reason}") from None


def import_env_modules(env_id: str, gym_packages: tuple[str, ...] = ()) -> str:
    """Import what registers the envs the user asked for; return the plain Gymnasium id.

    `gym_packages` are imported first (packages such as `gym_minigrid` register their envs on
    import), then, for an id in Gymnasium's `module:EnvId-v0` form, `module`. A failed import is
    a UsageError naming the flag (--gym-packages or --env).
    """
    for package in gym_packages:
        _import_user_module(package, "--gym-packages")
    if ":" not in env_id:
        return env_id
    module, plain = env_id.split(":", 1)
    if not module or not plain:
        raise UsageError(f"--env {env_id}: expected module:EnvId, e.g. mymod:MyEnv-v0")
    _import_user_module(module, f"--env {env_id}")
    return plain


def check_env_id(env_id: str, gym_packages: tuple[str, ...] = ()) -> str:
    """Import the user's env modules (`import_env_modules`) and return the plain Gymnasium id;
    raise a UsageError with close matches when that id is not known."""
    user_id, env_id = env_id, import_env_modules(env_id, gym_packages)
    if is_atari(env_id) or env_id not in gym.registry:
        _register_ale()  # only when needed: importing ale-py is not free
    if env_id in gym.registry:
        if is_atari(env_id) and not env_id.endswith("-v5"):
            raise UsageError(f"unsupported Atari id {env_id!r}: use the v5 ids, e.g. ALE/Breakout-v5")
        return env_id
    # Suggest only ids rlbase runs: of ale-py's ids, the ALE/<Game>-v5 ones.
    ids = [i for i, spec in gym.registry.items()
           if "ale_py" not in str(spec.entry_point) or (is_atari(i) and i.endswith("-v5"))]
    matches = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
    if not matches:  # case-insensitive substring, e.g. "breakout" -> ALE/Breakout-v5
        needle = env_id.lower().split("/")[-1].split("-v")[0]
        matches = [i for i in ids if needle and needle in i.lower() and i.endswith("-v5")][:3]
    hint = f"; did you mean {', '.join(matches)}?" if matches else ""
    if user_id != env_id:
        hint = f" (importing {user_id.split(':', 1)[0]!r} did not register it){hint}"
    raise UsageError(f"unknown environment id {env_id!r}{hint}")


def make_vec_env(env_id: str, num_envs: int, device: torch.device, *, render: bool = False,
                 split: str = "train", env_kwargs: dict[str, Any] | None = None,
                 gym_packages: tuple[str, ...] = (), halves: bool = False, **options: Any) -> TensorVecEnv:
    """Build the `TensorVecEnv` for `env_id` on `device`.

    `options` are the Atari settings (`rlbase.envs.atari.GAME_OPTIONS` and `TRAINING_OPTIONS`:
    sticky_actions, frame_stack, noop_max, atari_max_episode_steps, clip_rewards,
    terminal_on_life_loss); other backends ignore them. `render=True` builds a backend that can
    return RGB frames (for videos).
    `split` (train or eval) picks the level-seed half of procedural native envs, and `env_kwargs`
    go to the env's constructor (native and other Gymnasium ids).
    `env_id` may name a user module, Gymnasium's `module:EnvId-v0`, and `gym_packages` packages
    to import first; both register envs on import (see `import_env_modules`).
    `halves=True` builds the envs as the two halves of a `SplitVecEnv` (`--split-envs`), for backends
    that step in threads of their own; another backend is a UsageError.
    """
    known = (*GAME_OPTIONS, *TRAINING_OPTIONS)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"make_vec_env got unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    env_id = check_env_id(env_id, gym_packages)
    env_kwargs = dict(env_kwargs or {})
    if halves:
        env = _make_halves(env_id, num_envs, device, render, split, env_kwargs, options)
    else:
        env = _make(env_id, num_envs, device, render, split, env_kwargs, options)
    env.env_kwargs = env_kwargs  # so a run handed this env can rebuild it (evaluation envs)
    return env


def _make_halves(env_id: str, num_envs: int, device: torch.device, render: bool, split: str,
                 env_kwargs: dict[str, Any], options: dict[str, Any]) -> TensorVecEnv:
    from rlbase.envs.core import SplitVecEnv

    if num_envs < 2:
        raise UsageError(f"--split-envs needs --num-envs >= 2, got {num_envs}")
    first = _make(env_id, num_envs // 2, device, render, split, env_kwargs, options)
    if not first.steps_in_threads:
        first.close()
        raise UsageError(f"--split-envs needs envs that step in threads of their own (Atari ids); {env_id} steps "
                         "in the agent's thread, where halves would only add work")
    try:
        second = _make(env_id, num_envs - num_envs // 2, device, render, split, env_kwargs, options)
    except BaseException:
        first.close()
        raise
    return SplitVecEnv([first, second])


def _make(env_id: str, num_envs: int, device: torch.device, render: bool, split: str, env_kwargs: dict[str, Any],
          options: dict[str, Any]) -> TensorVecEnv:
    from rlbase.envs.gym_adapter import GymVecEnv

    if is_native(env_id):
        return make_native_vec_env(env_id, num_envs, device, split, **env_kwargs)

    if is_atari(env_id):
        if env_kwargs:
            raise UsageError("--env-kwargs is not supported for Atari ids; use the Atari flags (--sticky-actions, ...)")
        from rlbase.envs.atari import make_atari_vec_env

        return make_atari_vec_env(env_id, num_envs, device, render=render, **options)

    # render_mode only when asked for: a user env whose constructor takes no render_mode must still build.
    make_kwargs = {**env_kwargs, "render_mode": "rgb_array"} if render else env_kwargs
    fns = [lambda: gym.make(env_id, **make_kwargs) for _ in range(num_envs)]
    try:
        return GymVecEnv(fns, env_id, device)
    except (gym.error.Error, TypeError, ValueError) as exc:  # ValueError: the env's own check of its kwargs
        raise UsageError(f"cannot create {env_id!r}: {_first_line(exc)}") from None
