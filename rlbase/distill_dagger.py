"""The fit of `rlbase distill`: the per-state loss and the DAgger loop (see `rlbase.distill`).

- `discrete_kl`: KL(softmax(teacher / T) || softmax(student / T)), summed over the components of a
  MultiDiscrete action; a DQN teacher's Q-values go through the same softmax.
- `gaussian_kl`: the KL between two diagonal Gaussians (Box actions; no temperature).
- `PolicyView`: one interface over a Q-network and an actor-critic (outputs, value, greedy action,
  loss), so the loop has no branch per agent.
- `distill`: roll out the student (the teacher acting with probability beta), label every visited
  state with the teacher's outputs (and value) into an aggregated on-device dataset, fit the student
  to it between rollouts; the value regression is divided by the variance of the teacher's values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from rlbase.errors import RlbaseError

if TYPE_CHECKING:
    from rlbase.distill import DistillSettings


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------
def discrete_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                sizes: list[int] | None = None) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) per state, summed over the components of a
    MultiDiscrete action (`sizes`: the logits of each). (B, n) -> (B,)."""
    parts = zip(student.split(sizes, -1), teacher.split(sizes, -1)) if sizes else [(student, teacher)]
    total = torch.zeros(student.shape[0], device=student.device)
    for s, t in parts:
        log_t = F.log_softmax(t / temperature, dim=-1)
        total = total + (log_t.exp() * (log_t - F.log_softmax(s / temperature, dim=-1))).sum(-1)
    return total


def gaussian_kl(student_mean: torch.Tensor, student_log_std: torch.Tensor, teacher_mean: torch.Tensor,
                teacher_log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(teacher) || N(student)) of diagonal Gaussians per state, summed over action dims. (B, A) -> (B,)."""
    variance_ratio = torch.exp(2 * (teacher_log_std - student_log_std))
    mean_term = (teacher_mean - student_mean).pow(2) * torch.exp(-2 * student_log_std)
    return (student_log_std - teacher_log_std + 0.5 * (variance_ratio + mean_term - 1)).sum(-1)


class PolicyView:
    """One interface over a Q-network and an actor-critic: `outputs(x)` (Q-values, logits or the
    Gaussian mean; x already preprocessed), `value(x)`, `mode(outputs)` and `loss`."""

    def __init__(self, algo: str, network: nn.Module, action_space: gym.spaces.Space, action_bounds: str):
        from rlbase.agents.pg import DiagGaussian, MultiCategorical, make_distribution

        self.network, self.action_space = network, action_space
        from rlbase.distill_student import value_based

        self.is_q = value_based(algo)
        self.dist = None if self.is_q else make_distribution(action_space, action_bounds)
        self.gaussian = isinstance(self.dist, DiagGaussian)
        self.sizes = self.dist.sizes if isinstance(self.dist, MultiCategorical) else None

    def outputs(self, x: Any) -> torch.Tensor:
        if self.is_q:
            return self.network(x)
        return self.network.policy_head(self.network.actor_backbone(x))

    def value(self, x: Any) -> torch.Tensor:
        return self.network.value(x)

    def mode(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.is_q:
            return outputs.argmax(-1)
        return self.dist.mode(torch.cat([outputs, outputs], -1) if self.gaussian else outputs)

    def act(self, outputs: torch.Tensor, sample: bool, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        """The action the agent's evaluation policy takes: sampled from the policy (`sample`), or
        greedy, replaced by a uniform random action with probability `epsilon` (Q-networks)."""
        if sample and not self.is_q:
            params = torch.cat([outputs, self.log_std().expand_as(outputs)], -1) if self.gaussian else outputs
            return self.dist.sample(params, generator)
        greedy = self.mode(outputs)
        if epsilon > 0 and self.is_q:
            explore = torch.rand(greedy.shape, device=greedy.device, generator=generator) < epsilon
            random = torch.randint(int(self.action_space.n), greedy.shape, device=greedy.device, generator=generator)
            greedy = torch.where(explore, random, greedy)
        return greedy

    def env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        if self.is_q:
            return actions
        from rlbase.agents.pg import env_actions

        return env_actions(self.dist, actions, self.action_space)

    def log_std(self) -> torch.Tensor:
        return self.network.log_std

    def policy_loss(self, outputs: torch.Tensor, teacher: torch.Tensor, teacher_log_std: torch.Tensor | None,
                    temperature: float) -> torch.Tensor:
        if self.gaussian:
            log_std = self.log_std().expand_as(outputs)
            return gaussian_kl(outputs, log_std, teacher, teacher_log_std.expand_as(teacher)).mean()
        return discrete_kl(outputs, teacher, temperature, self.sizes).mean()


# --------------------------------------------------------------------------------------------
# The DAgger loop
# --------------------------------------------------------------------------------------------
def distill(algo: str, teacher: PolicyView, student: PolicyView, preprocess: Any, env: Any,
            settings: DistillSettings, logger: Any) -> dict[str, Any]:
    """Fit `student` to `teacher` on the states of the student's own rollouts on `env` (see the
    module docstring). `preprocess(obs)`: the agent's frozen observation preprocessing.
    Returns the episode statistics of the rollouts and the last logged losses."""
    from rlbase.obs import allocate, assign, take
    from rlbase.optim import gradient_step, make_adam
    from rlbase.stats import DeviceMean, RecentEpisodes

    device, num_envs = env.device, env.num_envs
    capacity = settings.buffer_size
    from rlbase.run import env_seed

    obs, _ = env.reset(seed=env_seed(settings.seed))  # distinct envs for distinct --seed values
    sample = preprocess(obs)  # stored as the networks take it (normalised observations: float32)
    states = allocate(env.single_observation_space, (capacity,), device,
                      sample.dtype if torch.is_tensor(sample) else None)
    with torch.no_grad():
        num_outputs = teacher.outputs(sample).shape[-1]
    labels = torch.zeros(capacity, num_outputs, device=device)
    values = torch.zeros(capacity, device=device)
    use_value = settings.value_coef > 0 and not student.is_q
    teacher_log_std = teacher.log_std().detach() if teacher.gaussian else None

    optimizer = make_adam(list(student.network.parameters()), settings.learning_rate, 1e-5)
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed)
    episodes = RecentEpisodes(100, device, num_envs)
    losses = {name: DeviceMean(device) for name in ("distill/loss", "distill/policy_kl", "distill/value_loss")}
    agreement = DeviceMean(device)
    per_round = num_envs * settings.rollout_steps
    rounds = max(1, math.ceil(settings.steps / per_round))
    updates = max(1, round(settings.epochs * per_round / settings.batch_size))
    decay_steps = settings.beta_decay * rounds * per_round
    global_step, filled, cursor, next_log = 0, 0, 0, settings.log_interval
    last: dict[str, float] = {}

    for _ in range(rounds):
        beta = max(0.0, 1.0 - global_step / decay_steps) if decay_steps > 0 else 0.0
        # ---- roll out the student (the teacher acts with probability beta), label every state --
        student.network.eval()
        with torch.no_grad():
            for _ in range(settings.rollout_steps):
                x = preprocess(obs)
                teacher_out = teacher.outputs(x)
                student_out = student.outputs(x)
                teacher_actions = teacher.mode(teacher_out)
                student_actions = student.mode(student_out)
                if student.gaussian:  # how far apart the two agents' actions are, in the env's units
                    gap = student.env_actions(student_actions) - student.env_actions(teacher_actions)
                    agreement.add(gap.abs().mean() * num_envs, num_envs)
                else:  # the share of states where both pick the same action
                    agreement.add((student_actions == teacher_actions).reshape(num_envs, -1).all(-1).sum(), num_envs)
                # act as the evaluation will (agreement above compares the greedy actions)
                actions = student.act(student_out, settings.sample_actions, settings.epsilon, generator)
                if beta > 0:
                    teacher_acts = torch.rand(num_envs, device=device, generator=generator) < beta
                    chosen = teacher.act(teacher_out, settings.sample_actions, settings.epsilon, generator)
                    actions = torch.where(teacher_acts.reshape(-1, *[1] * (actions.dim() - 1)), chosen, actions)
                rows = slice(cursor, cursor + num_envs)
                assign(states, rows, x)
                labels[rows] = teacher_out
                if use_value:
                    values[rows] = teacher.value(x)
                cursor = (cursor + num_envs) % capacity
                filled = min(capacity, filled + num_envs)
                obs, _, terminated, truncated, info = env.step(student.env_actions(actions))
                episodes.add(info["episode_return"], info["episode_length"], terminated | truncated)
        global_step += per_round

        # ---- fit the student to the aggregated dataset -----------------------------------------
        student.network.train()
        # The value loss is relative to the spread of the teacher's values (returns of hundreds
        # would otherwise swamp the KL in the shared gradient clip).
        value_scale = values[:filled].var().clamp(min=1e-6).reciprocal() if use_value else None
        if use_value and global_step == per_round:
            # Adam moves a bias by about the learning rate per step: start the value head at the
            # teacher's mean value (returns in the hundreds), not at 0.
            with torch.no_grad():
                student.network.value_head.bias.fill_(values[:filled].mean())
        for _ in range(updates):
            index = torch.randint(filled, (settings.batch_size,), device=device, generator=generator)
            batch = take(states, index)
            policy_loss = student.policy_loss(student.outputs(batch), labels[index], teacher_log_std,
                                              settings.temperature)
            loss = policy_loss
            losses["distill/policy_kl"].add(policy_loss)
            if use_value:
                value_loss = F.mse_loss(student.value(batch), values[index]) * value_scale
                loss = loss + settings.value_coef * value_loss
                losses["distill/value_loss"].add(value_loss)
            losses["distill/loss"].add(loss)
            gradient_step(optimizer, loss, settings.max_grad_norm)

        if global_step >= next_log or global_step >= rounds * per_round:
            next_log = (global_step // settings.log_interval + 1) * settings.log_interval
            scalars = {name: mean.read() for name, mean in losses.items()}
            scalars["distill/action_gap" if student.gaussian else "distill/action_agreement"] = agreement.read()
            scalars["distill/beta"] = beta
            summary = episodes.summary()
            if summary["episodes"]:
                scalars["rollout/ep_rew_mean"] = summary["ep_rew_mean"]
                scalars["rollout/ep_len_mean"] = summary["ep_len_mean"]
            last = {k: v for k, v in scalars.items() if v is not None}
            bad = [k for k, v in last.items() if not math.isfinite(v)]
            if bad:
                raise RlbaseError(f"distillation stopped at step {global_step:,}: {bad[0]} is not finite "
                                  "(lower --learning-rate or --temperature)")
            if logger is not None:
                logger.log(global_step, last)
    summary = episodes.summary()
    return {"global_step": global_step, "episodes": summary["episodes"], "ep_rew_mean": summary.get("ep_rew_mean"),
            "last_logged": last, "updates": rounds * updates}
