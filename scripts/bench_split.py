"""What `--split-envs` buys: training steps/s of the on-policy agents on Breakout with the envs
stepped as two alternating halves (EnvPool's async mode) against one batch, in the same run.

    python scripts/bench_split.py                          # PPO and PQN presets, CPU, 3 rounds
    python scripts/bench_split.py --device cuda --num-envs 8 64

Each round trains every (algo, num_envs) once unsplit and once split, interleaved, with the preset
otherwise. A run's rate is env steps per second between its first and last log points (one per
rollout), so start-up, the first rollout and the final checkpoint are left out. The ratio is
split / unsplit per round; the table gives the median over rounds and, where the stages are timed
(the CPU by default), the env-wait share (time/env) of the last round. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def rate_and_shares(run_dir: Path) -> tuple[float, dict[str, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if len(records) < 2:
        raise SystemExit(f"{run_dir}: fewer than 2 log points; raise --rollouts")
    first, last = records[0], records[-1]
    rate = (last["global_step"] - first["global_step"]) / (last["time"] - first["time"])
    shares = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("time/") and k != "time/fps"}
    return rate, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["ppo", "pqn"], choices=["ppo", "pqn", "a2c"])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[8], help="env batch sizes to measure")
    parser.add_argument("--rollouts", type=int, default=6, help="rollouts per run (the first is not timed; at least 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median ratio is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: rlbase's default)")
    parser.add_argument("--time-stages", default="auto", choices=["auto", "on", "off"],
                        help="the runs' stage timings (auto: on the CPU only; on CUDA they sync at every mark)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from rlbase.config import resolve_config
    from rlbase.agents import get_agent
    from rlbase.lifecycle import train

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for algo in args.algos:
                for num_envs in args.num_envs:
                    preset = resolve_config(get_agent(algo).Config, algo, {"env_id": "ALE/Breakout-v5"})
                    batch = preset.num_steps * num_envs
                    for split in (False, True):
                        name = f"{algo}-{num_envs}-{'split' if split else 'one'}-{round_}"
                        values = {"env_id": "ALE/Breakout-v5", "num_envs": num_envs, "split_envs": split,
                                  "total_timesteps": batch * args.rollouts, "log_interval": batch, "seed": round_,
                                  "device": args.device, "time_stages": args.time_stages, "log_dir": tmp, "run_name": name,
                                  "checkpoint_interval": 10**12}
                        if args.threads:
                            values["torch_threads"] = args.threads
                        train(algo, values, progress=False)
                        rate, shares = rate_and_shares(Path(tmp) / name)
                        entry = results.setdefault(f"{algo} x{num_envs}", {"one": [], "split": []})
                        entry["split" if split else "one"].append(rate)
                        entry[f"shares_{'split' if split else 'one'}"] = shares
                        print(f"round {round_}: {algo} {num_envs} envs {'split' if split else 'unsplit'}: "
                              f"{rate:,.0f} steps/s  " + " ".join(f"{k} {v:.2f}" for k, v in sorted(shares.items())),
                              flush=True)

    print(f"\n{args.device}, {args.rounds} rounds of {args.rollouts} rollouts; steps/s (median), split / unsplit per round")
    print("| agent x envs | unsplit | split | split / unsplit (median, min-max) | env wait unsplit -> split |")
    print("|---|---:|---:|---:|---:|")
    for key, entry in results.items():
        ratios = [s / o for s, o in zip(entry["split"], entry["one"])]
        entry["ratios"] = ratios
        print(f"| {key} | {statistics.median(entry['one']):,.0f} | {statistics.median(entry['split']):,.0f} | "
              f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) | "
              + (f"{entry['shares_one']['env']:.0%} -> {entry['shares_split']['env']:.0%} |"
                 if "env" in entry["shares_one"] else "not timed |"))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "results": results}, indent=1))


if __name__ == "__main__":
    main()
