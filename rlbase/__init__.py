"""rlbase: reinforcement-learning agents and device-resident environments on PyTorch and Gymnasium."""

__version__ = "0.1.0"
