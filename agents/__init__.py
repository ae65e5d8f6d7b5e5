"""Agents: one module per algorithm family, each with a config dataclass, `train` and `load_policy`."""

from __future__ import annotations

from types import ModuleType

from rlbase.errors import UsageError

ALGORITHMS = ("dqn",)


def get_algorithm(name: str) -> ModuleType:
    """The agent module for `name`, with `Config`, `validate`, `train` and `load_policy`."""
    if name == "dqn":
        from rlbase.agents import dqn

        return dqn
    raise UsageError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
