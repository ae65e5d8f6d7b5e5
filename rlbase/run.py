"""Run directories: creation, `config.json`, and reading a run back."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from rlbase.checkpoint import atomic_write_text
from rlbase.errors import RlbaseError

CONFIG_FILE = "config.json"


def new_run_dir(config: Any, algo: str) -> Path:
    """Create `<log_dir>/<run_name>` (a fresh, unique name unless --run-name was given)."""
    name = config.run_name or f"{config.env_id.replace('/', '-')}__{algo}__{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.log_dir) / name
    suffix = 1
    while (run_dir / CONFIG_FILE).exists():
        if config.run_name:
            raise RlbaseError(f"run directory {run_dir} already exists; use --resume {run_dir} to continue it")
        suffix += 1
        run_dir = Path(config.log_dir) / f"{name}-{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_config(run_dir: Path, algo: str, config: Any) -> None:
    payload = {"algo": algo, "config": dataclasses.asdict(config)}
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(payload, indent=2, sort_keys=True))


def read_config(path: Path) -> tuple[str, dict[str, Any]]:
    """(algo, config values) from a run dir's config.json."""
    file = path / CONFIG_FILE
    if not file.exists():
        raise RlbaseError(f"{path} has no {CONFIG_FILE}: not an rlbase run directory")
    try:
        payload = json.loads(file.read_text())
        return payload["algo"], payload["config"]
    except (ValueError, KeyError, TypeError):
        raise RlbaseError(f"{file} is corrupt") from None


class Run:
    """What an agent's `train` needs from its run directory: a logger, checkpoint saving, resume state."""

    def __init__(self, run_dir: Path, algo: str, config: Any, logger: Any, resume: tuple | None = None):
        self.run_dir = run_dir
        self.algo = algo
        self.config = config
        self.logger = logger
        self.resume = resume  # (tensors, state, buffer-or-None) from load_checkpoint
        self.snapshot = None  # set by the agent: () -> (tensors, state, buffer) for an interrupt checkpoint
        self.last_saved_step: int | None = None

    def save(self, step: int, tensors: dict, state: dict, buffer: dict | None = None) -> Path:
        from rlbase.checkpoint import save_checkpoint

        # The checkpoint carries its own config so it can be evaluated on its own.
        state = {"algo": self.algo, "config": dataclasses.asdict(self.config), **state}
        path = save_checkpoint(self.run_dir, step, tensors, state, buffer)
        self.last_saved_step = step
        self.logger.flush()
        return path
