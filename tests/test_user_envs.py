"""User envs: `module:id` and --gym-packages imports, their one-line errors, the observation
conversion of the Gymnasium adapter (one-hot Discrete, MultiBinary, Dict), and two attributes
every backend declares: `outcome_keys` and `render_fps`.

The user envs live in tests/userenvs/toyenvs.py, copied per test under a fresh module name into a
temporary folder, so every test imports (and registers) them afresh, as a user's run does.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.envs import NATIVE_ENVS, check_env_id, import_env_modules, make_vec_env, plain_env_id
from rlbase.envs.atari import AGENT_STEP_FPS, EMULATOR_FPS, FRAME_SKIP
from rlbase.envs.atari_vec import AtariVecEnv
from rlbase.envs.gym_adapter import GymVecEnv, ObservationConverter, unsupported_observations
from rlbase.envs.native import NativeVecEnv, SingleEnv
from rlbase.errors import UsageError
from rlbase.lifecycle import plan

CPU = torch.device("cpu")
TOYENVS = Path(__file__).parent / "userenvs" / "toyenvs.py"


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _forget(names: list[str]) -> None:
    """Drop the test's modules and the ids they registered, so no test sees another's."""
    for name in names:
        sys.modules.pop(name, None)
        for env_id in [i for i in gym.registry if i.startswith(f"{name}/")]:
            del gym.registry[env_id]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The name of a fresh copy of toyenvs.py in tmp_path, which is put on sys.path."""
    name = _unique("toyenvs")
    shutil.copy(TOYENVS, tmp_path / f"{name}.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    _forget([name])


def _one_hot(value: int, n: int, start: int) -> np.ndarray:
    """A reference one-hot, written independently of the code under test."""
    row = np.zeros(n, np.float32)
    row[value - start] = 1.0
    return row


def _assert_obs(actual, expected) -> None:
    if isinstance(expected, dict):
        assert set(actual) == set(expected)
        for key in expected:
            _assert_obs(actual[key], expected[key])
        return
    assert actual.dtype == torch.from_numpy(expected).dtype
    np.testing.assert_array_equal(actual.numpy(), expected)


def _row(obs, i):
    return {k: v[i] for k, v in obs.items()} if isinstance(obs, dict) else obs[i]


def _lockstep(env, refs, expect, seed: int, steps: int) -> int:
    """Step `env` and reference single envs (seeded as the vector env seeds them) with the same
    actions; every obs and final_obs row must equal `expect(reference obs)`. Returns episodes ended."""
    obs, _ = env.reset(seed=seed)
    for i, ref in enumerate(refs):
        _assert_obs(_row(obs, i), expect(ref.reset(seed=seed + i)[0]))
    gen = np.random.default_rng(0)
    ended = 0
    for _ in range(steps):
        actions = gen.integers(0, 2, len(refs))
        obs, _, terminated, truncated, info = env.step(torch.as_tensor(actions))
        for i, ref in enumerate(refs):
            r_obs, _, r_term, r_trunc, _ = ref.step(int(actions[i]))
            assert bool(terminated[i]) == r_term and bool(truncated[i]) == r_trunc
            _assert_obs(_row(info["final_obs"], i), expect(r_obs))
            if r_term or r_trunc:
                ended += 1
                r_obs, _ = ref.reset()
            _assert_obs(_row(obs, i), expect(r_obs))
    return ended


# ---------------------------------------------------------------- importing user modules


def test_module_colon_id_imports_the_module(toy):
    env_id = f"{toy}:{toy}/Counter-v0"
    assert plain_env_id(env_id) == f"{toy}/Counter-v0"
    assert plain_env_id("CartPole-v1") == "CartPole-v1"
    assert f"{toy}/Counter-v0" not in gym.registry
    assert check_env_id(env_id) == f"{toy}/Counter-v0"  # imported, registered, plain id back
    assert toy in sys.modules
    # Counter's constructor takes no render_mode: make_vec_env must not pass one.
    env = make_vec_env(env_id, 2, CPU)
    try:
        assert isinstance(env, GymVecEnv) and env.env_id == f"{toy}/Counter-v0"
    finally:
        env.close()


def test_module_is_found_in_the_working_directory(tmp_path, monkeypatch):
    """The console script has neither the cwd nor '' on sys.path; the import must still find
    a module in the folder the user runs from."""
    name = _unique("cwdenvs")
    shutil.copy(TOYENVS, tmp_path / f"{name}.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert import_env_modules(f"{name}:{name}/Bits-v0") == f"{name}/Bits-v0"
        assert str(tmp_path) in sys.path and f"{name}/Bits-v0" in gym.registry
    finally:
        _forget([name])


def test_gym_packages_are_imported_first(tmp_path, monkeypatch):
    name = _unique("gympkg")
    package = tmp_path / name
    package.mkdir()
    shutil.copy(TOYENVS, package / "__init__.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(UsageError, match="unknown environment id"):
            check_env_id(f"{name}/Bits-v0")  # nothing imported it yet
        assert check_env_id(f"{name}/Bits-v0", gym_packages=(name,)) == f"{name}/Bits-v0"
        env = make_vec_env(f"{name}/Counter-v0", 1, CPU, gym_packages=(name,))
        env.close()
    finally:
        _forget([name])


def _usage_error(fn, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as exc_info:
        fn(*args, **kwargs)
    message = str(exc_info.value)
    assert "\n" not in message and exc_info.value.exit_code == 2
    return message


def test_import_errors_are_one_line(tmp_path, monkeypatch):
    missing = _unique("nosuchmod")
    broken = _unique("brokenmod")
    (tmp_path / f"{broken}.py").write_text("import gymnasium\n\nRATIO = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert _usage_error(make_vec_env, f"{missing}:Env-v0", 1, CPU) == (
            f"cannot import module {missing!r} named in --env {missing}:Env-v0: No module named {missing!r}")
        assert _usage_error(check_env_id, f"{broken}:Env-v0") == (
            f"cannot import module {broken!r} named in --env {broken}:Env-v0: ZeroDivisionError: division by zero")
        assert _usage_error(check_env_id, "CartPole-v1", gym_packages=(missing,)) == (
            f"cannot import module {missing!r} named in --gym-packages: No module named {missing!r}")
        assert "expected module:EnvId" in _usage_error(check_env_id, ":CartPole-v1")
    finally:
        _forget([broken])


def test_id_still_unknown_after_import_suggests_close_ids(toy):
    message = _usage_error(make_vec_env, f"{toy}:{toy}/Countr-v0", 1, CPU)
    assert message.startswith(f"unknown environment id '{toy}/Countr-v0'")
    assert f"importing {toy!r} did not register it" in message
    assert f"{toy}/Counter-v0" in message  # the suggestion comes from what the import registered


# ---------------------------------------------------------------- observation conversion


def test_discrete_observations_become_one_hot(toy):
    env = make_vec_env(f"{toy}:{toy}/Counter-v0", 3, CPU)
    refs = [gym.make(f"{toy}/Counter-v0") for _ in range(3)]
    try:
        space = env.single_observation_space
        assert env.raw_observation_space == gym.spaces.Discrete(5, start=2)
        assert isinstance(space, gym.spaces.Box) and space.shape == (5,) and space.dtype == np.float32
        assert float(space.low.min()) == 0.0 and float(space.high.max()) == 1.0
        ended = _lockstep(env, refs, lambda v: _one_hot(int(v), 5, 2), seed=4, steps=25)
        assert ended >= 6  # the comparison covered final_obs rows of ended episodes
    finally:
        env.close()


def test_multibinary_observations_become_float(toy):
    env = make_vec_env(f"{toy}:{toy}/Bits-v0", 2, CPU)
    refs = [gym.make(f"{toy}/Bits-v0") for _ in range(2)]
    try:
        space = env.single_observation_space
        assert isinstance(space, gym.spaces.Box) and space.shape == (2, 3) and space.dtype == np.float32
        ended = _lockstep(env, refs, lambda bits: np.asarray(bits, np.float32), seed=11, steps=20)
        assert ended >= 6
    finally:
        env.close()


def test_dict_observations_pass_through_key_by_key(toy):
    env = make_vec_env(f"{toy}:{toy}/Mixed-v0", 2, CPU)
    refs = [gym.make(f"{toy}/Mixed-v0") for _ in range(2)]
    try:
        space = env.single_observation_space
        assert isinstance(space, gym.spaces.Dict) and set(space.spaces) == {"pos", "frame", "room"}
        assert space["pos"].dtype == np.float32 and space["pos"].shape == (2,)  # float64 fed as float32
        assert space["frame"] == env.raw_observation_space["frame"]  # uint8 unchanged
        assert space["room"].shape == (3,) and space["room"].dtype == np.float32

        def expect(raw):
            return {"pos": np.asarray(raw["pos"], np.float32), "frame": np.asarray(raw["frame"]),
                    "room": _one_hot(int(raw["room"]), 3, 0)}

        ended = _lockstep(env, refs, expect, seed=5, steps=20)
        assert ended >= 6
    finally:
        env.close()


def test_converter_single_matches_a_batch_row(toy):
    """`single` is what a policy's predict uses on a raw observation: it must agree with the env."""
    env = make_vec_env(f"{toy}:{toy}/Mixed-v0", 2, CPU)
    ref = gym.make(f"{toy}/Mixed-v0")
    try:
        obs, _ = env.reset(seed=8)
        raw, _ = ref.reset(seed=9)  # env 1 of the batch is seeded 8 + 1
        single = env.convert_obs.single(raw)
        assert isinstance(single, dict)
        for key, value in single.items():
            assert value.shape == env.single_observation_space[key].shape
            np.testing.assert_array_equal(obs[key][1].numpy(), value)
    finally:
        env.close()


def test_converter_rules_on_spaces():
    conv = ObservationConverter(gym.spaces.Discrete(4, start=-1))
    np.testing.assert_array_equal(conv(np.array([-1, 2])), [[1, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(conv.single(1), [0, 0, 1, 0])
    box64 = gym.spaces.Box(-2.0, 3.0, (3,), np.float64)
    conv = ObservationConverter(box64)
    assert conv.space.dtype == np.float32 and conv.space.low.tolist() == [-2.0] * 3
    assert conv(np.ones((2, 3))).dtype == np.float32
    frames = gym.spaces.Box(0, 255, (4, 8, 8), np.uint8)
    assert ObservationConverter(frames).space is frames


@pytest.mark.parametrize("space,fix", [
    (gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3))), "FlattenObservation"),
    (gym.spaces.MultiDiscrete([2, 3]), "FlattenObservation"),
    (gym.spaces.Dict({"inner": gym.spaces.Dict({"x": gym.spaces.Discrete(2)})}), "FlattenObservation"),
    (gym.spaces.Sequence(gym.spaces.Discrete(2)), "ObservationWrapper"),
    (gym.spaces.Graph(gym.spaces.Box(0.0, 1.0, (2,)), None), "ObservationWrapper"),
])
def test_converter_leaves_other_spaces_to_the_agents(space, fix):
    """The adapter converts what it can; any other space stays, for the agent's check_env to refuse."""
    conv = ObservationConverter(space, "Thing-v0")
    assert conv.space == space
    message = unsupported_observations("Thing-v0", space)
    assert conv.unsupported == message
    assert message.startswith("Thing-v0 has ") and type(space).__name__ in message and fix in message
    assert _usage_error(conv, [space.sample()]) == message  # its observations cannot become tensors


@pytest.mark.parametrize("algo", ["ppo", "dqn", "a2c"])
def test_tuple_observation_env_is_refused_by_the_agent(toy, algo):
    env = make_vec_env(f"{toy}:{toy}/Pair-v0", 1, CPU)  # the env builds: what it cannot take is the agent's call
    assert isinstance(env.single_observation_space, gym.spaces.Tuple)
    env.close()
    message = _usage_error(plan, algo, {"env_id": f"{toy}:{toy}/Pair-v0", "num_envs": 1, "device": "cpu"})
    assert f"{toy}/Pair-v0 has a Tuple observation space" in message
    assert "gymnasium.wrappers.FlattenObservation" in message


def test_render_mode_is_passed_only_when_rendering(toy):
    env = make_vec_env(f"{toy}:{toy}/Painter-v0", 2, CPU, render=True)
    try:
        env.reset(seed=0)
        frames = env.render()
        assert len(frames) == 2 and all(f.shape == (4, 4, 3) and (f == 255).all() for f in frames)
    finally:
        env.close()


# ---------------------------------------------------------------- outcome_keys


@pytest.mark.parametrize("env_id,keys", [
    ("rlbase/CartPole-v1", ()),
    ("rlbase/Pendulum-v1", ()),
    ("rlbase/Maze-v0", ("success",)),
    ("rlbase/MazeGoTo-v0", ("success",)),
    ("rlbase/Driving-v0", ("progress", "laps", "offtrack", "speed")),
    ("rlbase/DrivingDiscrete-v0", ("progress", "laps", "offtrack", "speed")),
])
def test_native_outcome_keys_are_reported_per_env(env_id, keys):
    env = make_vec_env(env_id, 3, CPU)
    assert env.outcome_keys == keys
    env.reset(seed=0)
    actions = torch.stack([torch.as_tensor(env.single_action_space.sample()) for _ in range(3)])
    _, _, _, _, info = env.step(actions)
    for key in env.outcome_keys:  # each one a per-env value in every step's info
        assert torch.is_tensor(info[key]) and info[key].shape == (3,)


def test_atari_life_loss_is_not_an_outcome():
    env = make_vec_env("ALE/Breakout-v5", 1, CPU)
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(torch.zeros(1, dtype=torch.int64))
        assert "life_lost" in info and "life_lost" not in env.outcome_keys
        assert env.outcome_keys == ()
    finally:
        env.close()


def test_gym_adapter_has_no_outcomes(toy):
    env = make_vec_env(f"{toy}:{toy}/Counter-v0", 1, CPU)
    assert env.outcome_keys == ()
    env.close()


# ---------------------------------------------------------------- render_fps


@pytest.mark.parametrize("env_id", sorted(NATIVE_ENVS))
def test_native_render_fps_is_the_single_class_metadata(env_id):
    module, batched, single, _ = NATIVE_ENVS[env_id]
    single_cls = getattr(importlib.import_module(module), single)
    env = make_vec_env(env_id, 1, CPU)
    assert env.render_fps == float(single_cls.metadata["render_fps"]) > 0
    assert type(env).__name__ == batched


def test_native_render_fps_follows_a_new_single_class():
    class ToyVecEnv(NativeVecEnv):
        pass

    class ToyEnv(SingleEnv):
        vec_cls = ToyVecEnv
        metadata = {"render_modes": ["rgb_array"], "render_fps": 24}

    assert ToyVecEnv.render_fps == 24.0
    with pytest.raises(TypeError, match="fps"):
        class OtherEnv(SingleEnv):  # a second single class may not change the batched class's rate
            vec_cls = ToyVecEnv
            metadata = {"render_modes": ["rgb_array"], "render_fps": 60}


def test_gym_render_fps_from_metadata_with_fallback(toy):
    with make_vec_env(f"{toy}:{toy}/Counter-v0", 1, CPU) as env:
        assert env.render_fps == 7.0  # Counter's metadata
    with make_vec_env(f"{toy}:{toy}/Bits-v0", 1, CPU) as env:
        assert env.render_fps == 30.0  # none declared: Gymnasium's customary 30


def test_atari_videos_run_at_the_agent_step_rate():
    """One rendered frame per agent step of FRAME_SKIP emulator frames: real-time video is
    EMULATOR_FPS / FRAME_SKIP frames per second whatever ale-py's nominal metadata says."""
    assert AGENT_STEP_FPS == EMULATOR_FPS / FRAME_SKIP
    env = make_vec_env("ALE/Pong-v5", 1, CPU, render=True)
    try:
        assert env.render_fps == AGENT_STEP_FPS == AtariVecEnv.render_fps
        env.reset(seed=0)
        env.step(torch.zeros(1, dtype=torch.int64))
        frame = env.render()[0]
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    finally:
        env.close()
