"""Learning per wall-clock: rlbase and Stable-Baselines3 train ALE/Breakout-v5 for the same time.

Run from the repository root (CPU only; every run starts with the same torch.set_num_threads):

    python scripts/bench_learning.py                                  # DQN and PPO, 30 minutes, seed 0
    python scripts/bench_learning.py --algos dqn ppo rainbow pqn --seeds 0 1 2 --json learning.json
    python scripts/bench_learning.py --minutes 5 --algos ppo          # a shorter race
    python scripts/bench_learning.py --quick --in-process             # smoke test: numbers meaningless
    python scripts/bench_learning.py --algos dqn ppo pqn --seeds 0 1 2 --results race.jsonl   # over several sittings

A whole race is hours (five 30-minute runs per seed). With `--results FILE.jsonl` each finished run is
appended to FILE as it ends, and a later call with the same FILE runs only the jobs not in it (same
algorithm, library, seed, budget and config); the table covers every result in FILE that the call
planned. Stop it with Ctrl-C between or during runs: a run cut short is not recorded.

Each (algorithm, library, seed) is one job in a fresh subprocess of this script, one after the
other, so the runs never share the CPU:

1. **Warm-up**: the library trains the algorithm for `--warmup-s` seconds with learning starting
   almost at once, and its learning-phase speed is read: env steps per second over the last two
   thirds of the warm-up, over whole iterations (PPO and PQN alternate a rollout of num_steps x
   num_envs steps with an update of several seconds, so a window cut at another phase of the
   iteration is off by up to one update: 7% too slow in one run, which ended that run's schedule
   125 s before its budget).
2. **Schedule for the budget**: `total_timesteps` = that speed x the budget, so the library's own
   exploration and learning-rate schedules run over the steps that fit; DQN's `learning_starts`
   becomes min(preset, 5% of those steps) and its replay 100,000 transitions (both libraries: SB3
   keeps every observation twice, and 1M Breakout transitions would need ~56 GB there).
3. **Training** for the budget of wall-clock seconds (model setup included, env creation not):
   the run stops at the budget or at `total_timesteps`, whichever comes first.
4. **Evaluation**: `--games` full games (all lives, unclipped score; the eval settings rlbase
   uses), each library on its own env stack with the training settings' sticky actions, no-ops,
   frame skip and frame stack; rlbase through `rlbase.evaluate.evaluate`, SB3 through its VecEnv
   and `predict`. The evaluation policy is the rlbase preset's for both: epsilon-greedy
   `eval_epsilon` (0.05) for DQN, the sampled action (`eval_deterministic: false`) for PPO.

Same settings on both sides: rlbase's presets (`rlbase/presets/*.yaml`), translated for SB3 as
scripts/bench_dqn.py and scripts/bench_pg.py do (SB3 DQN with n_envs=1 and the same updates per
transition; SB3 DQN is not Double DQN, rlbase keeps its default; a preset's dueling head or
prioritized replay are turned off for the `dqn` row so both run the same algorithm); ALE/Breakout-v5
with sticky actions 0.25 on both sides (SB3: AtariWrapper over the v5 env with frameskip=1, not
NoFrameskip-v4, which has no sticky actions). `rainbow` (rlbase's DQN with `--preset rainbow`) and
`pqn` run for rlbase only: SB3 has neither; their scores are read against SB3 PPO's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from bench_dqn import sb3_dqn
from bench_pg import sb3_ppo_kwargs
from benchlib import (BREAKOUT, config_from_dict, parse_arguments, preset_config, print_table, run_jobs, sb3_vec_env,
                      set_threads, start_invocation, write_json)

ALGOS = {"dqn": ("dqn", {}), "ppo": ("ppo", {}), "rainbow": ("dqn", {"preset": "rainbow"}), "pqn": ("pqn", {})}
"""Row name -> (rlbase algorithm, extra config values)."""
SB3_ALGOS = ("dqn", "ppo")
WARMUP_WINDOW = "whole iterations"
"""How the warm-up's speed is read (`learning_rate_of`); results recorded with another way do not count."""
REPLAY = 100_000
"""Replay transitions for DQN on both sides (see the module docstring)."""


def base_config(algo: str, seed: int, extra: dict[str, Any] | None = None):
    """The rlbase config of row `algo` on Breakout (its preset), before the budget's schedule."""
    rl_algo, values = ALGOS[algo]
    overrides = {**values, "seed": seed, **(extra or {})}
    if rl_algo == "dqn":
        overrides["buffer_size"] = REPLAY
    cfg = preset_config(rl_algo, BREAKOUT, overrides)
    if algo == "dqn":  # the same algorithm as SB3's DQN (which has neither)
        cfg = dataclasses.replace(cfg, dueling=False, prioritized_replay=False)
    return cfg


def budget_config(cfg, steps: int):
    """`cfg` with its schedules set for `steps` env steps."""
    changes: dict[str, Any] = {"total_timesteps": steps, "checkpoint_interval": max(steps, 1)}
    if hasattr(cfg, "learning_starts"):
        changes["learning_starts"] = min(cfg.learning_starts, max(1_000, steps // 20))
    return dataclasses.replace(cfg, **changes)


def learning_rate_of(marks: list[tuple[int, float]], learning_starts: int, period: int = 1) -> float:
    """Env steps/s over the last two thirds of a warm-up's (step, time) marks once learning runs, over
    whole iterations of `period` env steps: the window starts at the first mark in those two thirds
    that is a whole number of periods before the last mark, so both ends sit at the same phase of the
    rollout-update cycle."""
    marks = [m for m in marks if m[0] > learning_starts]
    if len(marks) < 3:
        raise RuntimeError("the warm-up ended before learning had run for a while: raise --warmup-s")
    end = marks[-1]
    t_from = marks[0][1] + (end[1] - marks[0][1]) / 3
    start = next((m for m in marks if m[1] >= t_from and (end[0] - m[0]) % period == 0 and m[0] < end[0]), None)
    if start is None or end[1] <= start[1]:
        raise RuntimeError("warm-up too short to measure a speed over a whole iteration: raise --warmup-s")
    return (end[0] - start[0]) / (end[1] - start[1])


def iteration_steps(cfg) -> int:
    """Env steps of one rollout-update cycle: num_steps x num_envs for PPO and PQN; 1 for DQN, which
    updates every few steps."""
    return cfg.num_steps * cfg.num_envs if hasattr(cfg, "num_steps") else 1


# --------------------------------------------------------------------------- rlbase

def rlbase_train(cfg, seconds: float, run_dir: str | None, warmup: bool = False) -> tuple[dict[str, Any], list[tuple[int, float]]]:
    """Train `cfg` until `seconds` have passed (or its steps are done); also the (step, time) marks.
    The clock starts before the env and model are built, or for a `warmup` at the first step."""
    from rlbase.lifecycle import train_config

    marks: list[tuple[int, float]] = []
    start = time.perf_counter()

    def on_step(run) -> bool:
        now = time.perf_counter()
        marks.append((run.global_step, now))
        return now - (marks[0][1] if warmup else start) < seconds

    out = train_config(cfg, run_dir=run_dir, callbacks=on_step)
    return out, marks


def work_rlbase(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from rlbase.evaluate import evaluate

    set_threads(job)
    rl_algo = ALGOS[job["algo"]][0]
    cfg = config_from_dict(rl_algo, job["config"])
    warm = budget_config(cfg, 10_000_000)
    warm = dataclasses.replace(warm, **({"learning_starts": job["warmup_learning_starts"]} if rl_algo == "dqn" else {}))
    _, marks = rlbase_train(warm, job["warmup_s"], None, warmup=True)
    rate = learning_rate_of(marks, getattr(warm, "learning_starts", 0), iteration_steps(warm))
    cfg = budget_config(cfg, int(rate * job["budget_s"]))
    with tempfile.TemporaryDirectory(prefix="rlbase-bench-learning-") as tmp:
        start = time.perf_counter()
        out, _ = rlbase_train(cfg, job["budget_s"], tmp)
        wall = time.perf_counter() - start
        report = evaluate(tmp, episodes=job["games"], device=torch.device("cpu"), seed=10_000 + cfg.seed)
    scores = [e["return"] for e in report["episodes"]]
    return {"wall_s": wall, "warmup_rate": rate, "scheduled_steps": cfg.total_timesteps, "steps": out["global_step"],
            "scores": scores, "learning_starts": getattr(cfg, "learning_starts", None)}


# --------------------------------------------------------------------------- Stable-Baselines3

def sb3_model(algo: str, cfg, env):
    from stable_baselines3 import PPO

    if algo == "dqn":
        return sb3_dqn(cfg, env, 1)[0]
    kwargs, _ = sb3_ppo_kwargs(cfg)
    return PPO(env=env, device="cpu", seed=cfg.seed, verbose=0, **kwargs)


def sb3_train(algo: str, cfg, seconds: float, warmup: bool = False):
    """SB3 `algo` with `cfg`'s values, trained until `seconds` have passed (model setup included;
    for a `warmup`, from the first step)."""
    from stable_baselines3.common.callbacks import BaseCallback

    env = sb3_vec_env(cfg, 1 if algo == "dqn" else cfg.num_envs)
    marks: list[tuple[int, float]] = []
    start = time.perf_counter()

    class Clock(BaseCallback):
        def _on_step(self) -> bool:
            now = time.perf_counter()
            marks.append((int(self.model.num_timesteps), now))
            return now - (marks[0][1] if warmup else start) < seconds

    model = sb3_model(algo, cfg, env)
    model.learn(total_timesteps=cfg.total_timesteps, callback=Clock())
    env.close()
    return model, marks


def sb3_play(model, algo: str, cfg, games: int, seed: int) -> list[float]:
    """Full-game scores of `model` on SB3's Atari stack with rlbase's evaluation settings."""
    import numpy as np
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    env = make_atari_env(cfg.env_id, n_envs=1, seed=seed,
                         env_kwargs={"frameskip": 1, "repeat_action_probability": cfg.sticky_actions,
                                     "max_num_frames_per_episode": cfg.atari_max_episode_steps * 4},
                         wrapper_kwargs={"noop_max": cfg.noop_max, "frame_skip": 4, "screen_size": 84,
                                         "terminal_on_life_loss": False, "clip_reward": False})
    env = VecFrameStack(env, n_stack=cfg.frame_stack)
    rng = np.random.default_rng(seed)
    scores: list[float] = []
    obs = env.reset()
    while len(scores) < games:
        if algo == "dqn":
            action, _ = model.predict(obs, deterministic=True)
            if rng.random() < cfg.eval_epsilon:
                action = np.array([env.action_space.sample()])
        else:
            action, _ = model.predict(obs, deterministic=cfg.eval_deterministic)
        obs, _, dones, infos = env.step(action)
        for done, info in zip(dones, infos):
            if done and "episode" in info:  # Monitor's record: the whole game, unclipped
                scores.append(float(info["episode"]["r"]))
    env.close()
    return scores


def work_sb3(job: dict[str, Any]) -> dict[str, Any]:
    set_threads(job)
    algo = job["algo"]
    cfg = config_from_dict(algo, job["config"])
    warm = budget_config(cfg, 10_000_000)
    if algo == "dqn":
        warm = dataclasses.replace(warm, learning_starts=job["warmup_learning_starts"])
    _, marks = sb3_train(algo, warm, job["warmup_s"], warmup=True)
    rate = learning_rate_of(marks, getattr(warm, "learning_starts", 0), iteration_steps(warm))
    cfg = budget_config(cfg, int(rate * job["budget_s"]))
    start = time.perf_counter()
    model, _ = sb3_train(algo, cfg, job["budget_s"])
    wall = time.perf_counter() - start
    scores = sb3_play(model, algo, cfg, job["games"], 10_000 + cfg.seed)
    return {"wall_s": wall, "warmup_rate": rate, "scheduled_steps": cfg.total_timesteps,
            "steps": int(model.num_timesteps), "scores": scores, "learning_starts": getattr(cfg, "learning_starts", None)}


WORKERS = {"rlbase": work_rlbase, "sb3": work_sb3}


# --------------------------------------------------------------------------- plan and report

def plan(args) -> list[dict[str, Any]]:
    budget_s = 20.0 if args.quick else args.minutes * 60.0
    warmup_s = 15.0 if args.quick else args.warmup_s
    games = 1 if args.quick else args.games
    jobs = []
    for seed in args.seeds:
        for algo in args.algos:
            libraries = ["rlbase"] + (["sb3"] if algo in SB3_ALGOS and not args.rlbase_only else [])
            for library in libraries:
                cfg = base_config(algo, seed)
                jobs.append({"kind": library, "algo": algo, "seed": seed, "config": dataclasses.asdict(cfg),
                             "budget_s": budget_s, "warmup_s": warmup_s,
                             "warmup_learning_starts": 200 if args.quick else 1_000, "warmup_window": WARMUP_WINDOW,
                             "games": games, "threads": args.threads})
    return jobs


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


def ratio(a: list[float], b: list[float]) -> str:
    """mean(a) / mean(b), or n/a when mean(b) is not positive (an untrained agent scores 0)."""
    den = statistics.fmean(b)
    return f"{statistics.fmean(a) / den:.2f}x" if den > 0 else "n/a (denominator 0)"


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    rows, summary = [], {}
    for r in results:
        rows.append([r["algo"], r["kind"], str(r["seed"]), f"{r['warmup_rate']:.0f}", f"{r['scheduled_steps']:,}",
                     f"{r['steps']:,}", f"{r['wall_s']:.0f}", mean_std(r["scores"])])
    print_table(["algo", "library", "seed", "warm-up steps/s", "scheduled steps", "steps done", "train s",
                 "score (mean ± std over games)"], rows)
    print()
    for algo in dict.fromkeys(r["algo"] for r in results):
        for library in ("rlbase", "sb3"):
            seed_means = [statistics.fmean(r["scores"]) for r in results if r["algo"] == algo and r["kind"] == library]
            if seed_means:
                summary[f"{algo}/{library}"] = seed_means
    sb3_ppo = summary.get("ppo/sb3")
    lines = []
    for key, means in summary.items():
        algo, library = key.split("/")
        line = f"{algo:8s} {library:7s} mean over {len(means)} seed(s): {mean_std(means)}"
        other = summary.get(f"{algo}/sb3") if library == "rlbase" else None
        if other:
            line += f"; rlbase / SB3 = {ratio(means, other)}"
        if library == "rlbase" and sb3_ppo:
            line += f"; / SB3 PPO = {ratio(means, sb3_ppo)}"
        lines.append(line)
    print("\n".join(lines))
    return {"seed_means": summary, "lines": lines}


def job_key(job: dict[str, Any]) -> str:
    """What makes two jobs the same run: every planned field (algorithm, library, seed, budget, config...)."""
    return json.dumps({k: job[k] for k in PLANNED}, sort_keys=True, default=str)


PLANNED = ("kind", "algo", "seed", "config", "budget_s", "warmup_s", "warmup_learning_starts", "warmup_window", "games",
           "threads")
"""The fields `plan` gives a job (a result holds these plus what it measured)."""


def read_results(path: str) -> list[dict[str, Any]]:
    """The results recorded in the JSONL file `path` (none if it does not exist). A line that is not a
    whole JSON object (a run killed while its line was written) is skipped, with a message."""
    if not os.path.exists(path):
        return []
    results = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and all(k in entry for k in PLANNED) and _measured(entry):
                results.append(entry)
            elif line.strip():
                print(f"{path}:{number}: not a whole result, skipped")
    return results


def _measured(entry: dict[str, Any]) -> bool:
    """Whether a recorded result holds the numbers the report reads, of the right types."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return (all(number(entry.get(k)) for k in ("wall_s", "warmup_rate", "scheduled_steps", "steps"))
            and isinstance(entry.get("scores"), list) and bool(entry["scores"]) and all(map(number, entry["scores"])))


def machine_probe() -> dict[str, Any]:
    """The CPU's model and the seconds of a fixed one-thread workload (a Python loop and small matmuls),
    so that results recorded in different sittings, perhaps on machines of different speed, say so:
    compare a library's score with the other's from the same machine."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for _ in range(3):  # the fastest of three
            a = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
            start = time.perf_counter()
            total = 0
            for i in range(2_000_000):
                total += i
            for _ in range(200):
                a = torch.tanh(a @ a)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {"cpu": model, "probe_s": round(min(times), 3)}


def append_result(path: str, result: dict[str, Any], revision: str | None,
                  machine: dict[str, Any] | None = None) -> None:
    """One line per finished run, flushed to disk before the next run starts (on a line of its own
    after a partial line left by a run killed while writing)."""
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        line = {**result, "rlbase_revision": revision, **({"machine": machine} if machine else {})}
        fh.write((json.dumps(line, default=str) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["dqn", "ppo"], choices=list(ALGOS),
                        help="rows (default: dqn ppo); rainbow and pqn run for rlbase only")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of each training run")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="seconds of the speed-measuring warm-up")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--games", type=int, default=10, help="full games played by each trained agent")
    parser.add_argument("--rlbase-only", action="store_true", help="skip the SB3 runs")
    parser.add_argument("--results", metavar="FILE.jsonl",
                        help="append each finished run to FILE; with an existing FILE, run only the jobs not in it")
    args = parse_arguments(parser, argv, WORKERS)
    meta = start_invocation(__file__, argv, args, minutes=args.minutes)
    jobs = plan(args)
    recorded = {job_key(r): r for r in read_results(args.results)} if args.results else {}
    done = [recorded[job_key(j)] for j in jobs if job_key(j) in recorded]
    todo = [j for j in jobs if job_key(j) not in recorded]
    if args.results:
        others = len(recorded) - len(done)
        also = f" ({others} other results in it, not planned by this call)" if others else ""
        print(f"{args.results}: {len(done)} of the {len(jobs)} planned runs already recorded{also}; "
              f"running {len(todo)}\n")
    meta["machine"] = machine_probe()
    print(f"machine: {meta['machine']['cpu']}; probe {meta['machine']['probe_s']:.2f} s (a fixed one-thread "
          "workload: results from sittings with another probe time ran on a machine of another speed)\n")
    on_result = (lambda r: append_result(args.results, r, meta["rlbase_revision"], meta["machine"])) \
        if args.results else None
    results = done + run_jobs(todo, lambda j: f"{j['algo']} {j['kind']} seed {j['seed']}", __file__, WORKERS,
                              args.in_process, meta, on_result)
    order = {job_key(j): i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[job_key(r)])
    summary = report(results)
    if args.json:
        configs = {f"{j['algo']}/seed{j['seed']}": j["config"] for j in jobs}
        write_json(args.json, meta, [], configs, results, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
