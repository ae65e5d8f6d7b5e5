"""The Python API (rlbase.api): constructing an agent, and the package surface.

The same presets as `rlbase train` (compared with its --print-config), keyword overrides, the
preset that follows the kind of observation; the three forms of env (an id, a ready
TensorVecEnv, a list of Gymnasium env factories with the user's wrappers or an unregistered env
class) and the wrong ones; what `rlbase` exports, and A2C and REINFORCE end to end.

Budgets are tiny and every agent runs on the CPU (see test_api_round_trip.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import rlbase
from rlbase import A2C, DQN, PPO, REINFORCE, load
from rlbase.api import Algorithm
from rlbase.envs import make_vec_env
from rlbase.errors import UsageError

from tests.apihelpers import CARTPOLE, CPU, as_json, cartpole_observations


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
class RewardScale(gym.Wrapper):
    """A user's wrapper: doubles the reward and counts the steps it sees (in `counter[0]`)."""

    def __init__(self, env: gym.Env, counter: list[int], scale: float = 2.0):
        super().__init__(env)
        self.counter, self.scale = counter, scale

    def step(self, action):
        self.counter[0] += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, self.scale * float(reward), terminated, truncated, info


def scaled_cartpole(counter: list[int]) -> gym.Env:
    return RewardScale(gym.make("CartPole-v1"), counter)


class Corridor(gym.Env):
    """A user's own env, not registered with Gymnasium: walk right twice to finish (reward 1);
    truncated after 20 steps."""

    observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.steps = 0
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, np.float32)
        obs[self.pos] = 1.0
        return obs

    def step(self, action):
        self.pos = max(0, self.pos + (1 if int(action) == 1 else -1))
        self.steps += 1
        done = self.pos >= 2
        return self._obs(), float(done), done, self.steps >= 20, {}


# --------------------------------------------------------------------------------------------
# Presets: the same config as `rlbase train`
# --------------------------------------------------------------------------------------------
RLBASE_EXE = Path(sys.executable).parent / "rlbase"


def printed_config(tmp_path: Path, *args: str) -> dict:
    command = [str(RLBASE_EXE)] if RLBASE_EXE.exists() else [shutil.which("rlbase") or "rlbase"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([*command, "train", *args, "--print-config"], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


PARITY = {
    "ppo_native_cartpole": (PPO, CARTPOLE, {"seed": 3}, ["ppo", "--env", CARTPOLE, "--seed", "3"]),
    "dqn_gym_cartpole_lr": (DQN, "CartPole-v1", {"learning_rate": 5e-4},
                            ["dqn", "--env", "CartPole-v1", "--learning-rate", "5e-4"]),
    "ppo_maze_pixels": (PPO, "rlbase/Maze-v0", {"env_kwargs": {"obs_mode": "pixels"}},
                        ["ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "obs_mode=pixels"]),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_config_equals_the_cli_print_config(case, tmp_path):
    cls, env_id, keywords, argv = PARITY[case]
    printed = printed_config(tmp_path, *argv)
    agent = cls(env_id, verbose=0, **keywords)
    try:
        assert printed["algo"] == agent.algo
        assert as_json(agent.config) == printed["config"]
    finally:
        agent.close()


def test_keyword_overrides_the_preset_and_keeps_the_rest():
    preset = PPO(CARTPOLE, verbose=0, num_envs=4).config
    tuned = PPO(CARTPOLE, verbose=0, num_envs=4, learning_rate=1.234e-4).config
    assert preset.learning_rate != 1.234e-4 and tuned.learning_rate == 1.234e-4
    assert dataclasses.replace(tuned, learning_rate=preset.learning_rate) == preset
    # The preset really is applied (not the dataclass defaults).
    defaults = type(preset)()
    assert (preset.num_steps, preset.hidden_sizes) != (defaults.num_steps, defaults.hidden_sizes)


def test_unknown_keyword_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match="learning_rat"):
        PPO(CARTPOLE, verbose=0, learning_rat=1e-3)


@pytest.mark.parametrize("env_kwargs,mlp", [({"obs_mode": "pixels"}, False), ({}, True), ({"obs_mode": "ego"}, True)])
def test_maze_preset_backbone_follows_the_kind_of_observation(env_kwargs, mlp):
    agent = PPO("rlbase/Maze-v0", verbose=0, num_envs=2, env_kwargs=env_kwargs)
    try:
        cfg = agent.config
        assert (cfg.backbone == "mlp") is mlp, cfg.backbone
        if mlp:  # the grid block of the preset, not just the family's small tanh MLP
            assert cfg.hidden_sizes == (256, 256) and cfg.activation == "relu"
    finally:
        agent.close()


def test_user_backbone_wins_over_the_observation_kind_preset():
    agent = PPO("rlbase/Maze-v0", verbose=0, num_envs=2, backbone="impala_cnn")
    try:
        assert agent.config.backbone == "impala_cnn"
    finally:
        agent.close()


def test_kind_preset_follows_a_handed_in_env():
    env = make_vec_env("rlbase/Maze-v0", 2, CPU, env_kwargs={"obs_mode": "pixels"})
    agent = PPO(env, verbose=0)
    try:
        assert agent.config.backbone != "mlp"
    finally:
        agent.close()


# --------------------------------------------------------------------------------------------
# Env forms
# --------------------------------------------------------------------------------------------
def test_ready_tensor_vec_env_sets_num_envs_and_trains():
    env = make_vec_env(CARTPOLE, 16, CPU)
    agent = PPO(env, verbose=0, log_dir=None, total_timesteps=512)
    try:
        assert agent.env is env
        assert agent.config.num_envs == 16 and agent.config.env_id == CARTPOLE
        assert PPO(env, verbose=0, num_envs=16).config.num_envs == 16  # agreeing is fine
        agent.learn()
        assert agent.num_timesteps >= 512 and agent.num_timesteps % (16 * agent.config.num_steps) == 0
        assert agent.predict(cartpole_observations(8))[0].shape == (8,)
        assert agent.evaluate(episodes=3)["num_episodes"] == 3
        agent.close()
        obs, _ = env.reset(seed=0)  # not the agent's env to close: still usable
        assert obs.shape == (16, 4)
    finally:
        agent.close()


def test_conflicting_num_envs_with_a_ready_env_is_a_usage_error():
    env = make_vec_env(CARTPOLE, 16, CPU)
    with pytest.raises(UsageError, match="num_envs=8.*16"):
        PPO(env, verbose=0, num_envs=8)


def test_evaluate_uses_the_settings_of_a_handed_in_env():
    env = make_vec_env("rlbase/Maze-v0", 4, CPU, env_kwargs={"obs_mode": "pixels", "size": 7})
    agent = PPO(env, verbose=0, log_dir=None, total_timesteps=128, num_steps=32, num_minibatches=1,
                update_epochs=1).learn()
    try:
        report = agent.evaluate(episodes=2)
        assert report["num_episodes"] == 2
    finally:
        agent.close()


def test_gym_env_factories_with_a_user_wrapper(tmp_path):
    counter = [0]
    factories = [functools.partial(scaled_cartpole, counter)] * 2
    agent = PPO(factories, verbose=0, log_dir=None, device="cpu", total_timesteps=256, num_steps=32)
    try:
        assert agent.config.num_envs == 2 and agent.config.env_id == "CartPole-v1"
        agent.learn()
        assert agent.num_timesteps == 256
        assert counter[0] >= 256  # every training step went through the wrapper
        metrics = agent.last_metrics
        assert metrics["episodes"] > 0
        # The wrapper's doubled reward is what training saw: CartPole pays 1 per step.
        assert metrics["ep_rew_mean"] == pytest.approx(2 * metrics["ep_len_mean"], rel=1e-5)
        before = counter[0]
        report = agent.evaluate(episodes=3, seed=0)
        assert counter[0] > before  # the eval envs are the user's factories too
        assert report["mean_return"] == pytest.approx(2 * report["mean_length"])
        assert agent.evaluate(episodes=3, seed=0) == report
        # Saved and loaded with the factories handed in again: same policy, same evaluation.
        saved = agent.save(tmp_path / "wrapped")
        loaded = load(saved, env=factories, verbose=0)
        obs = cartpole_observations(64)
        np.testing.assert_array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
        assert loaded.evaluate(episodes=3, seed=0) == report
        loaded.close()
    finally:
        agent.close()


def test_unregistered_user_env_class_as_factory(tmp_path):
    agent = PPO([Corridor] * 2, verbose=0, log_dir=None, device="cpu", total_timesteps=256, num_steps=16)
    try:
        assert agent.config.env_id == "Corridor"
        agent.learn()
        assert agent.evaluate(episodes=2)["num_episodes"] == 2
        saved = agent.save(tmp_path / "corridor")
        with pytest.raises(UsageError, match="Corridor"):  # its id cannot be rebuilt: say which
            load(saved, verbose=0)
        loaded = load(saved, env=[Corridor] * 3, verbose=0)
        assert loaded.config.num_envs == 3
        eye = np.eye(3, dtype=np.float32)
        np.testing.assert_array_equal(loaded.predict(eye)[0], agent.predict(eye)[0])
        loaded.close()
    finally:
        agent.close()


def test_conflicting_num_envs_with_env_factories_is_a_usage_error():
    with pytest.raises(UsageError, match="num_envs"):
        PPO([lambda: gym.make("CartPole-v1")] * 2, verbose=0, num_envs=4)


@pytest.mark.parametrize("env", [42, None, [], [1, 2], {"id": "CartPole-v1"}])
def test_bad_env_argument_is_a_type_error(env):
    with pytest.raises(TypeError, match="env must be"):
        PPO(env, verbose=0)


# --------------------------------------------------------------------------------------------
# The package surface; A2C and REINFORCE
# --------------------------------------------------------------------------------------------
def test_package_exports_the_api():
    from rlbase import api

    assert (rlbase.DQN, rlbase.PPO, rlbase.A2C, rlbase.REINFORCE, rlbase.load) == \
           (api.DQN, api.PPO, api.A2C, api.REINFORCE, api.load)
    assert [cls.algo for cls in (DQN, PPO, A2C, REINFORCE)] == ["dqn", "ppo", "a2c", "reinforce"]
    assert all(issubclass(cls, Algorithm) for cls in (DQN, PPO, A2C, REINFORCE))
    with pytest.raises(AttributeError):
        rlbase.NotAnAgent  # noqa: B018


@pytest.mark.parametrize("cls", [A2C, REINFORCE])
def test_a2c_and_reinforce_train_predict_and_round_trip(cls, tmp_path):
    agent = cls(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=400)
    try:
        assert cls.__name__ in repr(agent) and CARTPOLE in repr(agent)
        agent.learn()
        assert agent.num_timesteps >= 400 and agent.last_metrics["global_step"] == agent.num_timesteps
        assert str(agent.num_timesteps) in repr(agent)
        obs = cartpole_observations(32)
        actions, _ = agent.predict(obs)
        assert actions.shape == (32,) and set(np.unique(actions)) <= {0, 1}
        assert agent.predict(obs[0])[0].shape == ()
        loaded = load(agent.save(tmp_path / cls.algo), verbose=0)
        assert type(loaded) is cls
        np.testing.assert_array_equal(loaded.predict(obs)[0], actions)
        assert loaded.evaluate(episodes=3, seed=1) == agent.evaluate(episodes=3, seed=1)
        loaded.close()
    finally:
        agent.close()
