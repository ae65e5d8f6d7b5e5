"""`--backbone-width`: nature_cnn and impala_cnn with their channels and features scaled, trained,
saved, evaluated and resumed as any run; one-line errors where it cannot apply."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors import safe_open

from rlbase.backbones import ImpalaCNN, NatureCNN, build_backbone
from rlbase.cli import main


def _conv_channels(module: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_width_scales_channels_and_features():
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    full, half = NatureCNN(frames), NatureCNN(frames, width=0.5)
    assert _conv_channels(full) == [32, 64, 64] and full.out_dim == 512
    assert _conv_channels(half) == [16, 32, 32] and half.out_dim == 256
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 0.2 < count(half) / count(full) < 0.3  # about width**2
    assert half(torch.zeros(3, 4, 84, 84, dtype=torch.uint8)).shape == (3, 256)
    grid = gym.spaces.Box(0, 1, (3, 7, 7), np.float32)
    impala = ImpalaCNN(grid, width=0.25)
    assert _conv_channels(impala)[0] == 4 and impala.out_dim == 64
    assert max(1, round(0.01 * 32)) == _conv_channels(NatureCNN(frames, width=0.01))[0] == 1  # at least one
    # the registry passes it to the CNNs that scale, and the mlp ignores it as it ignores nothing else
    assert _conv_channels(build_backbone("nature_cnn", frames, width=0.25)) == [8, 16, 16]
    assert build_backbone("mlp", gym.spaces.Box(-1, 1, (4,)), (8,), width=0.5).out_dim == 8


def _train(tmp_path, name, *flags):
    return main(["train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7", "--log-dir", str(tmp_path),
                 "--run-name", name, "--total-timesteps", "256", "--num-envs", "4", "--num-steps", "32",
                 "--backbone", "impala_cnn", *flags])


def test_a_narrow_cnn_run_trains_evaluates_and_resumes(tmp_path, capsys):
    assert _train(tmp_path, "narrow", "--backbone-width", "0.5") == 0
    run = tmp_path / "narrow"
    assert json.loads((run / "config.json").read_text())["config"]["backbone_width"] == 0.5
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["path"]
    with safe_open(str(run / "checkpoints" / latest / "model.safetensors"), "pt") as f:
        first_conv = [k for k in f.keys() if k.startswith("model.actor_backbone.") and k.endswith("weight")
                      and len(f.get_slice(k).get_shape()) == 4][0]
        assert f.get_slice(first_conv).get_shape()[0] == 8  # 16 channels x 0.5
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_episodes"] == 2
    # the width shapes the checkpoint's tensors: a resume cannot change it
    assert main(["train", "ppo", "--resume", str(run), "--total-timesteps", "512", "--backbone-width", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backbone-width cannot change when resuming" in err[0]
    assert main(["train", "ppo", "--resume", str(run), "--total-timesteps", "512"]) == 0


@pytest.mark.parametrize("flags, words", [
    (["--backbone", "mlp", "--backbone-width", "0.5"], "scales only nature_cnn and impala_cnn"),
    (["--backbone-width", "0"], "--backbone-width"),
    (["--backbone-width", "nan"], "--backbone-width"),
    (["--backbone-width", "17"], "--backbone-width"),
])
def test_bad_widths_are_one_line(tmp_path, capsys, flags, words):
    capsys.readouterr()
    assert _train(tmp_path, "bad", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlbase: error:") and words in err[0], err
    assert not (tmp_path / "bad").exists()


def test_pretrained_weights_keep_their_widths():
    from rlbase import transfer
    from rlbase.agents import get_agent
    from rlbase.errors import UsageError

    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    cfg = get_agent("ppo").Config(env_id="ALE/Pong-v5", backbone="nature_cnn", backbone_width=0.5,
                                  backbone_weights="/nonexistent/artifact")
    with pytest.raises(UsageError, match="cannot change a pretrained backbone"):
        transfer.parse(cfg, frames)
    assert transfer.parse(get_agent("ppo").Config(env_id="ALE/Pong-v5", backbone_width=0.5), frames).width == 0.5
