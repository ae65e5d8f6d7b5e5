"""PQN: the Q(lambda) targets against naive loops, the LayerNorm network, in-process smoke runs, and
the console script (train, eval, resume, one-line errors)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rlbase.agents import get_agent, pqn
from rlbase.agents.rollout import RolloutStorage
from rlbase.backbones import MLP, NatureCNN, build_backbone
from rlbase.lifecycle import train_config
from tests.test_cli import assert_ok, assert_one_line_error, run_cli

CPU = torch.device("cpu")


# ---------------------------------------------------------------- Q(lambda) targets

class GreedyProbe(nn.Module):
    """A fixed random Q-function of 3-d observations (3 actions), so max_a Q differs per state."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 3)
        with torch.no_grad():
            self.layer.weight.normal_()
            self.layer.bias.normal_()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.layer(obs)


def random_rollout(T: int, N: int, seed: int):
    """Random obs, final obs, rewards and episode ends (terminations and truncations mixed, some on
    the last step, some both flags at once as TimeLimit gives on a terminal last step)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, N, 3, generator=g)
    final_obs = torch.randn(T, N, 3, generator=g)
    last_obs = torch.randn(N, 3, generator=g)
    rewards = torch.randn(T, N, generator=g)
    terminated = torch.rand(T, N, generator=g) < 0.15
    truncated = torch.rand(T, N, generator=g) < 0.15
    terminated[-1, 0], truncated[-1, 1], truncated[2, 2] = True, True, True
    terminated[3, 3] = truncated[3, 3] = True  # both: terminal wins
    return obs, final_obs, last_obs, rewards, terminated, truncated


def pqn_targets(q: nn.Module, obs, final_obs, last_obs, rewards, terminated, truncated, gamma, lam) -> torch.Tensor:
    """Fill a RolloutStorage as pqn.train does and compute the targets with pqn.compute_targets."""
    T, N = rewards.shape
    space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    storage = RolloutStorage(T, N, space, None, (), torch.long, CPU)
    storage.obs.copy_(obs)
    storage.final_obs.copy_(final_obs)
    storage.rewards.copy_(rewards)
    storage.train_ends.copy_(terminated | truncated)
    storage.truncated.copy_(truncated & ~terminated)
    with torch.no_grad():
        storage.values.copy_(q(obs).max(dim=-1).values)  # stored while acting in pqn.train
    pqn.compute_targets(storage, q, last_obs, gamma, lam)
    return storage.returns.clone()


def v(q: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(q(x.unsqueeze(0)).max())


def naive_q_lambda(q, obs, final_obs, last_obs, rewards, terminated, truncated, gamma, lam) -> torch.Tensor:
    """The recursion of the paper written out per env and step, in Python floats."""
    T, N = rewards.shape
    out = torch.zeros(T, N)
    for n in range(N):
        following = None  # G_{t+1}
        for t in reversed(range(T)):
            r = float(rewards[t, n])
            if terminated[t, n]:
                g = r  # nothing to bootstrap from
            elif truncated[t, n]:
                g = r + gamma * v(q, final_obs[t, n])  # the ended episode's last state; not the next row
            elif t == T - 1:
                g = r + gamma * v(q, last_obs[n])
            else:
                g = r + gamma * (lam * following + (1 - lam) * v(q, obs[t + 1, n]))
            out[t, n] = g
            following = g
    return out


def one_step(q, obs, final_obs, last_obs, rewards, terminated, truncated, gamma) -> torch.Tensor:
    """lambda = 0: the 1-step Q-learning target r + gamma * max_a Q(next state)."""
    T, N = rewards.shape
    out = torch.zeros(T, N)
    for t in range(T):
        for n in range(N):
            nxt = final_obs[t, n] if truncated[t, n] else obs[t + 1, n] if t + 1 < T else last_obs[n]
            out[t, n] = float(rewards[t, n]) + (0.0 if terminated[t, n] else gamma * v(q, nxt))
    return out


def monte_carlo(q, obs, final_obs, last_obs, rewards, terminated, truncated, gamma) -> torch.Tensor:
    """lambda = 1: discounted rewards to the episode's end, plus gamma^k max_a Q where the rollout
    (or a truncation) cuts the episode; nothing after a termination."""
    T, N = rewards.shape
    out = torch.zeros(T, N)
    for t in range(T):
        for n in range(N):
            total, discount = 0.0, 1.0
            for k in range(t, T):
                total += discount * float(rewards[k, n])
                discount *= gamma
                if terminated[k, n]:
                    break
                if truncated[k, n]:
                    total += discount * v(q, final_obs[k, n])
                    break
            else:
                total += discount * v(q, last_obs[n])
            out[t, n] = total
    return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.65, 1.0])
@pytest.mark.parametrize("gamma", [0.9, 0.99])
@pytest.mark.parametrize("seed", [0, 1])
def test_q_lambda_targets_match_a_naive_loop(lam, gamma, seed):
    torch.manual_seed(seed)
    q = GreedyProbe()
    data = random_rollout(T=9, N=6, seed=seed)
    got = pqn_targets(q, *data, gamma, lam)
    torch.testing.assert_close(got, naive_q_lambda(q, *data, gamma, lam), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q_lambda_extremes_are_one_step_and_monte_carlo_returns(seed):
    torch.manual_seed(seed)
    q = GreedyProbe()
    data = random_rollout(T=8, N=5, seed=10 + seed)
    torch.testing.assert_close(pqn_targets(q, *data, 0.97, 0.0), one_step(q, *data, 0.97), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pqn_targets(q, *data, 0.97, 1.0), monte_carlo(q, *data, 0.97), rtol=1e-5, atol=1e-5)


def test_truncation_bootstraps_from_final_obs_and_termination_does_not():
    """One env, two steps: the targets move with Q(final_obs) only where the episode was truncated."""
    q = GreedyProbe()
    obs, final_obs, last_obs = torch.randn(2, 1, 3), torch.randn(2, 1, 3), torch.randn(1, 3)
    rewards = torch.tensor([[1.0], [2.0]])
    ended = torch.tensor([[True], [False]])
    moved = final_obs.clone()
    moved[0, 0] += 5.0
    trunc = [pqn_targets(q, obs, f, last_obs, rewards, ~ended, ended, 0.9, 0.5)[0, 0] for f in (final_obs, moved)]
    term = [pqn_targets(q, obs, f, last_obs, rewards, ended, ~ended, 0.9, 0.5)[0, 0] for f in (final_obs, moved)]
    assert float(trunc[0]) == pytest.approx(1.0 + 0.9 * v(q, final_obs[0, 0]), abs=1e-5)
    assert float(trunc[0]) != pytest.approx(float(trunc[1]))
    assert float(term[0]) == float(term[1]) == 1.0


# ---------------------------------------------------------------- the network

def test_layer_norm_sits_before_each_hidden_activation():
    space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    mlp = build_backbone("mlp", space, (32, 16), "relu", layer_norm=True)
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU"]
    with torch.no_grad():
        pre = mlp.net[:2](torch.randn(64, 4) * 100)  # after the first LayerNorm, before its ReLU
    torch.testing.assert_close(pre.mean(-1), torch.zeros(64), atol=1e-4, rtol=0)
    # Off by default: other agents' networks (and their checkpoints' tensor names) are unchanged.
    plain = build_backbone("mlp", space, (32, 16), "relu")
    assert not any(isinstance(m, nn.LayerNorm) for m in plain.modules())
    assert list(plain.state_dict()) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def test_nature_cnn_layer_norm_shapes_and_default_names():
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    cnn = NatureCNN(space, layer_norm=True)
    shapes = [tuple(m.normalized_shape) for m in cnn.modules() if isinstance(m, nn.LayerNorm)]
    assert shapes == [(32, 20, 20), (64, 9, 9), (64, 7, 7), (512,)]
    out = cnn(torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8))
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    names = list(NatureCNN(space).state_dict())
    assert names == ["convs.0.weight", "convs.0.bias", "convs.2.weight", "convs.2.bias", "convs.4.weight",
                     "convs.4.bias", "fc.0.weight", "fc.0.bias"]


def test_pqn_network_follows_the_layer_norm_flag():
    from rlbase import transfer

    space, actions = gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2)
    for flag in (True, False):
        cfg = pqn.PQNConfig(env_id="rlbase/CartPole-v1", hidden_sizes=(8, 8), layer_norm=flag)
        q = pqn.build_q_network(cfg, transfer.parse(cfg, space), space, actions)
        assert isinstance(q.backbone, MLP)
        assert sum(isinstance(m, nn.LayerNorm) for m in q.modules()) == (2 if flag else 0)
        assert q(torch.zeros(3, 4)).shape == (3, 2)


# ---------------------------------------------------------------- in-process runs

def tiny(**overrides) -> pqn.PQNConfig:
    values = dict(env_id="rlbase/CartPole-v1", total_timesteps=1024, num_envs=8, num_steps=16, update_epochs=2,
                  num_minibatches=4, hidden_sizes=(32, 32), learning_rate=1e-3, seed=0, device="cpu")
    values.update(overrides)
    return pqn.PQNConfig(**values)


@pytest.mark.parametrize("overrides", [{}, {"layer_norm": False, "anneal_lr": False, "max_grad_norm": 0.0},
                                       {"q_lambda": 0.0}, {"env_id": "CartPole-v1", "num_envs": 2}],
                         ids=["default", "plain", "lambda0", "gymnasium"])
def test_smoke(overrides):
    cfg = tiny(**overrides)
    result = train_config(cfg)
    rollouts = -(-cfg.total_timesteps // (cfg.num_envs * cfg.num_steps))
    assert result["global_step"] == rollouts * cfg.num_envs * cfg.num_steps
    assert result["rollouts"] == rollouts and result["num_updates"] == rollouts * cfg.update_epochs * cfg.num_minibatches
    q = result["q_network"]
    assert all(torch.isfinite(p).all() for p in q.parameters())
    assert any(isinstance(m, nn.LayerNorm) for m in q.modules()) == cfg.layer_norm
    assert result["episodes"] > 0 and np.isfinite(result["train_metrics"]["train/loss"])


def test_same_seed_same_weights():
    a, b = (train_config(tiny(total_timesteps=256))["q_network"].state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_breakout_smoke():
    """uint8 frame stacks stored as uint8, the Nature CNN with LayerNorm, life losses as training ends."""
    cfg = tiny(env_id="ALE/Breakout-v5", total_timesteps=64, num_envs=2, num_steps=16, atari_max_episode_steps=20)
    result = train_config(cfg)
    assert result["num_updates"] == 2 * cfg.update_epochs * cfg.num_minibatches
    backbone = result["q_network"].backbone
    assert isinstance(backbone, NatureCNN) and sum(isinstance(m, nn.LayerNorm) for m in backbone.modules()) == 4


def test_dict_observations_smoke():
    """An image and an instruction (MazeGoTo): stored key by key, read through the multi-input backbone."""
    cfg = tiny(env_id="rlbase/MazeGoTo-v0", total_timesteps=256, num_envs=4, num_steps=32)
    result = train_config(cfg)
    assert result["num_updates"] == 2 * cfg.update_epochs * cfg.num_minibatches


def test_acting_net_is_the_greedy_q_path():
    result = train_config(tiny(total_timesteps=256))
    cfg, agent = tiny(), get_agent("pqn")
    tensors = {k: v for k, v in result["checkpoint"].tensors.items() if k.startswith("q.")}
    space, actions = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2)
    net = agent.acting_net(cfg, tensors, space, actions, CPU)
    assert net.kind == "q"
    obs = torch.randn(5, 4)
    values, chosen = net(obs)
    torch.testing.assert_close(values, result["q_network"](obs))
    assert torch.equal(chosen, values.argmax(-1))
    policy = agent.load_policy(cfg, tensors, space, actions, CPU)
    assert torch.equal(policy(obs, torch.Generator().manual_seed(0)), chosen)  # eval_epsilon 0: greedy


@pytest.mark.parametrize("field,value", [("q_lambda", 1.5), ("q_lambda", -0.1), ("num_minibatches", 10_000),
                                         ("update_epochs", 0), ("exploration_final_eps", 2.0), ("gamma", 1.5)])
def test_validate_rejects(field, value):
    from rlbase.errors import UsageError

    with pytest.raises(UsageError, match=f"--{field.replace('_', '-')}"):
        pqn.validate(dataclasses.replace(tiny(), **{field: value}))


# ---------------------------------------------------------------- the console script

def latest_state(run_dir: Path) -> dict:
    name = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
    return json.loads((run_dir / "checkpoints" / name / "state.json").read_text())


@pytest.fixture(scope="module")
def pqn_cartpole(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("cli_pqn")
    proc = run_cli("train", "pqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", 2048, "--log-dir", log_dir,
                   "--run-name", "pqn", "--log-interval", 1024, "--exploration-fraction", 1.0, cwd=log_dir)
    assert_ok(proc)
    assert "training pqn on rlbase/CartPole-v1" in proc.stderr and "rlbase eval" in proc.stderr
    return log_dir / "pqn"


def test_train_writes_the_run_and_the_sb3_tags(pqn_cartpole):
    from rlbase.config import load_preset

    config = json.loads((pqn_cartpole / "config.json").read_text())
    assert config["algo"] == "pqn"
    cfg, preset = config["config"], load_preset("pqn", "rlbase/CartPole-v1")
    for key in ("num_envs", "num_steps", "update_epochs", "num_minibatches", "q_lambda", "layer_norm"):
        assert cfg[key] == preset[key], key
    state = latest_state(pqn_cartpole)
    batch = cfg["num_envs"] * cfg["num_steps"]
    rollouts = -(-2048 // batch)
    assert state["step"] == rollouts * batch
    assert state["counters"] == {"global_step": state["step"], "rollouts": rollouts,
                                 "num_updates": rollouts * cfg["update_epochs"] * cfg["num_minibatches"]}
    records = [json.loads(line) for line in (pqn_cartpole / "metrics.jsonl").read_text().splitlines()]
    for key in ("rollout/exploration_rate", "train/loss", "train/q_values", "train/learning_rate", "train/n_updates",
                "rollout/ep_rew_mean"):
        assert key in records[-1], key
    assert records[0]["rollout/exploration_rate"] > records[-1]["rollout/exploration_rate"]
    assert records[-1]["train/learning_rate"] < cfg["learning_rate"]  # annealed


def test_eval_plays_the_saved_network(pqn_cartpole):
    proc = run_cli("eval", pqn_cartpole, "--json", "--episodes", 3, "--seed", 5, cwd=pqn_cartpole.parent)
    assert_ok(proc)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["algo"] == "pqn" and report["policy"].startswith("epsilon-greedy")
    assert report["global_step"] == latest_state(pqn_cartpole)["step"]
    assert len(report["episodes"]) == 3 and all(e["return"] == e["length"] > 0 for e in report["episodes"])


def test_resume_continues_the_counters(pqn_cartpole, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(pqn_cartpole, run_dir)
    before = latest_state(run_dir)
    proc = run_cli("train", "pqn", "--resume", run_dir, "--total-timesteps", 2 * before["step"], cwd=tmp_path)
    assert_ok(proc)
    state = latest_state(run_dir)
    assert state["step"] == 2 * before["step"]
    assert state["counters"]["rollouts"] == 2 * before["counters"]["rollouts"]
    assert state["counters"]["num_updates"] == 2 * before["counters"]["num_updates"]


def test_a_bad_flag_is_one_line_from_the_console_script(tmp_path):
    proc = run_cli("train", "pqn", "--env", "rlbase/CartPole-v1", "--q-lambda", "1.5", cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert "--q-lambda" in line and "[0, 1]" in line


@pytest.mark.parametrize("flags,expected", [
    (["--q-lambda", "-0.1"], "--q-lambda"),
    (["--num-minibatches", "1000000"], "--num-minibatches"),
    (["--layer-norm", "--backbone-weights", "somewhere"], "--layer-norm"),
    (["--env", "rlbase/Pendulum-v1"], "discrete action space"),
], ids=["lambda", "minibatches", "layer-norm-with-weights", "continuous-actions"])
def test_bad_flags_are_one_line_errors(tmp_path, monkeypatch, capsys, flags, expected):
    from rlbase.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "pqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", "64", *flags])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("rlbase: error:") and expected in lines[0]
    assert not (tmp_path / "runs").exists()  # checked before a run directory exists


@pytest.mark.parametrize("command", [pytest.param(["export", "--episodes", "2"], marks=pytest.mark.slow),  # ~15 s
                                     ["quantize", "--episodes", "2"],
                                     ["prune", "--sparsity", "0.5", "--steps", "256", "--episodes", "2"]],
                         ids=lambda c: c[0])
def test_compression_and_export_take_the_q_acting_path(pqn_cartpole, tmp_path, monkeypatch, capsys, command):
    """`rlbase export / quantize / prune` work on a PQN run through `Agent.acting_net` (kind "q"), and
    `rlbase eval` plays what they wrote."""
    from rlbase.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / command[0]
    assert main([command[0], str(pqn_cartpole), "--out", str(out), *command[1:]]) == 0, capsys.readouterr().err
    played = out / "model.onnx" if command[0] == "export" else out
    capsys.readouterr()
    assert main(["eval", str(played), "--episodes", "2", "--json"]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(report["episodes"]) == 2 and all(e["length"] > 0 for e in report["episodes"])


def test_python_api_learns_saves_loads_and_predicts(tmp_path, monkeypatch):
    import rlbase
    from rlbase import PQN

    monkeypatch.chdir(tmp_path)
    assert rlbase.PQN is PQN and PQN.algo == "pqn"
    agent = PQN("rlbase/CartPole-v1", seed=0, total_timesteps=1024, verbose=0, log_dir=None).learn()
    assert agent.num_timesteps == 1024
    agent.save(tmp_path / "pqn_cartpole")
    loaded = rlbase.load(tmp_path / "pqn_cartpole")
    assert type(loaded) is PQN
    obs = np.zeros((3, 4), dtype=np.float32)
    assert np.array_equal(agent.predict(obs)[0], loaded.predict(obs)[0])
