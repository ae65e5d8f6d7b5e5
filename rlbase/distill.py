"""`rlbase distill RUN`: train a smaller student from a trained agent.

Policy distillation (Rusu et al. 2016, "Policy Distillation") on the states the student itself
visits, DAgger-style (Ross et al. 2011): the envs are rolled out with the student's greedy
actions (the teacher's, with probability beta, early on: beta falls linearly from 1 to 0 over the
first `--beta-decay` of the steps), every visited state is labelled with the teacher's outputs and
kept in an aggregated dataset, and the student is fitted to those labels between rollouts.

The loss, per state:
- discrete actions: KL(softmax(teacher / T) || softmax(student / T)); a DQN teacher's Q-values go
  through the same softmax (Rusu et al. use a low T such as 0.01 for Q-values: only which action
  is best matters). The temperature divides both sides, so the student's outputs stay on the
  teacher's scale (its Q-values up to a constant per state), a start `rlbase train dqn --resume`
  can refine with TD learning;
- Box actions (a Gaussian with a state-independent log-std): the KL between the two Gaussians
  (the temperature does not apply);
- plus, for policy-gradient agents, `--value-coef` times the squared error to the teacher's value
  (divided by the variance of the teacher's values in the dataset, so returns in the hundreds do
  not swamp the KL).

The student is the same agent with a smaller network (`ActorCritic` / `QNetwork`, built from its
own config), so the output folder is an ordinary run of that algo: `config.json` is the student's
config, the checkpoint holds the agent's tensor names (`model.*` or `q.*`, the teacher's frozen
observation normalisation copied), and `rlbase eval OUT` plays it. The checkpoint also holds a
fresh optimiser state and counters, so `rlbase train ALGO --resume OUT` continues it with RL.
Losses, the teacher-student action agreement (discrete: the share of the same greedy actions;
Box: the mean absolute gap between the two actions) and the rollout returns are logged to
TensorBoard and metrics.jsonl; `distill.json` holds the settings and `report.json` the sizes and the evaluation
of teacher and student on the eval split (same seed, same episodes).

Everything in the loop stays on the device (rollout, labels, dataset, updates); values reach the
host at log intervals only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from rlbase.errors import RlbaseError, UsageError

DISTILL_FILE = "distill.json"


@dataclass(frozen=True)
class DistillSettings:
    """What `rlbase distill` was asked to do (written to distill.json)."""

    hidden_sizes: tuple[int, ...] | None
    """The student's mlp widths (None: chosen from --width-fraction)."""
    width_fraction: float
    """Target student size as a fraction of the teacher's acting parameters."""
    backbone: str | None
    """The student's backbone (None: the teacher's, or a smaller registered one for fixed-size backbones)."""
    steps: int
    """Environment steps of the student's rollouts (summed over the envs)."""
    num_envs: int
    """Parallel envs of the rollouts."""
    rollout_steps: int
    """Steps per env between two rounds of updates."""
    temperature: float
    """Softmax temperature of the discrete-action KL."""
    value_coef: float
    """Weight of the value-head regression to the teacher's value (policy-gradient agents); the
    squared error is divided by the variance of the teacher's values in the dataset."""
    learning_rate: float
    """Adam learning rate of the student."""
    batch_size: int
    """States per gradient step."""
    epochs: int
    """Each round does epochs * (states collected) / batch_size gradient steps on the dataset."""
    buffer_size: int
    """States kept in the aggregated dataset (the oldest are replaced)."""
    beta_decay: float
    """Fraction of the steps over which beta (the chance the teacher acts) falls from 1 to 0."""
    max_grad_norm: float
    """Gradient-norm clip (0 disables it)."""
    seed: int
    """Seed of the student's initialisation, the rollouts and the sampled minibatches."""
    eval_episodes: int
    """Episodes of the final evaluation of teacher and student (eval split, seed 0)."""
    log_interval: int
    """Environment steps between logged points."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths such as 64,64, got {text!r}") from None
    if not sizes or any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a smaller student from a trained agent (DQN or a policy-gradient agent) on the states the "
        "student visits (DAgger-style), with the KL to the teacher's action distribution at a temperature "
        "(Q-values through a softmax for DQN), optionally plus the teacher's value. The output is a run "
        "directory of the same algo that `rlbase eval` plays, with report.json (sizes, returns).")
    parser.add_argument("path", metavar="RUN", help="the teacher: a run directory, checkpoint folder or model.safetensors")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--hidden-sizes", type=_sizes, default=None, metavar="W,W",
                      help="the student's mlp widths (default: the teacher's scaled to --width-fraction)")
    size.add_argument("--width-fraction", type=float, default=None, metavar="F",
                      help="student size as a fraction of the teacher's acting parameters, in (0, 1] (default 0.25)")
    parser.add_argument("--backbone", default=None,
                        help="the student's backbone (default: the teacher's; for a fixed-size backbone the "
                             "registered one closest to --width-fraction)")
    parser.add_argument("--steps", type=int, default=50_000, help="env steps of student rollouts (default 50,000)")
    parser.add_argument("--num-envs", type=int, default=None, help="parallel envs (default: the teacher's)")
    parser.add_argument("--rollout-steps", type=int, default=16, help="steps per env between updates (default 16)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="softmax temperature of the KL (default: 1 for policy-gradient agents, 0.01 for DQN)")
    parser.add_argument("--value-coef", type=float, default=None,
                        help="weight of the regression to the teacher's value (policy-gradient agents; default 0.5)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the student's Adam learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=256, help="states per gradient step (default 256)")
    parser.add_argument("--epochs", type=int, default=4,
                        help="gradient steps per round: epochs * states collected / batch size (default 4)")
    parser.add_argument("--buffer-size", type=int, default=None,
                        help="states kept in the aggregated dataset (default: 100,000, at most 1 GiB of observations)")
    parser.add_argument("--beta-decay", type=float, default=0.2,
                        help="fraction of the steps over which the teacher's share of actions falls from 1 to 0 "
                             "(0: the student acts from the start; default 0.2)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient-norm clip, 0 disables (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the student and its rollouts (default 0)")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="episodes of the final evaluation of teacher and student (default: the teacher's eval_episodes)")
    parser.add_argument("--log-interval", type=int, default=None,
                        help="env steps between logged points (default: steps / 50)")
    parser.add_argument("--out", default=None, help="output run directory (default: RUN-distill beside the teacher)")
    parser.add_argument("--best", action="store_true", help="distill the teacher's best checkpoint (best/)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")


# --------------------------------------------------------------------------------------------
# Settings and the student's architecture
# --------------------------------------------------------------------------------------------
def check_arguments(args: argparse.Namespace) -> None:
    """A UsageError naming the flag of any bad value (before anything is read or written)."""
    def finite(value: float | None) -> bool:
        return value is None or math.isfinite(value)

    for flag in ("width_fraction", "temperature", "value_coef", "learning_rate", "beta_decay", "max_grad_norm"):
        if not finite(getattr(args, flag)):
            raise UsageError(f"invalid --{flag.replace('_', '-')}: must be a finite number")
    if args.width_fraction is not None and not 0.0 < args.width_fraction <= 1.0:
        raise UsageError(f"invalid --width-fraction: must be in (0, 1], got {args.width_fraction}")
    if args.temperature is not None and args.temperature <= 0:
        raise UsageError(f"invalid --temperature: must be positive, got {args.temperature}")
    if args.value_coef is not None and args.value_coef < 0:
        raise UsageError(f"invalid --value-coef: must be >= 0, got {args.value_coef}")
    if args.learning_rate <= 0:
        raise UsageError(f"invalid --learning-rate: must be positive, got {args.learning_rate}")
    if not 0.0 <= args.beta_decay <= 1.0:
        raise UsageError(f"invalid --beta-decay: must be in [0, 1], got {args.beta_decay}")
    if args.max_grad_norm < 0:
        raise UsageError(f"invalid --max-grad-norm: must be >= 0, got {args.max_grad_norm}")
    for flag in ("steps", "num_envs", "rollout_steps", "batch_size", "epochs", "buffer_size", "eval_episodes",
                 "log_interval"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"invalid --{flag.replace('_', '-')}: must be positive, got {value}")


def build_network(algo: str, cfg: Any, observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> nn.Module:
    """The agent's own network for `cfg` (freshly initialised): `ActorCritic` or `QNetwork`."""
    from rlbase import transfer

    backbone = transfer.parse(cfg, observation_space, with_weights=False)
    if algo == "dqn":
        from rlbase.agents.dqn import build_q_network

        return build_q_network(backbone, observation_space, action_space, cfg.dueling)
    from rlbase.agents.pg import ActorCritic, make_distribution

    return ActorCritic(cfg, backbone, observation_space, make_distribution(action_space, cfg.action_bounds))


def acting_tensors(algo: str, network: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the greedy acting path uses (what a deployed policy holds): the whole
    Q-network, or the actor's backbone, policy head and log-std (not the critic)."""
    if algo == "dqn":
        return dict(network.named_parameters())
    return {name: p for name, p in network.named_parameters()
            if name.startswith(("actor_backbone.", "policy_head.")) or name == "log_std"}


def acting_parameters(algo: str, cfg: Any, observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> int:
    with torch.random.fork_rng():  # building draws initial weights: leave the global RNG alone
        network = build_network(algo, cfg, observation_space, action_space)
    return sum(p.numel() for p in acting_tensors(algo, network).values())


def student_config(algo: str, teacher_cfg: Any, args: argparse.Namespace, observation_space: gym.spaces.Space,
                   action_space: gym.spaces.Space) -> tuple[Any, int, int]:
    """(the student's config, its acting parameters, the teacher's): the teacher's config with a
    smaller network and no pretrained weights (the student's weights are its checkpoint's)."""
    from rlbase import transfer

    teacher_size = acting_parameters(algo, teacher_cfg, observation_space, action_space)
    base = dataclasses.replace(teacher_cfg, backbone_weights="", freeze_backbone=False, backbone_lr_scale=1.0,
                               seed=args.seed)
    if args.backbone is not None:
        base = dataclasses.replace(base, backbone=args.backbone)
        try:
            spec = transfer.parse(base, observation_space, with_weights=False)
        except UsageError as exc:
            raise UsageError(f"invalid --backbone: {exc}") from None
        base = dataclasses.replace(base, backbone=spec.name)

    def size(cfg: Any) -> int:
        return acting_parameters(algo, cfg, observation_space, action_space)

    if args.hidden_sizes is not None:
        cfg = dataclasses.replace(base, hidden_sizes=tuple(args.hidden_sizes))
        return cfg, size(cfg), teacher_size
    fraction = args.width_fraction if args.width_fraction is not None else 0.25
    target = fraction * teacher_size
    fitted = _fit_widths(algo, base, tuple(teacher_cfg.hidden_sizes) or (64,), target, observation_space,
                         action_space)
    if fitted is not None:  # the backbone has mlp layers
        return (*fitted, teacher_size)
    if args.backbone is not None or isinstance(observation_space, gym.spaces.Dict):
        if args.backbone is None:
            key = next(iter(observation_space.spaces))
            raise UsageError(f"the teacher's backbone {teacher_cfg.backbone} has no width to scale; choose the "
                             f"student's with --backbone KEY=NAME,... (e.g. {key}=mlp: its widths are then fitted "
                             "to --width-fraction)")
        return base, acting_parameters(algo, base, observation_space, action_space), teacher_size
    return (*_smaller_backbone(algo, base, teacher_cfg, target, teacher_size, observation_space, action_space),
            teacher_size)


def _fit_widths(algo: str, base: Any, widths: tuple[int, ...], target: float, observation_space: gym.spaces.Space,
                action_space: gym.spaces.Space) -> tuple[Any, int] | None:
    """(`base` with `widths` scaled so the acting parameters come closest to `target`, that count),
    or None when the hidden sizes do not change the network (a backbone without mlp layers)."""
    first = widths[0]

    def scaled(width: int) -> Any:
        return dataclasses.replace(base, hidden_sizes=tuple(max(1, round(w * width / first)) for w in widths))

    def size(width: int) -> int:
        return acting_parameters(algo, scaled(width), observation_space, action_space)

    if size(1) == size(first):
        return None
    low, high = 1, max(first, 1)
    while size(high) < target and high < 1 << 16:  # a target above the widths given (a CNN teacher's size)
        high *= 2
    while low < high:  # the smallest width whose size reaches the target
        mid = (low + high) // 2
        low, high = (mid + 1, high) if size(mid) < target else (low, mid)
    best = min({max(1, low - 1), low}, key=lambda w: abs(math.log(size(w) / target)))
    return scaled(best), size(best)


def _smaller_backbone(algo: str, base: Any, teacher_cfg: Any, target: float, teacher_size: int,
                      observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> tuple[Any, int]:
    """A fixed-size backbone (a CNN) has no width to scale: the registered convolutional backbone for
    the space whose student is closest to `target` parameters among those smaller than the teacher,
    else an mlp with widths fitted to `target`."""
    from rlbase.backbones import BACKBONES

    candidates = []
    for name, (_, accepts, _) in BACKBONES.items():
        if name in (teacher_cfg.backbone, "mlp") or not accepts(observation_space):
            continue
        cfg = dataclasses.replace(base, backbone=name)
        try:
            count = acting_parameters(algo, cfg, observation_space, action_space)
        except (UsageError, RuntimeError, ValueError):
            continue
        if count < teacher_size:
            candidates.append((abs(math.log(count / target)), name, cfg, count))
    if candidates:
        _, _, cfg, count = min(candidates, key=lambda c: c[:2])
        return cfg, count
    if BACKBONES["mlp"][1](observation_space):
        fitted = _fit_widths(algo, dataclasses.replace(base, backbone="mlp"), tuple(base.hidden_sizes) or (64, 64),
                             target, observation_space, action_space)
        if fitted is not None and fitted[1] < teacher_size:
            return fitted
    raise UsageError(f"the teacher's backbone {teacher_cfg.backbone} has no width to scale and no smaller "
                     "registered backbone takes its observations; choose one with --backbone")


def settings_from(args: argparse.Namespace, algo: str, teacher_cfg: Any, observation_space: gym.spaces.Space,
                  num_envs: int) -> DistillSettings:
    from rlbase.obs import space_dtype

    if algo == "dqn" and args.value_coef:
        raise UsageError("invalid --value-coef: DQN has no value head to distill (its Q-values are the policy)")
    spaces = observation_space.spaces.values() if isinstance(observation_space, gym.spaces.Dict) else [observation_space]
    state_bytes = sum(math.prod(s.shape) * torch.empty((), dtype=space_dtype(s)).element_size() for s in spaces)
    buffer_size = args.buffer_size or max(num_envs, min(100_000, (1 << 30) // max(1, state_bytes)))
    return DistillSettings(
        hidden_sizes=args.hidden_sizes, width_fraction=args.width_fraction if args.width_fraction is not None else 0.25,
        backbone=args.backbone, steps=args.steps, num_envs=num_envs, rollout_steps=args.rollout_steps,
        temperature=args.temperature if args.temperature is not None else (0.01 if algo == "dqn" else 1.0),
        value_coef=0.0 if algo == "dqn" else (args.value_coef if args.value_coef is not None else 0.5),
        learning_rate=args.learning_rate, batch_size=args.batch_size, epochs=args.epochs,
        buffer_size=math.ceil(buffer_size / num_envs) * num_envs, beta_decay=args.beta_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed,
        eval_episodes=args.eval_episodes or teacher_cfg.eval_episodes,
        log_interval=args.log_interval or max(1, args.steps // 50))


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
        self.is_q = algo == "dqn"
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
    obs, _ = env.reset(seed=settings.seed)
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
                teacher_actions = teacher.mode(teacher_out)
                student_actions = student.mode(student.outputs(x))
                if student.gaussian:  # how far apart the two agents' actions are, in the env's units
                    gap = student.env_actions(student_actions) - student.env_actions(teacher_actions)
                    agreement.add(gap.abs().mean() * num_envs, num_envs)
                else:  # the share of states where both pick the same action
                    agreement.add((student_actions == teacher_actions).reshape(num_envs, -1).all(-1).sum(), num_envs)
                actions = student_actions
                if beta > 0:
                    teacher_acts = torch.rand(num_envs, device=device, generator=generator) < beta
                    actions = torch.where(teacher_acts.reshape(-1, *[1] * (actions.dim() - 1)), teacher_actions,
                                          student_actions)
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


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def _returns(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("mean_return", "std_return", "min_return", "max_return", "ci95_low", "ci95_high", "mean_length",
            "outcomes", "num_episodes", "seed", "policy")
    return {key: report[key] for key in keep if key in report}


def student_checkpoint(algo: str, network: nn.Module, student_cfg: Any, teacher_tensors: dict[str, torch.Tensor],
                       step: int, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The student's checkpoint as the agent writes one: its weights under the agent's names, the
    teacher's normalisation statistics, and a fresh optimiser, RNG state and counters (so a
    `--resume` continues it with RL)."""
    from rlbase.checkpoint import optimizer_to_tensors
    from rlbase.optim import make_adam

    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    if algo == "dqn":
        tensors = {**{f"q.{k}": v for k, v in state.items()}, **{f"target.{k}": v.clone() for k, v in state.items()}}
    else:
        tensors = {f"model.{k}": v for k, v in state.items()}
        tensors.update({k: v.clone() for k, v in teacher_tensors.items() if k.startswith(("obs_rms.", "ret_rms."))})
    optimizer = make_adam([{"params": [p for p in network.parameters() if p.requires_grad], "lr_scale": 1.0}],
                          student_cfg.learning_rate, student_cfg.adam_eps)
    optim_tensors, optim_meta = optimizer_to_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    actions = torch.Generator(device=device)
    actions.manual_seed(student_cfg.seed)
    tensors["rng.actions"] = actions.get_state()
    counters = {"global_step": step}
    state_json = {"algo": algo, "config": dataclasses.asdict(student_cfg), "counters": counters,
                  "optimizer": optim_meta}
    return tensors, state_json


def run(args: argparse.Namespace) -> int:
    from rlbase import compress
    from rlbase.agents.pg import Normalizer
    from rlbase.checkpoint import save_checkpoint
    from rlbase.config import make_env, training_threads
    from rlbase.evaluate import evaluate_checkpoint, evaluation_config, load_trained
    from rlbase.logger import RunLogger
    from rlbase.run import write_config
    from rlbase.utils import intra_op_threads, resolve_device, seed_everything

    check_arguments(args)
    device = resolve_device(args.device)
    trained = load_trained(args.path, device, best=args.best)
    algo, teacher_cfg, agent = trained.agent.name, trained.config, trained.agent
    num_envs = args.num_envs or teacher_cfg.num_envs
    try:
        env = make_env(teacher_cfg, num_envs, device, training=True)
    except RlbaseError as exc:
        raise type(exc)(f"cannot build the teacher's env: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a stranger's env id or kwargs: one line, not a traceback
        raise RlbaseError(f"cannot build the teacher's env {teacher_cfg.env_id}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        obs_space, action_space = env.single_observation_space, env.single_action_space
        agent.check_env(teacher_cfg, env)
        settings = settings_from(args, algo, teacher_cfg, obs_space, num_envs)
        cfg, student_size, teacher_size = student_config(algo, teacher_cfg, args, obs_space, action_space)
        teacher_net = build_network(algo, teacher_cfg, obs_space, action_space).to(device)
        from rlbase.checkpoint import load_module

        try:
            load_module(teacher_net, trained.tensors, "q." if algo == "dqn" else "model.")
        except ValueError as exc:
            raise RlbaseError(f"{trained.checkpoint}: the checkpoint does not match its config ({exc})") from None
        teacher_net.eval().requires_grad_(False)
        normalizer = None
        if algo != "dqn":
            normalizer = Normalizer(teacher_cfg, getattr(obs_space, "shape", None), 1, device)
            try:
                normalizer.load(trained.tensors)
            except (KeyError, ValueError) as exc:
                raise RlbaseError(f"{trained.checkpoint}: observation normalisation ({exc})") from None
            normalizer.training = False

        def preprocess(obs: Any) -> Any:
            return obs if normalizer is None else normalizer.observation(obs, update=False)

        out = compress.output_dir(args.path, trained.checkpoint, "distill", args.out)
        cfg = dataclasses.replace(cfg, log_dir=str(out.parent), run_name=out.name, num_envs=num_envs,
                                  device=args.device)
        seed_everything(settings.seed)  # the student's initial weights
        student_net = build_network(algo, cfg, obs_space, action_space).to(device)
        bounds = getattr(teacher_cfg, "action_bounds", "clip")
        teacher = PolicyView(algo, teacher_net, action_space, bounds)
        student = PolicyView(algo, student_net, action_space, bounds)
        write_config(out, algo, cfg)
        setting_values = {**dataclasses.asdict(settings), "teacher": str(args.path),
                          "teacher_checkpoint": str(trained.checkpoint)}
        compress.write_report(out, {"command": "distill", "status": "running", **setting_values})
        from rlbase.safefiles import atomic_write_text

        atomic_write_text(out / DISTILL_FILE, json.dumps(setting_values, indent=2, allow_nan=False))
        print(f"rlbase: distilling {algo} on {teacher_cfg.env_id}: teacher {teacher_size:,} acting parameters -> "
              f"student {student_size:,} ({cfg.backbone}, hidden {','.join(map(str, cfg.hidden_sizes))}), "
              f"{settings.steps:,} steps on {num_envs} envs ({device}); run dir {out}", flush=True)
        logger = RunLogger(out, settings.steps, hparams=setting_values, progress=False)
        started = time.perf_counter()
        try:
            with intra_op_threads(training_threads(cfg, cfg.backbone, device.type)):
                result = distill(algo, teacher, student, preprocess, env, settings, logger)
        finally:
            logger.close()
        seconds = time.perf_counter() - started
    finally:
        env.close()

    tensors, state = student_checkpoint(algo, student_net, cfg, trained.tensors, result["global_step"], device)
    from rlbase.guards import first_nonfinite_tensor

    bad = first_nonfinite_tensor(tensors)
    if bad is not None:
        raise RlbaseError(f"distillation produced NaN or infinity in {bad}; no checkpoint written")
    checkpoint = save_checkpoint(out, result["global_step"], tensors, state)

    # ---- evaluate teacher and student on the eval split: same seed, same episodes ----------------
    episodes = settings.eval_episodes
    with intra_op_threads(training_threads(cfg, cfg.backbone, device.type)):  # small nets: 1 thread on CPU
        teacher_eval = evaluate_checkpoint(agent, evaluation_config(agent, teacher_cfg), trained.tensors,
                                           episodes=episodes, seed=0, device=device, progress=False)
        student_eval = evaluate_checkpoint(agent, evaluation_config(agent, cfg), tensors, episodes=episodes, seed=0,
                                           device=device, progress=False)
    student_bytes = compress.tensor_bytes(acting_tensors(algo, student_net))
    teacher_bytes = compress.tensor_bytes(acting_tensors(algo, teacher_net))
    report = {
        "command": "distill", "status": "done", "algo": algo, "env_id": teacher_cfg.env_id,
        "teacher": {"path": str(args.path), "checkpoint": str(trained.checkpoint), "backbone": teacher_cfg.backbone,
                    "hidden_sizes": list(teacher_cfg.hidden_sizes), "acting_parameters": teacher_size,
                    "acting_bytes": teacher_bytes, "parameters": compress.parameter_count(teacher_net),
                    "eval": _returns(teacher_eval)},
        "student": {"checkpoint": str(checkpoint), "backbone": cfg.backbone, "hidden_sizes": list(cfg.hidden_sizes),
                    "acting_parameters": student_size, "acting_bytes": student_bytes,
                    "parameters": compress.parameter_count(student_net), "eval": _returns(student_eval)},
        "parameter_ratio": teacher_size / student_size, "bytes_ratio": teacher_bytes / student_bytes,
        "return_ratio": (student_eval["mean_return"] / teacher_eval["mean_return"]
                         if teacher_eval["mean_return"] > 0 else None),
        "settings": setting_values, "steps": result["global_step"], "updates": result["updates"],
        "train_seconds": round(seconds, 2), "last_logged": result["last_logged"],
    }
    compress.write_report(out, report)
    ratio = f" ({report['return_ratio']:.0%} of the teacher's)" if report["return_ratio"] is not None else ""
    print(f"rlbase: student {student_size:,} acting parameters ({report['parameter_ratio']:.1f}x fewer, "
          f"{student_bytes:,} bytes): mean return {student_eval['mean_return']:.2f}{ratio}; teacher "
          f"{teacher_eval['mean_return']:.2f} over {episodes} eval episodes; {out}", flush=True)
    return 0
