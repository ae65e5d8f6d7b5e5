"""Rollout-side state of the policy-gradient agents: running observation/return normalisation
(VecNormalize's statistics, kept on the device), the rollout storage, and GAE(lambda) returns.

Everything here lives on the env's device; nothing reads values back to the host except
`RolloutStorage.bootstrap_truncated`, once per rollout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import gymnasium as gym
import torch

from rlbase.obs import Obs, allocate, obs_map, take

if TYPE_CHECKING:
    from rlbase.agents.pg import PGConfig


# --------------------------------------------------------------------------------------------
# Running normalisation (VecNormalize's statistics, kept on the device)
# --------------------------------------------------------------------------------------------
class RunningMeanStd:
    """Running mean and variance over batches (parallel algorithm of Chan et al.), on the device."""

    def __init__(self, shape: tuple[int, ...], device: torch.device):
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = torch.full((), 1e-4, dtype=torch.float64, device=device)

    def update(self, batch: torch.Tensor) -> None:
        batch = batch.to(torch.float64)
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False)
        n = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * (n / total)
        self.var = (self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total
        self.count = total

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.mean": self.mean, f"{prefix}.var": self.var, f"{prefix}.count": self.count}

    def load(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        """Restore `state(prefix)`, checked: the same shapes, finite values, var >= 0, count > 0
        (a hand-edited statistic would scale every observation by NaN)."""
        device = self.mean.device
        values = {}
        for name in ("mean", "var", "count"):
            saved = tensors[f"{prefix}.{name}"]
            own = getattr(self, name)
            if saved.shape != own.shape:
                raise ValueError(f"{prefix}.{name} has shape {tuple(saved.shape)}, expected {tuple(own.shape)}")
            if not saved.is_floating_point() or not bool(torch.isfinite(saved).all()):
                raise ValueError(f"{prefix}.{name} must hold finite floating-point values")
            values[name] = saved.to(device, torch.float64).clone()
        if bool((values["var"] < 0).any()) or float(values["count"]) <= 0:
            raise ValueError(f"{prefix}.var must be >= 0 and {prefix}.count positive")
        self.mean, self.var, self.count = values["mean"], values["var"], values["count"]


class Normalizer:
    """Observation and reward normalisation for one run; a no-op for what is switched off."""

    def __init__(self, cfg: PGConfig, obs_shape: tuple[int, ...], num_envs: int, device: torch.device):
        self.cfg = cfg
        self.obs = RunningMeanStd(obs_shape, device) if cfg.normalize_obs else None
        self.ret = RunningMeanStd((), device) if cfg.normalize_reward else None
        self.discounted = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.training = True

    def observation(self, obs: torch.Tensor, update: bool = True) -> torch.Tensor:
        if self.obs is None:
            return obs
        if update and self.training:
            self.obs.update(obs)
        scaled = (obs - self.obs.mean) / torch.sqrt(self.obs.var + 1e-8)
        return scaled.clamp(-self.cfg.clip_obs, self.cfg.clip_obs).to(torch.float32)

    def reward(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        if self.ret is None:
            return rewards
        self.discounted = self.discounted * self.cfg.gamma + rewards
        self.ret.update(self.discounted)
        self.discounted = self.discounted.masked_fill(dones, 0.0)
        scaled = rewards / torch.sqrt(self.ret.var + 1e-8)
        return scaled.clamp(-self.cfg.clip_reward, self.cfg.clip_reward).to(torch.float32)

    def state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.obs is not None:
            out.update(self.obs.state("obs_rms"))
        if self.ret is not None:
            out.update(self.ret.state("ret_rms"))
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.obs is not None:
            self.obs.load(tensors, "obs_rms")
        if self.ret is not None:
            self.ret.load(tensors, "ret_rms")


# --------------------------------------------------------------------------------------------
# Rollout storage and returns
# --------------------------------------------------------------------------------------------
class RolloutStorage:
    """One rollout, `(num_steps, num_envs, ...)` on the device, allocated once.

    `train_ends[t]` marks that the episode ended at step t for learning purposes (terminated,
    truncated, or an Atari life loss), unlike the env's `dones` (real episode ends): nothing is
    bootstrapped across it. Truncated steps bootstrap from the
    value of their `final_obs`, added to their reward as gamma * V(final_obs) in `bootstrap_truncated`.
    """

    def __init__(self, num_steps: int, num_envs: int, observation_space: gym.spaces.Space, obs_dtype: torch.dtype | None,
                 action_shape: tuple[int, ...], action_dtype: torch.dtype, device: torch.device):
        T, N = num_steps, num_envs
        self.num_steps, self.num_envs = T, N
        # e.g. (128, 8, 4, 84, 84) uint8; a dict of such tensors for Dict observations (image + instruction).
        # `obs_dtype` overrides the space's dtype (float32 for normalised observations).
        self.obs: Obs = allocate(observation_space, (T, N), device, obs_dtype)
        self.final_obs: Obs = allocate(observation_space, (T, N), device, obs_dtype)  # last obs of episodes ended at t
        self.actions = torch.zeros((T, N, *action_shape), dtype=action_dtype, device=device)
        self.logprobs = torch.zeros((T, N), device=device)
        self.rewards = torch.zeros((T, N), device=device)
        self.values = torch.zeros((T, N), device=device)
        self.train_ends = torch.zeros((T, N), dtype=torch.bool, device=device)  # train_terminal | truncated
        self.truncated = torch.zeros((T, N), dtype=torch.bool, device=device)
        self.advantages = torch.zeros((T, N), device=device)
        self.returns = torch.zeros((T, N), device=device)

    @torch.no_grad()
    def bootstrap_truncated(self, value_fn: Callable[[Obs], torch.Tensor], gamma: float) -> None:
        """rewards[t] += gamma * V(final_obs[t]) where an episode was truncated (not terminated).

        One host sync per rollout to find the (usually few) truncated steps; only those rows are
        evaluated.
        """
        index = self.truncated.flatten().nonzero().squeeze(-1)
        if index.numel() == 0:
            return
        final = take(obs_map(lambda x: x.flatten(0, 1), self.final_obs), index)
        self.rewards.view(-1).index_add_(0, index, gamma * value_fn(final).to(self.rewards.dtype))

    @torch.no_grad()
    def compute_returns(self, last_value: torch.Tensor, gamma: float, gae_lambda: float) -> None:
        compute_gae(self.rewards, self.values, self.train_ends, last_value, gamma, gae_lambda,
                    out_advantages=self.advantages)
        torch.add(self.advantages, self.values, out=self.returns)

    def flat(self) -> dict[str, torch.Tensor]:
        """The rollout as (num_steps * num_envs, ...) views, for minibatching."""
        return {"obs": obs_map(lambda x: x.flatten(0, 1), self.obs), "actions": self.actions.flatten(0, 1),
                "logprobs": self.logprobs.flatten(), "values": self.values.flatten(),
                "advantages": self.advantages.flatten(), "returns": self.returns.flatten()}


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, train_ends: torch.Tensor, last_value: torch.Tensor,
                gamma: float, gae_lambda: float, out_advantages: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016) as a reverse scan over time.

    All arguments are (T, N) except `last_value` (N,), the value of the observation after the
    rollout. `train_ends[t]` (the episode ended at t for learning) cuts the recursion: the value
    at t + 1 belongs to the next episode.
    Truncation bootstraps are expected to be already folded into `rewards`.
    """
    T = rewards.shape[0]
    advantages = out_advantages if out_advantages is not None else torch.empty_like(rewards)
    not_ended = (~train_ends).to(rewards.dtype)
    next_values = torch.cat([values[1:], last_value.unsqueeze(0)], dim=0)
    # Every delta at once; only the recursion runs step by step (over time, never over envs).
    deltas = rewards + gamma * next_values * not_ended - values
    decay = gamma * gae_lambda * not_ended
    running = torch.zeros_like(last_value, dtype=rewards.dtype)
    for t in range(T - 1, -1, -1):
        running = deltas[t] + decay[t] * running
        advantages[t] = running
    return advantages


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Var[target - predicted] / Var[target] (nan when the target is constant), on the device."""
    var = target.var()
    return torch.where(var > 0, 1 - (target - predicted).var() / var, torch.full_like(var, float("nan")))
