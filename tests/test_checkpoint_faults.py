"""Crash safety of checkpoints: a kill at each point of a save, incomplete folders, stale or
missing `latest.json`, and a full disk. A "kill" is an exception raised by the save's fault hook
(`rlbase.checkpoint._fault`) at the named point: nothing after it runs, as when the process dies."""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import pytest
import torch

from rlbase import checkpoint as ckpt
from rlbase.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, write_checkpoint
from rlbase.errors import RlbaseError, RlbaseWarning
from rlbase.safefiles import DiskError


class Killed(BaseException):
    """The process died here."""


def tensors_for(step: int) -> dict[str, torch.Tensor]:
    return {"model.w": torch.full((4, 3), float(step)), "model.b": torch.arange(3.0) + step}


def save(run: Path, step: int, keep_last: int = 2, buffer: bool = False) -> Path:
    return save_checkpoint(run, step, tensors_for(step), {"counters": {"global_step": step}}, keep_last=keep_last,
                           buffer={"obs": torch.ones(5) * step} if buffer else None)


def kill_at(monkeypatch, point: str) -> None:
    def fault(name: str) -> None:
        if name == point:
            raise Killed(name)
    monkeypatch.setattr(ckpt, "_fault", fault)


def loaded_step(run: Path) -> int:
    tensors, state, _ = load_checkpoint(run)
    step = state["step"]
    assert torch.equal(tensors["model.w"], tensors_for(step)["model.w"]), "the checkpoint's content is not its step's"
    return step


def step_folders(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))


@pytest.mark.parametrize("point, newest", [("tmp_written", 30), ("moved_in", 40), ("latest_written", 40),
                                           ("pruning", 40)])
def test_a_kill_at_each_point_of_a_save_leaves_a_loadable_run(tmp_path, monkeypatch, point, newest):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        save(run, step)
    kill_at(monkeypatch, point)
    with pytest.raises(Killed):
        save(run, 40)
    monkeypatch.setattr(ckpt, "_fault", lambda name: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loaded_step(run) == newest
    if point == "moved_in":  # step_40 is complete but latest.json still names step_30
        assert any("older than the complete step_0000000040" in str(w.message) for w in caught)
    # The run goes on: the next save works and cleans up what the killed one left.
    save(run, 50)
    assert loaded_step(run) == 50
    assert step_folders(run) == [f"step_{newest:010d}", "step_0000000050"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "leftovers were not removed"


def test_a_step_is_never_written_twice(tmp_path):
    run = tmp_path / "run"
    first = save(run, 10)
    before = (first / "model.safetensors").read_bytes()
    save_checkpoint(run, 10, {"model.w": torch.zeros(2)}, {})  # the same step again: kept as it was
    assert (first / "model.safetensors").read_bytes() == before


def test_an_incomplete_folder_of_the_same_step_is_replaced(tmp_path):
    run = tmp_path / "run"
    save(run, 10)
    folder = save(run, 20)
    (folder / "state.json").unlink()  # a crash mid-delete of an older version
    save(run, 20)
    assert loaded_step(run) == 20


def test_missing_latest_json_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    save(run, 10)
    save(run, 20)
    (run / "checkpoints" / "latest.json").unlink()
    with pytest.warns(RlbaseWarning, match="latest.json is missing; using .*step_0000000020"):
        assert loaded_step(run) == 20


@pytest.mark.parametrize("damage", ["no_state", "truncated_model", "changed_size", "no_model", "garbage_state"])
def test_latest_naming_an_incomplete_folder_falls_back_with_a_warning(tmp_path, damage):
    run = tmp_path / "run"
    save(run, 10)
    folder = save(run, 20)
    model = folder / "model.safetensors"
    if damage == "no_state":
        (folder / "state.json").unlink()
    elif damage == "truncated_model":
        model.write_bytes(model.read_bytes()[:-7])
    elif damage == "changed_size":
        model.write_bytes(model.read_bytes() + b" ")
    elif damage == "no_model":
        model.unlink()
    else:
        (folder / "state.json").write_text('{"step": 20, "files": ')
    with pytest.warns(RlbaseWarning, match="names step_0000000020, which is incomplete"):
        assert loaded_step(run) == 10


def test_no_complete_checkpoint_is_one_line_naming_the_folder_and_the_damage(tmp_path):
    run = tmp_path / "run"
    folder = save(run, 10)
    model = folder / "model.safetensors"
    model.write_bytes(model.read_bytes()[:20])
    with pytest.raises(RlbaseError, match=r"step_0000000010 is incomplete \(model.safetensors is truncated"):
        load_checkpoint(run)


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        save(run, step, keep_last=2)
    assert step_folders(run) == ["step_0000000020", "step_0000000030"]
    (run / "checkpoints" / "step_0000000030" / "state.json").unlink()  # damaged: not counted as kept
    save(run, 40, keep_last=2)
    assert step_folders(run) == ["step_0000000020", "step_0000000040"]
    assert loaded_step(run) == 40


def enospc_on(monkeypatch, file_name: str) -> None:
    real = ckpt.save_safetensors

    def fake(tensors, path):
        if Path(path).name == file_name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path)
    monkeypatch.setattr(ckpt, "save_safetensors", fake)


@pytest.mark.parametrize("file_name, buffer", [("model.safetensors", False), ("buffer.safetensors", True)])
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_removes_the_temp_folder(tmp_path, monkeypatch,
                                                                                      file_name, buffer):
    run = tmp_path / "run"
    save(run, 10, buffer=buffer)
    enospc_on(monkeypatch, file_name)
    with pytest.raises(DiskError, match=r"could not write checkpoint .*step_0000000020: no space left on the device"):
        save(run, 20, buffer=buffer)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step_0000000010"]
    assert loaded_step(run) == 10


def test_a_full_disk_when_writing_latest_json_keeps_a_loadable_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save(run, 10)

    real = ckpt.atomic_write_text

    def full(path, text):
        if Path(path).name == "latest.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)
    monkeypatch.setattr(ckpt, "atomic_write_text", full)
    with pytest.raises(DiskError, match="latest.json: no space left"):
        save(run, 20)
    monkeypatch.undo()
    with pytest.warns(RlbaseWarning, match="older than the complete step_0000000020"):
        assert loaded_step(run) == 20  # the new folder was whole before latest.json was touched


def test_api_save_to_the_same_path_replaces_the_folder(tmp_path):
    folder = tmp_path / "agent"
    write_checkpoint(folder, 10, tensors_for(10), {})
    write_checkpoint(folder, 20, tensors_for(20), {})
    assert json.loads((folder / "state.json").read_text())["step"] == 20
    assert find_checkpoint(folder) == folder
