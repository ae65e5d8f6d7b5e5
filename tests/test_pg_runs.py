"""Policy-gradient runs through the run lifecycle (config.json, logs, checkpoints): a short PPO run on
Pendulum with observation and reward normalisation, shared by a module-scoped fixture.

Checkpoint contents and counters, TensorBoard tags, learning-rate annealing (and not), the target-KL
early stop, resuming exactly where the run ended, and evaluation with the saved normalisation.

Config and network checks: test_pg_config.py; smoke runs: test_pg_smoke.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rlbase.agents import pg, ppo
from rlbase.checkpoint import load_checkpoint
from rlbase.envs import make_vec_env
from rlbase.evaluate import evaluate, play_episodes
from rlbase.lifecycle import execute, plan_config
from rlbase.run import Run

from tests.pghelpers import CPU, expected_counts, run_train, tiny


# ============================================================================ runs: logging, resume, evaluation
RUN_CFG = dict(env_id="Pendulum-v1", total_timesteps=512, num_envs=2, num_steps=64, update_epochs=2,
               num_minibatches=2, hidden_sizes=(32, 32), normalize_obs=True, normalize_reward=True,
               learning_rate=1e-3, log_interval=128, seed=0, device="cpu")


def train_with_run(cfg, run_dir: Path, resume=None) -> dict:
    """Train PPO through the run lifecycle into `run_dir` (config.json, logs, checkpoints), optionally resuming."""
    p = plan_config(cfg, resume=resume, run_dir=run_dir)
    try:
        return execute(p, run_dir=run_dir, progress=False)
    finally:
        p.close()


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """A short PPO run on Pendulum with observation and reward normalisation, logged every rollout.
    Also returns the optimizer it trained with (captured from `make_adam`)."""
    created = []

    def capture(*args, **kwargs):
        optimizer = make_adam(*args, **kwargs)
        created.append(optimizer)
        return optimizer

    make_adam = pg.make_adam
    cfg = ppo.PPOConfig(**RUN_CFG)
    run_dir = tmp_path_factory.mktemp("pg_runs") / "ppo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pg, "make_adam", capture)
        result = train_with_run(cfg, run_dir)
    assert len(created) == 1
    return {"cfg": cfg, "run_dir": run_dir, "result": result, "optimizer": created[0]}


def metrics_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_checkpoint_and_counters(ppo_run):
    cfg, result = ppo_run["cfg"], ppo_run["result"]
    steps, updates = expected_counts("ppo", cfg)
    tensors, state, _ = load_checkpoint(ppo_run["run_dir"])
    assert state["step"] == steps == result["global_step"]
    assert state["counters"] == {"global_step": steps, "rollouts": 4, "num_updates": updates}
    assert state["algo"] == "ppo" and state["config"]["normalize_obs"] is True
    model_state = result["model"].state_dict()
    for key, value in model_state.items():
        assert torch.equal(tensors[f"model.{key}"], value), key
    norm = result["normalizer"]
    for prefix, rms in (("obs_rms", norm.obs), ("ret_rms", norm.ret)):
        for part in ("mean", "var", "count"):
            assert torch.equal(tensors[f"{prefix}.{part}"], getattr(rms, part)), (prefix, part)


def test_tensorboard_has_the_sb3_on_policy_tags(ppo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(ppo_run["run_dir"]))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl",
                "train/clip_fraction", "train/explained_variance", "train/learning_rate", "train/std",
                "train/n_updates", "rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps"):
        assert tag in scalars, f"{tag} missing; have {sorted(scalars)}"
    assert [e.step for e in acc.Scalars("train/value_loss")] == [128, 256, 384, 512]
    assert acc.Scalars("rollout/ep_len_mean")[-1].value == 200  # Pendulum episodes are 200 steps
    assert acc.Scalars("time/fps")[-1].value > 0
    assert acc.Scalars("train/n_updates")[-1].value == expected_counts("ppo", ppo_run["cfg"])[1]


def test_learning_rate_is_annealed_per_rollout(ppo_run):
    cfg = ppo_run["cfg"]
    records = metrics_records(ppo_run["run_dir"])
    lrs = [r["train/learning_rate"] for r in records]
    num_rollouts = 4
    assert len(lrs) == num_rollouts
    assert lrs[0] == pytest.approx(cfg.learning_rate)
    assert all(b < a for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs == pytest.approx([cfg.learning_rate * (1 - k / num_rollouts) for k in range(num_rollouts)])
    assert lrs[-1] == pytest.approx(cfg.learning_rate / num_rollouts)  # small after the last rollout
    assert ppo_run["optimizer"].param_groups[0]["lr"] == pytest.approx(lrs[-1])


def test_learning_rate_constant_without_annealing(monkeypatch):
    created = []
    make_adam = pg.make_adam
    monkeypatch.setattr(pg, "make_adam", lambda *a, **k: created.append(make_adam(*a, **k)) or created[-1])
    cfg = tiny("ppo", "CartPole-v1", anneal_lr=False, learning_rate=3e-4)
    run_train("ppo", cfg)
    assert created[0].param_groups[0]["lr"] == pytest.approx(3e-4)


def test_target_kl_stops_the_epochs_early():
    base = dict(total_timesteps=256, update_epochs=4, num_minibatches=2, learning_rate=1e-2)
    full = run_train("ppo", tiny("ppo", "CartPole-v1", **base))
    cfg = tiny("ppo", "CartPole-v1", target_kl=1e-12, **base)
    stopped = run_train("ppo", cfg)
    rollouts = 4
    assert full["num_updates"] == rollouts * 4 * 2
    assert stopped["num_updates"] < full["num_updates"]
    # The check runs after each epoch: one epoch (all its minibatches) per rollout, then stop.
    assert stopped["num_updates"] == rollouts * cfg.num_minibatches
    assert stopped["global_step"] == full["global_step"] == 256
    loose = run_train("ppo", tiny("ppo", "CartPole-v1", target_kl=1e6, **base))
    assert loose["num_updates"] == full["num_updates"]


def test_resume_restores_state_and_continues(ppo_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "resumed"
    shutil.copytree(ppo_run["run_dir"], run_dir)
    first = ppo_run["result"]
    n_before = len(metrics_records(run_dir))
    tensors, state, buffer = load_checkpoint(run_dir, CPU, with_buffer=True)
    assert state["step"] == 512 and buffer is None

    restored = {}
    restore = Run.restore

    def spy(self, **registered):
        counters = restore(self, **registered)
        model, optimizer, (normalizer,) = registered["modules"]["model"], registered["optimizer"], registered["state"]
        restored.update(model=copy.deepcopy(model.state_dict()), optimizer=copy.deepcopy(optimizer.state_dict()),
                        normalizer={name: (rms.mean.clone(), rms.var.clone(), rms.count.clone())
                                    for name, rms in (("obs", normalizer.obs), ("ret", normalizer.ret))},
                        generator=self.generator.get_state().clone(), torch_rng=torch.get_rng_state().clone())
        return counters

    monkeypatch.setattr(Run, "restore", spy)
    cfg = dataclasses.replace(ppo_run["cfg"], total_timesteps=768)
    result = train_with_run(cfg, run_dir, resume=(tensors, state, buffer))

    # What training resumed from is exactly what the first run ended with.
    assert restored, "the resumed run did not load the checkpoint"
    for key, value in first["model"].state_dict().items():
        assert torch.equal(restored["model"][key], value), key
    saved_opt = ppo_run["optimizer"].state_dict()
    assert restored["optimizer"]["state"].keys() == saved_opt["state"].keys()
    for index, values in saved_opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(restored["optimizer"]["state"][index][key]).cpu(),
                               torch.as_tensor(values[key]).cpu()), (index, key)
    assert restored["optimizer"]["param_groups"][0]["lr"] == pytest.approx(saved_opt["param_groups"][0]["lr"])
    for name, rms in (("obs", first["normalizer"].obs), ("ret", first["normalizer"].ret)):
        mean, var, count = restored["normalizer"][name]
        assert torch.equal(mean, rms.mean) and torch.equal(var, rms.var) and torch.equal(count, rms.count), name
    assert torch.equal(restored["generator"], tensors["rng.actions"])
    assert torch.equal(restored["torch_rng"], tensors["rng.torch"])

    # Counters continue: 6 rollouts of 128 steps in all.
    steps, updates = expected_counts("ppo", cfg)
    assert result["global_step"] == steps == 768
    assert result["num_updates"] == updates
    _, final_state, _ = load_checkpoint(run_dir)
    assert final_state["step"] == 768
    assert final_state["counters"] == {"global_step": 768, "rollouts": 6, "num_updates": updates}
    # The normaliser kept counting from the saved statistics.
    assert float(result["normalizer"].obs.count) > float(first["normalizer"].obs.count)
    records = metrics_records(run_dir)[n_before:]
    assert [r["global_step"] for r in records] == [640, 768]
    # The schedule continues from rollout 4 of 6 (not from the start).
    assert records[0]["train/learning_rate"] == pytest.approx(cfg.learning_rate * (1 - 4 / 6))
    assert records[-1]["train/n_updates"] == updates


def test_evaluate_applies_the_saved_observation_normalisation(ppo_run, tmp_path):
    run_dir = tmp_path / "eval"
    shutil.copytree(ppo_run["run_dir"], run_dir)
    report = evaluate(run_dir, episodes=2, seed=3, device=CPU)
    assert report["algo"] == "ppo" and report["policy"] == "deterministic" and report["global_step"] == 512
    assert [e["length"] for e in report["episodes"]] == [200, 200]
    assert all(math.isfinite(e["return"]) and e["return"] < 0 for e in report["episodes"])
    assert (run_dir / "eval_step_0000000512.json").is_file()

    tensors, _, _ = load_checkpoint(run_dir)
    model = ppo_run["result"]["model"]
    model.eval()
    mean, var = tensors["obs_rms.mean"], tensors["obs_rms.var"]
    assert not torch.allclose(mean, torch.zeros_like(mean))  # statistics were learnt

    @torch.no_grad()
    def reference(obs: torch.Tensor, generator=None) -> torch.Tensor:
        normalised = ((obs - mean) / torch.sqrt(var + 1e-8)).clamp(-10.0, 10.0).float()
        params, _ = model(normalised)
        return params[:, :1].clamp(-2.0, 2.0)  # the mean action, clipped to Pendulum's bounds

    env = make_vec_env("Pendulum-v1", 2, CPU)
    try:
        policy = ppo.AGENT.load_policy(ppo_run["cfg"], tensors, env.single_observation_space, env.single_action_space, CPU)
        obs = torch.tensor(np.stack([env.single_observation_space.sample() for _ in range(256)]))
        actions = policy(obs, torch.Generator().manual_seed(0))
        assert actions.shape == (256, 1)
        torch.testing.assert_close(actions, reference(obs))
        with torch.no_grad():
            unnormalised = model(obs)[0][:, :1].clamp(-2.0, 2.0)
        assert not torch.allclose(actions, unnormalised, atol=1e-3)  # the normalisation matters here
        # Playing the reference policy gives the very episodes `evaluate` reported.
        returns, lengths = play_episodes(env, reference, 2, seed=3)
    finally:
        env.close()
    assert sorted(returns) == pytest.approx(sorted(e["return"] for e in report["episodes"]), rel=1e-5)


def test_stochastic_eval_policy_samples(ppo_run):
    cfg = dataclasses.replace(ppo_run["cfg"], eval_deterministic=False)
    tensors, _, _ = load_checkpoint(ppo_run["run_dir"])
    env = make_vec_env("Pendulum-v1", 2, CPU)
    try:
        policy = ppo.AGENT.load_policy(cfg, tensors, env.single_observation_space, env.single_action_space, CPU)
        obs = torch.zeros(500, 3)
        a = policy(obs, torch.Generator().manual_seed(0))
        b = policy(obs, torch.Generator().manual_seed(0))
    finally:
        env.close()
    assert torch.equal(a, b)  # reproducible from the generator
    assert float(a.std()) > 0.1  # but not a constant action
    assert bool(((a >= -2.0) & (a <= 2.0)).all())
