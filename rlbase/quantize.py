"""`rlbase quantize RUN`: int8 weights for a trained agent's acting path, with PyTorch's own tooling.

What is quantized, and why this way (torch 2.13, CPU):

- Linear layers: dynamic int8 quantization (`torch.ao.quantization.quantize_dynamic`): int8 weights
  (per-tensor affine), activations quantized per batch at run time, fbgemm/x86 int8 kernels. torch
  2.13 marks `torch.ao.quantization` deprecated in favour of torchao, but still ships and runs it;
  torchao 0.18 (`quantize_` with `Int8DynamicActivationInt8WeightConfig`) also runs with torch 2.13
  on CPU, but its eager tensor-subclass path measured 25x slower than fp32 at batch 1 and 2x
  slower at batch 256 on a 4-256-256-2 MLP here (fbgemm's dynamic Linear: 2.3x slower at batch 1,
  1.3x faster at batch 256), and importing it costs 2.5 s plus failed CUDA-library messages.
- Conv2d layers: static int8 quantization, eager mode: each convolution wrapped in a `QuantWrapper`
  (quantize its input, int8 convolution, dequantize its output) with the x86 qconfig (per-channel
  int8 weights, uint8 activations), calibrated on the env states the fp32 policy visits
  (`--calibration-steps` x 16 envs). Per layer rather than one graph (FX/PT2E): rlbase's backbones
  are not FX-traceable as they are (dtype branches, convolutions interleaved with FiLM).
- Everything else (embeddings, norms, torch's Transformer layers, whose fast path reads
  `linear.weight` as a tensor) stays fp32 and is listed under `fp32_layers`.

The artifact (a folder; nothing in it is a pickle):

    config.json          the source's algo and config (as a run directory's)
    model.safetensors    the acting path's fp32 tensors (biases, normalisation, ...); for each
                         quantized Linear N: N.weight.int8 (int8), N.weight.scale (float64, [1]),
                         N.weight.zero_point (int64, [1]); for each static convolution C:
                         C.weight.int8, C.weight.scales / C.weight.zero_points (per output channel),
                         C.input.scale / C.input.zero_point and C.output.scale / C.output.zero_point
    quantization.json    the scheme, the quantized and fp32 layers, the source checkpoint, and the
                         shapes of the source's tensors (to build the network's skeleton on load)
    report.json          fp32 vs int8 bytes, CPU latency at batch 1 and 256, output parity on env
                         states, and the evaluation return of both

Packed int8 modules are not safetensors-able, so `load_quantized` rebuilds them: the agent's
`acting_net` from a skeleton of the source's tensor shapes, the fp32 tensors loaded into it, the
same quantization applied, and the stored int8 weights and scales set into the quantized modules
(`quantize` checks that the rebuilt network computes exactly what it measured).
`rlbase eval ARTIFACT` plays it through `evaluate_quantized` (on the CPU). The layer-level part
(quantizing a network, its stored tensors, the rebuild) is `rlbase.quantize_layers`.

Dynamic quantization scales activations per batch, so an int8 network's output for one
observation depends slightly on the rest of the batch it is in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rlbase.compress import output_dir, tensor_bytes, write_report
from rlbase.errors import RlbaseError, UsageError
from rlbase.obs import Obs, batch_size, obs_map, take
from rlbase.quantize_layers import (
    artifact_tensors,
    build_quantized,
    fp32_layers,
    quantize_net,
)

SCHEME_FILE = "quantization.json"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "rlbase-int8-dynamic-linear"
LATENCY_BATCHES = (1, 256)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `rlbase quantize`."""
    parser.description = ("int8 quantization of a trained agent's acting path with torch.ao.quantization (x86 "
                          "kernels): Linear layers dynamic, convolutions static (calibrated on env states). "
                          "Writes a folder "
                          "with safetensors + JSON and a report (bytes, CPU latency, return of fp32 and int8) "
                          "that `rlbase eval` plays.")
    parser.add_argument("path", metavar="RUN_DIR|CHECKPOINT|ARTIFACT",
                        help="a run directory, checkpoint folder or model file; or a pretrained backbone artifact "
                             "(backbone + task head quantized, held-out accuracy reported)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="the artifact folder (default: a new folder <run>-quantize beside the run)")
    parser.add_argument("--best", action="store_true", help="quantize the run's best checkpoint instead of its newest")
    parser.add_argument("--calibration-steps", type=int, default=64, metavar="N",
                        help="env steps (over 16 envs) whose states calibrate the convolutions' activation scales and "
                             "measure parity and latency; a backbone: N x 16 training inputs (default: 64)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes to evaluate fp32 and int8 on (default: the config's eval_episodes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration and evaluation episodes")


def run(args: argparse.Namespace) -> int:
    if args.calibration_steps <= 0:
        raise UsageError(f"invalid --calibration-steps: must be positive, got {args.calibration_steps}")
    if args.episodes is not None and args.episodes <= 0:
        raise UsageError(f"invalid --episodes: must be positive, got {args.episodes}")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"invalid --seed: must be in [0, 2**32), got {args.seed}")
    from rlbase.backbone_compress import is_backbone_artifact, quantize_command

    if is_backbone_artifact(args.path):  # a pretrained backbone: backbone + task head, held-out accuracy
        return quantize_command(args)
    report = quantize(args.path, out=args.out, best=args.best, calibration_steps=args.calibration_steps,
                      episodes=args.episodes, seed=args.seed)
    fp32, int8 = report["fp32"], report["int8"]
    print(f"rlbase: int8 artifact in {report['out']}: {len(report['quantized_layers'])} Linear layers int8 (dynamic), "
          f"{len(report['static_conv_layers'])} convolutions int8 (static), "
          f"{fp32['model_bytes']:,} -> {int8['model_bytes']:,} bytes ({report['bytes_ratio']:.2f}x smaller)")
    parity = report["parity"]
    agreement = (f"greedy actions agree on {parity['action_agreement']:.1%}" if "action_agreement" in parity else
                 f"actions differ by at most {parity['max_action_diff']:.3g}")
    print(f"  return fp32 {fp32['mean_return']:.2f}, int8 {int8['mean_return']:.2f}; {agreement} of "
          f"{parity['states']:,} env states")
    for batch in LATENCY_BATCHES:
        print(f"  CPU latency batch {batch}: fp32 {fp32['latency_us'][str(batch)]:.1f} us, "
              f"int8 {int8['latency_us'][str(batch)]:.1f} us")
    print(f"  play it with: rlbase eval {report['out']}")
    return 0


# --------------------------------------------------------------------------------------------
# Reading an artifact back
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QuantizedAgent:
    """An int8 artifact read back: the agent, its config and the rebuilt int8 acting path (CPU)."""

    agent: Any
    config: Any
    net: nn.Module
    scheme: dict[str, Any]


def load_quantized(path: str | Path) -> QuantizedAgent:
    """Read an artifact of `rlbase quantize` (checked like any run file) and rebuild its int8 acting
    path on the CPU; its env is built once to learn the spaces."""
    from rlbase.config import make_env, saved_config
    from rlbase.run import read_config
    from rlbase.safefiles import load_safetensors, read_json

    path = Path(path)
    scheme_file = path / SCHEME_FILE
    scheme = read_json(scheme_file, "quantization scheme")
    if not isinstance(scheme, dict) or scheme.get("format") != FORMAT:
        raise RlbaseError(f"{scheme_file}: not an rlbase int8 artifact (format must be {FORMAT!r})")
    layers, convs, shapes = scheme.get("layers"), scheme.get("conv_layers"), scheme.get("checkpoint_tensors")
    for field, names in (("layers", layers), ("conv_layers", convs)):
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise RlbaseError(f"{scheme_file}: field {field} must be a list of module names")
    if not isinstance(shapes, dict) or not all(
            isinstance(spec, dict) and isinstance(spec.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 2**31 for n in spec["shape"])
            and spec.get("dtype") in ("float32", "float64", "int64", "int32", "uint8", "int8", "bool")
            for spec in shapes.values()):
        raise RlbaseError(f"{scheme_file}: field checkpoint_tensors must map names to {{shape, dtype}}")
    if sum(int(np.prod(spec["shape"])) for spec in shapes.values()) > 2**31:
        raise RlbaseError(f"{scheme_file}: checkpoint_tensors are implausibly large")
    algo, values = read_config(path)
    agent, cfg = saved_config(algo, values, str(path / CONFIG_FILE))
    tensors = load_safetensors(path / MODEL_FILE, "cpu")
    env = make_env(cfg, 1, torch.device("cpu"), training=False)
    try:
        obs_space, action_space = env.single_observation_space, env.single_action_space
    finally:
        env.close()
    net = build_quantized(lambda skeleton: agent.acting_net(cfg, skeleton, obs_space, action_space,
                                                            torch.device("cpu")),
                          shapes, layers, tensors, str(path / MODEL_FILE), convs)
    return QuantizedAgent(agent, cfg, net, scheme)


# --------------------------------------------------------------------------------------------
# States, latency, policies
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def collect_states(net: nn.Module, env: Any, steps: int, seed: int) -> Obs:
    """`steps` x num_envs observations the (fp32) acting path visits, concatenated on the CPU.

    The envs are reset with `seed * num_envs`: vector envs seed their copies `s, s+1, ...`, so
    with `seed` itself adjacent seeds would share all but one env, and a greedy rollout on them
    (ALE: the env is the only randomness) would calibrate on the same states."""
    obs, _ = env.reset(seed=seed * env.num_envs)
    seen = []
    for _ in range(steps):
        seen.append(obs_map(lambda x: x.cpu(), obs))
        _, actions = net(obs)
        obs, *_ = env.step(actions)
    if isinstance(seen[0], dict):
        return {key: torch.cat([o[key] for o in seen]) for key in seen[0]}
    return torch.cat(seen)


def batch_of(states: Obs, size: int) -> Obs:
    """The first `size` states (cycled when there are fewer)."""
    index = torch.arange(size) % batch_size(states)
    return take(states, index)


@torch.no_grad()
def latency_us(net: nn.Module, obs: Obs, rounds: int = 5, min_seconds: float = 0.05) -> float:
    """Microseconds per forward pass of `net` on `obs` (the fastest of `rounds` timed rounds), on one
    CPU thread: with more, OpenMP's spinning threads measure the other processes on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fastest(net, obs, rounds, min_seconds)
    finally:
        torch.set_num_threads(threads)


def _fastest(net: nn.Module, obs: Obs, rounds: int, min_seconds: float) -> float:
    for _ in range(5):
        net(obs)
    calls = 1
    while True:  # calls per round: enough for `min_seconds`
        start = time.perf_counter()
        for _ in range(calls):
            net(obs)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= 1 << 16:
            break
        calls *= 2
    best = elapsed / calls
    for _ in range(rounds - 1):
        start = time.perf_counter()
        for _ in range(calls):
            net(obs)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def acting_policy(net: nn.Module, device: torch.device, epsilon: float = 0.0, num_actions: int | None = None,
                  sample: bool = False) -> Callable[[Obs, torch.Generator], torch.Tensor]:
    """The acting path as an evaluation policy, run on the CPU, its actions moved to the env's
    `device`: the argmax / mode; epsilon-greedy with `epsilon` > 0 (value-based agents,
    `num_actions`); with `sample`, an action drawn from the softmax of its logits (categorical
    policies that evaluate stochastically, as the maze's preset does)."""
    @torch.no_grad()
    def policy(obs: Obs, generator: torch.Generator) -> torch.Tensor:
        outputs, actions = net(obs_map(lambda x: x.cpu(), obs))
        if sample:
            probs = torch.softmax(outputs.to(torch.float32), dim=-1).to(device)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        actions = actions.to(device)
        if epsilon > 0:
            explore = torch.rand(actions.shape, generator=generator, device=device) < epsilon
            random = torch.randint(num_actions, actions.shape, generator=generator, device=device)
            actions = torch.where(explore, random, actions)
        return actions

    return policy


def samples(agent: Any, net: nn.Module, deterministic: bool) -> bool:
    """Whether the int8 policy samples: a policy-gradient agent evaluating stochastically with a
    categorical policy (other policies play their mode)."""
    return agent.exploration == "sample" and not deterministic and getattr(net, "kind", None) == "categorical"


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def quantize(path: str | Path, *, out: str | None = None, best: bool = False, calibration_steps: int = 64,
             episodes: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Quantize the trained agent at `path`; write the artifact and return its report."""
    from rlbase.config import make_env
    from rlbase.evaluate import evaluate_policy, load_trained
    from rlbase.safefiles import atomic_write_text, disk_error, save_safetensors

    cpu = torch.device("cpu")
    if (Path(path) / SCHEME_FILE).is_file():
        raise UsageError(f"{path} is already an int8 artifact; rlbase quantize reads a run directory or checkpoint")
    trained = load_trained(path, cpu, best=best)
    agent, cfg = trained.agent, trained.config
    episodes = episodes or cfg.eval_episodes
    env = make_env(cfg, 16, cpu, training=False)
    try:
        obs_space, action_space = env.single_observation_space, env.single_action_space
        net = agent.acting_net(cfg, trained.tensors, obs_space, action_space, cpu)
        states = collect_states(net, env, calibration_steps, seed)
    finally:
        env.close()
    qnet, layers, convs = quantize_net(net, states)
    if not layers and not convs:
        raise RlbaseError(f"{trained.checkpoint}: the acting path has no Linear layer to quantize")
    tensors = artifact_tensors(net, qnet, layers, convs)
    fp32_tensors = {k: v for k, v in net.state_dict().items()}
    shapes = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
              for k, v in trained.tensors.items()}
    # the artifact must rebuild to the very network measured here
    rebuilt = build_quantized(lambda skeleton: agent.acting_net(cfg, skeleton, obs_space, action_space, cpu),
                              shapes, layers, tensors, "the int8 network", convs)
    with torch.no_grad():
        fp32_out, fp32_actions = net(states)
        int8_out, int8_actions = qnet(states)
        if not torch.equal(rebuilt(states)[0], int8_out):
            raise RlbaseError("the int8 network rebuilt from its tensors differs from the one quantized (a bug)")
    parity = {"states": batch_size(states), "max_abs_diff": float((fp32_out - int8_out).abs().max())}
    if fp32_actions.is_floating_point():  # Box actions: how far apart, not whether equal
        parity["max_action_diff"] = float((fp32_actions - int8_actions).abs().max())
    else:  # discrete: the share of states whose greedy action (every component) is the same
        same = (fp32_actions == int8_actions).reshape(len(fp32_actions), -1).all(dim=1)
        parity["action_agreement"] = float(same.float().mean())
    latency = {name: {str(b): latency_us(model, batch_of(states, b)) for b in LATENCY_BATCHES}
               for name, model in (("fp32", net), ("int8", qnet))}
    epsilon = cfg.eval_epsilon if agent.exploration == "epsilon" else 0.0
    num_actions = int(action_space.n) if epsilon > 0 else None
    sample = agent.exploration == "sample" and samples(agent, net, cfg.eval_deterministic)
    returns = {}
    for name, model in (("fp32", net), ("int8", qnet)):
        eval_env = make_env(cfg, min(episodes, 8), cpu, training=False)
        try:
            returns[name] = evaluate_policy(eval_env, acting_policy(model, cpu, epsilon, num_actions, sample),
                                            episodes, seed)
        finally:
            eval_env.close()

    folder = output_dir(path, trained.checkpoint, "quantize", out)
    linear_fp32 = sum(fp32_tensors[f"{name}.weight"].numel() * 4 for name in layers)
    linear_int8 = sum(tensors[f"{name}.weight.int8"].numel() for name in layers)
    scheme = {"format": FORMAT, "version": 1, "engine": torch.backends.quantized.engine,
              "scheme": "Linear: int8 weights (per-tensor affine), int8 activations quantized per batch at run time "
                        "(torch.ao.quantization.quantize_dynamic); Conv2d: static int8 (QuantWrapper, x86 qconfig: "
                        "per-channel int8 weights, uint8 activations calibrated on env states); other layers fp32",
              "layers": layers, "conv_layers": convs, "fp32_layers": fp32_layers(net, layers + convs),
              "source": str(trained.checkpoint),
              "source_step": trained.state.get("step"), "checkpoint_tensors": shapes}
    report = {"command": "quantize", "source": str(trained.checkpoint), "algo": agent.name, "env_id": cfg.env_id,
              "out": str(folder), "quantized_layers": layers, "static_conv_layers": convs,
              "fp32_layers": scheme["fp32_layers"],
              "fp32": {"model_bytes": tensor_bytes(fp32_tensors), "linear_weight_bytes": linear_fp32,
                       "latency_us": latency["fp32"], **_returns(returns["fp32"])},
              "int8": {"model_bytes": tensor_bytes(tensors), "linear_weight_bytes": linear_int8,
                       "latency_us": latency["int8"], **_returns(returns["int8"])},
              "parity": parity, "episodes": episodes, "seed": seed, "calibration_steps": calibration_steps,
              "latency_threads": 1,
              "policy": "sampled" if sample else "greedy" + (f", epsilon {epsilon}" if epsilon else "")}
    report["bytes_ratio"] = report["fp32"]["model_bytes"] / report["int8"]["model_bytes"]
    # a ratio of negative returns (Pendulum) would read backwards: none then
    report["return_ratio"] = (report["int8"]["mean_return"] / report["fp32"]["mean_return"]
                              if report["fp32"]["mean_return"] > 0 else None)
    try:
        atomic_write_text(folder / CONFIG_FILE, json.dumps({"algo": agent.name, "config": dataclasses.asdict(cfg)},
                                                           indent=2, sort_keys=True))
        save_safetensors(tensors, folder / MODEL_FILE)
        atomic_write_text(folder / SCHEME_FILE, json.dumps(scheme, indent=2))
    except OSError as exc:
        raise disk_error(exc, "the int8 artifact", folder) from None
    write_report(folder, report)
    return report


def _returns(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("mean_return", "std_return", "ci95_low", "ci95_high", "mean_length")}


def evaluate_quantized(path: str | Path, *, best: bool = False, episodes: int | None = None,
                       epsilon: float | None = None, deterministic: bool | None = None, seed: int = 0,
                       num_envs: int | None = None, video_dir: str | Path | None = None, progress: bool | None = None,
                       env_kwargs: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """`rlbase eval` of an int8 artifact: the same report as a run's, played on the CPU by the
    rebuilt int8 acting path (its mode; DQN epsilon-greedy with its eval_epsilon or `epsilon`; a
    categorical policy samples when its config or `deterministic=False` says so)."""
    from rlbase.config import make_env
    from rlbase.evaluate import evaluate_policy
    from rlbase.logger import Progress

    if best:
        raise UsageError(f"--best needs a run directory; {path} is an int8 artifact of rlbase quantize")
    loaded = load_quantized(path)
    agent, cfg = loaded.agent, loaded.config
    if agent.exploration == "sample":
        if epsilon is not None:
            raise UsageError(f"--epsilon applies to epsilon-greedy agents (dqn); {agent.name} plays its mode action")
        sample = samples(agent, loaded.net, cfg.eval_deterministic if deterministic is None else deterministic)
        if deterministic is False and not sample:
            raise UsageError(f"an int8 {loaded.net.kind} policy plays its mode action only (no --no-deterministic)")
        eps = 0.0
    else:
        if deterministic is not None:
            raise UsageError("--deterministic applies to policy-gradient agents; dqn evaluates epsilon-greedy")
        eps, sample = cfg.eval_epsilon if epsilon is None else epsilon, False
    if env_kwargs:
        cfg = dataclasses.replace(cfg, env_kwargs={**cfg.env_kwargs, **env_kwargs})
    episodes = episodes or cfg.eval_episodes
    video = Path(video_dir) if video_dir is not None else None
    if video is not None:
        video.mkdir(parents=True, exist_ok=True)
    cpu = torch.device("cpu")
    env = make_env(cfg, 1 if video else (num_envs or min(episodes, 8)), cpu, training=False, render=video is not None)
    try:
        num_actions = int(env.single_action_space.n) if eps > 0 else None
        with Progress(episodes, unit="episode", desc="eval", enabled=progress) as bar:
            report = evaluate_policy(env, acting_policy(loaded.net, cpu, eps, num_actions, sample), episodes, seed,
                                     video, bar)
    finally:
        env.close()
    policy = ("int8 stochastic" if sample else f"int8 epsilon-greedy {eps}" if eps else
              "int8 greedy" if agent.exploration == "epsilon" else "int8 deterministic")
    return {"env_id": cfg.env_id, "algo": agent.name, "epsilon": eps if agent.exploration == "epsilon" else None,
            "policy": policy, "seed": seed, "num_episodes": episodes, **report, "checkpoint": str(path),
            "global_step": loaded.scheme.get("source_step"),
            **({"env_kwargs": cfg.env_kwargs} if env_kwargs else {})}
