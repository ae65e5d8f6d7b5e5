"""Envs through the real `rlbase` console script: a user's env module (module:id, trained, evaluated
and resumed; --gym-packages), Gymnasium's Discrete observations (one-hot) and Tuple ones (refused),
and `rlbase eval --env-kwargs` playing another variant of a run's env.

Each command is a process of its own (tests/forkcli.py), so budgets are tiny and the user-env run
is shared by a module-scoped fixture. The rest of the lifecycle through the CLI: test_cli_lifecycle.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.clihelpers import DONE, eval_json, latest_state, number, read_config, read_records, run_cli, stderr_lines
from tests.test_cli import assert_ok, assert_one_line_error


# ---------------------------------------------------------------- user envs: module:id and --gym-packages

EPISODE_LENGTH = 6

USER_ENV = f'''
"""A user's env module: registers its env on import. The constructor takes no render_mode."""
import gymnasium as gym
import numpy as np


class Walk(gym.Env):
    """Box(3) observations, two actions, reward = action, every episode lasts {EPISODE_LENGTH} steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return self.np_random.uniform(-1.0, 1.0, 3).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {{}}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), self.t >= {EPISODE_LENGTH}, False, {{}}


gym.register("{{env_name}}", entry_point=Walk)
'''


def completed_episodes(num_envs: int, steps: int) -> int:
    """Episodes a fixed-length env finishes in `steps` total steps, stepped evenly over `num_envs`."""
    return num_envs * (steps // num_envs // EPISODE_LENGTH)


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict:
    """A working directory holding a user's env module, and a PPO run on `module:MyEnv-v0` there,
    trained for 64 steps and then resumed to 128."""
    cwd = tmp_path_factory.mktemp("user_env")
    module = f"myenvs_{uuid.uuid4().hex[:8]}"
    (cwd / f"{module}.py").write_text(USER_ENV.replace("{env_name}", "MyEnv-v0"))
    env_id = f"{module}:MyEnv-v0"
    first = run_cli("train", "ppo", "--env", env_id, "--num-envs", 2, "--num-steps", 16, "--total-timesteps", 64,
                    "--run-name", "u", cwd=cwd)
    assert_ok(first)
    run_dir = cwd / "runs" / "u"
    first_config = read_config(run_dir)
    first_state = latest_state(run_dir)
    n_first = len(read_records(run_dir))
    resumed = run_cli("train", "ppo", "--resume", "runs/u", "--total-timesteps", 128, cwd=cwd)
    assert_ok(resumed)
    return {"cwd": cwd, "module": module, "env_id": env_id, "run_dir": run_dir, "first": first, "resumed": resumed,
            "first_config": first_config, "first_state": first_state, "n_first": n_first}


def test_user_module_env_trains_evaluates_and_resumes(user_env):
    cwd, run_dir, env_id = user_env["cwd"], user_env["run_dir"], user_env["env_id"]
    assert user_env["first_config"]["config"]["env_id"] == env_id
    assert user_env["first_state"]["step"] == 64
    done = DONE.fullmatch(stderr_lines(user_env["first"])[-1])
    assert done and number(done[1]) == 64 and number(done[3]) == completed_episodes(2, 64)

    assert "from step 64" in stderr_lines(user_env["resumed"])[0]
    assert latest_state(run_dir)["step"] == 128
    after = read_records(run_dir)[user_env["n_first"]:]
    assert after and all(r["global_step"] > 64 for r in after) and after[-1]["global_step"] == 128
    config = read_config(run_dir)["config"]
    assert config["env_id"] == env_id and config["total_timesteps"] == 128

    report = eval_json(Path("runs/u"), "--episodes", 3, cwd=cwd)
    assert report["env_id"] == env_id and report["global_step"] == 128
    for episode in report["episodes"]:  # the user's env: fixed length, reward = action
        assert episode["length"] == EPISODE_LENGTH and 0 <= episode["return"] <= EPISODE_LENGTH


def test_resumed_done_line_counts_all_episodes(user_env):
    done = DONE.fullmatch(stderr_lines(user_env["resumed"])[-1])
    assert done and number(done[1]) == 128
    # 64 steps before (2 envs: 5 episodes each), then fresh episodes for 64 more (5 each again).
    assert number(done[3]) == completed_episodes(2, 64) * 2


def test_one_episode_done_line_on_a_user_env(user_env, tmp_path):
    proc = run_cli("train", "dqn", "--env", user_env["env_id"], "--num-envs", 1, "--total-timesteps", EPISODE_LENGTH,
                   "--log-dir", tmp_path, "--run-name", "one", cwd=user_env["cwd"])
    assert_ok(proc)
    done = DONE.fullmatch(stderr_lines(proc)[-1])
    assert done and done.group(1, 2, 3, 4) == (str(EPISODE_LENGTH), "steps", "1", "episode"), proc.stderr


def test_missing_user_module_is_a_one_line_error(tmp_path):
    module = f"no_such_module_{uuid.uuid4().hex[:8]}"
    line = assert_one_line_error(run_cli("train", "ppo", "--env", f"{module}:MyEnv-v0", "--log-dir", tmp_path / "logs",
                                         cwd=tmp_path), 2)
    assert module in line and "--env" in line
    assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()


def test_gym_packages_registers_the_env(tmp_path):
    package = f"mypkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(USER_ENV.replace("{env_name}", "PkgWalk-v0"))
    proc = run_cli("train", "ppo", "--env", "PkgWalk-v0", "--gym-packages", package, "--num-envs", 2,
                   "--num-steps", 16, "--total-timesteps", 32, "--run-name", "p", cwd=tmp_path)
    assert_ok(proc)
    config = read_config(tmp_path / "runs" / "p")["config"]
    assert config["gym_packages"] == [package] and config["env_id"] == "PkgWalk-v0"
    report = eval_json(Path("runs/p"), "--episodes", 2, cwd=tmp_path)
    assert report["env_id"] == "PkgWalk-v0"
    assert [e["length"] for e in report["episodes"]] == [EPISODE_LENGTH] * 2
    # Without the package the id is unknown: the flag is what registered it.
    line = assert_one_line_error(run_cli("train", "ppo", "--env", "PkgWalk-v0", "--log-dir", tmp_path / "other",
                                         cwd=tmp_path), 2)
    assert "PkgWalk-v0" in line


# ---------------------------------------------------------------- Gymnasium observation spaces


def test_discrete_observations_train_and_evaluate(tmp_path):
    import gymnasium as gym
    from safetensors.torch import load_file

    n_states = gym.make("FrozenLake-v1").observation_space.n
    proc = run_cli("train", "ppo", "--env", "FrozenLake-v1", "--num-envs", 4, "--num-steps", 32,
                   "--total-timesteps", 256, "--log-dir", tmp_path, "--run-name", "fl", cwd=tmp_path)
    assert_ok(proc)
    run_dir = tmp_path / "fl"
    assert latest_state(run_dir)["step"] == 256
    name = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
    tensors = load_file(str(run_dir / "checkpoints" / name / "model.safetensors"))
    in_widths = {t.shape[1] for k, t in tensors.items() if t.ndim == 2 and not k.startswith(("optim", "rng"))}
    # One-hot observations: the first layers read n_states inputs, not one integer.
    assert n_states in in_widths and 1 not in in_widths, in_widths
    report = eval_json(run_dir, "--episodes", 3)
    assert report["num_episodes"] == 3
    for episode in report["episodes"]:
        assert episode["length"] >= 1 and episode["return"] in (0.0, 1.0)


def test_tuple_observations_are_refused_in_one_line(tmp_path):
    line = assert_one_line_error(run_cli("train", "ppo", "--env", "Blackjack-v1", "--log-dir", tmp_path / "logs",
                                         cwd=tmp_path), 2)
    assert "Blackjack-v1" in line and "Tuple" in line and "FlattenObservation" in line
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- rlbase eval --env-kwargs


def test_eval_env_kwargs_override_the_runs_env(tmp_path):
    """`rlbase eval --env-kwargs` plays another variant of the run's env (here: a 5-step time limit)."""
    assert_ok(run_cli("train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7", "--num-envs", "4",
                      "--num-steps", "8", "--total-timesteps", "64", "--log-dir", tmp_path, "--run-name", "m",
                      cwd=tmp_path))
    proc = run_cli("eval", tmp_path / "m", "--episodes", "4", "--json", "--env-kwargs", "max_episode_steps=5",
                   cwd=tmp_path)
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["env_kwargs"] == {"size": 7, "max_episode_steps": 5}
    assert all(episode["length"] <= 5 for episode in report["episodes"])
    assert (tmp_path / "m" / "eval_step_0000000064_max_episode_steps-5.json").is_file()
    plain = json.loads(run_cli("eval", tmp_path / "m", "--episodes", "4", "--json", cwd=tmp_path).stdout)
    assert "env_kwargs" not in plain and max(e["length"] for e in plain["episodes"]) > 5  # 4 * 7**2 steps otherwise
    assert "--env-kwargs" in assert_one_line_error(run_cli("eval", tmp_path / "m", "--env-kwargs", "oops",
                                                           cwd=tmp_path), 2)
