"""Start-up cost of the `rlbase` command: the whole `rlbase train ppo --env rlbase/CartPole-v1` against
what it cannot avoid, measured in the same run.

    python scripts/bench_startup.py --repeats 5

Each repeat times, as separate processes and in this order:
- `python -c "import torch"` (ending with `os._exit`, as the console script does): the interpreter
  plus torch, the floor of any command that trains;
- the same training in-process (`rlbase.lifecycle.train`, no files, timed around the call only,
  after `gc.freeze()` as in the console script);
- the real console script, `rlbase train ppo --env rlbase/CartPole-v1` into a fresh run directory.

It prints the medians, the command's own overhead (command - import floor - training) and the
ratio command / (import floor + training): 1.0 would be a command that costs nothing beyond
importing torch and training. `-X importtime` of the command's imports follows, largest first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import rlbase_command, timed_command

TRAIN_ARGS = ["train", "ppo", "--env", "rlbase/CartPole-v1"]
FLOOR = "import os, torch\nos._exit(0)\n"
IN_PROCESS = ("import gc, time, rlbase.lifecycle as lc\n"
              "gc.freeze()\n"
              "t = time.perf_counter()\n"
              "lc.train('ppo', {'env_id': 'rlbase/CartPole-v1'}, run_dir=None)\n"
              "print(time.perf_counter() - t)\n")


def import_times(cwd: Path, top: int) -> list[tuple[float, str]]:
    """(seconds, module) of the command's imports by cumulative time, from `python -X importtime`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rlbase", *TRAIN_ARGS, "--total-timesteps",
                           "1024", "--log-dir", str(cwd / "importtime")], cwd=cwd, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
            if cumulative.isdigit() and "." not in name.strip():  # top-level packages only
                rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="imports to list")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlbase-startup-"))
    floor, train, command = [], [], []
    try:
        for i in range(args.repeats):
            floor.append(timed_command([sys.executable, "-c", FLOOR], work)[0])
            train.append(float(timed_command([sys.executable, "-c", IN_PROCESS], work)[1].strip().splitlines()[-1]))
            command.append(timed_command([*rlbase_command(), *TRAIN_ARGS, "--log-dir", str(work / "runs"),
                                 "--run-name", f"r{i}"], work)[0])
        imports = import_times(work, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in
           (("floor", floor), ("train", train), ("command", command))}
    print(f"repeats: {args.repeats}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = [("python -c 'import torch'", "floor", floor), ("training in-process (45k steps)", "train", train),
            (f"rlbase {' '.join(TRAIN_ARGS)}", "command", command)]
    for label, key, values in rows:
        print(f"{label:<44}{med[key]:5.2f} s   (all: {', '.join(f'{x:.2f}' for x in values)})")
    print(f"{'the command beyond import and training':<44}{med['command'] - med['floor'] - med['train']:5.2f} s")
    print(f"{'command / (import floor + training)':<44}{med['command'] / (med['floor'] + med['train']):5.2f}x")
    print(f"{'3 s target for the whole command':<44}{'MET' if med['command'] <= 3.0 else 'NOT MET'} "
          f"(median {med['command']:.2f} s)")
    print("largest imports of the command (cumulative, python -X importtime):")
    for seconds, name in imports:
        print(f"  {name:<42}{seconds:.3f} s")


if __name__ == "__main__":
    main()
