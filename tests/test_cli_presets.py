"""Presets through the real `rlbase` console script: `rlbase train --print-config` shows the resolved
preset and flags (and writes nothing), the backbone follows the maze's observations, and
`rlbase train ALGO --help` names the presets.

The rest of the lifecycle through the CLI: test_cli_lifecycle.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from rlbase.agents.ppo import PPOConfig

from tests.clihelpers import run_cli
from tests.test_cli import assert_ok

PRESETS = Path(__file__).resolve().parent.parent / "rlbase" / "presets"


# ---------------------------------------------------------------- --print-config and --help


def ppo_preset(env_id: str) -> tuple[dict, dict]:
    """(rlbase family block, the env's block) of ppo.yaml for one of rlbase's envs, read here independently."""
    data = yaml.safe_load((PRESETS / "ppo.yaml").read_text())
    return dict(data["families"]["rlbase"]), dict(data["envs"][env_id])


def print_config(tmp_path: Path, *args) -> dict:
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)
    proc = run_cli("train", "ppo", *args, "--print-config", "--log-dir", log_dir, "--run-name", "pc", cwd=tmp_path)
    assert_ok(proc)
    assert not any(log_dir.iterdir()), "--print-config created a run directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert "rlbase: training" not in proc.stderr
    return json.loads(proc.stdout)


def test_print_config_shows_the_resolved_preset_and_flags(tmp_path):
    printed = print_config(tmp_path, "--env", "rlbase/CartPole-v1", "--seed", 7, "--eval-freq", 999)
    assert printed["algo"] == "ppo" and set(printed) == {"algo", "config"}
    cfg = printed["config"]
    family, env_block = ppo_preset("rlbase/CartPole-v1")
    defaults = PPOConfig()
    # The preset's values, not the dataclass defaults.
    assert (env_block["num_envs"], env_block["total_timesteps"]) != (defaults.num_envs, defaults.total_timesteps)
    for key, value in {**family, **env_block}.items():
        assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    assert cfg["num_envs"] == 64 and cfg["total_timesteps"] == 45_000
    # The flags on top, and the resolved backbone (auto -> mlp for a vector observation).
    assert cfg["seed"] == 7 and cfg["eval_freq"] == 999 and cfg["env_id"] == "rlbase/CartPole-v1"
    assert cfg["backbone"] == "mlp"
    assert cfg["log_dir"] == str(tmp_path / "logs") and cfg["run_name"] == "pc"
    # A flag beats the preset.
    assert print_config(tmp_path, "--env", "rlbase/CartPole-v1", "--num-envs", 3)["config"]["num_envs"] == 3


def test_print_config_backbone_follows_the_maze_observations(tmp_path):
    family, env_block = ppo_preset("rlbase/Maze-v0")
    grid_only = env_block["observations"]["grid"]
    grid = print_config(tmp_path, "--env", "rlbase/Maze-v0")["config"]
    assert grid["backbone"] == grid_only["backbone"] == "mlp"
    assert grid["hidden_sizes"] == list(grid_only["hidden_sizes"]) and grid["activation"] == grid_only["activation"]
    pixels = print_config(tmp_path, "--env", "rlbase/Maze-v0", "--env-kwargs", "obs_mode=pixels")["config"]
    assert pixels["env_kwargs"] == {"obs_mode": "pixels"}
    assert pixels["backbone"] not in ("mlp", "auto")
    # The grid-only values do not leak into a pixel run: the family's MLP settings stay.
    assert pixels["activation"] == family["activation"] != grid_only["activation"]


def test_train_help_names_the_presets(tmp_path):
    for algo in ("ppo", "dqn"):
        proc = run_cli("train", algo, "--help", cwd=tmp_path)
        assert_ok(proc)
        assert "--print-config" in proc.stdout
        _, sep, presets = proc.stdout.partition("\npresets")
        assert sep, f"no presets section in `rlbase train {algo} --help`"
        assert f"presets/{algo}.yaml" in presets
        data = yaml.safe_load((PRESETS / f"{algo}.yaml").read_text())
        for family in data["families"]:
            assert re.search(rf"\b{family}\b", presets), (algo, family)
        for env_id in data["envs"]:  # one line per env id with its own preset
            assert len(re.findall(rf"^\s+{re.escape(env_id)}\s", presets, re.MULTILINE)) == 1, (algo, env_id)
        if algo == "ppo":
            assert all(f in presets for f in ("atari", "rlbase", "gymnasium")) and "rlbase/CartPole-v1" in presets
            maze = [line for line in presets.splitlines() if line.strip().startswith("rlbase/Maze-v0")]
            assert len(maze) == 1 and "mlp" in maze[0] and "grid observations" in maze[0], maze
