"""DQN: in-process smoke runs of `train` with tiny budgets, action selection and the epsilon schedule."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from rlbase.agents import dqn
from rlbase.backbones import MLP, NatureCNN
from rlbase.errors import UsageError
from rlbase.lifecycle import train_config

CPU = torch.device("cpu")


def tiny_cartpole(**overrides) -> dqn.DQNConfig:
    values = dict(env_id="CartPole-v1", total_timesteps=600, learning_starts=100, buffer_size=1_000,
                  batch_size=32, hidden_sizes=(32, 32), train_freq=4, target_update_interval=100,
                  learning_rate=1e-3, seed=0, device="cpu")
    values.update(overrides)
    return dqn.DQNConfig(**values)


def run_train(cfg: dqn.DQNConfig, **env_settings) -> dict:
    """Train in memory through the run lifecycle; `env_settings` are config fields (Atari options)."""
    return train_config(dataclasses.replace(cfg, **env_settings))


def expected_updates(cfg: dqn.DQNConfig) -> int:
    """Updates of the replay ratio: gradient_steps per train_freq env steps once learning started."""
    return (cfg.total_timesteps - cfg.learning_starts) * cfg.gradient_steps // cfg.train_freq


def check_result(cfg: dqn.DQNConfig, result: dict) -> None:
    assert cfg.total_timesteps <= result["global_step"] < cfg.total_timesteps + cfg.num_envs
    assert result["num_updates"] > 0
    # Within one train_freq batch of the nominal count (warm-up granularity is one vector step).
    assert abs(result["num_updates"] - expected_updates(cfg)) <= cfg.num_envs + 1
    assert result["episodes"] > 0
    q = result["q_network"]
    assert all(torch.isfinite(p).all() for p in q.parameters())


@pytest.mark.parametrize("overrides", [
    {},
    {"num_envs": 2},
    {"dueling": True},
    {"n_step": 3},
    {"prioritized_replay": True},
    {"n_step": 3, "prioritized_replay": True},
    {"tau": 0.5, "target_update_interval": 10},
    {"double_q": False, "max_grad_norm": 0.0},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_cartpole_smoke(overrides):
    cfg = tiny_cartpole(**overrides)
    result = run_train(cfg)
    check_result(cfg, result)
    q = result["q_network"]
    assert isinstance(q.backbone, MLP)
    assert q.dueling == cfg.dueling
    if cfg.dueling:
        assert hasattr(q, "value") and hasattr(q, "advantage")


def learning_rates_of_the_updates(monkeypatch, cfg: dqn.DQNConfig) -> list[float]:
    seen = []
    step = dqn.gradient_step
    monkeypatch.setattr(dqn, "gradient_step",
                        lambda optimizer, *args: seen.append(optimizer.param_groups[0]["lr"]) or step(optimizer, *args))
    check_result(cfg, run_train(cfg))
    assert len(seen) > 100  # (600 - 100) / 4 updates
    return seen


def test_learning_rate_annealed_over_the_vector_steps(monkeypatch):
    cfg = tiny_cartpole(anneal_lr=True, num_envs=2)
    lrs = learning_rates_of_the_updates(monkeypatch, cfg)
    vector_steps = cfg.total_timesteps // cfg.num_envs
    first = cfg.learning_rate * (1 - cfg.learning_starts / cfg.total_timesteps)  # learning starts at step 100
    assert lrs[0] == pytest.approx(first, abs=2 * cfg.learning_rate / vector_steps)
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[0] > lrs[-1]
    assert 0 < lrs[-1] <= 2 * cfg.learning_rate / vector_steps  # ~0 at the end, never negative


def test_learning_rate_annealing_restarts_where_asked(monkeypatch):
    """As `rlbase prune` sets it: constant until `lr_restart_step`, then annealed to 0 from there."""
    cfg = tiny_cartpole(anneal_lr=True, lr_restart_step=400)
    lrs = learning_rates_of_the_updates(monkeypatch, cfg)
    full = [lr for lr in lrs if lr == cfg.learning_rate]
    # updates at env steps 100..399: one per train_freq steps; then a fresh annealing over the last 200
    assert len(full) == pytest.approx((400 - cfg.learning_starts) / cfg.train_freq, abs=2)
    assert all(lr < cfg.learning_rate for lr in lrs[len(full):]) and lrs[-1] < cfg.learning_rate / 100


def test_learning_rate_constant_by_default(monkeypatch):
    cfg = tiny_cartpole()
    assert not cfg.anneal_lr
    assert set(learning_rates_of_the_updates(monkeypatch, cfg)) == {cfg.learning_rate}


def test_n_step_prioritized_actually_uses_priorities(monkeypatch):
    """The n-step + prioritized path samples with priorities and writes them back every update."""
    from rlbase.buffers import ReplayBuffer

    calls = {"update": 0, "weights_not_one": 0, "sample": 0}
    orig_update, orig_sample = ReplayBuffer.update_priorities, ReplayBuffer.sample

    def update(self, indices, td_errors):
        calls["update"] += 1
        assert self.prioritized and self.n_step == 3
        return orig_update(self, indices, td_errors)

    def sample(self, *args, **kwargs):
        batch = orig_sample(self, *args, **kwargs)
        calls["sample"] += 1
        calls["weights_not_one"] += bool((batch.weights < 1).any())
        return batch

    monkeypatch.setattr(ReplayBuffer, "update_priorities", update)
    monkeypatch.setattr(ReplayBuffer, "sample", sample)
    cfg = tiny_cartpole(n_step=3, prioritized_replay=True)
    result = run_train(cfg)
    assert calls["update"] == calls["sample"] == result["num_updates"] > 0
    assert calls["weights_not_one"] > 0  # priorities did diverge


def test_same_seed_same_result():
    a = run_train(tiny_cartpole(total_timesteps=300))
    b = run_train(tiny_cartpole(total_timesteps=300))
    sa, sb = a["q_network"].state_dict(), b["q_network"].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_breakout_smoke():
    cfg = dqn.DQNConfig(env_id="ALE/Breakout-v5", total_timesteps=600, num_envs=2, buffer_size=2_000,
                        learning_starts=200, batch_size=32, train_freq=4, target_update_interval=200,
                        seed=0, device="cpu")
    result = run_train(cfg, atari_max_episode_steps=100)
    check_result(cfg, result)
    assert isinstance(result["q_network"].backbone, NatureCNN)


def test_dict_observations_smoke():
    """An image and an instruction (MazeGoTo): replay stores each key in its own dtype; the Q-network
    reads both through the multi-input backbone."""
    from rlbase.backbones import MultiInputBackbone

    cfg = dqn.DQNConfig(env_id="rlbase/MazeGoTo-v0", total_timesteps=400, num_envs=4, buffer_size=1_000,
                        learning_starts=100, batch_size=16, train_freq=4, target_update_interval=100,
                        n_step=3, seed=0, device="cpu")
    result = run_train(cfg)
    check_result(cfg, result)
    assert isinstance(result["q_network"].backbone, MultiInputBackbone)
    buffer = result["checkpoint"].buffer
    assert buffer["frames.mission"].dtype == torch.int64 and buffer["frames.image"].dtype == torch.uint8


def test_wrong_backbone_is_a_usage_error():
    with pytest.raises(UsageError, match="nature_cnn"):
        run_train(tiny_cartpole(backbone="nature_cnn"))


# ---------------------------------------------------------------- action selection


class FixedQ(nn.Module):
    """Q-values given per observation row: obs IS the Q-value table."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, obs):
        self.calls += 1
        return obs


def test_select_actions_greedy_with_epsilon_zero():
    gen = torch.Generator().manual_seed(0)
    q_values = torch.randn(1000, 5, generator=gen)
    actions = dqn.select_actions(FixedQ(), q_values, 0.0, 5, gen)
    assert actions.dtype == torch.int64 and actions.shape == (1000,)
    assert torch.equal(actions, q_values.argmax(dim=1))


def test_select_actions_uniform_with_epsilon_one():
    gen = torch.Generator().manual_seed(1)
    n, k = 20_000, 4
    q_values = torch.zeros(n, k)
    q_values[:, 2] = 1.0  # greedy would always pick 2
    actions = dqn.select_actions(FixedQ(), q_values, 1.0, k, gen)
    freq = torch.bincount(actions, minlength=k).float() / n
    assert bool(((freq - 1 / k).abs() < 4 * math.sqrt(0.25 * 0.75 / n) + 0.005).all()), freq


def test_select_actions_mixed_epsilon():
    gen = torch.Generator().manual_seed(2)
    n, k, eps = 20_000, 4, 0.3
    q_values = torch.zeros(n, k)
    q_values[:, 1] = 1.0
    actions = dqn.select_actions(FixedQ(), q_values, eps, k, gen)
    # Greedy action 1 with prob (1 - eps) + eps / k; each other action with eps / k.
    freq = torch.bincount(actions, minlength=k).float() / n
    assert freq[1].item() == pytest.approx(1 - eps + eps / k, abs=0.02)
    for a in (0, 2, 3):
        assert freq[a].item() == pytest.approx(eps / k, abs=0.02)


def test_linear_epsilon_endpoints():
    cfg = dqn.DQNConfig(env_id="CartPole-v1", total_timesteps=10_000, exploration_fraction=0.2,
                        exploration_initial_eps=1.0, exploration_final_eps=0.05)
    assert dqn.linear_epsilon(cfg, 0) == pytest.approx(1.0)
    assert dqn.linear_epsilon(cfg, 1_000) == pytest.approx((1.0 + 0.05) / 2)  # halfway through the decay
    assert dqn.linear_epsilon(cfg, 2_000) == pytest.approx(0.05)
    assert dqn.linear_epsilon(cfg, 9_999) == pytest.approx(0.05)
    assert dqn.linear_epsilon(cfg, 50_000) == pytest.approx(0.05)
    values = [dqn.linear_epsilon(cfg, s) for s in range(0, 3_000, 100)]
    assert values == sorted(values, reverse=True)
    no_decay = dqn.DQNConfig(env_id="CartPole-v1", exploration_fraction=0.0, exploration_final_eps=0.1)
    assert dqn.linear_epsilon(no_decay, 0) == pytest.approx(0.1)


@pytest.mark.parametrize("field,value", [
    ("total_timesteps", 0), ("exploration_final_eps", 1.5), ("tau", 0.0), ("n_step", 0),
    ("gamma", 1.5), ("batch_size", 0), ("device", "tpu"), ("lr_restart_step", -1),
])
def test_validate_rejects(field, value):
    cfg = tiny_cartpole(**{field: value})
    with pytest.raises(UsageError):
        dqn.validate(cfg)
