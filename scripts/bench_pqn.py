"""PQN vs PPO on rlbase's own envs: wall-clock and env steps to a solved policy (issue 16, part 5).

    python scripts/bench_pqn.py                          # both sections, seeds 0-4, both algos
    python scripts/bench_pqn.py --sections cartpole --seeds 0 1 2 --json /tmp/bench_pqn.json

Sections (each trains both agents with their presets, in the same invocation, one run at a time):
- `cartpole`: rlbase/CartPole-v1, until the first evaluation whose mean return is >= 475
  (--cartpole-eval-episodes greedy / deterministic episodes every --cartpole-eval-every steps);
- `maze`: rlbase/Maze-v0 at --maze-size (grid observations), until the first evaluation on
  held-out mazes (the eval split: levels never seen in training) whose success rate (or mean
  return, --maze-metric) is >= --maze-threshold (--maze-eval-episodes episodes, each agent's
  preset evaluation policy: PPO samples, PQN is epsilon-greedy with 0.05), within --maze-steps.
  The random-walk floor on the same mazes is printed: on 7x7 mazes it succeeds about two times
  in three, so a success threshold there separates little.

Evaluation runs after the update that crosses each cadence point and at the end of training,
from a callback of the run lifecycle (the policy is built from the current weights; torch's RNG is
forked so training is unchanged), and its time is excluded from the clock (paused). The clock
includes model set-up, not env creation. A run stops once solved. Per algo: median time and
median steps to solve over the seeds (an unsolved seed counts as infinitely slow), and the ratio
PPO / PQN of the medians. The load average at the start and end is printed: the machine may be
shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from benchlib import (config_from_dict, load_average, parse_arguments, print_table, rlbase_training_threads,
                      rlbase_vec_env, run_jobs, set_threads, write_json)
from pg_solve import PausableClock, median_or_none

CARTPOLE, MAZE = "rlbase/CartPole-v1", "rlbase/Maze-v0"
ALGOS = ("pqn", "ppo")


# --------------------------------------------------------------------------- the worker

def work_solve(job: dict[str, Any]) -> dict[str, Any]:
    """Train `job["algo"]` until an evaluation reaches the threshold (or the budget ends)."""
    import torch
    from rlbase.evaluate import play_episodes
    from rlbase.lifecycle import train_config

    threads = set_threads(job)
    cfg = config_from_dict(job["algo"], job["config"])
    eval_env = rlbase_vec_env(cfg, training=False, num_envs=min(job["eval_episodes"], 100))
    every, metric, threshold = job["eval_every"], job["metric"], job["threshold"]
    clock = PausableClock()
    evals: list[dict[str, Any]] = []
    state = {"next_eval": every}

    def after_update(run) -> bool | None:
        """Evaluate at the cadence and at the last step; False (solved) stops training."""
        if run.global_step < state["next_eval"] and not run.done:
            return None
        train_s = clock.pause()
        start = time.perf_counter()
        policy = run.agent.load_policy(cfg, run.tensors(weights_only=True), eval_env.single_observation_space,
                                       eval_env.single_action_space, eval_env.device)
        outcomes: dict[str, list[float]] = {}
        with torch.random.fork_rng(devices=[]):
            returns, _ = play_episodes(eval_env, policy, job["eval_episodes"], job["eval_seed"], outcomes=outcomes)
        row = {"step": run.global_step, "train_s": train_s, "mean_return": sum(returns) / len(returns),
               "eval_s": time.perf_counter() - start}
        if "success" in outcomes:
            row["success"] = sum(outcomes["success"]) / len(outcomes["success"])
        evals.append(row)
        while state["next_eval"] <= run.global_step:
            state["next_eval"] += every
        if row[metric] >= threshold:
            return False  # solved: the clock stays paused
        clock.start()
        return None

    env = rlbase_vec_env(cfg)
    train_threads = rlbase_training_threads(cfg, env)
    clock.start()
    out = train_config(cfg, env, callbacks=after_update)
    if clock.started is not None:
        clock.pause()
    env.close()
    eval_env.close()
    solved = next((e for e in evals if e[metric] >= threshold), None)
    return {"solved": solved is not None, "solve_step": solved["step"] if solved else None,
            "solve_s": solved["train_s"] if solved else None, "train_s": clock.elapsed, "steps": out["global_step"],
            "last": evals[-1][metric] if evals else None, "evals": evals, "threads": threads,
            "train_threads": train_threads, "wall_s": clock.elapsed + sum(e["eval_s"] for e in evals)}


WORKERS = {"solve": work_solve}


# --------------------------------------------------------------------------- plan and report

def preset_config(algo: str, env_id: str, overrides: dict[str, Any], observations: str):
    """The config `rlbase train ALGO --env ENV_ID` would run (the preset, including its block for
    this kind of observations, e.g. the maze's grid-only mlp), on the CPU, then `overrides`."""
    from rlbase.agents import get_agent
    from rlbase.config import resolve_config

    return resolve_config(get_agent(algo).Config, algo, {"env_id": env_id, "device": "cpu", **overrides},
                          observations=observations)


def plan_jobs(args) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    configs: dict[str, Any] = {}
    sections = {
        "cartpole": (CARTPOLE, {}, "vector", "mean_return", 475.0, args.cartpole_eval_every, args.cartpole_eval_episodes),
        "maze": (MAZE, {"env_kwargs": {"size": args.maze_size}, "total_timesteps": args.maze_steps}, "grid",
                 args.maze_metric,
                 args.maze_threshold, args.maze_eval_every, args.maze_eval_episodes),
    }
    extra = {"pqn": json.loads(args.pqn_set), "ppo": json.loads(args.ppo_set)}
    for section in args.sections:
        env_id, overrides, kind, metric, threshold, every, episodes = sections[section]
        if args.quick:
            overrides = {**overrides, "total_timesteps": 4096}
            every, episodes = 2048, 4
        for seed in args.seeds:
            for algo in args.algos:
                cfg = preset_config(algo, env_id, {"seed": seed, **overrides, **extra[algo]}, kind)
                cfg_d = dataclasses.asdict(cfg)
                configs.setdefault(f"{section} {algo}", {**cfg_d, "seed": list(args.seeds)})
                jobs.append({"kind": "solve", "section": section, "algo": algo, "env_id": env_id, "seed": seed,
                             "config": cfg_d, "metric": metric, "threshold": threshold, "eval_every": every,
                             "eval_episodes": episodes, "eval_seed": 1000 + seed, "threads": args.threads})
    return jobs, configs


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for section in dict.fromkeys(r["section"] for r in results):
        runs = [r for r in results if r["section"] == section]
        metric, threshold = runs[0]["metric"], runs[0]["threshold"]
        print(f"{runs[0]['env_id']}: first evaluation with {metric} >= {threshold:g} "
              f"({runs[0]['eval_episodes']} episodes every {runs[0]['eval_every']:,} steps; evaluation time excluded)")
        rows = [[r["algo"], str(r["seed"]), f"{r['solve_step']:,}" if r["solved"] else "not solved",
                 f"{r['solve_s']:.1f}" if r["solved"] else "-", f"{r['steps']:,}", f"{r['train_s']:.1f}",
                 f"{r['last']:.3g}" if r["last"] is not None else "-"] for r in runs]
        print_table(["algo", "seed", "solved at step", "train s to solve", "steps trained", "train s",
                     f"last eval {metric}"], rows)
        s = summary.setdefault(section, {})
        for algo in dict.fromkeys(r["algo"] for r in runs):
            mine = [r for r in runs if r["algo"] == algo]
            med_s = median_or_none([r["solve_s"] for r in mine])
            med_steps = median_or_none([r["solve_step"] for r in mine])
            solved = sum(r["solved"] for r in mine)
            s[algo] = {"median_solve_s": med_s, "median_solve_steps": med_steps, "solved": f"{solved}/{len(mine)}"}
            shown = f"{med_s:.1f} s, {med_steps:,.0f} steps" if med_s is not None else "n/a (not solved)"
            print(f"{runs[0]['env_id']}: {algo} median time to solve {shown} ({solved}/{len(mine)} seeds solved)")
        if s.get("pqn", {}).get("median_solve_s") and s.get("ppo", {}).get("median_solve_s"):
            s["ppo_over_pqn_time"] = s["ppo"]["median_solve_s"] / s["pqn"]["median_solve_s"]
            s["ppo_over_pqn_steps"] = s["ppo"]["median_solve_steps"] / s["pqn"]["median_solve_steps"]
            print(f"{runs[0]['env_id']}: PPO / PQN median time to solve = {s['ppo_over_pqn_time']:.2f}x "
                  f"(steps: {s['ppo_over_pqn_steps']:.2f}x; > 1: PQN faster)")
        print()
    return summary


def random_walk(args) -> dict[str, float]:
    """Held-out success and mean return of uniformly random actions on the maze (the floor a
    threshold must clear), on the same evaluation seeds as the runs."""
    import torch
    from rlbase.envs import make_vec_env
    from rlbase.evaluate import play_episodes

    env = make_vec_env(MAZE, min(args.maze_eval_episodes, 100), torch.device("cpu"),
                       env_kwargs={"size": args.maze_size}, split="eval")
    rows = []
    for seed in args.seeds:
        outcomes: dict[str, list[float]] = {}
        returns, _ = play_episodes(env, lambda obs, g: torch.randint(4, (obs.shape[0],), generator=g),
                                   args.maze_eval_episodes, 1000 + seed, outcomes=outcomes)
        rows.append((sum(outcomes["success"]) / len(returns), sum(returns) / len(returns)))
    env.close()
    return {"success": sum(r[0] for r in rows) / len(rows), "mean_return": sum(r[1] for r in rows) / len(rows)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=("cartpole", "maze"), default=["cartpole", "maze"])
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--cartpole-eval-every", type=int, default=5_000)
    parser.add_argument("--cartpole-eval-episodes", type=int, default=10)
    parser.add_argument("--maze-size", type=int, default=7)
    parser.add_argument("--maze-steps", type=int, default=1_000_000, help="training budget of each maze run")
    parser.add_argument("--maze-metric", choices=("success", "mean_return"), default="success",
                        help="what --maze-threshold applies to: the held-out success rate, or the mean return "
                             "(1 - 0.9 * steps / max_steps at the exit: faster exits score higher)")
    parser.add_argument("--maze-threshold", type=float, default=0.7, help="the value of --maze-metric that counts "
                        "as solved (a random walk: ~0.67 success, ~0.41 mean return on 7x7 mazes)")
    parser.add_argument("--maze-eval-every", type=int, default=100_000)
    parser.add_argument("--maze-eval-episodes", type=int, default=100)
    parser.add_argument("--pqn-set", default="{}", help="JSON of config overrides for every PQN run")
    parser.add_argument("--ppo-set", default="{}", help="JSON of config overrides for every PPO run")
    args = parse_arguments(parser, argv, WORKERS)
    import sys

    meta = {"command": "python scripts/bench_pqn.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "load_average_start": load_average(), "threads": args.threads}
    print(f"command: {meta['command']}\nload average at start: {meta['load_average_start']}\n")
    jobs, configs = plan_jobs(args)
    results = run_jobs(jobs, lambda j: f"{j['algo']} {j['env_id']} seed {j['seed']}", __file__, WORKERS,
                       args.in_process, meta)
    summary = report(results)
    if "maze" in args.sections:
        floor = random_walk(args)
        summary["maze_random_walk"] = floor
        print(f"{MAZE} size {args.maze_size}: uniformly random actions succeed on {floor['success']:.1%} of the "
              f"held-out mazes (mean return {floor['mean_return']:.3f}), same evaluation seeds")
    if args.json:
        write_json(args.json, meta, [], configs, results, summary)


if __name__ == "__main__":
    main()
