"""`rlbase eval`: rebuild an agent from a run directory or checkpoint and play full episodes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rlbase.checkpoint import atomic_write_text, find_checkpoint, load_checkpoint
from rlbase.config import env_options, from_dict
from rlbase.envs import TensorVecEnv, make_vec_env
from rlbase.errors import RlbaseError
from rlbase.run import CONFIG_FILE, read_config

# Two-sided 95% Student t quantiles for 1..30 degrees of freedom; 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def summarize(returns: list[float], lengths: list[int]) -> dict[str, Any]:
    """Mean, sample std, min, max and a t-based 95% confidence interval of the mean return."""
    r = np.asarray(returns, dtype=np.float64)
    n = len(r)
    std = float(r.std(ddof=1)) if n > 1 else 0.0
    half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * std / math.sqrt(n) if n > 1 else 0.0
    mean = float(r.mean())
    return {"mean_return": mean, "std_return": std, "min_return": float(r.min()), "max_return": float(r.max()),
            "ci95_low": mean - half, "ci95_high": mean + half, "mean_length": float(np.mean(lengths)),
            "episodes": [{"return": float(ret), "length": int(le)} for ret, le in zip(returns, lengths)]}


EPISODE_KEYS = ("final_obs", "episode_return", "episode_length")


def play_episodes(env: TensorVecEnv, policy: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                  episodes: int, seed: int, video_dir: Path | None = None,
                  outcomes: dict[str, list[float]] | None = None) -> tuple[list[float], list[int]]:
    """Play exactly `episodes` full episodes, split evenly over the envs (so short episodes are not
    over-represented), and return their real returns and lengths in completion order.

    With `outcomes`, the env's other per-env `info` values at each episode's last step (the maze's
    `success`, the driving task's `laps`, ...) are appended to `outcomes[key]`, in the same order.
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
        extra = {} if outcomes is None else {
            k: v.cpu().numpy() for k, v in info.items()
            if k not in EPISODE_KEYS and torch.is_tensor(v) and v.shape == (env.num_envs,)}
        for i in np.flatnonzero(ended):
            if done_count[i] < quota[i]:
                returns.append(float(ep_returns[i]))
                lengths.append(int(ep_lengths[i]))
                for key, values in extra.items():
                    outcomes.setdefault(key, []).append(float(values[i]))
                if video_dir is not None and i == 0:
                    write_video(video_dir / f"episode_{int(done_count[0]):03d}.mp4", frames[:-1])
                    frames = frames[-1:]
            done_count[i] += 1
    return returns, lengths


def write_video(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise RlbaseError("--video needs imageio and imageio-ffmpeg: pip install 'rlbase[video]'") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
    tmp.replace(path)


def resolve_target(path: str | Path) -> tuple[str, dict[str, Any], Path]:
    """(algo, config values, checkpoint folder) of a run directory, checkpoint folder or model file."""
    path = Path(path)
    if not path.exists():
        raise RlbaseError(f"{path} does not exist")
    checkpoint = find_checkpoint(path)
    if path.is_dir() and (path / CONFIG_FILE).exists():
        algo, values = read_config(path)
        return algo, values, checkpoint
    state_file = checkpoint / "state.json"
    try:
        state = json.loads(state_file.read_text())
        return state["algo"], state["config"], checkpoint
    except FileNotFoundError:
        raise RlbaseError(f"{checkpoint} has no state.json: cannot tell which agent it holds") from None
    except (ValueError, KeyError, TypeError):
        raise RlbaseError(f"{state_file} is corrupt") from None


def evaluate(path: str | Path, *, episodes: int | None = None, epsilon: float | None = None,
             deterministic: bool | None = None, seed: int = 0,
             device: torch.device, num_envs: int | None = None, video_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint at `path`; returns the summary (also saved as an eval report in the run)."""
    from rlbase.agents import get_algorithm

    algo, values, checkpoint = resolve_target(path)
    module = get_algorithm(algo)
    cfg = from_dict(module.Config, values, f"{checkpoint} config")
    tensors, state, _ = load_checkpoint(checkpoint, device)
    episodes = episodes or cfg.eval_episodes
    if hasattr(cfg, "eval_deterministic"):  # policy-gradient agents: mode/mean or sampled actions
        if deterministic is not None:
            cfg = dataclasses.replace(cfg, eval_deterministic=deterministic)
        epsilon = None
        policy_kind = "deterministic" if cfg.eval_deterministic else "stochastic"
    else:
        epsilon = cfg.eval_epsilon if epsilon is None else epsilon
        policy_kind = f"epsilon-greedy {epsilon}"
    video = Path(video_dir) if video_dir is not None else None
    num_envs = 1 if video is not None else (num_envs or min(episodes, 8))
    env = make_vec_env(cfg.env_id, num_envs, device, render=video is not None, **env_options(cfg, training=False))
    try:
        try:
            policy = module.load_policy(cfg, tensors, env, epsilon)
        except (RuntimeError, KeyError) as exc:
            raise RlbaseError(f"{checkpoint} does not match its config ({str(exc).splitlines()[0]})") from None
        outcomes: dict[str, list[float]] = {}
        with torch.no_grad():
            returns, lengths = play_episodes(env, policy, episodes, seed, video, outcomes)
    finally:
        env.close()
    report = {"env_id": cfg.env_id, "algo": algo, "checkpoint": str(checkpoint), "global_step": state.get("step"),
              "epsilon": epsilon, "policy": policy_kind, "seed": seed, "num_episodes": episodes,
              **summarize(returns, lengths)}
    # Task outcomes the env reports at episode ends (maze: success; driving: laps), as means.
    report["outcomes"] = {key: float(np.mean(values)) for key, values in outcomes.items()}
    for key, values in outcomes.items():
        for episode, value in zip(report["episodes"], values):
            episode[key] = value
    run_dir = checkpoint.parent.parent
    if (run_dir / CONFIG_FILE).exists():
        atomic_write_text(run_dir / f"eval_{checkpoint.name}.json", json.dumps(report, indent=2))
    return report
