"""Native CartPole-v1 / Pendulum-v1 (rlbase.envs.classic): equivalence with Gymnasium's own envs,
same-step autoreset, batch-size-independent seeding, Gymnasium/SB3 env checks, and no host sync."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlbase  # noqa: F401  (registers the rlbase/ ids)
from rlbase.envs import make_vec_env
from rlbase.envs.classic import CartPoleEnv, CartPoleVecEnv, PendulumEnv, PendulumVecEnv
from rlbase.errors import UsageError

CPU = torch.device("cpu")
THETA_LIMIT = 12 * 2 * math.pi / 360


def _balance(obs):
    """A simple controller that keeps CartPole up for the 500 steps (to reach the time limit);
    (B, 4) tensor -> (B,) actions, or one NumPy observation -> an int."""
    x, x_dot, theta, theta_dot = obs.unbind(1) if torch.is_tensor(obs) else obs
    push_right = theta + 0.5 * theta_dot + 0.05 * x + 0.1 * x_dot > 0
    return push_right.long() if torch.is_tensor(obs) else int(push_right)


def _compare_with_gymnasium(env, gym_id: str, seed: int, steps: int, policy, *, resync_every_step: bool,
                            tol: float) -> dict[str, int]:
    """Drive the native env and one Gymnasium env per row with the same actions; compare every step.

    Each Gymnasium env starts from the native env's start state (its `unwrapped.state` is set
    after every reset). Gymnasium keeps a float64 state, the native env a float32 one, and both
    CartPole (an unstable system) and Pendulum amplify that rounding over long episodes; with
    `resync_every_step` the Gymnasium state is also set before each step, so every transition is
    compared from the same state. Returns the number of terminations and truncations seen.
    """
    refs = [gym.make(gym_id) for _ in range(env.num_envs)]
    assert env.max_episode_steps == refs[0].spec.max_episode_steps
    assert env.single_observation_space == refs[0].observation_space
    assert env.single_action_space == refs[0].action_space

    def sync(i: int) -> None:
        refs[i].unwrapped.state = env.state[i].double().numpy().copy()

    obs, _ = env.reset(seed=seed)
    for i, ref in enumerate(refs):
        ref.reset(seed=seed + i)
        sync(i)
    ended = {"terminated": 0, "truncated": 0}
    for _ in range(steps):
        actions = policy(obs)
        if resync_every_step:
            for i in range(env.num_envs):
                sync(i)
        obs, rewards, terminated, truncated, info = env.step(actions)
        for i, ref in enumerate(refs):
            r_obs, r_rew, r_term, r_trunc, _ = ref.step(actions[i].numpy() if actions.dim() > 1 else int(actions[i]))
            np.testing.assert_allclose(info["final_obs"][i].numpy(), r_obs, rtol=tol, atol=tol)
            assert float(rewards[i]) == pytest.approx(r_rew, rel=tol, abs=tol)
            assert (bool(terminated[i]), bool(truncated[i])) == (r_term, r_trunc)
            if r_term or r_trunc:
                ended["terminated" if r_term else "truncated"] += 1
                ref.reset()  # (restarts the TimeLimit count)
                sync(i)  # the next episode starts from the native env's start state
    return ended


# ------------------------------------------------------------------ (a) equivalence with Gymnasium


def test_cartpole_matches_gymnasium_with_random_actions():
    # Short episodes: free running (synced at resets only), the float32 rounding stays small.
    rng = np.random.default_rng(0)
    ended = _compare_with_gymnasium(CartPoleVecEnv(6), "CartPole-v1", 7, 300,
                                    lambda obs: torch.as_tensor(rng.integers(0, 2, len(obs))),
                                    resync_every_step=False, tol=1e-4)
    assert ended["terminated"] >= 60


def test_cartpole_matches_gymnasium_up_to_the_time_limit():
    # Two envs balance (and get truncated at 500 steps), the others act randomly (and terminate).
    rng = np.random.default_rng(1)
    controlled = torch.arange(4) < 2

    def policy(obs):
        return torch.where(controlled, _balance(obs), torch.as_tensor(rng.integers(0, 2, len(obs))))

    ended = _compare_with_gymnasium(CartPoleVecEnv(4), "CartPole-v1", 3, 1100, policy,
                                    resync_every_step=True, tol=1e-5)
    assert ended["truncated"] == 4 and ended["terminated"] >= 50


def test_pendulum_matches_gymnasium_step_by_step():
    rng = np.random.default_rng(2)  # torques beyond +-2 check the clipping
    policy = lambda obs: torch.as_tensor(rng.uniform(-3.0, 3.0, (len(obs), 1)).astype(np.float32))  # noqa: E731
    ended = _compare_with_gymnasium(PendulumVecEnv(4), "Pendulum-v1", 3, 450, policy,
                                    resync_every_step=True, tol=1e-5)
    assert ended == {"terminated": 0, "truncated": 8}


def test_pendulum_free_run_tracks_gymnasium_early_on():
    # Synced at resets only: the trajectories agree closely before the float32 rounding grows.
    rng = np.random.default_rng(3)
    policy = lambda obs: torch.as_tensor(rng.uniform(-2.0, 2.0, (len(obs), 1)).astype(np.float32))  # noqa: E731
    _compare_with_gymnasium(PendulumVecEnv(4), "Pendulum-v1", 11, 30, policy, resync_every_step=False, tol=1e-4)


# ------------------------------------------------------------------ (b) autoreset


def _episode_start(env_cls, seed: int, episode: int) -> torch.Tensor:
    """The first observation of episode `episode` of an env seeded `seed`, from a batch of one."""
    env = env_cls(1)
    obs, _ = env.reset(seed=seed)
    for _ in range(episode):
        env.start_next_episode(torch.ones(1, dtype=torch.bool))
        obs = env._observe()
    return obs[0]


def test_cartpole_autoreset_final_obs_and_episode_stats():
    num_envs = 16
    env = CartPoleVecEnv(num_envs)
    obs, _ = env.reset(seed=0)
    counted = torch.zeros(num_envs, dtype=torch.int64)
    ends = 0
    for t in range(120):
        held, copy = obs, obs.clone()
        obs, rewards, terminated, truncated, info = env.step(torch.full((num_envs,), t % 2 if t > 60 else 1))
        counted += 1
        final = info["final_obs"]
        assert obs.shape == final.shape == (num_envs, 4) and obs.dtype == final.dtype == torch.float32
        assert rewards.dtype == torch.float32 and terminated.dtype == truncated.dtype == torch.bool
        assert not truncated.any()
        for i in range(num_envs):
            if terminated[i]:
                ends += 1
                x, _, theta, _ = final[i].tolist()
                assert abs(x) > 2.4 or abs(theta) > THETA_LIMIT
                assert (obs[i].abs() < 0.05).all()  # a fresh start state ...
                assert not torch.equal(obs[i], final[i])
                assert torch.equal(obs[i], _episode_start(CartPoleVecEnv, i, int(env.episodes[i])))  # ... the next one
                assert info["episode_return"][i] == counted[i] == info["episode_length"][i]
                counted[i] = 0
            else:
                assert torch.equal(final[i], obs[i])
                assert info["episode_return"][i] == 0 and info["episode_length"][i] == 0
        # The env updates its state in place: what it handed out before must not change.
        assert torch.equal(held, copy)
    assert ends >= num_envs * 4


def test_autoreset_on_truncation():
    env = CartPoleVecEnv(4, max_episode_steps=5)
    env.reset(seed=1)
    for t in range(1, 11):
        obs, rewards, terminated, truncated, info = env.step(torch.tensor([0, 1, 0, 1]))
        assert not terminated.any()
        assert bool(truncated.all()) == (t % 5 == 0)
    assert info["episode_return"].tolist() == [5.0] * 4 and info["episode_length"].tolist() == [5] * 4
    assert env.episodes.tolist() == [2] * 4 and env.elapsed.tolist() == [0] * 4

    env = PendulumVecEnv(3)
    obs0, _ = env.reset(seed=2)
    for t in range(1, 201):
        obs, rewards, terminated, truncated, info = env.step(torch.zeros(3, 1))
        assert not terminated.any() and bool(truncated.all()) == (t == 200)
    assert torch.isfinite(info["episode_return"]).all() and (info["episode_return"] < 0).all()
    assert info["episode_length"].tolist() == [200] * 3
    assert not torch.equal(obs, info["final_obs"]) and not torch.equal(obs, obs0)  # a new episode:
    assert all(torch.equal(obs[i], _episode_start(PendulumVecEnv, 2 + i, 1)) for i in range(3))  # the second


def test_start_state_distributions():
    env = CartPoleVecEnv(4096)
    obs, _ = env.reset(seed=5)
    assert obs.min() >= -0.05 and obs.max() < 0.05
    assert (obs.min(0).values < -0.0495).all() and (obs.max(0).values > 0.0495).all()
    assert torch.allclose(obs.mean(0), torch.zeros(4), atol=0.003)
    assert torch.allclose(obs.std(0), torch.full((4,), 0.1 / math.sqrt(12)), rtol=0.05)
    assert len(torch.unique(obs[:, 0])) > 3900  # distinct per env
    pend = PendulumVecEnv(4096)
    obs, _ = pend.reset(seed=5)
    th, thdot = pend.state.unbind(1)
    assert th.min() >= -math.pi - 1e-6 and th.max() <= math.pi and th.min() < -3.1 and th.max() > 3.1
    assert thdot.min() >= -1 and thdot.max() <= 1 and thdot.min() < -0.99 and thdot.max() > 0.99
    assert torch.allclose(obs[:, 0], th.cos()) and torch.allclose(obs[:, 1], th.sin())


# ------------------------------------------------------------------ (c) seeding


def _trajectory(env_cls, num_envs: int, seed: int, index: int, actions: torch.Tensor):
    """Env `index`'s (obs, rewards, terminated, truncated, final_obs) along `actions` (T, ...)."""
    env = env_cls(num_envs)
    obs, _ = env.reset(seed=seed)
    out = [obs[index]]
    for a in actions:
        batch = a.expand(num_envs, *a.shape).contiguous()
        obs, rewards, terminated, truncated, info = env.step(batch)
        out += [obs[index], rewards[index], terminated[index], truncated[index], info["final_obs"][index]]
    return out


@pytest.mark.parametrize("env_cls,make_actions", [
    (CartPoleVecEnv, lambda g: torch.randint(0, 2, (150,), generator=g)),
    (PendulumVecEnv, lambda g: torch.rand(230, 1, generator=g) * 4 - 2),
])
def test_seeding_is_independent_of_batch_size(env_cls, make_actions):
    actions = make_actions(torch.Generator().manual_seed(0))
    single = _trajectory(env_cls, 1, 42, 0, actions)
    batched = _trajectory(env_cls, 64, 42, 0, actions)
    assert all(torch.equal(a, b) for a, b in zip(single, batched, strict=True))
    # env i of a batch seeded s is env 0 of a batch seeded s + i
    shifted = _trajectory(env_cls, 64, 37, 5, actions)
    assert all(torch.equal(a, b) for a, b in zip(single, shifted, strict=True))
    other = _trajectory(env_cls, 1, 43, 0, actions)
    assert not torch.equal(single[0], other[0])


def test_episodes_differ_and_reset_reproduces():
    env = CartPoleVecEnv(8)
    first, _ = env.reset(seed=9)
    starts = [first.clone()]
    for _ in range(3):
        env.start_next_episode(torch.ones(8, dtype=torch.bool))
        starts.append(env._observe())
    assert all(not torch.equal(starts[0], s) for s in starts[1:])
    again, _ = env.reset(seed=9)
    assert torch.equal(again, first)
    # Resetting only some envs leaves the others untouched.
    before = env._observe()
    mask = torch.arange(8) % 2 == 0
    env.start_next_episode(mask)
    after = env._observe()
    assert torch.equal(after[~mask], before[~mask]) and torch.equal(after[mask], starts[1][mask])


# ------------------------------------------------------------------ (d) Gymnasium / SB3 API


@pytest.mark.parametrize("env_id,cls,shape", [
    ("rlbase/CartPole-v1", CartPoleEnv, (400, 600, 3)),
    ("rlbase/Pendulum-v1", PendulumEnv, (500, 500, 3)),
])
def test_single_env_passes_env_checkers_and_renders(env_id, cls, shape):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the infinite-bounds / asymmetric-action notes Gymnasium's own envs get too
        env = gym.make(env_id)
        assert isinstance(env.unwrapped, cls)
        check_env(env.unwrapped)
        sb3_check_env(gym.make(env_id), warn=False)
    env = gym.make(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    frame = env.render()
    assert frame.shape == shape and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 3  # background plus drawn shapes
    env.step(env.action_space.sample())
    assert env.render().shape == shape
    vec = cls.vec_cls(2)
    vec.reset(seed=0)
    assert [f.shape for f in vec.render()] == [shape, shape]


def test_single_env_plays_full_episodes():
    env = gym.make("rlbase/CartPole-v1")
    obs, _ = env.reset(seed=4)
    lengths, length = [], 0
    while len(lengths) < 3:
        obs, reward, terminated, truncated, _ = env.step(_balance(obs) if len(lengths) == 1 else 1)
        assert reward == 1.0
        length += 1
        if terminated or truncated:
            lengths.append(length)
            assert truncated == (length == 500)
            obs, _ = env.reset()  # the next episode of the seed's sequence
            assert np.abs(obs).max() < 0.05
            length = 0
    assert lengths[1] == 500 and lengths[0] < 500 and lengths[2] < 500


# ------------------------------------------------------------------ (e) make_vec_env


def test_make_vec_env_builds_the_native_classes():
    env = make_vec_env("rlbase/CartPole-v1", 8, CPU)
    assert type(env) is CartPoleVecEnv and env.num_envs == 8 and env.device == CPU
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, 4)
    env = make_vec_env("rlbase/Pendulum-v1", 3, CPU, split="eval", env_kwargs={"g": 9.81})
    assert type(env) is PendulumVecEnv and env.g == 9.81 and env.split == "eval"
    obs, *_ = env.step(torch.zeros(3, 1))
    assert obs.shape == (3, 3)


@pytest.mark.parametrize("env_id", ["rlbase/CartPole-v1", "rlbase/Pendulum-v1"])
def test_classic_envs_have_no_levels(env_id):
    """num_levels would be accepted and ignored by envs without levels: it is refused, naming it."""
    assert not make_vec_env(env_id, 2, CPU).procedural
    with pytest.raises(UsageError, match="num_levels"):
        make_vec_env(env_id, 2, CPU, env_kwargs={"num_levels": 5})
    with pytest.raises(UsageError, match="num_envs"):
        make_vec_env(env_id, 0, CPU)


# ------------------------------------------------------------------ (f) no host sync


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("env_cls,action", [(CartPoleVecEnv, lambda n: torch.randint(0, 2, (n,))),
                                            (PendulumVecEnv, lambda n: torch.rand(n, 1) * 4 - 2)])
def test_step_does_not_sync_with_the_host(env_cls, action):
    device = torch.device("cuda")
    env = env_cls(256, device, max_episode_steps=20)
    env.reset(seed=0)
    actions = [action(256).to(device) for _ in range(50)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for a in actions:  # 50 steps: time-limit resets included, terminations for CartPole
            env.step(a)
        env.start_next_episode(env.elapsed > 3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(env.episodes.sum()) > 256
