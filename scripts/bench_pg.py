"""PPO benchmark: rlbase vs Stable-Baselines3 throughput, the learner's compute ceiling, CartPole solve time.

Run from the repository root (CPU only; every measurement, both libraries, starts with the same
torch.set_num_threads, os.cpu_count() unless --threads says otherwise):

    python scripts/bench_pg.py                                 # all sections
    python scripts/bench_pg.py --sections throughput ceiling   # no solve-time runs
    python scripts/bench_pg.py --sections solve --seeds 0 1 2 3 4
    python scripts/bench_pg.py --only atari --atari-steps 20480 --repeats 3 --json bench_pg.json
    python scripts/bench_pg.py --quick                         # smoke test: tiny budgets, numbers meaningless
    python scripts/bench_pg.py --quick --threads 1 --in-process

Everything is measured in one invocation; each measurement runs in a fresh subprocess of this
script (no run inherits another's memory, threads or warm caches), one after the other.
`--in-process` runs them all in this process instead (smoke tests only). SB3's Atari wrappers need
OpenCV (`pip install opencv-python-headless`); without it the SB3 Breakout runs are skipped.

1. Training throughput (`--sections throughput`), CartPole-v1 and ALE/Breakout-v5. rlbase PPO
   runs its preset (`rlbase/presets/ppo.yaml`); SB3 PPO gets the same values:
   n_envs = num_envs, n_steps = num_steps, batch_size = num_steps * num_envs / num_minibatches,
   n_epochs = update_epochs, learning_rate (a linear schedule to 0 when anneal_lr), gamma,
   gae_lambda, clip_range = clip_coef (constant, as rlbase), clip_range_vf = clip_coef when
   clip_vloss, normalize_advantage = norm_adv, ent_coef, vf_coef, max_grad_norm, target_kl, Adam
   eps; the network: CartPole separate actor and critic MLPs (net_arch pi/vf = hidden_sizes, the
   preset's activation), Atari one shared NatureCNN with linear policy and value heads
   (CnnPolicy, net_arch [], share_features_extractor); orthogonal init on both sides.
   Atari env for SB3: `make_atari_env` + `VecFrameStack(4)` over a DummyVecEnv, with
   `frameskip=1` passed to the v5 env (AtariWrapper skips the 4 frames, with max-pooling) and the
   v5 env's own sticky actions (repeat_action_probability 0.25, applied per emulator frame inside
   ALE, which is also what ale-py's vector env that rlbase uses does; AtariWrapper's
   agent-level `action_repeat_probability` stays 0). 30 no-ops, FIRE reset, 84x84 grey, life loss
   as terminal and clipped rewards for training match rlbase's env.
   Known differences that do not change the work done: SB3's value loss is MSE (rlbase: 0.5 *
   MSE) and SB3 clips the value prediction (rlbase: max of clipped and unclipped losses, as
   CleanRL); SB3's lr schedule is evaluated after each rollout (rlbase: before it).
   The clock: each run is one `train()` / `learn()` call over warm-up + timed rollouts; steps/s
   is measured from the end of the first rollout + update (model setup, first forward passes and
   allocator warm-up excluded) to the end of the last update: rlbase through a `run` object
   whose `logger.progress` the training loop calls after each update, SB3 through a callback
   (second `on_rollout_start` to `on_training_end`). "whole run" steps/s covers model setup +
   everything (env creation excluded). Gradient steps are counted (rlbase: `num_updates`; SB3:
   an optimizer step hook) over the whole run and the timed window, to show identical work.
   rlbase's stage shares come from `StageTimer` in the same run (on CPU it only reads the clock,
   no device syncs), over the timed window: act (forward + sampling, env.step_async), store
   (writing the rollout, bookkeeping), env (waiting for env.step_wait), learn (returns + update).
   rlbase picks its own intra-op threads (1 for an MLP on CPU); on CartPole SB3 is also run with
   1 thread when --threads > 1, so the ratio can be read against SB3's faster setting.
2. Compute ceiling (`--sections ceiling`), Breakout only: samples/s of a plain NatureCNN
   actor-critic written here (forward + PPO loss + backward + Adam) on random minibatches, in two
   variants (plain, and rlbase-style); written out in scripts/pg_ceiling.py, with the code.
3. CartPole solve time (`--sections solve`): wall-clock of training until the first evaluation
   whose mean return is >= 475, rlbase PPO (its preset, on CartPole-v1 and, for its whole budget,
   on rlbase/CartPole-v1) against SB3 PPO with RL-Zoo's hyperparameters, evaluated alike; the
   method is written out in scripts/pg_solve.py, with the code.

Timings on a shared machine are noisy: the load average is printed at start and end; use
--repeats for medians, and compare ratios from the same run.
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

from benchlib import (BREAKOUT, CARTPOLE, FAMILIES, config_from_dict, fmt_rate, linear_schedule, parse_arguments,
                      preset_config, print_table, rlbase_training_threads, rlbase_vec_env, run_jobs, sb3_vec_env,
                      set_threads, start_invocation, write_json)
from pg_ceiling import ceiling_jobs, ceiling_table, work_ceiling
from pg_solve import solve_jobs, solve_summary, solve_table, work_solve

SECTIONS = ("throughput", "ceiling", "solve")
STAGES = ("env", "act", "store", "learn")

# Targets from the issue.
TARGET_CARTPOLE_RATIO = 2.0       # rlbase / SB3 steps/s on CartPole-v1
TARGET_BREAKOUT_CEILING = 0.85    # rlbase steps/s / learner ceiling on Breakout
ISSUE_REFERENCE = ("for reference, the issue's earlier measurements: SB3 PPO solved CartPole "
                   "in 60.6 s (RL-Zoo, 1e5 steps); SB3 PPO Breakout 187 steps/s over 30 min; ceiling ~385 steps/s "
                   "(~1,670 samples/s at batch 256)")


# --------------------------------------------------------------------------- PPO in SB3's terms

def rollout_size(cfg) -> int:
    return cfg.num_steps * cfg.num_envs


def minibatch_size(cfg) -> int:
    return rollout_size(cfg) // cfg.num_minibatches


def sb3_ppo_kwargs(cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    """SB3 PPO arguments with rlbase's hyperparameters; also a JSON-able description of them."""
    from torch import nn

    atari = cfg.env_id.startswith("ALE/")
    if cfg.normalize_obs or cfg.normalize_reward:
        raise ValueError("this benchmark does not translate normalize_obs/normalize_reward to SB3 (VecNormalize)")
    hidden = list(cfg.hidden_sizes)
    if atari:  # NatureCNN features (512) straight into the policy and value heads
        policy, net_arch, activation = "CnnPolicy", [], None
        share = cfg.shared_backbone
    else:
        policy = "MlpPolicy"
        net_arch = hidden if cfg.shared_backbone else {"pi": hidden, "vf": hidden}
        activation = {"tanh": nn.Tanh, "relu": nn.ReLU}[cfg.activation]
        share = True  # SB3's FlattenExtractor has no parameters; net_arch decides what is shared
    policy_kwargs: dict[str, Any] = {"net_arch": net_arch, "ortho_init": cfg.ortho_init,
                                     "share_features_extractor": share, "optimizer_kwargs": {"eps": cfg.adam_eps}}
    if activation is not None:
        policy_kwargs["activation_fn"] = activation
    kwargs = {
        "policy": policy, "n_steps": cfg.num_steps, "batch_size": minibatch_size(cfg), "n_epochs": cfg.update_epochs,
        "learning_rate": linear_schedule(cfg.learning_rate) if cfg.anneal_lr else cfg.learning_rate,
        "gamma": cfg.gamma, "gae_lambda": cfg.gae_lambda, "clip_range": cfg.clip_coef,
        "clip_range_vf": cfg.clip_coef if cfg.clip_vloss else None, "normalize_advantage": cfg.norm_adv,
        "ent_coef": cfg.ent_coef, "vf_coef": cfg.vf_coef,
        "max_grad_norm": cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf,
        "target_kl": cfg.target_kl if cfg.target_kl > 0 else None, "policy_kwargs": policy_kwargs,
    }
    described = {**kwargs, "n_envs": cfg.num_envs,
                 "learning_rate": f"linear({cfg.learning_rate})" if cfg.anneal_lr else cfg.learning_rate,
                 "max_grad_norm": kwargs["max_grad_norm"] if math.isfinite(kwargs["max_grad_norm"]) else "inf",
                 "policy_kwargs": {**policy_kwargs, **({"activation_fn": activation.__name__} if activation else {})}}
    return kwargs, described


# --------------------------------------------------------------------------- workers (one measurement each)

def work_train_rlbase(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from rlbase.lifecycle import train_config
    from rlbase.run import StageTimer

    threads = set_threads(job)
    cfg = config_from_dict("ppo", job["config"])
    env = rlbase_vec_env(cfg)
    train_threads = rlbase_training_threads(cfg, env)
    timer = StageTimer(torch.device("cpu"))  # CPU: marks only read the clock, no syncs
    marks: list[tuple[int, float, dict[str, float]]] = []  # (global_step, time, stage seconds) after each update

    def after_update(run) -> None:
        marks.append((run.global_step, time.perf_counter(), dict(timer.seconds)))

    start = time.perf_counter()
    out = train_config(cfg, env, callbacks=after_update, timer=timer)
    wall = time.perf_counter() - start
    env.close()
    (step0, t0, stages0), (step1, t1, stages1) = marks[0], marks[-1]
    rollouts = len(marks)
    return {"steps": out["global_step"], "wall_s": wall, "updates": out["num_updates"], "rollouts": rollouts,
            "window_steps": step1 - step0, "window_s": t1 - t0,
            "window_updates": out["num_updates"] * (rollouts - 1) // rollouts,  # the same count every rollout
            "stage_s": {k: stages1.get(k, 0.0) - stages0.get(k, 0.0) for k in STAGES},
            "threads": threads, "train_threads": train_threads}


def work_train_sb3(job: dict[str, Any]) -> dict[str, Any]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    threads = set_threads(job)
    cfg = config_from_dict("ppo", job["config"])
    kwargs, _ = sb3_ppo_kwargs(cfg)
    env = sb3_vec_env(cfg, cfg.num_envs)
    grad_steps = [0]

    class Window(BaseCallback):
        """Time from the second rollout's start (after the first rollout + update) to the end of training."""

        def __init__(self):
            super().__init__()
            self.rollouts, self.begin, self.end = 0, None, None

        def _on_rollout_start(self) -> None:
            self.rollouts += 1
            if self.rollouts == 2:
                self.begin = (self.model.num_timesteps, time.perf_counter(), grad_steps[0])

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self.end = (self.model.num_timesteps, time.perf_counter(), grad_steps[0])

    start = time.perf_counter()
    model = PPO(env=env, device="cpu", seed=cfg.seed, verbose=0, **kwargs)
    model.policy.optimizer.register_step_post_hook(lambda *_: grad_steps.__setitem__(0, grad_steps[0] + 1))
    window = Window()
    model.learn(total_timesteps=cfg.total_timesteps, callback=window)
    wall = time.perf_counter() - start
    env.close()
    (step0, t0, g0), (step1, t1, g1) = window.begin, window.end
    return {"steps": int(model.num_timesteps), "wall_s": wall, "updates": grad_steps[0], "rollouts": window.rollouts,
            "window_steps": step1 - step0, "window_s": t1 - t0, "window_updates": g1 - g0,
            "sb3_epoch_count": int(model._n_updates), "threads": threads, "train_threads": threads}


WORKERS = {"train_rlbase": work_train_rlbase, "train_sb3": work_train_sb3, "ceiling": work_ceiling,
           "solve": work_solve}


# --------------------------------------------------------------------------- the benchmark plan

def plan(args) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Every measurement of this invocation in the order they run, notes, and the configs used."""
    import importlib.util

    jobs: list[dict[str, Any]] = []
    notes: list[str] = []
    configs: dict[str, Any] = {}
    have_cv2 = importlib.util.find_spec("cv2") is not None  # SB3's Atari WarpFrame resizes with OpenCV
    families = [args.only] if args.only else list(FAMILIES)
    common = {"threads": args.threads}

    if "throughput" in args.sections:
        for family in families:
            env_id = FAMILIES[family]
            atari = family == "atari"
            base = preset_config("ppo", env_id, {})
            batch = rollout_size(base)
            timed = args.atari_steps if atari else args.cartpole_steps
            # One warm-up rollout, then whole rollouts covering at least the timed steps.
            total = batch * (1 + max(1, math.ceil(timed / batch)))
            cfg = dataclasses.asdict(preset_config("ppo", env_id, {"total_timesteps": total}))
            configs[f"throughput {env_id} rlbase"] = cfg
            configs[f"throughput {env_id} sb3"] = sb3_ppo_kwargs(config_from_dict("ppo", cfg))[1]
            train_jobs = [{**common, "kind": "train_rlbase", "env_id": env_id, "library": "rlbase", "key": "rlbase",
                           "variant": "PPO (preset)", "config": cfg}]
            if atari and not have_cv2:
                notes.append(f"{env_id}: SB3 run SKIPPED: its Atari preprocessing needs OpenCV "
                             "(pip install opencv-python-headless)")
            else:
                train_jobs.append({**common, "kind": "train_sb3", "env_id": env_id, "library": "SB3", "key": "sb3",
                                   "variant": "PPO (same hyperparameters)", "config": cfg})
                if not atari and args.threads > 1:  # rlbase runs its MLP learner on 1 thread
                    train_jobs.append({**common, "threads": 1, "kind": "train_sb3", "env_id": env_id,
                                       "library": "SB3", "key": "sb3_1thread",
                                       "variant": "PPO (same hyperparameters), 1 thread", "config": cfg})
            for rep in range(args.repeats):  # interleaved: slow drifts in machine load hit every variant alike
                for job in train_jobs:
                    jobs.append({**job, "section": "throughput", "repeat": rep,
                                 "label": f"{job['library']} {job['variant']}"})

    if "ceiling" in args.sections:
        jobs += ceiling_jobs(args, common)

    if "solve" in args.sections:
        solve, solve_configs = solve_jobs(args, common)
        jobs += solve
        configs.update(solve_configs)
    return jobs, notes, configs


# --------------------------------------------------------------------------- report

def report(args, jobs: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    targets: list[tuple[str, str]] = []

    # ---- throughput
    train: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r["section"] == "throughput":
            train.setdefault((r["env_id"], r["key"]), {**r, "runs": []})["runs"].append(r)
    for e in train.values():
        rates = [run["window_steps"] / run["window_s"] for run in e["runs"]]
        e["steps_per_s"] = statistics.median(rates)
        e["range"] = (min(rates), max(rates))
        e["whole_steps_per_s"] = statistics.median(run["steps"] / run["wall_s"] for run in e["runs"])
    if train:
        rows = []
        for (env_id, _), e in train.items():
            spread = f" ({fmt_rate(e['range'][0])}-{fmt_rate(e['range'][1])})" if len(e["runs"]) > 1 else ""
            threads = str(e["threads"]) + (f" (trains on {e['train_threads']})"
                                           if e["train_threads"] != e["threads"] else "")
            rows.append([env_id, e["library"], e["variant"], threads, f"{e['window_steps']:,}",
                         f"{statistics.median(run['window_s'] for run in e['runs']):.2f}",
                         fmt_rate(e["steps_per_s"]) + spread, fmt_rate(e["whole_steps_per_s"]),
                         f"{e['updates']:,}", f"{e['window_updates']:,}"])
        print("Training throughput: steps/s over the timed window (after one warm-up rollout + update)"
              + (f", median of {args.repeats} runs (min-max)" if args.repeats > 1 else ""))
        print_table(["env", "library", "variant", "torch threads", "timed steps", "timed s", "steps/s",
                     "whole-run steps/s", "grad steps (run)", "grad steps (timed)"], rows)

        rows = []
        for (env_id, key), e in train.items():
            if key != "rlbase":
                continue
            stage = {k: statistics.median(run["stage_s"][k] for run in e["runs"]) for k in STAGES}
            window = statistics.median(run["window_s"] for run in e["runs"])
            other = max(0.0, window - sum(stage.values()))
            rows.append([env_id] + [f"{stage[k]:.2f} ({stage[k] / window:.0%})" for k in STAGES]
                        + [f"{other:.2f} ({other / window:.0%})", f"{window:.2f}"])
            summary.setdefault(env_id, {})["rlbase_stage_share"] = {k: stage[k] / window for k in STAGES}
        if rows:
            print("rlbase time per stage over the timed window (StageTimer, same runs): seconds (share)")
            print_table(["env"] + list(STAGES) + ["other", "window s"], rows)

    # ---- compute ceiling
    ceiling = ceiling_table(results)

    # ---- solve time
    solve = solve_table(args, results)

    # ---- summary
    print("Summary")
    for env_id in [e for e in (CARTPOLE, BREAKOUT) if (e, "rlbase") in train]:
        ours = train[(env_id, "rlbase")]
        s = summary.setdefault(env_id, {})
        s["rlbase_steps_per_s"] = ours["steps_per_s"]
        counts = ", ".join(f"{train[(env_id, k)]['library']}{' 1 thread' if k == 'sb3_1thread' else ''} "
                           f"{train[(env_id, k)]['window_updates']:,}" for k in ("rlbase", "sb3", "sb3_1thread")
                           if (env_id, k) in train)
        print(f"{env_id}: gradient steps in the timed window ({ours['window_steps']:,} steps): {counts}")
        same_threads = f"SB3 ({args.threads} thread{'s' if args.threads > 1 else ''})"
        for key, label in (("sb3", same_threads), ("sb3_1thread", "SB3 (1 thread)")):
            sb3 = train.get((env_id, key))
            if sb3 is None:
                continue
            ratio = ours["steps_per_s"] / sb3["steps_per_s"]
            s[f"{key}_steps_per_s"], s[f"ratio_vs_{key}"] = sb3["steps_per_s"], ratio
            print(f"{env_id}: rlbase {fmt_rate(ours['steps_per_s'])} / {label} {fmt_rate(sb3['steps_per_s'])} steps/s "
                  f"= {ratio:.2f}x")
            if env_id == CARTPOLE:
                met = ratio >= TARGET_CARTPOLE_RATIO
                targets.append((f"CartPole-v1 rlbase >= {TARGET_CARTPOLE_RATIO:g}x SB3 steps/s, vs {label}",
                                f"{'MET' if met else 'NOT MET'} ({ratio:.2f}x)"))
        if env_id == BREAKOUT and ceiling:
            best = max(ceiling.values(), key=lambda r: r["samples_per_s"])
            frac = ours["steps_per_s"] / best["ceiling_steps_per_s"]
            frac_act = ours["steps_per_s"] / best["ceiling_acting_steps_per_s"]
            s.update(ceiling_variant=best["variant"], ceiling_samples_per_s=best["samples_per_s"],
                     ceiling_steps_per_s=best["ceiling_steps_per_s"], fraction_of_ceiling=frac,
                     ceiling_acting_steps_per_s=best["ceiling_acting_steps_per_s"], fraction_of_ceiling_acting=frac_act)
            print(f"{env_id}: rlbase = {frac:.0%} of the learner ceiling ({fmt_rate(ours['steps_per_s'])} of "
                  f"{fmt_rate(best['ceiling_steps_per_s'])} steps/s = {fmt_rate(best['samples_per_s'])} samples/s "
                  f"({best['variant']}) / {best['config']['update_epochs']} epochs)")
            print(f"{env_id}: rlbase = {frac_act:.0%} of the learner + acting ceiling "
                  f"({fmt_rate(best['ceiling_acting_steps_per_s'])} steps/s)")
            plain = ceiling.get("plain")
            if plain is not None and plain is not best:
                print(f"{env_id}: against the plain-network ceiling alone ({fmt_rate(plain['ceiling_steps_per_s'])} "
                      f"steps/s): {ours['steps_per_s'] / plain['ceiling_steps_per_s']:.0%}")
            if frac > 1.0:
                print(f"{env_id}: WARNING: above 100% means the ceiling probe was slowed by other processes; "
                      "rerun on a quieter machine")
            targets.append((f"Breakout rlbase >= {TARGET_BREAKOUT_CEILING:.0%} of the learner ceiling",
                            f"{'MET' if frac >= TARGET_BREAKOUT_CEILING else 'NOT MET'} ({frac:.0%})"))
            sb3 = train.get((env_id, "sb3"))
            if sb3 is not None:
                implied = TARGET_BREAKOUT_CEILING * best["ceiling_steps_per_s"] / sb3["steps_per_s"]
                print(f"{env_id}: the 85% target is {implied:.2f}x SB3 in this run")
        if "rlbase_stage_share" in s:
            shares = s["rlbase_stage_share"]
            print(f"{env_id}: rlbase stage shares: " + ", ".join(f"{k} {shares[k]:.0%}" for k in STAGES))
    if ceiling and (BREAKOUT, "rlbase") not in train:
        best = max(ceiling.values(), key=lambda r: r["samples_per_s"])
        summary.setdefault(BREAKOUT, {}).update(ceiling_samples_per_s=best["samples_per_s"],
                                                ceiling_steps_per_s=best["ceiling_steps_per_s"])
        print(f"{BREAKOUT}: learner ceiling {fmt_rate(best['ceiling_steps_per_s'])} steps/s ({best['variant']}); "
              "no rlbase throughput run to compare (--sections throughput)")
    if solve:
        solve_summary(solve, summary, targets)
    if targets:
        print("\nTargets (from the issue)")
        print_table(["target", "this run"], [[t, v] for t, v in targets])
    summary["targets"] = dict(targets)
    print(ISSUE_REFERENCE)
    print(f"torch threads: {args.threads} for every run (os.cpu_count() = {os.cpu_count()}); rlbase picks its own "
          "count inside train (1 for an MLP on CPU)")
    return summary


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="what to measure (default: all)")
    parser.add_argument("--only", choices=sorted(FAMILIES), help="throughput: one env family only")
    parser.add_argument("--cartpole-steps", type=int, default=50_000,
                        help="throughput: timed env steps on CartPole-v1 (after one warm-up rollout)")
    parser.add_argument("--atari-steps", type=int, default=10_240,
                        help="throughput: timed env steps on ALE/Breakout-v5 (after one warm-up rollout)")
    parser.add_argument("--repeats", type=int, default=1, help="throughput: runs per variant (median reported)")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="timed seconds of the learner probe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="solve: seeds for both libraries")
    parser.add_argument("--solve-steps", type=int, default=0,
                        help="solve: training budget for both (default 0: rlbase preset / RL-Zoo, both 1e5)")
    parser.add_argument("--eval-every", type=int, default=10_000, help="solve: env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10, help="solve: deterministic episodes per evaluation")
    args = parse_arguments(parser, argv, WORKERS)  # a --worker subprocess runs its measurement and exits here

    if args.quick:
        args.cartpole_steps, args.atari_steps, args.ceiling_seconds, args.repeats = 512, 1_024, 0.5, 1
        args.solve_steps, args.eval_every, args.eval_episodes = args.solve_steps or 2_048, 1_024, 2
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
    if args.repeats < 1 or args.threads < 1 or args.eval_every < 1 or args.eval_episodes < 1:
        parser.error("--repeats, --threads, --eval-every and --eval-episodes must be >= 1")
    args.sections = [s for s in SECTIONS if s in args.sections]

    meta = start_invocation(__file__, argv, args, sections=args.sections)
    jobs, notes, configs = plan(args)
    for note in notes:
        print("NOTE: " + note)
    results = run_jobs(jobs, lambda job: f"{job['section']} {job['env_id']}: {job['label']}", __file__, WORKERS,
                       args.in_process, meta)
    summary = report(args, jobs, results)
    for note in notes:
        print("NOTE: " + note)
    if args.json:
        write_json(args.json, meta, notes, configs, results, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
