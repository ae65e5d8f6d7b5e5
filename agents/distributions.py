"""Policy distributions of the policy-gradient agents: Categorical (Discrete), MultiCategorical
(MultiDiscrete) and a diagonal Gaussian (Box, clipped or tanh-squashed onto the bounds).

Small and explicit: `torch.distributions` validates and allocates on every call, which costs more
than the math for small policies; tests/test_pg_distributions.py checks these against it.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlbase.errors import UsageError

LOG_2PI = math.log(2.0 * math.pi)


class Categorical:
    """Discrete actions: logits (B, n)."""

    def __init__(self, n: int):
        self.num_params = n
        self.action_shape: tuple[int, ...] = ()
        self.action_dtype = torch.int64

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample, and cheaper than multinomial.
        u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(min=1e-20)
        return (logits - torch.log(-torch.log(u))).argmax(-1)

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def log_prob(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        logp = logits.log_softmax(-1)
        return -(logp.exp() * logp).sum(-1)


class MultiCategorical:
    """MultiDiscrete actions: one categorical per component; logits (B, sum(nvec))."""

    def __init__(self, nvec: np.ndarray):
        self.sizes = [int(n) for n in np.asarray(nvec).reshape(-1)]
        self.num_params = sum(self.sizes)
        self.action_shape = (len(self.sizes),)
        self.action_dtype = torch.int64
        self.part = Categorical(1)

    def _split(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return logits.split(self.sizes, dim=-1)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.stack([self.part.sample(part, generator) for part in self._split(logits)], dim=-1)

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.stack([part.argmax(-1) for part in self._split(logits)], dim=-1)

    def log_prob(self, logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return sum(self.part.log_prob(part, actions[..., i]) for i, part in enumerate(self._split(logits)))

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        return sum(self.part.entropy(part) for part in self._split(logits))


class DiagGaussian:
    """Box actions: a diagonal Gaussian with state-independent log-std; params (B, 2A) = (mean, log_std).

    With `squash`, the sampled u is mapped onto the bounds by low + (tanh(u) + 1) / 2 * (high - low)
    and the log-probability includes that change of variables; the stored action is u itself.
    With clipping, the Gaussian sample is the action and the env side clips it (as SB3 does):
    the policy's log-probability is that of the unclipped sample it drew.
    """

    def __init__(self, space: gym.spaces.Box, squash: bool):
        self.dim = int(np.prod(space.shape))
        self.num_params = self.dim  # the mean; log-std is a separate parameter
        self.action_shape = (self.dim,)
        self.action_dtype = torch.float32
        self.squash = squash
        self.low = torch.as_tensor(space.low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(space.high, dtype=torch.float32).reshape(-1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mean, log_std = params.chunk(2, dim=-1)
        noise = torch.randn(mean.shape, device=mean.device, generator=generator)
        return mean + log_std.exp() * noise

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return params.chunk(2, dim=-1)[0]

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = params.chunk(2, dim=-1)
        z = (actions - mean) * torch.exp(-log_std)
        logp = (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)
        if self.squash:  # d(action)/du = (high - low) / 2 * (1 - tanh(u)^2), in a stable form
            half_range = ((self.high - self.low) / 2).to(actions.device)
            log_det = math.log(2.0) - actions - nn.functional.softplus(-2.0 * actions)
            logp = logp - (torch.log(half_range) + 2.0 * log_det).sum(-1)
        return logp

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        # The Gaussian's entropy (for squash, the usual stand-in: the tanh's has no closed form).
        log_std = params.chunk(2, dim=-1)[1]
        return (0.5 + 0.5 * LOG_2PI + log_std).sum(-1)

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        low, high = self.low.to(actions.device), self.high.to(actions.device)
        if self.squash:
            return low + (torch.tanh(actions) + 1.0) * 0.5 * (high - low)
        return torch.maximum(torch.minimum(actions, high), low)


def make_distribution(space: gym.spaces.Space, action_bounds: str = "clip"):
    if isinstance(space, gym.spaces.Discrete):
        return Categorical(int(space.n))
    if isinstance(space, gym.spaces.MultiDiscrete):
        return MultiCategorical(space.nvec)
    if isinstance(space, gym.spaces.Box):
        return DiagGaussian(space, squash=action_bounds == "squash")
    raise UsageError(f"unsupported action space {space}")


def env_actions(dist: Any, actions: torch.Tensor, space: gym.spaces.Space) -> torch.Tensor:
    """What the env receives: bounded Box actions; MultiDiscrete offsets for spaces with `start`."""
    if isinstance(dist, DiagGaussian):
        return dist.to_env(actions).reshape(actions.shape[:-1] + space.shape)
    if isinstance(dist, MultiCategorical):
        actions = actions.reshape(actions.shape[:-1] + space.shape)
    start = getattr(space, "start", None)
    if start is not None and np.any(start != 0):
        return actions + torch.as_tensor(start, device=actions.device)
    return actions
