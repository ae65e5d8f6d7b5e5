"""Shared pieces of the compression tests (test_prune.py, test_quantize.py, test_distill.py): the
PPO CartPole teacher they compress, `rlbase eval --json` of what they write, and the one-line error
a failed command prints."""

from __future__ import annotations

import json
from pathlib import Path

from rlbase.cli import main


def train_ppo_teacher(root: Path) -> Path:
    """A PPO agent trained on rlbase/CartPole-v1 (its preset, seed 1): the run directory root/teacher."""
    assert main(["train", "ppo", "--env", "rlbase/CartPole-v1", "--log-dir", str(root), "--run-name", "teacher",
                 "--seed", "1"]) == 0
    return root / "teacher"


def eval_report(path, capsys, episodes: int) -> dict:
    """The report of `rlbase eval PATH --episodes N --json`, in process."""
    capsys.readouterr()
    assert main(["eval", str(path), "--episodes", str(episodes), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def one_error_line(capsys) -> str:
    """The command's stderr, checked to be one `rlbase: error: ...` line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlbase: error: "), err
    return err[0]
