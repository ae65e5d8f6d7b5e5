"""Small shared helpers: device resolution and seeding."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

from rlbase.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """Map `auto|cpu|cuda|cuda:N` to a torch device; `auto` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"invalid --device {name!r}: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"invalid --device {name!r}: use auto, cpu or cuda")
    return device


def plural(count: int, noun: str) -> str:
    """`1 step`, `2 steps`, `45,056 steps`."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (network initialisation); env and action RNGs are seeded separately."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
