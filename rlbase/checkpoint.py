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
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rlbase.errors import RlbaseError, RlbaseWarning
from rlbase.optim import Optimizer
from rlbase.safefiles import (atomic_write_text, disk_error, fsync_path, is_inside, load_safetensors, read_json,
                              regular_file, safetensors_problem, save_safetensors)

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


def optimizer_to_tensors(optimizer: Optimizer, prefix: str = "optim/") -> tuple[dict[str, torch.Tensor], dict]:
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


def optimizer_from_tensors(optimizer: Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                           prefix: str = "optim/") -> None:
    """Load an optimiser's state written by `optimizer_to_tensors`, checked first: the same groups
    and parameters, and state tensors of their parameters' shapes (torch would accept others and
    fail at the next step)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = meta["param_groups"]
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups if isinstance(g, dict)] \
            != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("the optimiser's parameter groups differ from the network's")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, _, key = name[len(prefix):].partition("/")
            if not index.isdigit() or int(index) >= len(params):
                raise ValueError(f"optimiser tensor {name} names no parameter of the network")
            if value.dim() > 0 and value.shape != params[int(index)].shape:
                raise ValueError(f"optimiser tensor {name} has shape {tuple(value.shape)}, its parameter "
                                 f"{tuple(params[int(index)].shape)}")
            state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        if not str(index).isdigit() or not isinstance(values, dict):
            raise ValueError(f"optimiser scalars {index!r} are malformed")
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Load `module` from the checkpoint tensors named `prefix` + parameter, checked first: the same
    names, shapes and dtypes (torch would silently cast a float64 or int tensor), all finite.
    A ValueError naming the first tensor that does not fit."""
    own = module.state_dict()
    given = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = [k for k in own if k not in given]
    if missing:
        raise ValueError(f"tensor {prefix}{missing[0]} is missing" + (f" (and {len(missing) - 1} more)"
                                                                       if len(missing) > 1 else ""))
    unexpected = [k for k in given if k not in own]
    if unexpected:
        raise ValueError(f"tensor {prefix}{unexpected[0]} is not part of the network")
    for key, value in own.items():
        if given[key].shape != value.shape:
            raise ValueError(f"tensor {prefix}{key} has shape {tuple(given[key].shape)}; the network's is "
                             f"{tuple(value.shape)}")
        if given[key].dtype != value.dtype:
            raise ValueError(f"tensor {prefix}{key} is {given[key].dtype}; the network's is {value.dtype}")
    from rlbase.guards import first_nonfinite_tensor

    bad = first_nonfinite_tensor(given)
    if bad is not None:
        raise ValueError(f"tensor {prefix}{bad} holds NaN or infinity")
    module.load_state_dict(given)


def _fault(point: str) -> None:
    """Fault-injection seam for tests: called at each point of a save where a crash could strike
    (`tmp_written`, `old_moved`, `moved_in`, `latest_written`, `pruning`). Does nothing here."""


def _step_name(step: int) -> str:
    return f"step_{step:010d}"


_STEP_NAME = re.compile(r"step_[0-9]{1,19}")


def write_checkpoint(folder: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                     buffer: dict[str, torch.Tensor] | None = None, replace: bool = True) -> Path:
    """Write one checkpoint folder (model.safetensors, state.json, optional buffer.safetensors).

    The files go into a temporary sibling, each synced, state.json last (it lists the other files
    and their sizes, so a folder with a valid state.json is complete); the folder is then renamed
    into place and its parent synced. A complete folder already at `folder` is replaced (`replace`:
    `Algorithm.save` to the same path again) only once the new one is whole, or else kept as it
    is (a run's `step_N`: a step is never written twice); an incomplete one is removed. A disk
    fault removes the temporary folder and raises a one-line `DiskError`.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists() and checkpoint_problem(folder) is None and not replace:
        return folder
    try:
        if folder.exists() and checkpoint_problem(folder) is not None:
            _remove(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = {MODEL_FILE: tensors} if buffer is None else {MODEL_FILE: tensors, BUFFER_FILE: buffer}
        sizes = {}
        for name, content in files.items():
            save_safetensors(content, tmp / name)
            sizes[name] = (tmp / name).stat().st_size
        atomic_write_text(tmp / STATE_FILE, json.dumps({"step": step, **state, "files": sizes}, indent=2,
                                                       allow_nan=False))
        fsync_path(tmp)
        _fault("tmp_written")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            _fault("old_moved")
        os.replace(tmp, folder)
        fsync_path(folder.parent)
        _fault("moved_in")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # put the previous one back
        raise disk_error(exc, "checkpoint", folder) from None
    shutil.rmtree(old, ignore_errors=True)
    return folder


def save_checkpoint(run_dir: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    buffer: dict[str, torch.Tensor] | None = None, keep_last: int = 3,
                    folder: str = CHECKPOINTS) -> Path:
    """Write checkpoint `step` into `run_dir/folder`, point its `latest.json` at it (both durable
    before anything is removed), then remove all but the newest `keep_last` complete checkpoints
    and leftovers of interrupted saves."""
    root = Path(run_dir) / folder
    name = _step_name(step)
    final = write_checkpoint(root / name, step, tensors, state, buffer, replace=False)
    try:
        atomic_write_text(root / "latest.json", json.dumps({"path": name}))
        fsync_path(root)
        _fault("latest_written")
    except OSError as exc:
        raise disk_error(exc, "checkpoint pointer", root / "latest.json") from None
    complete = [path for path in _step_folders(root) if checkpoint_problem(path) is None]
    doomed = [path for path in _step_folders(root) if path not in complete[-keep_last:] and path != final]
    for path in doomed:
        _fault("pruning")
        try:
            _remove(path)
        except OSError:
            pass
    for leftover in root.glob(".step_*"):
        if leftover.is_dir() and not leftover.is_symlink() and leftover.name != f".{name}.tmp":
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder: renamed out of the `step_N` names first, so a crash mid-delete
    never leaves a half-deleted checkpoint under a checkpoint's name."""
    trash = folder.with_name(f".{folder.name}.trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _step_folders(root: Path) -> list[Path]:
    """The `step_N` folders in `root` (not symlinks), oldest first."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    folders = [p for p in entries if _STEP_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(folders, key=lambda p: int(p.name[5:]))


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint ("state.json is missing", "model.safetensors is
    truncated ..."), or None when it is: state.json is valid and the files it lists are all there
    at their sizes, and the model's safetensors header matches its size."""
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        return f"{STATE_FILE} is missing"
    try:
        state = read_json(state_file)
    except RlbaseError as exc:
        return str(exc).replace(f"{state_file} ", f"{STATE_FILE} ")
    try:
        check_state(state, Path(STATE_FILE))
    except RlbaseError as exc:
        return str(exc).replace("checkpoint state ", "", 1)
    sizes = state.get("files", {MODEL_FILE: None})
    if not isinstance(sizes, dict) or MODEL_FILE not in sizes:
        return f"{STATE_FILE} field files is malformed"
    for name, size in sizes.items():
        if name not in (MODEL_FILE, BUFFER_FILE):
            return f"{STATE_FILE} lists an unknown file {name!r}"
        file = folder / name
        if not file.is_file() or file.is_symlink():
            return f"{name} is missing"
        problem = safetensors_problem(file)
        if problem is not None:
            return f"{name} {problem}"
        if size is not None and (not isinstance(size, int) or file.stat().st_size != size):
            return f"{name} is truncated or changed ({file.stat().st_size} bytes; state.json says {size})"
    return None


def _warn(message: str) -> None:
    warnings.warn(message, RlbaseWarning, stacklevel=3)


def find_checkpoint(path: str | Path, kind: str = CHECKPOINTS) -> Path:
    """A run directory (its newest complete checkpoint of `kind`: `checkpoints`, or `best` for the
    best evaluated one), a checkpoint folder or a model.safetensors file -> the checkpoint folder.

    In a run directory, `latest.json` names the newest checkpoint; it is checked, not trusted:
    the name must be a `step_N` folder inside the run. When it is missing, stale (a newer
    complete checkpoint exists: a crash between the two writes) or names an incomplete folder,
    the newest complete checkpoint is used, with a warning.
    """
    path = Path(path)
    if not path.exists():
        raise RlbaseError(f"{path} does not exist")
    if path.is_file() or not path.is_dir():
        regular_file(path)
        return path.parent
    if (path / MODEL_FILE).exists() and not (path / "config.json").exists():
        return path
    root = path / kind
    if root.is_symlink() or (root.exists() and not is_inside(root, path)):
        raise RlbaseError(f"{root} is a link out of the run directory; refusing to read it")
    named = _latest_named(root)
    complete = [p for p in _step_folders(root) if checkpoint_problem(p) is None]
    newest = complete[-1] if complete else None
    if named is not None and named == newest:
        return named
    if newest is None:
        candidates = [named] if named is not None and named.exists() else _step_folders(root)[-1:]
        if candidates:
            raise RlbaseError(f"{candidates[0]} is incomplete ({checkpoint_problem(candidates[0])}) and {path} has "
                              "no other complete checkpoint")
        if (path / "config.json").exists():
            if kind == BEST:
                raise RlbaseError(f"{path} has no best checkpoint (train with --eval-freq to keep one)")
            raise RlbaseError(f"{path} has no checkpoint yet (no complete {kind}/step_* folder)")
        raise RlbaseError(f"{path} is not a run directory (no config.json) nor a checkpoint")
    latest = root / "latest.json"
    if named is None:
        reason = "is missing" if not latest.exists() else "is unreadable"
    elif named.exists() and checkpoint_problem(named) is None:
        reason = f"names {named.name}, older than the complete {newest.name} (a save was interrupted)"
    else:
        reason = f"names {named.name}, which is incomplete ({checkpoint_problem(named) if named.exists() else 'missing'})"
    _warn(f"{latest} {reason}; using {newest}, the newest complete checkpoint")
    return newest


def _latest_named(root: Path) -> Path | None:
    """The folder `root/latest.json` names (None if the file is missing or unreadable); an error for
    a name that is not a `step_N` folder of `root` (a path out of the run, a symlink)."""
    latest = root / "latest.json"
    if not latest.exists() and not latest.is_symlink():
        return None
    try:
        content = read_json(latest, max_bytes=4096)
    except RlbaseError:
        if not latest.is_symlink() and latest.exists() and not latest.is_file():
            raise RlbaseError(f"{latest} is not a regular file") from None
        return None
    name = content.get("path") if isinstance(content, dict) else None
    if not isinstance(name, str):
        return None
    folder = root / name
    if not _STEP_NAME.fullmatch(name) or folder.is_symlink() or not is_inside(folder, root):
        raise RlbaseError(f"{latest}: field path must name a step_N checkpoint folder inside {root}, "
                          f"got {name!r}; refusing to read it")
    return folder


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                    with_buffer: bool = False, kind: str = CHECKPOINTS) -> Checkpoint:
    """Load (tensors, state, buffer-or-None) from a run dir (its newest complete checkpoint of
    `kind`), checkpoint folder or model file. Every file is checked: a one-line RlbaseError
    names the file and what is wrong with it."""
    path = Path(path)
    folder = find_checkpoint(path, kind)
    model_file = path if path.is_file() else folder / MODEL_FILE
    tensors = load_safetensors(model_file, device)
    state_file = folder / STATE_FILE
    if not state_file.exists():
        raise RlbaseError(f"checkpoint state {state_file} is missing")
    state = read_json(state_file, "checkpoint state")
    check_state(state, state_file)
    buffer = None
    if with_buffer and (folder / BUFFER_FILE).exists():
        buffer = load_safetensors(folder / BUFFER_FILE, device)
    return Checkpoint(tensors, state, buffer)


def check_state(state: Any, file: Path) -> None:
    """state.json's schema: a JSON object with a non-negative integer `step`, and, when present,
    integer `counters` including `global_step`, and `optimizer` metadata with `param_groups`."""
    def bad(field: str, expected: str) -> RlbaseError:
        return RlbaseError(f"checkpoint state {file}: field {field} must be {expected}")

    if not isinstance(state, dict):
        raise RlbaseError(f"checkpoint state {file} is corrupt (not a JSON object)")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad("step", "a non-negative integer")
    counters = state.get("counters")
    if counters is not None:
        if not isinstance(counters, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                     for v in counters.values()):
            raise bad("counters", "an object of non-negative integers")
        if counters.get("global_step") != step:
            raise bad("counters.global_step", f"equal to step ({step})")
    optimizer = state.get("optimizer")
    if optimizer is not None:
        groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise bad("optimizer.param_groups", "a list of objects")
        if not isinstance(optimizer.get("scalars", {}), dict):
            raise bad("optimizer.scalars", "an object")
    for key in ("algo",):
        if key in state and not isinstance(state[key], str):
            raise bad(key, "a string")
    if "config" in state and not isinstance(state["config"], dict):
        raise bad("config", "an object")
