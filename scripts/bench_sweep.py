"""Many seeds: `rlbase sweep` (trials in parallel on a local Ray) against the same runs launched one after
another as plain `rlbase train` commands, in the same run of this script.

    python scripts/bench_sweep.py --seeds 8

Both do PPO with the rlbase/CartPole-v1 preset on seeds 0..N-1 (one torch thread per run). The
sweep's wall-clock includes starting Ray and its workers; Ray's start-up alone is timed separately
(`ray.init` in a fresh process). Prints both wall-clocks, their ratio and the targets of the issue
(sweep <= 0.6x the sequential loop; Ray start-up under 10 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchlib import rlbase_command, timed_command

RAY_START = ("import time, ray\n"
             "t = time.perf_counter()\n"
             "ray.init(address=\"local\", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)\n"
             "print(time.perf_counter() - t)\n"
             "ray.shutdown()\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--env", default="rlbase/CartPole-v1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlbase-bench-sweep-"))
    try:
        ray_start = float(timed_command([sys.executable, "-c", "import os\n" + RAY_START], work)[1].strip().splitlines()[-1])
        sequential = 0.0
        for seed in range(args.seeds):
            seconds, _ = timed_command([*rlbase_command(), "train", "ppo", "--env", args.env, "--seed", str(seed),
                                "--torch-threads", "1", "--log-dir", str(work / "seq"), "--run-name", f"s{seed}"],
                               work)
            sequential += seconds
        sweep, _ = timed_command([*rlbase_command(), "sweep", "ppo", "--env", args.env, "--seeds", f"0-{args.seeds - 1}",
                          "--log-dir", str(work), "--name", "sweep"], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpus = os.cpu_count()
    print(f"{args.seeds} seeds of PPO on {args.env} (preset), {cpus} CPUs, one torch thread per run; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  {args.seeds} x `rlbase train`, one after another   {sequential:7.1f} s")
    print(f"  `rlbase sweep --seeds 0-{args.seeds - 1}` (local Ray)        {sweep:7.1f} s")
    print(f"  sweep / sequential                          {sweep / sequential:7.2f}x   "
          f"(target <= 0.6x: {'MET' if sweep / sequential <= 0.6 else 'NOT MET'})")
    print(f"  ray.init() in a fresh process               {ray_start:7.1f} s   "
          f"(target < 10 s: {'MET' if ray_start < 10 else 'NOT MET'})")


if __name__ == "__main__":
    main()
