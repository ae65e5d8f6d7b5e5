"""`rlbase train` / `rlbase eval` on rlbase's own envs, through the console script's entry point.

The batched native env is picked automatically for `rlbase/...` ids, `--env-kwargs` reaches its
constructor, and evaluation plays the held-out (eval) split and reports the env's outcomes.
"""

from __future__ import annotations

import json

import pytest

from tests.test_cli import assert_ok, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("native_runs")
    proc = run_cli("train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7", "--num-envs", 8,
                   "--num-steps", 16, "--total-timesteps", 256, "--log-dir", log_dir, "--run-name", "maze",
                   cwd=log_dir)
    assert_ok(proc)
    return log_dir / "maze"


def test_train_records_env_kwargs_and_eval_reports_outcomes(maze_run):
    saved = json.loads((maze_run / "config.json").read_text())["config"]
    assert saved["env_kwargs"] == {"size": 7}
    proc = run_cli("eval", maze_run, "--episodes", 6, "--json", cwd=maze_run)
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["num_episodes"] == 6 and len(report["episodes"]) == 6
    # The maze reports success at each episode's end; its mean is in [0, 1] and matches the episodes.
    success = [e["success"] for e in report["episodes"]]
    assert set(success) <= {0.0, 1.0}
    assert report["outcomes"]["success"] == pytest.approx(sum(success) / 6)
    # A success is exactly an episode with a positive return (reward only at the exit).
    assert all((e["return"] > 0) == (e["success"] == 1.0) for e in report["episodes"])
    text = run_cli("eval", maze_run, "--episodes", 2, cwd=maze_run)
    assert_ok(text)
    assert "success: mean" in text.stdout


def test_dqn_on_native_cartpole(tmp_path):
    proc = run_cli("train", "dqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", 600, "--learning-starts", 100,
                   "--log-dir", tmp_path, "--run-name", "cp", cwd=tmp_path)
    assert_ok(proc)
    assert "rlbase/CartPole-v1" in proc.stderr
    proc = run_cli("eval", tmp_path / "cp", "--episodes", 2, "--json", cwd=tmp_path)
    assert_ok(proc)
    assert json.loads(proc.stdout)["env_id"] == "rlbase/CartPole-v1"


@pytest.mark.parametrize("args", [
    ("--env-kwargs", "size=8"),            # the maze needs an odd size
    ("--env-kwargs", "colour=red"),         # not a keyword of the env
    ("--env-kwargs", "size"),               # not KEY=VALUE
])
def test_bad_env_kwargs_are_one_line_errors(tmp_path, args):
    proc = run_cli("train", "ppo", "--env", "rlbase/Maze-v0", *args, "--total-timesteps", 64,
                   "--log-dir", tmp_path, cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert "env-kwargs" in line or "size" in line
    assert not any(tmp_path.iterdir()), "no run directory for a rejected command"


def test_eval_policy_flag_overrides_the_config(maze_run):
    kinds = {}
    for flag in ("--deterministic", "--no-deterministic"):
        proc = run_cli("eval", maze_run, "--episodes", 2, "--json", flag, cwd=maze_run)
        assert_ok(proc)
        kinds[flag] = json.loads(proc.stdout)["policy"]
    assert kinds == {"--deterministic": "deterministic", "--no-deterministic": "stochastic"}
