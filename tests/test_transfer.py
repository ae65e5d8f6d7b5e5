"""`rlbase pretrain`, backbone artifacts in agents (--backbone-weights, --freeze-backbone,
--backbone-lr-scale), the Stable-Baselines3 adapter, and policy-gradient agents on Dict observations.

The console script runs as a user runs it; pretraining budgets are tiny except where a test asserts
a held-out accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import rlbase  # noqa: F401  (registers the rlbase/ envs)
from rlbase import transfer
from rlbase.agents import ppo
from rlbase.backbones.artifact import load_backbone
from rlbase.envs import make_vec_env
from rlbase.errors import UsageError
from rlbase.lifecycle import train_config
from rlbase.pretrain import PretrainConfig, pretrain

from tests.test_cli import assert_ok, assert_one_line_error, run_cli
from tests.test_cli_pg import latest_state

CPU = torch.device("cpu")
MAZE_GRID = {"size": 7, "obs_mode": "grid"}


def refused(proc, fragment: str) -> None:
    """One `rlbase: error:` line naming `fragment`, exit code 2 (a usage error), no traceback."""
    line = assert_one_line_error(proc, 2)
    assert fragment in line, line


def artifact_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "backbone" / "backbone.safetensors"))


def checkpoint_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    state = latest_state(run_dir)
    return load_file(str(run_dir / "checkpoints" / f"step_{state['step']:010d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def maze_artifact(tmp_path_factory) -> Path:
    """An impala_cnn pretrained (briefly) on the shortest-path action of 7x7 grid mazes."""
    out = tmp_path_factory.mktemp("pretrain") / "maze"
    cfg = PretrainConfig(task="maze-action", backbone="impala_cnn", env_kwargs=dict(MAZE_GRID), train_samples=512,
                         val_samples=256, epochs=1, batch_size=64, out=str(out), device="cpu")
    result = pretrain(cfg, progress=False)
    assert result["backbone"] == "impala_cnn" and 0.0 <= result["metrics"]["val/accuracy"] <= 1.0
    return out


def test_pretrain_digits_cli_reaches_held_out_accuracy_and_logs(tmp_path):
    out = tmp_path / "digits"
    proc = run_cli("pretrain", "digits", "--backbone", "mlp", "--epochs", "15", "--batch-size", "64",
                   "--out", out, cwd=tmp_path)
    assert_ok(proc)
    assert "held-out val/accuracy" in proc.stdout
    spec = json.loads((out / "backbone" / "backbone.json").read_text())
    assert spec["name"] == "mlp" and spec["task"] == "digits"
    accuracy = spec["metrics"]["val/accuracy"]
    assert accuracy >= 0.93, accuracy  # 360 held-out digits
    events = EventAccumulator(str(out))
    events.Reload()
    curve = [e.value for e in events.Scalars("val/accuracy")]
    assert len(curve) == 15 and curve[-1] == pytest.approx(accuracy, abs=1e-6)
    assert curve[-1] > curve[0]
    # The artifact reloads without pickle and reproduces the trained features.
    backbone, spec = load_backbone(out / "backbone")
    assert backbone.out_dim == spec["out_dim"]


def test_pretrain_text_task_generalises_to_held_out_paraphrases(tmp_path):
    cfg = PretrainConfig(task="goto-text", train_samples=4000, val_samples=1000, epochs=4, batch_size=64,
                         out=str(tmp_path / "text"), device="cpu")
    result = pretrain(cfg, progress=False)
    assert result["backbone"] == "text"
    metrics = result["metrics"]
    # Held-out paraphrases, whose verbs training never showed (they read as <unk>).
    assert metrics["val/accuracy"] >= 0.9, metrics
    assert (tmp_path / "text" / "backbone" / "vocab.json").exists()


@pytest.mark.parametrize("args,message", [
    (("pretrain", "no-such-task"), "unknown task"),
    (("pretrain", "digits", "--epochs", "0"), "--epochs"),
    (("pretrain", "digits", "--backbone", "nature_cnn", "--env-kwargs", "size=9"), "pretrain digits"),
    (("pretrain", "maze-action", "--backbone", "text"), "text"),
])
def test_pretrain_bad_input_is_one_line(tmp_path, args, message):
    refused(run_cli(*args, cwd=tmp_path), message)


def test_frozen_backbone_stays_at_the_pretrained_weights_and_heads_learn(maze_artifact, tmp_path):
    proc = run_cli("train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7,obs_mode=grid",
                   "--backbone-weights", maze_artifact, "--freeze-backbone", "--num-envs", "4", "--num-steps", "32",
                   "--total-timesteps", "256", "--log-dir", tmp_path, "--run-name", "frozen", cwd=tmp_path)
    assert_ok(proc)
    run = tmp_path / "frozen"
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["backbone"] == "impala_cnn"  # `auto` took the artifact's backbone
    pretrained = artifact_weights(maze_artifact)
    tensors = checkpoint_tensors(run)
    for prefix in ("model.actor_backbone.", "model.critic_backbone."):
        for key, value in pretrained.items():
            assert torch.equal(tensors[prefix + key], value), prefix + key
    # The evaluation rebuilds the agent from its checkpoint alone.
    assert_ok(run_cli("eval", run, "--episodes", "2", cwd=tmp_path))
    # Resuming keeps the backbone frozen (the optimiser's groups match the checkpoint's) and the heads move.
    assert_ok(run_cli("train", "ppo", "--resume", run, "--total-timesteps", "512", cwd=tmp_path))
    resumed = checkpoint_tensors(run)
    assert latest_state(run)["step"] == 512
    assert all(torch.equal(resumed["model.actor_backbone." + k], v) for k, v in pretrained.items())
    assert not torch.equal(resumed["model.policy_head.weight"], tensors["model.policy_head.weight"])


def test_fine_tuning_moves_the_pretrained_weights_at_the_scaled_rate(maze_artifact):
    env = make_vec_env("rlbase/Maze-v0", 4, CPU, env_kwargs=dict(MAZE_GRID))
    base = dict(env_id="rlbase/Maze-v0", env_kwargs=dict(MAZE_GRID), num_envs=4, num_steps=16,
                total_timesteps=64, update_epochs=1, num_minibatches=1, backbone_weights=str(maze_artifact))
    pretrained = artifact_weights(maze_artifact)
    moved = {}
    for scale in (0.0, 1.0):
        model = train_config(ppo.PPOConfig(**base, backbone_lr_scale=scale), env)["model"]
        state = model.actor_backbone.state_dict()
        moved[scale] = max(float((state[k] - v).abs().max()) for k, v in pretrained.items())
    env.close()
    assert moved[0.0] == 0.0  # lr scale 0: the pretrained weights are loaded and kept
    assert moved[1.0] > 0.0


def test_dqn_starts_from_the_artifact_and_keeps_it_frozen(maze_artifact):
    from rlbase.agents import dqn

    env = make_vec_env("rlbase/Maze-v0", 2, CPU, env_kwargs=dict(MAZE_GRID))
    cfg = dqn.DQNConfig(env_id="rlbase/Maze-v0", env_kwargs=dict(MAZE_GRID), num_envs=2, total_timesteps=64,
                        learning_starts=16, batch_size=8, buffer_size=128, train_freq=4,
                        backbone_weights=str(maze_artifact), freeze_backbone=True)
    q = train_config(cfg, env)["q_network"]
    env.close()
    state = q.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in artifact_weights(maze_artifact).items())
    assert not any(p.requires_grad for p in q.backbone.parameters())


def test_mismatched_artifacts_are_refused_with_one_line(maze_artifact, tmp_path):
    common = ("train", "ppo", "--total-timesteps", "64", "--log-dir", tmp_path)
    # Trained on 7x7 grids: an 11x11 maze, pixels, or another backbone name do not fit.
    refused(run_cli(*common, "--env", "rlbase/Maze-v0", "--backbone-weights", maze_artifact,
                                  cwd=tmp_path), "(3, 7, 7)")
    refused(run_cli(*common, "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7", "--backbone", "resnet",
                                  "--backbone-weights", maze_artifact, cwd=tmp_path), "impala_cnn")
    refused(run_cli(*common, "--env", "CartPole-v1", "--backbone-weights", tmp_path / "missing",
                                  cwd=tmp_path), "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "backbone.json").write_text("{not json")
    refused(run_cli(*common, "--env", "CartPole-v1", "--backbone-weights", bad, cwd=tmp_path), str(bad))
    assert not (tmp_path / "runs").exists() and len(list(tmp_path.glob("CartPole*"))) == 0


def test_sb3_adapter_trains_with_frozen_pretrained_weights(maze_artifact, tmp_path, monkeypatch):
    from stable_baselines3 import PPO

    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3"))  # else learn() leaves a directory in /tmp

    from rlbase.sb3 import BackboneExtractor, policy_kwargs

    pretrained = artifact_weights(maze_artifact)
    for freeze in (True, False):
        env = gym.make("rlbase/Maze-v0", **MAZE_GRID)
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
                    policy_kwargs=policy_kwargs(weights=str(maze_artifact), freeze=freeze))
        extractor = model.policy.features_extractor
        assert isinstance(extractor, BackboneExtractor) and extractor.backbone_name == "impala_cnn"
        head_before = {k: v.clone() for k, v in model.policy.action_net.state_dict().items()}
        model.learn(256)
        state = extractor.backbone.state_dict()
        unchanged = all(torch.equal(state[k], v) for k, v in pretrained.items())
        assert unchanged == freeze
        assert any(not torch.equal(v, model.policy.action_net.state_dict()[k]) for k, v in head_before.items())
        env.close()


def test_sb3_adapter_builds_every_backbone_on_pixels():
    from stable_baselines3 import PPO

    from rlbase.sb3 import policy_kwargs

    env = gym.make("rlbase/Maze-v0", size=7, obs_mode="pixels")
    for name in ("nature_cnn", "impala_cnn", "resnet", "vit"):
        model = PPO("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, device="cpu",
                    policy_kwargs=policy_kwargs(name))
        obs, _ = env.reset(seed=0)
        action, _ = model.predict(obs)
        assert env.action_space.contains(int(action))
    env.close()


def test_ppo_on_dict_observations_trains_checkpoints_and_evaluates(tmp_path):
    proc = run_cli("train", "ppo", "--env", "rlbase/MazeGoTo-v0", "--num-envs", "4", "--num-steps", "16",
                   "--total-timesteps", "128", "--log-dir", tmp_path, "--run-name", "goto", cwd=tmp_path)
    assert_ok(proc)
    run = tmp_path / "goto"
    tensors = checkpoint_tensors(run)
    assert any(k.startswith("model.actor_backbone.sub_backbones.mission.") for k in tensors)
    assert any(k.startswith("model.actor_backbone.sub_backbones.image.") for k in tensors)
    proc = run_cli("eval", run, "--episodes", "4", "--json", cwd=tmp_path)
    assert_ok(proc)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["num_episodes"] == 4 and "success" in report["outcomes"]
    # DQN stores Dict observations key by key in its replay: it trains and evaluates too.
    assert_ok(run_cli("train", "dqn", "--env", "rlbase/MazeGoTo-v0", "--num-envs", "4", "--total-timesteps", "256",
                      "--learning-starts", "64", "--buffer-size", "512", "--batch-size", "16", "--log-dir", tmp_path,
                      "--run-name", "goto_dqn", cwd=tmp_path))
    assert any(k.startswith("q.backbone.sub_backbones.mission.") for k in checkpoint_tensors(tmp_path / "goto_dqn"))
    proc = run_cli("eval", tmp_path / "goto_dqn", "--episodes", "2", "--json", cwd=tmp_path)
    assert_ok(proc)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["num_episodes"] == 2


def test_text_artifact_goes_to_the_mission_key(tmp_path):
    out = tmp_path / "text"
    pretrain(PretrainConfig(task="goto-text", train_samples=256, val_samples=64, epochs=1, out=str(out),
                            device="cpu"), progress=False)
    env = make_vec_env("rlbase/MazeGoTo-v0", 2, CPU)
    cfg = ppo.PPOConfig(env_id="rlbase/MazeGoTo-v0", backbone_weights=str(out), freeze_backbone=True)
    cfg, spec = transfer.resolve(cfg, env.single_observation_space)
    assert "mission=text" in cfg.backbone and spec.name == cfg.backbone
    assert spec.weights == {"mission": str(out)}
    # The saved config names the key, so rebuilding the spec later reads no artifact.
    assert cfg.backbone_weights == f"mission={out}"
    assert transfer.parse(cfg, env.single_observation_space) == spec
    env.close()
    with pytest.raises(UsageError, match="image"):
        transfer.resolve(ppo.PPOConfig(env_id="rlbase/MazeGoTo-v0", backbone_weights=f"image={out}"),
                         make_vec_env("rlbase/MazeGoTo-v0", 1, CPU).single_observation_space)


@pytest.mark.parametrize("backbone", ["mlp", "nature_cnn", "impala_cnn", "resnet", "vit"])
@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_agents_train_with_every_vision_backbone(backbone, algo):
    from rlbase.agents import get_agent

    obs_mode = "pixels" if backbone == "nature_cnn" else "grid"
    env = make_vec_env("rlbase/Maze-v0", 2, CPU, env_kwargs={"size": 7, "obs_mode": obs_mode})
    module = get_agent(algo)
    extra = ({"num_steps": 8, "update_epochs": 1, "num_minibatches": 2} if algo == "ppo"
             else {"learning_starts": 8, "batch_size": 4, "buffer_size": 64, "train_freq": 4})
    cfg = module.Config(env_id="rlbase/Maze-v0", backbone=backbone, total_timesteps=32, **extra)
    result = train_config(cfg, env)
    env.close()
    assert result["global_step"] >= 32


def test_film_starts_as_identity_inside_the_actor_critic():
    from rlbase.agents.pg import ActorCritic, make_distribution

    env = make_vec_env("rlbase/MazeGoTo-v0", 1, CPU)
    cfg = ppo.PPOConfig(env_id="rlbase/MazeGoTo-v0")
    model = ActorCritic(cfg, transfer.parse(cfg, env.single_observation_space), env.single_observation_space,
                        make_distribution(env.single_action_space, "clip"))
    film = model.actor_backbone.sub_backbones["image"].film
    assert len(film) and all(not layer.weight.detach().any() for layer in film)
    env.close()


def test_rollout_storage_holds_dict_observations():
    from rlbase.agents.pg import RolloutStorage

    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 1, (2, 3, 3), np.uint8),
                             "mission": gym.spaces.Box(0, 9, (4,), np.int64)})
    storage = RolloutStorage(5, 2, space, None, (), torch.int64, CPU)
    assert storage.obs["image"].dtype == torch.uint8 and storage.obs["mission"].dtype == torch.int64
    assert storage.obs["image"].shape == (5, 2, 2, 3, 3)
    flat = storage.flat()["obs"]
    assert flat["mission"].shape == (10, 4)


def test_feature_norm_normalises_a_frozen_backbone_and_trains_only_the_norm_and_heads(maze_artifact, tmp_path):
    """--feature-norm: the LayerNorm sits between the frozen pretrained backbone and the heads, trains
    with the heads, and goes through the checkpoint, evaluation, resume and ONNX export unchanged."""
    proc = run_cli("train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7,obs_mode=grid",
                   "--backbone-weights", maze_artifact, "--freeze-backbone", "--feature-norm", "--num-envs", "4",
                   "--num-steps", "32", "--total-timesteps", "256", "--log-dir", tmp_path, "--run-name", "normed",
                   cwd=tmp_path)
    assert_ok(proc)
    run = tmp_path / "normed"
    tensors = checkpoint_tensors(run)
    for prefix in ("model.actor_backbone.inner.", "model.critic_backbone.inner."):
        for key, value in artifact_weights(maze_artifact).items():
            assert torch.equal(tensors[prefix + key], value), prefix + key  # loaded and frozen
    norm = tensors["model.actor_backbone.norm.weight"]
    assert norm.shape == (256,) and not torch.equal(norm, torch.ones_like(norm))  # trained
    assert_ok(run_cli("eval", run, "--episodes", "2", cwd=tmp_path))
    assert_ok(run_cli("train", "ppo", "--resume", run, "--total-timesteps", "512", cwd=tmp_path))
    assert latest_state(run)["step"] == 512
    onnx = tmp_path / "normed.onnx"
    assert_ok(run_cli("export", run, "--out", onnx, cwd=tmp_path))
    assert onnx.exists() and onnx.stat().st_size > 0


def test_feature_norm_gives_unit_scale_features_and_is_off_by_default(maze_artifact):
    env = make_vec_env("rlbase/Maze-v0", 8, CPU, env_kwargs=dict(MAZE_GRID))
    obs, _ = env.reset(seed=3)
    plain_cfg = ppo.PPOConfig(env_id="rlbase/Maze-v0", env_kwargs=dict(MAZE_GRID), backbone="impala_cnn")
    plain = transfer.parse(plain_cfg, env.single_observation_space).build(env.single_observation_space)
    assert not isinstance(plain, transfer.FeatureNorm)  # the default network is unchanged
    cfg = ppo.PPOConfig(**{**plain_cfg.__dict__, "feature_norm": True, "backbone_weights": str(maze_artifact),
                           "freeze_backbone": True})
    spec = transfer.parse(cfg, env.single_observation_space)
    backbone = spec.build(env.single_observation_space)
    parts = transfer.prepare(spec, [backbone], env.single_observation_space, fresh=True)
    assert parts == [backbone.inner]  # the artifact loads into the backbone, and only it is frozen
    assert not any(p.requires_grad for p in backbone.inner.parameters())
    assert all(p.requires_grad for p in backbone.norm.parameters())
    with torch.no_grad():
        features = backbone(obs)
    env.close()
    assert features.shape == (8, backbone.out_dim)
    assert torch.allclose(features.mean(-1), torch.zeros(8), atol=1e-4)
    assert torch.allclose(features.pow(2).mean(-1), torch.ones(8), atol=1e-2)
