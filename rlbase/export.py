"""`rlbase export RUN --format onnx`: a trained agent's whole greedy acting path as one ONNX file,
checked against the torch module with onnxruntime (`rlbase eval model.onnx` plays it: rlbase/deploy.py).

The graph is `Agent.acting_net`: the observation as the env gives it (uint8 frames and token ids
included) -> the preprocessing the agent applies (uint8 scaling inside the backbone, the frozen
observation normalisation of `--normalize-obs` runs, clipped to `clip_obs`) -> the network -> the
action the env receives (argmax of Q-values or logits, the Gaussian mean clipped to the Box or
squashed as in training). Its inputs, outputs and metadata are described in rlbase/deploy.py,
which also plays it (`rlbase eval model.onnx`).

Parity: observations collected by playing the policy itself on the eval split go through the torch
module and onnxruntime; the report gives the largest difference of outputs and actions and the
share of identical greedy actions, and the export fails (no model.onnx written) when they differ
beyond `OUTPUT_TOLERANCE` (relative to the outputs' scale) or fewer than `MIN_IDENTICAL` of the
discrete actions agree: where the outputs agree that closely, a different argmax is a near-tie.

TorchScript is refused: a TorchScript archive is a zip whose data.pkl is unpickled on load and
whose code is compiled and run from the file. rlbase's rule is that nothing it reads back goes
through an unpickler, and an ONNX file is a protobuf of operators that onnxruntime interprets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rlbase.deploy import (
    DEPLOY_HINT,
    FORMAT,
    MAX_ONNX_BYTES,
    MODEL_FILE,
    as_inputs,
    evaluate_onnx,
    input_names,
    onnx_model_path,
    onnx_session,
    require_deploy,
    run_session,
    space_json,
)
from rlbase.errors import RlbaseError, UsageError
from rlbase.safefiles import atomic_write_bytes

if TYPE_CHECKING:
    import gymnasium as gym

    from rlbase.envs import TensorVecEnv

DEFAULT_OPSET = 18
"""The opset torch's ONNX exporter writes natively (its torchlib); others go through a version converter."""
OUTPUT_TOLERANCE = 1e-4
"""Largest allowed |torch - onnxruntime| of outputs, times max(1, the largest |output|)."""
MIN_IDENTICAL = 0.999
"""Smallest allowed share of identical discrete actions (a mismatch with agreeing outputs is a near-tie)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Export a trained agent's greedy acting path (observation preprocessing, network,\n"
                          "action) as one ONNX file with a dynamic batch dimension and metadata, check it\n"
                          "against the torch module with onnxruntime, and play both.\n"
                          "`rlbase eval OUT/model.onnx` plays the file with onnxruntime.")
    parser.add_argument("path", metavar="RUN_DIR|CHECKPOINT|ARTIFACT",
                        help="a run directory, checkpoint folder or model.safetensors; or a pretrained backbone "
                             "artifact (backbone + task head exported, checked on held-out inputs)")
    parser.add_argument("--format", default="onnx",
                        help="onnx (default); torchscript is refused: its archives are unpickled on load")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder, new or empty (default: a new folder beside the run, RUN-export)")
    parser.add_argument("--best", action="store_true", help="export the run's best checkpoint instead of its newest")
    parser.add_argument("--opset", type=int, metavar="N", default=DEFAULT_OPSET,
                        help=f"ONNX opset, {DEFAULT_OPSET} or newer (default: {DEFAULT_OPSET})")
    parser.add_argument("--parity-samples", type=int, metavar="N", default=1000,
                        help="env observations (a backbone: held-out inputs) checked torch vs onnxruntime; 0 skips "
                             "the check (default: 1000)")
    parser.add_argument("--episodes", type=int, metavar="N", default=None,
                        help="episodes each of the torch policy and the ONNX file play for the report; 0 skips "
                             "(default: the config's eval_episodes)")
    parser.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the parity rollout and the episodes (default: 0)")


# --- spaces and metadata ------------------------------------------------------------------------


def preprocessing(cfg: Any, net: nn.Module, space: gym.spaces.Space, action_space: gym.spaces.Space) -> dict[str, Any]:
    """What the graph does between the env's observation and the env's action, in words."""
    import gymnasium as gym

    subs = space.spaces if isinstance(space, gym.spaces.Dict) else {"obs": space}
    inputs = {}
    for key, sub in subs.items():
        if sub.dtype == np.uint8 and float(np.max(sub.high)) > 1:
            inputs[key] = "uint8 pixels, scaled to [0, 1] in the graph"
        elif sub.dtype == np.uint8:
            inputs[key] = "uint8 one-hot grid, cast to float in the graph"
        elif np.issubdtype(sub.dtype, np.integer):
            inputs[key] = f"{sub.dtype} token ids, embedded in the graph"
        else:
            inputs[key] = f"{sub.dtype} values"
    if getattr(net, "normalize", False):
        inputs["obs"] += (f"; frozen normalisation (obs - mean) / sqrt(var + 1e-8) from training, clipped to "
                          f"+/-{cfg.clip_obs}")
    kind = net.kind
    if kind == "q":
        actions = "argmax of the Q-values"
    elif kind in ("categorical", "multicategorical"):
        actions = "argmax of the logits (the distribution's mode)"
        if kind == "multicategorical":
            actions += " per sub-action"
    else:
        bounds = "squashed into the Box with tanh" if cfg.action_bounds == "squash" else "clipped to the Box"
        actions = f"the Gaussian mean, {bounds}"
    if isinstance(action_space, gym.spaces.Discrete) and int(action_space.start) != 0:
        actions += f", offset by start {int(action_space.start)}"
    return {"inputs": inputs, "actions": actions}


# --- the graph --------------------------------------------------------------------------------


class _Positional(nn.Module):
    """The acting net with one positional input per observation key (ONNX graphs take named
    tensors, not a dict)."""

    def __init__(self, net: nn.Module, keys: list[str] | None):
        super().__init__()
        self.net, self.keys = net, keys

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(dict(zip(self.keys, inputs)) if self.keys else inputs[0])


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter logs about optional packages (torchvision) and warns about its own
    internals: neither concerns the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def exporter_error(exc: Exception) -> str:
    """The line of an exporter error that says what went wrong (its message opens with generic advice
    and names the cause under "## Exception summary")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "## Exception summary" in lines and lines.index("## Exception summary") + 1 < len(lines):
        return lines[lines.index("## Exception summary") + 1][:300]
    return lines[0][:300] if lines else type(exc).__name__


def export_onnx(net: nn.Module, example: Any, names: list[str], opset: int, metadata: dict[str, str],
                output_names: tuple[str, ...] = ("outputs", "actions")) -> bytes:
    """The serialized ONNX model of `net` (on the CPU, in eval mode) traced at `example` (a batch of
    at least 2 observations), batch dimension dynamic, `metadata` in its metadata_props."""
    try:
        import onnx  # noqa: F401  (the exporter's own dependencies, checked here for one clear line)
        import onnxscript  # noqa: F401
    except ImportError:
        raise RlbaseError(f"exporting ONNX needs onnx and onnxscript: {DEPLOY_HINT}") from None
    keys = names if isinstance(example, dict) else None
    inputs = as_inputs(example, names)
    batch = torch.export.Dim("batch")
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(_Positional(net, keys).eval(), inputs, None, input_names=names,
                                        output_names=list(output_names), opset_version=opset,
                                        dynamic_shapes=(tuple({0: batch} for _ in inputs),), dynamo=True,
                                        verbose=False, report=False, optimize=True)
            model = program.model_proto
    except Exception as exc:  # noqa: BLE001  (the exporter raises many kinds: torch.export, onnxscript)
        raise RlbaseError(f"torch.onnx.export failed: {exporter_error(exc)}") from None
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    if len(data) > MAX_ONNX_BYTES:
        raise RlbaseError(f"the model is {len(data):,} bytes, over ONNX's 2 GiB protobuf limit")
    return data


# --- parity ------------------------------------------------------------------------------------


@torch.no_grad()
def collect_observations(net: nn.Module, env: TensorVecEnv, samples: int, seed: int) -> Any:
    """`samples` observations met by playing `net`'s greedy actions on `env` (CPU tensors)."""
    from rlbase.obs import batch_size, obs_map

    chunks = []
    obs, _ = env.reset(seed=seed)
    have = 0
    while have < samples:
        chunks.append(obs_map(lambda x: x.cpu().clone(), obs))
        have += batch_size(obs)
        obs, *_ = env.step(net(obs)[1])
    if isinstance(chunks[0], dict):
        return {key: torch.cat([c[key] for c in chunks])[:samples] for key in chunks[0]}
    return torch.cat(chunks)[:samples]


@torch.no_grad()
def check_parity(net: nn.Module, session: Any, obs: Any, names: list[str], kind: str) -> dict[str, Any]:
    """torch vs onnxruntime on a batch of observations (and on its first one alone, a batch of 1)."""
    from rlbase.obs import batch_size, take

    outputs, actions = net(obs)
    ort_outputs, ort_actions = run_session(session, obs, names)
    one_outputs, _ = run_session(session, take(obs, slice(0, 1)), names)
    outputs, actions = outputs.cpu().numpy(), actions.cpu().numpy()
    output_diff = float(max(np.abs(outputs - ort_outputs).max(), np.abs(outputs[:1] - one_outputs).max()))
    action_diff = float(np.abs(actions.astype(np.float64) - ort_actions.astype(np.float64)).max())
    scale = max(1.0, float(np.abs(outputs).max()))
    report: dict[str, Any] = {"samples": batch_size(obs), "max_abs_diff_outputs": output_diff,
                              "max_abs_diff_actions": action_diff, "output_tolerance": OUTPUT_TOLERANCE * scale}
    passed = output_diff <= OUTPUT_TOLERANCE * scale and ort_actions.shape == actions.shape
    if kind == "gaussian":
        passed = passed and action_diff <= OUTPUT_TOLERANCE * scale
    else:
        rows = (actions.reshape(len(actions), -1) == ort_actions.reshape(len(actions), -1)).all(axis=1)
        report["identical_actions"] = float(rows.mean())
        passed = passed and report["identical_actions"] >= MIN_IDENTICAL
    report["passed"] = bool(passed)
    return report


# --- the command -------------------------------------------------------------------------------


def check_arguments(args: argparse.Namespace) -> None:
    """Every flag of `rlbase export` checked, and the deploy extra present, before anything is read."""
    if args.format == "torchscript":
        raise UsageError("--format torchscript is not offered: a TorchScript archive is unpickled and its code "
                         "run on load, and rlbase never reads artifacts through an unpickler; use --format onnx")
    if args.format != "onnx":
        raise UsageError(f"unsupported --format {args.format!r}: use onnx")
    require_deploy()
    try:
        import onnx
    except ImportError:
        raise RlbaseError(f"exporting ONNX needs onnx and onnxscript: {DEPLOY_HINT}") from None
    latest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= args.opset <= latest:
        raise UsageError(f"invalid --opset: must be in [{DEFAULT_OPSET}, {latest}] (torch's exporter writes "
                         f"{DEFAULT_OPSET} natively), got {args.opset}")
    if args.parity_samples < 0:
        raise UsageError(f"invalid --parity-samples: must be 0 or more, got {args.parity_samples}")
    if args.episodes is not None and args.episodes < 0:
        raise UsageError(f"invalid --episodes: must be 0 or more, got {args.episodes}")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"invalid --seed: must be in [0, 2**32), got {args.seed}")
    if onnx_model_path(args.path) is not None:
        raise UsageError(f"{args.path} is an ONNX export already; rlbase export reads a run directory or checkpoint")


def run(args: argparse.Namespace) -> int:
    from rlbase import __version__
    from rlbase.compress import output_dir, parameter_count, tensor_bytes, write_report
    from rlbase.config import make_env
    from rlbase.evaluate import evaluate_checkpoint, load_trained
    from rlbase.obs import take
    from rlbase.words import plural

    check_arguments(args)
    from rlbase.backbone_compress import export_command, is_backbone_artifact

    if is_backbone_artifact(args.path):  # a pretrained backbone: backbone + task head, held-out accuracy
        return export_command(args)
    cpu = torch.device("cpu")  # the artifact is for CPU inference; the check compares CPU with CPU
    trained = load_trained(args.path, cpu, best=args.best)
    agent, cfg, checkpoint = trained.agent, trained.config, trained.checkpoint
    samples = args.parity_samples
    env = make_env(cfg, max(2, min(16, samples)), cpu, training=False)
    try:
        obs_space, action_space = env.single_observation_space, env.single_action_space
        try:
            net = agent.acting_net(cfg, trained.tensors, obs_space, action_space, cpu)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise RlbaseError(f"{checkpoint}: the checkpoint does not match its config "
                              f"({str(exc).splitlines()[0]})") from None
        observations = collect_observations(net, env, max(samples, 2), args.seed)
    finally:
        env.close()
    names = input_names(obs_space)
    metadata = {
        "rlbase_format": FORMAT, "rlbase_version": __version__, "algo": agent.name, "env_id": cfg.env_id,
        "env_kwargs": json.dumps(cfg.env_kwargs), "observation_space": json.dumps(space_json(obs_space)),
        "action_space": json.dumps(space_json(action_space)),
        "preprocessing": json.dumps(preprocessing(cfg, net, obs_space, action_space)), "kind": net.kind,
        "inputs": json.dumps(names), "outputs": json.dumps(["outputs", "actions"]),
        "global_step": json.dumps(trained.state.get("step")), "config": json.dumps(dataclasses.asdict(cfg)),
    }
    if net.kind == "gaussian":  # its state-independent std: `rlbase eval` can sample as the torch policy does
        metadata["log_std"] = json.dumps(net.log_std.detach().cpu().reshape(-1).tolist())
    existed = args.out is not None and Path(args.out).exists()  # before output_dir makes it
    out = output_dir(args.path, checkpoint, "export", args.out)
    with removed_if_left_empty(out, existed):
        data = export_onnx(net, take(observations, slice(0, 2)), names, args.opset, metadata)
        session = onnx_session(data, "the exported model")
        parity = check_parity(net, session, observations, names, net.kind) if samples else None
        report: dict[str, Any] = {
            "command": "export", "source": str(args.path), "checkpoint": str(checkpoint),
            "global_step": trained.state.get("step"), "algo": agent.name, "env_id": cfg.env_id, "format": "onnx",
            "opset": args.opset, "artifact": MODEL_FILE, "kind": net.kind, "inputs": names,
            "parameters": parameter_count(net), "tensor_bytes": tensor_bytes(dict(net.state_dict())),
            "bytes": len(data), "parity": parity,
        }
        if parity is not None and not parity["passed"]:
            write_report(out, report)
            raise RlbaseError(f"onnxruntime disagrees with torch on {samples} observations (outputs differ by up to "
                              f"{parity['max_abs_diff_outputs']:.3g}, tolerance {parity['output_tolerance']:.3g}"
                              + (f"; identical actions {parity['identical_actions']:.1%}" if "identical_actions"
                                 in parity else "") + f"): {MODEL_FILE} not written; details in {out}/report.json")
        write_model(out, data)
    print(f"rlbase: exported {agent.name} {cfg.env_id} ({net.kind}, {parameter_count(net):,} parameters) to "
          f"{out / MODEL_FILE}: {len(data):,} bytes, opset {args.opset}, inputs {', '.join(names)}")
    if parity is not None:
        same = f", identical actions {parity['identical_actions']:.1%}" if "identical_actions" in parity else ""
        print(f"rlbase: parity on {samples} env observations: max |outputs diff| {parity['max_abs_diff_outputs']:.3g}, "
              f"max |actions diff| {parity['max_abs_diff_actions']:.3g}{same}")
    episodes = cfg.eval_episodes if args.episodes is None else args.episodes
    if episodes:  # both as `rlbase eval` plays them: the config's evaluation policy
        torch_eval = evaluate_checkpoint(agent, cfg, trained.tensors, episodes=episodes, seed=args.seed,
                                         device=cpu, progress=False)
        onnx_eval = evaluate_onnx(out / MODEL_FILE, episodes=episodes, seed=args.seed, device=cpu, progress=False,
                                  save=False)
        report["eval"] = {which: {k: r[k] for k in ("policy", "seed", "num_episodes", "mean_return", "std_return",
                                                   "min_return", "max_return", "mean_length")}
                          for which, r in (("torch", torch_eval), ("onnx", onnx_eval))}
        print(f"rlbase: {plural(episodes, 'episode')} from seed {args.seed}: mean return torch "
              f"{torch_eval['mean_return']:.2f}, onnxruntime {onnx_eval['mean_return']:.2f}")
    write_report(out, report)
    print(f"rlbase: report in {out}/report.json; play it with: rlbase eval {out / MODEL_FILE}")
    return 0



@contextmanager
def removed_if_left_empty(out: Path, existed: bool) -> Iterator[None]:
    """On any failure inside, remove the output folder `out` if this command made it and left it
    empty (nothing half-made stays behind)."""
    try:
        yield
    except BaseException:
        if not existed and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise


def write_model(out: Path, data: bytes) -> None:
    """`out/model.onnx`, written atomically; a disk fault is one line."""
    from rlbase.safefiles import disk_error

    try:
        atomic_write_bytes(out / MODEL_FILE, data)
    except OSError as exc:
        raise disk_error(exc, "the ONNX model", out / MODEL_FILE) from None
