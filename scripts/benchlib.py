"""Helpers shared by the benchmark scripts: plain reference networks, run metadata, tables.

Not part of the library: scripts import it by path (`python scripts/bench_*.py` puts scripts/ first
on sys.path).
"""

from __future__ import annotations

import os
import subprocess


def round_up(steps: int, multiple: int) -> int:
    return -(-steps // multiple) * multiple


def nature_cnn(in_channels: int, num_actions: int):
    """The Nature DQN network, written plainly (default memory format)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3136, 512), nn.ReLU(),
        nn.Linear(512, num_actions),
    )


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


# --------------------------------------------------------------------------- additions for bench_pg.py
# (bench_dqn.py keeps its own copies of the env and worker helpers; these are the same logic, shared.)

WORKER_RESULT_MARKER = "BENCH_RESULT "


def nature_cnn_actor_critic(in_channels: int, num_actions: int):
    """A plain NatureCNN trunk shared by a policy head and a value head (rlbase's ActorCritic with
    `shared_backbone`, SB3's CnnPolicy): `forward(uint8 frames) -> (logits, value)`, frames scaled /255."""
    import torch
    from torch import nn

    class ActorCriticCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(
                nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
                nn.Flatten(),
                nn.Linear(3136, 512), nn.ReLU(),
            )
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


def run_worker_if_asked(args, workers: dict) -> bool:
    """In a `--worker JOB` subprocess: run that one measurement, print its result, return True."""
    import json

    keep_sb3_logs_out_of_tmp()
    if not args.worker:
        return False
    job = json.loads(args.worker)
    print(WORKER_RESULT_MARKER + json.dumps(workers[job["kind"]](job)), flush=True)
    return True


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
