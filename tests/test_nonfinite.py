"""Non-finite numbers stop training with one line and never reach a checkpoint.

The env in tests/userenvs/poison.py turns its observations or rewards to NaN or infinity from a
given step on: without --check-env-values the NaN reaches the loss and the weights, and training
stops at the next log interval or checkpoint; with it, the error names the step the env's first
non-finite value came at. Either way the newest checkpoint on disk is finite, metrics.jsonl is
valid JSON, and the exit code is 1."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from rlbase.checkpoint import load_checkpoint
from rlbase.cli import main
from rlbase.guards import CheckedEnv, first_nonfinite_tensor, first_nonfinite_value

USERENVS = Path(__file__).parent / "userenvs"
NUM_ENVS, POISON_AT = 4, 150  # per env: the first bad value is at global step 600


@pytest.fixture(autouse=True)
def poison_module(monkeypatch):
    monkeypatch.syspath_prepend(str(USERENVS))


def train(capsys, tmp_path: Path, algo: str, *extra: str, what: str = "observation", value: str = "nan"):
    args = ["train", algo, "--env", "poison:poison/Poison-v0", "--env-kwargs",
            f"poison_at={POISON_AT},what={what},value={value}", "--num-envs", str(NUM_ENVS),
            "--total-timesteps", "2000", "--log-interval", "200", "--checkpoint-interval", "160",
            "--hidden-sizes", "16", "--log-dir", str(tmp_path), "--run-name", "run", *extra]
    if algo == "dqn":
        args += ["--learning-starts", "64", "--buffer-size", "2000"]
    else:
        args += ["--num-steps", "16"]
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlbase:")]
    return code, err, tmp_path / "run"


def strict_records(run_dir: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"bare {name} in metrics.jsonl")
    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_finite_checkpoints_only(run_dir: Path, before_step: int) -> int:
    folders = sorted((run_dir / "checkpoints").glob("step_*"))
    assert folders, "the finite checkpoints were pruned"
    for folder in folders:
        tensors, state, _ = load_checkpoint(folder)
        assert first_nonfinite_tensor(tensors) is None, f"{folder.name} holds NaN"
    step = load_checkpoint(run_dir).state["step"]
    assert step <= before_step
    return step


@pytest.mark.parametrize("algo", ["dqn", "ppo", "a2c"])
@pytest.mark.parametrize("what", ["observation", "reward"])
def test_nan_from_the_env_stops_training_and_keeps_the_last_finite_checkpoint(capsys, tmp_path, algo, what):
    code, err, run_dir = train(capsys, tmp_path, algo, what=what)
    assert code == 1
    (error,) = [line for line in err if line.startswith("rlbase: error:")]
    stopped = re.match(r"rlbase: error: training stopped at step ([\d,]+): (\S+) ", error)
    assert stopped, error
    step = int(stopped.group(1).replace(",", ""))
    assert step >= NUM_ENVS * POISON_AT
    kept = assert_finite_checkpoints_only(run_dir, step)
    assert f"the newest checkpoint, step {kept:,}, is kept" in error
    records = strict_records(run_dir)
    assert records and all(r["global_step"] <= step for r in records)


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
@pytest.mark.parametrize("what, value", [("observation", "nan"), ("reward", "1e39")])  # 1e39: inf in float32
def test_check_env_values_names_the_step_of_the_first_bad_value(capsys, tmp_path, algo, what, value):
    code, err, run_dir = train(capsys, tmp_path, algo, "--check-env-values", what=what, value=value)
    assert code == 1
    (error,) = [line for line in err if line.startswith("rlbase: error:")]
    assert f"the env's {what} is NaN or infinite at step {NUM_ENVS * POISON_AT:,}" in error
    assert_finite_checkpoints_only(run_dir, NUM_ENVS * POISON_AT)


def test_check_env_values_changes_nothing_on_a_healthy_env(capsys, tmp_path):
    """Same seed, same run, with and without the check: bit-identical weights."""
    weights = []
    for name, extra in (("plain", ()), ("checked", ("--check-env-values",))):
        code = main(["train", "dqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", "600", "--num-envs", "4",
                     "--hidden-sizes", "16", "--learning-starts", "100", "--log-dir", str(tmp_path), "--run-name", name,
                     *extra])
        assert code == 0
        weights.append(load_checkpoint(tmp_path / name).tensors)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("flag, value", [("--learning-rate", "inf"), ("--learning-rate", "nan"),
                                         ("--adam-eps", "nan"), ("--adam-eps", "0"), ("--per-eps", "-1"),
                                         ("--gamma", "nan"), ("--max-grad-norm", "inf")])
def test_non_finite_or_out_of_range_hyperparameters_are_refused_before_the_run_dir_exists(capsys, tmp_path, flag,
                                                                                          value):
    code = main(["train", "dqn", "--env", "CartPole-v1", flag, value, "--log-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"rlbase: error: invalid {flag}:"), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag, value", [("--log-std-init", "nan"), ("--log-std-init", "1e6"), ("--clip-obs", "inf")])
def test_pg_hyperparameters_are_refused(capsys, tmp_path, flag, value):
    code = main(["train", "ppo", "--env", "Pendulum-v1", flag, value, "--log-dir", str(tmp_path / "runs")])
    assert code == 2 and f"invalid {flag}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_diverging_but_finite_training_runs_on_and_shows_in_the_logs(capsys, tmp_path):
    code = main(["train", "dqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", "1200", "--num-envs", "4",
                 "--hidden-sizes", "16", "--learning-starts", "100", "--learning-rate", "10", "--log-interval", "200",
                 "--log-dir", str(tmp_path), "--run-name", "run"])
    err = capsys.readouterr().err
    losses = [r["train/loss"] for r in strict_records(tmp_path / "run") if "train/loss" in r]
    if code == 0:
        assert losses and max(v for v in losses if v is not None) > 1.0  # the loss shows the divergence
    else:  # or it overflowed: then it stopped with one line, no NaN checkpoint
        assert code == 1 and "training stopped at step" in err
        assert_finite_checkpoints_only(tmp_path / "run", 1200)


def test_guards():
    assert first_nonfinite_value({"a": 1.0, "train/explained_variance": math.nan, "b": math.inf}) == "b = inf"
    assert first_nonfinite_value({"a": 1, "flag": True}) is None
    tensors = {"ok": torch.ones(3), "ints": torch.arange(3), "bad": torch.tensor([0.0, math.nan]), "later": torch.ones(1) * math.inf}
    assert first_nonfinite_tensor(tensors) == "bad"
    assert first_nonfinite_tensor({"ok": torch.ones(2)}) is None


def test_checked_env_forwards_everything_else():
    from rlbase.config import make_env
    from rlbase.agents.dqn import DQNConfig

    env = make_env(DQNConfig(env_id="rlbase/CartPole-v1"), 2, torch.device("cpu"))
    checked = CheckedEnv(env)
    assert checked.num_envs == 2 and checked.single_action_space == env.single_action_space
    assert checked.frame_stack == env.frame_stack and checked.env_id == env.env_id
    obs, _ = checked.reset(seed=0)
    checked.step(torch.zeros(2, dtype=torch.long))
    assert checked.problem() is None
    checked.close()
