"""Deep Q-Networks.

Mnih et al. 2015, "Human-level control through deep reinforcement learning" (Nature), with
Double DQN targets (van Hasselt et al. 2016), the dueling head (Wang et al. 2016), n-step
returns (Sutton 1988; Hessel et al. 2018) and proportional prioritized replay (Schaul et al. 2016);
distributional heads, C51 (Bellemare et al. 2017) and QR-DQN (Dabney et al. 2018), and noisy
head layers (Fortunato et al. 2018): agents/qheads.py, agents/noisy.py. Together (C51, double,
dueling, n-step, prioritized, noisy) they make Rainbow (Hessel et al. 2018): `--preset rainbow`.

The whole loop stays on the device: acting, env stepping (device-resident or staged through
pinned memory), replay writes, sampling and updates. Values reach the host only at log and
checkpoint intervals.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlbase import transfer
from rlbase.agents import Agent, Policy
from rlbase.agents.noisy import mean_tensors, resample_noise
from rlbase.agents.dqn_config import SPECS, DQNConfig, validate  # noqa: F401 (re-exported)
from rlbase.agents.qheads import QNetwork, project_categorical, quantile_huber_loss
from rlbase.buffers import ReplayBuffer, ReplaySample
from rlbase.checkpoint import load_module
from rlbase.envs import TensorVecEnv
from rlbase.envs.gym_adapter import unsupported_observations
from rlbase.errors import UsageError
from rlbase.obs import batch_size, space_dtype
from rlbase.optim import annealed_lr, gradient_step, make_adam
from rlbase.run import Run
from rlbase.stats import DeviceMean
from rlbase.transfer import BackboneSpec
from rlbase.utils import available_memory, format_bytes


def check_env(cfg: DQNConfig, env: TensorVecEnv) -> None:
    """A UsageError when DQN cannot act in `env` (it needs a discrete action space)."""
    if not isinstance(env.single_action_space, gym.spaces.Discrete):
        raise UsageError(f"DQN needs a discrete action space; {cfg.env_id} has {env.single_action_space}")
    unsupported = unsupported_observations(cfg.env_id, env.single_observation_space)
    if unsupported:
        raise UsageError(f"DQN's replay buffer stores Box observations or a Dict of them: {unsupported}")
    need, free = replay_bytes(cfg, env), available_memory(env.device)
    if free is not None and need > free:
        raise UsageError(f"invalid --buffer-size: {cfg.buffer_size:,} transitions of {cfg.env_id} need "
                         f"{format_bytes(need)} of replay memory; {env.device} has {format_bytes(free)} available")


def replay_bytes(cfg: DQNConfig, env: TensorVecEnv) -> int:
    """The replay buffer's size in bytes, before allocating it: each frame stored once, plus action,
    reward and flags per transition (and the priority tree with --prioritized-replay)."""
    space = env.single_observation_space
    spaces = space.spaces.values() if isinstance(space, gym.spaces.Dict) else [space]
    frame = sum(int(np.prod(s.shape[1:] if env.frame_stack > 1 else s.shape)) * np.dtype(s.dtype).itemsize
                for s in spaces)
    rows = cfg.buffer_size // env.num_envs + 1
    return rows * env.num_envs * (frame + 12 + (16 if cfg.prioritized_replay else 0))


def head_options(cfg: DQNConfig, acting: bool = False) -> dict[str, Any]:
    """The QNetwork keyword arguments of `cfg` (`acting`: plain linear layers in place of noisy ones,
    to hold the mean weights)."""
    return {"distributional": cfg.distributional, "num_atoms": cfg.num_atoms, "v_min": cfg.v_min, "v_max": cfg.v_max,
            "num_quantiles": cfg.num_quantiles, "noisy": cfg.noisy and not acting, "noisy_sigma0": cfg.noisy_sigma0}


def build_q_network(backbone: BackboneSpec, observation_space: gym.spaces.Space, action_space: gym.spaces.Space,
                    dueling: bool, **head: Any) -> QNetwork:
    """The Q-network on `backbone`; `head`: QNetwork's keyword arguments (`head_options(cfg)`)."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise UsageError(f"DQN needs a discrete action space; got {action_space}")
    return QNetwork(backbone.build(observation_space), int(action_space.n), dueling, **head)


def linear_epsilon(cfg: DQNConfig, global_step: int) -> float:
    duration = cfg.exploration_fraction * cfg.total_timesteps
    progress = min(1.0, global_step / duration) if duration > 0 else 1.0
    return cfg.exploration_initial_eps + progress * (cfg.exploration_final_eps - cfg.exploration_initial_eps)


@torch.no_grad()
def select_actions(q: nn.Module, obs: torch.Tensor, epsilon: float, num_actions: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Epsilon-greedy for the whole batch of envs with one forward pass, on the device."""
    n, device = batch_size(obs), generator.device
    random_actions = torch.randint(num_actions, (n,), device=device, generator=generator)
    if epsilon >= 1.0:  # pure exploration (warm-up): skip the network
        return random_actions
    explore = torch.rand(n, device=device, generator=generator) < epsilon
    return torch.where(explore, random_actions, q(obs).argmax(dim=1))


def td_loss(q: nn.Module, target: nn.Module, batch: ReplaySample, double_q: bool,
            weighted: bool = False) -> tuple[torch.Tensor, ...]:
    """Importance-weighted Huber loss of the (double) DQN target; also returns Q(s, a) and TD errors."""
    with torch.no_grad():
        next_target_q = target(batch.next_obs)
        next_actions = (q(batch.next_obs) if double_q else next_target_q).argmax(dim=1, keepdim=True)
        next_q = next_target_q.gather(1, next_actions).squeeze(1)
        # `discounts` is gamma**k, and 0 when a terminal state came within the n steps.
        td_target = batch.returns + batch.discounts * next_q
    q_taken = q(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    if weighted:  # prioritized replay: importance-sampling weights
        loss = (batch.weights * F.huber_loss(q_taken, td_target, reduction="none", delta=1.0)).mean()
    else:
        loss = F.huber_loss(q_taken, td_target, delta=1.0)
    return loss, q_taken.detach(), (q_taken - td_target).detach()


def distributional_loss(q: QNetwork, target: QNetwork, batch: ReplaySample, double_q: bool, weighted: bool = False,
                        kappa: float = 1.0) -> tuple[torch.Tensor, ...]:
    """The C51 or QR-DQN loss (`q.distributional`), importance-weighted with prioritized replay; also
    returns the expected Q(s, a) and each sample's loss (its priority: the cross-entropy to the
    projected target for C51, the quantile Huber loss for QR-DQN).

    The next action is the greedy one on expected Q-values: the online network's with double_q,
    else the target network's; the target network's distribution for that action is the target.
    """
    with torch.no_grad():
        next_outputs = target.distribution(batch.next_obs)  # (batch, actions, N)
        next_q = q(batch.next_obs) if double_q else target.expected(next_outputs)
        next_dist = _taken(next_outputs, next_q.argmax(dim=1))  # (batch, N)
        if q.distributional == "c51":
            target_dist = project_categorical(next_dist.softmax(dim=1), batch.returns, batch.discounts, target.support)
        else:  # `discounts` is gamma**k, and 0 when a terminal state came within the n steps
            target_quantiles = batch.returns.unsqueeze(1) + batch.discounts.unsqueeze(1) * next_dist
    taken = _taken(q.distribution(batch.obs), batch.actions)  # (batch, N)
    if q.distributional == "c51":
        per_sample = -(target_dist * taken.log_softmax(dim=1)).sum(dim=1)
    else:
        per_sample = quantile_huber_loss(taken, target_quantiles, kappa)
    loss = (batch.weights * per_sample).mean() if weighted else per_sample.mean()
    q_taken = q.expected(taken.detach().unsqueeze(1)).squeeze(1)
    return loss, q_taken, per_sample.detach()


def _taken(outputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """(batch, N) of `outputs` (batch, actions, N) at `actions` (batch,)."""
    return outputs.gather(1, actions.view(-1, 1, 1).expand(-1, 1, outputs.shape[2])).squeeze(1)


@torch.no_grad()
def update_target(q: nn.Module, target: nn.Module, tau: float) -> None:
    for p, tp in zip(q.parameters(), target.parameters()):
        tp.lerp_(p, tau)  # tau = 1: hard copy


def train(cfg: DQNConfig, env: TensorVecEnv, run: Run) -> dict[str, Any]:
    """Train DQN on `env`. `run` (rlbase.run.Run) seeds the action generator, counts episodes and
    steps, logs, checkpoints, resumes and runs the callbacks.

    Returns the final counters and recent-episode statistics, and the trained network as
    `q_network` (for in-process use: tests, benchmarks, notebooks).
    """
    device = env.device
    obs_space = env.single_observation_space
    q = build_q_network(run.backbone, obs_space, env.single_action_space, cfg.dueling, **head_options(cfg))
    parts = transfer.prepare(run.backbone, [q.backbone], obs_space, fresh=not run.resuming)
    q.to(device)
    target = copy.deepcopy(q).requires_grad_(False)
    optimizer = make_adam(transfer.parameter_groups(q, parts, run.backbone), cfg.learning_rate, cfg.adam_eps)
    transfer.set_learning_rate(optimizer, cfg.learning_rate)  # pretrained backbone: lr * --backbone-lr-scale
    num_actions = int(env.single_action_space.n)
    if isinstance(obs_space, gym.spaces.Dict):  # stored key by key, e.g. an image and an instruction
        shape, dtype = ({k: sub.shape for k, sub in obs_space.items()}, {k: space_dtype(sub) for k, sub in obs_space.items()})
    else:
        shape, dtype = obs_space.shape, space_dtype(obs_space)
    buffer = ReplayBuffer(cfg.buffer_size, env.num_envs, shape, dtype, device, frame_stack=env.frame_stack,
                          n_step=cfg.n_step, gamma=cfg.gamma, prioritized=cfg.prioritized_replay, alpha=cfg.per_alpha,
                          priority_eps=cfg.per_eps)
    counters = run.restore(modules={"q": q, "target": target}, optimizer=optimizer, buffer=buffer,
                           counters={"num_updates": 0, "update_credit": 0, "target_syncs": 0})
    generator, timer = run.generator, run.timer
    act_q = torch.compile(q) if cfg.compile else q
    loss_mean, q_mean = DeviceMean(device), DeviceMean(device)
    if cfg.distributional == "none":
        loss_fn = td_loss
    else:
        def loss_fn(q: QNetwork, target: QNetwork, batch: ReplaySample, double_q: bool, weighted: bool):
            return distributional_loss(q, target, batch, double_q, weighted, cfg.quantile_kappa)

    # The annealing counts vector steps (num_envs env steps each), as PPO and PQN count rollouts.
    num_vector_steps = -(-cfg.total_timesteps // env.num_envs)

    def learning_rate() -> float:
        return annealed_lr(cfg, run.global_step // env.num_envs, num_vector_steps, env.num_envs)

    def scalars(epsilon: float) -> dict[str, float]:
        """The SB3 tags, read from the device once per log interval."""
        values = {"rollout/exploration_rate": epsilon, "train/learning_rate": learning_rate(),
                  "train/n_updates": counters["num_updates"]}
        if loss_mean.count:
            values["train/loss"], values["train/q_values"] = loss_mean.read(), q_mean.read()
        return values

    obs = run.start()
    buffer.start(obs)
    while not run.done:
        epsilon = linear_epsilon(cfg, run.global_step)
        if cfg.noisy:  # a fresh draw of the online network's noise for every acting step
            resample_noise(q, generator)
        actions = select_actions(act_q, obs, epsilon, num_actions, generator)
        # Host-side envs (Atari) step in their own threads while the learner updates below;
        # the updates sample from what is already stored, one env step behind.
        env.step_async(actions)
        timer.mark("act")

        if buffer.transitions_added >= cfg.learning_starts and buffer.can_sample():
            # train_freq counts env steps over all envs, so the replay ratio does not depend on
            # num_envs. Credit is kept in integer units of 1/train_freq update: no rounding drift.
            counters["update_credit"] += env.num_envs * cfg.gradient_steps
            beta = cfg.per_beta + (1.0 - cfg.per_beta) * min(1.0, run.global_step / cfg.total_timesteps)
            num_updates = counters["update_credit"] // cfg.train_freq
            counters["update_credit"] -= num_updates * cfg.train_freq
            if cfg.anneal_lr and num_updates:  # pretrained backbone groups: lr * --backbone-lr-scale
                transfer.set_learning_rate(optimizer, learning_rate())
            if cfg.prioritized_replay:  # each batch sees the priorities the previous update wrote
                batches = (buffer.sample(cfg.batch_size, generator, beta) for _ in range(num_updates))
            else:  # nothing is added between this step's updates: draw all their batches at once
                batches = buffer.sample(cfg.batch_size * num_updates, generator).split(cfg.batch_size) if num_updates else []
            for batch in batches:
                if cfg.noisy:  # independent noise for the online and target networks, every update
                    resample_noise(q, generator)
                    resample_noise(target, generator)
                loss, q_taken, td_errors = loss_fn(act_q, target, batch, cfg.double_q, cfg.prioritized_replay)
                gradient_step(optimizer, loss, cfg.max_grad_norm)
                if cfg.prioritized_replay:
                    buffer.update_priorities(batch.indices, td_errors)
                loss_mean.add(loss)
                q_mean.add(q_taken.sum(), cfg.batch_size)
                counters["num_updates"] += 1
        timer.mark("learn")

        next_obs, rewards, terminated, truncated, info = env.step_wait()
        timer.mark("env")  # host-side envs: only the wait for what did not overlap the updates
        dones = terminated | truncated
        train_rewards, train_terminal = env.training_signal(rewards, terminated, info)
        buffer.add(actions, train_rewards, train_terminal, dones, next_obs, info["final_obs"])
        run.record_episodes(info, dones)
        obs = next_obs  # CRUCIAL: the env already reset ended episodes; final_obs went to the buffer

        syncs_due = (run.global_step + env.num_envs) // cfg.target_update_interval
        if syncs_due > counters["target_syncs"]:
            counters["target_syncs"] = syncs_due
            update_target(q, target, cfg.tau)
        timer.mark("store")
        run.advance(env.num_envs, lambda: scalars(epsilon))
    return run.finish(q_network=q)


def load_policy(cfg: DQNConfig, tensors: dict[str, torch.Tensor], observation_space: gym.spaces.Space,
                action_space: gym.spaces.Space, device: torch.device) -> Policy:
    """The evaluation policy of a trained agent: epsilon-greedy (`cfg.eval_epsilon`) on the saved
    Q-network's expected values (noisy layers: their mean weights)."""
    q = acting_net(cfg, tensors, observation_space, action_space, device).q
    num_actions, epsilon = int(action_space.n), cfg.eval_epsilon
    return lambda obs, generator: select_actions(q, obs, epsilon, num_actions, generator)


class QActingNet(nn.Module):
    """DQN's acting path (see `Agent.acting_net`): Q-values and their argmax."""

    kind = "q"

    def __init__(self, q: QNetwork):
        super().__init__()
        self.q = q

    def forward(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.q(obs)
        return values, values.argmax(dim=-1)


def acting_net(cfg: DQNConfig, tensors: dict[str, torch.Tensor], observation_space: gym.spaces.Space,
               action_space: gym.spaces.Space, device: torch.device) -> QActingNet:
    """The greedy acting path: the Q-network with plain nn.Linear layers holding a noisy run's mean
    weights (its noise scales are left out), so export, quantize and prune see an ordinary network."""
    q = build_q_network(transfer.parse(cfg, observation_space, with_weights=False), observation_space, action_space,
                        cfg.dueling, **head_options(cfg, acting=True)).to(device)
    load_module(q, mean_tensors(tensors) if cfg.noisy else tensors, "q.")
    return QActingNet(q).eval()


Config = DQNConfig
SPEC = SPECS["dqn"]
AGENT = Agent.of(SPEC, check_env=check_env, train=train, load_policy=load_policy, acting_net=acting_net,
                 exploration="epsilon")
