"""Helpers shared by the benchmark scripts: the env and config set-up of both libraries (rlbase,
Stable-Baselines3, Gymnasium, ale-py), plain reference networks, timing, one measurement per worker
subprocess, run metadata, tables.

Not part of the library: scripts import it by path (`python scripts/bench_*.py` puts scripts/ first
on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable

CARTPOLE = "CartPole-v1"
BREAKOUT = "ALE/Breakout-v5"
FAMILIES = {"cartpole": CARTPOLE, "atari": BREAKOUT}
CEILING_WINDOWS = 5  # a compute ceiling is the fastest of this many timing windows


def round_up(steps: int, multiple: int) -> int:
    return -(-steps // multiple) * multiple


def nature_trunk(in_channels: int) -> list:
    """The Nature DQN network's layers up to its 512 features, written plainly (84x84 frames)."""
    from torch import nn

    return [
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3136, 512), nn.ReLU(),
    ]


def nature_cnn(in_channels: int, num_actions: int):
    """The Nature DQN network, written plainly (default memory format)."""
    from torch import nn

    return nn.Sequential(*nature_trunk(in_channels), nn.Linear(512, num_actions))


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], num_actions: int):
    from torch import nn

    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, num_actions))


def git_revision() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths)))
    print()


WORKER_RESULT_MARKER = "BENCH_RESULT "


def nature_cnn_actor_critic(in_channels: int, num_actions: int):
    """A plain NatureCNN trunk shared by a policy head and a value head (rlbase's ActorCritic with
    `shared_backbone`, SB3's CnnPolicy): `forward(uint8 frames) -> (logits, value)`, frames scaled /255."""
    import torch
    from torch import nn

    class ActorCriticCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(*nature_trunk(in_channels))
            self.policy = nn.Linear(512, num_actions)
            self.value = nn.Linear(512, 1)
            self.channels_last = False

        def forward(self, frames):
            x = frames.to(torch.float32) * (1.0 / 255.0)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = self.trunk(x)
            return self.policy(features), self.value(features).squeeze(-1)

    return ActorCriticCNN()


def register_ale() -> None:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)


def sb3_vec_env(cfg, n_envs: int, seed: int | None = None):
    """SB3's own env stack (DummyVecEnv) for `cfg.env_id`, with rlbase's Atari settings from `cfg`.

    Atari: `make_atari_env` + `VecFrameStack`, with `frameskip=1` passed to the v5 env because the v5
    ids skip 4 frames themselves and SB3's AtariWrapper skips 4 more; the v5 env keeps its sticky
    actions (repeat_action_probability, applied per emulator frame inside ALE, as in ale-py's vector
    env), and AtariWrapper's own agent-level sticky actions stay off.
    """
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    seed = cfg.seed if seed is None else seed
    if not cfg.env_id.startswith("ALE/"):
        return make_vec_env(cfg.env_id, n_envs=n_envs, seed=seed)
    register_ale()
    env = make_atari_env(
        cfg.env_id, n_envs=n_envs, seed=seed,
        env_kwargs={"frameskip": 1, "repeat_action_probability": cfg.sticky_actions,
                    "max_num_frames_per_episode": cfg.atari_max_episode_steps * 4},
        wrapper_kwargs={"noop_max": cfg.noop_max, "frame_skip": 4, "screen_size": 84,
                        "terminal_on_life_loss": cfg.terminal_on_life_loss, "clip_reward": cfg.clip_rewards},
    )
    return VecFrameStack(env, n_stack=cfg.frame_stack)


def gymnasium_vec_env(cfg, n_envs: int):
    """Gymnasium's own SyncVectorEnv for `cfg.env_id`. Atari: its AtariPreprocessing +
    FrameStackObservation with rlbase's settings from `cfg` (frameskip=1 for the v5 id:
    AtariPreprocessing skips the 4 frames)."""
    import gymnasium as gym

    if not cfg.env_id.startswith("ALE/"):
        return gym.make_vec(cfg.env_id, num_envs=n_envs, vectorization_mode="sync")
    register_ale()

    def make_one():
        env = gym.make(cfg.env_id, frameskip=1, repeat_action_probability=cfg.sticky_actions,
                       max_num_frames_per_episode=cfg.atari_max_episode_steps * 4)
        env = gym.wrappers.AtariPreprocessing(env, noop_max=cfg.noop_max, frame_skip=4, screen_size=84,
                                              terminal_on_life_loss=False, grayscale_obs=True)
        return gym.wrappers.FrameStackObservation(env, cfg.frame_stack)

    return gym.vector.SyncVectorEnv([make_one for _ in range(n_envs)])


def ale_vec_env(cfg, n_envs: int):
    """ale-py's C++ vector env, the one rlbase wraps, with rlbase's Atari settings from `cfg`."""
    import gymnasium as gym
    from ale_py.vector_env import AtariVectorEnv

    register_ale()
    return AtariVectorEnv(gym.spec(cfg.env_id).kwargs["game"], n_envs, autoreset_mode="SameStep",
                          repeat_action_probability=cfg.sticky_actions, frameskip=4, stack_num=cfg.frame_stack,
                          noop_max=cfg.noop_max, use_fire_reset=True, reward_clipping=False,
                          max_num_frames_per_episode=cfg.atari_max_episode_steps * 4)


def rlbase_vec_env(cfg, training: bool = True, num_envs: int | None = None):
    """rlbase's env for `cfg` on the CPU (`cfg.num_envs` copies unless `num_envs` says otherwise)."""
    import torch
    from rlbase.config import env_options
    from rlbase.envs import make_vec_env

    return make_vec_env(cfg.env_id, num_envs or cfg.num_envs, torch.device("cpu"), **env_options(cfg, training))


def rlbase_training_threads(cfg, env) -> int:
    """The intra-op thread count rlbase's training loop will use (its auto rule, or --torch-threads)."""
    from rlbase.backbones import check_backbone
    from rlbase.config import training_threads

    return training_threads(cfg, check_backbone(cfg.backbone, env.single_observation_space), "cpu")


def linear_schedule(initial: float):
    """SB3 schedule: progress_remaining goes from 1 to 0 over training."""
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial
    return schedule


def preset_config(algo: str, env_id: str, overrides: dict[str, Any]):
    """rlbase's preset config of `algo` for `env_id` on the CPU with seed 0, then `overrides`."""
    from rlbase.agents import get_agent
    from rlbase.config import resolve_config

    return resolve_config(get_agent(algo).Config, algo, {"env_id": env_id, "device": "cpu", "seed": 0, **overrides})


def config_from_dict(algo: str, values: dict[str, Any]):
    """The config of `algo` a job carries as a dict (jobs are JSON, for the worker subprocesses)."""
    from rlbase.agents import get_agent
    from rlbase.config import from_dict

    return from_dict(get_agent(algo).Config, values, "benchmark config")


def set_threads(job: dict[str, Any]) -> int:
    import torch

    torch.set_num_threads(job["threads"])
    return torch.get_num_threads()


def fastest_rate(fn: Callable[[int], None], samples_per_call: int, seconds: float) -> tuple[float, float, int, float]:
    """(best samples/s, mean samples/s, calls, timed seconds) of `fn(i)` over CEILING_WINDOWS windows.

    A ceiling is the best the hardware does: the fastest window is kept, so a burst of load from
    other processes during one window does not lower it. Five untimed calls warm up first.
    """
    for i in range(5):
        fn(i)
    rates, calls, total = [], 0, 0.0
    for _ in range(CEILING_WINDOWS):
        n, start = 0, time.perf_counter()
        while True:
            fn(calls + n)
            n += 1
            wall = time.perf_counter() - start
            if wall >= seconds / CEILING_WINDOWS and n >= 2:
                break
        rates.append(n * samples_per_call / wall)
        calls, total = calls + n, total + wall
    return max(rates), calls * samples_per_call / total, calls, total


def run_worker_subprocess(script: str, job: dict) -> dict:
    """Run `python script --worker JOB_JSON` and return the dict it printed after WORKER_RESULT_MARKER."""
    import json
    import sys

    proc = subprocess.run([sys.executable, os.path.abspath(script), "--worker", json.dumps(job)],
                          capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(WORKER_RESULT_MARKER):
            return json.loads(line[len(WORKER_RESULT_MARKER):])
    sys.stderr.write(proc.stdout + proc.stderr)
    raise RuntimeError(f"benchmark job failed (exit {proc.returncode}): {job.get('kind')} {job.get('label', '')}")


def add_common_arguments(parser) -> None:
    """The flags every benchmark script shares: --quick, --threads, --in-process, --json, --worker."""
    import argparse

    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny budgets (numbers meaningless)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads for every run, both libraries (default: os.cpu_count())")
    parser.add_argument("--in-process", action="store_true", help="run every measurement in this process")
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON to PATH")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def keep_sb3_logs_out_of_tmp() -> None:
    """SB3 makes an empty log directory in the system temp dir at every `learn()` unless
    $SB3_LOGDIR names one: point it at a private temp dir, removed when this process exits.
    Worker subprocesses inherit the variable, so one directory serves a whole invocation."""
    import atexit
    import shutil
    import tempfile

    if "SB3_LOGDIR" in os.environ:
        return
    path = tempfile.mkdtemp(prefix="rlbase-bench-sb3-")
    os.environ["SB3_LOGDIR"] = path
    atexit.register(shutil.rmtree, path, True)


def parse_arguments(parser, argv: list[str] | None, workers: dict):
    """Add the common flags and parse `argv`. In a `--worker JOB` subprocess: run that one
    measurement, print its result and exit."""
    import sys

    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if run_worker_if_asked(args, workers):
        sys.exit(0)
    return args


def run_worker_if_asked(args, workers: dict) -> bool:
    """In a `--worker JOB` subprocess: run that one measurement, print its result, return True."""
    import json

    keep_sb3_logs_out_of_tmp()
    if not args.worker:
        return False
    job = json.loads(args.worker)
    print(WORKER_RESULT_MARKER + json.dumps(workers[job["kind"]](job)), flush=True)
    return True


def start_invocation(script: str, argv: list[str] | None, args, **extra: Any) -> dict[str, Any]:
    """Print the command, versions, CPUs and load; return them as the JSON file's `meta` (plus `extra`)."""
    import platform
    import shlex
    import sys

    import ale_py
    import gymnasium
    import stable_baselines3
    import torch

    command = "python " + shlex.join([os.path.relpath(script)] + (sys.argv[1:] if argv is None else argv))
    meta = {"command": command, "torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__,
            "gymnasium": gymnasium.__version__, "ale_py": ale_py.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": args.threads, "rlbase_revision": git_revision(),
            "platform": platform.platform(), "load_average_start": load_average(), "quick": args.quick, **extra}
    print(f"command: {command}")
    print(f"torch {meta['torch']}, stable-baselines3 {meta['stable_baselines3']}, gymnasium {meta['gymnasium']}, "
          f"ale-py {meta['ale_py']}, python {meta['python']}, rlbase {meta['rlbase_revision']}")
    print(f"CPUs: {meta['cpu_count']} (torch.set_num_threads({args.threads}) in every run); "
          f"load average at start: {meta['load_average_start']}")
    if args.quick:
        print("QUICK MODE: tiny runs for a smoke test; the numbers below are not a benchmark.")
    print()
    return meta


def run_jobs(jobs: list[dict[str, Any]], title: Callable[[dict[str, Any]], str], script: str, workers: dict,
             in_process: bool, meta: dict[str, Any],
             on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every job, one after the other (each in a fresh `script --worker` subprocess unless
    `in_process`), printing `title(job)` and its wall time; each result is the job plus what it
    measured, also handed to `on_result` as soon as it is known."""
    results: list[dict[str, Any]] = []
    for i, job in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {title(job)} ...", end=" ", flush=True)
        res = workers[job["kind"]](job) if in_process else run_worker_subprocess(script, job)
        print(f"{res['wall_s']:.1f} s", flush=True)
        results.append({**job, **res})
        if on_result is not None:
            on_result(results[-1])
    meta["load_average_end"] = load_average()
    print(f"load average at end: {meta['load_average_end']}\n")
    return results


def write_json(path: str, meta: dict[str, Any], notes: list[str], configs: dict[str, Any],
               results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import json

    with open(path, "w") as fh:
        runs = [{k: v for k, v in r.items() if k != "config"} for r in results]  # configs are listed once
        json.dump({"meta": meta, "notes": notes, "configs": configs, "results": runs, "summary": summary}, fh,
                  indent=2, default=str)
    print(f"\nwrote {path}")


def timed_command(command: list[str], cwd) -> tuple[float, str]:
    """(wall-clock seconds, stdout) of `command` run in `cwd` with one OpenMP thread; exits on failure."""
    import sys
    import time

    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def rlbase_command() -> list[str]:
    """The console script next to this Python, else `python -m rlbase`."""
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "rlbase"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rlbase"]
