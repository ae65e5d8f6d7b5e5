"""Wording of rlbase's messages. Torch-free: the command line's driver paths (`rlbase sweep`, whose
driver never trains) word their messages with it without importing torch."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """`1 step`, `2 steps`, `45,056 steps`."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"
