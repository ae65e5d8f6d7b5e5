"""rlbase: reinforcement-learning agents and device-resident environments on PyTorch and Gymnasium."""

__version__ = "0.1.0"

# Registers rlbase's own envs (rlbase/Maze-v0, ...) with Gymnasium, so `gymnasium.make` finds them.
import rlbase.envs  # noqa: E402,F401
