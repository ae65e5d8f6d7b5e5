"""The cost of the non-finite guards: training with `--check-env-values` against the same training
without it, in the same run of this script (the always-on guards, which read only values already
fetched at log intervals and the weights once per checkpoint, are in both).

    python scripts/bench_guards.py [--steps 200000] [--repeats 3]

Each configuration trains in memory (no files) on rlbase's own CartPole (device-side env, so the
per-step check is the largest share of a step it can be), after a warm-up run; the fastest of
`--repeats` runs counts. Prints steps/s with and without the check and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time

from rlbase.lifecycle import train

CASES = {
    "ppo, 64 envs": ("ppo", {"num_envs": 64, "num_steps": 32}),
    "dqn, 8 envs": ("dqn", {"num_envs": 8, "learning_starts": 1000}),
}


def steps_per_second(algo: str, values: dict, steps: int) -> float:
    start = time.perf_counter()
    train(algo, {**values, "total_timesteps": steps, "log_interval": 10_000, "checkpoint_interval": 0}, run_dir=None)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env", default="rlbase/CartPole-v1")
    args = parser.parse_args()
    print(f"--check-env-values on {args.env}, {args.steps:,} steps per run, best of {args.repeats}; "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, (algo, values) in CASES.items():
        values = {**values, "env_id": args.env, "seed": 0, "torch_threads": 1}
        steps_per_second(algo, values, args.steps // 10)  # warm-up
        rates = {False: 0.0, True: 0.0}
        for _ in range(args.repeats):
            for check in (False, True):  # interleaved, so drifting load hits both alike
                rates[check] = max(rates[check], steps_per_second(algo, {**values, "check_env_values": check},
                                                                  args.steps))
        print(f"  {name:<14} without {rates[False]:9,.0f} steps/s   with {rates[True]:9,.0f} steps/s   "
              f"ratio {rates[True] / rates[False]:.3f}")


if __name__ == "__main__":
    main()
