"""What transfer buys: env steps to a return threshold, pretrained backbone vs from scratch.

    python scripts/maze_transfer.py maze --seeds 0 1 2 --json transfer_maze.json
    python scripts/maze_transfer.py goto --seeds 0 1 2 --json transfer_goto.json

Runs the real console script throughout: `rlbase pretrain` once (seed 0), then one `rlbase sweep
ppo` whose search space's `cases` are the arms (identical hyperparameters apart from the backbone's
start and learning rate), crossed with the seeds, then `rlbase eval` of each final checkpoint on the
env's held-out eval split. The sweep lives in `--workdir/EXPERIMENT/sweep`: run the script again to
resume an interrupted one (`rlbase sweep --resume`); `--report` only reads finished runs back, and
`rlbase report` / `rlbase plot` read the sweep directory too.

Experiments:
- `maze`: rlbase/Maze-v0 with `pixels` observations; the Nature CNN pretrained on the maze's
  shortest-path action (`maze-action`), arms `scratch`, `frozen` (--freeze-backbone) and
  `finetune` (--backbone-lr-scale 0.1). The goal: the pretrained arms reach a threshold in
  <= 50% of the steps from scratch. `maze-action` is the policy itself (behaviour cloning), so two
  more frozen arms start from perception tasks that are not: `frozen_position` (`maze-position`,
  the agent's square) and `frozen_exit` (`maze-exit-direction`, where the exit lies). The `_ln`
  arms repeat the frozen ones with `--feature-norm` (a trained LayerNorm on the frozen features).
- `goto`: rlbase/MazeGoTo-v0; the text encoder pretrained on `goto-text`, arms `scratch` (text
  encoder trained by RL), `frozen`, and `blanked` (the instruction replaced by padding: what a
  policy that cannot read achieves). Held-out success of the language arms must be well above
  `blanked`. Each run is evaluated on the eval split (paraphrases never trained on, all 18 pairs),
  then on its two kinds of held-out language apart (`eval_paraphrases_*`: the pairs seen in
  training; `eval_heldout_pairs_*`: the 4 pairs never the target in training).

Steps to a threshold: the first logged point from which `rollout/ep_rew_mean` (mean return of the
last 100 training episodes) stays at or above it for 3 points in a row, counting only points after
every env has run out its time limit twice (earlier, the last 100 episodes are the short ones);
None when it never does within the budget. Several thresholds are reported (`--thresholds`), so none is picked after the fact.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

EXPERIMENTS = {
    "maze": {
        "env": "rlbase/Maze-v0", "env_kwargs": "size=11,obs_mode=pixels",
        "task": "maze-action", "backbone": "nature_cnn",
        "pretrain": ["--train-samples", "50000", "--val-samples", "5000", "--epochs", "6"],
        # A checkpoint every 100k steps: an interrupted experiment resumes its runs from there.
        "train": ["--shared-backbone", "--total-timesteps", "300000", "--log-interval", "8192",
                  "--checkpoint-interval", "100000"],
        "thresholds": [0.3, 0.4, 0.5],
        # From scratch, PPO had not left a random policy's level after 300k steps: its own, longer budget.
        "scratch_timesteps": 1_500_000,
        "warmup": 2 * 484 * 64,  # twice the time limit (4 * 11**2 steps) of each of the 64 envs
        "arms": {"frozen": {"freeze_backbone": True}, "finetune": {"backbone_lr_scale": 0.1},
                 "frozen_position": {"freeze_backbone": True}, "frozen_exit": {"freeze_backbone": True}, "scratch": {},
                 # The frozen arms again with --feature-norm: the three pretraining tasks leave features of
                 # very different scales (RMS 0.23 / 12 / 2.3 for action / position / exit direction), and
                 # unnormalised, the position features wreck PPO's first update (value loss 23, KL 0.47).
                 "frozen_ln": {"freeze_backbone": True, "feature_norm": True},
                 "frozen_position_ln": {"freeze_backbone": True, "feature_norm": True},
                 "frozen_exit_ln": {"freeze_backbone": True, "feature_norm": True}},
        # The pretraining task of each pretrained arm (the others train from scratch).
        "arm_tasks": {"frozen": "maze-action", "finetune": "maze-action", "frozen_position": "maze-position",
                      "frozen_exit": "maze-exit-direction", "frozen_ln": "maze-action",
                      "frozen_position_ln": "maze-position", "frozen_exit_ln": "maze-exit-direction"},
    },
    "goto": {
        "env": "rlbase/MazeGoTo-v0", "env_kwargs": "",
        "task": "goto-text", "backbone": "text",
        "pretrain": ["--train-samples", "20000", "--val-samples", "2000", "--epochs", "4"],
        "train": ["--total-timesteps", "1200000", "--log-interval", "16384", "--checkpoint-interval", "200000"],
        "thresholds": [0.4, 0.5, 0.6],
        "warmup": 2 * 128 * 64,  # twice the time limit (2 * 8**2 steps) of each of the 64 envs
        "arms": {"scratch": {}, "frozen": {"freeze_backbone": True}, "blanked": {}},
        "arm_tasks": {"frozen": "goto-text"},
        # Beside the eval split as trained with (held-out paraphrases of all 18 pairs), each kind of
        # held-out language apart: paraphrases of the pairs seen in training, and the held-out pairs.
        "eval_splits": {"paraphrases": "eval_targets=trained", "heldout_pairs": "eval_targets=heldout"},
    },
}
SUSTAIN = 3  # logged points in a row at or above the threshold


def rlbase(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "rlbase", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rlbase {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc


def learning_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, rollout/ep_rew_mean) at every logged point of a run."""
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "rollout/ep_rew_mean" in record:
            curve.append((record["global_step"], round(record["rollout/ep_rew_mean"], 4)))
    return curve


def steps_to_threshold(curve: list[tuple[int, float]], threshold: float, warmup: int) -> int | None:
    """The first of SUSTAIN consecutive logged points at or above `threshold`, counting only points
    after `warmup` steps: before every env has run out its time limit twice, the last 100 episodes
    are the ones that ended first, the short ones, and overstate the policy (a random policy
    "scores" 0.9 at the first point on the 11x11 maze)."""
    curve = [(step, value) for step, value in curve if step >= warmup]
    return next((curve[i][0] for i in range(len(curve) - SUSTAIN + 1)
                 if all(value >= threshold for _, value in curve[i:i + SUSTAIN])), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=None, help="subset of the experiment's arms")
    parser.add_argument("--thresholds", type=float, nargs="+", default=None,
                        help="return thresholds (default: the experiment's)")
    parser.add_argument("--report", action="store_true",
                        help="only report on finished runs (their metrics and saved eval reports)")
    parser.add_argument("--total-timesteps", type=int, default=None, help="every arm's budget (default: the experiment's)")
    parser.add_argument("--scratch-timesteps", type=int, default=None,
                        help="the scratch arm's budget (default: the experiment's, long enough to reach the thresholds)")
    parser.add_argument("--episodes", type=int, default=200, help="held-out evaluation episodes per run")
    parser.add_argument("--workdir", default="transfer_runs")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny pretraining and training budgets (the numbers mean nothing)")
    args = parser.parse_args()
    exp = EXPERIMENTS[args.experiment]
    if args.quick:
        exp = {**exp, "pretrain": ["--train-samples", "256", "--val-samples", "64", "--epochs", "1"],
               "train": [a for a in exp["train"] if a not in ("--total-timesteps", "300000", "1200000")]
               + ["--num-envs", "8", "--num-steps", "16", "--log-interval", "128"], "warmup": 0}
        args.total_timesteps = args.total_timesteps or 512
        args.scratch_timesteps = args.scratch_timesteps or 1024
        args.episodes = min(args.episodes, 4)
    thresholds = args.thresholds or exp["thresholds"]
    work = Path(args.workdir).resolve() / args.experiment
    work.mkdir(parents=True, exist_ok=True)

    arms = args.arms or list(exp["arms"])
    artifacts: dict[str, Path] = {}
    specs: dict[str, dict] = {}
    for task in dict.fromkeys(exp["arm_tasks"][arm] for arm in arms if arm in exp["arm_tasks"]):
        artifacts[task] = work / f"pretrained-{task}"
        if not (artifacts[task] / "backbone").exists():
            kwargs = ["--env-kwargs", exp["env_kwargs"]] if exp["env_kwargs"] and task.startswith("maze") else []
            rlbase("pretrain", task, "--backbone", exp["backbone"], *kwargs, *exp["pretrain"],
                   "--torch-threads", "1", "--out", str(artifacts[task]), cwd=work)
        specs[task] = spec = json.loads((artifacts[task] / "backbone" / "backbone.json").read_text())
        print(f"pretrained {spec['name']} on {spec['task']}: held-out "
              + ", ".join(f"{k} {v:.4f}" for k, v in spec["metrics"].items() if k.startswith("val/")), flush=True)

    sweep_dir = work / "sweep"
    if not args.report:
        scratch_budget = args.scratch_timesteps or (None if args.total_timesteps else exp.get("scratch_timesteps"))
        run_sweep(exp, arms, args.seeds, artifacts, work, sweep_dir, args.total_timesteps, scratch_budget)
    trials = json.loads((sweep_dir / "trials.json").read_text())
    results = []
    for arm in arms:
        for seed in args.seeds:
            entry = next((e for e in trials.values() if e.get("case") == arm and e.get("seed") == seed), None)
            if entry is None or entry.get("status") != "TERMINATED":
                print(f"{arm} seed {seed}: not finished in {sweep_dir}", flush=True)
                continue
            run_dir = Path(entry["run_dir"])
            report = evaluation(run_dir, seed, args.episodes, work, reuse=args.report)
            curve = learning_curve(run_dir)
            row = {"arm": arm, "seed": seed, "train_seconds": entry.get("seconds"),
                   "steps_to": {str(t): steps_to_threshold(curve, t, exp["warmup"]) for t in thresholds},
                   "final_ep_rew_mean": curve[-1][1] if curve else None,
                   "eval_mean_return": round(report["mean_return"], 4),
                   **{f"eval_{k}": round(v, 4) for k, v in report["outcomes"].items()}, "curve": curve}
            for split, kwargs in exp.get("eval_splits", {}).items():
                split_report = evaluation(run_dir, seed, args.episodes, work, reuse=args.report, env_kwargs=kwargs)
                row.update({f"eval_{split}_{k}": round(v, 4) for k, v in split_report["outcomes"].items()})
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    if not results:
        raise SystemExit(f"no finished runs in {sweep_dir}")

    summary = summarize(results, thresholds)
    budgets = {arm: max((r["curve"][-1][0] for r in results if r["arm"] == arm and r["curve"]), default=0)
               for arm in summary}
    for t in thresholds:
        cells = [f"{arm} {fmt_steps(summary[arm][str(t)], budgets[arm])}" for arm in summary]
        print(f"steps to a sustained ep_rew_mean >= {t} (median over seeds): " + ", ".join(cells))
        scratch = summary.get("scratch", {}).get(str(t))
        for arm in exp["arm_tasks"]:
            pre = summary.get(arm, {}).get(str(t))
            if pre is not None and "scratch" in summary:
                bound = "" if scratch is not None else " at most (scratch never reached it)"
                print(f"  {arm}/scratch: {pre / (scratch if scratch is not None else budgets['scratch']):.2f}{bound}")
    for arm in summary:
        print(f"{arm}: held-out {', '.join(k for k in results[0] if k.startswith('eval_'))} per seed: "
              + "; ".join(", ".join(str(r[k]) for k in r if k.startswith("eval_")) for r in results if r["arm"] == arm))
    if args.json:
        Path(args.json).write_text(json.dumps({"experiment": args.experiment, "thresholds": thresholds,
                                               "pretrained": specs, "runs": results, "summary": summary}, indent=1))


def run_sweep(exp: dict, arms: list[str], seeds: list[int], artifacts: dict[str, Path], work: Path,
              sweep_dir: Path, total_timesteps: int | None, scratch_timesteps: int | None = None) -> None:
    """The experiment as one `rlbase sweep`: its arms are the space's cases, crossed with the seeds
    and run in the order of `arms` (a sweep already started is resumed; a finished one is left as
    it is). `scratch_timesteps` gives the scratch arm its own budget."""
    import yaml

    if (sweep_dir / "sweep.json").exists():
        rlbase("sweep", "--resume", str(sweep_dir), cwd=work)
        return
    base_kwargs = dict(item.split("=", 1) for item in exp["env_kwargs"].split(",") if item)
    cases = {}
    for arm in arms:
        values = dict(exp["arms"][arm])
        if arm in exp["arm_tasks"]:
            values["backbone_weights"] = str(artifacts[exp["arm_tasks"][arm]])
        if arm == "blanked":  # the instruction replaced by padding: what a policy that cannot read achieves
            values["env_kwargs"] = {**{k: yaml.safe_load(v) for k, v in base_kwargs.items()}, "blank_mission": True}
        if arm == "scratch" and scratch_timesteps:
            values["total_timesteps"] = scratch_timesteps
        cases[arm] = values
    space_file = work / "arms.yaml"
    space_file.write_text(yaml.safe_dump({"cases": cases}, sort_keys=False))
    train = list(exp["train"]) + (["--total-timesteps", str(total_timesteps)] if total_timesteps else [])
    rlbase("sweep", "ppo", "--env", exp["env"], *(["--env-kwargs", exp["env_kwargs"]] if exp["env_kwargs"] else []),
           *train, "--space", str(space_file), "--seeds", ",".join(map(str, seeds)), "--log-dir", str(work),
           "--name", sweep_dir.name, cwd=work)


def evaluation(run_dir: Path, seed: int, episodes: int, work: Path, reuse: bool, env_kwargs: str = "") -> dict:
    """`rlbase eval` of the final checkpoint on the held-out split, its env changed by `env_kwargs`
    (KEY=VALUE,...). The report that evaluation saved in the run dir is used instead when it is of the
    final checkpoint with the same seed and episodes (the same numbers: evaluation is seeded), or with
    `reuse` whatever it holds."""
    # rlbase eval names the report eval_step_N.json, or eval_step_N_KEY-VALUE_....json for other env kwargs
    suffix = "".join(f"_{item.replace('=', '-')}" for item in sorted(env_kwargs.split(","))) if env_kwargs else ""
    saved = sorted(p for p in run_dir.glob("eval_step_*.json")
                   if re.fullmatch(rf"eval_step_\d+{re.escape(suffix)}\.json", p.name))
    if saved:
        report = json.loads(saved[-1].read_text())
        if reuse or (isinstance(report, dict) and report.get("seed") == 1000 + seed
                     and report.get("num_episodes") == episodes and report.get("global_step") == final_step(run_dir)):
            return report
    kwargs = ["--env-kwargs", env_kwargs] if env_kwargs else []
    return json.loads(rlbase("eval", str(run_dir), "--episodes", str(episodes), "--json", "--seed", str(1000 + seed),
                             *kwargs, cwd=work).stdout.strip().splitlines()[-1])


def final_step(run_dir: Path) -> int | None:
    """The step of the run's latest checkpoint (checkpoints/latest.json names it step_N), None if unknown."""
    try:
        name = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
        return int(name[len("step_"):]) if isinstance(name, str) and name.startswith("step_") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize(results: list[dict], thresholds: list[float]) -> dict:
    """Per arm and threshold: the median steps over seeds (None unless every seed reached it)."""
    summary: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in results):
        rows = [r for r in results if r["arm"] == arm]
        summary[arm] = {}
        for t in thresholds:
            steps = [r["steps_to"][str(t)] for r in rows]
            summary[arm][str(t)] = statistics.median(steps) if None not in steps else None
    return summary


def fmt_steps(steps: float | None, budget: int) -> str:
    return f"{steps / 1000:.0f}k" if steps is not None else f"> {budget / 1000:.0f}k"


if __name__ == "__main__":
    main()
