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
2. Compute ceiling (`--sections ceiling`), Breakout only: a plain NatureCNN written here with
   shared policy/value heads, forward + PPO loss + backward + Adam step on random uint8 minibatches
   of the PPO minibatch size (256), samples/s from the fastest of 5 timing windows, same thread
   count. Two variants: "plain" (default memory format, default Adam, as a user would write it;
   the issue's reference) and "rlbase-style" (channels_last, fused Adam, as rlbase runs); the
   ceiling is the faster of the two, so rlbase is not flattered by a slow reference.
   Ceiling definitions (both printed):
     learner ceiling (the issue's):  steps/s = samples/s / update_epochs
                                     (every transition is learned from update_epochs times);
     learner + acting ceiling:       1 / (update_epochs / samples/s + 1 / acting samples/s),
                                     acting = one no-grad forward per transition at batch num_envs.
   Env stepping, gradient clipping and the minibatch gather are in neither ceiling.
3. CartPole solve time (`--sections solve`): wall-clock of training until the first evaluation
   whose mean return is >= 475. rlbase PPO with its preset; SB3 PPO with RL-Zoo's CartPole-v1
   hyperparameters (written in this script, rl_zoo3 is not needed: n_envs 8, n_steps 32, batch
   256, gae_lambda 0.8, gamma 0.98, n_epochs 20, ent_coef 0, lr linear from 1e-3, clip_range
   linear from 0.2, 1e5 steps). Both are evaluated the same way, after the update that crosses
   every --eval-every steps and at the end of training: --eval-episodes deterministic episodes
   (mode action) played by `rlbase.evaluate.play_episodes` on the same rlbase eval env with the
   same seeds, evaluation time excluded from the clock (the clock is paused), training stopped
   once solved. rlbase is evaluated from a callback of its run lifecycle (the policy is built from
   `run.tensors()`, the current weights; torch's RNG is forked so training is unchanged), SB3 from
   a callback. The clock includes model setup, not env creation. Median over --seeds
   (an unsolved seed counts as infinitely slow). A third run per seed, "rlbase native", trains the
   PPO preset of rlbase/CartPole-v1 (the same dynamics batched on the device; its preset is tuned
   for wall-clock) for its whole budget, evaluated the same way on the way but not stopped when
   solved: its "train s" is the whole training run, checked against the issue's 3 s goal with the
   last evaluation, which must be solved on every seed.

Timings on a shared machine are noisy: the load average is printed at start and end; use
--repeats for medians, and compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any

from benchlib import (add_common_arguments, fmt_rate, git_revision, load_average, nature_cnn_actor_critic,
                      print_table, register_ale, run_worker_if_asked, run_worker_subprocess, sb3_vec_env)

CARTPOLE = "CartPole-v1"
NATIVE_CARTPOLE = "rlbase/CartPole-v1"  # the same dynamics, batched on the device
BREAKOUT = "ALE/Breakout-v5"
FAMILIES = {"cartpole": CARTPOLE, "atari": BREAKOUT}
SECTIONS = ("throughput", "ceiling", "solve")
CEILING_WINDOWS = 5
SOLVE_THRESHOLD = 475.0
STAGES = ("env", "act", "store", "learn")

# Targets from the issue.
TARGET_CARTPOLE_RATIO = 2.0       # rlbase / SB3 steps/s on CartPole-v1
TARGET_BREAKOUT_CEILING = 0.85    # rlbase steps/s / learner ceiling on Breakout
TARGET_NATIVE_CARTPOLE_S = 3.0    # PPO trains rlbase/CartPole-v1 to a solved policy within this (issue 4)
ISSUE_REFERENCE = ("for reference, the issue's earlier measurements: SB3 PPO solved CartPole "
                   "in 60.6 s (RL-Zoo, 1e5 steps); SB3 PPO Breakout 187 steps/s over 30 min; ceiling ~385 steps/s "
                   "(~1,670 samples/s at batch 256)")

# RL-Zoo's PPO hyperparameters for CartPole-v1 (rl-baselines3-zoo hyperparams/ppo.yml), written here.
RL_ZOO_CARTPOLE = {"n_envs": 8, "n_timesteps": 100_000, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8,
                   "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0, "learning_rate": "lin_1e-3",
                   "clip_range": "lin_0.2"}


# --------------------------------------------------------------------------- shared helpers

def set_threads(job: dict[str, Any]) -> int:
    import torch

    torch.set_num_threads(job["threads"])
    return torch.get_num_threads()


def resolve_rlbase_config(env_id: str, overrides: dict[str, Any]):
    from rlbase.agents.ppo import PPOConfig
    from rlbase.config import resolve_config

    return resolve_config(PPOConfig, "ppo", {"env_id": env_id, "device": "cpu", "seed": 0, **overrides})


def config_from_dict(values: dict[str, Any]):
    from rlbase.agents.ppo import PPOConfig
    from rlbase.config import from_dict

    return from_dict(PPOConfig, values, "benchmark config")


def rollout_size(cfg) -> int:
    return cfg.num_steps * cfg.num_envs


def minibatch_size(cfg) -> int:
    return rollout_size(cfg) // cfg.num_minibatches


def make_rlbase_env(cfg, training: bool = True, num_envs: int | None = None):
    import torch
    from rlbase.config import env_options
    from rlbase.envs import make_vec_env

    return make_vec_env(cfg.env_id, num_envs or cfg.num_envs, torch.device("cpu"), **env_options(cfg, training))


def rlbase_training_threads(cfg, env) -> int:
    """The intra-op thread count rlbase's training loop will use (its auto rule, or --torch-threads)."""
    from rlbase.backbones import check_backbone
    from rlbase.config import training_threads

    return training_threads(cfg, check_backbone(cfg.backbone, env.single_observation_space), "cpu")


def linear_schedule(initial: float):
    """SB3 schedule: progress_remaining goes from 1 to 0 over training."""
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial
    return schedule


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


def sb3_rl_zoo_cartpole_kwargs() -> dict[str, Any]:
    z = RL_ZOO_CARTPOLE
    return {"policy": "MlpPolicy", "n_steps": z["n_steps"], "batch_size": z["batch_size"], "gae_lambda": z["gae_lambda"],
            "gamma": z["gamma"], "n_epochs": z["n_epochs"], "ent_coef": z["ent_coef"],
            "learning_rate": linear_schedule(1e-3), "clip_range": linear_schedule(0.2)}


class PausableClock:
    """Wall clock that can be paused (evaluation time is not training time)."""

    def __init__(self):
        self.elapsed, self.started = 0.0, None

    def start(self) -> None:
        self.started = time.perf_counter()

    def pause(self) -> float:
        self.elapsed += time.perf_counter() - self.started
        self.started = None
        return self.elapsed

    def read(self) -> float:
        return self.elapsed + (time.perf_counter() - self.started if self.started is not None else 0.0)


# --------------------------------------------------------------------------- workers (one measurement each)

def work_train_rlbase(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from rlbase.lifecycle import train_config
    from rlbase.run import StageTimer

    threads = set_threads(job)
    cfg = config_from_dict(job["config"])
    env = make_rlbase_env(cfg)
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
    cfg = config_from_dict(job["config"])
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


def work_ceiling(job: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of NatureCNN actor-critic forward + PPO loss + backward + Adam at the minibatch size,
    and of the acting forward (no grad) at batch num_envs."""
    import gymnasium as gym
    import torch

    began = time.perf_counter()
    threads = set_threads(job)
    torch.manual_seed(0)
    cfg = config_from_dict(job["config"])
    rlbase_style = job["variant"] == "rlbase-style"
    register_ale()
    probe = gym.make(cfg.env_id)
    num_actions = int(probe.action_space.n)
    probe.close()
    batch, n_act = minibatch_size(cfg), cfg.num_envs
    net = nature_cnn_actor_critic(cfg.frame_stack, num_actions)
    if rlbase_style:
        net = net.to(memory_format=torch.channels_last)
        net.channels_last = True
    optimizer = None
    if rlbase_style:
        try:
            optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
        except (RuntimeError, TypeError):
            optimizer = None
    fused = optimizer is not None
    if optimizer is None:
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    frames = (cfg.frame_stack, 84, 84)
    pool = [torch.randint(0, 256, (batch, *frames), dtype=torch.uint8) for _ in range(4)]
    act_pool = [torch.randint(0, 256, (n_act, *frames), dtype=torch.uint8) for _ in range(4)]
    actions = torch.randint(num_actions, (batch,))
    old_logprobs = torch.full((batch,), -math.log(num_actions)) + 0.01 * torch.randn(batch)
    advantages, returns, old_values = torch.randn(batch), torch.randn(batch), torch.randn(batch)
    clip = cfg.clip_coef

    def update(i: int) -> None:
        logits, values = net(pool[i % len(pool)])
        logp_all = logits.log_softmax(-1)
        logp = logp_all.gather(1, actions.unsqueeze(1)).squeeze(1)
        ratio = (logp - old_logprobs).exp()
        adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        v_loss = 0.5 * torch.max((values - returns).pow(2), (clipped - returns).pow(2)).mean()
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def act(i: int) -> None:
        logits, _ = net(act_pool[i % len(act_pool)])
        logits.argmax(-1)

    def best_rate(fn, samples_per_call: int, seconds: float) -> tuple[float, float, int]:
        for i in range(5):  # warm-up, untimed
            fn(i)
        # Fastest of several windows, so a burst of load from other processes does not lower the ceiling.
        rates, calls, total = [], 0, 0.0
        for _ in range(CEILING_WINDOWS):
            n, start = 0, time.perf_counter()
            while True:
                fn(calls + n)
                n += 1
                wall = time.perf_counter() - start
                if wall >= seconds / CEILING_WINDOWS and n >= 2:
                    break
            rates.append(n * samples_per_call / wall)
            calls, total = calls + n, total + wall
        return max(rates), calls * samples_per_call / total, calls

    learn_rate, learn_mean, iters = best_rate(update, batch, job["seconds"])
    act_rate, act_mean, _ = best_rate(act, n_act, job["seconds"] / 2)
    return {"batch": batch, "act_batch": n_act, "iters": iters, "samples_per_s": learn_rate,
            "samples_per_s_mean": learn_mean, "act_samples_per_s": act_rate, "act_samples_per_s_mean": act_mean,
            "fused_adam": fused, "channels_last": rlbase_style, "wall_s": time.perf_counter() - began,
            "threads": threads}


def work_solve(job: dict[str, Any]) -> dict[str, Any]:
    """Train until the first evaluation with mean return >= the threshold (or the budget ends)."""
    import torch
    from rlbase.evaluate import play_episodes

    threads = set_threads(job)
    cfg = dataclasses.replace(config_from_dict(job["config"]), eval_deterministic=True)
    eval_env = make_rlbase_env(cfg, training=False, num_envs=job["eval_episodes"])
    every, episodes, eval_seed = job["eval_every"], job["eval_episodes"], job["eval_seed"]
    clock = PausableClock()
    evals: list[dict[str, Any]] = []
    state = {"next_eval": every, "solved": False}

    full_budget = job.get("full_budget", False)  # train the whole budget, evaluating on the way

    def evaluate_now(step: int, policy_fn) -> bool:
        """Pause the clock, evaluate, record; True when training should stop because it is solved
        (the clock stays paused then)."""
        train_s = clock.pause()
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            returns, _ = play_episodes(eval_env, policy_fn(), episodes, eval_seed)
        mean = sum(returns) / len(returns)
        evals.append({"step": step, "train_s": train_s, "mean_return": mean, "min_return": min(returns),
                      "eval_s": time.perf_counter() - start})
        while state["next_eval"] <= step:
            state["next_eval"] += every
        if mean >= job["threshold"]:
            state["solved"] = True
            if not full_budget:
                return True
        clock.start()
        return False

    if job["library"] in ("rlbase", "rlbase native"):
        from rlbase.lifecycle import train_config

        env = make_rlbase_env(cfg)
        train_threads = rlbase_training_threads(cfg, env)

        def after_update(run) -> bool | None:
            """Evaluate the current policy at the cadence and at the last step; False (solved) stops training."""
            if run.global_step >= state["next_eval"] or run.done:
                policy_fn = lambda: run.agent.load_policy(  # noqa: E731
                    cfg, run.tensors(weights_only=True), eval_env.single_observation_space,
                    eval_env.single_action_space, eval_env.device)
                if evaluate_now(run.global_step, policy_fn):
                    return False
            return None

        clock.start()
        out = train_config(cfg, env, callbacks=after_update)
        steps = out["global_step"]
        if clock.started is not None:
            clock.pause()
        env.close()
    else:
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback

        train_threads = threads
        env = sb3_vec_env(cfg, job["sb3_kwargs_n_envs"])

        class EvalCallback(BaseCallback):
            def _policy(self):
                model = self.model

                def policy(obs, generator):
                    actions, _ = model.predict(obs.cpu().numpy(), deterministic=True)
                    return torch.as_tensor(actions)
                return policy

            def _on_rollout_start(self) -> None:  # after the previous rollout's update
                step = self.model.num_timesteps
                if step >= state["next_eval"]:
                    evaluate_now(step, self._policy)

            def _on_step(self) -> bool:
                return not state["solved"]  # False stops learn()

            def _on_training_end(self) -> None:
                step = self.model.num_timesteps
                if not state["solved"] and (not evals or evals[-1]["step"] < step):
                    evaluate_now(step, self._policy)

        clock.start()
        model = PPO(env=env, device="cpu", seed=cfg.seed, verbose=0, **sb3_rl_zoo_cartpole_kwargs())
        model.learn(total_timesteps=job["sb3_total_timesteps"], callback=EvalCallback())
        if not state["solved"]:
            clock.pause()
        steps = evals[-1]["step"] if state["solved"] else int(model.num_timesteps)
        env.close()
    eval_env.close()
    solved = next((e for e in evals if e["mean_return"] >= job["threshold"]), None)
    return {"solved": solved is not None, "solve_step": solved["step"] if solved else None,
            "solve_s": solved["train_s"] if solved else None, "train_s": clock.elapsed, "steps": steps,
            "final_mean_return": evals[-1]["mean_return"] if evals else None,
            "evals": evals, "wall_s": clock.elapsed + sum(e["eval_s"] for e in evals), "threads": threads,
            "train_threads": train_threads}


WORKERS = {"train_rlbase": work_train_rlbase, "train_sb3": work_train_sb3, "ceiling": work_ceiling,
           "solve": work_solve}


def run_job(job: dict[str, Any], in_process: bool) -> dict[str, Any]:
    if in_process:
        return WORKERS[job["kind"]](job)
    return run_worker_subprocess(__file__, job)


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
            base = resolve_rlbase_config(env_id, {})
            batch = rollout_size(base)
            timed = args.atari_steps if atari else args.cartpole_steps
            # One warm-up rollout, then whole rollouts covering at least the timed steps.
            total = batch * (1 + max(1, math.ceil(timed / batch)))
            cfg = dataclasses.asdict(resolve_rlbase_config(env_id, {"total_timesteps": total}))
            configs[f"throughput {env_id} rlbase"] = cfg
            configs[f"throughput {env_id} sb3"] = sb3_ppo_kwargs(config_from_dict(cfg))[1]
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
        cfg = dataclasses.asdict(resolve_rlbase_config(BREAKOUT, {}))
        for variant in ("plain", "rlbase-style"):
            jobs.append({**common, "kind": "ceiling", "section": "ceiling", "env_id": BREAKOUT, "variant": variant,
                         "seconds": args.ceiling_seconds, "config": cfg, "label": f"compute ceiling ({variant})"})

    if "solve" in args.sections:
        budget = args.solve_steps
        for seed in args.seeds:
            cfg = resolve_rlbase_config(CARTPOLE, {"seed": seed, **({"total_timesteps": budget} if budget else {})})
            cfg_d = dataclasses.asdict(cfg)
            configs.setdefault(f"solve {CARTPOLE} rlbase", {**cfg_d, "seed": list(args.seeds)})
            solve = {**common, "kind": "solve", "section": "solve", "env_id": CARTPOLE, "seed": seed,
                     "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "eval_seed": 1000 + seed,
                     "threshold": SOLVE_THRESHOLD}
            jobs.append({**solve, "library": "rlbase", "config": cfg_d, "label": f"rlbase PPO preset, seed {seed}"})
            native = dataclasses.asdict(resolve_rlbase_config(
                NATIVE_CARTPOLE, {"seed": seed, **({"total_timesteps": budget} if budget else {})}))
            configs.setdefault(f"solve {NATIVE_CARTPOLE} rlbase", {**native, "seed": list(args.seeds)})
            jobs.append({**solve, "library": "rlbase native", "env_id": NATIVE_CARTPOLE, "config": native,
                         "full_budget": True, "label": f"rlbase PPO preset, whole budget, seed {seed}"})
            sb3_cfg = {**cfg_d, "num_envs": RL_ZOO_CARTPOLE["n_envs"]}  # env settings and seed for the SB3 env
            jobs.append({**solve, "library": "SB3", "config": sb3_cfg, "sb3_kwargs_n_envs": RL_ZOO_CARTPOLE["n_envs"],
                         "sb3_total_timesteps": budget or RL_ZOO_CARTPOLE["n_timesteps"],
                         "label": f"SB3 PPO RL-Zoo, seed {seed}"})
        configs[f"solve {CARTPOLE} sb3"] = {**RL_ZOO_CARTPOLE, "policy": "MlpPolicy (SB3 defaults: pi/vf 64x64 tanh, "
                                                                         "ortho_init)",
                                            **({"n_timesteps": budget} if budget else {})}
    return jobs, notes, configs


# --------------------------------------------------------------------------- report

def median_or_none(values: list[float | None]) -> float | None:
    """Median where None (unsolved) counts as +infinity; None when the median itself is unsolved."""
    ranked = sorted(math.inf if v is None else v for v in values)
    if not ranked:
        return None
    m = statistics.median(ranked)
    return None if math.isinf(m) or math.isnan(m) else m


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
    ceiling: dict[str, Any] = {}
    rows = []
    for r in results:
        if r["section"] == "ceiling":
            epochs = r["config"]["update_epochs"]
            r["ceiling_steps_per_s"] = r["samples_per_s"] / epochs
            r["ceiling_acting_steps_per_s"] = 1.0 / (epochs / r["samples_per_s"] + 1.0 / r["act_samples_per_s"])
            ceiling[r["variant"]] = r
            how = ("channels_last, fused Adam" if r["channels_last"] and r["fused_adam"] else
                   "channels_last, default Adam" if r["channels_last"] else "default format, default Adam")
            rows.append([r["variant"], how, str(r["batch"]), fmt_rate(r["samples_per_s"]), str(epochs),
                         fmt_rate(r["ceiling_steps_per_s"]), f"{fmt_rate(r['act_samples_per_s'])} @{r['act_batch']}",
                         fmt_rate(r["ceiling_acting_steps_per_s"])])
    if rows:
        print(f"Learner compute ceiling, {BREAKOUT}: NatureCNN actor-critic fwd + PPO loss + bwd + Adam on random "
              f"minibatches (fastest of {CEILING_WINDOWS} windows)")
        print_table(["variant", "implementation", "batch", "samples/s", "epochs", "ceiling steps/s",
                     "acting fwd samples/s", "ceiling incl. acting"], rows)

    # ---- solve time
    solve: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r["section"] == "solve":
            solve.setdefault(r["library"], []).append(r)
    if solve:
        rows = []
        for lib, runs in solve.items():
            for r in runs:
                last = r["evals"][-1] if r["evals"] else None
                rows.append([lib, r["env_id"], str(r["seed"]), f"{r['solve_step']:,}" if r["solved"] else "not solved",
                             f"{r['solve_s']:.1f}" if r["solved"] else "-", f"{r['steps']:,}", f"{r['train_s']:.1f}",
                             str(len(r["evals"])), f"{last['mean_return']:.1f}" if last else "-"])
        print(f"CartPole time to solve (first evaluation mean >= {SOLVE_THRESHOLD:g}; "
              f"{args.eval_episodes} deterministic episodes every {args.eval_every:,} steps; evaluation time excluded; "
              f"'rlbase native' trains its whole preset budget on {NATIVE_CARTPOLE}, the others stop once solved)")
        print_table(["library", "env", "seed", "solved at step", "train s to solve", "steps trained", "train s",
                     "evals", "last eval mean"], rows)

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
        med = {lib: median_or_none([r["solve_s"] for r in runs]) for lib, runs in solve.items()}
        solved = {lib: sum(r["solved"] for r in runs) for lib, runs in solve.items()}
        s = summary.setdefault(CARTPOLE, {})
        for lib, runs in solve.items():
            m = med[lib]
            key = lib.lower().replace(" ", "_")
            s[f"{key}_median_solve_s"] = m
            s[f"{key}_seeds_solved"] = f"{solved[lib]}/{len(runs)}"
            print(f"{runs[0]['env_id']}: {lib} median time to solve {'%.1f s' % m if m is not None else 'n/a (not solved)'} "
                  f"({solved[lib]}/{len(runs)} seeds solved)")
        if med.get("rlbase") and med.get("SB3"):
            s["solve_speedup_vs_sb3"] = med["SB3"] / med["rlbase"]
            print(f"{CARTPOLE}: SB3 / rlbase median time to solve = {med['SB3'] / med['rlbase']:.2f}x")
        native = solve.get("rlbase native")
        if native:
            full = statistics.median(r["train_s"] for r in native)
            finals = [r["final_mean_return"] for r in native]
            all_solved = all(f is not None and f >= SOLVE_THRESHOLD for f in finals)
            n = summary.setdefault(NATIVE_CARTPOLE, {})
            n.update(median_train_s=full, final_mean_returns=finals)
            print(f"{NATIVE_CARTPOLE}: PPO preset, whole budget: median {full:.1f} s of training; final evaluation "
                  + ", ".join(f"{f:.1f}" if f is not None else "n/a" for f in finals))
            if med.get("SB3") and med.get("rlbase native"):
                n["solve_speedup_vs_sb3"] = med["SB3"] / med["rlbase native"]
                print(f"{NATIVE_CARTPOLE}: SB3 (RL-Zoo, CartPole-v1) / rlbase native median time to solve = "
                      f"{n['solve_speedup_vs_sb3']:.2f}x; SB3 time to solve / rlbase whole training = "
                      f"{med['SB3'] / full:.2f}x")
            met = all_solved and full <= TARGET_NATIVE_CARTPOLE_S
            targets.append((f"{NATIVE_CARTPOLE} PPO trains to a solved policy (final eval >= {SOLVE_THRESHOLD:g} on "
                            f"every seed) in <= {TARGET_NATIVE_CARTPOLE_S:g} s",
                            f"{'MET' if met else 'NOT MET'} (median {full:.1f} s, "
                            f"{sum(f is not None and f >= SOLVE_THRESHOLD for f in finals)}/{len(finals)} solved)"))
        targets.append(("CartPole-v1 wall-clock to solve vs SB3", "reported (no numeric target in the issue)"))
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
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if run_worker_if_asked(args, WORKERS):  # a subprocess running one measurement
        return 0

    if args.quick:
        args.cartpole_steps, args.atari_steps, args.ceiling_seconds, args.repeats = 512, 1_024, 0.5, 1
        args.solve_steps, args.eval_every, args.eval_episodes = args.solve_steps or 2_048, 1_024, 2
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
    if args.repeats < 1 or args.threads < 1 or args.eval_every < 1 or args.eval_episodes < 1:
        parser.error("--repeats, --threads, --eval-every and --eval-episodes must be >= 1")
    args.sections = [s for s in SECTIONS if s in args.sections]

    import ale_py
    import gymnasium
    import stable_baselines3
    import torch

    command = "python " + shlex.join([os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv))
    meta = {"command": command, "torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__,
            "gymnasium": gymnasium.__version__, "ale_py": ale_py.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": args.threads, "rlbase_revision": git_revision(),
            "platform": platform.platform(), "load_average_start": load_average(), "quick": args.quick,
            "sections": args.sections}
    print(f"command: {command}")
    print(f"torch {meta['torch']}, stable-baselines3 {meta['stable_baselines3']}, gymnasium {meta['gymnasium']}, "
          f"ale-py {meta['ale_py']}, python {meta['python']}, rlbase {meta['rlbase_revision']}")
    print(f"CPUs: {meta['cpu_count']} (torch.set_num_threads({args.threads}) in every run); "
          f"load average at start: {meta['load_average_start']}")
    if args.quick:
        print("QUICK MODE: tiny runs for a smoke test; the numbers below are not a benchmark.")
    print()

    jobs, notes, configs = plan(args)
    for note in notes:
        print("NOTE: " + note)
    results: list[dict[str, Any]] = []
    for i, job in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {job['section']} {job['env_id']}: {job['label']} ...", end=" ", flush=True)
        res = run_job(job, args.in_process)
        print(f"{res['wall_s']:.1f} s", flush=True)
        results.append({**job, **res})
    meta["load_average_end"] = load_average()
    print(f"load average at end: {meta['load_average_end']}\n")

    summary = report(args, jobs, results)
    for note in notes:
        print("NOTE: " + note)
    if args.json:
        with open(args.json, "w") as fh:
            runs = [{k: v for k, v in r.items() if k != "config"} for r in results]  # configs are listed once
            json.dump({"meta": meta, "notes": notes, "configs": configs, "results": runs, "summary": summary}, fh,
                      indent=2, default=str)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
