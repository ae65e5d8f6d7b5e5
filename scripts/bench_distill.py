"""Student return against student size for `rlbase distill` (issue 13): one teacher, students at
fractions of its acting parameters, several distillation seeds each.

    python scripts/bench_distill.py --teacher runs/cartpole_ppo --fractions 0.5,0.25,0.125,0.0625 --seeds 0,1,2
    python scripts/bench_distill.py --train ppo --env rlbase/CartPole-v1 --work /tmp/bench_distill ...

Prints a markdown table (teacher and student mean return over the same eval episodes, the ratio,
acting parameters and bytes) and writes every report with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rlbase.cli import main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="a trained run directory")
    parser.add_argument("--train", metavar="ALGO", help="train the teacher first with `rlbase train ALGO`")
    parser.add_argument("--env", help="the teacher's env (with --train)")
    parser.add_argument("--train-args", default="", help="more `rlbase train` flags, space-separated")
    parser.add_argument("--work", default="/tmp/bench_distill", help="folder for the teacher and students")
    parser.add_argument("--fractions", default="0.5,0.25,0.125,0.0625")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--distill-args", default="", help="more `rlbase distill` flags, space-separated")
    parser.add_argument("--json", default=None, help="write the reports here")
    return parser.parse_args()


def run(argv: list[str]) -> None:
    code = main(argv)
    if code != 0:
        sys.exit(f"rlbase {' '.join(argv)} failed with exit code {code}")


def bench() -> None:
    args = parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = Path(args.teacher) if args.teacher else None
    if args.train:
        teacher = work / "teacher"
        started = time.perf_counter()
        run(["train", args.train, "--env", args.env, "--log-dir", str(work), "--run-name", "teacher",
             *args.train_args.split()])
        print(f"teacher trained in {time.perf_counter() - started:.1f} s", flush=True)
    if teacher is None:
        sys.exit("give --teacher RUN or --train ALGO --env ID")
    reports = []
    for fraction in [float(f) for f in args.fractions.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = work / f"student_{fraction:g}_{seed}"
            run(["distill", str(teacher), "--width-fraction", str(fraction), "--seed", str(seed), "--steps",
                 str(args.steps), "--eval-episodes", str(args.eval_episodes), "--out", str(out),
                 *args.distill_args.split()])
            reports.append({"fraction": fraction, **json.loads((out / "report.json").read_text())})
    first = reports[0]
    print(f"\nteacher {teacher}: {first['algo']} on {first['env_id']}, {first['teacher']['acting_parameters']:,} "
          f"acting parameters ({first['teacher']['acting_bytes']:,} bytes), mean return "
          f"{first['teacher']['eval']['mean_return']:.2f} over {args.eval_episodes} eval episodes (seed 0)\n")
    print("| size | hidden | acting params | bytes | student return per seed | mean | % of teacher (or difference) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for fraction in dict.fromkeys(r["fraction"] for r in reports):
        rows = [r for r in reports if r["fraction"] == fraction]
        returns = [r["student"]["eval"]["mean_return"] for r in rows]
        mean = statistics.fmean(returns)
        teacher_return = rows[0]["teacher"]["eval"]["mean_return"]
        student = rows[0]["student"]
        print(f"| 1/{1 / fraction:g} | {','.join(map(str, student['hidden_sizes']))} | "
              f"{student['acting_parameters']:,} ({rows[0]['parameter_ratio']:.1f}x fewer) | "
              f"{student['acting_bytes']:,} | {', '.join(f'{r:.4g}' for r in returns)} | {mean:.4g} | "
              f"{f'{100 * mean / teacher_return:.0f}%' if teacher_return > 0 else f'{mean - teacher_return:+.1f}'} | "
              f"{statistics.fmean(r['train_seconds'] for r in rows):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    bench()
