"""Shared pieces of the Python API tests (tests/test_api_*.py): the rlbase/CartPole-v1 preset's
rollout size, varied CartPole observations, and readers of a run directory and of a config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

CPU = torch.device("cpu")
CARTPOLE = "rlbase/CartPole-v1"  # preset: 64 envs x 16 steps, so one PPO rollout is 1,024 steps
ROLLOUT = 64 * 16


def cartpole_observations(n: int = 256, seed: int = 0) -> np.ndarray:
    """Varied CartPole states (both lean directions, both spins): a policy that learned anything
    pushes left for some and right for others, so equal predictions are not a coincidence."""
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 1.0, 0.15, 1.5], np.float32)
    return (rng.uniform(-1.0, 1.0, size=(n, 4)) * scale).astype(np.float32)


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["global_step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(run_dir: Path, kind: str = "checkpoints") -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / kind).glob("step_*") if p.is_dir())


def as_json(config) -> dict:
    """A config as the CLI prints it (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
