"""What the compress-and-deploy commands (`rlbase distill`, `quantize`, `prune`, `export`) share:
where an artifact goes, how big a model is, and the report each writes.

Each command reads a trained agent with `rlbase.evaluate.load_trained` (a run directory, a
checkpoint folder or a model file; checked like any run file), builds its greedy acting path with
`Agent.acting_net`, and writes a new folder (safetensors + JSON, never a pickle) with a
`report.json`: the source, sizes before and after, and the evaluation returns of both. Given a
pretrained backbone artifact instead (`rlbase pretrain`'s output), distill, quantize and export
act on the backbone and its task head and report held-out accuracy (rlbase/backbone_compress.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlbase.errors import UsageError
from rlbase.safefiles import atomic_write_text, disk_error

REPORT_FILE = "report.json"


def source_run_dir(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint folder belongs to (`RUN/checkpoints/step_N`), if any."""
    run_dir = checkpoint.parent.parent
    return run_dir if (run_dir / "config.json").exists() else None


def output_dir(source: str | Path, checkpoint: Path | None, command: str, out: str | None,
               base: Path | None = None) -> Path:
    """`--out` (refused if it already holds anything), else a new folder beside the source run
    (or beside `base`): `<run>-<command>`, `<run>-<command>-2`, ..."""
    if out:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"--out {path} already exists and is not an empty folder")
    else:
        base = base or source_run_dir(checkpoint) or checkpoint
        path = base.with_name(f"{base.name}-{command}")
        suffix = 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{command}-{suffix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, f"the {command} output folder", path) from None
    return path


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def nonzero_parameters(module: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in module.parameters())


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors' data (what a safetensors file holds, less its header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """`out/report.json` (atomically); a disk fault is one line."""
    file = out / REPORT_FILE
    try:
        atomic_write_text(file, json.dumps(report, indent=2, allow_nan=False))
    except OSError as exc:
        raise disk_error(exc, "the report", file) from None
    return file
