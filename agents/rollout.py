"""Rollout-side state of the policy-gradient agents: running observation/return normalisation
(VecNormalize's statistics, kept on the device), the rollout storage, and GAE(lambda) returns.

Everything here lives on the env's device; nothing reads values back to the host except
`RolloutStorage.bootstrap_truncated`, once per rollout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

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

    def reward(self, rewards: torch.Tensor, dones: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Scaled rewards of one step of the envs `rows` (all of them by default)."""
        if self.ret is None:
            return rewards
        discounted = self.discounted[rows] * self.cfg.gamma + rewards
        self.ret.update(discounted)
        self.discounted[rows] = discounted.masked_fill(dones, 0.0)
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


# --------------------------------------------------------------------------------------------
# Playing a rollout: one env batch, or two halves stepped alternately
# --------------------------------------------------------------------------------------------
ALL_ROWS = slice(None)
Act = Callable[[int, slice, Obs], tuple[torch.Tensor, Callable[[], None]]]
Observe = Callable[[int, slice, tuple[Any, ...]], Obs]


def play_rollout(env: Any, num_steps: int, obs: Obs, act: Act, observe: Observe, timer: Any) -> Obs:
    """Play `num_steps` steps of every env from `obs`; return the observations after the last one.

    `act(t, rows, obs)` chooses the actions of the envs `rows` at step t and returns them in the
    env's format with a `store()` that writes what the rollout keeps of that choice (called once
    the step is under way); `observe(t, rows, result)` writes what the step `result` (`step_wait`'s
    five values, those rows only) teaches and returns the rows' next observations.

    A `SplitVecEnv` (`--split-envs`) is played half by half, alternately: half A's step runs in its
    threads while the agent observes half B's previous step and acts for B, and B's runs while A's
    is observed and acted on, so the emulators and the forward passes overlap (EnvPool's async
    mode). Every env still steps `num_steps` times in step order, so the rollout has the same
    layout; only the random draws come in another order. The stage timer's marks are the same:
    `act`, `store`, `env`.
    """

    def start(index: int, t: int, rows: slice, rows_obs: Obs) -> None:
        actions, store = act(t, rows, rows_obs)
        env.step_group_async(index, actions)
        timer.mark("act")
        store()
        timer.mark("store")

    def finish(index: int, t: int, rows: slice) -> Obs:
        result = env.step_group_wait(index)
        timer.mark("env")
        rows_obs = observe(t, rows, result)
        timer.mark("store")
        return rows_obs

    groups = getattr(env, "groups", None)
    if groups is None:
        for t in range(num_steps):
            actions, store = act(t, ALL_ROWS, obs)
            env.step_async(actions)
            timer.mark("act")
            store()
            timer.mark("store")
            result = env.step_wait()
            timer.mark("env")
            obs = observe(t, ALL_ROWS, result)
            timer.mark("store")
        return obs
    a, b = groups
    obs_a, obs_b = take(obs, a), take(obs, b)
    start(0, 0, a, obs_a)
    for t in range(num_steps):
        if t > 0:
            obs_b = finish(1, t - 1, b)
        start(1, t, b, obs_b)
        obs_a = finish(0, t, a)
        if t + 1 < num_steps:
            start(0, t + 1, a, obs_a)
    obs_b = finish(1, num_steps - 1, b)
    if isinstance(obs_a, dict):
        return {key: torch.cat([obs_a[key], obs_b[key]]) for key in obs_a}
    return torch.cat([obs_a, obs_b])
