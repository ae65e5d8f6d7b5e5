"""Agents: one module per algorithm family, each with a config dataclass, `train` and `load_policy`."""

from __future__ import annotations

import importlib
from types import ModuleType

from rlbase.errors import UsageError

ALGORITHMS = ("dqn", "ppo", "a2c", "reinforce")


def get_algorithm(name: str) -> ModuleType:
    """The agent module for `name`, with `Config`, `validate`, `check_env`, `train` and `load_policy`."""
    if name not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
    return importlib.import_module(f"rlbase.agents.{name}")
