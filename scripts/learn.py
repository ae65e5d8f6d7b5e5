"""Learning check: train an agent with an env's preset on several seeds, evaluate each final policy.

    python scripts/learn.py --algo dqn --env CartPole-v1 --seeds 0 1 2 3 4 5 6 7 8 9
    python scripts/learn.py --algo ppo --env Pendulum-v1 --seeds 0 1 2

For each seed: train with the preset (rlbase/presets/<algo>.yaml) in-process into a temporary run
directory, then evaluate the final checkpoint exactly as `rlbase eval` does (procedural envs on
their held-out eval split), with 20 episodes on evaluation seed 1000 + seed, and print one JSON
line: mean and minimum return and the training wall-clock. `--threads` sets torch's intra-op
threads (1 lets two of these runs share a 2-core machine without slowing each other down).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from rlbase.agents import ALGORITHMS
from rlbase.evaluate import evaluate
from rlbase.lifecycle import train
from rlbase.utils import resolve_device


def train_and_evaluate(algo: str, overrides: dict, episodes: int, eval_seed: int, run_dir: Path) -> dict:
    """Train `algo` with its preset plus `overrides` into `run_dir` (the run lifecycle, as `rlbase
    train` does); evaluate the final checkpoint as `rlbase eval` does."""
    start = time.perf_counter()
    metrics = train(algo, overrides, run_dir=run_dir)
    seconds = time.perf_counter() - start
    report = evaluate(run_dir, episodes=episodes, seed=eval_seed, device=resolve_device(overrides.get("device", "auto")),
                      progress=False)
    returns = [e["return"] for e in report["episodes"]]
    return {"algo": algo, "env": report["env_id"], "seed": overrides.get("seed", 0), "train_seconds": round(seconds, 1),
            "steps": metrics["global_step"], "train_ep_rew_mean": metrics["ep_rew_mean"],
            "eval_mean": report["mean_return"], "eval_min": min(returns),
            **{f"eval_{k}": v for k, v in report["outcomes"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", choices=ALGORITHMS, default="dqn")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", default="{}", help='JSON of config overrides, e.g. \'{"n_step": 1}\'')
    parser.add_argument("--keep", metavar="DIR", default=None, help="keep the run directories under DIR")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep is not None:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{args.algo}-", dir=args.keep))
    try:
        for seed in args.seeds:
            overrides = {"env_id": args.env, "seed": seed, "log_dir": str(root), **json.loads(args.set)}
            result = train_and_evaluate(args.algo, overrides, args.episodes, 1000 + seed, root / f"seed{seed}")
            print(json.dumps(result), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
