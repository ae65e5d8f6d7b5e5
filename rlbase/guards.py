"""Non-finite guards: training stops with one line naming the step and the first non-finite
quantity, instead of running on and saving NaN weights.

None of these reads the device on its own: the logged values are checked when they are read
anyway (log intervals), the weights once per checkpoint, and `--check-env-values` keeps a
device-side record of the first bad step that is read at those same points.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlbase.errors import RlbaseError

NAN_BY_DEFINITION = frozenset({"train/explained_variance"})
"""Logged values that are NaN by definition at times (explained variance of constant returns)."""


class NonFiniteError(RlbaseError):
    """Training produced NaN or infinity; the run stopped without saving it (exit code 1)."""


def first_nonfinite_value(values: dict[str, Any]) -> str | None:
    """The first logged value that is NaN or infinite ("train/loss = nan"), or None."""
    for tag, value in values.items():
        if tag in NAN_BY_DEFINITION or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            return f"{tag} = {value}"
    return None


def first_nonfinite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None (one host read
    per device for all of its tensors together: a checkpoint holds CUDA weights and CPU counters)."""
    floats = [(name, t) for name, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not floats:
        return None
    by_device: dict[torch.device, list[int]] = {}
    for index, (_, t) in enumerate(floats):
        by_device.setdefault(t.device, []).append(index)
    flags = torch.empty(len(floats), dtype=torch.bool)
    for indices in by_device.values():
        flags[indices] = torch.stack([torch.isfinite(floats[i][1]).all() for i in indices]).cpu()
    if bool(flags.all()):
        return None
    return floats[int((~flags).nonzero()[0, 0])][0]


def _finite(value: Any) -> torch.Tensor | None:
    """A 0-d bool tensor: whether every float in `value` (a tensor or a dict of them) is finite."""
    parts = value.values() if isinstance(value, dict) else (value,)
    checks = [torch.isfinite(t).all() for t in parts if torch.is_tensor(t) and t.is_floating_point()]
    if not checks:
        return None
    return checks[0] if len(checks) == 1 else torch.stack(checks).all()


class CheckedEnv:
    """`--check-env-values`: a TensorVecEnv that records, on the device, the first step whose
    observations or rewards hold NaN or infinity (no host sync per step; `problem()` reads it).

    Everything else is the wrapped env's (attributes and methods are forwarded).
    """

    def __init__(self, env: Any):
        self.env = env
        self.step_offset = 0  # the run's global step at the last reset (set by the run)
        self._steps = 0
        self._first_bad = {key: torch.full((), -1, dtype=torch.int64, device=env.device)
                           for key in ("observation", "reward")}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def _record(self, key: str, value: Any) -> None:
        finite = _finite(value)
        if finite is not None:
            first = self._first_bad[key]
            first.masked_fill_(~finite & (first < 0), self.step_offset + self._steps * self.env.num_envs)

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed)
        self._steps = 0
        self._record("observation", obs)
        return obs, info

    def _checked(self, result: tuple, advance: bool = True) -> tuple:
        obs, rewards = result[0], result[1]
        self._steps += advance
        self._record("observation", obs)
        self._record("reward", rewards)
        return result

    def step(self, actions: torch.Tensor) -> tuple:
        return self._checked(self.env.step(actions))

    def step_async(self, actions: torch.Tensor) -> None:
        self.env.step_async(actions)

    def step_wait(self) -> tuple:
        return self._checked(self.env.step_wait())

    def step_group_async(self, index: int, actions: torch.Tensor) -> None:  # a SplitVecEnv's halves
        self.env.step_group_async(index, actions)

    def step_group_wait(self, index: int) -> tuple:
        return self._checked(self.env.step_group_wait(index), advance=index == 0)  # a step starts with half 0

    def problem(self) -> str | None:
        """"observation is non-finite at step N" for the first bad value so far, or None (one host read)."""
        firsts = torch.stack(list(self._first_bad.values())).tolist()
        bad = [(step, key) for step, key in zip(firsts, self._first_bad) if step >= 0]
        if not bad:
            return None
        step, key = min(bad)
        return f"the env's {key} is NaN or infinite at step {step:,}"

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> CheckedEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
