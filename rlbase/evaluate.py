"""`rlbase eval`: rebuild an agent from a run directory or checkpoint and play full episodes."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np
import torch

from rlbase.checkpoint import BEST, CHECKPOINTS, check_state, find_checkpoint, load_checkpoint
from rlbase.config import saved_config, saved_values
from rlbase.errors import RlbaseError, RlbaseWarning, UsageError
from rlbase.safefiles import atomic_write_text, disk_error, read_json
from rlbase.run import CONFIG_FILE, read_config

if TYPE_CHECKING:
    from rlbase.agents import Agent
    from rlbase.envs import TensorVecEnv


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| < t) = `confidence` for Student's t with `df` (a positive integer) degrees
    of freedom: 2.776 for a 95% interval with 4.

    SciPy's `stats.t.ppf` is not a dependency of `rlbase eval`; for integer degrees of freedom the
    two-sided probability has a closed form in theta = atan(t / sqrt(df)) (Abramowitz & Stegun
    26.7.3-4), increasing in theta, so bisecting it gives the quantile to float precision.
    """
    if df < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"t_quantile needs df >= 1 and a confidence in (0, 1), got {df}, {confidence}")
    # The series has df // 2 terms in cos^2; k numbers the ones after the first.
    k = np.arange(1, df // 2, dtype=np.float64)
    powers = 2 * np.arange(df // 2)
    if df % 2:  # odd: 2/pi (theta + sin (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...)); theta alone for df 1
        coefficients = np.concatenate([[1.0], np.cumprod(2 * k / (2 * k + 1))]) if df > 1 else np.zeros(0)

        def two_sided(theta: float) -> float:
            return 2 / math.pi * (theta + math.sin(theta) * np.sum(coefficients * np.cos(theta) ** (powers + 1)))
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        coefficients = np.concatenate([[1.0], np.cumprod((2 * k - 1) / (2 * k))])

        def two_sided(theta: float) -> float:
            return math.sin(theta) * np.sum(coefficients * np.cos(theta) ** powers)
    low, high = 0.0, math.pi / 2
    for _ in range(64):
        mid = (low + high) / 2
        low, high = (mid, high) if two_sided(mid) < confidence else (low, mid)
    return math.sqrt(df) * math.tan((low + high) / 2)


def summarize(returns: list[float], lengths: list[int]) -> dict[str, Any]:
    """Mean, sample std, min, max and a t-based 95% confidence interval of the mean return."""
    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    std = float(r.std(ddof=1)) if n > 1 else 0.0
    half = t_quantile(0.95, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    mean = float(r.mean())
    return {"mean_return": mean, "std_return": std, "min_return": float(r.min()), "max_return": float(r.max()),
            "ci95_low": mean - half, "ci95_high": mean + half, "mean_length": float(np.mean(lengths)),
            "episodes": [{"return": float(ret), "length": int(le)} for ret, le in zip(returns, lengths)]}


def play_episodes(env: TensorVecEnv, policy: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                  episodes: int, seed: int, video_dir: Path | None = None,
                  outcomes: dict[str, list[float]] | None = None, progress: Any = None) -> tuple[list[float], list[int]]:
    """Play exactly `episodes` full episodes, split evenly over the envs (so short episodes are not
    over-represented), and return their real returns and lengths in completion order.

    With `outcomes`, the env's outcome values (`env.outcome_keys`: the maze's `success`, the driving
    task's `laps`, ...) at each episode's last step are appended to `outcomes[key]`, in the same
    order. `progress` (an rlbase.logger.Progress) is advanced by one per finished episode.
    """
    quota = np.array([episodes // env.num_envs + (i < episodes % env.num_envs) for i in range(env.num_envs)])
    done_count = np.zeros(env.num_envs, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    generator = torch.Generator(device=env.device)
    generator.manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    frames: list[np.ndarray] = [env.render()[0]] if video_dir is not None else []
    while (done_count < quota).any():
        actions = policy(obs, generator)
        obs, _, terminated, truncated, info = env.step(actions)
        if video_dir is not None:
            frames.append(env.render()[0])
        ended = (terminated | truncated).cpu().numpy()
        if not ended.any():
            continue
        ep_returns = info["episode_return"].cpu().numpy()
        ep_lengths = info["episode_length"].cpu().numpy()
        extra = {} if outcomes is None else {key: info[key].cpu().numpy() for key in env.outcome_keys if key in info}
        finished = 0
        for i in np.flatnonzero(ended):
            if done_count[i] < quota[i]:
                returns.append(float(ep_returns[i]))
                lengths.append(int(ep_lengths[i]))
                finished += 1
                for key, values in extra.items():
                    outcomes.setdefault(key, []).append(float(values[i]))
                if video_dir is not None and i == 0:
                    write_video(video_dir / f"episode_{int(done_count[0]):03d}.mp4", frames[:-1], env.render_fps)
                    frames = frames[-1:]
            done_count[i] += 1
        if progress is not None and finished:
            progress.update(finished)
    return returns, lengths


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise RlbaseError("--video needs imageio and imageio-ffmpeg: pip install 'rlbase[video]'") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
    tmp.replace(path)


def resolve_target(path: str | Path, kind: str = CHECKPOINTS) -> tuple[str, dict[str, Any], Path]:
    """(algo, config values, checkpoint folder) of a run directory (its newest checkpoint of `kind`),
    checkpoint folder or model file."""
    path = Path(path)
    if not path.exists():
        raise RlbaseError(f"{path} does not exist")
    if kind == BEST and not (path / CONFIG_FILE).exists():
        raise UsageError(f"--best needs a run directory; {path} is not one")
    checkpoint = find_checkpoint(path, kind)
    if path.is_dir() and (path / CONFIG_FILE).exists():
        algo, values = read_config(path)
        return algo, values, checkpoint
    state_file = checkpoint / "state.json"
    if not state_file.exists():
        raise RlbaseError(f"{checkpoint} has no state.json: cannot tell which agent it holds")
    state = read_json(state_file, "checkpoint state")
    check_state(state, state_file)
    if not isinstance(state.get("algo"), str) or not isinstance(state.get("config"), dict):
        raise RlbaseError(f"checkpoint state {state_file}: fields algo and config are required")
    return state["algo"], saved_values(state["config"]), checkpoint


@torch.no_grad()
def evaluate_policy(env: TensorVecEnv, policy: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                    episodes: int, seed: int, video_dir: Path | None = None, progress: Any = None) -> dict[str, Any]:
    """Play `episodes` episodes of `policy` on `env` from evaluation seed `seed`: the return
    statistics (`summarize`), the mean of each outcome the env reports at episode ends, and every
    episode's return, length and outcomes."""
    outcomes: dict[str, list[float]] = {}
    returns, lengths = play_episodes(env, policy, episodes, seed, video_dir, outcomes, progress)
    report = summarize(returns, lengths)
    report["outcomes"] = {key: float(np.mean(values)) for key, values in outcomes.items()}
    for key, values in outcomes.items():
        for episode, value in zip(report["episodes"], values):
            episode[key] = value
    return report


def evaluation_config(agent: Agent, cfg: Any, deterministic: bool | None = None, epsilon: float | None = None) -> Any:
    """`cfg` with the evaluation policy's overrides (--deterministic for policy-gradient agents,
    --epsilon for DQN); a UsageError for one that does not apply to the agent."""
    if agent.exploration == "sample":
        if epsilon is not None:
            raise UsageError(f"--epsilon applies to epsilon-greedy agents (dqn); {agent.name} evaluates with "
                             "--deterministic or --no-deterministic")
        return cfg if deterministic is None else dataclasses.replace(cfg, eval_deterministic=deterministic)
    if deterministic is not None:
        raise UsageError(f"--deterministic applies to policy-gradient agents; {agent.name} evaluates "
                         "epsilon-greedy (--epsilon)")
    return cfg if epsilon is None else dataclasses.replace(cfg, eval_epsilon=epsilon)


def evaluate_checkpoint(agent: Agent, cfg: Any, tensors: dict[str, torch.Tensor], *, episodes: int | None = None,
                        seed: int = 0, device: torch.device, num_envs: int | None = None,
                        video_dir: str | Path | None = None, env: TensorVecEnv | None = None,
                        progress: bool | None = None) -> dict[str, Any]:
    """Play a checkpoint's policy (as `cfg` says: evaluation overrides already applied) on the eval
    split: the report of `rlbase eval`. `env` replaces the eval envs built from the config."""
    from rlbase.config import make_env
    from rlbase.logger import Progress

    episodes = episodes or cfg.eval_episodes
    video = Path(video_dir) if video_dir is not None else None
    own_env = env is None
    if own_env:
        num_envs = 1 if video is not None else (num_envs or min(episodes, 8))
        env = make_env(cfg, num_envs, device, training=False, render=video is not None)
    try:
        try:
            policy = agent.load_policy(cfg, tensors, env.single_observation_space, env.single_action_space, env.device)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise RlbaseError(f"the checkpoint does not match its config ({str(exc).splitlines()[0]})") from None
        with Progress(episodes, unit="episode", desc="eval", enabled=progress) as bar:
            report = evaluate_policy(env, policy, episodes, seed, video, bar)
    finally:
        if own_env:
            env.close()
    return {"env_id": cfg.env_id, "algo": agent.name, "epsilon": cfg.eval_epsilon if agent.exploration == "epsilon"
            else None, "policy": agent.describe_policy(cfg), "seed": seed, "num_episodes": episodes, **report}


class Trained(NamedTuple):
    """A trained agent read back from disk, checked: what `rlbase eval` plays and what the
    compression commands start from."""

    agent: Agent
    config: Any
    """Its config (validated; evaluation overrides not applied)."""
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    checkpoint: Path
    """The checkpoint folder read."""


def load_trained(path: str | Path, device: torch.device | str = "cpu", *, best: bool = False) -> Trained:
    """The agent at `path` (a run directory: its newest complete checkpoint, or with `best` its best
    evaluated one; a checkpoint folder; a model.safetensors file), its config checked like user
    input (a hand-edited value is one line naming the file) and its tensors loaded on `device`."""
    algo, values, checkpoint = resolve_target(path, BEST if best else CHECKPOINTS)
    agent, cfg = saved_config(algo, values, f"{checkpoint} config")
    tensors, state, _ = load_checkpoint(checkpoint, device)
    return Trained(agent, cfg, tensors, state, checkpoint)


def evaluate(path: str | Path, *, best: bool = False, episodes: int | None = None, epsilon: float | None = None,
             deterministic: bool | None = None, seed: int = 0, device: torch.device, num_envs: int | None = None,
             video_dir: str | Path | None = None, progress: bool | None = None,
             env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint at `path` (a run directory: its newest checkpoint, or with `best` the
    best evaluated one); returns the report, also saved in the run as eval_<checkpoint>.json.
    `env_kwargs` override the run's env keyword arguments for the eval envs (e.g. MazeGoTo's
    `eval_targets`, to choose which held-out split is played); the report records them. An ONNX
    export (a .onnx file or its folder) plays through onnxruntime (rlbase.deploy.evaluate_onnx). A
    pretrained backbone artifact (or its export) is measured on its held-out split instead: a report
    of kind "backbone" (rlbase.backbone_compress)."""
    from rlbase.deploy import evaluate_onnx, onnx_model_path

    if onnx_model_path(path) is not None:
        return evaluate_onnx(path, best=best, episodes=episodes, epsilon=epsilon, deterministic=deterministic,
                             seed=seed, device=device, num_envs=num_envs, video_dir=video_dir, progress=progress,
                             env_kwargs=env_kwargs)
    from rlbase.backbone_compress import is_backbone_artifact

    if is_backbone_artifact(path):  # a pretrained backbone: its held-out metrics, no episodes
        from rlbase.backbone_compress import evaluate_backbone, refuse_flags

        refuse_flags("eval", {"--best": best, "--episodes": episodes is not None, "--epsilon": epsilon is not None,
                              "--deterministic": deterministic is not None, "--num-envs": num_envs is not None,
                              "--video": video_dir is not None, "--env-kwargs": bool(env_kwargs)})
        return evaluate_backbone(path, device)
    if (Path(path) / "quantization.json").is_file():  # an int8 artifact of `rlbase quantize`: played on the CPU
        from rlbase.quantize import evaluate_quantized

        return evaluate_quantized(path, best=best, episodes=episodes, epsilon=epsilon, deterministic=deterministic,
                                  seed=seed, num_envs=num_envs, video_dir=video_dir, progress=progress,
                                  env_kwargs=env_kwargs)
    trained = load_trained(path, device, best=best)
    agent, checkpoint, tensors, state = trained.agent, trained.checkpoint, trained.tensors, trained.state
    cfg = evaluation_config(agent, trained.config, deterministic, epsilon)
    if video_dir is not None:
        video = Path(video_dir)
        if video.exists() and not video.is_dir():
            raise UsageError(f"--video expects a folder for the videos; {video} is a file")
        try:
            video.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, "videos into", video) from None
    if env_kwargs:
        cfg = dataclasses.replace(cfg, env_kwargs={**cfg.env_kwargs, **env_kwargs})
    try:
        report = evaluate_checkpoint(agent, cfg, tensors, episodes=episodes, seed=seed, device=device,
                                     num_envs=num_envs, video_dir=video_dir, progress=progress)
    except RlbaseError as exc:  # keep its kind (a usage error stays exit code 2)
        raise type(exc)(f"{checkpoint}: {exc}") from None
    report = {**report, "checkpoint": str(checkpoint), "global_step": state.get("step"),
              **({"env_kwargs": cfg.env_kwargs} if env_kwargs else {})}
    run_dir = checkpoint.parent.parent
    if (run_dir / CONFIG_FILE).exists():
        name = f"eval_{checkpoint.parent.name}_{checkpoint.name}.json" if best else f"eval_{checkpoint.name}.json"
        if env_kwargs:  # another env than the run's: its own report file
            name = name.replace(".json", "_" + "_".join(f"{k}-{v}" for k, v in sorted(env_kwargs.items())) + ".json")
        try:
            atomic_write_text(run_dir / name, json.dumps(report, indent=2))
        except OSError as exc:  # a read-only or full disk: the result is still printed
            warnings.warn(f"{disk_error(exc, 'the evaluation report', run_dir / name)}", RlbaseWarning, stacklevel=2)
    return report
