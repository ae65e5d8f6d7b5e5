"""PQN: Parallelised Q-Networks.

Gallici et al. 2025, "Simplifying Deep Temporal Difference Learning" (ICLR): Q-learning without a
replay buffer and without a target network. Many parallel envs act epsilon-greedily for a short
rollout; Q(lambda) targets are computed over that rollout (Watkins 1989; Peng & Williams 1996,
here in the paper's form, the lambda-return of the greedy values); then, as PPO does, a few epochs
of minibatches regress Q(s, a) onto those fixed targets. LayerNorm in the network (`--layer-norm`)
is what keeps this stable without a target network (the paper's analysis).

The rollout is `(num_steps, num_envs, ...)` on the device, allocated once (agents/rollout.py's
RolloutStorage); the targets are computed there, with one host sync per rollout to find truncated
steps. Values reach the host only at log intervals.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from rlbase import transfer
from rlbase.agents import Agent, Policy
from rlbase.agents.dqn import QActingNet, select_actions
from rlbase.agents.rollout import ALL_ROWS, RolloutStorage, play_rollout
from rlbase.backbones import build_backbone
from rlbase.checkpoint import load_module
from rlbase.agents.pqn_config import SPECS, PQNConfig, validate  # noqa: F401 (re-exported)
from rlbase.envs import TensorVecEnv
from rlbase.envs.gym_adapter import unsupported_observations
from rlbase.errors import UsageError
from rlbase.obs import Obs, assign, take
from rlbase.optim import annealed_lr, gradient_step, make_adam
from rlbase.run import Run
from rlbase.transfer import BackboneSpec


def check_env(cfg: PQNConfig, env: TensorVecEnv) -> None:
    """A UsageError when PQN cannot act in `env` (it needs a discrete action space)."""
    if not isinstance(env.single_action_space, gym.spaces.Discrete):
        raise UsageError(f"PQN needs a discrete action space; {cfg.env_id} has {env.single_action_space}")
    unsupported = unsupported_observations(cfg.env_id, env.single_observation_space)
    if unsupported:
        raise UsageError(f"PQN's rollout storage takes Box observations or a Dict of them: {unsupported}")


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
class QNetwork(nn.Module):
    """Backbone features (LayerNorm inside with --layer-norm) -> one Q-value per action."""

    def __init__(self, backbone: nn.Module, num_actions: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_actions)

    def forward(self, obs: Obs) -> torch.Tensor:
        return self.head(self.backbone(obs))


def build_q_network(cfg: PQNConfig, spec: BackboneSpec, observation_space: gym.spaces.Space,
                    action_space: gym.spaces.Space) -> QNetwork:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise UsageError(f"PQN needs a discrete action space; got {action_space}")
    backbone = build_backbone(spec.name, observation_space, spec.hidden_sizes, spec.activation,
                              layer_norm=cfg.layer_norm, width=spec.width)
    return QNetwork(backbone, int(action_space.n))


# --------------------------------------------------------------------------------------------
# Exploration and targets
# --------------------------------------------------------------------------------------------
def linear_epsilon(cfg: PQNConfig, global_step: int) -> float:
    """Epsilon decayed linearly from the initial to the final value over exploration_fraction of training."""
    duration = cfg.exploration_fraction * cfg.total_timesteps
    progress = min(1.0, global_step / duration) if duration > 0 else 1.0
    return cfg.exploration_initial_eps + progress * (cfg.exploration_final_eps - cfg.exploration_initial_eps)


def epsilon_greedy(q_values: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """Per env: a uniformly random action with probability `epsilon`, else the greedy one (on the device)."""
    n, num_actions = q_values.shape
    random_actions = torch.randint(num_actions, (n,), device=q_values.device, generator=generator)
    explore = torch.rand(n, device=q_values.device, generator=generator) < epsilon
    return torch.where(explore, random_actions, q_values.argmax(dim=1))


@torch.no_grad()
def compute_targets(storage: RolloutStorage, q: nn.Module, last_obs: Obs, gamma: float, q_lambda: float) -> None:
    """Q(lambda) targets of the rollout into `storage.returns`, by the backward recursion

        G_t = r_t + gamma * (1 - end_t) * [lambda * G_{t+1} + (1 - lambda) * max_a Q(s_{t+1}, a)],

    `storage.values[t]` holding max_a Q(s_t, a) (stored while acting: the network does not change
    within a rollout) and the step after the last bootstrapping from max_a Q(s_T, a). At an episode
    end (`train_ends`: termination, a life loss on Atari, or truncation) the recursion stops: the
    next row belongs to another episode. A truncated step still bootstraps, from max_a Q of its
    `final_obs`, added to its reward first (`bootstrap_truncated`); a terminal step bootstraps nothing.

    This is the GAE(lambda) recursion with V(s) = max_a Q(s, a): G_t = A_t + V(s_t), which is how it
    is computed (agents/rollout.py `compute_gae`: the same cuts at episode ends).
    """
    def greedy_value(obs: Obs) -> torch.Tensor:
        return q(obs).max(dim=1).values

    storage.bootstrap_truncated(greedy_value, gamma)
    storage.compute_returns(greedy_value(last_obs), gamma, q_lambda)


# --------------------------------------------------------------------------------------------
# Update
# --------------------------------------------------------------------------------------------
def update(cfg: PQNConfig, q: nn.Module, optimizer: Any, storage: RolloutStorage,
           generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`update_epochs` passes of minibatch regression of Q(s, a) onto the rollout's fixed targets
    (mean squared error, the paper's loss); returns the mean loss and Q(s, a) on the device."""
    data = {"obs": storage.flat()["obs"], "actions": storage.actions.flatten(), "returns": storage.returns.flatten()}
    batch = data["returns"].shape[0]
    mb_size = batch // cfg.num_minibatches
    device = data["returns"].device
    rows: list[torch.Tensor] = []
    for _ in range(cfg.update_epochs):
        # One gather per tensor per epoch; the minibatches are then contiguous slices (views).
        order = torch.randperm(batch, device=device, generator=generator)
        shuffled = {k: take(v, order) for k, v in data.items()}
        for start in range(0, mb_size * cfg.num_minibatches, mb_size):
            mb = {k: take(v, slice(start, start + mb_size)) for k, v in shuffled.items()}
            q_taken = q(mb["obs"]).gather(1, mb["actions"].unsqueeze(1)).squeeze(1)
            loss = F.mse_loss(q_taken, mb["returns"])
            gradient_step(optimizer, loss, cfg.max_grad_norm)
            rows.append(torch.stack([loss.detach(), q_taken.detach().mean()]))
    loss_mean, q_mean = torch.stack(rows).mean(0)
    return {"train/loss": loss_mean, "train/q_values": q_mean, "num_updates": len(rows)}


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------
def train(cfg: PQNConfig, env: TensorVecEnv, run: Run) -> dict[str, Any]:
    """Train PQN on `env`. `run` (rlbase.run.Run) seeds the action generator, counts episodes and
    steps, logs, checkpoints, resumes and runs the callbacks.

    Returns the final counters and recent-episode statistics, and the trained network as `q_network`.
    """
    device = env.device
    obs_space, action_space = env.single_observation_space, env.single_action_space
    q = build_q_network(cfg, run.backbone, obs_space, action_space)
    parts = transfer.prepare(run.backbone, [q.backbone], obs_space, fresh=not run.resuming)
    q.to(device)
    optimizer = make_adam(transfer.parameter_groups(q, parts, run.backbone), cfg.learning_rate, cfg.adam_eps)
    storage = RolloutStorage(cfg.num_steps, env.num_envs, obs_space, None, (), torch.long, device)
    counters = run.restore(modules={"q": q}, optimizer=optimizer, counters={"rollouts": 0, "num_updates": 0})
    generator, timer = run.generator, run.timer
    act_q = torch.compile(q) if cfg.compile else q
    batch = cfg.num_steps * env.num_envs
    num_rollouts = max(1, math.ceil(cfg.total_timesteps / batch))
    metrics: dict[str, torch.Tensor] = {}
    lr = epsilon = 0.0

    def scalars() -> dict[str, float]:
        """The SB3 tags, read from the device once per log interval."""
        values = {"rollout/exploration_rate": epsilon, "train/learning_rate": lr,
                  "train/n_updates": counters["num_updates"]}
        values.update({k: float(v) for k, v in metrics.items()})
        return values

    def act(t: int, rows: slice, obs: Obs) -> tuple[torch.Tensor, Any]:
        nonlocal epsilon
        # Epsilon follows the steps within the rollout too (as in DQN), not only per rollout.
        epsilon = linear_epsilon(cfg, run.global_step + t * env.num_envs)
        q_values = act_q(obs)
        actions = epsilon_greedy(q_values, epsilon, generator)

        def store() -> None:
            assign(storage.obs, (t, rows), obs)
            storage.actions[t, rows] = actions
            storage.values[t, rows] = q_values.max(dim=1).values

        return actions, store

    def observe(t: int, rows: slice, result: tuple[Any, ...]) -> Obs:
        next_obs, rewards, terminated, truncated, info = result
        dones = terminated | truncated
        train_rewards, train_terminal = env.training_signal(rewards, terminated, info)
        storage.rewards[t, rows] = train_rewards
        storage.train_ends[t, rows] = train_terminal | truncated
        # Gymnasium's TimeLimit also flags truncation on a terminal last step: terminal wins.
        storage.truncated[t, rows] = truncated & ~train_terminal
        assign(storage.final_obs, (t, rows), info["final_obs"])
        run.record_episodes(info, dones, None if rows == ALL_ROWS else rows)
        return next_obs  # CRUCIAL: the env already reset ended episodes; final_obs is stored apart

    obs = run.start()
    while not run.done:
        lr = annealed_lr(cfg, counters["rollouts"], num_rollouts, batch)
        transfer.set_learning_rate(optimizer, lr)  # pretrained backbone groups: lr * --backbone-lr-scale

        # ---- collect one rollout ------------------------------------------------------------
        with torch.no_grad():
            obs = play_rollout(env, cfg.num_steps, obs, act, observe, timer)
            # The eager network: truncated rows come in batches of any size (no recompiles).
            compute_targets(storage, q, obs, cfg.gamma, cfg.q_lambda)
        timer.mark("learn")

        # ---- learn from it ---------------------------------------------------------------------
        metrics = update(cfg, q, optimizer, storage, generator)
        counters["rollouts"] += 1
        counters["num_updates"] += int(metrics.pop("num_updates"))
        timer.mark("learn")
        run.advance(batch, scalars)
    return run.finish(q_network=q, train_metrics={k: float(v) for k, v in metrics.items()})


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def acting_net(cfg: PQNConfig, tensors: dict[str, torch.Tensor], observation_space: gym.spaces.Space,
               action_space: gym.spaces.Space, device: torch.device) -> QActingNet:
    spec = transfer.parse(cfg, observation_space, with_weights=False)
    q = build_q_network(cfg, spec, observation_space, action_space).to(device)
    load_module(q, tensors, "q.")
    return QActingNet(q).eval()


def load_policy(cfg: PQNConfig, tensors: dict[str, torch.Tensor], observation_space: gym.spaces.Space,
                action_space: gym.spaces.Space, device: torch.device) -> Policy:
    """The evaluation policy of a trained agent: epsilon-greedy (`cfg.eval_epsilon`) on the saved Q-network."""
    q = acting_net(cfg, tensors, observation_space, action_space, device).q
    num_actions, epsilon = int(action_space.n), cfg.eval_epsilon
    return lambda obs, generator: select_actions(q, obs, epsilon, num_actions, generator)


Config = PQNConfig
SPEC = SPECS["pqn"]
AGENT = Agent.of(SPEC, check_env=check_env, train=train, load_policy=load_policy, acting_net=acting_net,
                 exploration="epsilon")
