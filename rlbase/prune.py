"""`rlbase prune RUN --sparsity 0.9`: global magnitude pruning of a trained agent's policy, gradual
over a short RL fine-tuning phase with the agent's own loss.

Zhu & Gupta 2017, "To prune, or not to prune": the sparsity target rises from 0 to the final
sparsity s_f along a cubic, s_t = s_f (1 - (1 - p)^3), p the fraction of the pruning phase done
(the first `PRUNE_FRACTION` of the fine-tuning steps; the rest trains at the final sparsity). At
each target the weights of smallest magnitude over all the policy's weight matrices together
(global, not per layer) are masked; pruned weights never return.

How it runs: the source run's config and checkpoints are copied into the output folder, which is
then resumed through the ordinary run lifecycle (`rlbase.lifecycle.plan_resume`) with
`total_timesteps` raised by `--steps` (a schedule change a resume allows; DQN's exploration
stretches with it). The fine-tuning trains at `--learning-rate` (default: a tenth of the run's);
an annealed learning rate (the policy-gradient agents, PQN) restarts from it at the fine-tuning's
first step and anneals to 0 over it
(`lr_restart_step`): continuing the run's own schedule would fine-tune a fully trained run at a
learning rate already annealed to ~0 (measured: a 1M-step PPO Breakout policy pruned to 90% over
50k such steps fell from 14.5 to 1.6, random play). A `PruneCallback` holds the masks on the device and
multiplies them into the weights after every update (`on_step`: tensor ops only, no host sync), so
every checkpoint, and the final one, holds the zeros in place as dense tensors: `rlbase eval OUT`
plays the pruned agent unchanged, and the folder is an ordinary run directory (TensorBoard logs,
metrics.jsonl) with a report.json.

What is pruned: the weight matrices (Linear and convolution weights, 2-d and up) of the greedy
acting path (`Agent.acting_net`: the policy's backbone and head, DQN's Q-network); biases,
normalisation, log-std and the critic of policy-gradient agents stay dense (the critic is not
deployed). The checkpoint tensors are matched to the acting path's weights by value when the
callback starts.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from rlbase.callbacks import Callback
from rlbase.compress import output_dir, parameter_count, write_report
from rlbase.errors import RlbaseError, UsageError

SCHEDULES = ("cubic", "linear", "oneshot")
SCORES = ("erk", "normalized", "raw")
FINETUNE_LR_SCALE = 0.1
"""The fine-tuning's default learning rate, as a share of the run's (the usual fine-tuning tenth: a
converged PPO CartPole policy pruned to 90% kept 500 at 0.1x and 0.3x, fell to 320 at 1x and to 211
at 0.01x)."""
PRUNE_FRACTION = 0.75
"""The share of the fine-tuning steps over which the sparsity rises; the rest recovers at the final sparsity."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `rlbase prune`."""
    parser.description = ("Global magnitude pruning of a trained agent's policy weights, raised gradually (Zhu & "
                          "Gupta's cubic schedule) while the run continues with the agent's own RL loss. Writes a "
                          "new run directory (pruned weights as dense tensors with their zeros, TensorBoard logs, "
                          "report.json) that `rlbase eval` plays.")
    parser.add_argument("path", metavar="RUN_DIR", help="a run directory (training continues from its newest checkpoint)")
    parser.add_argument("--sparsity", type=float, required=True,
                        help="fraction of the policy's weights set to zero, in (0, 1), e.g. 0.9")
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps of fine-tuning (default: a third of the source run's steps)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cubic",
                        help="how the sparsity rises: cubic (Zhu & Gupta), linear, or oneshot (all at the first "
                             "update) (default: cubic)")
    parser.add_argument("--scores", choices=SCORES, default="normalized",
                        help="how the zeros are shared between layers: normalized (|w| divided by its layer's RMS, "
                             "ranked globally: no layer is pruned away whole), raw (|w| ranked globally), or erk "
                             "(each layer's share by the Erdos-Renyi-Kernel rule: small layers such as the first "
                             "convolution stay nearly dense; |w| ranked within each layer) (default: normalized)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="the pruned run's folder (default: a new folder <run>-prune beside the run)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes to evaluate the dense and pruned agents on (default: the config's eval_episodes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes (default: 0)")
    parser.add_argument("--finetune-seed", type=int, default=None,
                        help="reseed the fine-tuning's action sampling and minibatch draws (the seed of the "
                             "compression step; default: continue the run's own random state, so a prune "
                             "repeats exactly)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="learning rate of the fine-tuning (default: a tenth of the run's); an annealed "
                             "learning rate (PPO, A2C, REINFORCE, PQN) restarts from it and anneals to 0 over the "
                             "fine-tuning, instead of continuing the run's schedule, which ends at ~0")


def run(args: argparse.Namespace) -> int:
    report = prune(args.path, sparsity=args.sparsity, steps=args.steps, schedule=args.schedule, scores=args.scores,
                   out=args.out, episodes=args.episodes, seed=args.seed, finetune_seed=args.finetune_seed,
                   learning_rate=args.learning_rate)
    dense, pruned = report["dense"], report["pruned"]
    print(f"rlbase: pruned run in {report['out']}: {report['sparsity_reached']:.1%} of "
          f"{report['policy_weights']:,} policy weights are zero; acting path {pruned['nonzero_parameters']:,} of "
          f"{pruned['parameters']:,} parameters nonzero")
    print(f"  return dense {dense['mean_return']:.2f}, pruned {pruned['mean_return']:.2f} after "
          f"{report['steps']:,} fine-tuning steps")
    print(f"  play it with: rlbase eval {report['out']}")
    return 0


def target_sparsity(schedule: str, final: float, progress: float) -> float:
    """The sparsity due at `progress` (0 to 1) through the pruning phase."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "oneshot":
        return final
    if schedule == "linear":
        return final * progress
    return final * (1.0 - (1.0 - progress) ** 3)


def erk_densities(shapes: list[torch.Size], sparsity: float) -> list[float]:
    """Per-layer shares of weights to keep under the Erdos-Renyi-Kernel rule (Evci et al. 2020,
    RigL; the distribution Graesser et al. 2022 found best for sparse RL agents): layer l keeps a
    share proportional to sum(shape) / prod(shape), scaled so that `1 - sparsity` of all the weights
    are kept, layers that would keep more than all of theirs kept whole. Small layers (the first
    convolution, the policy head) stay (nearly) dense; the large fully connected layer takes most
    of the pruning."""
    sizes = [math.prod(shape) for shape in shapes]
    raw = [sum(shape) / size for shape, size in zip(shapes, sizes)]
    keep_total = (1.0 - sparsity) * sum(sizes)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(sizes)) if i not in dense]
        budget = keep_total - sum(sizes[i] for i in dense)
        scale = budget / max(1e-12, sum(raw[i] * sizes[i] for i in free))
        over = [i for i in free if raw[i] * scale > 1.0]
        if not over:
            return [1.0 if i in dense else raw[i] * scale for i in range(len(sizes))]
        dense.update(over)


def global_masks(weights: list[torch.Tensor], sparsity: float, scores: str = "normalized") -> list[torch.Tensor]:
    """Masks (same shapes, weights' dtype) keeping the `1 - sparsity` share of all the weights together
    with the largest scores: exactly round(sparsity * total) zeros (ties broken by position).

    `scores`: `raw` ranks |w| across layers as they are; `normalized` ranks |w| / rms(layer's
    remaining weights), so a layer initialised small (a policy head at 0.01 scale) is not pruned
    away whole while the ranking stays global (a layer's share is set by its weight distribution);
    `erk` sets each layer's share by `erk_densities` and keeps the largest |w| within each layer."""
    if scores == "erk":
        return _erk_masks(weights, sparsity)

    def score(w: torch.Tensor) -> torch.Tensor:
        magnitude = w.detach().abs().flatten()
        if scores == "raw":
            return magnitude
        nonzero = (magnitude > 0).sum().clamp(min=1)
        return magnitude / (magnitude.square().sum() / nonzero).sqrt().clamp(min=1e-12)

    magnitudes = torch.cat([score(w) for w in weights])
    keep = magnitudes.numel() - round(sparsity * magnitudes.numel())
    flat = torch.zeros_like(magnitudes)
    flat[torch.topk(magnitudes, keep, sorted=False).indices] = 1.0
    return [m.view_as(w).to(w.dtype) for m, w in zip(flat.split([w.numel() for w in weights]), weights)]


def _erk_masks(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    sizes = [w.numel() for w in weights]
    keeps = [min(size, round(density * size)) for density, size in
             zip(erk_densities([w.shape for w in weights], sparsity), sizes)]
    # the rounding may miss the total by a few: settle it on the largest pruned layer
    largest = max(range(len(sizes)), key=lambda i: (keeps[i] < sizes[i], sizes[i]))
    keeps[largest] += sum(sizes) - round(sparsity * sum(sizes)) - sum(keeps)
    masks = []
    for w, keep in zip(weights, keeps):
        flat = torch.zeros(w.numel(), device=w.device, dtype=w.dtype)
        flat[torch.topk(w.detach().abs().flatten(), max(0, min(keep, w.numel())), sorted=False).indices] = 1.0
        masks.append(flat.view_as(w))
    return masks


def policy_weight_names(net: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> list[list[str]]:
    """For each weight matrix of the acting path `net` (2-d and up), the names of the checkpoint
    `tensors` that hold it (found by value: a DQN target network just synced holds a copy too)."""
    groups = []
    for name, weight in net.named_parameters():
        if weight.dim() < 2:
            continue
        names = [k for k, v in tensors.items() if v.shape == weight.shape and v.dtype == weight.dtype
                 and torch.equal(v, weight.detach())]
        if not names:
            raise RlbaseError(f"the acting path's weight {name} is not among the run's tensors (cannot prune it)")
        groups.append(names)
    return groups


class PruneCallback(Callback):
    """Masks the policy's weights after every update, the sparsity rising along `schedule` from
    `start_step` over `prune_steps` env steps to `sparsity`. The masks live on the device; each
    `on_step` multiplies them in (and recomputes them when the due sparsity rose)."""

    def __init__(self, sparsity: float, start_step: int, prune_steps: int, schedule: str = "cubic",
                 scores: str = "normalized", seed: int | None = None):
        self.sparsity, self.start_step, self.prune_steps, self.schedule = sparsity, start_step, prune_steps, schedule
        self.scores, self.seed = scores, seed
        self.groups: list[list[torch.Tensor]] = []
        self.masks: list[torch.Tensor] = []
        self.current = 0.0

    def on_start(self, run: Any) -> None:
        if self.seed is not None:  # another fine-tuning than the run's own continuation
            run.generator.manual_seed(self.seed)
            torch.manual_seed(self.seed)
        tensors = run.tensors(weights_only=True)  # live references to the networks' weights
        devices = [run.device.index or 0] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # building the acting path draws init values
            net = run.agent.acting_net(run.config, tensors, run.env.single_observation_space,
                                       run.env.single_action_space, run.device)
        self.groups = [[tensors[k] for k in names] for names in policy_weight_names(net, tensors)]
        self.masks = [torch.ones_like(group[0]) for group in self.groups]

    @torch.no_grad()
    def on_step(self, run: Any) -> None:
        due = target_sparsity(self.schedule, self.sparsity, (run.global_step - self.start_step) / self.prune_steps)
        if due > self.current:
            self.masks = global_masks([group[0] * mask for group, mask in zip(self.groups, self.masks)], due,
                                      self.scores)
            self.current = due
        for group, mask in zip(self.groups, self.masks):
            for weight in group:
                weight.mul_(mask)


def _copy_run(source: Path, out: Path) -> None:
    """The source run's config, checkpoints and metrics into `out` (the pruned run continues them)."""
    from rlbase.checkpoint import CHECKPOINTS
    from rlbase.run import CONFIG_FILE
    from rlbase.safefiles import disk_error

    try:
        shutil.copy2(source / CONFIG_FILE, out / CONFIG_FILE)
        shutil.copytree(source / CHECKPOINTS, out / CHECKPOINTS, symlinks=False)
        if (source / "metrics.jsonl").is_file():
            shutil.copy2(source / "metrics.jsonl", out / "metrics.jsonl")
    except OSError as exc:
        raise disk_error(exc, "a copy of the source run into", out) from None


def prune(path: str | Path, *, sparsity: float, steps: int | None = None, schedule: str = "cubic",
          scores: str = "normalized", out: str | None = None, episodes: int | None = None, seed: int = 0,
          finetune_seed: int | None = None, learning_rate: float | None = None) -> dict[str, Any]:
    """Prune the run at `path` while fine-tuning it for `steps` env steps; write the pruned run
    and its report.json; return the report. The fine-tuning trains at `learning_rate` (default:
    a tenth of the run's); an annealed learning rate restarts at the fine-tuning's first step."""
    from rlbase.compress import nonzero_parameters
    from rlbase.evaluate import evaluate_checkpoint, load_trained
    from rlbase.lifecycle import execute, plan_resume
    from rlbase.run import CONFIG_FILE

    if not 0.0 < sparsity < 1.0:
        raise UsageError(f"invalid --sparsity: must be in (0, 1), got {sparsity}")
    if steps is not None and steps <= 0:
        raise UsageError(f"invalid --steps: must be positive, got {steps}")
    if episodes is not None and episodes <= 0:
        raise UsageError(f"invalid --episodes: must be positive, got {episodes}")
    if finetune_seed is not None and not 0 <= finetune_seed < 2**32:
        raise UsageError(f"invalid --finetune-seed: must be in [0, 2**32), got {finetune_seed}")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise UsageError(f"invalid --learning-rate: must be a positive number, got {learning_rate}")
    if schedule not in SCHEDULES:
        raise UsageError(f"invalid --schedule {schedule!r}: use {', '.join(SCHEDULES)}")
    if scores not in SCORES:
        raise UsageError(f"invalid --scores {scores!r}: use {', '.join(SCORES)}")
    source = Path(path)
    if not source.exists():
        raise RlbaseError(f"{source} does not exist")
    if not (source.is_dir() and (source / CONFIG_FILE).is_file()):
        raise UsageError(f"rlbase prune needs a run directory (it continues the run's training); {source} is not one")
    dense = load_trained(source, "cpu")
    learning_rate = learning_rate if learning_rate is not None else FINETUNE_LR_SCALE * dense.config.learning_rate
    start = int(dense.state["step"])
    steps = steps or max(1, start // 3)
    folder = output_dir(source, dense.checkpoint, "prune", out)
    try:
        _copy_run(source, folder)
        changes: dict[str, Any] = {"total_timesteps": start + steps, "learning_rate": learning_rate}
        if getattr(dense.config, "anneal_lr", False):  # not the tail of the run's schedule: lr ~0 there
            changes["lr_restart_step"] = start
        plan = plan_resume(folder, dense.agent.name, changes)
    except BaseException:  # nothing trained yet: leave no half-made run behind (the folder was new or empty)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    callback = PruneCallback(sparsity, start, max(1, int(PRUNE_FRACTION * steps)), schedule, scores, finetune_seed)
    try:
        execute(plan, callbacks=[callback], progress=False)
    finally:
        plan.close()

    pruned = load_trained(folder, "cpu")
    reports = {}
    for name, trained in (("dense", dense), ("pruned", pruned)):
        cfg = trained.config
        reports[name] = evaluate_checkpoint(trained.agent, cfg, trained.tensors, episodes=episodes or cfg.eval_episodes,
                                            seed=seed, device=torch.device("cpu"), progress=False)
        env_spaces = _spaces(cfg)
        net = trained.agent.acting_net(cfg, trained.tensors, *env_spaces, torch.device("cpu"))
        reports[name] = {"parameters": parameter_count(net), "nonzero_parameters": nonzero_parameters(net),
                         **{k: reports[name][k] for k in ("mean_return", "std_return", "ci95_low", "ci95_high",
                                                          "mean_length")}}
        if name == "pruned":
            matrices = [p for p in net.parameters() if p.dim() >= 2]
    total = sum(w.numel() for w in matrices)
    zeros = sum(int((w == 0).sum()) for w in matrices)
    report = {"command": "prune", "source": str(dense.checkpoint), "algo": dense.agent.name,
              "env_id": dense.config.env_id, "out": str(folder), "checkpoint": str(pruned.checkpoint),
              "target_sparsity": sparsity, "schedule": schedule, "scores": scores, "steps": steps, "start_step": start,
              "prune_steps": callback.prune_steps, "policy_weights": total, "policy_weights_zero": zeros,
              "sparsity_reached": zeros / total, "dense": reports["dense"], "pruned": reports["pruned"],
              "episodes": episodes or dense.config.eval_episodes, "seed": seed, "finetune_seed": finetune_seed,
              "learning_rate": learning_rate,
              "lr_annealed_from": start if getattr(dense.config, "anneal_lr", False) else None}
    # a ratio of negative returns (Pendulum) would read backwards: none then
    report["return_ratio"] = (reports["pruned"]["mean_return"] / reports["dense"]["mean_return"]
                              if reports["dense"]["mean_return"] > 0 else None)
    write_report(folder, report)
    return report


def _spaces(cfg: Any) -> tuple[Any, Any]:
    """(observation space, action space) of the config's env (built once, closed)."""
    from rlbase.config import make_env

    env = make_env(cfg, 1, torch.device("cpu"), training=False)
    try:
        return env.single_observation_space, env.single_action_space
    finally:
        env.close()
