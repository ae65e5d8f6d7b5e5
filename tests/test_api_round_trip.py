"""The Python API (rlbase.api) on shared trained agents: `from rlbase import DQN, PPO, load`.

Train -> save -> load -> predict -> evaluate round trips that reproduce the original agent exactly
(and agree with `rlbase eval`), every input form `predict` accepts (arrays, lists, tensors, Dict
observations; deterministic and sampled), and the save/load mistakes a user can make.

Budgets are tiny (rlbase/CartPole-v1 is a batched tensor env: a PPO rollout of 64 envs x 16 steps
takes milliseconds); the four trained agents are module-scoped fixtures used only in this file, so
each is trained once. Every agent runs on the CPU so that its evaluations compare exactly with
`rlbase.evaluate.evaluate(..., device=cpu)`. The rest of the API: test_api_config.py, test_api_learn.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlbase import DQN, PPO, load
from rlbase.api import Algorithm
from rlbase.envs import make_vec_env
from rlbase.errors import RlbaseError, UsageError
from rlbase.evaluate import evaluate as rlbase_eval

from tests.apihelpers import CARTPOLE, CPU, ROLLOUT, as_json, cartpole_observations, checkpoint_steps, metrics_steps

MAZE_GOTO = "rlbase/MazeGoTo-v0"  # Dict observations: image (11, 8, 8) uint8 + mission (8,) token ids
TINY_MAZE_GOTO = {"num_envs": 4, "num_steps": 16, "total_timesteps": 512}


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
# Round trip: train -> save -> load -> predict -> evaluate
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
        # A different evaluation seed plays different episodes (the seed is really used). Only where
        # the episodes can tell: the tiny MazeGoTo agents can time out on every episode whatever the
        # level, and then both reports list the same (return 0, length 128) episodes.
        if "cartpole" in name:
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
# predict: the input forms
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
# save / load edge cases
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
