"""`rlbase distill RUN`: train a smaller student from a trained agent.

Policy distillation (Rusu et al. 2016, "Policy Distillation") on the states the student itself
visits, DAgger-style (Ross et al. 2011): the envs are rolled out with the student acting as it
will be evaluated (`--rollout-policy eval`, the default: the teacher config's evaluation policy,
sampled actions where it samples, as the Atari and maze presets do, epsilon-greedy at
`eval_epsilon` for Q-networks; `greedy`: the greedy action), the teacher acting instead with
probability beta early on (beta falls linearly from 1 to 0 over the first `--beta-decay` of the
steps), every visited state is labelled with the teacher's outputs and
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

This module is the command: its flags and their checks, the settings, the output run directory
(checkpoint, distill.json, report.json). The student's size and network are chosen in
`rlbase.distill_student`; the loss and the DAgger loop are in `rlbase.distill_dagger`.
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
from torch import nn

from rlbase.distill_dagger import PolicyView, distill
from rlbase.distill_student import acting_tensors, build_network, student_config, value_based
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
    rollout_policy: str
    """How the rollouts act: eval (the teacher config's evaluation policy) or greedy."""
    sample_actions: bool
    """The rollouts sample from the policy (policy-gradient agents whose evaluation samples)."""
    epsilon: float
    """Chance of a uniform random action in the rollouts (Q-networks: the evaluation's epsilon)."""
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
        "directory of the same algo that `rlbase eval` plays, with report.json (sizes, returns). Given a "
        "pretrained backbone artifact, a student backbone and head learn its pretraining task from it "
        "(report: held-out accuracy; OUT works as --backbone-weights).")
    parser.add_argument("path", metavar="RUN|ARTIFACT",
                        help="the teacher: a run directory, checkpoint folder or model.safetensors; or a pretrained "
                             "backbone artifact (a student backbone and head trained on its pretraining task)")
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
                        help="softmax temperature of the KL (default: 1 for policy-gradient agents, 0.01 for DQN, "
                             "2 for a backbone)")
    parser.add_argument("--value-coef", type=float, default=None,
                        help="weight of the regression to the teacher's value (policy-gradient agents; default 0.5)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the student's Adam learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=256, help="states per gradient step (default 256)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="gradient steps per round: epochs * states collected / batch size (default 4); a "
                             "backbone: passes over its pretraining data (default 10)")
    parser.add_argument("--train-samples", type=int, default=None, metavar="N",
                        help="a backbone: training inputs regenerated for the student (default: the pretraining's)")
    parser.add_argument("--label-weight", type=float, default=0.0, metavar="W",
                        help="a backbone: weight of the true labels' loss beside the teacher's (default 0)")
    parser.add_argument("--feature-weight", type=float, default=0.0, metavar="W",
                        help="a backbone: weight of the squared error to the teacher's features (through a learnt "
                             "linear map where the widths differ), a hint towards features agents read as they read "
                             "the teacher's; on the maze recipe it did not make a student transfer (BENCHMARKS.md) "
                             "(default 0)")
    parser.add_argument("--buffer-size", type=int, default=None,
                        help="states kept in the aggregated dataset (default: 100,000, at most 1 GiB of observations)")
    parser.add_argument("--beta-decay", type=float, default=0.2,
                        help="fraction of the steps over which the teacher's share of actions falls from 1 to 0 "
                             "(0: the student acts from the start; default 0.2)")
    parser.add_argument("--rollout-policy", choices=("eval", "greedy"), default="eval",
                        help="how the rollouts act: eval, the teacher config's evaluation policy (sampled actions "
                             "where it samples, epsilon-greedy at its eval_epsilon for DQN and PQN), so the student "
                             "learns on the states it will be evaluated on; or greedy (default: eval)")
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
# Settings
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


def settings_from(args: argparse.Namespace, algo: str, teacher_cfg: Any, observation_space: gym.spaces.Space,
                  num_envs: int) -> DistillSettings:
    from rlbase.obs import space_dtype

    if value_based(algo) and args.value_coef:
        raise UsageError(f"invalid --value-coef: {algo.upper()} has no value head to distill (its Q-values are the policy)")
    spaces = observation_space.spaces.values() if isinstance(observation_space, gym.spaces.Dict) else [observation_space]
    state_bytes = sum(math.prod(s.shape) * torch.empty((), dtype=space_dtype(s)).element_size() for s in spaces)
    buffer_size = args.buffer_size or max(num_envs, min(100_000, (1 << 30) // max(1, state_bytes)))
    return DistillSettings(
        hidden_sizes=args.hidden_sizes, width_fraction=args.width_fraction if args.width_fraction is not None else 0.25,
        backbone=args.backbone, steps=args.steps, num_envs=num_envs, rollout_steps=args.rollout_steps,
        temperature=args.temperature if args.temperature is not None else (0.01 if value_based(algo) else 1.0),
        value_coef=0.0 if value_based(algo) else (args.value_coef if args.value_coef is not None else 0.5),
        learning_rate=args.learning_rate, batch_size=args.batch_size, epochs=args.epochs or 4,
        buffer_size=math.ceil(buffer_size / num_envs) * num_envs, beta_decay=args.beta_decay,
        rollout_policy=args.rollout_policy,
        sample_actions=args.rollout_policy == "eval" and not value_based(algo)
        and not getattr(teacher_cfg, "eval_deterministic", True),
        epsilon=float(getattr(teacher_cfg, "eval_epsilon", 0.0)) if args.rollout_policy == "eval" and value_based(algo)
        else 0.0,
        max_grad_norm=args.max_grad_norm, seed=args.seed,
        eval_episodes=args.eval_episodes or teacher_cfg.eval_episodes,
        log_interval=args.log_interval or max(1, args.steps // 50))


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
    if value_based(algo):  # DQN also keeps a target network (PQN has none)
        tensors = {f"q.{k}": v for k, v in state.items()}
        if algo == "dqn":
            tensors.update({f"target.{k}": v.clone() for k, v in state.items()})
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
    from rlbase.backbone_compress import is_backbone_artifact

    if is_backbone_artifact(args.path):  # a pretrained backbone: a student backbone + head on its task
        from rlbase.backbone_distill import distill_command

        return distill_command(args)
    for flag in ("train_samples", "label_weight", "feature_weight"):
        if getattr(args, flag):
            raise UsageError(f"--{flag.replace('_', '-')} applies to a backbone artifact; {args.path} is an agent run")
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
            load_module(teacher_net, trained.tensors, "q." if value_based(algo) else "model.")
        except ValueError as exc:
            raise RlbaseError(f"{trained.checkpoint}: the checkpoint does not match its config ({exc})") from None
        teacher_net.eval().requires_grad_(False)
        normalizer = None
        if not value_based(algo):
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
        shape = (f"width {cfg.backbone_width:g}" if cfg.backbone_width != 1.0
                 else f"hidden {','.join(map(str, cfg.hidden_sizes))}")
        print(f"rlbase: distilling {algo} on {teacher_cfg.env_id}: teacher {teacher_size:,} acting parameters -> "
              f"student {student_size:,} ({cfg.backbone}, {shape}), "
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
                    "hidden_sizes": list(teacher_cfg.hidden_sizes), "backbone_width": teacher_cfg.backbone_width,
                    "acting_parameters": teacher_size,
                    "acting_bytes": teacher_bytes, "parameters": compress.parameter_count(teacher_net),
                    "eval": _returns(teacher_eval)},
        "student": {"checkpoint": str(checkpoint), "backbone": cfg.backbone, "hidden_sizes": list(cfg.hidden_sizes),
                    "backbone_width": cfg.backbone_width, "acting_parameters": student_size, "acting_bytes": student_bytes,
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
