"""The `rlbase` console script with the policy-gradient agents, run as a user runs it.

Each command is a process of its own (tests/forkcli.py), so budgets are tiny and one PPO
run directory is shared by the eval and resume tests of this module.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path

import pytest

from rlbase.agents.ppo import PPOConfig
from rlbase.config import field_docs, flag_name, load_preset

from tests.test_cli import assert_ok, assert_one_line_error, run_cli


def latest_state(run_dir: Path) -> dict:
    name = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
    return json.loads((run_dir / "checkpoints" / name / "state.json").read_text())


def read_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def eval_json(run_dir: Path, *args) -> dict:
    proc = run_cli("eval", run_dir, "--json", *args, cwd=run_dir.parent)
    assert_ok(proc)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def check_trained(run_dir: Path, algo: str, env_id: str, total: int) -> dict:
    """The run directory of a finished run: config, final checkpoint, counters, logs."""
    config = read_config(run_dir)
    assert config["algo"] == algo and config["config"]["env_id"] == env_id
    cfg = config["config"]
    batch = cfg["num_steps"] * cfg["num_envs"]
    rollouts = -(-total // batch)
    state = latest_state(run_dir)
    assert state["step"] == rollouts * batch  # whole rollouts, until total is reached
    per_rollout = cfg["update_epochs"] * cfg["num_minibatches"] if algo == "ppo" else 1
    assert state["counters"] == {"global_step": state["step"], "rollouts": rollouts,
                                 "num_updates": rollouts * per_rollout}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["global_step"] == state["step"]
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/explained_variance"):
        assert key in records[-1], key
    assert list(run_dir.glob("events.out.tfevents.*"))
    return state


@pytest.fixture(scope="module")
def ppo_cartpole(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("cli_pg")
    proc = run_cli("train", "ppo", "--env", "CartPole-v1", "--total-timesteps", 512, "--log-dir", log_dir,
                   "--run-name", "ppo", cwd=log_dir)
    assert_ok(proc)
    assert "training ppo on CartPole-v1" in proc.stderr and "rlbase eval" in proc.stderr
    return log_dir / "ppo"


# ---------------------------------------------------------------- train, eval, resume


def test_train_ppo_cartpole_uses_the_preset(ppo_cartpole):
    check_trained(ppo_cartpole, "ppo", "CartPole-v1", 512)
    cfg = read_config(ppo_cartpole)["config"]
    preset = load_preset("ppo", "CartPole-v1")
    for key in ("num_envs", "num_steps", "update_epochs", "num_minibatches", "clip_coef", "gae_lambda", "gamma"):
        assert cfg[key] == preset[key], key
    assert cfg["total_timesteps"] == 512  # the flag wins over the preset


def test_eval_json_ppo_cartpole(ppo_cartpole):
    report = eval_json(ppo_cartpole, "--episodes", 3, "--seed", 5)
    assert report["algo"] == "ppo" and report["env_id"] == "CartPole-v1"
    assert report["policy"] == "deterministic" and report["epsilon"] is None
    assert report["global_step"] == latest_state(ppo_cartpole)["step"]
    episodes = report["episodes"]
    assert len(episodes) == report["num_episodes"] == 3
    for e in episodes:
        assert e["length"] > 0 and e["return"] == e["length"]  # CartPole pays 1 per step
    returns = [e["return"] for e in episodes]
    assert report["mean_return"] == pytest.approx(statistics.mean(returns))
    assert report["std_return"] == pytest.approx(statistics.stdev(returns))
    assert report["ci95_low"] <= report["mean_return"] <= report["ci95_high"]
    assert report["seed"] == 5
    assert (ppo_cartpole / f"eval_step_{report['global_step']:010d}.json").is_file()


def test_resume_ppo(ppo_cartpole, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(ppo_cartpole, run_dir)
    before = latest_state(run_dir)
    n_records = len((run_dir / "metrics.jsonl").read_text().splitlines())
    proc = run_cli("train", "ppo", "--resume", run_dir, "--total-timesteps", 1024, cwd=tmp_path)
    assert_ok(proc)
    state = check_trained(run_dir, "ppo", "CartPole-v1", 1024)
    assert state["step"] == 1024 > before["step"]
    assert state["counters"]["rollouts"] == 2 * before["counters"]["rollouts"]
    assert state["counters"]["num_updates"] == 2 * before["counters"]["num_updates"]
    assert read_config(run_dir)["config"]["total_timesteps"] == 1024
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][n_records:]
    assert records and all(r["global_step"] > before["step"] for r in records)
    # Resuming a finished run without a larger budget is a one-line error.
    line = assert_one_line_error(run_cli("train", "ppo", "--resume", run_dir, cwd=tmp_path), 2)
    assert "--total-timesteps" in line


@pytest.mark.parametrize("algo,flags", [
    ("a2c", ["--num-envs", 4]),
    ("reinforce", ["--num-envs", 4, "--num-steps", 64]),
])
def test_train_a2c_and_reinforce(tmp_path, algo, flags):
    proc = run_cli("train", algo, "--env", "CartPole-v1", "--total-timesteps", 256, *flags,
                   "--log-dir", tmp_path, "--run-name", algo, cwd=tmp_path)
    assert_ok(proc)
    run_dir = tmp_path / algo
    check_trained(run_dir, algo, "CartPole-v1", 256)
    cfg = read_config(run_dir)["config"]
    assert cfg["num_envs"] == 4 and cfg["gae_lambda"] == 1.0
    if algo == "a2c":
        assert cfg["optimizer"] == "rmsprop" and cfg["num_steps"] == load_preset("a2c", "CartPole-v1")["num_steps"]


def test_train_and_eval_ppo_pendulum_squash(tmp_path):
    proc = run_cli("train", "ppo", "--env", "Pendulum-v1", "--total-timesteps", 256, "--num-envs", 2,
                   "--num-steps", 64, "--num-minibatches", 2, "--action-bounds", "squash",
                   "--log-dir", tmp_path, "--run-name", "pend", cwd=tmp_path)
    assert_ok(proc)
    run_dir = tmp_path / "pend"
    check_trained(run_dir, "ppo", "Pendulum-v1", 256)
    cfg = read_config(run_dir)["config"]
    assert cfg["action_bounds"] == "squash" and cfg["normalize_obs"] and cfg["normalize_reward"]  # preset values
    report = eval_json(run_dir, "--episodes", 2)
    assert [e["length"] for e in report["episodes"]] == [200, 200]
    assert all(-2000 < e["return"] < 0 for e in report["episodes"])  # Pendulum's costs are in (-16.3, 0] per step
    assert (run_dir / f"eval_step_{latest_state(run_dir)['step']:010d}.json").is_file()


# ---------------------------------------------------------------- help and bad input


def test_train_ppo_help_lists_the_flags_with_their_docs(tmp_path):
    proc = run_cli("train", "ppo", "--help", cwd=tmp_path)
    assert_ok(proc)
    squeezed = "".join(proc.stdout.split())  # help lines are wrapped (and may break at hyphens)
    docs = field_docs(PPOConfig)
    for field in dataclasses.fields(PPOConfig):
        assert flag_name(field.name) in proc.stdout, field.name
        assert "".join(docs[field.name].split()) in squeezed, f"the doc of {field.name} is missing"
    for flag in ("--update-epochs", "--num-minibatches", "--clip-coef", "--target-kl", "--gae-lambda",
                 "--action-bounds", "--normalize-obs", "--no-normalize-obs", "--resume"):
        assert flag in proc.stdout, flag


PG_ERRORS = {  # id: (args after `rlbase`, texts expected in the message)
    "bad_action_bounds": (["train", "ppo", "--env", "Pendulum-v1", "--action-bounds", "bogus"],
                          ["--action-bounds", "bogus"]),
    "zero_minibatches": (["train", "ppo", "--env", "CartPole-v1", "--num-minibatches", "0"], ["--num-minibatches"]),
    "dqn_continuous": (["train", "dqn", "--env", "Pendulum-v1"], ["Pendulum-v1", "discrete"]),
    "reinforce_gae_lambda": (["train", "reinforce", "--env", "CartPole-v1", "--gae-lambda", "0.9"], ["--gae-lambda"]),
    "update_epochs_not_int": (["train", "ppo", "--env", "CartPole-v1", "--update-epochs", "abc"],
                              ["--update-epochs", "abc"]),
}


@pytest.mark.parametrize("case", list(PG_ERRORS))
def test_train_usage_errors(tmp_path, case):
    args, expected = PG_ERRORS[case]
    proc = run_cli(*args, "--log-dir", tmp_path / "logs", "--run-name", "bad", cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    for text in expected:
        assert text in line, line
    assert not list(tmp_path.rglob("config.json")), "a command that cannot train left a run directory"
