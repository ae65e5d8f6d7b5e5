"""Named presets (`--preset NAME`, the `recipes:` of rlbase/presets/<algo>.yaml): dqn's rainbow resolved
over the env's preset and under --config and the flags, by the CLI and the Python API alike; unknown
names as one line; `--help` listing them; a rainbow run that trains, resumes, evaluates, exports
to ONNX and quantizes (its acting path: plain layers holding the noisy layers' means).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rlbase.agents.dqn import DQNConfig
from rlbase.cli import main
from rlbase.config import load_preset, recipe_names, resolve_config
from rlbase.errors import UsageError

PRESETS = Path(__file__).resolve().parent.parent / "rlbase" / "presets"


def rainbow_values(family: str) -> dict:
    """The rainbow recipe's values for `family`, read here independently of rlbase.config."""
    recipe = yaml.safe_load((PRESETS / "dqn.yaml").read_text())["recipes"]["rainbow"]
    return {**recipe["all"], **(recipe.get(family) or {})}


def printed_config(capsys, *args) -> dict:
    assert main(["train", "dqn", *map(str, args), "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)["config"]


def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlbase: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("env_id,family", [("rlbase/CartPole-v1", "rlbase"), ("CartPole-v1", "gymnasium"),
                                           ("ALE/Breakout-v5", "atari")])
def test_rainbow_is_applied_over_the_env_preset(env_id, family):
    cfg = resolve_config(DQNConfig, "dqn", {"env_id": env_id, "preset": "rainbow"})
    plain = resolve_config(DQNConfig, "dqn", {"env_id": env_id})
    recipe = rainbow_values(family)
    assert (cfg.distributional, cfg.double_q, cfg.dueling, cfg.n_step, cfg.prioritized_replay, cfg.noisy) == \
        ("c51", True, True, 3, True, True)
    assert cfg.exploration_initial_eps == cfg.exploration_final_eps == 0.0
    for key, value in recipe.items():
        assert getattr(cfg, key) == (tuple(value) if isinstance(value, list) else value), key
    # What the recipe does not set is the env's preset.
    env_preset = load_preset("dqn", env_id)
    for key, value in env_preset.items():
        if key not in recipe:
            assert getattr(cfg, key) == getattr(plain, key), key
    assert cfg.preset == "rainbow" and plain.preset == ""
    if family == "atari":  # Hessel et al. 2018's values
        assert (cfg.learning_rate, cfg.adam_eps, cfg.v_min, cfg.v_max, cfg.num_atoms) == (6.25e-5, 1.5e-4, -10, 10, 51)
        assert (cfg.per_alpha, cfg.per_beta, cfg.target_update_interval, cfg.learning_starts) == (0.5, 0.4, 8000, 20000)


def test_flags_and_config_files_win_over_the_recipe(capsys, tmp_path):
    cfg = printed_config(capsys, "--env", "rlbase/CartPole-v1", "--preset", "rainbow", "--n-step", 5, "--no-noisy")
    assert cfg["preset"] == "rainbow" and cfg["distributional"] == "c51" and cfg["n_step"] == 5 and cfg["noisy"] is False
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("preset: rainbow\nnum_atoms: 21\n")
    cfg = printed_config(capsys, "--env", "rlbase/CartPole-v1", "--config", config_file, "--v-max", 50)
    assert cfg["preset"] == "rainbow" and cfg["dueling"] is True and cfg["num_atoms"] == 21 and cfg["v_max"] == 50


def test_unknown_preset_is_one_line_naming_the_available_ones(capsys):
    line = one_error_line(capsys, ["train", "dqn", "--env", "CartPole-v1", "--preset", "rainbo", "--print-config"])
    assert "--preset" in line and "'rainbo'" in line and "available: rainbow" in line
    line = one_error_line(capsys, ["train", "ppo", "--env", "CartPole-v1", "--preset", "rainbow", "--print-config"])
    assert "'rainbow'" in line and "for ppo" in line
    with pytest.raises(UsageError, match="unknown preset 'x' for dqn; available: rainbow"):
        resolve_config(DQNConfig, "dqn", {"env_id": "CartPole-v1", "preset": "x"})


def test_help_lists_the_recipes(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "dqn", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out
    recipes = out.partition("\nrecipes (--preset NAME)")[2]
    assert recipe_names("dqn") == ["rainbow"]
    assert [line.split()[0] for line in recipes.strip().splitlines()[1:]] == ["rainbow"]
    assert "C51" in recipes and "noisy" in recipes


def test_python_api_takes_the_preset(tmp_path):
    import numpy as np

    from rlbase import DQN

    agent = DQN("rlbase/CartPole-v1", preset="rainbow", learning_starts=200, total_timesteps=600, num_envs=4,
                hidden_sizes=(32, 32), log_dir=None, verbose=0)
    try:
        cfg = agent.config
        assert cfg.preset == "rainbow" and cfg.distributional == "c51" and cfg.noisy and cfg.learning_starts == 200
        agent.learn()
        obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        actions, _ = agent.predict(obs)
        loaded = DQN.load(agent.save(tmp_path / "rainbow"), verbose=0)
        try:  # the same greedy actions (the mean weights) after a save and load
            assert loaded.config.preset == "rainbow" and loaded.config.noisy
            np.testing.assert_array_equal(loaded.predict(obs)[0], actions)
        finally:
            loaded.close()
    finally:
        agent.close()
    with pytest.raises(UsageError, match="available: rainbow"):
        DQN("rlbase/CartPole-v1", preset="nope", log_dir=None, verbose=0)


@pytest.fixture(scope="module")
def rainbow_run(tmp_path_factory):
    """A short rainbow run on the native CartPole (tiny sizes: this checks the plumbing, not learning)."""
    root = tmp_path_factory.mktemp("rainbow")
    argv = ["train", "dqn", "--env", "rlbase/CartPole-v1", "--preset", "rainbow", "--total-timesteps", "1200",
            "--learning-starts", "400", "--num-envs", "4", "--hidden-sizes", "32,32", "--checkpoint-interval", "600",
            "--device", "cpu", "--log-dir", str(root), "--run-name", "rainbow"]
    assert main(argv) == 0
    return root / "rainbow"


def test_a_rainbow_run_saves_the_resolved_values_and_resumes(rainbow_run, capsys):
    saved = json.loads((rainbow_run / "config.json").read_text())
    cfg = saved.get("config", saved)
    assert cfg["preset"] == "rainbow" and cfg["distributional"] == "c51" and cfg["noisy"] is True
    assert cfg["hidden_sizes"] == [32, 32] and cfg["total_timesteps"] == 1200
    # The saved values are the run's: resuming applies no preset again (the flag may be repeated).
    assert main(["train", "dqn", "--resume", str(rainbow_run), "--preset", "rainbow", "--total-timesteps", "1600"]) == 0
    capsys.readouterr()
    resumed = json.loads((rainbow_run / "config.json").read_text())
    resumed = resumed.get("config", resumed)
    assert resumed["total_timesteps"] == 1600 and resumed["hidden_sizes"] == [32, 32] and resumed["noisy"] is True
    # Changing the recipe on resume is refused like any field that shapes the networks.
    line = one_error_line(capsys, ["train", "dqn", "--resume", str(rainbow_run), "--preset", "", "--total-timesteps",
                                   "2000"])
    assert "--preset cannot change when resuming" in line


def test_a_rainbow_run_evaluates_exports_and_quantizes(rainbow_run, capsys, tmp_path):
    from rlbase.evaluate import load_trained

    trained = load_trained(rainbow_run, torch.device("cpu"))
    assert any(k.endswith("weight_sigma") for k in trained.tensors)  # the checkpoint holds the noise scales
    assert main(["eval", str(rainbow_run), "--episodes", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["algo"] == "dqn" and len(report["episodes"]) == 2 and report["mean_return"] > 0
    assert report["policy"] == "epsilon-greedy 0.0"
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "onnx"
    assert main(["export", str(rainbow_run), "--out", str(out), "--episodes", "1"]) == 0
    parity = json.loads((out / "report.json").read_text())["parity"]
    assert parity["passed"] and parity["identical_actions"] == 1.0 and parity["max_abs_diff_outputs"] < 1e-4
    assert main(["eval", str(out / "model.onnx"), "--episodes", "1", "--json"]) == 0
    capsys.readouterr()
    int8 = tmp_path / "int8"
    assert main(["quantize", str(rainbow_run), "--out", str(int8), "--episodes", "1", "--calibration-steps", "2"]) == 0
    assert main(["eval", str(int8), "--episodes", "1", "--json"]) == 0
    played = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert played["policy"] == "int8 greedy" and played["mean_return"] > 0


def test_a_rainbow_teacher_distills_into_a_smaller_rainbow_student(rainbow_run, capsys, tmp_path):
    out = tmp_path / "student"
    assert main(["distill", str(rainbow_run), "--width-fraction", "0.5", "--steps", "256", "--eval-episodes", "2",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    student = json.loads((out / "config.json").read_text())
    student = student.get("config", student)
    assert student["hidden_sizes"] == [16, 16] and student["distributional"] == "c51" and student["noisy"] is True
    assert main(["eval", str(out), "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mean_return"] > 0
