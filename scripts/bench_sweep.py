"""Many seeds: `rlbase sweep` (trials in parallel on a local Ray) against the same runs launched one after
another as plain `rlbase train` commands, in the same run of this script.

    python scripts/bench_sweep.py --seeds 8
    python scripts/bench_sweep.py --seeds 8 --repeats 3     # the whole comparison 3 times, and the median ratio
    python scripts/bench_sweep.py --contention-only --repeats 3   # only what two runs at once cost each other

Both do PPO with the rlbase/CartPole-v1 preset on seeds 0..N-1 (one torch thread per run). The
sweep's wall-clock includes starting Ray and its workers, and stopping them; Ray's start-up alone is
timed separately (`ray.init` in a fresh process), and so is its stop: `ray.shutdown()` against
rlbase's `stop_ray()` (rlbase/sweep_ray.py), each in a fresh process after two tasks ran. Prints the
wall-clocks, their ratio and the targets of the issue (sweep <= 0.6x the sequential loop; Ray
start-up under 10 s).

It also measures what running two trials at once costs each of them on this machine: one seed's
`learn()` alone (timed inside its process, imports excluded) against two seeds' `learn()` started
together, one torch thread each. With a slowdown `s` when two share the machine, a sweep that runs
its N trials two at a time can at best take (N / 2) x s x learn, against N x (start + learn) for the
sequential loop, so the ratio cannot go below s x learn / (2 x (start + learn)) even with no Ray
overhead at all; the script prints that bound next to the measured ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import rlbase_command, timed_command

RAY_START = ("import os, sys, time, ray\n"
             "from rlbase.sweep_ray import stop_ray\n"
             "t = time.perf_counter()\n"
             "ray.init(address=\"local\", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)\n"
             "started = time.perf_counter() - t\n"
             "ray.get([ray.remote(lambda: os.getpid()).remote() for _ in range(2)])\n"
             "t = time.perf_counter()\n"
             "ray.shutdown() if sys.argv[1] == 'ray' else stop_ray()\n"
             "print(started, time.perf_counter() - t)\n"
             "os._exit(0)\n")
"""Prints (seconds of ray.init, seconds of the stop) for a stop by `ray.shutdown()` (argv `ray`) or `stop_ray()`."""


def ray_times(work: Path, stop: str) -> tuple[float, float]:
    """(ray.init seconds, stop seconds) in a fresh process, stopping with `stop` (ray or rlbase)."""
    out = timed_command([sys.executable, "-c", RAY_START, stop], work)[1].strip().splitlines()[-1]
    started, stopped = map(float, out.split())
    return started, stopped


LEARN = ("import sys, time\n"
         "from rlbase import PPO\n"
         "agent = PPO(sys.argv[1], seed=int(sys.argv[2]), torch_threads=1, log_dir=None, verbose=0)\n"
         "t = time.perf_counter()\n"
         "agent.learn()\n"
         "print(time.perf_counter() - t)\n")
"""One seed's `learn()` with the env's preset and one torch thread; prints its seconds (imports and set-up excluded)."""


def learn_times(env: str, seeds: list[int], work: Path) -> tuple[list[float], float]:
    """(each seed's learn() seconds, the wall-clock of the slowest whole process) with these seeds started together."""
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", LEARN, env, str(seed)], cwd=work, stdout=subprocess.PIPE,
                              text=True) for seed in seeds]
    outs = [proc.communicate()[0] for proc in procs]
    wall = time.perf_counter() - start
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"bench_sweep: a learn() process failed (exit codes {[p.returncode for p in procs]})")
    return [float(out.strip().splitlines()[-1]) for out in outs], wall


def contention(args: argparse.Namespace, work: Path) -> tuple[float, float, float]:
    """(learn seconds alone, learn seconds with two at once, whole-process seconds alone), medians over repeats."""
    alone, together, whole = [], [], []
    for _ in range(args.repeats):
        for seed in (0, 1):
            (seconds,), wall = learn_times(args.env, [seed], work)
            alone.append(seconds)
            whole.append(wall)
        together.extend(learn_times(args.env, [0, 1], work)[0])
    return statistics.median(alone), statistics.median(together), statistics.median(whole)


def compare(args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """(sequential seconds, sweep seconds) of one comparison."""
    sequential = 0.0
    for seed in range(args.seeds):
        seconds, _ = timed_command([*rlbase_command(), "train", "ppo", "--env", args.env, "--seed", str(seed),
                                    "--torch-threads", "1", "--log-dir", str(work / "seq"), "--run-name", f"s{seed}"],
                                   work)
        sequential += seconds
    shutil.rmtree(work / "seq", ignore_errors=True)
    shutil.rmtree(work / "sweep", ignore_errors=True)
    sweep, _ = timed_command([*rlbase_command(), "sweep", "ppo", "--env", args.env, "--seeds", f"0-{args.seeds - 1}",
                              "--log-dir", str(work), "--name", "sweep"], work)
    return sequential, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--env", default="rlbase/CartPole-v1")
    parser.add_argument("--repeats", type=int, default=1, help="repeat each measurement (the contention timing and the whole comparison) this many times")
    parser.add_argument("--contention-only", action="store_true",
                        help="measure only what two runs at once cost each other (no sweep, no Ray)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlbase-bench-sweep-"))
    try:
        alone, together, whole = contention(args, work)
        if not args.contention_only:
            ray_start, ray_stop = ray_times(work, "ray")
            _, rlbase_stop = ray_times(work, "rlbase")
        results = [] if args.contention_only else [compare(args, work) for _ in range(args.repeats)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpus = os.cpu_count()
    print(f"{args.seeds} seeds of PPO on {args.env} (preset), {cpus} CPUs, one torch thread per run; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    slowdown = together / alone
    bound = slowdown * alone / (2 * whole)
    print(f"  one seed's learn() alone                    {alone:7.2f} s   (its whole process {whole:.2f} s)")
    print(f"  learn() with two seeds at once              {together:7.2f} s   (each: {slowdown:.2f}x slower)")
    print(f"  lowest possible sweep / sequential          {bound:7.2f}x   (two at a time, no Ray overhead at all)")
    for sequential, sweep in results:
        print(f"  {args.seeds} x `rlbase train`, one after another   {sequential:7.1f} s")
        print(f"  `rlbase sweep --seeds 0-{args.seeds - 1}` (local Ray)        {sweep:7.1f} s")
        print(f"  sweep / sequential                          {sweep / sequential:7.2f}x   "
              f"(target <= 0.6x: {'MET' if sweep / sequential <= 0.6 else 'NOT MET'})")
    if len(results) > 1:
        ratios = sorted(sweep / sequential for sequential, sweep in results)
        print(f"  median sweep / sequential of {len(ratios)}               {statistics.median(ratios):7.2f}x   "
              f"(runs: {', '.join(f'{r:.2f}x' for r in ratios)})")
    if args.contention_only:
        return
    print(f"  ray.init() in a fresh process               {ray_start:7.1f} s   "
          f"(target < 10 s: {'MET' if ray_start < 10 else 'NOT MET'})")
    print(f"  stopping it: ray.shutdown()                 {ray_stop:7.2f} s; rlbase's stop_ray() {rlbase_stop:.2f} s")


if __name__ == "__main__":
    main()
