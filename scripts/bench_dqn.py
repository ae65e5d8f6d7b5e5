"""DQN throughput benchmark: rlbase vs Stable-Baselines3, env speed, and the learner's compute ceiling.

Run from the repository root (CPU only; every measurement, both libraries, uses the same
torch.set_num_threads, os.cpu_count() unless --threads says otherwise):

    python scripts/bench_dqn.py                      # CartPole-v1 and ALE/Breakout-v5
    python scripts/bench_dqn.py --only cartpole      # one family
    python scripts/bench_dqn.py --quick              # smoke test: tiny step counts, numbers meaningless
    python scripts/bench_dqn.py --quick --threads 1 --in-process   # fastest smoke test (for tests)
    python scripts/bench_dqn.py --repeats 3 --json bench.json
    python scripts/bench_dqn.py --threads 1          # on a machine shared with other CPU-heavy jobs

SB3's Atari wrappers need OpenCV (`pip install opencv-python-headless`); without it the SB3 and
Gymnasium Atari rows are skipped with a note. On a machine whose cores are busy with other work,
torch's intra-op threads can slow small networks down many times over (threads spin-wait for
each other); compare runs made with the same --threads on a quiet machine.

Everything is measured in one invocation; each measurement runs in a fresh subprocess of this
script, so no run inherits another's memory, threads or warm caches. `--in-process` runs them all
in this process instead (faster to start, for smoke tests: there the first run also pays the
process's one-time warm-up costs). The env-speed and ceiling probes live in scripts/dqn_probes.py.

1. Training steps/s, rlbase DQN vs SB3 DQN with identical hyperparameters. The rlbase config is
   the preset (`rlbase/presets/dqn.yaml`) with `learning_starts` = 10% of the steps (so the run is
   short and 90% of it is learning); SB3 gets the same values. Atari uses buffer_size=100_000 for
   both libraries: the buffer size changes memory, not speed; speed is set by batch_size and
   train_freq. The clock covers model setup + training (rlbase `train()`; SB3 `DQN(...)` +
   `learn()`), not env creation; steps/s = env steps (summed over envs) / wall seconds.
   - rlbase counts `train_freq` in env steps summed over all envs; SB3 counts calls of
     `vec_env.step` (n_envs transitions each). Equal updates per transition: SB3 does g updates
     every f vec steps with g/f = gradient_steps * n_envs / train_freq (reduced fraction). Every
     run's update count is printed (equal at the default sizes; tiny runs may differ by an update
     or two: rlbase starts learning at `>= learning_starts` transitions once its replay can
     sample, and accrues fractional updates per vec step; SB3 starts at `> learning_starts`).
   - `target_update_interval` is in env steps over all envs in both libraries (SB3 syncs every
     `target_update_interval // n_envs` vec steps, i.e. rounded down to whole vec steps).
     `n_step` maps to SB3's `n_steps`; a preset's dueling head or prioritized replay (SB3 has
     neither) is turned off for every run, with a note. A preset's `anneal_lr` (CartPole-v1) gives
     SB3 a learning-rate schedule linear to 0 as well.
   - SB3 DQN is not Double DQN, so rlbase runs with `double_q=False` (the headline ratio, same
     algorithm) and with its default `double_q=True` (one extra forward pass per update).
   - SB3 runs with n_envs=1 (how SB3 DQN is usually run) and with rlbase's num_envs.
   - Atari for SB3: `make_atari_env` + `VecFrameStack(4)`, with `frameskip=1` passed to the v5 env,
     because the v5 ids already skip 4 frames and SB3's AtariWrapper skips 4 more (16 per step
     otherwise). Sticky actions (0.25, per frame), 30 no-ops, FIRE reset, 84x84 grey, life loss
     as terminal and reward clipping then match rlbase's env.
2. Raw env steps/s with random actions: rlbase's `make_vec_env` (torch actions), Gymnasium's own
   sync vector env, SB3's VecEnv and, for Atari, ale-py's C++ vector env that rlbase wraps.
3. The learner's compute ceiling: a plain NatureCNN (or the CartPole MLP) written here as a user
   would, default memory format, forward + Huber loss + backward + Adam step on random inputs
   (uint8 frames scaled /255 for Atari), samples/s from the fastest of 5 timing windows.
   ceiling steps/s = samples/s / (batch_size * gradient_steps / train_freq). A second figure adds
   the target network's no-grad forward pass that every DQN update also needs. The "% of compute
   ceiling" line compares a run's wall time with the time this bare learner needs for the same
   number of updates (so the no-update warm-up 10% does not flatter the run); acting and env time
   are not in the ceiling. The "env + learner bound" adds rlbase's measured env time to that.

Timings on a shared machine are noisy: the load average is printed at start and end; use
--repeats to report medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from typing import Any

from benchlib import (FAMILIES, config_from_dict, fmt_rate, parse_arguments, preset_config, print_table,
                      rlbase_vec_env, round_up, run_jobs, sb3_vec_env, set_threads, start_invocation, write_json)
from dqn_probes import work_ceiling, work_env


# --------------------------------------------------------------------------- configs

def resolve_rlbase_config(env_id: str, steps: int, double_q: bool, buffer_size: int | None):
    """The rlbase DQN preset for `env_id`, shortened to `steps` with learning_starts = 10%."""
    overrides: dict[str, Any] = {"total_timesteps": steps, "learning_starts": steps // 10, "double_q": double_q}
    if buffer_size is not None:
        overrides["buffer_size"] = buffer_size
    cfg = preset_config("dqn", env_id, overrides)
    # SB3's DQN has neither a dueling head nor prioritized replay: a preset that turns them on is
    # benchmarked with them off, so both libraries run the same algorithm (reported in the output).
    return dataclasses.replace(cfg, dueling=False, prioritized_replay=False), {
        k for k in ("dueling", "prioritized_replay") if getattr(cfg, k)}


def sb3_schedule(train_freq: int, gradient_steps: int, n_envs: int) -> tuple[int, int]:
    """SB3 (train_freq in vec steps, gradient_steps) with rlbase's updates per transition.

    rlbase: `gradient_steps` updates per `train_freq` transitions (summed over envs).
    SB3: g updates per f calls of vec_env.step = per f * n_envs transitions.
    g / (f * n_envs) == gradient_steps / train_freq  <=>  g / f == gradient_steps * n_envs / train_freq.
    """
    num, den = gradient_steps * n_envs, train_freq
    d = math.gcd(num, den)
    return den // d, num // d


# --------------------------------------------------------------------------- workers (one measurement each)

def work_train_rlbase(job: dict[str, Any]) -> dict[str, Any]:
    from rlbase.lifecycle import train_config

    threads = set_threads(job)
    cfg = config_from_dict("dqn", job["config"])
    env = rlbase_vec_env(cfg)
    start = time.perf_counter()
    out = train_config(cfg, env)
    wall = time.perf_counter() - start
    env.close()
    return {"steps": out["global_step"], "wall_s": wall, "updates": out["num_updates"], "threads": threads}


def sb3_dqn(cfg, env, n_envs: int):
    """SB3 DQN on `env` (an SB3 VecEnv of `n_envs`) with rlbase's hyperparameters from `cfg`, and the
    (train_freq, gradient_steps) it got: the same updates per transition (`sb3_schedule`)."""
    from stable_baselines3 import DQN

    train_freq, gradient_steps = sb3_schedule(cfg.train_freq, cfg.gradient_steps, n_envs)
    atari = cfg.env_id.startswith("ALE/")
    model = DQN(
        "CnnPolicy" if atari else "MlpPolicy", env,
        # --anneal-lr: SB3's schedule of the remaining progress (1 -> 0), linear to 0 as rlbase's.
        learning_rate=(lambda remaining: cfg.learning_rate * remaining) if cfg.anneal_lr else cfg.learning_rate,
        buffer_size=cfg.buffer_size, learning_starts=cfg.learning_starts,
        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
        train_freq=(train_freq, "step"), gradient_steps=gradient_steps,
        target_update_interval=cfg.target_update_interval, exploration_fraction=cfg.exploration_fraction,
        exploration_initial_eps=cfg.exploration_initial_eps, exploration_final_eps=cfg.exploration_final_eps,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf,
        optimize_memory_usage=False,
        # CnnPolicy: NatureCNN (512 features) then a linear head, as rlbase's nature_cnn backbone + head.
        policy_kwargs={"net_arch": [] if atari else list(cfg.hidden_sizes), "optimizer_kwargs": {"eps": cfg.adam_eps}},
        device="cpu", seed=cfg.seed, verbose=0,
        # n-step returns (NStepReplayBuffer) exist in SB3 >= 2.7; keep older SB3 working for n_step=1.
        **({"n_steps": cfg.n_step} if cfg.n_step > 1 else {}),
    )
    return model, (train_freq, gradient_steps)


def work_train_sb3(job: dict[str, Any]) -> dict[str, Any]:
    threads = set_threads(job)
    cfg = config_from_dict("dqn", job["config"])
    env = sb3_vec_env(cfg, job["n_envs"])
    start = time.perf_counter()
    model, (train_freq, gradient_steps) = sb3_dqn(cfg, env, job["n_envs"])
    model.learn(total_timesteps=cfg.total_timesteps)
    wall = time.perf_counter() - start
    env.close()
    return {"steps": int(model.num_timesteps), "wall_s": wall, "updates": int(model._n_updates), "threads": threads,
            "sb3_train_freq": train_freq, "sb3_gradient_steps": gradient_steps}


WORKERS = {"train_rlbase": work_train_rlbase, "train_sb3": work_train_sb3, "env": work_env, "ceiling": work_ceiling}


# --------------------------------------------------------------------------- the benchmark plan

def plan(args) -> tuple[list[dict[str, Any]], list[str]]:
    """Every measurement of this invocation, in the order they run, and notes about what was left out."""
    import importlib.util

    jobs: list[dict[str, Any]] = []
    notes: list[str] = []
    # SB3's Atari wrappers (WarpFrame) and Gymnasium's AtariPreprocessing resize frames with OpenCV.
    have_cv2 = importlib.util.find_spec("cv2") is not None
    families = [args.only] if args.only else list(FAMILIES)
    for family in families:
        env_id = FAMILIES[family]
        atari = family == "atari"
        steps = args.atari_steps if atari else args.cartpole_steps
        buffer_size = args.atari_buffer if atari else None
        base, forced_off = resolve_rlbase_config(env_id, steps, False, buffer_size)
        if forced_off:
            notes.append(f"{env_id}: the preset turns on {', '.join(sorted(forced_off))}, which SB3's DQN lacks; "
                         "benchmarked with it off in every rlbase run")
        # Whole rollouts for every variant, so all runs do exactly `steps` env steps.
        steps = round_up(steps, math.lcm(base.num_envs, base.train_freq))
        configs = {dq: dataclasses.asdict(resolve_rlbase_config(env_id, steps, dq, buffer_size)[0])
                   for dq in (False, True)}
        n = base.num_envs
        common = {"env_id": env_id, "family": family, "threads": args.threads}
        sb3_ok = have_cv2 or not atari
        if not sb3_ok:
            notes.append(f"{env_id}: SB3 and Gymnasium Atari runs SKIPPED: their Atari preprocessing needs OpenCV "
                         "(pip install opencv-python-headless, or stable-baselines3[extra])")

        env_impls = ["rlbase"] + (["gymnasium", "sb3"] if sb3_ok else []) + (["ale_py"] if atari else [])
        for impl in env_impls:
            jobs.append({**common, "kind": "env", "impl": impl, "num_envs": n, "steps": steps,
                         "config": configs[False], "label": f"env {impl}"})

        train_jobs = [
            {**common, "kind": "train_rlbase", "library": "rlbase", "variant": "DQN (double_q=False)",
             "key": "rlbase", "config": configs[False]},
            {**common, "kind": "train_rlbase", "library": "rlbase", "variant": "Double DQN (default)",
             "key": "rlbase_double", "config": configs[True]},
        ]
        for sb3_n in sorted({1, n}) if sb3_ok else []:
            f, g = sb3_schedule(base.train_freq, base.gradient_steps, sb3_n)
            train_jobs.append({**common, "kind": "train_sb3", "library": "SB3", "n_envs": sb3_n,
                               "variant": f"DQN n_envs={sb3_n} (train_freq={f}, gradient_steps={g})",
                               "key": f"sb3_n{sb3_n}", "config": configs[False]})
        for rep in range(args.repeats):  # interleaved, so slow drifts in machine load hit every variant alike
            for job in train_jobs:
                jobs.append({**job, "repeat": rep, "label": f"{job['library']} {job['variant']}"})

        for with_target in (False, True):
            jobs.append({**common, "kind": "ceiling", "with_target": with_target, "seconds": args.ceiling_seconds,
                         "config": configs[False], "label": "ceiling" + (" + target fwd" if with_target else "")})
    return jobs, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cartpole-steps", type=int, default=20_000, help="env steps per CartPole-v1 run")
    parser.add_argument("--atari-steps", type=int, default=4_000, help="env steps per ALE/Breakout-v5 run")
    parser.add_argument("--atari-buffer", type=int, default=100_000,
                        help="replay size for both libraries on Atari (speed depends on batch size/train freq)")
    parser.add_argument("--only", choices=sorted(FAMILIES), help="benchmark one env family only")
    parser.add_argument("--repeats", type=int, default=1, help="training runs per variant (median reported)")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="timed seconds per compute-ceiling probe")
    args = parse_arguments(parser, argv, WORKERS)  # a --worker subprocess runs its measurement and exits here

    if args.quick:
        args.cartpole_steps, args.atari_steps = 1_000, 200
        args.atari_buffer, args.ceiling_seconds, args.repeats = 10_000, 0.3, 1
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")

    meta = start_invocation(__file__, argv, args)
    jobs, notes = plan(args)
    for note in notes:
        print("NOTE: " + note)
    results = run_jobs(jobs, lambda job: f"{job['env_id']}: {job['label']}", __file__, WORKERS, args.in_process, meta)
    summary = report(args, jobs, results)
    for note in notes:
        print("NOTE: " + note)
    if args.json:
        configs = {j["env_id"] + (" double_q" if j["config"]["double_q"] else ""): j["config"]
                   for j in jobs if j["kind"] == "train_rlbase"}
        write_json(args.json, meta, notes, configs, results, summary)
    return 0


def report(args, jobs: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the tables and ratio lines; return the same numbers for the JSON file."""
    summary: dict[str, Any] = {}
    env_ids = list(dict.fromkeys(j["env_id"] for j in jobs))

    # Training: median over repeats per variant.
    train: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r["kind"].startswith("train"):
            train.setdefault((r["env_id"], r["key"]), {"runs": [], **r})["runs"].append(r)
    for entry in train.values():
        rates = [run["steps"] / run["wall_s"] for run in entry["runs"]]
        entry["steps_per_s"] = statistics.median(rates)
        entry["wall_s"] = statistics.median(run["wall_s"] for run in entry["runs"])
    rows = []
    for (env_id, _), e in train.items():
        spread = "" if len(e["runs"]) == 1 else f" ({min(r['steps'] / r['wall_s'] for r in e['runs']):,.0f}-" \
                                                f"{max(r['steps'] / r['wall_s'] for r in e['runs']):,.0f})"
        rows.append([env_id, e["library"], e["variant"], f"{e['steps']:,}", f"{e['wall_s']:.2f}",
                     fmt_rate(e["steps_per_s"]) + spread, f"{e['updates']:,}", f"{e['updates'] / e['steps']:.4f}"])
    print("Training throughput (model setup + training; env creation excluded)"
          + (f", median of {args.repeats} runs (min-max)" if args.repeats > 1 else ""))
    print_table(["env", "library", "variant", "steps", "wall s", "steps/s", "updates", "updates/step"], rows)

    # Raw env throughput.
    env_rates: dict[tuple[str, str], float] = {}
    rows = []
    for r in results:
        if r["kind"] == "env":
            rate = r["steps"] / r["wall_s"]
            env_rates[(r["env_id"], r["impl"])] = rate
            rows.append([r["env_id"], r["impl"], str(r["num_envs"]), f"{r['steps']:,}", f"{r['wall_s']:.2f}",
                         fmt_rate(rate)])
    print("Environment throughput, random actions (steps summed over envs)")
    print_table(["env", "implementation", "num_envs", "steps", "wall s", "steps/s"], rows)

    # Compute ceiling.
    ceilings: dict[tuple[str, bool], dict[str, Any]] = {}
    rows = []
    for r in results:
        if r["kind"] == "ceiling":
            cfg = next(j["config"] for j in jobs if j["env_id"] == r["env_id"] and j["kind"] == "ceiling")
            samples_per_step = cfg["batch_size"] * cfg["gradient_steps"] / cfg["train_freq"]
            r["ceiling_steps_per_s"] = r["samples_per_s"] / samples_per_step
            ceilings[(r["env_id"], r["with_target"])] = r
            net = "NatureCNN" if r["env_id"].startswith("ALE/") else "MLP " + "x".join(map(str, cfg["hidden_sizes"]))
            what = "fwd+bwd+Adam" + (" + target fwd" if r["with_target"] else "")
            rows.append([r["env_id"], net, what, str(r["batch"]), fmt_rate(r["samples_per_s"]),
                         f"{samples_per_step:g}", fmt_rate(r["ceiling_steps_per_s"])])
    print("Learner compute ceiling (plain network written in this script, random batches)")
    print_table(["env", "network", "work per update", "batch", "samples/s", "samples/env step", "ceiling steps/s"],
                rows)

    print("Summary")
    for env_id in env_ids:
        ours, double = train.get((env_id, "rlbase")), train.get((env_id, "rlbase_double"))
        if ours is None:
            continue
        n = next(j["config"]["num_envs"] for j in jobs if j["env_id"] == env_id and j["kind"] == "train_rlbase")
        env_summary: dict[str, Any] = {"rlbase_steps_per_s": ours["steps_per_s"],
                                       "rlbase_double_steps_per_s": double["steps_per_s"]}
        parts, parts_double = [], []
        for sb3_n in sorted({1, n}):
            sb3 = train.get((env_id, f"sb3_n{sb3_n}"))
            if sb3 is None:
                continue
            ratio, ratio_double = ours["steps_per_s"] / sb3["steps_per_s"], double["steps_per_s"] / sb3["steps_per_s"]
            label = f"SB3(n_envs={sb3_n})"
            parts.append(f"rlbase/{label} = {ratio:.2f}x")
            parts_double.append(f"rlbase Double DQN/{label} = {ratio_double:.2f}x")
            env_summary[f"ratio_vs_sb3_n{sb3_n}"] = ratio
            env_summary[f"ratio_double_vs_sb3_n{sb3_n}"] = ratio_double
            env_summary[f"sb3_n{sb3_n}_steps_per_s"] = sb3["steps_per_s"]
        counts = [f"rlbase {ours['updates']:,}", f"rlbase Double DQN {double['updates']:,}"] + [
            f"SB3(n_envs={k}) {train[(env_id, f'sb3_n{k}')]['updates']:,}"
            for k in sorted({1, n}) if (env_id, f"sb3_n{k}") in train]
        print(f"{env_id}: gradient updates in {ours['steps']:,} steps: {', '.join(counts)}")
        same_n = " (rlbase also runs 1 env)" if n == 1 else f" (rlbase runs {n} envs)"
        if parts:
            print(f"{env_id}: {', '.join(parts)}{same_n}  [same algorithm, same hyperparameters]")
            print(f"{env_id}: {', '.join(parts_double)}  [rlbase's default Double DQN]")

        plain = ceilings.get((env_id, False))
        if plain is not None:
            # Time the bare learner needs for this run's updates, vs the run's wall time.
            learner_s = ours["updates"] * ours["config"]["batch_size"] / plain["samples_per_s"]
            ceiling_rate = ours["steps"] / learner_s
            frac = ours["steps_per_s"] / ceiling_rate
            print(f"{env_id}: rlbase = {frac:.0%} of compute ceiling ({fmt_rate(ours['steps_per_s'])} steps/s of "
                  f"{fmt_rate(ceiling_rate)}: {ours['updates']:,} updates x {ours['config']['batch_size']} samples "
                  f"at {fmt_rate(plain['samples_per_s'])} samples/s)")
            env_summary.update(ceiling_steps_per_s=ceiling_rate, fraction_of_ceiling=frac)
            if frac > 1.0:
                print(f"{env_id}: WARNING: above 100% means the ceiling probe ran while other processes slowed "
                      "it down; rerun on a quieter machine")
            full = ceilings.get((env_id, True))
            env_rate = env_rates.get((env_id, "rlbase"))
            if full is not None and env_rate is not None:
                # A sequential loop can at best step the env and run the (full) updates back to back.
                bound = ours["steps"] / (ours["steps"] / env_rate
                                         + ours["updates"] * ours["config"]["batch_size"] / full["samples_per_s"])
                print(f"{env_id}: rlbase = {ours['steps_per_s'] / bound:.0%} of the env + learner bound "
                      f"({fmt_rate(bound)} steps/s: rlbase env at {fmt_rate(env_rate)} steps/s, then updates "
                      f"incl. the target forward; acting excluded)")
                env_summary.update(env_plus_learner_bound_steps_per_s=bound)
        if env_id.startswith("ALE/"):
            print(f"{env_id}: buffer_size={ours['config']['buffer_size']:,} for both libraries; speed is set by "
                  f"batch_size={ours['config']['batch_size']} and train_freq={ours['config']['train_freq']}, "
                  "not by the replay size")
        summary[env_id] = env_summary
    print(f"torch threads: {args.threads} for every run (os.cpu_count() = {os.cpu_count()}); "
          f"torch {__import__('torch').__version__}")
    return summary


if __name__ == "__main__":
    sys.exit(main())
