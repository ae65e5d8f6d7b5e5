"""rlbase: reinforcement-learning agents and device-resident environments on PyTorch and Gymnasium.

    from rlbase import PPO
    agent = PPO("rlbase/CartPole-v1", seed=0).learn()

The agent classes (DQN, PQN, PPO, A2C, REINFORCE, and `load`) live in rlbase.api and are imported on
first use, so `import rlbase` stays cheap for the command line.
"""

import itertools as _itertools
import os as _os
import signal as _signal
import sys as _sys

__version__ = "0.1.0"


def _starting_the_command() -> bool:
    """Whether this import is the `rlbase` command starting: the console script (`__main__` is the
    script itself) or `python -m rlbase` (the package imported while runpy looks for its __main__)."""
    main_file = getattr(_sys.modules.get("__main__"), "__file__", None) or ""
    if _os.path.basename(main_file) == "rlbase":
        return True
    argv = getattr(_sys, "orig_argv", [])
    return _sys.argv[:1] == ["-m"] and any(a == "-m" and b == "rlbase" for a, b in _itertools.pairwise(argv))


def _interrupted_starting(signum: int, frame: object) -> None:
    """Ctrl-C before the command line installs its own handler (rlbase.cli.main): nothing has been
    written yet, so end as an interrupted command does, in one line."""
    _sys.stderr.write("\nrlbase: interrupted\n")
    _sys.stderr.flush()
    _os._exit(130)


if _starting_the_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    # Importing gymnasium and torch takes seconds: a Ctrl-C then would otherwise print a traceback.
    try:
        _signal.signal(_signal.SIGINT, _interrupted_starting)
    except ValueError:  # not the main thread: not the command starting after all
        pass

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
