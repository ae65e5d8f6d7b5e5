"""What the policy-gradient agents (PPO, A2C, REINFORCE) share: config, the actor-critic network,
the rollout loop and the evaluation policy (policy distributions are in agents/distributions.py;
running normalisation, rollout storage and GAE in agents/rollout.py; the run's bookkeeping, from
seeding to checkpoints, in rlbase/run.py).

Each agent module adds only its own hyperparameters and its `update` (the loss and the optimiser
steps on one rollout); rollout collection and returns are written once, here.

Rollouts live on the device, `(num_steps, num_envs, ...)`, allocated once. Acting is one batched
forward for all envs; values reach the host only at log intervals.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlbase.agents.distributions import (Categorical, DiagGaussian, MultiCategorical,  # noqa: F401
                                         env_actions, make_distribution)
# Re-exported: the agents and tests reach the rollout side through this module too.
from rlbase.agents.rollout import (ALL_ROWS, Normalizer, RolloutStorage, RunningMeanStd,  # noqa: F401
                                   compute_gae, explained_variance, play_rollout)
from rlbase import transfer
from rlbase.agents import Agent, AgentSpec, Policy
from rlbase.agents.pg_config import PGConfig, validate_pg  # noqa: F401 (re-exported)
from rlbase.checkpoint import load_module
from rlbase.envs import TensorVecEnv
from rlbase.envs.gym_adapter import unsupported_observations
from rlbase.errors import UsageError
from rlbase.obs import assign
from rlbase.optim import Optimizer, annealed_lr, make_adam
from rlbase.run import Run
from rlbase.transfer import BackboneSpec


def check_env(cfg: PGConfig, env: TensorVecEnv) -> None:
    """A UsageError when the agent cannot act in `env`."""
    unsupported = unsupported_observations(cfg.env_id, env.single_observation_space)
    if unsupported:
        raise UsageError(f"policy-gradient agents take Box observations or a Dict of them: {unsupported}")
    space = env.single_action_space
    if isinstance(space, gym.spaces.Box):
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise UsageError(f"{cfg.env_id} has an unbounded Box action space; policy-gradient agents need finite bounds")
    elif not isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        raise UsageError(f"{cfg.env_id} has a {type(space).__name__} action space; "
                         "supported: Discrete, MultiDiscrete and Box")
    if cfg.normalize_obs and isinstance(env.single_observation_space, gym.spaces.Dict):
        raise UsageError(f"--normalize-obs needs a Box observation space; {cfg.env_id} has Dict observations")


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
def _orthogonal_init(module: nn.Module, gain: float) -> None:
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            # Initialise a contiguous copy: orthogonal_ cannot view channels_last conv weights.
            weight = torch.empty(layer.weight.shape)
            nn.init.orthogonal_(weight, gain)
            with torch.no_grad():
                layer.weight.copy_(weight)
            if layer.bias is not None:  # convolutions followed by a norm layer have none (resnet)
                nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """Backbone(s) -> policy parameters and state value. `forward(obs) -> (dist_params, value)`."""

    def __init__(self, cfg: PGConfig, backbone: BackboneSpec, observation_space: gym.spaces.Space, dist: Any):
        super().__init__()
        self.actor_backbone = backbone.build(observation_space)
        self.critic_backbone = None if cfg.shared_backbone else backbone.build(observation_space)
        critic_dim = (self.critic_backbone or self.actor_backbone).out_dim
        self.policy_head = nn.Linear(self.actor_backbone.out_dim, dist.num_params)
        self.value_head = nn.Linear(critic_dim, 1)
        self.log_std = (nn.Parameter(torch.full((dist.dim,), cfg.log_std_init))
                        if isinstance(dist, DiagGaussian) else None)
        if cfg.ortho_init:
            for backbone in (self.actor_backbone, self.critic_backbone):
                if backbone is not None:
                    _orthogonal_init(backbone, math.sqrt(2))
                    for module in backbone.modules():  # FiLM generators start at identity
                        if hasattr(module, "reset_conditioning"):
                            module.reset_conditioning()
            _orthogonal_init(self.policy_head, 0.01)
            _orthogonal_init(self.value_head, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.actor_backbone(obs)
        params = self.policy_head(features)
        if self.log_std is not None:
            params = torch.cat([params, self.log_std.expand_as(params)], dim=-1)
        critic_features = features if self.critic_backbone is None else self.critic_backbone(obs)
        return params, self.value_head(critic_features).squeeze(-1)

    def backbones(self) -> list[nn.Module]:
        return [b for b in (self.actor_backbone, self.critic_backbone) if b is not None]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.actor_backbone(obs) if self.critic_backbone is None else self.critic_backbone(obs)
        return self.value_head(features).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Training loop shared by the agents
# --------------------------------------------------------------------------------------------
UpdateFn = Callable[[PGConfig, ActorCritic, Optimizer, RolloutStorage, Any, torch.Generator], dict[str, torch.Tensor]]
# (config, parameter groups from `transfer.parameter_groups`) -> optimiser
MakeOptimizer = Callable[[PGConfig, list[dict[str, Any]]], Optimizer]


def train_loop(cfg: PGConfig, env: TensorVecEnv, run: Run, update: UpdateFn,
               make_optimizer: MakeOptimizer | None = None) -> dict[str, Any]:
    """Collect rollouts and hand each one to `update`. `run` (rlbase.run.Run) seeds the action
    generator, counts episodes and steps, logs, checkpoints, resumes and runs the callbacks.

    Returns counters, recent-episode statistics, the last update's metrics and the trained
    `model` (for in-process use: tests, benchmarks, notebooks).
    """
    device = env.device
    action_space, obs_space = env.single_action_space, env.single_observation_space
    dist = make_distribution(action_space, cfg.action_bounds)
    model = ActorCritic(cfg, run.backbone, obs_space, dist)
    parts = transfer.prepare(run.backbone, model.backbones(), obs_space, fresh=not run.resuming)  # after orthogonal init
    model.to(device)
    groups = transfer.parameter_groups(model, parts, run.backbone)
    optimizer = (make_optimizer or (lambda c, g: make_adam(g, c.learning_rate, c.adam_eps)))(cfg, groups)
    storage = RolloutStorage(cfg.num_steps, env.num_envs, obs_space, torch.float32 if cfg.normalize_obs else None,
                             dist.action_shape, dist.action_dtype, device)
    normalizer = Normalizer(cfg, obs_space.shape, env.num_envs, device)
    counters = run.restore(modules={"model": model}, optimizer=optimizer, state=[normalizer],
                           counters={"rollouts": 0, "num_updates": 0})
    generator, timer = run.generator, run.timer
    act_model = torch.compile(model) if cfg.compile else model
    batch = cfg.num_steps * env.num_envs
    num_rollouts = max(1, math.ceil(cfg.total_timesteps / batch))
    metrics: dict[str, torch.Tensor] = {}

    def act(t: int, rows: slice, obs: Any) -> tuple[torch.Tensor, Callable[[], None]]:
        params, value = act_model(obs)
        actions = dist.sample(params, generator)

        def store() -> None:
            assign(storage.obs, (t, rows), obs)
            storage.actions[t, rows] = actions
            storage.logprobs[t, rows] = dist.log_prob(params, actions)
            storage.values[t, rows] = value

        return env_actions(dist, actions, action_space), store

    def observe(t: int, rows: slice, result: tuple[Any, ...]) -> Any:
        next_obs, rewards, terminated, truncated, info = result
        dones = terminated | truncated
        train_rewards, train_terminal = env.training_signal(rewards, terminated, info)
        storage.rewards[t, rows] = normalizer.reward(train_rewards, dones, rows)
        storage.train_ends[t, rows] = train_terminal | truncated
        # Gymnasium's TimeLimit also flags truncation on a terminal last step: terminal wins.
        storage.truncated[t, rows] = truncated & ~train_terminal
        assign(storage.final_obs, (t, rows), normalizer.observation(info["final_obs"], update=False))
        run.record_episodes(info, dones, None if rows == ALL_ROWS else rows)
        return normalizer.observation(next_obs)  # the env already reset ended episodes

    obs = normalizer.observation(run.start())
    while not run.done:
        lr = annealed_lr(cfg, counters["rollouts"], num_rollouts, batch)
        transfer.set_learning_rate(optimizer, lr)  # pretrained backbone groups: lr * --backbone-lr-scale

        # ---- collect one rollout ------------------------------------------------------------
        model.eval()
        with torch.no_grad():
            obs = play_rollout(env, cfg.num_steps, obs, act, observe, timer)
            storage.bootstrap_truncated(model.value, cfg.gamma)
            storage.compute_returns(model.value(obs), cfg.gamma, cfg.gae_lambda)
        timer.mark("learn")

        # ---- learn from it ---------------------------------------------------------------------
        model.train()
        metrics = update(cfg, model, optimizer, storage, dist, generator)
        metrics["train/explained_variance"] = explained_variance(storage.values.flatten(), storage.returns.flatten())
        counters["rollouts"] += 1
        counters["num_updates"] += int(metrics.pop("num_updates", 1))
        timer.mark("learn")
        run.advance(batch, lambda: log_scalars(metrics, lr, counters["num_updates"], model))

    return run.finish(model=model, normalizer=normalizer, train_metrics={k: float(v) for k, v in metrics.items()})


def log_scalars(metrics: dict[str, torch.Tensor], lr: float, num_updates: int, model: ActorCritic) -> dict[str, float]:
    """The SB3 on-policy train/* tags, read from the device once per log interval (the run adds
    the rollout/* episode statistics)."""
    scalars = {"train/learning_rate": lr, "train/n_updates": num_updates}
    scalars.update({k: float(v) for k, v in metrics.items()})
    if model.log_std is not None:
        scalars["train/std"] = float(model.log_std.detach().exp().mean())
    return scalars


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
class PGActingNet(nn.Module):
    """A policy-gradient agent's acting path (see `Agent.acting_net`): the frozen observation
    normalisation, the actor's backbone and policy head, and the distribution's mode in the env's
    action format. `log_std` (Gaussian policies) is the saved state-independent log-std."""

    def __init__(self, model: ActorCritic, dist: Any, action_space: gym.spaces.Space, obs_rms: Any, clip_obs: float):
        super().__init__()
        self.kind = {Categorical: "categorical", MultiCategorical: "multicategorical"}.get(type(dist), "gaussian")
        self.backbone, self.head, self.dist, self.action_space = model.actor_backbone, model.policy_head, dist, action_space
        self.log_std = model.log_std
        self.clip_obs = clip_obs
        self.normalize = obs_rms is not None
        if self.normalize:
            self.register_buffer("obs_mean", obs_rms.mean.clone())
            self.register_buffer("obs_std", torch.sqrt(obs_rms.var + 1e-8))

    def forward(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize:  # as Normalizer.observation, frozen
            obs = ((obs - self.obs_mean) / self.obs_std).clamp(-self.clip_obs, self.clip_obs).to(torch.float32)
        outputs = self.head(self.backbone(obs))
        params = outputs if self.log_std is None else torch.cat([outputs, self.log_std.expand_as(outputs)], dim=-1)
        return outputs, env_actions(self.dist, self.dist.mode(params), self.action_space)


def _saved_model(cfg: PGConfig, tensors: dict[str, torch.Tensor], observation_space: gym.spaces.Space,
                 action_space: gym.spaces.Space, device: torch.device) -> tuple[ActorCritic, Any, Normalizer]:
    """The checkpoint's network, distribution and frozen normalisation."""
    dist = make_distribution(action_space, cfg.action_bounds)
    model = ActorCritic(cfg, transfer.parse(cfg, observation_space, with_weights=False), observation_space, dist)
    model.to(device)
    load_module(model, tensors, "model.")
    model.eval()
    normalizer = Normalizer(cfg, getattr(observation_space, "shape", None), 1, device)
    normalizer.load(tensors)
    normalizer.training = False
    return model, dist, normalizer


def acting_net(cfg: PGConfig, tensors: dict[str, torch.Tensor], observation_space: gym.spaces.Space,
               action_space: gym.spaces.Space, device: torch.device) -> PGActingNet:
    model, dist, normalizer = _saved_model(cfg, tensors, observation_space, action_space, device)
    return PGActingNet(model, dist, action_space, normalizer.obs, cfg.clip_obs).eval()


def load_policy(cfg: PGConfig, tensors: dict[str, torch.Tensor], observation_space: gym.spaces.Space,
                action_space: gym.spaces.Space, device: torch.device) -> Policy:
    """The evaluation policy of a trained agent: the saved network behind the saved (frozen) normalisation.

    Plays the mode / mean action when `cfg.eval_deterministic`, else samples.
    """
    model, dist, normalizer = _saved_model(cfg, tensors, observation_space, action_space, device)

    @torch.no_grad()
    def policy(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        params, _ = model(normalizer.observation(obs, update=False))
        actions = dist.mode(params) if cfg.eval_deterministic else dist.sample(params, generator)
        return env_actions(dist, actions, action_space)

    return policy


def pg_agent(spec: AgentSpec, train: Callable[[Any, TensorVecEnv, Run], dict[str, Any]]) -> Agent:
    """The `Agent` record of a policy-gradient agent (they share check_env, load_policy and sampling)."""
    return Agent.of(spec, check_env=check_env, train=train, load_policy=load_policy, acting_net=acting_net,
                    exploration="sample")
