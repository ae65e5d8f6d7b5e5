"""`rlbase quantize`: int8 artifacts of a PPO and a DQN CartPole teacher and a normalised Gaussian
Pendulum policy, rebuilt bit for bit from plain tensors, played by `rlbase eval`; Linear weights at
a quarter of their fp32 bytes; nothing in the folder is a pickle; one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlbase.cli import main
from rlbase.safefiles import is_pickle
from tests.compresshelpers import eval_report, one_error_line, train_ppo_teacher


@pytest.fixture(scope="module")
def ppo_teacher(tmp_path_factory):
    return train_ppo_teacher(tmp_path_factory.mktemp("ppo"))


@pytest.fixture(scope="module")
def ppo_int8(ppo_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int8"
    assert main(["quantize", str(ppo_teacher), "--out", str(out), "--episodes", "5", "--calibration-steps", "4"]) == 0
    return out


def test_ppo_int8_artifact_plays_as_well_as_fp32(ppo_int8, capsys):
    report = json.loads((ppo_int8 / "report.json").read_text())
    assert report["quantized_layers"] == ["backbone.net.0", "backbone.net.2", "head"] and report["fp32_layers"] == []
    # int8 Linear weights: exactly a quarter of their fp32 bytes; the whole model (biases fp32) >= 3.5x smaller
    assert report["int8"]["linear_weight_bytes"] * 4 == report["fp32"]["linear_weight_bytes"]
    assert report["bytes_ratio"] >= 3.5
    assert set(report["fp32"]["latency_us"]) == set(report["int8"]["latency_us"]) == {"1", "256"}
    assert report["parity"]["states"] == 4 * 16 and report["parity"]["action_agreement"] >= 0.9
    assert report["fp32"]["mean_return"] >= 475  # the teacher solves CartPole
    assert report["int8"]["mean_return"] >= 0.95 * report["fp32"]["mean_return"]
    played = eval_report(ppo_int8, capsys, episodes=3)
    assert played["policy"] == "int8 deterministic" and played["num_episodes"] == 3
    assert played["mean_return"] >= 0.95 * report["fp32"]["mean_return"]
    capsys.readouterr()
    assert main(["eval", str(ppo_int8), "--episodes", "2", "--no-deterministic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"] == "int8 stochastic"  # sampled from the int8 logits


def test_artifact_holds_int8_tensors_and_no_pickle(ppo_int8):
    from rlbase.safefiles import load_safetensors

    names = sorted(p.name for p in ppo_int8.iterdir())
    assert names == ["config.json", "model.safetensors", "quantization.json", "report.json"]
    for file in ppo_int8.iterdir():
        assert not is_pickle(file.read_bytes()[:16]), file
    tensors = load_safetensors(ppo_int8 / "model.safetensors")
    assert tensors["head.weight.int8"].dtype == torch.int8 and "head.weight" not in tensors
    assert tensors["head.bias"].dtype == torch.float32


def test_rebuilt_int8_network_equals_a_fresh_quantization(ppo_teacher, ppo_int8):
    """What load_quantized rebuilds from plain tensors computes exactly what quantize_dynamic makes of
    the teacher's acting path, on any batch."""
    from rlbase.evaluate import load_trained
    from rlbase.quantize import load_quantized, quantize_net

    loaded = load_quantized(ppo_int8)
    trained = load_trained(ppo_teacher)
    import gymnasium as gym

    obs_space = gym.spaces.Box(-5, 5, (4,))
    net = trained.agent.acting_net(trained.config, trained.tensors, obs_space, gym.spaces.Discrete(2), "cpu")
    fresh, _, _ = quantize_net(net)
    obs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.net(obs)[0], fresh(obs)[0])
        assert (loaded.net(obs)[0] - net(obs)[0]).abs().max() < 0.5  # int8, not another network


def test_dqn_teacher_quantizes_and_plays(tmp_path, capsys):
    assert main(["train", "dqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", "2000", "--learning-starts",
                 "500", "--log-dir", str(tmp_path), "--run-name", "dqn"]) == 0
    assert main(["quantize", str(tmp_path / "dqn"), "--episodes", "2", "--calibration-steps", "2"]) == 0
    out = tmp_path / "dqn-quantize"  # the default: beside the run
    report = json.loads((out / "report.json").read_text())
    assert report["algo"] == "dqn" and report["int8"]["linear_weight_bytes"] * 4 == report["fp32"]["linear_weight_bytes"]
    played = eval_report(out, capsys, episodes=2)
    assert played["algo"] == "dqn" and played["policy"] == "int8 greedy" and played["mean_return"] > 0


def test_normalised_gaussian_policy_quantizes(tmp_path, capsys):
    """Box actions (clipped), frozen observation normalisation inside the acting path."""
    assert main(["train", "ppo", "--env", "rlbase/Pendulum-v1", "--total-timesteps", "1024", "--num-envs", "8",
                 "--normalize-obs", "--log-dir", str(tmp_path), "--run-name", "pend"]) == 0
    out = tmp_path / "int8"
    assert main(["quantize", str(tmp_path / "pend"), "--out", str(out), "--episodes", "2",
                 "--calibration-steps", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["max_action_diff"] < 0.5 and "action_agreement" not in report["parity"]
    played = eval_report(out, capsys, episodes=2)
    assert played["mean_length"] == 200 and played["mean_return"] < 0
    assert main(["eval", str(out), "--no-deterministic"]) == 2  # a Gaussian int8 policy plays its mean
    one_error_line(capsys)


def test_convolutions_are_static_int8_calibrated_on_env_states(tmp_path, capsys):
    """An IMPALA-CNN maze policy: every Conv2d becomes a static int8 convolution (per-channel int8
    weights, calibrated activation scales), stored as plain tensors and rebuilt to the same network
    (quantize checks that bit for bit), and the artifact plays."""
    from rlbase.safefiles import load_safetensors

    assert main(["train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7,max_episode_steps=12",
                 "--backbone", "impala_cnn", "--total-timesteps", "128", "--num-envs", "8", "--num-steps", "16",
                 "--log-dir", str(tmp_path), "--run-name", "maze"]) == 0
    out = tmp_path / "int8"
    assert main(["quantize", str(tmp_path / "maze"), "--out", str(out), "--episodes", "1",
                 "--calibration-steps", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    convs = report["static_conv_layers"]
    assert len(convs) >= 3 and not any("conv" in name for name in report["fp32_layers"])
    assert report["bytes_ratio"] >= 3.5 and report["parity"]["action_agreement"] >= 0.9
    tensors = load_safetensors(out / "model.safetensors")
    weight, scales = tensors[f"{convs[0]}.weight.int8"], tensors[f"{convs[0]}.weight.scales"]
    assert weight.dtype == torch.int8 and weight.dim() == 4 and scales.shape == (weight.shape[0],)
    assert f"{convs[0]}.weight" not in tensors and float(tensors[f"{convs[0]}.input.scale"]) > 0
    played = eval_report(out, capsys, episodes=2)
    assert played["env_id"] == "rlbase/Maze-v0" and played["mean_length"] <= 12


def test_bad_inputs_are_one_line(ppo_teacher, ppo_int8, tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing")]) == 1
    assert "does not exist" in one_error_line(capsys)
    assert main(["quantize", str(ppo_teacher), "--calibration-steps", "0"]) == 2
    assert "--calibration-steps" in one_error_line(capsys)
    assert main(["quantize", str(ppo_int8)]) == 2
    assert "already an int8 artifact" in one_error_line(capsys)
    assert main(["eval", str(ppo_int8), "--best"]) == 2
    one_error_line(capsys)
    # a teacher whose env cannot be built
    broken = tmp_path / "broken"
    shutil.copytree(ppo_teacher, broken)
    config = json.loads((broken / "config.json").read_text())
    config["config"]["env_id"] = "rlbase/NoSuchEnv-v0"
    (broken / "config.json").write_text(json.dumps(config))
    assert main(["quantize", str(broken), "--out", str(tmp_path / "nothing")]) != 0
    one_error_line(capsys)
    assert not (tmp_path / "nothing").exists()
    # a tampered artifact: a layer that is not there, an int8 weight of the wrong shape
    tampered = tmp_path / "tampered"
    shutil.copytree(ppo_int8, tampered)
    scheme = json.loads((tampered / "quantization.json").read_text())
    (tampered / "quantization.json").write_text(json.dumps({**scheme, "layers": ["head", "nowhere"]}))
    assert main(["eval", str(tampered)]) == 1
    assert "tensor nowhere.weight.int8 is missing" in one_error_line(capsys)
    (tampered / "quantization.json").write_text(json.dumps({**scheme, "layers": ["head"]}))
    assert main(["eval", str(tampered)]) == 1
    assert "does not fit its config" in one_error_line(capsys)
    (tampered / "quantization.json").write_text(json.dumps({**scheme, "checkpoint_tensors": {"x": {"shape": "big"}}}))
    assert main(["eval", str(tampered)]) == 1
    assert "checkpoint_tensors" in one_error_line(capsys)
    from rlbase.safefiles import load_safetensors, save_safetensors

    (tampered / "quantization.json").write_text(json.dumps(scheme))
    tensors = load_safetensors(tampered / "model.safetensors")
    tensors["head.weight.int8"] = tensors["head.weight.int8"][:, :3].contiguous()
    save_safetensors(tensors, tampered / "model.safetensors")
    assert main(["eval", str(tampered)]) == 1
    assert "does not fit its config" in one_error_line(capsys)
