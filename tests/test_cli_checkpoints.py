"""Checkpoint cadence through the real `rlbase` console script: when the total is a multiple of
--checkpoint-interval, the final checkpoint is written once (DQN, and PPO with evaluation).

The rest of the lifecycle through the CLI: test_cli_lifecycle.py.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from tests.clihelpers import latest_state, read_records, run_cli
from tests.test_cli import assert_ok


# ---------------------------------------------------------------- checkpoints


RENAME_HOOK = '''
"""Test helper: log every os.rename/os.replace of this process (an audit hook) to a file."""
import os
import sys

_log = os.environ.get("RLBASE_TEST_RENAME_LOG")
if _log:
    def _hook(event, args):
        if event == "os.rename":
            with open(_log, "a") as f:
                f.write(os.fsdecode(args[0]) + "\\t" + os.fsdecode(args[1]) + "\\n")
    sys.addaudithook(_hook)
'''


@pytest.mark.parametrize("algo, args, total, interval", [
    ("dqn", ("--env", "CartPole-v1", "--num-envs", 8, "--learning-starts", 200), 1600, 800),
    ("ppo", ("--env", "rlbase/CartPole-v1", "--eval-freq", 2048, "--eval-episodes", 2), 4096, 2048),
], ids=["dqn", "ppo_with_eval"])
def test_final_checkpoint_is_written_once(tmp_path, algo, args, total, interval):
    """The total is a multiple of --checkpoint-interval: the periodic checkpoint and the final one
    fall on the same step, which must be written once. Every checkpoint folder is moved into place
    by one rename (rlbase.checkpoint), so an audit hook in the subprocess counts the saves."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(RENAME_HOOK)
    rename_log = tmp_path / "renames.tsv"
    proc = run_cli("train", algo, *args, "--total-timesteps", total, "--checkpoint-interval", interval,
                   "--log-dir", tmp_path, "--run-name", "ck", cwd=tmp_path,
                   env_extra={"PYTHONPATH": str(hook_dir), "RLBASE_TEST_RENAME_LOG": str(rename_log)})
    assert_ok(proc)
    run_dir = tmp_path / "ck"
    expected = list(range(interval, total + 1, interval))

    state = latest_state(run_dir)
    assert state["step"] == total
    assert read_records(run_dir)[-1]["global_step"] == total
    folders = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert folders == [f"step_{step:010d}" for step in expected]  # nothing left half-written either
    for step in expected:
        assert json.loads((run_dir / "checkpoints" / f"step_{step:010d}" / "state.json").read_text())["step"] == step

    saves = collections.Counter()
    for line in rename_log.read_text().splitlines():
        _, dst = line.split("\t")
        dst_path = Path(dst)
        if dst_path.parent.name == "checkpoints" and dst_path.name.startswith("step_"):
            saves[int(dst_path.name[len("step_"):])] += 1
    assert dict(saves) == {step: 1 for step in expected}
