"""Autoreset semantics of both env backends, through `make_vec_env`, and env-id checking."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlbase.envs import check_env_id, make_vec_env
from rlbase.errors import UsageError

CPU = torch.device("cpu")


# ---------------------------------------------------------------- Gymnasium backend


def test_cartpole_autoreset_matches_single_envs():
    num_envs, seed, action = 3, 123, 1
    env = make_vec_env("CartPole-v1", num_envs, CPU)
    # Reference: independent single envs seeded as the vector env seeds its members (seed + i).
    refs = [gym.make("CartPole-v1") for _ in range(num_envs)]
    ref_obs = [r.reset(seed=seed + i)[0] for i, r in enumerate(refs)]
    try:
        obs, _ = env.reset(seed=seed)
        assert obs.dtype == torch.float32 and obs.device == CPU and obs.shape == (num_envs, 4)
        np.testing.assert_array_equal(obs.numpy(), np.stack(ref_obs))
        counted = np.zeros(num_envs, dtype=int)
        episodes_ended = 0
        for _ in range(60):
            obs, rewards, terminated, truncated, info = env.step(torch.full((num_envs,), action))
            for t in (obs, rewards, info["final_obs"], info["episode_return"]):
                assert t.dtype == torch.float32 and t.device == CPU
            assert terminated.dtype == torch.bool and truncated.dtype == torch.bool
            final_obs = info["final_obs"]
            assert final_obs.shape == obs.shape
            counted += 1
            for i, ref in enumerate(refs):
                r_obs, r_rew, r_term, r_trunc, _ = ref.step(action)
                assert bool(terminated[i]) == r_term and bool(truncated[i]) == r_trunc
                assert float(rewards[i]) == r_rew
                if r_term or r_trunc:
                    episodes_ended += 1
                    # final_obs: the real last observation of the ended episode ...
                    np.testing.assert_array_equal(final_obs[i].numpy(), r_obs)
                    x, _, angle, _ = r_obs
                    assert abs(x) > 2.4 or abs(angle) > 0.2095  # CartPole's termination bounds
                    # ... obs: the first one of the next episode (fresh reset: all |values| < 0.05).
                    reset_obs, _ = ref.reset()
                    np.testing.assert_array_equal(obs[i].numpy(), reset_obs)
                    assert bool((obs[i].abs() < 0.05).all())
                    assert not torch.equal(obs[i], final_obs[i])
                    assert float(info["episode_return"][i]) == counted[i]  # reward 1 per step
                    assert int(info["episode_length"][i]) == counted[i]
                    counted[i] = 0
                else:
                    np.testing.assert_array_equal(obs[i].numpy(), r_obs)
                    assert torch.equal(final_obs[i], obs[i])
                    assert float(info["episode_return"][i]) == 0 and int(info["episode_length"][i]) == 0
        assert episodes_ended >= num_envs * 2
    finally:
        env.close()
        for r in refs:
            r.close()


def test_gym_backend_leaves_tuple_observations_to_the_agents_naming_the_wrapper():
    env = make_vec_env("Blackjack-v1", 1, CPU)  # whether an agent takes them is its check_env's call
    try:
        assert isinstance(env.single_observation_space, gym.spaces.Tuple)
        with pytest.raises(UsageError, match="Tuple observation space.*FlattenObservation"):
            env.reset(seed=0)  # but they cannot become tensors
    finally:
        env.close()


def test_gym_backend_one_hot_encodes_discrete_observations():
    env = make_vec_env("FrozenLake-v1", 2, CPU)
    try:
        obs, _ = env.reset(seed=0)
        assert env.single_observation_space.shape == (16,)
        assert obs.shape == (2, 16) and obs.dtype == torch.float32
        assert torch.equal(obs.sum(dim=1), torch.ones(2)) and torch.equal(obs[:, 0], torch.ones(2))  # start: state 0
    finally:
        env.close()


# ---------------------------------------------------------------- Atari backend


def _zero(frames: torch.Tensor) -> torch.Tensor:
    """Per row: is each frame of the stack all zeros? -> (batch, stack) bool."""
    return (frames.flatten(2) == 0).all(dim=2)


@pytest.fixture(scope="module")
def breakout_50():
    env = make_vec_env("ALE/Breakout-v5", 2, CPU, atari_max_episode_steps=50)
    yield env
    env.close()


def test_atari_reset_stack(breakout_50):
    env = breakout_50
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == torch.uint8 and obs.device == CPU
    assert env.single_observation_space.shape == (4, 84, 84)
    assert env.frame_stack == 4
    zero = _zero(obs)
    assert bool(zero[:, :3].all()), "the first obs of a game is [0, 0, 0, frame]"
    assert not bool(zero[:, 3].any())


def test_atari_truncation_and_final_obs(breakout_50):
    env = breakout_50
    gen = torch.Generator().manual_seed(0)
    prev, _ = env.reset(seed=1)
    for step in range(1, 51):
        actions = torch.randint(int(env.single_action_space.n), (2,), generator=gen)
        obs, rewards, terminated, truncated, info = env.step(actions)
        final_obs = info["final_obs"]
        assert final_obs.shape == obs.shape and final_obs.dtype == torch.uint8
        if step < 50:
            assert not bool((terminated | truncated).any()), f"episode ended early at step {step}"
            assert torch.equal(obs[:, :3], prev[:, 1:])  # the stack shifts by one frame a step
            assert torch.equal(final_obs, obs)
            assert bool((info["episode_length"] == 0).all())
        prev_obs = prev
        prev = obs
    # Step 50: truncated (not terminated) in both envs.
    assert bool(truncated.all()) and not bool(terminated.any())
    assert torch.equal(final_obs[:, :3], prev_obs[:, 1:]), "final_obs is the previous stack shifted by one frame"
    assert not bool(_zero(final_obs).any())
    assert bool(_zero(obs)[:, :3].all()) and not bool(_zero(obs)[:, 3].any()), "new obs is a reset stack"
    assert info["episode_length"].tolist() == [50, 50]


def test_atari_training_signal_unit(breakout_50):
    env = breakout_50
    rewards = torch.tensor([7.0, -3.0, 0.0, 0.5])
    terminated = torch.tensor([False, False, True, False])
    life_lost = torch.tensor([True, False, False, False])
    r, term = env.training_signal(rewards, terminated, {"life_lost": life_lost})
    assert r.tolist() == [1.0, -1.0, 0.0, 1.0]
    assert term.tolist() == [True, False, True, False]
    # The inputs themselves (the real episode) are left untouched.
    assert rewards.tolist() == [7.0, -3.0, 0.0, 0.5] and terminated.tolist() == [False, False, True, False]


def test_atari_training_signal_can_be_disabled():
    env = make_vec_env("ALE/Breakout-v5", 1, CPU, clip_rewards=False, terminal_on_life_loss=False)
    try:
        r, term = env.training_signal(torch.tensor([7.0]), torch.tensor([False]), {"life_lost": torch.tensor([True])})
        assert r.tolist() == [7.0] and term.tolist() == [False]
    finally:
        env.close()


def test_atari_life_loss_is_terminal_for_training_only():
    env = make_vec_env("ALE/Breakout-v5", 2, CPU)
    gen = torch.Generator().manual_seed(0)
    try:
        env.reset(seed=2)
        seen = 0
        for _ in range(400):
            obs, rewards, terminated, truncated, info = env.step(torch.randint(4, (2,), generator=gen))
            life_lost = info["life_lost"]
            assert life_lost.dtype == torch.bool
            assert not bool((life_lost & (terminated | truncated)).any())
            _, train_terminal = env.training_signal(rewards, terminated, info)
            assert torch.equal(train_terminal, terminated | life_lost)
            if life_lost.any():
                seen += 1
                assert not bool(terminated[life_lost].any()), "a lost life does not end the real episode"
                assert bool(train_terminal[life_lost].all())
                assert torch.equal(info["final_obs"], obs)  # no episode ended: no final obs
            if seen >= 3:
                break
        assert seen >= 3, "no life was lost in 400 random Breakout steps"
    finally:
        env.close()


def test_atari_episode_return_is_unclipped():
    # Space Invaders pays 5-30 points per alien, so clipped and real returns differ quickly.
    env = make_vec_env("ALE/SpaceInvaders-v5", 2, CPU, atari_max_episode_steps=150)
    gen = torch.Generator().manual_seed(0)
    try:
        env.reset(seed=0)
        raw = torch.zeros(2)
        clipped = torch.zeros(2)
        for _ in range(150):
            _, rewards, terminated, truncated, info = env.step(
                torch.randint(int(env.single_action_space.n), (2,), generator=gen))
            train_rewards, _ = env.training_signal(rewards, terminated, info)
            assert bool((train_rewards.abs() <= 1).all())
            raw += rewards
            clipped += train_rewards
            dones = terminated | truncated
            if dones.any():
                break
        assert bool(dones.all())
        assert torch.equal(info["episode_return"], raw)
        assert bool((raw > clipped).any()), "test needs a reward > 1 to tell clipped from real returns"
    finally:
        env.close()


# ---------------------------------------------------------------- env ids


@pytest.mark.parametrize("env_id,suggestion", [
    ("CartPol-v1", "CartPole-v1"),
    ("ALE/Breakot-v5", "ALE/Breakout-v5"),
    ("breakout", "ALE/Breakout-v5"),
])
def test_check_env_id_suggests_close_matches(env_id, suggestion):
    with pytest.raises(UsageError) as exc_info:
        check_env_id(env_id)
    message = str(exc_info.value)
    assert env_id in message
    assert suggestion in message
    assert exc_info.value.exit_code == 2


@pytest.mark.parametrize("env_id", ["CartPole-v1", "ALE/Breakout-v5", "ALE/Pong-v5"])
def test_check_env_id_accepts_known_ids(env_id):
    check_env_id(env_id)


def test_unknown_env_id_through_make_vec_env():
    with pytest.raises(UsageError, match="CartPole-v1"):
        make_vec_env("CartPol-v1", 1, CPU)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "ALE/Breakout-v5"])
def test_step_async_then_wait_equals_step(env_id):
    """The DQN loop overlaps env stepping with learning through step_async/step_wait; it must
    give exactly what `step` gives for the same seed and actions."""
    device = torch.device("cpu")
    a = make_vec_env(env_id, 2, device, atari_max_episode_steps=40)
    b = make_vec_env(env_id, 2, device, atari_max_episode_steps=40)
    obs_a, _ = a.reset(seed=3)
    obs_b, _ = b.reset(seed=3)
    assert torch.equal(obs_a, obs_b)
    gen = torch.Generator().manual_seed(0)
    ended = 0
    for _ in range(60):
        actions = torch.randint(int(a.single_action_space.n), (2,), generator=gen)
        out_a = a.step(actions)
        b.step_async(actions)
        out_b = b.step_wait()
        for x, y in zip(out_a[:4], out_b[:4]):
            assert torch.equal(x, y)
        for key in ("final_obs", "episode_return", "episode_length"):
            assert torch.equal(out_a[4][key], out_b[4][key])
        ended += int((out_a[2] | out_a[3]).sum())
    assert ended > 0  # the comparison covered autoresets too
    a.close()
    b.close()
