"""DQN's value heads on one env: plain DQN, C51, QR-DQN, noisy nets and the rainbow preset, each trained
with the env's preset (its step count) over a few seeds, then evaluated greedily; training
steps/s of each against plain DQN measured in the same invocation.

Run from the repository root:

    python scripts/bench_qheads.py                                   # rlbase/CartPole-v1, seeds 0-2
    python scripts/bench_qheads.py --seeds 0,1,2,3,4 --json qheads.json
    python scripts/bench_qheads.py --only dqn,rainbow --env CartPole-v1
    python scripts/bench_qheads.py --steps 20000 --seeds 0,1,2,3,4   # throughput only (returns of short runs)
    python scripts/bench_qheads.py --quick                           # smoke test: numbers meaningless

Every run goes through the run lifecycle as `rlbase train dqn --env ENV [--distributional ...]
[--preset rainbow]` would (in memory: no run directory), one after another in this process on
--threads intra-op threads (default 1: the MLP is small). The clock covers `train()` (network
setup and training, not env creation); evaluation is `--episodes` greedy episodes of the eval split
with seed 10_000 + seed. Variants run interleaved seed by seed, so a change in the machine's load
touches every variant alike; the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

VARIANTS = {
    "dqn": {},
    "c51": {"distributional": "c51"},
    "qrdqn": {"distributional": "qrdqn"},
    "noisy": {"noisy": True, "exploration_initial_eps": 0.0, "exploration_final_eps": 0.0},
    "rainbow": {"preset": "rainbow"},
    "per": {"prioritized_replay": True},  # plain DQN with prioritized replay: what PER alone costs
}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_one(env_id: str, overrides: dict, seed: int, episodes: int, extra: dict) -> dict:
    import torch

    from rlbase.evaluate import evaluate_checkpoint
    from rlbase.lifecycle import execute, plan

    p = plan("dqn", {"env_id": env_id, "seed": seed, "device": "cpu", **overrides, **extra})
    try:
        start = time.perf_counter()
        metrics = execute(p, run_dir=None, progress=False)
        seconds = time.perf_counter() - start
    finally:
        p.close()
    cfg = p.config
    # The trained network as a checkpoint holds it, played by the agent's evaluation policy (what
    # `rlbase eval` does: epsilon cfg.eval_epsilon, noisy layers at their mean weights).
    tensors = {f"q.{k}": v for k, v in metrics["q_network"].state_dict().items()}
    report = evaluate_checkpoint(p.agent, cfg, tensors, episodes=episodes, seed=10_000 + seed,
                                 device=torch.device("cpu"), progress=False)
    return {"seed": seed, "steps": metrics["global_step"], "seconds": seconds,
            "steps_per_s": metrics["global_step"] / seconds, "eval_mean": report["mean_return"],
            "eval_min": report["min_return"], "updates": metrics["num_updates"], "total_timesteps": cfg.total_timesteps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="rlbase/CartPole-v1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default=",".join(VARIANTS), help=f"variants, of {','.join(VARIANTS)}")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=0, help="train this many steps instead of the preset's")
    parser.add_argument("--quick", action="store_true", help="tiny step counts (a smoke test)")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = {"total_timesteps": 1_000, "learning_starts": 200, "eval_episodes": 2} if args.quick else {}
    if args.steps:
        extra["total_timesteps"] = args.steps
    episodes = 2 if args.quick else args.episodes
    print(f"bench_qheads: {args.env}, seeds {seeds}, {args.threads} thread(s), load average {load_average()}",
          flush=True)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:
        for name in names:
            row = run_one(args.env, VARIANTS[name], seed, episodes, extra)
            rows[name].append(row)
            print(f"  {name:<8} seed {seed}: {row['steps']:,} steps in {row['seconds']:.1f} s "
                  f"({row['steps_per_s']:,.0f} steps/s), eval {row['eval_mean']:.1f} (min {row['eval_min']:.0f})",
                  flush=True)
    print(f"load average at the end: {load_average()}")
    base = statistics.median(r["steps_per_s"] for r in rows["dqn"]) if rows.get("dqn") else None
    print(f"\n{'variant':<9}{'steps':>9}{'eval mean (per seed)':>36}{'steps/s (median)':>18}{'vs dqn':>8}")
    for name, runs in rows.items():
        rate = statistics.median(r["steps_per_s"] for r in runs)
        evals = statistics.mean(r["eval_mean"] for r in runs)
        per_seed = "/".join(f"{r['eval_mean']:.0f}" for r in runs)
        ratio = f"{rate / base:.2f}x" if base else "n/a"
        print(f"{name:<9}{runs[0]['steps']:>9,}{f'{evals:.1f} ({per_seed})':>36}{rate:>18,.0f}{ratio:>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": args.env, "seeds": seeds, "threads": args.threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
