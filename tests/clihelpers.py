"""Shared pieces of the console-script tests of the run lifecycle (test_cli_lifecycle.py,
test_cli_checkpoints.py, test_cli_presets.py, test_cli_envs.py): running `rlbase` as a user does,
reading what a run wrote, and the start, done and status lines it prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.forkcli import run_console
from tests.test_cli import assert_ok


def run_cli(*args, cwd: Path, env_extra: dict[str, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """The console script as a user runs it (stdout and stderr captured: not a terminal)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), NO_COLOR="1")
    env.update(env_extra or {})
    return run_console(list(map(str, args)), cwd=cwd, env=env, timeout=timeout)


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def latest_state(run_dir: Path, kind: str = "checkpoints") -> dict:
    name = json.loads((run_dir / kind / "latest.json").read_text())["path"]
    return json.loads((run_dir / kind / name / "state.json").read_text())


def eval_json(run_dir: Path, *args, cwd: Path | None = None) -> dict:
    proc = run_cli("eval", run_dir, "--json", *args, cwd=cwd or run_dir.parent)
    assert_ok(proc)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


START = re.compile(r"rlbase: training (\w+) on (\S+): backbone (\S+), ([\d,]+) envs? on (\S+), ([\d,]+) steps?(.*)")
DONE = re.compile(r"rlbase: done(?: \(.*\))?: ([\d,]+) (steps?), ([\d,]+) (episodes?), recent mean return (\S+)\. "
                  r"Evaluate with: rlbase eval (\S+)")
STATUS = re.compile(r"rlbase: [\d,]+/[\d,]+ steps \(\d+%\), \S+ steps/s.*, ETA \S+")


def number(text: str) -> int:
    return int(text.replace(",", ""))
