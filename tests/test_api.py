"""The Python API (rlbase.api): `from rlbase import DQN, PPO, A2C, REINFORCE, load`.

What a user of the SB3-shaped API relies on: train -> save -> load -> predict -> evaluate round
trips that reproduce the original agent exactly (and agree with `rlbase eval`), every input form
`predict` accepts, the same presets as `rlbase train`, the three forms of env (an id, a ready
TensorVecEnv, a list of Gymnasium env factories with the user's wrappers), `learn()` continuing
a run, callbacks that stop training, and the save/load mistakes a user can make.

Budgets are tiny (rlbase/CartPole-v1 is a batched tensor env: a PPO rollout of 64 envs x 16 steps
takes milliseconds); trained agents are shared per module. Every agent runs on the CPU so that
its evaluations compare exactly with `rlbase.evaluate.evaluate(..., device=cpu)`.
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
import torch

import rlbase
from rlbase import A2C, DQN, PPO, REINFORCE, load
from rlbase.api import Algorithm
from rlbase.callbacks import EvalCallback, StopOnReturn
from rlbase.envs import make_vec_env
from rlbase.errors import RlbaseError, UsageError
from rlbase.evaluate import evaluate as rlbase_eval

CPU = torch.device("cpu")
CARTPOLE = "rlbase/CartPole-v1"  # preset: 64 envs x 16 steps, so one PPO rollout is 1,024 steps
ROLLOUT = 64 * 16
MAZE_GOTO = "rlbase/MazeGoTo-v0"  # Dict observations: image (11, 8, 8) uint8 + mission (8,) token ids
TINY_MAZE_GOTO = {"num_envs": 4, "num_steps": 16, "total_timesteps": 512}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def cartpole_observations(n: int = 256, seed: int = 0) -> np.ndarray:
    """Varied CartPole states (both lean directions, both spins): a policy that learned anything
    pushes left for some and right for others, so equal predictions are not a coincidence."""
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 1.0, 0.15, 1.5], np.float32)
    return (rng.uniform(-1.0, 1.0, size=(n, 4)) * scale).astype(np.float32)


def maze_goto_observations(steps: int = 4, num_envs: int = 16, seed: int = 7) -> dict[str, np.ndarray]:
    """A batch of real MazeGoTo observations (several levels, a few random steps into each)."""
    env = make_vec_env(MAZE_GOTO, num_envs, CPU)
    generator = torch.Generator().manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    collected = [obs]
    for _ in range(steps - 1):
        actions = torch.randint(0, int(env.single_action_space.n), (num_envs,), generator=generator)
        obs, *_ = env.step(actions)
        collected.append(obs)
    env.close()
    return {key: torch.cat([o[key] for o in collected]).numpy() for key in collected[0]}


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["global_step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(run_dir: Path, kind: str = "checkpoints") -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / kind).glob("step_*") if p.is_dir())


def as_json(config) -> dict:
    """A config as the CLI prints it (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


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
# Shared trained agents
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Trained:
    agent: Algorithm
    saved: Path
    observations: object  # a batch the policy is compared on (array, or dict of arrays)


@pytest.fixture(scope="module")
def ppo_cartpole(tmp_path_factory) -> Trained:
    agent = PPO(CARTPOLE, seed=0, device="cpu", verbose=0, log_dir=None, total_timesteps=2 * ROLLOUT).learn()
    saved = agent.save(tmp_path_factory.mktemp("api_ppo") / "ppo_cartpole")
    yield Trained(agent, saved, cartpole_observations())
    agent.close()


@pytest.fixture(scope="module")
def dqn_cartpole(tmp_path_factory) -> Trained:
    agent = DQN(CARTPOLE, seed=0, device="cpu", verbose=0, log_dir=None, total_timesteps=2_000).learn()
    saved = agent.save(tmp_path_factory.mktemp("api_dqn") / "dqn_cartpole")
    yield Trained(agent, saved, cartpole_observations())
    agent.close()


@pytest.fixture(scope="module")
def ppo_maze_goto(tmp_path_factory) -> Trained:
    agent = PPO(MAZE_GOTO, seed=0, device="cpu", verbose=0, log_dir=None, **TINY_MAZE_GOTO).learn()
    saved = agent.save(tmp_path_factory.mktemp("api_maze") / "ppo_maze_goto")
    yield Trained(agent, saved, maze_goto_observations())
    agent.close()


@pytest.fixture(scope="module")
def dqn_maze_goto(tmp_path_factory) -> Trained:
    """DQN on Dict observations (its replay buffer stores each key in its own dtype)."""
    agent = DQN(MAZE_GOTO, seed=0, device="cpu", verbose=0, log_dir=None, num_envs=4, total_timesteps=512,
                learning_starts=128, buffer_size=1_000, batch_size=32).learn()
    saved = agent.save(tmp_path_factory.mktemp("api_dqn_maze") / "dqn_maze_goto")
    yield Trained(agent, saved, maze_goto_observations())
    agent.close()


TRAINED = ["ppo_cartpole", "dqn_cartpole", "ppo_maze_goto", "dqn_maze_goto"]


# --------------------------------------------------------------------------------------------
# 1. Round trip: train -> save -> load -> predict -> evaluate
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TRAINED)
def test_save_writes_a_checkpoint_folder_of_the_agent(name, request):
    trained: Trained = request.getfixturevalue(name)
    assert (trained.saved / "model.safetensors").is_file() and (trained.saved / "state.json").is_file()
    state = json.loads((trained.saved / "state.json").read_text())
    assert state["algo"] == trained.agent.algo
    assert state["step"] == trained.agent.num_timesteps > 0
    assert state["config"] == as_json(trained.agent.config)


@pytest.mark.parametrize("name", TRAINED)
def test_loaded_agent_predicts_exactly_like_the_original(name, request):
    trained: Trained = request.getfixturevalue(name)
    original = trained.agent
    loaded = type(original).load(trained.saved, verbose=0)
    try:
        assert type(loaded) is type(original)
        assert loaded.num_timesteps == original.num_timesteps
        assert loaded.config == original.config
        expected, state = original.predict(trained.observations, deterministic=True)
        actual, _ = loaded.predict(trained.observations, deterministic=True)
        assert state is None
        np.testing.assert_array_equal(actual, expected)
        if "cartpole" in name:  # varied CartPole states: a trained policy uses both actions
            assert set(np.unique(expected)) == {0, 1}
    finally:
        loaded.close()


@pytest.mark.parametrize("name", TRAINED)
def test_loaded_agent_evaluates_identically_and_agrees_with_rlbase_eval(name, request):
    trained: Trained = request.getfixturevalue(name)
    original = trained.agent
    loaded = load(trained.saved, verbose=0)  # rlbase.load: whatever the algorithm
    try:
        assert type(loaded) is type(original)
        episodes, seed = 6, 5
        report = original.evaluate(episodes=episodes, seed=seed)
        assert report["num_episodes"] == len(report["episodes"]) == episodes
        assert report["global_step"] == original.num_timesteps
        assert loaded.evaluate(episodes=episodes, seed=seed) == report
        cli = rlbase_eval(trained.saved, device=CPU, episodes=episodes, seed=seed)
        assert cli["mean_return"] == report["mean_return"]
        assert cli["episodes"] == report["episodes"]
        assert cli["global_step"] == original.num_timesteps
        # A different evaluation seed plays different episodes (the seed is really used).
        other = original.evaluate(episodes=episodes, seed=seed + 1)
        assert other["episodes"] != report["episodes"]
    finally:
        loaded.close()


def test_pg_sampling_evaluation_is_identical_after_load(ppo_cartpole):
    """Sampled actions depend on the exact action probabilities: a stronger check of the weights."""
    loaded = PPO.load(ppo_cartpole.saved, verbose=0)
    try:
        report = ppo_cartpole.agent.evaluate(episodes=8, seed=2, deterministic=False)
        assert report["policy"] == "stochastic"
        assert loaded.evaluate(episodes=8, seed=2, deterministic=False) == report
        cli = rlbase_eval(ppo_cartpole.saved, device=CPU, episodes=8, seed=2, deterministic=False)
        assert cli["episodes"] == report["episodes"]
    finally:
        loaded.close()


def test_dqn_refuses_continuous_actions_in_one_line(tmp_path):
    """(DQN on Dict observations works: dqn_maze_goto above does the whole round trip.)"""
    with pytest.raises(UsageError) as info:
        DQN("rlbase/Pendulum-v1", verbose=0, log_dir=str(tmp_path), num_envs=2)
    message = str(info.value)
    assert "\n" not in message
    assert "DQN" in message and "discrete action space" in message and "rlbase/Pendulum-v1" in message
    assert not any(tmp_path.iterdir())  # refused before anything was written


# --------------------------------------------------------------------------------------------
# 2. predict: the input forms
# --------------------------------------------------------------------------------------------
def test_predict_one_observation_matches_its_row_in_a_batch(ppo_cartpole):
    agent, obs = ppo_cartpole.agent, ppo_cartpole.observations
    batch, _ = agent.predict(obs)
    assert isinstance(batch, np.ndarray) and batch.shape == (len(obs),)
    for i in range(0, len(obs), 37):
        single, _ = agent.predict(obs[i])
        assert isinstance(single, np.ndarray) and single.shape == ()
        assert single == batch[i]
    listed, _ = agent.predict(obs[3].tolist())  # a plain list (float64) is one observation too
    assert listed == batch[3]


def test_predict_torch_in_torch_out_numpy_in_numpy_out(ppo_cartpole):
    agent, obs = ppo_cartpole.agent, ppo_cartpole.observations
    from_numpy, _ = agent.predict(obs)
    from_torch, _ = agent.predict(torch.from_numpy(obs))
    assert isinstance(from_numpy, np.ndarray)
    assert torch.is_tensor(from_torch) and from_torch.shape == (len(obs),)
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)
    single, _ = agent.predict(torch.from_numpy(obs[0]))
    assert torch.is_tensor(single) and single.shape == () and int(single) == from_numpy[0]
    as_double, _ = agent.predict(torch.from_numpy(obs).double())  # any dtype is cast to the space's
    np.testing.assert_array_equal(as_double.numpy(), from_numpy)


def test_predict_dict_observations_single_batch_and_torch(ppo_maze_goto):
    agent, obs = ppo_maze_goto.agent, ppo_maze_goto.observations
    n = len(obs["image"])
    batch, _ = agent.predict(obs)
    assert isinstance(batch, np.ndarray) and batch.shape == (n,)
    assert set(np.unique(batch)) <= set(range(agent.env.single_action_space.n))
    for i in (0, n // 2, n - 1):
        single, _ = agent.predict({key: value[i] for key, value in obs.items()})
        assert single.shape == () and single == batch[i]
    from_torch, _ = agent.predict({key: torch.from_numpy(value) for key, value in obs.items()})
    assert torch.is_tensor(from_torch)
    np.testing.assert_array_equal(from_torch.numpy(), batch)


@pytest.mark.parametrize("shape", [(5,), (2, 5), (2, 2, 4), (), (0,)])
def test_predict_wrong_box_shape_names_the_expected_shape(ppo_cartpole, shape):
    with pytest.raises(UsageError) as info:
        ppo_cartpole.agent.predict(np.zeros(shape, np.float32))
    assert "(4,)" in str(info.value) and str(shape) in str(info.value)


def test_predict_dict_mistakes_are_usage_errors(ppo_maze_goto):
    agent, obs = ppo_maze_goto.agent, ppo_maze_goto.observations
    with pytest.raises(UsageError, match="image.*mission"):
        agent.predict(obs["image"])  # an array where a dict is expected: the keys are named
    with pytest.raises(UsageError, match="mission"):
        agent.predict({"image": obs["image"]})
    with pytest.raises(UsageError, match=r"'image'.*\(11, 8, 8\)"):
        agent.predict({"image": obs["image"][:, :3], "mission": obs["mission"]})


def test_predict_wrong_shape_of_second_dict_key_is_a_usage_error(ppo_maze_goto):
    obs = ppo_maze_goto.observations
    with pytest.raises(UsageError, match=r"'mission'.*\(8,\)"):
        ppo_maze_goto.agent.predict({"image": obs["image"][0], "mission": obs["mission"][0][:5]})


@pytest.mark.parametrize("mix", ["batch_image_single_mission", "single_image_batch_mission", "unequal_batches"])
def test_predict_inconsistent_dict_batch_is_a_usage_error(ppo_maze_goto, mix):
    obs = ppo_maze_goto.observations
    bad = {"batch_image_single_mission": {"image": obs["image"], "mission": obs["mission"][0]},
           "single_image_batch_mission": {"image": obs["image"][0], "mission": obs["mission"]},
           "unequal_batches": {"image": obs["image"][:2], "mission": obs["mission"][:4]}}[mix]
    with pytest.raises(UsageError, match="mission"):
        ppo_maze_goto.agent.predict(bad)


def test_untrained_agent_cannot_predict_evaluate_or_save(tmp_path):
    agent = PPO(CARTPOLE, verbose=0, log_dir=None, num_envs=4)
    try:
        assert agent.num_timesteps == 0 and agent.run_dir is None
        with pytest.raises(RlbaseError, match="learn"):
            agent.predict(np.zeros(4, np.float32))
        with pytest.raises(RlbaseError, match="learn"):
            agent.evaluate(episodes=2)
        with pytest.raises(RlbaseError, match="trained"):
            agent.save(tmp_path / "nothing")
        assert not (tmp_path / "nothing").exists()
        with pytest.raises(UsageError, match="total_timesteps"):
            agent.learn(0)
    finally:
        agent.close()


def test_ppo_stochastic_predict_samples(ppo_cartpole):
    """One observation repeated 512 times: the mode is one action, samples of a policy that is
    not (yet) sure of itself contain both."""
    agent = ppo_cartpole.agent
    obs = np.zeros((512, 4), np.float32)
    mode, _ = agent.predict(obs, deterministic=True)
    assert len(np.unique(mode)) == 1
    sampled, _ = agent.predict(obs, deterministic=False)
    assert set(np.unique(sampled)) == {0, 1}
    again, _ = agent.predict(obs, deterministic=False)
    assert not np.array_equal(sampled, again)  # the generator moves on between calls


def test_ppo_stochastic_predict_is_reproducible(ppo_cartpole):
    obs = np.zeros((256, 4), np.float32)
    first, second = (PPO.load(ppo_cartpole.saved, verbose=0) for _ in range(2))
    a1, a2 = (first.predict(obs, deterministic=False)[0] for _ in range(2))
    b1, b2 = (second.predict(obs, deterministic=False)[0] for _ in range(2))
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


def test_deterministic_predict_does_not_restart_the_sampling_stream(ppo_cartpole):
    obs = np.zeros((256, 4), np.float32)
    reference, interleaved = (PPO.load(ppo_cartpole.saved, verbose=0) for _ in range(2))
    r1, r2 = (reference.predict(obs, deterministic=False)[0] for _ in range(2))
    s1 = interleaved.predict(obs, deterministic=False)[0]
    interleaved.predict(obs, deterministic=True)
    s2 = interleaved.predict(obs, deterministic=False)[0]
    np.testing.assert_array_equal(s1, r1)
    np.testing.assert_array_equal(s2, r2)


def test_dqn_stochastic_predict_is_epsilon_greedy_at_eval_epsilon(dqn_cartpole):
    """load() overrides a field that does not shape the networks (eval_epsilon): deterministic
    stays greedy, deterministic=False explores at that rate."""
    obs = dqn_cartpole.observations
    greedy, _ = dqn_cartpole.agent.predict(obs)
    random_agent = DQN.load(dqn_cartpole.saved, verbose=0, eval_epsilon=1.0)
    try:
        assert random_agent.config.eval_epsilon == 1.0
        np.testing.assert_array_equal(random_agent.predict(obs)[0], greedy)
        explored, _ = random_agent.predict(obs, deterministic=False)
        disagree = np.mean(explored != greedy)
        assert 0.3 < disagree < 0.7  # uniform random actions disagree with greedy half the time
    finally:
        random_agent.close()
    # The saved agent's own evaluation policy (eval_epsilon 0 for CartPole) is greedy.
    assert dqn_cartpole.agent.config.eval_epsilon == 0.0
    np.testing.assert_array_equal(dqn_cartpole.agent.predict(obs, deterministic=False)[0], greedy)


def test_load_with_a_network_shaping_override_is_refused_clearly(dqn_cartpole):
    with pytest.raises(RlbaseError):
        agent = DQN.load(dqn_cartpole.saved, verbose=0, hidden_sizes=(8,))
        agent.predict(dqn_cartpole.observations)


# --------------------------------------------------------------------------------------------
# 3. Presets: the same config as `rlbase train`
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
# 4. Env forms
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
# 5. learn() twice continues the run
# --------------------------------------------------------------------------------------------
def test_learn_twice_continues_the_same_run_directory(tmp_path):
    agent = PPO(CARTPOLE, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=ROLLOUT,
                log_interval=ROLLOUT // 2)
    try:
        agent.learn()
        run_dir = agent.run_dir
        assert run_dir is not None and run_dir.parent == tmp_path and agent.num_timesteps == ROLLOUT
        first = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert metrics_steps(run_dir)[-1] == ROLLOUT

        agent.learn(2 * ROLLOUT)
        assert agent.run_dir == run_dir
        assert agent.num_timesteps == 3 * ROLLOUT
        assert [p for p in tmp_path.iterdir() if p.is_dir()] == [run_dir]  # no second run directory
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(lines) > len(first) and lines[:len(first)] == first
        steps = metrics_steps(run_dir)
        assert steps == sorted(steps) and steps[-1] == 3 * ROLLOUT and 2 * ROLLOUT in steps
        assert {ROLLOUT, 3 * ROLLOUT} <= set(checkpoint_steps(run_dir))
        latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
        assert latest == f"step_{3 * ROLLOUT:010d}"
        assert json.loads((run_dir / "config.json").read_text())["algo"] == "ppo"
    finally:
        agent.close()


@pytest.mark.parametrize("cls,steps", [(PPO, ROLLOUT), (DQN, 800)])
def test_in_memory_learn_twice_adds_up_and_writes_nothing(cls, steps, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    agent = cls(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=steps)
    try:
        agent.learn()
        first = agent.predict(cartpole_observations())[0]
        agent.learn(steps)
        assert agent.num_timesteps == 2 * steps
        assert agent.run_dir is None and agent.last_metrics["global_step"] == 2 * steps
        assert list(tmp_path.iterdir()) == []
        assert agent.predict(cartpole_observations())[0].shape == first.shape
    finally:
        agent.close()


# --------------------------------------------------------------------------------------------
# 6. Callbacks stop training
# --------------------------------------------------------------------------------------------
def test_function_callback_returning_false_stops_and_checkpoints(tmp_path):
    seen: list[int] = []

    def stop_after_three(run) -> bool:
        seen.append(run.global_step)
        return len(seen) < 3

    agent = PPO(CARTPOLE, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=8 * ROLLOUT)
    try:
        agent.learn(callback=stop_after_three)
        assert seen == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]  # after every iteration, never after the stop
        assert agent.num_timesteps == 3 * ROLLOUT < 8 * ROLLOUT
        reason = agent.last_metrics["stop_reason"]
        assert reason and f"step {3 * ROLLOUT}" in reason
        assert checkpoint_steps(agent.run_dir)[-1] == 3 * ROLLOUT  # checkpointed where it stopped
        assert metrics_steps(agent.run_dir)[-1] == 3 * ROLLOUT  # and logged there
    finally:
        agent.close()


def test_stop_reason_names_the_function(tmp_path):
    def stop_right_away(run) -> bool:
        return False

    agent = PPO(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=4 * ROLLOUT)
    try:
        agent.learn(callback=stop_right_away)
        assert "stop_right_away" in agent.last_metrics["stop_reason"]
    finally:
        agent.close()


def test_no_stop_runs_the_whole_budget_with_a_list_of_callbacks():
    calls = [0, 0]

    def count(i):
        def fn(run):
            calls[i] += 1
        return fn

    agent = PPO(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=2 * ROLLOUT)
    try:
        agent.learn(callback=[count(0), StopOnReturn(1e9, source="train"), count(1)])
        assert agent.num_timesteps == 2 * ROLLOUT
        assert agent.last_metrics["stop_reason"] is None
        assert calls == [2, 2]
    finally:
        agent.close()


def test_stop_on_training_return_stops_at_the_first_logged_point_past_the_threshold():
    threshold, budget = 30.0, 24 * ROLLOUT
    logged: list[tuple[int, float | None]] = []
    agent = PPO(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=budget, log_interval=ROLLOUT)
    try:
        def record(run) -> None:
            logged.append((run.global_step, run.last_scalars.get("rollout/ep_rew_mean")))

        agent.learn(callback=[StopOnReturn(threshold, source="train"), record])
        assert agent.num_timesteps < budget
        assert "StopOnReturn" in agent.last_metrics["stop_reason"]
        first_past = next(step for step, value in logged if value is not None and value >= threshold)
        assert agent.num_timesteps == first_past
        assert logged[0][1] is not None and logged[0][1] < threshold  # it did not stop at the start
        assert agent.last_metrics["ep_rew_mean"] >= threshold
    finally:
        agent.close()


def test_stop_on_return_rejects_an_unknown_source():
    with pytest.raises(ValueError, match="source"):
        StopOnReturn(10, source="test")


def test_eval_callback_logs_eval_reward_and_keeps_best(tmp_path):
    evaluation = EvalCallback(every=ROLLOUT, episodes=4)
    agent = PPO(CARTPOLE, seed=1, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=3 * ROLLOUT)
    try:
        agent.learn(callback=evaluation)
        run_dir = agent.run_dir
        assert [row["step"] for row in evaluation.history] == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        logged = [(row["global_step"], row["eval/mean_reward"]) for row in rows if "eval/mean_reward" in row]
        assert logged == [(row["step"], row["mean_return"]) for row in evaluation.history]
        assert all("eval/mean_ep_length" in row for row in rows if "eval/mean_reward" in row)

        best = max(evaluation.history, key=lambda row: row["mean_return"])
        assert evaluation.best_mean == best["mean_return"]
        assert checkpoint_steps(run_dir, "best") == [evaluation.best_step]
        # `rlbase eval RUN --best` plays that checkpoint, with the callback's episodes and seed.
        report = rlbase_eval(run_dir, best=True, episodes=4, seed=0, device=CPU)
        assert report["global_step"] == evaluation.best_step
        assert report["mean_return"] == evaluation.best_mean
    finally:
        agent.close()


# --------------------------------------------------------------------------------------------
# 7. save / load edge cases
# --------------------------------------------------------------------------------------------
def test_loading_with_the_wrong_class_names_both(dqn_cartpole, ppo_cartpole):
    with pytest.raises(RlbaseError) as info:
        PPO.load(dqn_cartpole.saved)
    message = str(info.value).lower()
    assert "dqn" in message and "ppo" in message
    with pytest.raises(RlbaseError, match="(?i)ppo.*dqn"):
        DQN.load(ppo_cartpole.saved)


def test_rlbase_load_returns_the_right_class(dqn_cartpole, ppo_cartpole, ppo_maze_goto, dqn_maze_goto):
    for trained in (dqn_cartpole, ppo_cartpole, ppo_maze_goto, dqn_maze_goto):
        agent = load(trained.saved, verbose=0)
        assert type(agent) is type(trained.agent)
        agent.close()
    model_file = load(ppo_cartpole.saved / "model.safetensors", verbose=0)  # the file, too
    assert type(model_file) is PPO and model_file.num_timesteps == ppo_cartpole.agent.num_timesteps
    model_file.close()


def test_loading_a_missing_path_is_an_rlbase_error(tmp_path):
    with pytest.raises(RlbaseError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(RlbaseError, match="does not exist"):
        PPO.load(tmp_path / "nope")


def test_loading_a_run_directory_continues_it(tmp_path):
    original = PPO(CARTPOLE, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=ROLLOUT).learn()
    run_dir = original.run_dir
    obs = cartpole_observations()
    expected = original.predict(obs)[0]
    original.close()

    agent = load(run_dir, verbose=0)
    try:
        assert type(agent) is PPO and agent.run_dir == run_dir and agent.num_timesteps == ROLLOUT
        np.testing.assert_array_equal(agent.predict(obs)[0], expected)
        agent.learn(ROLLOUT)
        assert agent.run_dir == run_dir and agent.num_timesteps == 2 * ROLLOUT
        assert [p for p in tmp_path.iterdir() if p.is_dir()] == [run_dir]
        assert checkpoint_steps(run_dir) == [ROLLOUT, 2 * ROLLOUT]
        steps = metrics_steps(run_dir)
        assert steps == sorted(steps) and steps[-1] == 2 * ROLLOUT
    finally:
        agent.close()


def test_loading_a_saved_folder_then_learning_starts_a_new_run(ppo_cartpole, tmp_path):
    agent = PPO.load(ppo_cartpole.saved, verbose=0, log_dir=str(tmp_path))
    try:
        assert agent.run_dir is None
        agent.learn(ROLLOUT)
        assert agent.run_dir is not None and agent.run_dir.parent == tmp_path
        assert agent.num_timesteps == ppo_cartpole.agent.num_timesteps + ROLLOUT
        assert checkpoint_steps(agent.run_dir) == [agent.num_timesteps]
        assert not (ppo_cartpole.saved.parent / "checkpoints").exists()  # the saved folder is left alone
    finally:
        agent.close()


def test_in_memory_load_of_a_run_directory_leaves_it_untouched(tmp_path):
    PPO(CARTPOLE, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=ROLLOUT).learn().close()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    agent = PPO.load(run_dir, verbose=0, log_dir=None)
    try:
        agent.learn(ROLLOUT)
        assert agent.num_timesteps == 2 * ROLLOUT and agent.run_dir is None
        assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
    finally:
        agent.close()


# --------------------------------------------------------------------------------------------
# 8. The package surface; A2C and REINFORCE
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
