"""The student's network for `rlbase distill`: which one, and how big.

The student is the teacher's agent with a smaller network, built from its own config (the
teacher's with other widths or another backbone, and no pretrained weights). Its size is counted
in acting parameters, what the greedy acting path uses (a deployed policy): the whole Q-network, or
the actor's backbone, policy head and log-std (not the critic). The choice:
- `--hidden-sizes`: those mlp widths;
- else the teacher's widths scaled by one factor, found by bisection, so the acting parameters come
  closest to `--width-fraction` of the teacher's;
- a CNN that scales (nature_cnn, impala_cnn: `--backbone-width`): the same CNN with its channels
  and features multiplied by the width that comes closest to the fraction (a multiple of 1/32);
- another fixed-size backbone has no width to scale: the registered backbone for the observation
  space whose student (a scalable CNN at its fitted width) is closest to the target among those
  smaller than the teacher, else an mlp with fitted widths; a Dict teacher without widths needs a per-key `--backbone`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from rlbase.errors import UsageError


def value_based(algo: str) -> bool:
    """Whether `algo` acts from Q-values (DQN, PQN: epsilon-greedy), not from a policy head."""
    from rlbase.agents import get_agent

    return get_agent(algo).exploration == "epsilon"


def build_network(algo: str, cfg: Any, observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> nn.Module:
    """The agent's own network for `cfg` (freshly initialised): `ActorCritic` or a Q-network."""
    from rlbase import transfer

    backbone = transfer.parse(cfg, observation_space, with_weights=False)
    if algo == "dqn":
        from rlbase.agents.dqn import build_q_network, head_options

        return build_q_network(backbone, observation_space, action_space, cfg.dueling, **head_options(cfg))
    if algo == "pqn":
        from rlbase.agents import pqn

        return pqn.build_q_network(cfg, backbone, observation_space, action_space)
    from rlbase.agents.pg import ActorCritic, make_distribution

    return ActorCritic(cfg, backbone, observation_space, make_distribution(action_space, cfg.action_bounds))


def acting_tensors(algo: str, network: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the greedy acting path uses (what a deployed policy holds): the whole
    Q-network, or the actor's backbone, policy head and log-std (not the critic)."""
    if value_based(algo):
        return dict(network.named_parameters())
    return {name: p for name, p in network.named_parameters()
            if name.startswith(("actor_backbone.", "policy_head.")) or name == "log_std"}


def acting_parameters(algo: str, cfg: Any, observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> int:
    """The acting parameters of `cfg`'s network, counted on the meta device (shapes only: no memory,
    no initialisation; sizing a student builds dozens of candidate networks)."""
    try:
        with torch.device("meta"):
            network = build_network(algo, cfg, observation_space, action_space)
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: build it for real
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
    if args.backbone is None or args.width_fraction is not None:
        widened = _fit_backbone_width(algo, base, target, observation_space, action_space)
        if widened is not None:  # a scalable CNN
            return (*widened, teacher_size)
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
    high = max(first, 1)
    while size(high) < target and high < 1 << 16:  # a target above the widths given (a CNN teacher's size)
        high *= 2
    best = _closest(size, high, target)
    return scaled(best), size(best)


def _closest(size: Any, high: int, target: float) -> int:
    """The integer k in [1, high] whose `size(k)` (non-decreasing in k) is closest to `target` in
    ratio: the smallest k that reaches it, found by bisection, or the one below."""
    low = 1
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if size(mid) < target else (low, mid)
    return min({max(1, low - 1), low}, key=lambda k: abs(math.log(size(k) / target)))


WIDTH_STEP = 32
"""`_fit_backbone_width` picks multipliers k / WIDTH_STEP: whole channels for nature_cnn's 32 and 64."""


def _fit_backbone_width(algo: str, base: Any, target: float, observation_space: gym.spaces.Space,
                        action_space: gym.spaces.Space) -> tuple[Any, int] | None:
    """(`base` with the `backbone_width` whose acting parameters come closest to `target`, that count),
    or None when the backbone has no scalable CNN (`rlbase.backbones.SCALABLE`)."""
    from rlbase import transfer
    from rlbase.backbones import SCALABLE

    spec = transfer.parse(base, observation_space, with_weights=False)
    if not any(name in SCALABLE for name in (spec.key_names.values() if spec.key_names else [spec.name])):
        return None

    def scaled(k: int) -> Any:
        return dataclasses.replace(base, backbone_width=k / WIDTH_STEP)

    def size(k: int) -> int:
        return acting_parameters(algo, scaled(k), observation_space, action_space)

    best = _closest(size, WIDTH_STEP * 16, target)
    return scaled(best), size(best)


def _smaller_backbone(algo: str, base: Any, teacher_cfg: Any, target: float, teacher_size: int,
                      observation_space: gym.spaces.Space, action_space: gym.spaces.Space) -> tuple[Any, int]:
    """A fixed-size backbone (a CNN) has no width to scale: the registered convolutional backbone for
    the space whose student (a scalable one at its fitted width) is closest to `target` parameters
    among those smaller than the teacher, else an mlp with widths fitted to `target`."""
    from rlbase.backbones import BACKBONES

    candidates = []
    for name, (_, accepts, _) in BACKBONES.items():
        if name in (teacher_cfg.backbone, "mlp") or not accepts(observation_space):
            continue
        cfg = dataclasses.replace(base, backbone=name, backbone_width=1.0)
        try:
            fitted = _fit_backbone_width(algo, cfg, target, observation_space, action_space)
            cfg, count = fitted or (cfg, acting_parameters(algo, cfg, observation_space, action_space))
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
