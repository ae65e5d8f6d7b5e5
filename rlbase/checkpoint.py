"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically, never unpickled.

Layout inside a run directory:

    config.json                      everything needed to rebuild the agent
    checkpoints/step_000100000/      one checkpoint: model.safetensors + state.json (+ buffer.safetensors)
    checkpoints/latest.json          {"path": "step_000100000"}: the newest complete checkpoint
    best/step_000080000/             the checkpoint with the best evaluation mean so far (--eval-freq)
    best/latest.json                 {"path": "step_000080000"}

A checkpoint is written into a temporary folder that is renamed into place once complete, and
`latest.json` is replaced atomically afterwards: a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlbase.errors import RlbaseError

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
BUFFER_FILE = "buffer.safetensors"
CHECKPOINTS = "checkpoints"
BEST = "best"


class Checkpoint(NamedTuple):
    """A checkpoint's contents: tensors (weights, optimiser, RNG, normalisation), the JSON state
    (counters, optimiser settings, algo and config) and the replay buffer's tensors (or None)."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    buffer: dict[str, torch.Tensor] | None = None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim/") -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able values."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                           prefix: str = "optim/") -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split("/", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(folder: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                     buffer: dict[str, torch.Tensor] | None = None) -> Path:
    """Write one checkpoint folder (model.safetensors, state.json, optional buffer.safetensors).

    The files go into a temporary sibling that is renamed into place once complete and on disk; a
    folder already at `folder` is replaced only then, so a crash leaves the old or the new one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / MODEL_FILE))
    _fsync(tmp / MODEL_FILE)
    if buffer is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in buffer.items()}, str(tmp / BUFFER_FILE))
        _fsync(tmp / BUFFER_FILE)
    atomic_write_text(tmp / STATE_FILE, json.dumps({"step": step, **state}, indent=2))
    _fsync(tmp)
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def save_checkpoint(run_dir: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    buffer: dict[str, torch.Tensor] | None = None, keep_last: int = 3,
                    folder: str = CHECKPOINTS) -> Path:
    """Write checkpoint `step` into `run_dir/folder` and point its `latest.json` at it; keep the
    newest `keep_last` there."""
    root = Path(run_dir) / folder
    name = f"step_{step:010d}"
    final = write_checkpoint(root / name, step, tensors, state, buffer)
    atomic_write_text(root / "latest.json", json.dumps({"path": name}))
    _fsync(root)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path, kind: str = CHECKPOINTS) -> Path:
    """A run directory (its newest checkpoint of `kind`: `checkpoints`, or `best` for the best
    evaluated one), a checkpoint folder or a model.safetensors file -> the checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise RlbaseError(f"{path} does not exist")
    if path.is_file():
        return path.parent
    if (path / MODEL_FILE).exists():
        return path
    latest = path / kind / "latest.json"
    if latest.exists():
        try:
            name = json.loads(latest.read_text())["path"]
        except (ValueError, KeyError, TypeError):
            raise RlbaseError(f"{latest} is corrupt") from None
        return path / kind / name
    if (path / "config.json").exists():
        if kind == BEST:
            raise RlbaseError(f"{path} has no best checkpoint (train with --eval-freq to keep one)")
        raise RlbaseError(f"{path} has no checkpoint yet (no {kind}/latest.json)")
    raise RlbaseError(f"{path} is not a run directory (no config.json) nor a checkpoint")


def _load_safetensors(file: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    if not file.exists():
        raise RlbaseError(f"checkpoint file {file} is missing")
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        with open(file, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80" or head == b"PK":  # pickle protocol marker / torch.save zip archive
            raise RlbaseError(f"{file} is a pickle or torch.save file; rlbase only loads safetensors "
                              "(pickles can run code)") from None
        raise RlbaseError(f"{file} is not a valid safetensors file ({str(exc).splitlines()[0]})") from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                    with_buffer: bool = False, kind: str = CHECKPOINTS) -> Checkpoint:
    """Load (tensors, state, buffer-or-None) from a run dir (its newest checkpoint of `kind`),
    checkpoint folder or model file."""
    path = Path(path)
    folder = find_checkpoint(path, kind)
    model_file = path if path.is_file() else folder / MODEL_FILE
    tensors = _load_safetensors(model_file, device)
    state_file = folder / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise RlbaseError(f"checkpoint state {state_file} is missing") from None
    except ValueError:
        raise RlbaseError(f"checkpoint state {state_file} is corrupt (not JSON)") from None
    buffer = None
    if with_buffer and (folder / BUFFER_FILE).exists():
        buffer = _load_safetensors(folder / BUFFER_FILE, device)
    if not isinstance(state, dict):
        raise RlbaseError(f"checkpoint state {state_file} is corrupt (not a JSON object)")
    return Checkpoint(tensors, state, buffer)
