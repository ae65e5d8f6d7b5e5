"""rlbase: reinforcement-learning agents and device-resident environments on PyTorch and Gymnasium.

    from rlbase import PPO
    agent = PPO("rlbase/CartPole-v1", seed=0).learn()

The agent classes (DQN, PQN, PPO, A2C, REINFORCE, and `load`) live in rlbase.api and are imported on
first use, so `import rlbase` stays cheap for the command line.
"""

__version__ = "0.1.0"

_API = ("Algorithm", "DQN", "PQN", "PPO", "A2C", "REINFORCE", "load", "algorithm_class")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from rlbase import api

        return getattr(api, name)
    if name.isupper():  # the class of an agent registered later (rlbase.agents.AGENT_MODULES)
        from rlbase.agents import AGENT_MODULES
        from rlbase.api import algorithm_class

        if name.lower() in AGENT_MODULES:
            return algorithm_class(name.lower())
    raise AttributeError(f"module 'rlbase' has no attribute {name!r}")

# Registers rlbase's own envs (rlbase/Maze-v0, ...) with Gymnasium, so `gymnasium.make` finds them.
import rlbase.envs  # noqa: E402,F401
